"""Sound fragments only (issue 11): bond topology from the relaxed reference, stretched bonds
reported and skipped, soundness of fragments from unseen distorted frames, de-duplication of
the same cut reached from several centres (in files and in labelling), reference outliers.

Independent truths: bonds from ASE's periodic neighbour list on the reference, geometry
(sorted interatomic distances) for identity of molecules, atomic numbers for electron parity,
calls counted inside the calculator.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import covalent_radii
from ase.io import read, write
from ase.neighborlist import neighbor_list
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from conftest import package_env
from pyfragnn.fragments import (FragmentCutter, UnsoundFragmentError, check_fragment, find_sites,
                                fragment_sources, same_geometry, unique_fragments)
from pyfragnn.labelling import label, labelled_in_order, read_dataset
from pyfragnn.outliers import outliers, split_outliers
from pyfragnn.topology import BondTopology, StretchedBondError, check_snapshot

ROOT = Path(__file__).resolve().parents[1]
PRIM = ROOT / "pyfragnn" / "data" / "IRMOF-1_prim.extxyz"
STRUCT = ROOT.parent / "shared" / "data" / "structures"
RADII = (4.359, 8.718)


@pytest.fixture(scope="module")
def ref():
    return read(PRIM)


def _move_h(atoms: Atoms, h: int, c: int, d: float) -> Atoms:
    """Copy of ``atoms`` with H ``h`` moved along its bond to ``d`` Å from C ``c``."""
    snap = atoms.copy()
    v = snap.get_distance(c, h, mic=True, vector=True)
    snap.positions[h] = snap.positions[c] + v / np.linalg.norm(v) * d
    return snap


def _md_like(atoms: Atoms, seed: int, rattle: float = 0.05, strain: float = 0.02) -> Atoms:
    """An unseen distorted frame: random symmetric cell strain (|e_ij| <= strain), Gaussian
    displacements (std ``rattle`` Å per component), atoms wrapped back into the cell."""
    rng = np.random.default_rng(seed)
    e = rng.uniform(-strain, strain, (3, 3))
    snap = atoms.copy()
    snap.set_cell(np.array(atoms.cell) @ (np.eye(3) + 0.5 * (e + e.T)), scale_atoms=True)
    snap.positions += rng.normal(0.0, rattle, snap.positions.shape)
    snap.wrap()
    return snap


def _ch_pair(atoms: Atoms):
    sites = {s.label: s.index for s in find_sites(atoms)}
    h = sites["H"]
    i, j = neighbor_list("ij", atoms, (covalent_radii[atoms.numbers] * 1.2).tolist())
    return h, int(j[i == h][0])


# ----------------------------------------------------------------- stretched bonds
def test_stretched_ch_bond_is_reported_not_cut(ref):
    h, c = _ch_pair(ref)
    snap = _move_h(ref, h, c, 1.45)
    # reference topology: the C-H bond is stretched 1.45 / 1.09 > 1.25 -> error naming it
    with pytest.raises(StretchedBondError) as err:
        FragmentCutter(snap, reference=ref).cut(h, 4.359)
    (b,) = err.value.bonds
    assert {b.i, b.j} == {h, c} and abs(b.length - 1.45) < 1e-6
    assert abs(b.reference_length - ref.get_distance(h, c, mic=True)) < 1e-6
    assert f"H{h}" in str(err.value) and f"C{c}" in str(err.value)
    # the same error from the C side, and the snapshot check lists exactly this bond
    with pytest.raises(StretchedBondError):
        FragmentCutter(snap, reference=ref).cut(c, 4.359)
    assert [(x.i, x.j) for x in check_snapshot(snap, ref)] == [(min(h, c), max(h, c))]
    assert check_snapshot(ref, ref) == []
    # without a reference: no 1-atom fragment either (the detached H is detected)
    with pytest.raises(StretchedBondError, match=f"H{h}-C{c}"):
        FragmentCutter(snap).cut(h, 4.359)
    # H beyond any bond-like distance: the centre has no bonded unit -> error, never 1 atom
    far = _move_h(ref, h, c, 1.75)
    with pytest.raises(UnsoundFragmentError, match="no bonded neighbour"):
        FragmentCutter(far).cut(h, 4.359)
    with pytest.raises(StretchedBondError):
        FragmentCutter(far, reference=ref).cut(h, 4.359)


def test_far_centres_still_cut_and_topology_follows_wrapping(ref):
    h, c = _ch_pair(ref)
    snap = _move_h(ref, h, c, 1.45)
    cutter = FragmentCutter(snap, reference=ref)
    assert len(cutter.stretched_bonds) == 1
    clean = FragmentCutter(ref)
    ok = 0
    for s in find_sites(ref):
        for k in s.members:
            f0 = clean.cut(int(k), 4.359)
            if {h, c} & set(f0.arrays["bulk_index"].tolist()):
                continue  # this fragment would contain the stretched bond
            f = cutter.cut(int(k), 4.359)
            assert f.info["n_atom"] == f0.info["n_atom"]
            ok += 1
    assert ok > 10
    # atoms shifted by whole lattice vectors, cell strained: the same bonds, none stretched
    moved = _md_like(ref, seed=5, rattle=0.0, strain=0.02)
    moved.positions[::3] += np.array(moved.cell)[0] - 2 * np.array(moved.cell)[2]
    topo = BondTopology(ref)
    i, d = neighbor_list("id", ref, (covalent_radii[ref.numbers] * 1.2).tolist())
    assert 2 * len(topo) == len(i)
    assert check_snapshot(moved, topo) == []
    assert np.allclose(np.sort(topo.lengths(moved)), np.sort(topo.lengths(moved.copy())))
    assert np.max(np.abs(topo.lengths(moved) / topo.length - 1)) < 0.05
    with pytest.raises(ValueError, match="same atoms"):
        BondTopology(ref).shifts_for(ref[:-1])


@pytest.mark.parametrize("rattle", [0.0, 0.02])
def test_reference_topology_cuts_what_bond_detection_cuts(ref, rattle):
    """Where no bond is strained much, the reference topology and bonds detected in the frame
    give the same fragments (same bulk atoms, images, caps)."""
    frame = _md_like(ref, seed=8, rattle=rattle, strain=0.01 if rattle else 0.0)
    with_ref, plain = FragmentCutter(frame, reference=ref), FragmentCutter(frame)
    for s in find_sites(ref):
        for r in RADII:
            f, g = with_ref.cut(s.index, r), plain.cut(s.index, r)
            assert np.array_equal(f.arrays["bulk_index"], g.arrays["bulk_index"]), (s.label, r)
            assert np.array_equal(f.arrays["image"], g.arrays["image"]), (s.label, r)
            cap = f.arrays["cap"]
            assert np.allclose(f.positions[~cap], g.positions[~cap], atol=1e-12)
            caps_f, caps_g = (np.array(sorted(x.positions[cap].tolist())) for x in (f, g))
            assert np.allclose(caps_f, caps_g, atol=1e-12)  # same caps (in another order)
    assert with_ref.site_labels == FragmentCutter(ref).site_labels  # sites of the reference


def test_cli_reference_skips_stretched(ref, tmp_path):
    h, c = _ch_pair(ref)
    snap, refp = tmp_path / "snap.extxyz", tmp_path / "ref.extxyz"
    write(snap, _move_h(ref, h, c, 1.45))
    write(refp, ref)
    out = tmp_path / "f.extxyz"
    r = subprocess.run([sys.executable, "-m", "pyfragnn", "fragments", str(snap), "-r", "4.359",
                        "--reference", str(refp), "-q", "-o", str(out)],
                       env=package_env(), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "stretched" in r.stderr and f"C{c}-H{h}" in r.stderr
    frags = read(out, index=":")
    # 7 sites of the reference; the H and C3 representatives' fragments hold the bond
    labels = {f.info["frag_type"] for f in frags}
    assert "H" not in labels and labels < {"Zn", "O1", "O2", "C1", "C2", "C3", "H"}
    for f in frags:
        assert len(f) >= 10 and not {h, c} & set(f.arrays["bulk_index"].tolist())


# ----------------------------------------------------------------- soundness
def _independent_sound(f: Atoms, reference: Atoms) -> None:
    """Soundness by independent means: size, electron parity, closest pair, and the centre's
    bonded neighbours from ASE's neighbour list on the reference."""
    assert len(f) >= 10
    assert f.numbers.sum() % 2 == 0 and f.info["charge"] == 0 and f.info["multiplicity"] == 1
    assert pdist(f.positions).min() >= 0.75
    c = int(f.arrays["bulk_index"][0])
    i, j = neighbor_list("ij", reference, (covalent_radii[reference.numbers] * 1.2).tolist())
    want = sorted(j[i == c].tolist())
    d = np.linalg.norm(f.positions - f.positions[0], axis=1)
    real = ~f.arrays["cap"]
    have = sorted(f.arrays["bulk_index"][real & (d > 0) & (d < 2.6)].tolist())
    assert set(want) <= set(have), (want, have)


def _geometry_groups(frags, tol: float = 1e-6):
    """Indices of ``frags`` grouped by identical element counts and sorted interatomic
    distances (within ``tol`` Å): the same molecule up to permutation and rigid motion."""
    groups = []  # (numbers, distances, members)
    for k, f in enumerate(frags):
        z, d = sorted(f.numbers.tolist()), np.sort(pdist(f.positions))
        for gz, gd, members in groups:
            if gz == z and np.allclose(gd, d, rtol=0, atol=tol):
                members.append(k)
                break
        else:
            groups.append((z, d, [k]))
    return [m for _, _, m in groups]


def _assert_distinct(frags) -> None:
    dup = [g for g in _geometry_groups(frags, tol=1e-4) if len(g) > 1]
    assert not dup, f"the same molecule more than once: {dup}"


@pytest.mark.parametrize("system,seed", [("IRMOF-1", 11), ("IRMOF-1", 12), ("IRMOF-10", 13)])
def test_fragments_of_unseen_frames_are_sound_and_distinct(ref, system, seed):
    if system == "IRMOF-1":
        reference = ref
    else:
        path = STRUCT / "IRMOF-10_prim_sym_CH109.extxyz"
        if not path.exists():
            pytest.skip(f"shared data not found: {path}")
        reference = read(path)
    frame = _md_like(reference, seed)
    assert check_snapshot(frame, reference) == []
    cutter = FragmentCutter(frame, reference=reference)
    sites = find_sites(reference)
    rng = np.random.default_rng(seed)
    frags = []
    for r in RADII:
        for s in sites:  # two random members per site, as the workflow samples centres
            for k in rng.choice(s.members, size=min(2, len(s.members)), replace=False):
                f = cutter.cut(int(k), r, type_label=s.label, check=True)
                assert check_fragment(f, cutter.topology) == []
                _independent_sound(f, reference)
                frags.append(f)
    uniq = unique_fragments(frags)
    _assert_distinct(uniq)
    assert sum(len(fragment_sources(f)) for f in uniq) == len(frags)


def test_violent_frames_never_give_a_centre_without_its_unit(ref):
    """0.1 Å displacements stretch some bonds past 1.25 x: those cuts raise, every other
    fragment keeps the centre's bonded neighbours."""
    frame = _md_like(ref, seed=3, rattle=0.1)
    cutter = FragmentCutter(frame, reference=ref)
    assert cutter.stretched_bonds  # this frame has some
    n_err = n_ok = 0
    for k in range(len(ref)):
        try:
            f = cutter.cut(k, 4.359)
        except StretchedBondError:
            n_err += 1
            continue
        n_ok += 1
        assert not [p for p in check_fragment(f, cutter.topology) if "lacks" in p]
        assert len(f) >= 10
    assert n_err and n_ok


def test_check_fragment_reports_each_problem(ref):
    f = FragmentCutter(ref).cut(0, 4.359)
    assert check_fragment(f, ref) == []
    lone = f[:1]
    lone.info.update(charge=0, multiplicity=2, frag_centres=[0])
    p = check_fragment(lone)
    assert any("1 atoms < 10" in x for x in p) and any("closed-shell" in x for x in p)
    assert any("no bonded neighbour" in x for x in p)
    g = f.copy()
    g.positions[5] = g.positions[0] + [0.5, 0.0, 0.0]
    assert any("< 0.75" in x for x in check_fragment(g))
    h = f[[k for k in range(len(f)) if k != 1]]  # drop one of the centre's neighbours
    h.info.update(f.info)
    assert any("lacks its bonded neighbour" in x for x in check_fragment(h, ref))
    assert check_fragment(f, ref, min_atoms=len(f) + 1)
    assert check_fragment(lone, closed_shell=False, min_atoms=1) == [
        "centre atom 0 (Zn) has no bonded neighbour"]


# ----------------------------------------------------------------- de-duplication
def test_duplicates_on_a_frame_written_once(ref, tmp_path):
    frame = _md_like(ref, seed=21)
    path = tmp_path / "frame.extxyz"
    write(path, frame)
    runs = {}
    for extra in ([], ["--keep-duplicates"]):
        out = tmp_path / f"f{len(extra)}.extxyz"
        r = subprocess.run([sys.executable, "-m", "pyfragnn", "fragments", str(path), "-r",
                            "4.359", "-q", "-o", str(out)] + extra,
                           env=package_env(), cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        runs[bool(extra)] = read(out, index=":")
    every, uniq = runs[True], runs[False]
    assert len(every) == len(frame)  # one cut per atom of a frame without symmetry
    # identity by geometry: the distinct molecules among all cuts
    centre = [int(np.atleast_1d(f.info["frag_centres"])[0]) for f in every]
    groups = sorted(sorted(centre[k] for k in g) for g in _geometry_groups(every))
    assert len(uniq) == len(groups) < len(every) // 2
    _assert_distinct(uniq)
    served = sorted(sorted(c[0] for c, _ in fragment_sources(f)) for f in uniq)
    assert served == groups
    assert [f.info["n_sources"] for f in uniq] == [len(fragment_sources(f)) for f in uniq]
    sites = [s for f in uniq for _, s in fragment_sources(f)]
    assert sorted(sites) == sorted(str(f.info["frag_type"]) for f in every)


def test_same_geometry_rotation_permutation_and_mirror(ref):
    f = FragmentCutter(ref).cut(8, 4.359)
    rot = Rotation.from_euler("xyz", [30, 50, -70], degrees=True).as_matrix()
    perm = np.random.default_rng(0).permutation(len(f))
    g = f[perm]
    g.positions = g.positions @ rot.T + [3.0, -1.0, 2.0]
    assert same_geometry(f, g)
    f2 = f.copy()  # random distortion: a chiral molecule, different from its mirror image
    f2.positions += np.random.default_rng(1).normal(0, 0.05, f2.positions.shape)
    mirror = f2[perm]
    mirror.positions[:, 0] *= -1
    assert not same_geometry(f2, mirror) and same_geometry(mirror, mirror[::-1])
    assert np.allclose(np.sort(pdist(f2.positions)), np.sort(pdist(mirror.positions)))
    h = f.copy()
    h.positions[3] += 0.05
    assert not same_geometry(f, h)
    assert len(unique_fragments([f, g, h], geometric=True)) == 2
    assert len(unique_fragments([f, g, h])) == 3  # g, h have no common cut bookkeeping with f


def test_labelling_computes_one_molecule_once(ref, tmp_path):
    frame = _md_like(ref, seed=21)
    cutter = FragmentCutter(frame)
    frags = [cutter.cut(k, 4.359) for k in range(len(frame))]
    a, b = next(g for g in _geometry_groups(frags) if len(g) >= 2)[:2]  # one molecule, two centres
    assert frags[a].info["frag_centres"][0] != frags[b].info["frag_centres"][0]
    calls = []

    def counting_lj(atoms):
        calls.append(len(atoms))
        return LennardJones(sigma=1.0, epsilon=0.01, rc=6.0)

    items = [frags[a], frags[b], frags[0] if 0 not in (a, b) else frags[1]]
    out = tmp_path / "lab.extxyz"
    s = label(items, out, calculator=counting_lj, workers=0, progress=False)
    assert len(calls) == 2 and (s.n_computed, s.n_duplicates) == (2, 1)
    got = labelled_in_order(items, read_dataset(out))
    assert all(x is not None for x in got)
    for x, item in zip(got, items):  # each input's labels are its own (forces in its order)
        direct = item.copy()
        direct.calc = LennardJones(sigma=1.0, epsilon=0.01, rc=6.0)
        assert abs(x.get_potential_energy() - direct.get_potential_energy()) < 1e-8
        assert np.allclose(x.get_forces(), direct.get_forces(), atol=1e-8)
        assert np.allclose(x.positions, item.positions)
    assert not np.allclose(got[0].get_forces(), got[1].get_forces())  # other atom order
    assert [x.info["label_index"] for x in got] == [0, 1, 2]
    assert str(got[1].info["frag_type"]) == str(frags[b].info["frag_type"])
    # a rerun with one more copy: nothing computed, the copy labelled from the file
    s2 = label(items + [frags[a].copy()], out, calculator=counting_lj, workers=0, progress=False)
    assert len(calls) == 2 and (s2.n_already_done, s2.n_computed, s2.n_duplicates) == (3, 0, 1)
    assert len(read_dataset(out)) == 4


# ----------------------------------------------------------------- outliers
def _labelled(n_atoms: int, e_per_atom: float, fmax: float, el: str = "C") -> Atoms:
    a = Atoms(el * n_atoms, positions=np.arange(3 * n_atoms, dtype=float).reshape(-1, 3))
    f = np.zeros((n_atoms, 3))
    f[0, 2] = fmax
    a.calc = SinglePointCalculator(a, energy=e_per_atom * n_atoms, forces=f)
    return a


def test_outliers_rule():
    rng = np.random.default_rng(4)
    frames = [_labelled(10, -5.0 + rng.normal(0, 0.01), 2.0) for _ in range(20)]
    frames[7] = _labelled(10, -4.5, 2.0)            # 0.5 eV/atom above its group
    frames[12] = _labelled(10, -5.0, 35.0)          # force beyond 20 eV/Å
    frames += [_labelled(4, -1.0, 1.0, "H"), _labelled(4, 3.0, 1.0, "H")]  # group of 2: no rule
    frames.append(_labelled(10, float("nan"), 1.0))
    bad = outliers(frames)
    assert [(o.index, o.reason) for o in bad] == [(7, "energy"), (12, "force"), (22, "non-finite")]
    assert abs(bad[0].value - 0.5) < 0.05 and bad[0].group == "C10"
    kept, dropped = split_outliers(frames, max_force=50.0)
    assert len(kept) == len(frames) - 2 and {o.index for o in dropped} == {7, 22}
    # a wide group: the MAD term sets the limit, 0.3 eV/atom spreads are not outliers
    wide = [_labelled(10, -5.0 + x, 1.0) for x in rng.normal(0, 0.15, 30)]
    assert outliers(wide) == []

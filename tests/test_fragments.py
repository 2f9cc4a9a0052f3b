"""Fragments cut from IRMOF crystals: sites, chemical validity, bookkeeping, central atoms.

The checks use independent truths: chemistry of IRMOF-1 (which atoms bond to which), bulk
coordination numbers from ASE's periodic neighbour list, positions rebuilt from the lattice,
electron parity, and invariance under a rigid rotation of the crystal.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from ase.data import covalent_radii
from ase.io import read, write
from ase.neighborlist import neighbor_list
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from pyfragnn.fragments import CappingRules, FragmentCutter, central_mask, find_sites, site_fragments

SHARED = Path(__file__).resolve().parents[2] / "shared"
STRUCT = SHARED / "data" / "structures"
RADII = (4.359, 8.718)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (CI needs shared/ beside the repository)")
    return path


@pytest.fixture(scope="module")
def irmof1():
    return read(_need(STRUCT / "IRMOF-1_conv_CH109.cif"))


@pytest.fixture(scope="module")
def irmof1_fragments(irmof1):
    cutter = FragmentCutter(irmof1)
    sites = find_sites(irmof1)
    return {(s.label, r): cutter.cut(s.index, r, type_label=s.label) for s in sites for r in RADII}


def _coordination(atoms, scale=1.2):
    """Bond counts from ASE's neighbour list (independent of pyfragnn's bond graph)."""
    cut = (covalent_radii[atoms.numbers] * scale).tolist()
    i = neighbor_list("i", atoms, cut, self_interaction=False)
    return np.bincount(i, minlength=len(atoms))


def test_irmof1_sites(irmof1):
    sites = find_sites(irmof1)
    mult = {s.label: s.multiplicity for s in sites}
    # Zn4O(BDC)3, Z = 8 in the conventional cell
    assert mult == {"Zn": 32, "O1": 8, "O2": 96, "C1": 48, "C2": 48, "C3": 96, "H": 96}
    sym = np.array(irmof1.get_chemical_symbols())
    i, j = neighbor_list("ij", irmof1, (covalent_radii[irmof1.numbers] * 1.2).tolist())
    nbrs = {s.label: sorted(sym[j[i == s.index]]) for s in sites}
    assert nbrs["O1"] == ["Zn"] * 4  # mu4-oxo
    assert nbrs["O2"] == ["C", "Zn"]  # carboxylate O
    assert nbrs["C1"] == ["C", "O", "O"]  # carboxylate C
    assert nbrs["C2"] == ["C", "C", "C"]  # ring C bonded to the carboxylate
    assert nbrs["C3"] == ["C", "C", "H"]  # ring C-H
    assert nbrs["H"] == ["C"]
    assert nbrs["Zn"] == ["O", "O", "O", "O"]


@pytest.mark.parametrize("radius", RADII)
def test_fragments_are_valid_molecules(irmof1, irmof1_fragments, radius):
    bulk_cn = _coordination(irmof1)
    rules = CappingRules()
    cell = np.array(irmof1.cell)
    for (label, r), f in irmof1_fragments.items():
        if r != radius:
            continue
        where = f"{label} R={radius}"
        cap = f.arrays["cap"]
        bi = f.arrays["bulk_index"]
        # no two atoms closer than 0.9 Å (caps also keep >= min_cap_distance)
        assert pdist(f.positions).min() >= rules.min_cap_distance - 1e-9, where
        # non-cap atoms sit exactly on bulk atoms (bulk index + lattice image)
        rebuilt = irmof1.positions[bi[~cap]] + f.arrays["image"][~cap] @ cell
        assert np.allclose(f.positions[~cap], rebuilt, atol=1e-9), where
        keys = {(int(b), *map(int, s)) for b, s in zip(bi[~cap], f.arrays["image"][~cap])}
        assert len(keys) == int((~cap).sum()), f"duplicate atoms in {where}"
        # completeness: every bulk atom (any image) within R of the centre is present
        sup_i, sup_d = neighbor_list("id", irmof1, radius)
        centre = int(f.info["frag_centres"][0])
        assert f.arrays["bulk_index"][0] == centre
        assert int((~cap).sum()) >= int(np.sum(sup_i == centre)) + 1, where
        d_frag = np.linalg.norm(f.positions[~cap] - f.positions[0], axis=1)
        assert np.sum(d_frag <= radius) == np.sum(sup_d[sup_i == centre] <= radius) + 1, where
        # valence: each real atom keeps its bulk coordination (caps replace cut neighbours)
        cn = _coordination(f)
        assert np.array_equal(cn[~cap], bulk_cn[bi[~cap]]), where
        # caps: one neighbour, a carbon, at the C-H cap length
        for k in np.nonzero(cap)[0]:
            d = np.linalg.norm(f.positions - f.positions[k], axis=1)
            d[k] = np.inf
            p = int(np.argmin(d))
            assert cn[k] == 1 and not cap[p], where
            assert abs(d[p] - rules.cap_lengths[f[p].symbol]) < 1e-9, where
        # neutral closed shell with an even electron count
        assert f.info["charge"] == 0 and f.info["multiplicity"] == 1, where
        assert f.numbers.sum() % 2 == 0, where
        assert f.info["n_atom"] == len(f) and f.info["n_central"] == int(f.arrays["central"].sum())


def test_central_atoms_match_bulk_environment(irmof1, irmof1_fragments):
    """central <=> no cap within R_c and as many neighbours within R_c as in the bulk
    (bulk counts from ASE's periodic neighbour list)."""
    for (label, r), f in irmof1_fragments.items():
        rc = f.info["frag_rc"]
        bulk_n = np.bincount(neighbor_list("i", irmof1, rc), minlength=len(irmof1))
        cap = f.arrays["cap"]
        for a in range(len(f)):
            d = np.linalg.norm(f.positions - f.positions[a], axis=1)
            inside = (d < rc) & (np.arange(len(f)) != a)
            expect = (not cap[a]) and not cap[inside].any() and \
                inside.sum() == bulk_n[f.arrays["bulk_index"][a]]
            assert bool(f.arrays["central"][a]) == expect, f"{label} R={r} atom {a}"
    # with R_c = R_frag the centre of a capped small fragment keeps its full sphere when no cap
    # intrudes; large fragments have more central atoms at R_c = 4.359 than at 8.718 (Tables 1-2)
    cutter = FragmentCutter(irmof1)
    zn = find_sites(irmof1)[0].index
    big_small_rc = cutter.cut(zn, 8.718, r_c=4.359)
    big_big_rc = cutter.cut(zn, 8.718, r_c=8.718)
    assert big_small_rc.info["n_central"] > big_big_rc.info["n_central"] >= 1


def test_central_counts_stable_under_rotation(irmof1, irmof1_fragments):
    rot = Rotation.from_euler("zyx", [37.0, -21.0, 64.0], degrees=True).as_matrix()
    turned = irmof1.copy()
    turned.set_cell(np.array(irmof1.cell) @ rot.T, scale_atoms=False)
    turned.positions = irmof1.positions @ rot.T
    cutter = FragmentCutter(turned)
    for (label, r), f in irmof1_fragments.items():
        g = cutter.cut(int(f.info["frag_centres"][0]), r)
        assert g.info["n_atom"] == f.info["n_atom"], (label, r)
        assert g.info["n_central"] == f.info["n_central"], (label, r)
        assert np.allclose(np.sort(pdist(g.positions)), np.sort(pdist(f.positions)), atol=1e-8)


def test_extxyz_keeps_bookkeeping(irmof1_fragments):
    f = irmof1_fragments[("C2", 4.359)]
    buf = io.StringIO()
    write(buf, f, format="extxyz")
    buf.seek(0)
    g = read(buf, format="extxyz")
    for key in ("bulk_index", "image", "cap", "central"):
        assert np.array_equal(g.arrays[key], f.arrays[key]), key
    for key in ("frag_type", "frag_radius", "frag_rc", "charge", "multiplicity", "n_atom", "n_central"):
        assert g.info[key] == f.info[key], key
    assert list(np.atleast_1d(g.info["frag_centres"])) == list(f.info["frag_centres"])


def test_site_fragments_and_central_mask_recomputed(irmof1, irmof1_fragments):
    frags = site_fragments(irmof1, 4.359)
    assert [f.info["frag_type"] for f in frags] == ["Zn", "O1", "O2", "C1", "C2", "C3", "H"]
    for f in frags:
        ref = irmof1_fragments[(f.info["frag_type"], 4.359)]
        assert (f.info["n_atom"], f.info["n_central"]) == (ref.info["n_atom"], ref.info["n_central"])
        assert np.array_equal(central_mask(f, irmof1, 4.359), f.arrays["central"])


def test_distorted_snapshot_multicentre(irmof1):
    snap = irmof1.copy()
    snap.rattle(0.05, seed=3)
    snap.set_cell(np.array(snap.cell) @ np.array([[1.01, 0.02, 0], [0, 0.99, 0.01], [0, 0, 1.0]]),
                  scale_atoms=True)
    sites = {s.label: s.index for s in find_sites(irmof1)}
    cutter = FragmentCutter(snap)
    a, b = sites["O1"], sites["C3"]
    f = cutter.cut([a, b], 4.359)
    g_a, g_b = cutter.cut(a, 4.359), cutter.cut(b, 4.359)
    keys = lambda x: {(int(i), *map(int, s)) for i, s, c in  # noqa: E731
                      zip(x.arrays["bulk_index"], x.arrays["image"], x.arrays["cap"]) if not c}
    # the union fragment contains both single-centre spheres (second centre at its nearest image)
    assert keys(g_a) <= keys(f)
    shift = f.arrays["image"][1]
    kb = {(i, s0 + shift[0], s1 + shift[1], s2 + shift[2]) for i, s0, s1, s2 in keys(g_b)}
    kb0 = {(i, s0 - g_b.arrays["image"][0][0] + f.arrays["image"][1][0],
            s1 - g_b.arrays["image"][0][1] + f.arrays["image"][1][1],
            s2 - g_b.arrays["image"][0][2] + f.arrays["image"][1][2]) for i, s0, s1, s2 in keys(g_b)}
    assert kb0 <= keys(f) or kb <= keys(f)
    assert f.info["charge"] == 0 and f.info["multiplicity"] == 1
    cn_bulk = _coordination(snap)
    cap = f.arrays["cap"]
    assert np.array_equal(_coordination(f)[~cap], cn_bulk[f.arrays["bulk_index"][~cap]])


@pytest.mark.parametrize("name,symprec", [("IRMOF-10_conv_sym_CH109.cif", 1e-3),
                                          ("IRMOF-16_conv_CH109.cif", 0.05)])  # P1 file, ~Pm-3
def test_other_irmofs_closed_shell(name, symprec):
    atoms = read(_need(STRUCT / name))
    cutter = FragmentCutter(atoms, symprec=symprec)
    sites = find_sites(atoms, symprec=symprec)
    assert len(sites) < len(atoms) // 10, "symmetry not detected"
    frags = [cutter.cut(s.index, r) for s in sites for r in (4.359, 8.718)]
    bad = [f.info["frag_type"] for f in frags if f.info["charge"] or f.info["multiplicity"] != 1]
    assert not bad, f"open-shell/charged fragments in {name}: {bad}"
    for f in frags:
        assert pdist(f.positions).min() > 0.9


def test_ring_cutting_gives_open_shell_and_errors_are_named(irmof1):
    """Cutting rings (keep_rings=False) can give odd electron counts -> doublets; bad input
    is reported with the parameter name."""
    cutter = FragmentCutter(irmof1, CappingRules(keep_rings=False))
    sites = {s.label: s.index for s in find_sites(irmof1)}
    mults = {cutter.cut(sites[k], 3.0).info["multiplicity"] for k in ("C2", "C3", "H", "O1")}
    for k in ("C2", "C3", "H", "O1"):
        f = cutter.cut(sites[k], 3.0)
        assert (f.numbers.sum() % 2 == 1) == (f.info["multiplicity"] == 2)
    assert 2 in mults
    with pytest.raises(IndexError, match="centre index"):
        cutter.cut(10_000, 4.0)
    with pytest.raises(ValueError, match="radius"):
        cutter.cut(0, -1.0)


def test_centroid_rule_gives_subset_and_cap_length_error(irmof1):
    """include='centroid' keeps only units whose centroid is inside: a subset of 'any'."""
    sites = {s.label: s.index for s in find_sites(irmof1)}
    any_f = FragmentCutter(irmof1).cut(sites["C3"], 4.359)
    cen_f = FragmentCutter(irmof1, CappingRules(include="centroid")).cut(sites["C3"], 4.359)
    keys = lambda x: {(int(i), *map(int, s)) for i, s, c in  # noqa: E731
                      zip(x.arrays["bulk_index"], x.arrays["image"], x.arrays["cap"]) if not c}
    assert keys(cen_f) < keys(any_f)
    assert cen_f.info["multiplicity"] == 1
    no_c = CappingRules(cap_lengths={"N": 1.01})
    with pytest.raises(ValueError, match=r"cap length for element 'C'.*bulk index"):
        FragmentCutter(irmof1, no_c).cut(sites["C3"], 4.359)

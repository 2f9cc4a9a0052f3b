"""Interaction range with ASE's EMT, an exactly local potential: an atomic energy depends only on
neighbours closer than r_t (EMT's neighbour-list cutoff), so a centre-atom energy is exact in any
fragment of radius >= r_t, while the force (a sum over atomic energies within r_t) depends on
atoms up to 2 r_t. Fragment convergence and the finite-difference Hessian must both find that."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from pyfragnn.fragments import FragmentCutter, find_sites
from pyfragnn.interaction_range import (
    _conv_radius,
    analyse_hessian,
    force_convergence,
    hessian_blocks,
    truncation_error,
)
from pyfragnn.cli import main
from pyfragnn.labelling import compute

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _r_t(atoms) -> float:
    """EMT's neighbour cutoff (Å): rc_list = rc + 0.5 of ase.calculators.emt."""
    return float(EMT()._calc_cutoff(atoms)[1])


def _cu(rep: int):
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    a.rattle(0.1, seed=7)
    return a


def _alloy(rep: int):
    a = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(rep)
    rng = np.random.default_rng(11)
    a.numbers = rng.choice([29, 47, 79, 28], size=len(a), p=[0.4, 0.2, 0.2, 0.2])
    a.rattle(0.08, seed=5)
    return a


@pytest.mark.parametrize("make", [_cu, _alloy], ids=["Cu", "CuAgAuNi"])
def test_emt_energy_exact_from_rt_force_only_from_2rt(make):
    atoms = make(4)
    rt = _r_t(atoms)
    ref = compute(atoms, "emt")
    e_bulk = ref.calc.results["energies"]
    assert abs(e_bulk.sum() - ref.get_potential_energy()) < 1e-9
    cutter = FragmentCutter(atoms, site_labels=atoms.get_chemical_symbols())
    centres = [0, int(np.argmax(atoms.numbers != atoms.numbers[0]))]
    for c in centres:
        for R, exact in ((rt + 1e-3, True), (rt + 1.0, True), (rt - 0.7, False)):
            f = compute(cutter.cut(c, R, cap=False), "emt")
            err = abs(f.calc.results["energies"][0] - e_bulk[c])
            assert (err < 1e-10) == exact, (c, R - rt, err)
    radii = np.r_[rt, np.arange(2 * rt - 2.5, 2 * rt + 0.3, 0.5)]
    conv = force_convergence(atoms, radii, "emt", centres=centres, cap=False,
                             threshold=1e-10, bulk_forces=ref.get_forces(), progress=False)
    for k, R in enumerate(conv.converged_radius().values()):
        assert conv.dF[k, 0] > 1e-6, "force at R = r_t should not be converged"
        assert 2 * rt - 1.6 <= R <= 2 * rt + 1e-6, (R, 2 * rt)
        assert conv.dF[k, -1] < 1e-10


def test_hessian_range_is_2rt_and_matches_fragment_convergence():
    # Au (a = 4.08 Å) 6x6x6: widths 24.5 Å > 2 * (2 r_t), so periodic images do not overlap
    atoms = bulk("Au", "fcc", a=4.08, cubic=True).repeat(6)
    atoms.rattle(0.1, seed=7)
    rt = _r_t(atoms)
    disp = [0, 300]
    hess = hessian_blocks(atoms, "emt", displace=disp, fd_step=0.01, progress=False)
    norms = hess.norms
    # exactly local: no coupling beyond 2 r_t (finite-difference noise only)
    assert norms[hess.distances > 2 * rt].max(initial=0.0) < 1e-9
    rng = analyse_hessian(hess, threshold=1e-8, delta=1.0)
    assert 2 * rt - 2.0 <= rng.r_frag_conv <= 2 * rt, (rng.r_frag_conv, 2 * rt)
    assert abs(rng.r_c - rng.r_frag_conv / 2) < 1e-12
    # Hessian symmetry H_AB = H_BA^T and translational sum rule sum_A H_AB = 0
    assert np.allclose(hess.blocks[0, 300], hess.blocks[1, 0].T, atol=2e-4)
    assert np.abs(hess.blocks.sum(axis=1)).max() < 1e-3
    # independent route: the force on atom 0 in fragments converges at about the same radius
    conv = force_convergence(atoms, np.arange(2 * rt - 2.4, 2 * rt + 0.2, 0.2), "emt",
                             centres=[0], cap=False, threshold=1e-8, progress=False)
    r_frag = list(conv.converged_radius().values())[0]
    r_hess = list(rng.site_radius.values())[0]
    assert 2 * rt - 2.0 <= r_frag <= 2 * rt
    assert abs(r_frag - r_hess) <= 1.0, (r_frag, r_hess)


def test_hessian_symmetry_reduction_and_pairs():
    ideal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
    hess = hessian_blocks(ideal, "emt", progress=False)  # one site -> 6 force calls
    assert len(hess.displaced) == 1 and hess.labels == ["Cu"]
    rng = analyse_hessian(hess, threshold=1e-3, delta=0.1)
    assert set(rng.pair_radius) == {("Cu", "Cu")}
    assert 0 < rng.pair_radius[("Cu", "Cu")] <= 2 * _r_t(ideal)
    alloy = _alloy(3)
    h2 = hessian_blocks(alloy, "emt", displace=[0, 1], progress=False)
    with pytest.warns(UserWarning, match="periodic images overlap"):  # 11.25 Å cell is too small
        r2 = analyse_hessian(h2, threshold=1e-3, delta=0.1)
    els = sorted(set(alloy.get_chemical_symbols()))
    assert {x for p in r2.pair_radius for x in p} <= set(els)
    assert "R_c" in r2.report()


def test_truncation_error_against_brute_force():
    rng = np.random.default_rng(3)
    d = np.round(rng.uniform(0, 10, 200), 1)  # ties on purpose
    w = rng.uniform(0, 1, 200)
    radii = np.linspace(0, 10, 37)
    brute = np.array([w[d > R].sum() * 0.1 for R in radii])
    assert np.allclose(truncation_error(d, w, 0.1, radii), brute)
    thr = 2.0
    R = _conv_radius(d, w, thr)
    assert w[d > R].sum() <= thr and w[d >= R].sum() > thr  # smallest such distance


def test_cli_writes_table_and_plots(tmp_path):
    from ase.io import write

    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    a.rattle(0.05, seed=1)
    path = tmp_path / "cu.extxyz"
    write(path, a)
    out = tmp_path / "cu"
    assert main(["range", str(path), "-m", "emt", "--radii", "5:7:1", "--no-cap", "-c", "0",
                 "--hessian", "-o", str(out), "-q"]) == 0
    for suffix in ("_convergence.csv", "_convergence.png", "_hessian.png", "_range.txt",
                   "_hessian.npz"):
        p = Path(f"{out}{suffix}")
        assert p.exists() and p.stat().st_size > 100, p
    assert len(Path(f"{out}_convergence.csv").read_text().splitlines()) == 1 + 3
    # the Hessian's displaced force calls are checkpointed: a rerun computes nothing new
    ckpt = Path(f"{out}_displacements.extxyz")
    size = ckpt.stat().st_size
    first = Path(f"{out}_range.txt").read_text()
    assert main(["range", str(path), "-m", "emt", "-c", "0", "--hessian", "-o", str(out), "-q"]) == 0
    assert ckpt.stat().st_size == size
    assert Path(f"{out}_range.txt").read_text() == first


@pytest.mark.slow
def test_gfn2_irmof1_force_convergence():
    pytest.importorskip("tblite")
    from ase.io import read

    path = SHARED / "data" / "structures" / "IRMOF-1_prim_CH109.extxyz"
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    atoms = read(path)
    c1 = [s.index for s in find_sites(atoms) if s.label == "C1"]
    conv = force_convergence(atoms, [4.359, 10.0], "gfn2", centres=c1, workers=2, progress=False)
    # carboxylate C: far from converged in the small fragment, converged at 10 Å (0.125 eV/Å)
    assert conv.dF[0, 0] > 0.125 > conv.dF[0, 1]

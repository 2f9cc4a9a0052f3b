"""Active learning driven by LAMMPS (pyfragnn.active_learning.lammps_active_learning):
exploration through pair_style fragnn with compute fragnn/atom dumps, the exact widening of
the scaling ranges before fine-tuning, and the whole loop against EMT (Cu) until the committee
neither disagrees nor extrapolates on the schedule."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from ase.build import bulk

from conftest import emt_force_rmse

pytestmark = pytest.mark.mpi


def _need_lammps():
    pytest.importorskip("pyfragnn._core", reason="pyfragnn's compiled core is not built")
    import pyfragnn.lammps as pl
    try:
        pl.plugin_path()
    except FileNotFoundError as e:
        pytest.skip(f"LAMMPS plugin not built: {e}")
    for exe in ("lmp", "mpirun"):
        if shutil.which(exe) is None:
            pytest.skip(f"'{exe}' not on PATH")


def _train_members(tmp, data, seeds=(1, 2)):
    from pyfragnn.training.recipes import to_structures
    from pyfragnn.training.trainer import Trainer
    pots = []
    for seed in seeds:
        out = tmp / f"p{seed}"
        Trainer({"data": {"test_fraction": 0.1},
                 "model": {"cutoff": 4.5, "hidden": [8, 8], "radial": {"n": 5, "r_min": 2.0},
                           "angular": {"eta": [0.02], "zeta": [1, 4], "lambda": [-1, 1]}},
                 "training": {"epochs": 6, "seed": seed, "progress": False,
                              "force_fraction": 0.05},
                 "output": {"directory": str(out), "plots": False, "n2p2": False}},
                structures=to_structures(data)).run()
        pots.append(out / "potential.fragnn")
    return pots


@pytest.fixture(scope="module")
def emt_setup(tmp_path_factory):
    """40 rattled 0 K Cu cells (σ 0.03 Å, 32 atoms) labelled with EMT and two HDNNPs trained
    on them (seeds 1, 2)."""
    pytest.importorskip("pyfragnn._core", reason="pyfragnn's compiled core is not built")
    from pyfragnn.labelling import compute as label
    tmp = tmp_path_factory.mktemp("emt_al")
    rng = np.random.default_rng(0)
    base = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    data = []
    for _ in range(40):
        a = base.copy()
        a.positions += rng.normal(0, 0.03, a.positions.shape)
        data.append(label(a, "emt"))
    return tmp, data, _train_members(tmp, data)


def test_widen_scaling_is_exact(emt_setup):
    """Widening the ranges to a compressed cell removes its extrapolation warnings and keeps
    energy and forces (1e-12 relative)."""
    from pyfragnn import Potential
    from pyfragnn.active_learning import widen_scaling
    _, _, pots = emt_setup
    p = Potential.load(str(pots[0]))
    a = bulk("Cu", "fcc", a=3.4, cubic=True) * (2, 2, 2)
    a.rattle(0.05, seed=3)
    w = widen_scaling(p, [a])
    r1 = p.compute(a.positions, a.get_chemical_symbols(), a.cell.array, (True,) * 3)
    r2 = w.compute(a.positions, a.get_chemical_symbols(), a.cell.array, (True,) * 3)
    assert r1["n_warnings"] > 0 and r2["n_warnings"] == 0
    assert abs(r2["energy"] - r1["energy"]) <= 1e-12 * abs(r1["energy"])
    assert np.max(np.abs(r2["forces"] - r1["forces"])) <= 1e-12 * np.max(np.abs(r1["forces"]))


def test_explore_lammps_frames_match_python(emt_setup, tmp_path):
    """explore_lammps (2 ranks, NVT then strained NPT): the dumped deviation and extrapolation
    counts of every sampled frame equal annotate() on the frame's positions (1e-10)."""
    _need_lammps()
    from pyfragnn.active_learning import Stage, annotate, explore_lammps
    _, _, pots = emt_setup
    start = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    frames = explore_lammps(start, pots, [Stage(500, 40), Stage(500, 40, "npt", strain=0.02)],
                            tmp_path, sample_every=20, nprocs=2)
    assert len(frames) == 6
    assert [f.info["md_stage"] for f in frames] == [0, 0, 0, 1, 1, 1]
    for f in frames:
        ref = annotate(f.copy(), pots)
        assert np.max(np.abs(f.arrays["force_deviation"] - ref.arrays["force_deviation"])) \
            <= 1e-10 * max(1.0, ref.arrays["force_deviation"].max())
        assert np.array_equal(f.arrays["extrapolations"], ref.arrays["extrapolations"])
    assert frames[-1].get_volume() != pytest.approx(start.get_volume() * 1.02 ** 3, rel=1e-9)


def test_explore_lammps_halts(emt_setup, tmp_path):
    """stop_deviation: fix halt ends the stage at the first sampled step above it."""
    _need_lammps()
    from pyfragnn.active_learning import Stage, explore_lammps
    _, _, pots = emt_setup
    start = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    frames = explore_lammps(start, pots, [Stage(900, 400)], tmp_path, sample_every=20,
                            stop_deviation=0.05)
    assert "md_stopped" in frames[-1].info
    assert frames[-1].arrays["force_deviation"].max() > 0.05
    assert all(f.arrays["force_deviation"].max() <= 0.05 for f in frames[:-1])
    assert frames[-1].info["md_step"] < 400


def test_explore_lammps_checks_between_samples(emt_setup, tmp_path):
    """check_every=1: the regular samples are those of the sampled run (same steps and
    positions), and between them the first steps with a flagged atom are dumped (at most
    max_between per stage), each with the committee's numbers (annotate, 1e-10)."""
    _need_lammps()
    from pyfragnn.active_learning import Stage, annotate, explore_lammps
    _, _, pots = emt_setup
    start = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    kw = dict(sample_every=20, threshold=0.05, seed=7)
    plain = explore_lammps(start, pots, [Stage(900, 100)], tmp_path / "a", **kw)
    every = explore_lammps(start, pots, [Stage(900, 100)], tmp_path / "b", check_every=1,
                           max_between=1000, **kw)
    capped = explore_lammps(start, pots, [Stage(900, 100)], tmp_path / "c", check_every=1,
                            max_between=5, **kw)
    for got in (every, capped):
        reg = [f for f in got if not f.info.get("md_between_samples")]
        assert [f.info["md_step"] for f in reg] == [f.info["md_step"] for f in plain] \
            == [0, 20, 40, 60, 80, 100]
        for f, g in zip(reg, plain):
            assert np.max(np.abs(f.positions - g.positions)) < 1e-8
    between = [f for f in every if f.info.get("md_between_samples")]
    steps = [f.info["md_step"] for f in between]
    assert len(between) > 5 and all(s % 20 for s in steps) and steps == sorted(steps)
    for f in between:
        assert (f.arrays["force_deviation"] > 0.05).any() or (f.arrays["extrapolations"] > 0).any()
    for f in between[:3]:
        ref = annotate(f.copy(), pots)
        assert np.max(np.abs(f.arrays["force_deviation"] - ref.arrays["force_deviation"])) \
            <= 1e-10 * max(1.0, ref.arrays["force_deviation"].max())
    capped_steps = [f.info["md_step"] for f in capped if f.info.get("md_between_samples")]
    assert capped_steps == steps[:5]


def test_select_candidates_one_per_excursion():
    """min_step_gap: an atom flagged on consecutive dumped steps of one run is one candidate;
    the same atom in another run, or again after the gap, is another."""
    from ase import Atoms
    from pyfragnn.active_learning import select_candidates

    def frame(stage, step, flagged):
        f = Atoms("Cu4", positions=[[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]])
        dev = np.zeros(4)
        dev[flagged] = 2.0
        f.arrays["force_deviation"] = dev
        f.arrays["extrapolations"] = np.zeros(4, int)
        f.info.update(md_stage=stage, md_step=step, structure="Cu")
        return f

    frames = [frame(0, 11, [1]), frame(0, 12, [1, 2]), frame(0, 13, [1]), frame(1, 12, [1]),
              frame(0, 35, [1])]
    got = [(c.frame, c.atom) for c in select_candidates(frames, 1.0, min_step_gap=20)]
    assert got == [(0, 1), (1, 2), (3, 1), (4, 1)]
    every = [(c.frame, c.atom) for c in select_candidates(frames, 1.0)]
    assert every == [(0, 1), (1, 1), (1, 2), (2, 1), (3, 1), (4, 1)]


def _hot_frames(n=6, seed=77):
    """Independent 600 K EMT frames (ASE Langevin on the 108-atom cell, 0.1 ps apart)."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd
    a = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    a.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(a, temperature_K=600, rng=rng)
    dyn = Langevin(a, 2 * units.fs, temperature_K=600, friction=0.02 / units.fs, fixcm=False,
                   rng=rng)
    dyn.run(200)
    out = []
    for _ in range(n):
        dyn.run(50)
        out.append(a.copy())
    return out


def test_lammps_active_learning_emt(emt_setup, tmp_path):
    """The loop from rattled 0 K data: LAMMPS exploration (2 ranks) over NVT 300 K, NVT 600 K
    at +1 % strain and NPT 600 K, candidates above 0.15 eV/Å or extrapolating, 7 Å fragments
    labelled with EMT, widened and fine-tuned committee. It converges by its rule (no sampled
    atom above the threshold, none extrapolating, no stage halted) within 4 iterations, and the
    force RMSE of member 1 on independent 600 K EMT frames falls at least 3x. A second call
    resumes from the iteration records without redoing anything."""
    _need_lammps()
    from pyfragnn.active_learning import Stage, lammps_active_learning
    _, data, pots = emt_setup
    start = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    stages = [Stage(300, 200), Stage(600, 200, strain=0.01), Stage(600, 200, "npt")]
    kw = dict(calculator="emt", threshold=0.15, tolerance=0.0, max_iterations=4,
              sample_every=20, max_per_frame=2, min_separation=2.0, max_total=30,
              fragment_radius=7.0, cap=False, epochs=8, nprocs=2)
    hist = lammps_active_learning(tmp_path / "al", data, pots, start, stages, **kw)
    for h in hist:
        print(h["iteration"], h["converged"], {k: h["exploration"][k] for k in (
            "max_deviation", "above", "extrapolating", "flagged_fraction", "halted")})
    assert hist[0]["exploration"]["flagged"] > 0 and not hist[0]["converged"]
    assert hist[-1]["converged"]
    assert hist[-1]["exploration"]["above"] == 0
    assert hist[-1]["exploration"]["extrapolating"] == 0
    final = hist[-1]["committee"][0]
    test = _hot_frames()
    before, after = emt_force_rmse(pots[0], test), emt_force_rmse(final, test)
    print(f"force RMSE on 600 K EMT frames: {before:.4f} -> {after:.4f} eV/A "
          f"({before / after:.1f}x)")
    assert after * 3 <= before
    # resumable: the summaries are read back, nothing is recomputed
    stamp = {p: p.stat().st_mtime for p in (tmp_path / "al").rglob("iteration.json")}
    again = lammps_active_learning(tmp_path / "al", data, pots, start, stages, **kw)
    assert [json.dumps(h, sort_keys=True) for h in again] == \
        [json.dumps(h, sort_keys=True) for h in hist]
    assert {p: p.stat().st_mtime for p in (tmp_path / "al").rglob("iteration.json")} == stamp

"""The fragment workflow (pyfragnn.workflow, `pyfragnn run`) end to end on EMT, which is
exactly local, so the bulk truth is cheap: Cu3Au (L1_2, 32 atoms, two sites).

What is proven: every step runs and writes its outputs; HDNNP1 from small fragments predicts
held-out bulk forces against EMT itself (independent truth) to a small fraction of the force
spread; the LAMMPS NVE check conserves energy; a rerun reuses every step; a changed key reruns
its step and those after it, never one before; a run killed inside a step resumes to the same
potential as an uninterrupted run; configuration errors name the key.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import package_env

CONFIG = """
[run]
directory = "run"
seed = 1
workers = 2

[[structures]]
name = "Cu3Au"
file = "cu3au.extxyz"

[reference]
method = "emt"

[relax]
steps = 20

[range]
r_c = 4.0

[initial]
md_steps = 60
md_temperature = 600.0
sample_every = 10
rattled = 2

[sampling]
temperatures = [300.0, 700.0]
md_steps = 200
sample_every = 50

[fragments]
cap = false
small_per_site = 2
large_per_site = 1

[training]
epochs = 6
hidden = [8, 8]
committee_hidden = [10, 6]
radial_n = 4
r_min = 2.0
angular_zeta = [1.0]
force_fraction = 0.1

[active]
iterations = 2
temperatures = [600.0]
md_steps = 200
threshold = 0.1
max_candidates = 8
epochs = 3

[validation]
md_frames = 3
md_steps = 60
distorted = 2

[md]
steps = 400
supercell = [1, 1, 1]
nprocs = 1

[npt]
steps = 600
equilibration_steps = 200
nprocs = 1
pressure_frames = 1
"""


def _write_case(d: Path, config: str = CONFIG) -> Path:
    from ase import Atoms
    from ase.io import write

    d.mkdir(parents=True, exist_ok=True)
    cell = Atoms("AuCu3", scaled_positions=[(0, 0, 0), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)],
                 cell=[3.75] * 3, pbc=True).repeat((2, 2, 2))
    cell.positions += np.random.default_rng(0).normal(0, 0.02, cell.positions.shape)
    write(d / "cu3au.extxyz", cell)
    (d / "wf.toml").write_text(config)
    return d / "wf.toml"


def _run(cfg: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    # a hang guard, not a speed test: retraining the controls took > 600 s at load ~5 (nice 10
    # beside a demo run)
    return subprocess.run([sys.executable, "-m", "pyfragnn", "run", str(cfg), *args],
                          cwd=cfg.parent, capture_output=True, text=True, timeout=timeout,
                          env=package_env())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = _write_case(tmp_path_factory.mktemp("wf"))
    t0 = time.perf_counter()
    p = _run(cfg)
    print(f"EMT workflow: {time.perf_counter() - t0:.0f} s wall")  # a figure, not a test
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return cfg


def test_every_step_runs_and_hdnnp1_matches_emt_in_the_bulk(finished):
    from ase.calculators.emt import EMT
    from ase.io import read

    from pyfragnn import Potential
    from pyfragnn.workflow import step_names

    run = finished.parent / "run"
    for s in step_names():
        rec = json.loads((run / s / "step.json").read_text())
        assert rec["step"] == s and rec["fingerprint"]
    summary = json.loads((run / "report" / "summary.json").read_text())
    report = (run / "report" / "report.md").read_text()
    for title in ("Tables 1/2", "Tables 3/4", "Table 6", "Figs. 6/7", "Active learning",
                  "MD check", "Reference cost"):
        assert title in report
    for png in ("parity.png", "force_error_per_site.png"):
        assert (run / "report" / png).stat().st_size > 1000
    # independent truth: EMT itself on the held-out bulk frames
    pot = Potential.load(str(run / "active" / "hdnnp1" / "potential.fragnn"))
    frames = read(run / "bulk" / "bulk_validation.extxyz", ":")
    assert len(frames) == 5
    d, spread = [], []
    for f in frames:
        g = f.copy()
        g.calc = EMT()
        ref = g.get_forces()
        np.testing.assert_allclose(f.get_forces(), ref, rtol=1e-5, atol=1e-6)  # EMT labels
        d.append(pot.compute(f.positions, f.get_chemical_symbols(), f.cell.array,
                             f.pbc)["forces"] - ref)
        spread.append(ref)
    rmse = float(np.sqrt(np.mean(np.concatenate(d) ** 2)))
    assert rmse == pytest.approx(summary["hdnnp1_bulk_force_rmse"], rel=1e-5)  # extxyz text
    assert rmse < 0.2 * float(np.sqrt(np.mean(np.concatenate(spread) ** 2))), rmse
    # the small fragments carry only their centre's complete environment; the large ones more
    small = read(run / "label" / "small.extxyz", ":")
    assert all(int(f.arrays["central"].sum()) >= 1 for f in small)
    assert summary["md_steps_completed"] == 400
    assert abs(summary["md_energy_drift_ev_per_atom"]) < 1e-3
    for k in ("hdnnp1", "hdnnp2"):
        assert math.isfinite(summary["reference_cpu_s"][k]) and summary["reference_cpu_s"][k] > 0


def test_npt_lattice_constant_agrees_with_the_reference_pressure(finished):
    """Section 4.4 on EMT: the NPT cell of HDNNP1 and the cell where EMT's own pressure on
    the same MD frames vanishes (from its slope) agree; the relaxed cell was EMT's own (with
    the rattled input cell's lattice), so both are near the 0 K cell."""
    run = finished.parent / "run"
    rec = json.loads((run / "npt" / "step.json").read_text())["record"]
    r = rec["structures"]["Cu3Au"]
    assert r["steps"] == 600 and r["berendsen"] and abs(r["T_mean_K"] - 300) < 90
    pc = r["pressure_check"]
    assert pc["dP_ref_ds_GPa"] < 0  # compressing raises EMT's pressure
    print("NPT scale", r["scale_mean"], "reference scale", pc["scale_reference"],
          "P", pc["P_nn_mean"], pc["P_ref_mean"])
    assert abs(r["scale_mean"] - pc["scale_reference"]) < 0.01
    assert 0.95 < r["scale_mean"] < 1.05
    report = (run / "report" / "report.md").read_text()
    assert "NPT lattice constants" in report and (run / "report" / "npt_Cu3Au.png").exists()


def test_controls_see_the_same_structures_and_centres_as_hdnnp1(finished):
    """HDNNP2's large fragments are cut around the same centres of the same frames as
    HDNNP1's: the snapshots' and, for every active-learning candidate, its 2 R_c twin."""
    from ase.io import read

    run = finished.parent / "run"
    rec = json.loads((run / "controls" / "step.json").read_text())["record"]
    its = sorted((run / "active").glob("iter*/added.extxyz"))
    assert its, "the EMT case should add active-learning fragments"
    n_al = 0
    for small_file in its:
        small = read(small_file, ":")
        large = read(small_file.with_name("added_large.extxyz"), ":")
        key = lambda f: (f.info["al_frame"], f.info["al_atom"])  # noqa: E731
        # (a duplicate molecule is labelled once, so a twin may be missing on either side)
        common = {key(f) for f in small} & {key(f) for f in large}
        assert len(common) >= 0.5 * min(len(small), len(large)) > 0
        for f in large:  # radius 2 R_c: more atoms than the small twin
            twin = [g for g in small if key(g) == key(f)]
            assert not twin or len(f) > len(twin[0])
        n_al += len(large)
    assert rec["active_learning_fragments"] == n_al > 0
    assert rec["hdnnp2"]["structures"] == rec["snapshot_fragments"] + n_al


def test_rerun_reuses_every_step(finished):
    p = _run(finished)
    assert p.returncode == 0, p.stderr
    from pyfragnn.workflow import step_names

    for s in step_names():
        assert f"{s}: reusing" in p.stdout, p.stdout


def test_changed_key_reruns_that_step_and_later_only(finished, tmp_path):
    """training.hdnnp3 is read by the controls step only (not by HDNNP1 or its active
    learning): switching it on reruns controls and the steps after it; the rest is reused."""
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(finished.parent, d)
    cfg = d / "wf.toml"
    cfg.write_text(CONFIG.replace("force_fraction = 0.1", "force_fraction = 0.1\nhdnnp3 = true"))
    before = {s: json.loads((d / "run" / s / "step.json").read_text())
              for s in ("label", "active", "controls")}
    p = _run(cfg, "--until", "controls")
    assert p.returncode == 0, p.stderr
    for s in ("relax", "sites", "range", "initial", "preliminary", "sampling", "fragments",
              "label", "train", "active"):
        assert f"{s}: reusing" in p.stdout, p.stdout
    assert "controls: running" in p.stdout
    assert "validate" not in p.stdout  # --until stopped after controls
    after = json.loads((d / "run" / "controls" / "step.json").read_text())
    assert after["fingerprint"] != before["controls"]["fingerprint"]
    assert "hdnnp3" in after["record"] and (d / "run" / "controls" / "hdnnp3").is_dir()
    for s in ("label", "active"):
        assert json.loads((d / "run" / s / "step.json").read_text()) == before[s]
    # an earlier step's key reruns from there: the reference MD of the fragments
    cfg.write_text(CONFIG.replace("md_steps = 60", "md_steps = 50", 1))
    p = _run(cfg, "--until", "initial")
    assert p.returncode == 0 and "initial: running" in p.stdout and "range: reusing" in p.stdout


def test_small_radius_reruns_from_fragments_and_pads_the_small_fragments(finished, tmp_path):
    """fragments.small_radius > R_c: the steps before `fragments` are reused (the initial data
    read fragments.cap and max_bond_stretch only), the small fragments get more atoms around
    the same centres and the large ones stay; a radius below R_c stops the step naming the
    key."""
    import shutil

    from ase.io import read

    d = tmp_path / "copy"
    shutil.copytree(finished.parent, d)
    cfg = d / "wf.toml"
    small0 = read(d / "run" / "fragments" / "small.extxyz", ":")
    large0 = read(d / "run" / "fragments" / "large.extxyz", ":")
    cfg.write_text(CONFIG.replace("cap = false", "cap = false\nsmall_radius = 5.0"))
    p = _run(cfg, "--until", "fragments")
    assert p.returncode == 0, p.stderr
    for s in ("relax", "sites", "range", "initial", "preliminary", "sampling"):
        assert f"{s}: reusing" in p.stdout, p.stdout
    assert "fragments: running" in p.stdout
    small = read(d / "run" / "fragments" / "small.extxyz", ":")
    large = read(d / "run" / "fragments" / "large.extxyz", ":")
    assert len(large) == len(large0)
    assert np.mean([len(f) for f in small]) > 1.5 * np.mean([len(f) for f in small0])
    key = lambda f: (f.info["snapshot"], f.info["centre"])  # noqa: E731
    assert {key(f) for f in small} >= {key(f) for f in small0}
    cfg.write_text(CONFIG.replace("cap = false", "cap = false\nsmall_radius = 3.0"))
    p = _run(cfg, "--until", "fragments")
    assert p.returncode != 0 and "fragments.small_radius" in p.stdout + p.stderr


def test_kill_inside_steps_and_resume_gives_the_same_potential(finished, tmp_path):
    """SIGKILL while labelling and while training; the resumed run's HDNNP1 equals the
    uninterrupted run's bit for bit."""
    cfg = _write_case(tmp_path / "k")
    run = cfg.parent / "run"
    for step in ("label", "train"):
        proc = subprocess.Popen([sys.executable, "-m", "pyfragnn", "run", str(cfg), "--until",
                                 "train"], cwd=cfg.parent, env=package_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        t0 = time.time()
        partial = run / f".{step}.partial"
        while not any(partial.glob("*.extxyz" if step == "label" else "*/checkpoint*")):
            assert proc.poll() is None, f"run ended before it reached {step}"
            assert time.time() - t0 < 300
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (run / step / "step.json").exists()
    p = _run(cfg, "--until", "train")
    assert p.returncode == 0, p.stderr
    assert "label: reusing" in p.stdout and "train: resuming" in p.stdout
    ref = finished.parent / "run" / "train"
    for m in ("hdnnp1", "hdnnp1b"):
        assert (run / "train" / m / "potential.fragnn").read_bytes() == \
            (ref / m / "potential.fragnn").read_bytes()


def test_configuration_errors_name_the_key(tmp_path):
    from pyfragnn.workflow import WorkflowConfigError, load_config

    cfg = _write_case(tmp_path)
    cases = {
        "[training]\nepochs = 6": ("[training]\nepochs = \"6\"", "training.epochs"),
        "cap = false": ("cap = \"false\"", "fragments.cap"),
        "r_c = 4.0": ("r_c = nan", "range.r_c"),
        "steps = 20": ("steps = 20\nfmx = 0.1", "relax.fmx"),
        "method = \"emt\"": ("method = \"nosuchcode\"", "reference.method"),
        "md_frames = 3": ("md_frames = -3", "validation.md_frames"),
    }
    for old, (new, key) in cases.items():
        cfg.write_text(CONFIG.replace(old, new, 1))
        with pytest.raises(WorkflowConfigError, match=key.replace(".", r"\.")):
            load_config(cfg)
    cfg.write_text(CONFIG)
    assert load_config(cfg).training.epochs == 6
    p = _run(cfg, "--until", "nosuchstep")
    assert p.returncode == 2 and "nosuchstep" in p.stderr
    p = subprocess.run([sys.executable, "-m", "pyfragnn", "run", "--keys"], capture_output=True,
                       text=True, env=package_env(), cwd=tmp_path)
    assert p.returncode == 0 and "max_bond_stretch" in p.stdout and "[[structures]]" in p.stdout


def test_added_key_at_its_old_value_keeps_the_fingerprints(tmp_path):
    """active.check_every, added after runs existed: at 0 (the old behaviour) it is not part
    of the active step's fingerprint, so finished and partial steps stay valid; set, it is,
    and it must divide active.sample_every."""
    from pyfragnn.workflow import WorkflowConfigError, load_config
    from pyfragnn.workflow.runner import _fingerprint, _steps

    cfg_file = _write_case(tmp_path)

    def fingerprints(cfg):
        fps = {}
        for st in _steps():
            fps[st.name] = _fingerprint(st, cfg, fps)
        return fps

    base = load_config(cfg_file)
    assert "check_every" not in base.section("active")
    old = fingerprints(base)
    cfg_file.write_text(CONFIG.replace("[active]\n", "[active]\ncheck_every = 0\n", 1))
    assert fingerprints(load_config(cfg_file)) == old
    cfg_file.write_text(CONFIG.replace("[active]\n", "[active]\ncheck_every = 1\n", 1))
    new = fingerprints(load_config(cfg_file))
    changed = sorted(k for k in old if old[k] != new[k])
    assert changed[:1] and "active" in changed and "train" not in changed
    cfg_file.write_text(CONFIG.replace("[active]\n", "[active]\nsample_every = 10\n"
                                       "check_every = 3\n", 1))
    with pytest.raises(WorkflowConfigError, match=r"active\.check_every: must divide"):
        load_config(cfg_file)


def test_sampling_restarts_a_run_that_stops_early(monkeypatch):
    """A preliminary potential that heats the bulk stops each run after a few frames; the
    run restarts with other seeds until it has md_steps / sample_every frames (or the
    restarts are spent), and a run that reaches its end is not restarted. The committee
    stop rule reaches the MD only when set (0: off)."""
    from ase import Atoms

    import pyfragnn.active_learning as al
    from pyfragnn.workflow.config import SamplingConfig
    from pyfragnn.workflow.steps import _sampling_run

    seeds, stops = [], []

    def fake_explore(start, pots, temp, steps, dt, every, stop_deviation, stop_temperature,
                     seed):
        seeds.append(seed)
        stops.append(stop_deviation)
        n = 3 if len(seeds) < 3 else steps // every  # two early stops, then a full run
        out = []
        for k in range(n + 1):
            f = start.copy()
            f.info.update(md_step=k * every, md_time_ps=k * every * dt / 1000)
            out.append(f)
        if n == 3:
            out[-1].info["md_stopped"] = "temperature 900 K"
        return out

    monkeypatch.setattr(al, "explore", fake_explore)
    start = Atoms("Cu", cell=[3, 3, 3], pbc=True)
    sm = SamplingConfig(md_steps=400, sample_every=40, restarts=5)
    frames, rec = _sampling_run(start, [], 300.0, 7, sm)
    assert len(seeds) == 3 and len(set(seeds)) == 3  # other seed each time, then done
    assert len(frames) == rec["frames"] == 10 and rec["attempts"] == 3
    assert rec["stopped"].count("900 K") == 2
    seeds.clear()
    frames, rec = _sampling_run(start, [], 300.0, 7, SamplingConfig(md_steps=400,
                                                                    sample_every=40,
                                                                    restarts=1))
    assert len(seeds) == 2 and len(frames) == 6  # restarts spent: what it has
    assert stops == [None] * 5
    stops.clear()
    _sampling_run(start, [], 300.0, 7, SamplingConfig(md_steps=400, sample_every=40,
                                                      stop_deviation=3.0))
    assert stops == [3.0]


def test_shipped_configurations_load():
    """The demo's and the examples' workflow files are valid configurations (every key known,
    every structure file found)."""
    from pyfragnn.workflow import load_config
    from pyfragnn.workflow.runner import cfg_file

    root = Path(__file__).resolve().parents[1]
    files = [root / "pyfragnn" / "data" / "demo_irmof1.toml"]
    files += sorted((root / "examples" / "irmof").glob("*.toml"))
    if len(files) < 3:
        pytest.skip("examples/ is not beside the tests (installed package only)")
    for f in files:
        cfg = load_config(f)
        for s in cfg.structures:
            assert cfg_file(cfg, s.file).exists(), (f, s.file)


def test_members_trained_side_by_side_equal_serial_training(finished, tmp_path):
    """run_parallel (spawned workers) gives the same potentials, bit for bit, as training
    the committee members one after the other."""
    from pyfragnn.frames import read_frames
    from pyfragnn.workflow.config import load_config
    from pyfragnn.workflow.runner import Context
    from pyfragnn.workflow.steps import _train_job, run_parallel

    cfg = load_config(finished)
    t = cfg.training
    data = read_frames(finished.parent / "run" / "initial" / "initial.extxyz")[:12]
    jobs = lambda d: [(data, d / "a", 4.0, t.hidden, 1, ["Cu", "Au"], t),  # noqa: E731
                      (data, d / "b", 4.0, t.committee_hidden, 2, ["Cu", "Au"], t)]
    serial = [_train_job(*j) for j in jobs(tmp_path / "serial")]
    ctx = Context(cfg, tmp_path, tmp_path, "test")
    side = run_parallel(ctx, _train_job, jobs(tmp_path / "parallel"))
    assert side == serial
    for m in ("a", "b"):
        assert (tmp_path / "parallel" / m / "potential.fragnn").read_bytes() == \
            (tmp_path / "serial" / m / "potential.fragnn").read_bytes()


def test_decoupled_kalman_key_reaches_training_and_fine_tuning(tmp_path):
    """training.kalman_decoupled: HDNNP trained with one filter block per element (the
    recipes' symmetric filter kept: the key is merged into the filter settings, not put in
    their place), and the active-learning fine-tuning continues that filter (its block
    count must match the checkpoint's, or init_state stops)."""
    import dataclasses

    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    from pyfragnn.training.checkpoint import load_state
    from pyfragnn.workflow.active import _fine_tune_job
    from pyfragnn.workflow.config import load_config
    from pyfragnn.workflow.steps import _train_job, training_options

    cfg = _write_case(tmp_path / "case")
    t = load_config(cfg).training
    assert training_options(t)["kalman"] == {"decoupled": False}
    base, rng, data = read(cfg.parent / "cu3au.extxyz"), np.random.default_rng(3), []
    for k in range(10):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        data.append(a)
    blocks = {}
    for dec in (False, True):
        td = dataclasses.replace(t, kalman_decoupled=dec, epochs=2)
        _train_job(data, tmp_path / str(dec), 4.0, t.hidden, 1, ["Cu", "Au"], td)
        blocks[dec] = len(load_state(str(tmp_path / str(dec) / "checkpoint.npz"))["opt"]["P"])
        if dec:
            pot = tmp_path / str(dec) / "potential.fragnn"
            (tmp_path / "ft").mkdir()
            res = _fine_tune_job(data[:8], tmp_path / "ft", "m", str(pot), 1, 0.1, 3,
                                 training_options(td))
            assert math.isfinite(res["rmse_F_train"])
            assert len(load_state(str(tmp_path / "ft" / "m" / "checkpoint.npz"))["opt"]["P"]) == 2
    assert blocks == {False: 1, True: 2}
    assert (tmp_path / "False" / "potential.fragnn").read_bytes() != \
        (tmp_path / "True" / "potential.fragnn").read_bytes()


def test_small_fragments_around_a_candidate_come_from_its_r_c_sphere():
    """active.small_per_candidate: the candidate itself plus up to n - 1 distinct atoms within
    R_c of it (minimum image), never one beyond."""
    from ase.build import bulk

    from pyfragnn.active_learning import Candidate
    from pyfragnn.workflow.active import _around

    frame = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
    cands = [Candidate(0, 0, 1.5, 0), Candidate(0, 50, 2.0, 3)]
    assert _around([frame], cands, 1, 3.0, np.random.default_rng(0)) == cands
    out = _around([frame], cands, 5, 3.0, np.random.default_rng(0))
    assert len(out) == 10
    for k, c in enumerate(cands):
        group = out[5 * k:5 * k + 5]
        assert group[0] == c and len({g.atom for g in group}) == 5
        for g in group[1:]:
            assert g.deviation == c.deviation
            assert 0 < frame.get_distance(c.atom, g.atom, mic=True) < 3.0
    # 12 nearest neighbours within 3.0 Å in fcc Cu (a = 3.6): at most 12 extras
    assert len(_around([frame], cands[:1], 40, 3.0, np.random.default_rng(0))) == 13


def test_exploration_in_both_ensembles_and_committee_selection_keys(tmp_path, monkeypatch):
    """active.ensemble = 'nvt+npt' runs the whole schedule (temperatures, then strains at the
    first temperature) once in NVT and once in NPT; wrong values of active.ensemble and
    active.select are errors naming the key, NPT needs the LAMMPS engine."""
    from ase import Atoms

    import pyfragnn.active_learning as al
    import pyfragnn.workflow.active as wa
    from pyfragnn.workflow import WorkflowConfigError, load_config
    from pyfragnn.workflow.runner import Context

    cfg = _write_case(tmp_path)
    act = "[active]\niterations = 2"
    for new, key in (("ensemble = \"nve\"", "active.ensemble"),
                     ("engine = \"ase\"\nensemble = \"npt\"", "active.ensemble"),
                     ("select = \"worst\"", "active.select")):
        cfg.write_text(CONFIG.replace(act, f"{act}\n{new}", 1))
        with pytest.raises(WorkflowConfigError, match=key.replace(".", r"\.")):
            load_config(cfg)
    assert f"{act}\ntemperatures = [600.0]" in CONFIG
    cfg.write_text(CONFIG.replace(f"{act}\ntemperatures = [600.0]",
                                  f"{act}\nensemble = \"nvt+npt\"\nstrains = [-0.01, 0.02]"
                                  "\ntemperatures = [300.0, 600.0]", 1))
    c = load_config(cfg)
    got = []

    def fake(start, pots, stages, work, *a, **kw):
        got.extend(stages)
        out = []
        for k, st in enumerate(stages):
            f = start.copy()
            f.arrays["force_deviation"] = np.zeros(len(f))
            f.arrays["extrapolations"] = np.zeros(len(f), int)
            f.info.update(md_stage=k, md_time_ps=0.1, md_ensemble=st.ensemble)
            out.append(f)
        return out

    cell = Atoms("Cu", cell=[3, 3, 3], pbc=True)
    cell.info["name"] = "cu"
    monkeypatch.setattr(al, "explore_lammps", fake)
    monkeypatch.setattr(wa, "_relaxed", lambda ctx: [cell])
    frames, runs = wa._explore(Context(c, tmp_path, tmp_path, "active"), [], 1, tmp_path)
    sched = [(300.0, 0.0), (600.0, 0.0), (300.0, -0.01), (300.0, 0.02)]
    assert [(s.ensemble, s.temperature, s.strain) for s in got] == \
        [("nvt", t, e) for t, e in sched] + [("npt", t, e) for t, e in sched]
    assert [r["ensemble"] for r in runs] == ["nvt"] * 4 + ["npt"] * 4

"""The steps of the fragment workflow (Herbold & Behler 2023), in order.

relax → sites → range → initial → preliminary → sampling → fragments → label → train → active
→ controls → bulk → md → npt → validate → report (``controls`` alone on one core runs beside
``bulk``, ``md`` and ``npt``). Each step reads the configuration tables named in its ``Step``
entry and the outputs of the steps in ``after``; see :mod:`pyfragnn.workflow.runner`.
Units: Å, eV, eV/Å, fs, K.
"""
from __future__ import annotations

from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms

from ..frames import read_frames, write_frames
from .runner import Context, Step, WorkflowError, cfg_file

__all__ = ["STEPS"]


# --------------------------------------------------------------------------- helpers
def _labelled(ctx: Context, items: List[Atoms], name: str,
              executor: Optional[Executor] = None) -> List[Atoms]:
    """Label ``items`` with the reference method into ``ctx.out/name.extxyz`` (resumable) and
    return them in input order; a failed calculation stops the step naming the file.
    ``executor``: a pool to run on (default: ``run.workers`` processes of its own)."""
    from ..labelling import label, labelled_in_order, read_dataset

    if not items:
        return []
    path = ctx.out / f"{name}.extxyz"
    summ = label(items, path, calculator=ctx.cfg.reference.method, workers=ctx.cfg.run.workers,
                 progress=None, executor=executor)
    got = labelled_in_order(items, read_dataset(path))
    missing = [i for i, f in enumerate(got) if f is None]
    if missing:
        raise WorkflowError(f"{ctx.step}: {len(missing)} reference calculations failed "
                            f"(structures {missing[:5]}...; see {path}.failed.jsonl)")
    ctx.say(f"{name}: {summ.n_computed} computed, {summ.n_already_done} reused")
    return list(got)  # type: ignore[arg-type]


def _cpu_s(frames: Sequence[Atoms]) -> float:
    return float(sum(float(a.info.get("label_seconds", 0.0)) for a in frames))


def _clean(ctx: Context, frames: List[Atoms], what: str) -> Tuple[List[Atoms], List[dict]]:
    """Frames without the reference outliers (:func:`pyfragnn.outliers.outliers`), and the
    list of those left out."""
    from ..outliers import outliers

    ref = ctx.cfg.reference
    out = outliers(frames, max_force=ref.max_force,
                   max_energy_dev_per_atom=ref.max_energy_deviation)
    drop = {o.index for o in out}
    for o in out:
        ctx.say(f"{what}: left out {o} ({frames[o.index].info.get('label', '')})")
    return ([a for i, a in enumerate(frames) if i not in drop],
            [{"index": o.index, "label": str(frames[o.index].info.get("label", "")),
              "reason": str(o)} for o in out])


def _relaxed(ctx: Context) -> List[Atoms]:
    return read_frames(ctx.input("relax") / "relaxed.extxyz")


def _site_labels(ctx: Context) -> Dict[str, List[str]]:
    return {k: v["labels"] for k, v in ctx.record("sites").items()}


def _site_members(ctx: Context) -> Dict[str, Dict[str, List[int]]]:
    return {k: v["members"] for k, v in ctx.record("sites").items()}


def _r_c(ctx: Context) -> float:
    return float(ctx.record("range")["r_c"])


# --------------------------------------------------------------------------- steps
def small_radius(ctx: Context) -> float:
    """Radius of the small fragments (Å): ``fragments.small_radius`` or R_c."""
    r_c, r = _r_c(ctx), ctx.cfg.fragments.small_radius
    if r and r < r_c:
        raise WorkflowError(f"fragments.small_radius = {r:g} Å is below R_c = {r_c:g} Å: the "
                            "central atoms' environments would be cut")
    return r or r_c


def step_relax(ctx: Context) -> Dict[str, Any]:
    """Relax the positions of every structure with the reference method (cell fixed)."""
    from ase.io import read

    from ..labelling import compute

    cfg = ctx.cfg
    rec, out = {}, []
    for s in cfg.structures:
        path = cfg_file(cfg, s.file)
        if not path.exists():
            raise WorkflowError(f"structures: {s.name}: file {path} not found")
        a = read(str(path), 0)
        if not a.pbc.all() or a.cell.rank != 3:
            raise WorkflowError(f"structures: {s.name}: {path} is not a 3-D periodic cell")
        done = ctx.out / f"relaxed_{s.name}.extxyz"
        if done.exists():
            r = read_frames(done)[0]
        else:
            r = _relax_one(a, cfg.reference.method, cfg.relax.fmax, cfg.relax.steps,
                           cfg.run.workers) if cfg.relax.steps else compute(a, cfg.reference.method)
            r.info["name"] = s.name
            write_frames(done, [r])
        fmax = float(np.linalg.norm(r.get_forces(), axis=1).max())
        rec[s.name] = {"atoms": len(r), "formula": r.get_chemical_formula(),
                       "energy_eV": float(r.get_potential_energy()), "fmax_eV_A": fmax,
                       "steps": int(r.info.get("relax_steps", 0))}
        ctx.say(f"{s.name}: {len(r)} atoms, max|F| {fmax:.3f} eV/Å")
        out.append(r)
    write_frames(ctx.out / "relaxed.extxyz", out)
    return rec


def _relax_one(atoms: Atoms, spec, fmax: float, steps: int, threads: int) -> Atoms:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.optimize import BFGS

    from ..labelling import _thread_env, make_calculator

    a = atoms.copy()
    with _thread_env(max(1, threads)):
        a.calc = make_calculator(spec, a)
        opt = BFGS(a, logfile=None, maxstep=0.1)
        opt.run(fmax=fmax, steps=steps)
        res = a.copy()
        res.calc = SinglePointCalculator(res, energy=float(a.get_potential_energy()),
                                         forces=np.array(a.get_forces()))
    res.info["relax_steps"] = int(opt.nsteps)
    return res


def step_sites(ctx: Context) -> Dict[str, Any]:
    """Symmetry-nonequivalent sites of each relaxed structure (labels NAME:site when several
    structures are given, so a site shared by several frameworks is one site per framework)."""
    from ..fragments import find_sites

    relaxed = _relaxed(ctx)
    multi = len(relaxed) > 1
    rec = {}
    for a in relaxed:
        name = str(a.info["name"])
        labels = [""] * len(a)
        members = {}
        for s in find_sites(a):
            lab = f"{name}:{s.label}" if multi else s.label
            members[lab] = [int(k) for k in s.members]
            for k in s.members:
                labels[k] = lab
        rec[name] = {"labels": labels, "members": members}
        ctx.say(f"{name}: " + ", ".join(f"{k}(x{len(v)})" for k, v in members.items()))
    return rec


def step_range(ctx: Context) -> Dict[str, Any]:
    """R_c given, or from the Hessian of the reference method: R_c = R_frag^conv / 2."""
    from ..interaction_range import analyse_hessian, hessian_blocks, plot_hessian

    cfg = ctx.cfg
    if cfg.range.r_c > 0:
        ctx.say(f"R_c = {cfg.range.r_c} Å from the configuration")
        return {"r_c": cfg.range.r_c, "source": "configuration"}
    rec: Dict[str, Any] = {"source": "hessian", "structures": {}}
    for a in _relaxed(ctx):
        name = str(a.info["name"])
        bare = a.copy()
        bare.calc = None
        hess = hessian_blocks(bare, cfg.reference.method, fd_step=cfg.range.fd_step,
                              workers=cfg.run.workers,
                              checkpoint=ctx.out / f"hessian_{name}.extxyz")
        rr = analyse_hessian(hess, cfg.range.threshold, cfg.range.delta)
        plot_hessian(hess, rr, ctx.out / f"hessian_{name}.png", title=name)
        (ctx.out / f"hessian_{name}.txt").write_text(rr.report() + "\n")
        rec["structures"][name] = {"r_frag_conv": rr.r_frag_conv, "site_radius": rr.site_radius,
                                   "min_cell_width": rr.min_cell_width}
        ctx.say(f"{name}: R_frag^conv {rr.r_frag_conv:.3f} Å")
    rec["r_frag_conv"] = max(v["r_frag_conv"] for v in rec["structures"].values())
    rec["r_c"] = rec["r_frag_conv"] / 2
    if rec["r_c"] <= 0:
        raise WorkflowError("range: the Hessian analysis gave R_c = 0 (no interaction above the "
                            "threshold); give range.r_c")
    ctx.say(f"R_c = R_frag^conv / 2 = {rec['r_c']:.3f} Å")
    return rec


def _cutter(ctx: Context, snap: Atoms, name: str):
    """A FragmentCutter of ``snap`` whose bonds come from the relaxed structure ``name``; a
    snapshot with a bond stretched beyond ``fragments.max_bond_stretch`` x its relaxed length
    raises :class:`~pyfragnn.topology.StretchedBondError` naming the bond."""
    from ..fragments import CappingRules, FragmentCutter
    from ..topology import StretchedBondError

    rules = CappingRules(max_stretch=ctx.cfg.fragments.max_bond_stretch)
    ref = next(a for a in _relaxed(ctx) if a.info["name"] == name)
    cutter = FragmentCutter(snap, rules, site_labels=_site_labels(ctx)[name], reference=ref)
    if cutter.stretched_bonds:
        raise StretchedBondError(cutter.stretched_bonds, "snapshot")
    return cutter


def _cut(cutter, centre: int, radius: float, r_c: float, cap: bool, site: str,
         info: Dict[str, Any]) -> Atoms:
    """One fragment; :class:`~pyfragnn.fragments.UnsoundFragmentError` if
    :func:`~pyfragnn.fragments.check_fragment` finds a problem (closed shell only if capped)."""
    from ..fragments import UnsoundFragmentError, check_fragment

    f = cutter.cut(int(centre), radius, r_c=r_c, cap=cap, type_label=site)
    problems = check_fragment(f, cutter.topology, closed_shell=cap)
    if problems:
        raise UnsoundFragmentError(problems, f"centre {centre}")
    f.info.update(info)
    f.info.update(site=site, centre=int(centre))
    return f


def step_initial(ctx: Context) -> Dict[str, Any]:
    """Initial data (section 3): reference MD in vacuum of small fragments (radius R_c) around
    every site of the relaxed structures, plus rattled copies of those fragments."""
    from ..dedup import unique_fragments
    from ..sampling import distorted_snapshots, fragment_md

    cfg, ini = ctx.cfg, ctx.cfg.initial
    r_c = _r_c(ctx)
    members = _site_members(ctx)
    rng = np.random.default_rng(cfg.run.seed)
    frags = []
    for a in _relaxed(ctx):
        name = str(a.info["name"])
        cutter = _cutter(ctx, a, name)
        for site, mem in members[name].items():
            for c in rng.choice(mem, min(ini.fragments_per_site, len(mem)), replace=False):
                frags.append(_cut(cutter, c, r_c, r_c, cfg.fragments.cap, site,
                                  {"label": f"{site}-s", "structure": name}))
    frags = unique_fragments(frags)
    ctx.say(f"{len(frags)} fragments ({min(map(len, frags))}-{max(map(len, frags))} atoms), "
            f"{ini.md_steps} MD steps at {ini.md_temperature:g} K each")
    frames = fragment_md(frags, cfg.reference.method, ini.md_steps, ini.md_temperature,
                         ini.timestep_fs, ini.sample_every, cfg.run.seed, cfg.run.workers,
                         checkpoint_dir=ctx.out / "md")
    rattled = []
    for k, f in enumerate(frags):
        for r in distorted_snapshots(f, ini.rattled, ini.rattle, 0.0, cfg.run.seed + k):
            r.info.update(f.info, sampling="rattled")
            rattled.append(r)
    rattled = _labelled(ctx, rattled, "rattled_labels")
    data, dropped = _clean(ctx, frames + rattled, "initial")
    write_frames(ctx.out / "initial.extxyz", data)
    return {"fragments": len(frags), "frames": len(frames), "rattled": len(rattled),
            "kept": len(data), "outliers": dropped, "label_cpu_s": _cpu_s(frames + rattled),
            "fragment_atoms": [len(f) for f in frags]}


def _train_job(data: List[Atoms], out: Path, cutoff: float, hidden: Sequence[int], seed: int,
               elements: List[str], t: Any) -> Dict[str, Any]:
    """Train one HDNNP with the ``[training]`` settings ``t`` into ``out`` (a process job)."""
    from ..training.recipes import to_structures, train_hdnnp

    if (out / "potential.fragnn").exists() and (out / "rmse_table.csv").exists():
        return {"structures": len(data)}
    res = train_hdnnp(to_structures(data), out, cutoff, t.epochs, hidden=tuple(hidden),
                      radial_n=t.radial_n, r_min=t.r_min, angular_zeta=t.angular_zeta,
                      test_fraction=t.test_fraction, seed=seed, progress=None,
                      elements=elements, extra_training=training_options(t))
    last = res.history[-1]
    return {k: float(last[k]) for k in ("rmse_E_train", "rmse_E_test", "rmse_F_train",
                                        "rmse_F_test")} | {"structures": len(data)}


def training_options(t: Any) -> Dict[str, Any]:
    """The trainer's ``[training]`` settings that the workflow's ``[training]`` table sets."""
    return {"force_fraction": t.force_fraction, "kalman": {"decoupled": t.kalman_decoupled}}


@contextmanager
def worker_pool(ctx: Context, n_jobs: int) -> Iterator[Optional[Executor]]:
    """Up to ``run.workers`` spawned processes with one thread each (None: fewer than two
    jobs or workers, run them here). Jobs start in submission order."""
    workers = min(ctx.cfg.run.workers, n_jobs)
    if workers <= 1:
        yield None
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from ..labelling import _thread_env

    with _thread_env(1), ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        yield pool


def run_parallel(ctx: Context, fn: Callable[..., Any], jobs: Sequence[tuple]) -> List[Any]:
    """``[fn(*args) for args in jobs]``, on up to ``run.workers`` processes (spawned, one
    thread each). The trainers run on one core, so the members of a committee train side by
    side; the results do not depend on the number of workers."""
    with worker_pool(ctx, len(jobs)) as pool:
        if pool is None:
            return [fn(*args) for args in jobs]
        futures = [pool.submit(fn, *args) for args in jobs]
        return [f.result() for f in futures]


def _elements(ctx: Context) -> List[str]:
    from ase.data import atomic_numbers

    syms = {s for a in _relaxed(ctx) for s in a.get_chemical_symbols()}
    if ctx.cfg.fragments.cap:
        syms.add("H")
    return sorted(syms, key=lambda x: atomic_numbers[x])


def step_preliminary(ctx: Context) -> Dict[str, Any]:
    """A preliminary committee (two HDNNPs: other seed and architecture) on the initial data."""
    data = read_frames(ctx.input("initial") / "initial.extxyz")
    t, r_c, els = ctx.cfg.training, _r_c(ctx), _elements(ctx)
    seed = ctx.cfg.run.seed
    a, b = run_parallel(ctx, _train_job, [(data, ctx.out / "a", r_c, t.hidden, seed, els, t),
                                          (data, ctx.out / "b", r_c, t.committee_hidden,
                                           seed + 1, els, t)])
    return {"a": a, "b": b}


def step_sampling(ctx: Context) -> Dict[str, Any]:
    """Bulk snapshots: MD runs with the preliminary potential at each temperature (each
    stopped where it heats the system past 1.5 x the target or where the preliminary committee
    disagrees by more than ``sampling.stop_deviation``: the frames up to there show where it
    goes wrong; restarted with other seeds up to ``sampling.restarts`` times), plus
    strained and rattled copies of the relaxed cells."""
    from ..sampling import distorted_snapshots

    cfg, sm = ctx.cfg, ctx.cfg.sampling
    pots = [str(ctx.input("preliminary") / m / "potential.fragnn") for m in ("a", "b")]
    snaps, runs = [], []
    for a in _relaxed(ctx):
        name = str(a.info["name"])
        start = a.copy()
        start.calc = None
        for k, temp in enumerate(sm.temperatures):
            for run in range(sm.runs):
                fr, rec = _sampling_run(start, pots, temp, cfg.run.seed + 31 * k + 7919 * run,
                                        sm)
                runs.append(dict(structure=name, T_K=temp, run=run, **rec))
                for f in fr:
                    f.info.update(structure=name, sampling=f"md{temp:g}K")
                snaps += fr
        for f in distorted_snapshots(start, sm.strained, sm.rattle, sm.strain, cfg.run.seed + 5):
            f.info.update(structure=name, sampling="strained")
            snaps.append(f)
    for s in snaps:
        for key in ("force_deviation", "extrapolations"):
            s.arrays.pop(key, None)
    write_frames(ctx.out / "snapshots.extxyz", snaps)
    ctx.say(f"{len(snaps)} snapshots; MD runs: {runs}")
    return {"snapshots": len(snaps), "runs": runs}


def _sampling_run(start: Atoms, pots: List[str], temp: float, seed: int,
                  sm: Any) -> Tuple[List[Atoms], Dict[str, Any]]:
    """One sampling run at ``temp`` K: MD with the preliminary potential, stopped where it
    heats past 1.5 x ``temp`` or (``sm.stop_deviation``) where the two preliminary potentials
    disagree; a run stopped early restarts from ``start`` with another seed
    (at most ``sm.restarts`` times) until it has ``md_steps / sample_every`` frames."""
    from ..active_learning import explore

    want = max(1, sm.md_steps // sm.sample_every)
    frames: List[Atoms] = []
    stops: List[str] = []
    ps = 0.0
    for attempt in range(sm.restarts + 1):
        fr = explore(start, pots, temp, sm.md_steps, 0.5, sm.sample_every,
                     stop_deviation=sm.stop_deviation or None,
                     stop_temperature=1.5 * temp, seed=seed + 104729 * attempt)
        fr = [f for f in fr if int(f.info["md_step"]) > 0]
        ps += float(fr[-1].info["md_time_ps"]) if fr else 0.0
        stops.append(str(fr[-1].info.get("md_stopped", "")) if fr else "no frame")
        frames += fr[:want - len(frames)]
        if len(frames) >= want or not stops[-1]:
            break
    return frames, {"frames": len(frames), "attempts": len(stops), "ps": ps,
                    "stopped": "; ".join(x for x in stops if x)}


def step_fragments(ctx: Context) -> Dict[str, Any]:
    """Small (``fragments.small_radius``, default R_c) and large (2 R_c) fragments of the
    snapshots around random members of every site, each distinct molecule once
    (:func:`pyfragnn.dedup.unique_fragments`); snapshots with a stretched bond and unsound
    cuts are skipped and reported."""
    from ..dedup import unique_fragments
    from ..fragments import UnsoundFragmentError
    from ..topology import StretchedBondError

    cfg, fc = ctx.cfg, ctx.cfg.fragments
    r_c, r_small = _r_c(ctx), small_radius(ctx)
    members = _site_members(ctx)
    rng = np.random.default_rng(cfg.run.seed + 2)
    small, large, skipped, unsound = [], [], [], []
    for i, snap in enumerate(read_frames(ctx.input("sampling") / "snapshots.extxyz")):
        name = str(snap.info["structure"])
        try:
            cutter = _cutter(ctx, snap, name)
        except StretchedBondError as exc:
            skipped.append({"snapshot": i, "reason": str(exc)})
            ctx.say(f"snapshot {i} skipped: {exc}")
            continue
        for site, mem in members[name].items():
            info = {"structure": name, "snapshot": i}
            for kind, n, radius, out in (("s", fc.small_per_site, r_small, small),
                                         ("l", fc.large_per_site, 2 * r_c, large)):
                for c in rng.choice(mem, min(n, len(mem)), replace=False):
                    try:
                        out.append(_cut(cutter, c, radius, r_c, fc.cap, site,
                                        dict(info, label=f"{site}-{kind}")))
                    except (StretchedBondError, UnsoundFragmentError) as exc:
                        unsound.append({"snapshot": i, "centre": int(c), "reason": str(exc)})
                        ctx.say(f"snapshot {i}, centre {c}: no fragment: {exc}")
    n_cut = (len(small), len(large))
    small, large = unique_fragments(small), unique_fragments(large)
    write_frames(ctx.out / "small.extxyz", small)
    write_frames(ctx.out / "large.extxyz", large)
    size = lambda fr: [min(map(len, fr)), max(map(len, fr))] if fr else [0, 0]  # noqa: E731
    ctx.say(f"{len(small)} distinct small ({size(small)} atoms) of {n_cut[0]} cuts, "
            f"{len(large)} distinct large ({size(large)} atoms) of {n_cut[1]} cuts; "
            f"{len(skipped)} snapshots skipped, {len(unsound)} unsound cuts")
    return {"small": len(small), "large": len(large), "small_cuts": n_cut[0],
            "large_cuts": n_cut[1], "small_atoms": size(small), "large_atoms": size(large),
            "skipped_snapshots": skipped, "unsound_cuts": unsound}


def step_label(ctx: Context) -> Dict[str, Any]:
    """Reference energies and forces of the small and large fragments; outliers left out."""
    rec = {}
    for kind in ("small", "large"):
        frames = _labelled(ctx, read_frames(ctx.input("fragments") / f"{kind}.extxyz"),
                           f"{kind}_labels")
        kept, dropped = _clean(ctx, frames, kind)
        write_frames(ctx.out / f"{kind}.extxyz", kept)
        rec[kind] = {"labelled": len(frames), "kept": len(kept), "outliers": dropped,
                     "label_cpu_s": _cpu_s(frames)}
    return rec


def _small_data(ctx: Context) -> List[Atoms]:
    return (read_frames(ctx.input("initial") / "initial.extxyz")
            + read_frames(ctx.input("label") / "small.extxyz"))


def step_train(ctx: Context) -> Dict[str, Any]:
    """HDNNP1 (small fragments, cutoff R_c) and its committee partner (other seed and
    architecture), the starting point of the active learning."""
    t, r_c, els, seed = ctx.cfg.training, _r_c(ctx), _elements(ctx), ctx.cfg.run.seed
    small = _small_data(ctx)
    a, b = run_parallel(ctx, _train_job,
                        [(small, ctx.out / "hdnnp1", r_c, t.hidden, seed, els, t),
                         (small, ctx.out / "hdnnp1b", r_c, t.committee_hidden, seed + 1, els, t)])
    return {"hdnnp1": a, "hdnnp1b": b}


def large_data(ctx: Context) -> Tuple[List[Atoms], List[Atoms]]:
    """The controls' training data: large fragments of the bulk snapshots and those cut
    around the active-learning candidates (``iterNN/added_large.extxyz``)."""
    snap = read_frames(ctx.input("label") / "large.extxyz")
    al: List[Atoms] = []
    for it in sorted(ctx.input("active").glob("iter*/added_large.extxyz")):
        al += read_frames(it)
    return snap, al


def step_controls(ctx: Context) -> Dict[str, Any]:
    """The controls of section 3: HDNNP2 (large fragments, cutoff R_c) and optionally HDNNP3
    (large, 2 R_c), on large fragments around the same centres of the same bulk structures as
    HDNNP1's small ones (snapshots and active-learning candidates)."""
    t, r_c, els, seed = ctx.cfg.training, _r_c(ctx), _elements(ctx), ctx.cfg.run.seed
    snap, al = large_data(ctx)
    large = snap + al
    if not large:
        raise WorkflowError("controls: no large fragment to train HDNNP2 on")
    jobs = [(large, ctx.out / "hdnnp2", r_c, t.hidden, seed, els, t)]
    if t.hdnnp3:
        jobs.append((large, ctx.out / "hdnnp3", 2 * r_c, t.hidden, seed, els, t))
    res = run_parallel(ctx, _train_job, jobs)
    rec = {"hdnnp2": res[0], "snapshot_fragments": len(snap), "active_learning_fragments": len(al)}
    if t.hdnnp3:
        rec["hdnnp3"] = res[1]
    return rec


def _checkpoint(d: Path) -> Path:
    """The trainer's checkpoint file in an output folder."""
    found = sorted(d.glob("checkpoint.*"))
    if not found:
        raise WorkflowError(f"no trainer checkpoint in {d}")
    return found[0]


def step_active(ctx: Context) -> Dict[str, Any]:
    """Active learning (section 3): bulk MD with the committee HDNNP1 + partner; atoms whose
    force components differ by more than ``active.threshold`` or whose ACSFs extrapolate
    become centres of new small fragments; both members are fine-tuned on all small
    fragments. Stops when an iteration finds no candidate (converged) or after
    ``active.iterations``. Resumable per iteration."""
    from .active import run_active

    return run_active(ctx)


def step_bulk(ctx: Context) -> Dict[str, Any]:
    """Held-out bulk frames (300 K MD with the final HDNNP1, rattled/strained cells) labelled
    with the reference method, and the reference centre-fragment deviations (Figs. 6/7)."""
    from .validate import run_bulk

    return run_bulk(ctx)


def step_validate(ctx: Context) -> Dict[str, Any]:
    """Errors of every potential on the held-out bulk frames, per structure and site."""
    from .validate import run_validate

    return run_validate(ctx)


def step_md(ctx: Context) -> Dict[str, Any]:
    """LAMMPS NVE of the supercell of the first structure with the final HDNNP1."""
    from ..md import lammps_md

    m = ctx.cfg.md
    if m.steps == 0:
        return {"skipped": True}
    a = _relaxed(ctx)[0].repeat(tuple(m.supercell))
    pot = ctx.input("active") / "hdnnp1" / "potential.fragnn"
    try:
        res = lammps_md(pot, a, ctx.out, m.steps, m.timestep_fs, m.temperature, m.nprocs,
                        seed=ctx.cfg.run.seed + 4928)
    except (RuntimeError, OSError) as exc:
        ctx.say(f"FAILED: {exc}")
        return {"skipped": False, "passed": False, "steps_completed": _steps_done(ctx.out),
                "error": str(exc)[-2000:], "atoms": len(a)}
    res["passed"] = bool(abs(res["drift_eV_atom"]) <= m.max_drift)
    res["steps_completed"] = int(res["steps"])
    res["skipped"] = False
    ctx.say(f"{len(a)} atoms, {m.steps} steps: drift {res['drift_eV_atom']:.2e} eV/atom "
            f"({'pass' if res['passed'] else 'FAIL'}, limit {m.max_drift:g})")
    return res


def _steps_done(work: Path) -> int:
    """Last thermo step LAMMPS logged before it failed."""
    log = work / "log.lammps"
    last = 0
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            t = line.split()
            if t and t[0].isdigit() and len(t) >= 5:
                last = int(t[0])
    return last


def step_npt(ctx: Context) -> Dict[str, Any]:
    """LAMMPS NPT lattice constants of every structure with the final HDNNP1 (section 4.4),
    optionally checked against the reference method's pressures."""
    from .npt import run_npt

    return run_npt(ctx)


def step_report(ctx: Context) -> Dict[str, Any]:
    """report.md (Tables 1-6 analogues, AL, MD), summary.json and the figures."""
    from .report import write_report

    return write_report(ctx)


#: the training keys of HDNNP1 and its partner (not hdnnp3: toggling it reruns controls only)
_PRELIMINARY_KEYS = tuple(f"training.{k}" for k in (
    "epochs", "hidden", "committee_hidden", "radial_n", "r_min", "angular_zeta",
    "force_fraction", "test_fraction", "kalman_decoupled"))
_ALL = ("relax", "sites", "range", "initial", "preliminary", "sampling", "fragments", "label",
        "train", "active", "controls", "bulk", "md", "npt", "validate")


def _controls_alone(cfg) -> bool:
    """HDNNP2 alone takes one core: run it beside the steps after it (runner ``background``)."""
    return not cfg.training.hdnnp3 and cfg.run.workers > 1


STEPS: List[Step] = [
    Step("relax", step_relax, ("structures", "reference", "relax"), (), "relax the structures"),
    Step("sites", step_sites, (), ("relax",), "nonequivalent sites"),
    Step("range", step_range, ("range", "reference"), ("relax",), "interaction range, R_c"),
    Step("initial", step_initial, ("initial", "fragments.cap", "fragments.max_bond_stretch",
                                   "reference", "seed"),
         ("relax", "sites", "range"), "reference MD of small fragments in vacuum"),
    Step("preliminary", step_preliminary, _PRELIMINARY_KEYS + ("seed", "fragments.cap"),
         ("initial", "range", "relax"), "preliminary committee"),
    Step("sampling", step_sampling, ("sampling", "seed"), ("preliminary", "relax"),
         "bulk snapshots"),
    Step("fragments", step_fragments, ("fragments", "seed"), ("sampling", "sites", "range"),
         "small and large fragments"),
    Step("label", step_label, ("reference",), ("fragments",), "reference labels"),
    Step("train", step_train, _PRELIMINARY_KEYS + ("seed", "fragments"),
         ("initial", "label", "range", "relax"), "HDNNP1 and its committee partner"),
    Step("active", step_active, _PRELIMINARY_KEYS + ("active", "reference", "fragments",
                                                     "seed"),
         ("train", "initial", "label", "sites", "relax", "range"), "active learning"),
    Step("controls", step_controls, ("training", "seed"), ("active", "label", "range", "relax"),
         "HDNNP2(, HDNNP3): large fragments of the same structures", _controls_alone),
    Step("bulk", step_bulk, ("validation", "reference", "seed"),
         ("active", "relax", "sites", "range"), "held-out bulk frames, reference labels"),
    Step("md", step_md, ("md", "seed"), ("active", "relax"), "LAMMPS NVE check"),
    Step("npt", step_npt, ("npt", "md.supercell", "reference", "seed"),
         ("active", "relax"), "LAMMPS NPT lattice constants"),
    Step("validate", step_validate, ("validation", "reference"),
         ("bulk", "active", "train", "controls", "relax", "sites", "range"),
         "bulk validation of every potential"),
    Step("report", step_report, ("md", "npt"), _ALL, "report"),
]

"""The workflow's active-learning step (Herbold & Behler 2023, section 3), resumable per
iteration in ``RUN/.active.partial/iterNN``.

Iteration k explores every relaxed structure (``active.supercell``) with the current HDNNP1,
its committee partner alongside: with ``active.engine = 'lammps'`` one LAMMPS run per
temperature and strain (:func:`pyfragnn.active_learning.explore_lammps`: ``pair_style fragnn``
with both members, ``compute fragnn/atom`` dumped every ``active.sample_every`` steps, ``fix
halt`` once more than a tenth of the atoms extrapolate), with ``'ase'`` Langevin MD
(:func:`pyfragnn.active_learning.explore`). Atoms whose force components differ by more than
``active.threshold`` eV/Å or whose symmetry functions extrapolate are candidates
(:func:`~pyfragnn.active_learning.select_candidates`); small fragments (radius R_c) around
them, each distinct one once, are labelled with the reference method (outliers left out).
With ``active.large_fragments`` the large fragments (2 R_c) around the same candidates are
labelled as well (``iterNN/added_large.extxyz``) for the controls HDNNP2/3 (step
``controls``). Both members get symmetry-function ranges that cover all data
(:func:`~pyfragnn.active_learning.widen_scaling`, exact) and are fine-tuned on all small
fragments, weights and Kalman filter continued.

Convergence rule (reported per iteration): no run stopped early and at most
``active.tolerance`` of the sampled atom-frames deviate or extrapolate
(:func:`~pyfragnn.active_learning.exploration_summary`); the loop then ends with
``converged = true``, else after ``active.iterations``. The final pair is
``hdnnp1``/``hdnnp1b``.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..frames import read_frames, write_frames
from .runner import Context
from .steps import _checkpoint, _clean, _labelled, _r_c, _relaxed, _site_labels, _small_data

__all__ = ["run_active"]

_MEMBERS = ("hdnnp1", "hdnnp1b")


def _explore(ctx: Context, pots: List[str], it: int, work: Path) -> tuple:
    """Exploration MD of every structure; annotated frames (``info['structure']``) and one
    record per run."""
    from ..active_learning import Stage, explore, explore_lammps

    ac = ctx.cfg.active
    frames, runs = [], []
    for a in _relaxed(ctx):
        name = str(a.info["name"])
        start = a.repeat(tuple(ac.supercell))
        start.calc = None
        stop_ex = max(1, len(start) // 10)
        seed = ctx.cfg.run.seed + 1000 * it
        if ac.engine == "lammps":
            stages = [Stage(t, ac.md_steps, ac.ensemble) for t in ac.temperatures]
            stages += [Stage(ac.temperatures[0], ac.md_steps, ac.ensemble, strain=e)
                       for e in ac.strains]
            fr = explore_lammps(start, pots, stages, work / name, ac.sample_every, 0.5,
                                ac.threshold, stop_deviation=ac.stop_deviation or None,
                                stop_extrapolating_atoms=stop_ex, nprocs=ac.nprocs,
                                seed=seed)
            groups = [[f for f in fr if f.info["md_stage"] == k] for k in range(len(stages))]
            temps = [s.temperature for s in stages]
        else:
            groups = [explore(start, pots, t, ac.md_steps, 0.5, ac.sample_every,
                              stop_deviation=ac.stop_deviation or None,
                              stop_temperature=2.0 * t, stop_extrapolating_atoms=stop_ex,
                              seed=seed + k) for k, t in enumerate(ac.temperatures)]
            temps = list(ac.temperatures)
        for t, fr in zip(temps, groups):
            for f in fr:
                f.info.update(structure=name, al_iteration=it)
            runs.append({"structure": name, "T_K": t, "frames": len(fr),
                         "ps": float(fr[-1].info["md_time_ps"]) if fr else 0.0,
                         "stopped": str(fr[-1].info.get("md_stopped", "")) if fr else "",
                         "max_deviation": float(max(f.arrays["force_deviation"].max()
                                                    for f in fr)) if fr else 0.0,
                         "extrapolating_atom_fraction":
                             float(np.mean([np.mean(f.arrays["extrapolations"] > 0)
                                            for f in fr])) if fr else 0.0})
            frames += fr
    return frames, runs


def _new_fragments(ctx: Context, frames: List, cands: List, it: int,
                   large: bool = False) -> List:
    """Distinct small (radius R_c; ``large``: 2 R_c) fragments around the candidates, bonds
    from the relaxed structures, stretched up to ``active.max_bond_stretch``."""
    from ..active_learning import candidate_fragments
    from ..dedup import unique_fragments
    from ..fragments import CappingRules

    labels = _site_labels(ctx)
    relaxed = {str(a.info["name"]): a for a in _relaxed(ctx)}
    reps = tuple(ctx.cfg.active.supercell)
    rules = CappingRules(max_stretch=ctx.cfg.active.max_bond_stretch)
    r_c = _r_c(ctx)
    frags = []
    for c in cands:  # one at a time: a stretched bond skips its candidate only
        name = str(frames[c.frame].info["structure"])
        n_rep = int(np.prod(reps))
        with warnings.catch_warnings(record=True) as skipped:  # reported, not raised
            warnings.simplefilter("always")
            fr = candidate_fragments(frames, [c], 2 * r_c if large else r_c, r_c,
                                     cap=ctx.cfg.fragments.cap, rules=rules,
                                     site_labels=labels[name] * n_rep,
                                     tag="l" if large else "s",
                                     reference=relaxed[name].repeat(reps))
        for w in skipped:
            ctx.say(str(w.message))
        for g in fr:
            g.info.update(structure=name, sampling="active", al_iteration=it,
                          site=g.info["label"].rsplit("-", 1)[0])
        frags += fr
    return unique_fragments(frags)


def _fine_tune(ctx: Context, d: Path, current: Dict[str, Path], data: List, it: int) -> dict:
    """Widen each member's SF ranges to ``data`` (exact) and fine-tune it on ``data``."""
    from ..active_learning import widen_scaling
    from ..training.recipes import fine_tune_hdnnp, to_structures

    ac, t = ctx.cfg.active, ctx.cfg.training
    rec = {}
    for m in _MEMBERS:
        init = d / f"{m}_widened.fragnn"
        if not init.exists():
            widen_scaling(str(current[m] / "potential.fragnn"), data).save(str(init))
        res = fine_tune_hdnnp(to_structures(data), d / m, init, ac.epochs,
                              init_state=_checkpoint(current[m]), test_fraction=t.test_fraction,
                              seed=ctx.cfg.run.seed + it, progress=None,
                              extra_training={"force_fraction": t.force_fraction})
        rec[m] = {k: float(res.history[-1][k]) for k in
                  ("rmse_E_train", "rmse_E_test", "rmse_F_train", "rmse_F_test")}
    return rec


def _iteration(ctx: Context, it: int, current: Dict[str, Path], data: List,
               added: List) -> Dict[str, Any]:
    """One iteration in ``ctx.out/iterNN``; returns its record (cached in iter.json)."""
    from ..active_learning import exploration_summary, select_candidates

    ac = ctx.cfg.active
    d = ctx.out / f"iter{it:02d}"
    d.mkdir(exist_ok=True)
    done = d / "iter.json"
    if done.exists():
        return json.loads(done.read_text())
    pots = [str(current[m] / "potential.fragnn") for m in _MEMBERS]
    frames, runs = _explore(ctx, pots, it, d / "explore")
    summ = exploration_summary(frames, ac.threshold)
    converged = summ["halted"] == 0 and summ["flagged_fraction"] <= ac.tolerance
    rec: Dict[str, Any] = {"iteration": it, "runs": runs, "exploration": summ,
                           "converged": converged, "candidates": 0}
    ctx.say(f"iteration {it}: {summ['frames']} frames, max deviation "
            f"{summ['max_deviation']:.3f} eV/Å, flagged atom-frames "
            f"{summ['flagged_fraction']:.4f}, {summ['halted']} runs stopped"
            + (" -> converged" if converged else ""))
    if not converged:
        cands = select_candidates(frames, ac.threshold, True, ac.max_per_frame,
                                  ac.min_separation, ac.max_candidates)
        frags = _new_fragments(ctx, frames, cands, it)
        sub = Context(ctx.cfg, ctx.root, d, ctx.step)  # labels inside the iteration folder
        labelled = _labelled(sub, frags, "labels")
        kept, dropped = _clean(sub, labelled, f"iteration {it}")
        write_frames(d / "added.extxyz", kept)
        rec.update(candidates=len(cands), fragments=len(frags), kept=len(kept),
                   outliers=dropped, label_cpu_s=float(sum(float(a.info.get("label_seconds", 0))
                                                           for a in labelled)))
        if ac.large_fragments:  # the controls' data: same frames, same centres, 2 R_c
            big = _labelled(sub, _new_fragments(ctx, frames, cands, it, large=True),
                            "labels_large")
            big_kept, big_dropped = _clean(sub, big, f"iteration {it} (large)")
            write_frames(d / "added_large.extxyz", big_kept)
            rec.update(large_kept=len(big_kept), large_outliers=big_dropped,
                       label_cpu_s_large=float(sum(float(a.info.get("label_seconds", 0))
                                                   for a in big)))
        if kept:
            rec.update(_fine_tune(ctx, d, current, data + added + kept, it))
    done.write_text(json.dumps(rec, indent=1))
    return rec


def run_active(ctx: Context) -> Dict[str, Any]:
    """The active-learning loop; returns {iterations: [...], converged, added}."""
    current = {m: ctx.input("train") / m for m in _MEMBERS}
    data = _small_data(ctx)
    added: List = []
    iters: List[Dict[str, Any]] = []
    converged = False
    for it in range(1, ctx.cfg.active.iterations + 1):
        rec = _iteration(ctx, it, current, data, added)
        iters.append(rec)
        if rec["converged"]:
            converged = True
            break
        d = ctx.out / f"iter{it:02d}"
        added += read_frames(d / "added.extxyz")
        if all((d / m / "potential.fragnn").exists() for m in _MEMBERS):
            current = {m: d / m for m in _MEMBERS}
    for m in _MEMBERS:
        dst = ctx.out / m
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(current[m], dst)
    ctx.say(f"{len(iters)} iterations, {len(added)} fragments added, "
            f"{'converged' if converged else 'not converged'}")
    return {"iterations": iters, "converged": converged, "added": len(added)}

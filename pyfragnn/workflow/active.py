"""The workflow's active-learning step (Herbold & Behler 2023, section 3), resumable per
iteration in ``RUN/.active.partial/iterNN``.

Iteration k: NVT MD (ASE Langevin) of every relaxed structure at every temperature of
``active.temperatures`` with the current HDNNP1, its committee partner alongside; atoms whose
force components differ by more than ``active.threshold`` eV/Å or whose symmetry functions
extrapolate are candidates (:func:`pyfragnn.active_learning.select_candidates`); small
fragments (radius R_c) around them are labelled with the reference method (outliers left out)
and both members are fine-tuned on all small fragments, weights and Kalman filter continued.

Convergence rule: an iteration whose sampled frames hold no atom above the threshold and no
extrapolating atom ends the loop (``converged``); otherwise the loop ends after
``active.iterations`` with ``converged = false``. The final pair is ``hdnnp1``/``hdnnp1b``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from .runner import Context
from .steps import _checkpoint, _clean, _labelled, _r_c, _relaxed, _site_labels, _small_data
from ..frames import read_frames, write_frames

__all__ = ["run_active"]

_MEMBERS = ("hdnnp1", "hdnnp1b")


def _explore(ctx: Context, pots: List[str], it: int) -> tuple:
    """Exploration MD of every structure and temperature; annotated frames and run records."""
    from ..active_learning import explore

    ac = ctx.cfg.active
    frames, runs = [], []
    for a in _relaxed(ctx):
        name = str(a.info["name"])
        start = a.copy()
        start.calc = None
        for k, temp in enumerate(ac.temperatures):
            fr = explore(start, pots, temp, ac.md_steps, 0.5, ac.sample_every,
                         stop_temperature=2.0 * temp,
                         stop_extrapolating_atoms=max(1, len(a) // 10),
                         seed=ctx.cfg.run.seed + 1000 * it + k)
            for f in fr:
                f.info.update(structure=name, al_iteration=it)
            runs.append({"structure": name, "T_K": temp, "frames": len(fr),
                         "ps": float(fr[-1].info["md_time_ps"]) if fr else 0.0,
                         "stopped": fr[-1].info.get("md_stopped", "") if fr else "",
                         "max_deviation": float(max(f.arrays["force_deviation"].max()
                                                    for f in fr)) if fr else 0.0,
                         "extrapolating_atom_fraction":
                             float(np.mean([np.mean(f.arrays["extrapolations"] > 0)
                                            for f in fr])) if fr else 0.0})
            frames += fr
    return frames, runs


def _iteration(ctx: Context, it: int, current: Dict[str, Path], data: List,
               added: List) -> Dict[str, Any]:
    """One iteration in ``ctx.out/iterNN``; returns its record (cached in iter.json)."""
    from ..active_learning import candidate_fragments, select_candidates
    from ..training.recipes import fine_tune_hdnnp, to_structures

    ac, t = ctx.cfg.active, ctx.cfg.training
    d = ctx.out / f"iter{it:02d}"
    d.mkdir(exist_ok=True)
    done = d / "iter.json"
    if done.exists():
        return json.loads(done.read_text())
    frames, runs = _explore(ctx, [str(current[m] / "potential.fragnn") for m in _MEMBERS], it)
    cands = select_candidates(frames, ac.threshold, True, ac.max_per_frame, ac.min_separation,
                              ac.max_candidates)
    rec: Dict[str, Any] = {"iteration": it, "runs": runs, "frames": len(frames),
                           "candidates": len(cands), "converged": not cands}
    ctx.say(f"iteration {it}: {len(frames)} frames, {len(cands)} candidates")
    if cands:
        from ..dedup import unique_fragments
        from ..fragments import CappingRules

        labels = _site_labels(ctx)
        relaxed = {str(a.info["name"]): a for a in _relaxed(ctx)}
        rules = CappingRules(max_stretch=ctx.cfg.fragments.max_bond_stretch)
        frags = []
        for c in cands:  # one at a time: a stretched bond skips its candidate only
            name = str(frames[c.frame].info["structure"])
            fr = candidate_fragments(frames, [c], _r_c(ctx), _r_c(ctx),
                                     cap=ctx.cfg.fragments.cap, rules=rules,
                                     site_labels=labels[name], tag="s",
                                     reference=relaxed[name])
            for g in fr:
                g.info.update(structure=name, sampling="active", al_iteration=it,
                              site=g.info["label"].rsplit("-", 1)[0])
            frags += fr
        frags = unique_fragments(frags)
        sub = Context(ctx.cfg, ctx.root, d, ctx.step)
        labelled = _labelled(sub, frags, "labels")
        kept, dropped = _clean(sub, labelled, f"iteration {it}")
        write_frames(d / "added.extxyz", kept)
        rec.update(fragments=len(frags), kept=len(kept), outliers=dropped,
                   label_cpu_s=float(sum(float(a.info.get("label_seconds", 0))
                                         for a in labelled)))
        for m in _MEMBERS:
            res = fine_tune_hdnnp(to_structures(data + added + kept), d / m,
                                  current[m] / "potential.fragnn", ac.epochs,
                                  init_state=_checkpoint(current[m]),
                                  test_fraction=t.test_fraction, seed=ctx.cfg.run.seed + it,
                                  progress=None,
                                  extra_training={"force_fraction": t.force_fraction})
            rec[m] = {k: float(res.history[-1][k]) for k in
                      ("rmse_E_train", "rmse_E_test", "rmse_F_train", "rmse_F_test")}
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
        added += read_frames(ctx.out / f"iter{it:02d}" / "added.extxyz")
        current = {m: ctx.out / f"iter{it:02d}" / m for m in _MEMBERS}
    for m in _MEMBERS:
        dst = ctx.out / m
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(current[m], dst)
    ctx.say(f"{len(iters)} iterations, {len(added)} fragments added, "
            f"{'converged' if converged else 'not converged'}")
    return {"iterations": iters, "converged": converged, "added": len(added),
            "final_from": str(current["hdnnp1"].relative_to(ctx.root)
                              if current["hdnnp1"].is_relative_to(ctx.root)
                              else current["hdnnp1"])}

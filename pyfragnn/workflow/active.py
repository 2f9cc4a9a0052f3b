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

The loop is :class:`~pyfragnn.active_learning.ActiveLearningLoop` (the one
:func:`~pyfragnn.active_learning.lammps_active_learning` runs) with the hooks below.
Convergence rule (reported per iteration): no run stopped early and at most
``active.tolerance`` of the sampled atom-frames deviate or extrapolate
(:func:`~pyfragnn.active_learning.exploration_summary`); the loop then ends with
``converged = true``, else after ``active.iterations``, the committee trained last then
explored once more (``final``). With ``active.select = 'best'`` the shipped pair
``hdnnp1``/``hdnnp1b`` is the explored committee with no run stopped and the fewest flagged
atom-frames (:meth:`~pyfragnn.active_learning.ActiveLearningLoop.best`), else the last one.
``active.ensemble = 'nvt+npt'`` runs the schedule in both ensembles.
"""
from __future__ import annotations

import itertools
import shutil
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..active_learning import ActiveLearningLoop, excursion_gap
from ..frames import write_frames
from .runner import Context
from .steps import (_checkpoint, _clean, _cpu_s, _labelled, _r_c, _relaxed, _site_labels,
                    _small_data, small_radius, training_options, worker_pool)

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
            stages = []
            for ens in ac.ensemble.split("+"):  # 'nvt+npt': the schedule once per ensemble
                stages += [Stage(t, ac.md_steps, ens) for t in ac.temperatures]
                stages += [Stage(ac.temperatures[0], ac.md_steps, ens, strain=e)
                           for e in ac.strains]
            fr = explore_lammps(start, pots, stages, work / name, ac.sample_every, 0.5,
                                ac.threshold, stop_deviation=ac.stop_deviation or None,
                                stop_extrapolating_atoms=stop_ex, nprocs=ac.nprocs,
                                seed=seed, check_every=ac.check_every or None)
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
            reg = [f for f in fr if not f.info.get("md_between_samples")]  # regular samples
            runs.append({"structure": name, "T_K": t, "frames": len(reg),
                         "between": len(fr) - len(reg),
                         "ensemble": str(fr[-1].info.get("md_ensemble", "nvt")) if fr else "",
                         "ps": float(fr[-1].info["md_time_ps"]) if fr else 0.0,
                         "stopped": str(fr[-1].info.get("md_stopped", "")) if fr else "",
                         "max_deviation": float(max(f.arrays["force_deviation"].max()
                                                    for f in fr)) if fr else 0.0,
                         "extrapolating_atom_fraction":
                             float(np.mean([np.mean(f.arrays["extrapolations"] > 0)
                                            for f in reg])) if reg else 0.0})
            frames += fr
    return frames, runs


def _new_fragments(ctx: Context, frames: List, cands: List, it: int,
                   large: bool = False) -> List:
    """Distinct small (radius ``fragments.small_radius``, default R_c; ``large``: 2 R_c)
    fragments around the candidates, bonds from the relaxed structures, stretched up to
    ``active.max_bond_stretch``."""
    from ..active_learning import candidate_fragments
    from ..dedup import unique_fragments
    from ..fragments import CappingRules
    from ..topology import BondTopology

    labels = _site_labels(ctx)
    relaxed = {str(a.info["name"]): a for a in _relaxed(ctx)}
    reps = tuple(ctx.cfg.active.supercell)
    rules = CappingRules(max_stretch=ctx.cfg.active.max_bond_stretch)
    r_c = _r_c(ctx)
    radius = 2 * r_c if large else small_radius(ctx)
    if not large:
        cands = _around(frames, cands, ctx.cfg.active.small_per_candidate, r_c,
                        np.random.default_rng(ctx.cfg.run.seed + 31 * it))
    topologies: Dict[str, BondTopology] = {}  # one bond graph per structure, not per cut
    frags = []
    # runs of consecutive candidates in one structure, in candidate order
    for name, run in itertools.groupby(cands, key=lambda c: str(frames[c.frame].info["structure"])):
        if name not in topologies:
            topologies[name] = BondTopology(relaxed[name].repeat(reps), rules.bond_scale,
                                            rules.max_stretch)
        with warnings.catch_warnings(record=True) as skipped:  # reported, not raised
            warnings.simplefilter("always")
            fr = candidate_fragments(frames, list(run), radius, r_c,
                                     cap=ctx.cfg.fragments.cap, rules=rules,
                                     site_labels=labels[name] * int(np.prod(reps)),
                                     tag="l" if large else "s", reference=topologies[name])
        for w in skipped:
            ctx.say(str(w.message))
        for g in fr:
            g.info.update(structure=name, sampling="active", al_iteration=it,
                          site=g.info["label"].rsplit("-", 1)[0])
        frags += fr
    return unique_fragments(frags)


def _around(frames: List, cands: List, n: int, r_c: float, rng) -> List:
    """Each candidate and up to ``n - 1`` other centres drawn from the atoms within ``r_c``
    of it in its frame (minimum image), with the candidate's deviation."""
    from ..active_learning import Candidate

    if n <= 1:
        return list(cands)
    out = []
    for c in cands:
        f = frames[c.frame]
        d = f.get_distances(c.atom, range(len(f)), mic=True)
        near = np.flatnonzero((d < r_c) & (np.arange(len(f)) != c.atom))
        picks = rng.choice(near, min(n - 1, len(near)), replace=False) if len(near) else []
        out.append(c)
        out += [Candidate(c.frame, int(j), c.deviation, 0) for j in picks]
    return out


class _WorkflowLoop(ActiveLearningLoop):
    """The workflow's hooks of :class:`~pyfragnn.active_learning.ActiveLearningLoop`:
    every structure explored, fragments with the relaxed structures' bonds and sites, labels
    through the workflow's labeller (outliers left out), the controls' large twins, and both
    members fine-tuned with their Kalman filters continued."""

    def __init__(self, ctx: Context, data: List):
        ac = ctx.cfg.active
        super().__init__(ctx.out, ac.threshold, ac.tolerance, ac.iterations, ac.max_per_frame,
                         ac.min_separation, ac.max_candidates,
                         min_step_gap=excursion_gap(ac.sample_every, ac.check_every),
                         extrapolation_share=ac.extrapolation_share, log=ctx.say)
        self.ctx, self.data = ctx, data
        self._large = None  # (context, large fragments, iteration) waiting for their labels

    def explore(self, members, it, d):
        frames, runs = _explore(self.ctx, members, it, d / "explore")
        return frames, {"runs": runs}

    def new_data(self, frames, cands, it, d):
        ctx = self.ctx
        sub = Context(ctx.cfg, ctx.root, d, ctx.step)  # labels inside the iteration folder
        frags = _new_fragments(ctx, frames, cands, it)
        labelled = _labelled(sub, frags, "labels")
        kept, dropped = _clean(sub, labelled, f"iteration {it}")
        rec = {"fragments": len(frags), "kept": len(kept), "outliers": dropped,
               "label_cpu_s": _cpu_s(labelled)}
        self._large = None
        if ctx.cfg.active.large_fragments:  # the controls' data: same frames and centres
            self._large = (sub, _new_fragments(ctx, frames, cands, it, large=True), it)
            if not kept:  # no fine-tuning to label them alongside
                rec.update(self._label_large(None))
        return kept, rec

    def _label_large(self, pool) -> Dict[str, Any]:
        """Label the pending large fragments (on ``pool`` if given) into
        ``iterNN/added_large.extxyz``; their record entries."""
        sub, frags, it = self._large
        self._large = None
        big = _labelled(sub, frags, "labels_large", executor=pool)
        big_kept, big_dropped = _clean(sub, big, f"iteration {it} (large)")
        write_frames(sub.out / "added_large.extxyz", big_kept)
        return {"large_kept": len(big_kept), "large_outliers": big_dropped,
                "label_cpu_s_large": _cpu_s(big)}

    def fine_tune(self, members, added, it, d):
        """Widen each member's SF ranges to all data (exact) and fine-tune it on them; the
        members train side by side (``run.workers``), and the controls' large fragments of
        this iteration are labelled on the same workers, queued behind the members (the
        worker whose member finishes first takes them)."""
        ac, t = self.ctx.cfg.active, self.ctx.cfg.training
        data = self.data + added
        jobs = [(data, d, m, current, ac.epochs, t.test_fraction, self.ctx.cfg.run.seed + it,
                 training_options(t)) for m, current in zip(_MEMBERS, members)]
        rec: Dict[str, Any] = {}
        with worker_pool(self.ctx, len(jobs) + (self._large is not None)) as pool:
            futures = [pool.submit(_fine_tune_job, *j) if pool is not None
                       else _finished(_fine_tune_job(*j)) for j in jobs]
            if self._large is not None:
                rec.update(self._label_large(pool))
            res = [f.result() for f in futures]
        rec.update({m: r for m, r in zip(_MEMBERS, res)})
        return [str(d / m / "potential.fragnn") for m in _MEMBERS], rec


def _finished(value: Any) -> Future:
    """A future that already holds ``value`` (the serial path of a pool's submit)."""
    f: Future = Future()
    f.set_result(value)
    return f


def _fine_tune_job(data: List, d: Path, m: str, current: str, epochs: int, test_fraction: float,
                   seed: int, options: Dict[str, Any]) -> Dict[str, float]:
    """One member: SF ranges widened to ``data`` (exact), Kalman filter continued from its
    checkpoint, ``epochs`` epochs on ``data`` into ``d/m``; its last RMSEs."""
    from ..active_learning import widen_scaling
    from ..training.recipes import fine_tune_hdnnp, to_structures

    init = d / f"{m}_widened.fragnn"
    if not init.exists():
        widen_scaling(current, data).save(str(init))
    res = fine_tune_hdnnp(to_structures(data), d / m, init, epochs,
                          init_state=_checkpoint(Path(current).parent),
                          test_fraction=test_fraction, seed=seed, progress=None,
                          extra_training=options)
    return {k: float(res.history[-1][k]) for k in
            ("rmse_E_train", "rmse_E_test", "rmse_F_train", "rmse_F_test")}


def run_active(ctx: Context) -> Dict[str, Any]:
    """The active-learning loop; returns {iterations: [...], converged, added}."""
    loop = _WorkflowLoop(ctx, _small_data(ctx))
    start = [str(ctx.input("train") / m / "potential.fragnn") for m in _MEMBERS]
    iters, members, added = loop.run(start)
    converged = bool(iters and iters[-1]["converged"])
    shipped = "last"
    if iters and ctx.cfg.active.select == "best":
        pick = loop.best(iters)
        members, shipped = [loop.path(m) for m in pick["committee"]], pick["iteration"]
        ctx.say(f"shipping the committee explored in iteration {shipped}: flagged fraction "
                f"{pick['exploration']['flagged_fraction']:.4f}, "
                f"{pick['exploration']['halted']} run(s) stopped")
    for m, path in zip(_MEMBERS, members):
        dst = ctx.out / m
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(Path(path).parent, dst)
    n_it = sum(r["iteration"] != "final" for r in iters)
    ctx.say(f"{n_it} iterations, {len(added)} fragments added, "
            f"{'converged' if converged else 'not converged'}")
    return {"iterations": iters, "converged": converged, "added": len(added),
            "shipped": shipped}

#!/usr/bin/env python3
"""Herbold & Behler (2023) for IRMOF-1 with GFN2-xTB in place of DFT, step by step.

    python irmof.py STEP [--workdir DIR] [--scale reduced|full] [--workers N] [--rc Å]

Steps (each reads the previous steps' files in DIR and skips work already done):

    relax      GFN2-xTB relaxation of the primitive cell (positions; --cell also the cell)
    range      Hessian range analysis -> R_frag^conv -> R_c = R_frag^conv / 2 (range.json)
    fragments  distorted bulk snapshots; small (R_c) and large (2 R_c) fragments per site
    label      GFN2-xTB energies and forces of fragments and periodic validation snapshots
    train      HDNNP1 (small, R_c), HDNNP2 (large, R_c), HDNNP3 (large, 2 R_c); 2x15 tanh
    active     active learning of HDNNP1: MD with the current HDNNP1, committee HDNNP1 vs
               HDNNP2, new small fragments around disagreeing/extrapolating atoms, GFN2-xTB
               labels, fine-tuning; al_iterations times -> hdnnp1_al/, al.json
    validate   Tables 1-6 and Fig. 6/7 analogues with the offset corrections of sections
               4.3/4.4 -> validation.json, parity.png, force_error_per_site.png, report.md
    npt        LAMMPS NVT, then NPT (300 K, 1 bar) of bulk IRMOF-1 with HDNNP1 (+AL when
               hdnnp1_al exists) -> lattice constant
               (npt.json, npt_lattice.png)
    mdspeed    LAMMPS NVE of the 2x2x2 supercell with HDNNP1 at np=1 and 2 (mdspeed.json)
    report     reassemble report.md from validation.json, npt.json and mdspeed.json
    publish    copy report.md, the JSON files and the linked PNGs/tables to results/
    all        relax ... mdspeed in order (not publish)

R_c: from range.json when the range step has run, else --rc (default 4.0 Å). Scales:
``reduced`` runs in about 5 minutes on 2 cores (a smoke test of the scripts), ``medium`` in a
few hours on 2 cores, ``full`` is the experiment (use many cores and ``--workers``). ``--steps``
shortens npt/mdspeed (tests); ``publish`` writes to examples/irmof/results (``--dest``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import irmof_helpers as demo  # the pipeline helpers this script was written with
from irmof_helpers import (IRMOF1_PRIM, cut_site_fragments, distorted_snapshots, evaluate,
                           lammps_md, to_structures, train_hdnnp)


@dataclass
class Scale:
    relax_fmax: float
    relax_steps: int
    hessian_sites: int          # nonequivalent sites displaced in the Hessian analysis
    hessian_cell: str           # "prim" or "conv" (the conventional cell: widths 25.8 Å)
    n_train: int
    n_val: int
    rattle: float
    strain: float
    epochs: int
    hidden: tuple
    radial_n: int
    npt_steps: int
    small_per_site: int = 3     # small fragments per site and training snapshot
    large_per_site: int = 1     # large fragments per site and training snapshot
    # EKF force updates per epoch / force components, for HDNNP1, HDNNP2, HDNNP3 (n2p2: 0.02315)
    force_fraction: tuple = (0.02315, 0.02315, 0.02315)
    # radial ACSFs per element pair of HDNNP3 (cutoff 2 R_c): the EKF diverges on the fragment
    # forces when the shifted grid is coarser than ~0.5 Å (5 functions over 0.8-8.7 Å did)
    radial_n_2rc: int = 16
    # round 2 (``fragments --prelim POT``): thermal snapshots in the harmonic approximation of a
    # preliminary potential (round-1 HDNNP1), temperature uniform in thermal_T (K)
    n_thermal_train: int = 0
    n_thermal_val: int = 0
    thermal_T: tuple = (200.0, 700.0)
    # active learning of HDNNP1 (step ``active``): iterations; MD runs per iteration as
    # (temperature K, ensemble, isotropic strain, seed); steps of 0.5 fs per run; fragments per
    # iteration at most; fine-tuning epochs per iteration
    al_iterations: int = 0
    al_runs: tuple = ((300.0, "nvt", 0.0), (300.0, "nvt", 0.01), (300.0, "npt", 0.0),
                      (450.0, "nvt", -0.01), (600.0, "nvt", 0.0))
    # runs added from iteration al_extra_from on: compressed cells at 300 K (the LAMMPS NPT
    # test of iteration 3's potential went to a = 25.0-25.3 Å, where GFN2-xTB's pressure at
    # 300 K is about zero, and failed there); they stop at > 60 extrapolating atoms, the
    # others at > 10
    al_extra_runs: tuple = ((300.0, "nvt", -0.02), (300.0, "nvt", -0.03),
                            (300.0, "npt", -0.02))
    al_extra_from: int = 6
    al_steps: int = 6000
    al_max_per_iter: int = 120
    al_epochs: int = 4
    npt_nvt_steps: int = 4000   # NVT equilibration before the NPT stage (0.5 fs steps)
    al_max_force: float = 20.0  # eV/Å: labelled fragments with larger force components dropped


SCALES = {
    "reduced": Scale(0.1, 30, 2, "prim", 6, 2, 0.04, 0.01, 8, (15, 15), 5, 200),
    # 2 cores, about 1.5 hours: similar GFN2-xTB budgets for the small and large training sets;
    # HDNNP1 (1320 small fragments) gets force_fraction 0.01, about 2900 updates per epoch,
    # HDNNP2 (168 large fragments) n2p2's 0.02315, about 1500 updates per epoch
    "medium": Scale(0.05, 60, 7, "prim", 24, 12, 0.05, 0.02, 45, (15, 15), 5, 20000, 9, 1,
                    (0.01, 0.02315, 0.01), 16, 12, 8, al_iterations=10),
    "full": Scale(0.02, 300, 7, "conv", 100, 20, 0.05, 0.02, 40, (15, 15), 8, 20000),
}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Run:
    def __init__(self, args):
        self.dir = Path(args.workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sc = SCALES[args.scale]
        self.workers = args.workers
        self.args = args

    # ---------------------------------------------------------------- shared state
    @property
    def rc(self) -> float:
        p = self.dir / "range.json"
        if self.args.rc is not None:
            return float(self.args.rc)
        if p.exists():
            return float(json.loads(p.read_text())["r_c"])
        return 4.0

    def relaxed(self):
        p = self.dir / "relaxed.extxyz"
        if not p.exists():
            self.relax()
        return demo._read(p, 0)[0]

    def sites(self):
        from pyfragnn.fragments import find_sites

        at = self.relaxed()
        sites = find_sites(at)
        labels = [""] * len(at)
        for s in sites:
            for k in s.members:
                labels[k] = s.label
        return sites, labels

    def _md_potential(self) -> str:
        """The potential of the npt and mdspeed steps: --potential, else HDNNP1 after active
        learning when it exists, else HDNNP1."""
        if self.args.potential:
            return self.args.potential
        return "hdnnp1_al" if (self.dir / "hdnnp1_al" / "potential.fragnn").exists() \
            else "hdnnp1"

    def _trained(self):
        """(name, Potential) of each trained potential of the run, in POTENTIALS order."""
        from pyfragnn.potential import Potential

        for name in POTENTIALS:
            p = self.dir / name / "potential.fragnn"
            if p.exists():
                yield name, Potential.load(p)

    # ---------------------------------------------------------------- steps
    def relax(self):
        p = self.dir / "relaxed.extxyz"
        if p.exists():
            return _say(f"relax: {p} exists")
        at = demo._read(IRMOF1_PRIM, 0)[0]
        if self.args.cell:
            from ase.filters import FrechetCellFilter
            from ase.optimize import BFGS

            from pyfragnn.labelling import make_calculator

            at.calc = make_calculator("gfn2", at)
            BFGS(FrechetCellFilter(at), logfile=str(self.dir / "relax_cell.log")).run(
                fmax=self.sc.relax_fmax, steps=self.sc.relax_steps)
            at = at.copy()
        demo._relax(at, p, self.sc.relax_fmax, self.sc.relax_steps, self.workers)

    def range(self):
        from pyfragnn.interaction_range import analyse_hessian, hessian_blocks, plot_hessian

        at = self.relaxed()
        if self.sc.hessian_cell == "conv":
            from ase.build import make_supercell

            at = make_supercell(at, np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]]))
        sites, _ = self.sites()
        from pyfragnn.fragments import find_sites

        reps = [s.index for s in find_sites(at)][:self.sc.hessian_sites]
        _say(f"range: Hessian columns of {len(reps)} sites, {len(at)} atoms, GFN2-xTB")
        hess = hessian_blocks(at, "gfn2", displace=reps, workers=self.workers,
                              checkpoint=self.dir / "hessian_forces.extxyz")
        rng = analyse_hessian(hess)
        print(rng.report())
        plot_hessian(hess, rng, self.dir / "hessian_range.png", "IRMOF-1, GFN2-xTB")
        (self.dir / "range.json").write_text(json.dumps(
            {"r_frag_conv": rng.r_frag_conv, "r_c": rng.r_c, "site_radius": rng.site_radius,
             "cell": self.sc.hessian_cell, "sites": len(reps)}, indent=1))
        _say(f"range: R_frag^conv = {rng.r_frag_conv:.3f} Å, R_c = {rng.r_c:.3f} Å "
             f"(range.json; override with --rc)")

    def fragments(self):
        p = {t: self.dir / f"fragments_{t}.extxyz" for t in ("small", "large", "bulk_val")}
        if all(x.exists() for x in p.values()):
            return _say("fragments: files exist")
        sc, rc = self.sc, self.rc
        at = self.relaxed()
        sites, labels = self.sites()
        members = {s.label: np.asarray(s.members) for s in sites}
        snaps = distorted_snapshots(at, sc.n_train + sc.n_val, sc.rattle, sc.strain, 11)
        for a in snaps:
            a.info["sampling"] = "rattle"
        train, val = snaps[:sc.n_train], snaps[sc.n_train:]
        if self.args.prelim:
            # round 2: the round-1 snapshots (same seeds: their fragments and labels are reused)
            # plus thermal ones from the harmonic model of the preliminary potential
            th = demo.harmonic_snapshots(at, self.args.prelim, sc.n_thermal_train
                                         + sc.n_thermal_val, sc.thermal_T, sc.strain / 2, 21)
            train += th[:sc.n_thermal_train]
            val += th[sc.n_thermal_train:]
            _say(f"fragments: + {len(th)} harmonic snapshots of {self.args.prelim} at "
                 f"{sc.thermal_T[0]:.0f}-{sc.thermal_T[1]:.0f} K")
        for k, a in enumerate(val):
            a.info.update(role="val", snapshot=k)
        for tag, name, radius, per in (("s", "small", rc, sc.small_per_site),
                                       ("l", "large", 2 * rc, sc.large_per_site)):
            # small fragments are ~10x cheaper, so more of them per site and snapshot
            fr = cut_site_fragments(train, labels, members, radius, rc, 12, tag, "train", per)
            fr += cut_site_fragments(val, labels, members, radius, rc, 13, tag, "val")
            for f in fr:
                snap = (train if f.info["role"] == "train" else val)[int(f.info["snapshot"])]
                f.info["sampling"] = snap.info["sampling"]
            demo._write_atomic(p[name], fr)
            _say(f"fragments: {len(fr)} {name} (radius {radius:.3f} Å), mean "
                 f"{np.mean([len(f) for f in fr]):.0f} atoms")
        demo._write_atomic(p["bulk_val"], val)

    def label(self):
        from pyfragnn.labelling import label

        if not (self.dir / "fragments_small.extxyz").exists():
            self.fragments()
        for name in ("bulk_val", "small", "large"):
            s = label(self.dir / f"fragments_{name}.extxyz", self.dir / f"labels_{name}.extxyz",
                      "gfn2", workers=self.workers)
            _say(f"label {name}: {s.n_computed} computed ({s.per_structure_s:.2f} s each), "
                 f"{s.n_already_done} done before, {s.n_failed} failed")

    def _labelled(self, name):
        p = self.dir / f"labels_{name}.extxyz"
        if not p.exists():
            self.label()
        return sorted(demo._read(p), key=lambda a: int(a.info["label_index"]))

    def train(self):
        sc, rc = self.sc, self.rc
        for name, data, cutoff in (("hdnnp1", "small", rc), ("hdnnp2", "large", rc),
                                   ("hdnnp3", "large", 2 * rc)):
            if self.args.only and name not in self.args.only:
                continue
            out = self.dir / name
            if (out / "potential.fragnn").exists() and (out / "rmse_table.csv").exists():
                _say(f"train: {name} exists")
                continue
            st = to_structures([a for a in self._labelled(data) if a.info["role"] == "train"])
            _say(f"train: {name} on {len(st)} {data} fragments, cutoff {cutoff:.3f} Å")
            epochs = self.args.epochs or sc.epochs
            radial_n = sc.radial_n if name != "hdnnp3" else sc.radial_n_2rc
            train_hdnnp(st, out, cutoff, epochs, hidden=sc.hidden, radial_n=radial_n,
                        seed=1, extra_training={"force_fraction": self.args.force_fraction
                                                or sc.force_fraction[int(name[-1]) - 1]})

    # ---------------------------------------------------------------- active learning
    def active(self):
        """Active learning of HDNNP1 as in the paper (section 3): bulk MD (ASE, primitive cell)
        driven by the current HDNNP1; committee HDNNP1 + HDNNP2; atoms whose force components
        differ by > 1 eV/Å or whose SFs extrapolate become centres of new *small* fragments
        (radius R_c), labelled with GFN2-xTB; HDNNP1 is then fine-tuned (weights and Kalman
        filter continued) on all small fragments. Repeated ``al_iterations`` times ->
        al/iterNN/, hdnnp1_al/ (the final potential), al.json (per run: time survived, stop
        reason; per iteration: candidates, fragments, errors)."""
        import shutil

        from pyfragnn.active_learning import (candidate_fragments, explore,
                                              select_candidates)
        from pyfragnn.labelling import label

        sc, rc = self.sc, self.rc
        n_iter = self.args.iterations or sc.al_iterations
        if n_iter <= 0:
            return _say(f"active: no iterations at scale {self.args.scale} (--iterations N)")
        rel = self.relaxed()
        _, site_labels = self.sites()
        base = [a for a in self._labelled("small") if a.info["role"] == "train"]
        committee = self.dir / "hdnnp2" / "potential.fragnn"
        current = self.dir / "hdnnp1" / "potential.fragnn"
        state = self.dir / "hdnnp1" / "checkpoint.npz"
        for p in (committee, current):
            if not p.exists():
                sys.exit(f"active: {p} missing (run the train step first)")
        jpath = self.dir / "al.json"
        log = json.loads(jpath.read_text()) if jpath.exists() else {"iterations": []}
        done = {r["iteration"]: r for r in log["iterations"]}
        added: list = []
        for it in range(1, n_iter + 1):
            d = self.dir / "al" / f"iter{it:02d}"
            d.mkdir(parents=True, exist_ok=True)
            rec = done.get(it, {"iteration": it})
            run_list = tuple(sc.al_runs) + (tuple(sc.al_extra_runs)
                                            if it >= sc.al_extra_from else ())
            frames_p = d / "frames.extxyz"
            if not frames_p.exists():
                frames, runs = [], []
                for k, (T, ens, strain) in enumerate(run_list):
                    # the compressed extra runs start outside the data (their first frame
                    # already extrapolates): only the temperature criterion stops them early
                    n_ex = 10 if k < len(sc.al_runs) else 60
                    start = rel.copy()
                    start.set_cell(rel.cell * (1 + strain), scale_atoms=True)
                    t0 = time.perf_counter()
                    # NPT: Berendsen coupled with compressibility 1e-4/bar (~15x MOF-5's),
                    # so that the cell visits compressed and expanded states within the run
                    fr = explore(start, [current, committee], T, sc.al_steps, 0.5, 20, ens,
                                 compressibility_per_bar=1e-4, stop_temperature=1.5 * T,
                                 stop_extrapolating_atoms=n_ex, seed=100 * it + k)
                    for f in fr:
                        f.info.update(al_iteration=it, al_run=k)
                    stop = fr[-1].info.get("md_stopped", "") if fr else ""
                    runs.append({"T_K": T, "ensemble": ens, "strain": strain,
                                 "ps": fr[-1].info["md_time_ps"] if fr else 0.0,
                                 "stopped": stop, "frames": len(fr),
                                 "max_deviation": float(max(f.arrays["force_deviation"].max()
                                                            for f in fr)) if fr else 0.0,
                                 "wall_s": time.perf_counter() - t0})
                    _say(f"active {it}: run {k} {T:.0f} K {ens} strain {strain:+.2f}: "
                         f"{runs[-1]['ps']:.2f} ps{' (stopped: ' + stop + ')' if stop else ''}")
                    frames += fr
                demo._write_atomic(frames_p, frames)
                rec["runs"] = runs
            frames = demo._read(frames_p)
            if "runs" not in rec:  # e.g. the frames were written by an interrupted run
                rec["runs"] = _al_runs_from_frames(frames, run_list)
            frag_p = d / "fragments.extxyz"
            if not frag_p.exists():
                # the last frames of each run (where it went wrong) count most: newest first
                cands = select_candidates(frames, 1.0, True, 3, 3.0, sc.al_max_per_iter)
                frags = []
                for c in cands:
                    try:
                        frags += candidate_fragments(frames, [c], rc, rc,
                                                     site_labels=site_labels)
                    except (ValueError, RuntimeError, IndexError) as exc:
                        _say(f"active {it}: no fragment around atom {c.atom} of frame "
                             f"{c.frame}: {exc}")
                for f in frags:
                    f.info.update(role="train", sampling="active", al_iteration=it)
                rec["candidates"] = len(cands)
                rec["fragments"] = len(frags)
                rec["candidate_elements"] = {e: sum(1 for c in cands if frames[c.frame]
                                                    .get_chemical_symbols()[c.atom] == e)
                                             for e in ("H", "C", "O", "Zn")}
                demo._write_atomic(frag_p, frags)
            if "fragments" not in rec:  # interrupted before the record was written
                rec["fragments"] = len(demo._read(frag_p))
            lab_p = d / "labels.extxyz"
            if demo._read(frag_p):
                label(frag_p, lab_p, "gfn2", workers=self.workers)
                lab = demo._read(lab_p)
                rec.pop("label_s", None)  # older records: wall time, not CPU time
                rec["label_cpu_s"] = float(sum(float(a.info.get("label_seconds", 0))
                                               for a in lab))
                # configurations deep inside a hole (reference forces of tens of eV/Å, atoms
                # pushed together) would dominate the force RMSE the filter sees; the frames
                # leading into the hole carry the information
                keep = [a for a in lab if np.abs(a.get_forces()).max() <= sc.al_max_force]
                rec["dropped_max_force"] = len(lab) - len(keep)
                added += keep
            out = d / "hdnnp1"
            if not (out / "rmse_table.csv").exists():
                st = to_structures(base + added)
                _say(f"active {it}: fine-tuning HDNNP1 on {len(base)} + {len(added)} small "
                     f"fragments, {sc.al_epochs} epochs")
                t0 = time.perf_counter()
                res = demo.fine_tune_hdnnp(st, out, current, sc.al_epochs, init_state=state,
                                           seed=it,
                                           extra_training={"force_fraction":
                                                           sc.force_fraction[0]})
                rec["train_s"] = time.perf_counter() - t0
                rec["rmse"] = {k: res.history[-1][k] for k in
                               ("rmse_E_train", "rmse_E_test", "rmse_F_train", "rmse_F_test")}
            current, state = out / "potential.fragnn", out / "checkpoint.npz"
            done[it] = rec
            log["iterations"] = [done[k] for k in sorted(done)]
            jpath.write_text(json.dumps(log, indent=1, default=_json))
        final = self.dir / "hdnnp1_al"
        final.mkdir(exist_ok=True)
        for name in ("potential.fragnn", "rmse_table.csv", "rmse_table.md",
                     "learning_curve.csv", "input.nn"):
            src = current.parent / name
            if src.exists():
                shutil.copy(src, final / name)
        _say(f"active: HDNNP1+AL after {n_iter} iterations -> {final}")

    # ---------------------------------------------------------------- validation
    def _meta(self, rel, sites) -> dict:
        sc = self.sc
        rng = json.loads((self.dir / "range.json").read_text()) \
            if (self.dir / "range.json").exists() else None
        src = "--rc" if self.args.rc is not None else ("range.json" if rng else "default")
        acsf = {}
        for name in POTENTIALS:
            p = self.dir / name / "input.nn"
            if p.exists():
                n: dict = {}
                for line in p.read_text().splitlines():
                    t = line.split()
                    if t[:1] == ["symfunction_short"]:
                        n[t[1]] = n.get(t[1], 0) + 1
                acsf[name] = n
        return {
            "scale": self.args.scale, "scale_params": asdict(sc), "r_c": self.rc,
            "r_c_source": src, "range": rng, "n_atoms_cell": len(rel),
            "formula": rel.get_chemical_formula(),
            "a_conv_relaxed_cell": _a_conv(rel),
            "cell_relaxed": (self.dir / "relax_cell.log").exists(),
            "relax_steps": rel.info.get("relax_steps"),
            "relax_fmax": _f(rel.info.get("relax_fmax")),
            "relax_initial_fmax": _f(rel.info.get("relax_initial_fmax")),
            "sites": {s.label: s.multiplicity for s in sites},
            "acsf_per_element": acsf, "snapshot_seed": 11,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }

    def _offset_fragments(self, rel, sites, labels) -> dict:
        """Section 4.3 (Table 5): one small and one large fragment per site cut from the relaxed
        cell, labelled with GFN2-xTB (offset_fragments.extxyz) -> {(site, 'small'|'large'): Atoms}.
        Empty dict when labelling is not possible."""
        from pyfragnn.fragments import FragmentCutter

        p = self.dir / "offset_fragments.extxyz"
        rc = self.rc
        cutter = FragmentCutter(rel, site_labels=labels)
        items = []
        for size, radius in (("small", rc), ("large", 2 * rc)):
            for s in sites:
                f = cutter.cut(int(s.index), radius, r_c=rc, type_label=s.label)
                f.info.update(site=s.label, size=size, role="offset", centre=int(s.index))
                items.append(f)
        try:
            from pyfragnn.labelling import label

            summ = label(items, p, "gfn2", workers=self.workers, progress=False)
            if summ.n_failed or summ.n_skipped_failed:
                raise RuntimeError(f"{summ.n_failed + summ.n_skipped_failed} failed")
            out = demo._labelled_in_order(items, p)
        except Exception as err:  # noqa: BLE001 - the column is optional
            _say(f"validate: no fragment-type offsets ({err})")
            return {}
        return {(a.info["site"], a.info["size"]): a for a in out}

    def _central_2rc(self, rel, large, bulk_by_snap) -> tuple:
        """N_central of the large fragments with the 2 R_c cutoff (what HDNNP3 sees), recomputed
        with :func:`pyfragnn.fragments.central_mask` against the snapshot each fragment was cut
        from (regenerated with the fragments step's seed; checked atom by atom).
        Returns ({id(fragment): n_central_2rc}, number of fragments that could not be checked)."""
        from pyfragnn.fragments import central_mask

        sc, rc = self.sc, self.rc
        snaps = distorted_snapshots(rel, sc.n_train + sc.n_val, sc.rattle, sc.strain, 11)
        out, bad = {}, 0
        for f in large:
            k = int(f.info["snapshot"])
            if f.info.get("sampling", "rattle") != "rattle":  # thermal: not regenerated here
                bad += 1
                continue
            snap = snaps[k] if f.info["role"] == "train" else snaps[sc.n_train + k]
            m = ~np.asarray(f.arrays["cap"], bool)
            bi, im = f.arrays["bulk_index"][m], f.arrays["image"][m]
            same = (len(snap) > bi.max() and np.abs(snap.positions[bi] + im @ snap.cell.array
                                                   - f.positions[m]).max() < 1e-4)
            if same and f.info["role"] == "val" and k in bulk_by_snap:
                same = np.abs(bulk_by_snap[k].positions - snap.positions).max() < 1e-4
            if not same or not np.array_equal(central_mask(f, snap, rc), f.arrays["central"]):
                bad += 1
                continue
            out[id(f)] = int(central_mask(f, snap, 2 * rc).sum())
        return out, bad

    def validate(self):
        """Tables 1-6 and Fig. 6/7 analogues -> validation.json, PNGs, report.md."""
        rc = self.rc
        t_start = time.perf_counter()
        rel = self.relaxed()
        sites, labels = self.sites()
        site_names = [s.label for s in sites]
        bulk = self._labelled("bulk_val")
        bulk_by_snap = {int(b.info["snapshot"]): b for b in bulk}
        lab = {k: self._labelled(k) for k in ("small", "large")}
        rc_cut = float(lab["small"][0].info.get("frag_rc", rc))
        if abs(rc_cut - rc) > 1e-6:
            sys.exit(f"validate: R_c = {rc:.4f} Å, but the fragments were cut with R_c = "
                     f"{rc_cut:.4f} Å: pass --rc {rc_cut:g}")
        val = {k: [a for a in v if a.info["role"] == "val"] for k, v in lab.items()}
        trn = {k: [a for a in v if a.info["role"] == "train"] for k, v in lab.items()}
        V: dict = {"meta": self._meta(rel, sites)}

        # Tables 1 and 2: fragment sizes
        n2, n_bad = self._central_2rc(rel, lab["large"], bulk_by_snap)
        t1, t2 = {}, {}
        for s in site_names:
            t1[s] = {}
            for k in ("small", "large"):
                fr = [f for f in lab[k] if f.info["site"] == s]
                na = np.array([len(f) for f in fr], float)
                nc = np.array([f.arrays["central"].sum() for f in fr], float)
                t1[s][k] = {"fragments": len(fr), "n_atom": _mean(na), "n_central": _mean(nc),
                            "ratio": _mean(nc) / _mean(na) if len(fr) else float("nan")}
            fr = [f for f in lab["large"] if f.info["site"] == s and id(f) in n2]
            na = np.array([len(f) for f in fr], float)
            nc = np.array([n2[id(f)] for f in fr], float)
            t2[s] = {"fragments": len(fr), "n_atom": _mean(na), "n_central_2rc": _mean(nc),
                     "ratio": _mean(nc) / _mean(na) if len(fr) else float("nan")}
        V["table1"], V["table2"] = t1, t2
        V["table2_method"] = (
            "N_central(2 R_c) recomputed with pyfragnn.fragments.central_mask against the "
            "distorted snapshot each large fragment was cut from (snapshots regenerated with the "
            f"fragments step's seed; positions and the stored R_c mask checked); {n_bad} of "
            f"{len(lab['large'])} fragments failed the check and are left out")

        # training data, bulk-like environments, GFN2-xTB cost
        training = {}
        for name, data, fac in POTENTIALS_DEF:
            fr = trn[data]
            if fac == 1:
                ncen = int(sum(int(f.arrays["central"].sum()) for f in fr))
            else:
                ncen = int(sum(n2.get(id(f), 0) for f in fr))
            rows = demo._read_rmse_csv(self.dir / name / "rmse_table.csv")
            hist = _learning_curve(self.dir / name / "learning_curve.csv")
            training[name] = {
                "data": data, "cutoff": fac * rc, "structures": len(fr),
                "atoms": int(sum(len(f) for f in fr)), "bulk_like_environments": ncen,
                "gfn2_cpu_s": float(sum(float(f.info.get("label_seconds", 0)) for f in fr)),
                "rmse_table": _pivot_rmse(rows), "trained": bool(rows), **hist}
        V["training"] = training
        lab_cost = {}
        for k, frames in (("small", lab["small"]), ("large", lab["large"]), ("bulk_val", bulk)):
            for role in ("train", "val"):
                fr = [a for a in frames if a.info.get("role", "val") == role]
                if fr:
                    sec = np.array([float(a.info.get("label_seconds", np.nan)) for a in fr])
                    lab_cost[f"{k}/{role}"] = {
                        "structures": len(fr), "atoms_mean": _mean([len(a) for a in fr]),
                        "cpu_s": float(np.nansum(sec)), "s_per_structure": _mean(sec)}
        V["labelling"] = lab_cost

        # Tables 5 and 6
        offs = self._offset_fragments(rel, sites, labels)
        if offs:
            V["labelling"]["offset_fragments"] = {
                "structures": len(offs), "atoms_mean": _mean([len(a) for a in offs.values()]),
                "cpu_s": float(sum(float(a.info.get("label_seconds", 0)) for a in offs.values())),
                "s_per_structure": _mean([float(a.info.get("label_seconds", np.nan))
                                          for a in offs.values()])}
        t5, t6, per_site, evs, offsets = {}, {}, {}, {}, {}
        for name, pot in self._trained():
            off = demo._offset_per_atom(pot, rel)
            toff = {f"{s}/{k}": demo._offset_per_atom(pot, a) for (s, k), a in offs.items()}
            offsets[name] = {"relaxed_cell_eV_atom": off, "fragment_types_eV_atom": toff}
            t5[name] = {}
            for k in ("small", "large"):
                ev = evaluate(pot, val[k])
                e, ec = demo._errors(ev), demo._errors(ev, off)
                row = {"n": e["n"], "rmse_E": e["rmse_E"], "rmse_E_offset": ec["rmse_E"],
                       "rmse_F": e["rmse_F"], "extrapolations": e["extrapolations"],
                       "structures_extrapolating": _n_extrap(ev)}
                if toff:
                    d = [(x["E_nn"] - x["E_ref"]) / x["n"] - toff[f"{f.info['site']}/{k}"]
                         for x, f in zip(ev["structures"], val[k])]
                    row["rmse_E_type_offset"] = demo._rmse(d)
                t5[name][k] = row
            ev = evaluate(pot, bulk)
            evs[name.upper()] = ev
            e, ec = demo._errors(ev), demo._errors(ev, off)
            t6[name] = {"n": e["n"], "atoms": len(bulk[0]) if bulk else 0,
                        "rmse_E": e["rmse_E"], "rmse_E_offset": ec["rmse_E"], "offset": off,
                        "rmse_F": e["rmse_F"], "extrapolations": e["extrapolations"],
                        "structures_extrapolating": _n_extrap(ev),
                        "force_std_ref": float(np.std(np.concatenate(
                            [x["F_ref"].ravel() for x in ev["structures"]])))}
            samplings = sorted({str(b.info.get("sampling", "rattle")) for b in bulk})
            if len(samplings) > 1:  # round 2: rattled and thermal snapshots separately
                t6[name]["by_sampling"] = {}
                for smp in samplings:
                    sub = {"structures": [x for x, b in zip(ev["structures"], bulk)
                                          if str(b.info.get("sampling", "rattle")) == smp]}
                    e, ec = demo._errors(sub), demo._errors(sub, off)
                    t6[name]["by_sampling"][smp] = {
                        "n": e["n"], "rmse_E_offset": ec["rmse_E"], "rmse_F": e["rmse_F"],
                        "extrapolations": e["extrapolations"],
                        "force_std_ref": float(np.std(np.concatenate(
                            [x["F_ref"].ravel() for x in sub["structures"]])))}
            lab_arr = np.array(labels)
            per_site[name] = {s: demo._rmse(np.concatenate(
                [(x["F_nn"] - x["F_ref"])[lab_arr == s].ravel() for x in ev["structures"]]))
                for s in site_names}
        V["offsets"], V["table5"], V["table6"], V["bulk_F_rmse_per_site"] = \
            offsets, t5, t6, per_site
        if "hdnnp1" in t6 and "hdnnp2" in t6:
            V["bulk_F_ratio_1_2"] = t6["hdnnp1"]["rmse_F"] / t6["hdnnp2"]["rmse_F"]
        V["paper"] = PAPER

        # Fig. 6/7: GFN2-xTB force difference fragment - bulk
        dev: dict = {"centre": {}, "central_atoms": {}}
        raw: dict = {"centre": {}, "central_atoms": {}}
        for k in ("small", "large"):
            cen: dict = {}
            cal: dict = {}
            for f in val[k]:
                b = bulk_by_snap[int(f.info["snapshot"])]
                fb, ff = b.get_forces(), f.get_forces()
                cen.setdefault(f.info["site"], []).append(
                    float(np.linalg.norm(ff[0] - fb[int(f.info["centre"])])))
                bi = f.arrays["bulk_index"]
                for a in np.nonzero(f.arrays["central"])[0]:
                    cal.setdefault(labels[bi[a]], []).append(
                        float(np.linalg.norm(ff[a] - fb[bi[a]])))
            for key, d in (("centre", cen), ("central_atoms", cal)):
                raw[key][k] = {s: np.array(v) for s, v in d.items()}
                dev[key][k] = {s: _dev_stats(np.array(d[s])) for s in site_names if s in d}
                dev[key][k]["(all)"] = _dev_stats(np.concatenate([np.array(v) for v in
                                                                  d.values()]) if d else [])
        V["ref_force_deviation"] = dev
        V["headline"] = {
            "r_c": rc, "bulk_F_rmse": {n: r["rmse_F"] for n, r in t6.items()},
            "bulk_E_rmse_offset_corrected": {n: r["rmse_E_offset"] for n, r in t6.items()},
            "bulk_F_ratio_1_2": V.get("bulk_F_ratio_1_2"),
            "ref_dF_centre_rms": {k: dev["centre"][k]["(all)"]["rms"] for k in dev["centre"]},
            "ref_dF_centre_max": {k: dev["centre"][k]["(all)"]["max"] for k in dev["centre"]},
            "gfn2_cpu_s_training": {n: d["gfn2_cpu_s"] for n, d in training.items()}}
        _site_png(self.dir / "force_error_per_site.png", site_names, raw, per_site, rc)
        if evs:
            _parity_png(self.dir / "parity.png", evs,
                        {k.upper(): v["relaxed_cell_eV_atom"] for k, v in offsets.items()})
        V["validate_wall_s"] = time.perf_counter() - t_start
        (self.dir / "validation.json").write_text(json.dumps(V, indent=1, default=_json))
        _say(f"validate: validation.json written ({V['validate_wall_s']:.0f} s)")
        self.report()

    # ---------------------------------------------------------------- report
    def report(self):
        """(Re)assemble report.md from validation.json, npt.json and mdspeed.json."""
        p = self.dir / "validation.json"
        if not p.exists():
            return _say("report: no validation.json (run validate)")
        V = json.loads(p.read_text())
        npt = _load(self.dir / "npt.json")
        mds = _load(self.dir / "mdspeed.json")
        text = _render_report(V, npt, mds, self.dir)
        eos = _load(self.dir / "eos.json")
        if eos:
            text = text.replace("## Timings\n", _render_eos(eos) + "\n## Timings\n", 1)
        mdv = _load(self.dir / "mdval.json")
        if mdv:
            text = text.replace("## Fragment vs bulk GFN2-xTB forces",
                                _render_mdval(mdv) + "\n## Fragment vs bulk GFN2-xTB forces", 1)
        (self.dir / "report.md").write_text(text.replace("HDNNP1_AL", "HDNNP1+AL"))
        _say(f"report: {self.dir / 'report.md'}")

    # ---------------------------------------------------------------- MD
    def npt(self):
        """NPT at 300 K and 1 bar with HDNNP1 (after active learning when hdnnp1_al exists) of
        the 2x2x2 supercell: NVT equilibration (``npt_nvt_steps``), the same number of steps
        with a Berendsen barostat (iso, 1 ps, bulk modulus 5 GPa: the volume relaxes without
        the overshoot a Nose-Hoover barostat gives from a cell under kbar stress), then NPT
        with isotropic cell fluctuations (Nose-Hoover, Tdamp 50 fs, Pdamp 1 ps); the lattice
        constant is the mean over the second half of that stage -> npt.json,
        npt_lattice.png."""
        import shutil
        import subprocess

        from ase.data import atomic_numbers

        from pyfragnn.lammps import lammps_env

        rel = self.relaxed()
        from ase.build import make_supercell

        # the conventional cubic cell (424 atoms, orthogonal box: LAMMPS's Berendsen barostat
        # does not take triclinic boxes), from the fcc primitive cell
        sup = make_supercell(rel, [[-1, 1, 1], [1, -1, 1], [1, 1, -1]])
        if np.abs(sup.cell.array - np.diag(np.diag(sup.cell.array))).max() > 1e-6:
            sys.exit("npt: the relaxed cell does not give an orthogonal conventional cell")
        work = self.dir / "npt"
        work.mkdir(exist_ok=True)
        nprocs = max(1, self.workers)
        name = self._md_potential()
        pot = (self.dir / name / "potential.fragnn").resolve()
        # NVE run first writes data.lmp and checks the plugin
        lammps_md(pot, sup, work, 10, nprocs=nprocs)
        n = self.args.steps or self.sc.npt_steps
        n_nvt = self.sc.npt_nvt_steps if not self.args.steps else max(self.args.steps // 4, 1)
        dt_fs = 0.5
        every = max(1, n // 200)
        (work / "in.npt").write_text(f"""units metal
atom_style atomic
boundary p p p
read_data data.lmp
pair_style fragnn {pot} showew no maxew -1
pair_coeff * * {' '.join(sorted(set(sup.get_chemical_symbols()), key=atomic_numbers.get))}
compute ew all pair fragnn
velocity all create 300 4928 mom yes rot no dist gaussian
timestep {dt_fs / 1000}
variable a equal vol^(1.0/3.0)
thermo_style custom step time temp pe press vol v_a c_ew[1] c_ew[2]
thermo_modify format float %.8g
thermo {every}
fix nvt all nvt temp 300 300 0.05
run {n_nvt}
fix ber all press/berendsen iso 1.0 1.0 1.0 modulus 50000
run {n_nvt}
unfix ber
unfix nvt
reset_timestep 0
fix npt all npt temp 300 300 0.05 iso 1.0 1.0 1.0
run {n}
""")
        cmd = [shutil.which("mpirun"), "-np", str(nprocs), shutil.which("lmp"),
               "-in", "in.npt", "-log", "log.npt", "-screen", "none"]
        if nprocs == 1:
            cmd = cmd[3:]
        env = lammps_env()
        env["OMP_NUM_THREADS"] = "1"
        load = os.getloadavg()[0]
        _say(f"npt: {len(sup)} atoms, {n_nvt} NVT + {n} NPT steps of {dt_fs} fs, "
             f"np={nprocs}, {name}")
        p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        log = (work / "log.npt").read_text() if (work / "log.npt").exists() else ""
        a0 = _a_conv(rel)
        res = {"steps": n, "nvt_steps": n_nvt, "potential": name, "barostat": "iso",
               "cell": "conventional",
               "timestep_fs": dt_fs, "atoms": len(sup), "nprocs": nprocs,
               "T_K": 300.0, "P_bar": 1.0, "a_relaxed_cell": a0, "a_experiment": 25.832,
               "cell_relaxed": (self.dir / "relax_cell.log").exists(),
               "loadavg_1min_at_start": load}
        lines = log.splitlines()
        heads = [i for i, line in enumerate(lines) if line.split()[:1] == ["Step"]]
        res["stage_reached"] = ("nvt", "berendsen", "npt")[min(max(len(heads), 1), 3) - 1]
        rows = _thermo_rows("\n".join(lines[heads[-1]:])) if heads else []
        if len(heads) >= 3 and rows:
            res["a_after_berendsen"] = float(rows[0]["v_a"])
        if p.returncode != 0 or log.count("Loop time") < 3:
            res["failed"] = "\n".join((log + p.stderr).splitlines()[-12:])
        if rows:
            t = np.array([r["Time"] for r in rows])
            a = np.array([r["v_a"] for r in rows])
            half = np.array([r["Step"] >= n / 2 for r in rows])
            if not half.any():
                half[:] = True
            res.update({
                "steps_done": int(rows[-1]["Step"]), "a_mean_second_half": float(a[half].mean()),
                "a_std_second_half": float(a[half].std()), "a_final": float(a[-1]),
                "T_mean_second_half": float(np.mean([r["Temp"] for r, h in zip(rows, half)
                                                     if h])),
                "P_mean_second_half": float(np.mean([r["Press"] for r, h in zip(rows, half)
                                                     if h])),
                "extrapolation_warnings_total": int(rows[-1].get("c_ew[2]", -1)),
                "sampled_steps_with_warnings": int(sum(r.get("c_ew[1]", 0) > 0 for r in rows)),
                "sampled_steps": len(rows)})
            _lattice_png(self.dir / "npt_lattice.png", t, a, np.array([r["Temp"] for r in rows]),
                         a0, n * dt_fs / 2000.0, who=name.upper().replace("_AL", "+AL"))
        loop = [l for l in log.splitlines() if l.startswith("Loop time")]
        perf = [l for l in log.splitlines() if l.startswith("Performance:")]
        if loop:
            lt = float(loop[-1].split()[3])
            res.update({"loop_time_s": lt,
                        "us_per_atom_step": lt / (len(sup) * max(res.get("steps_done", n), 1))
                        * 1e6})
        if perf:
            res["ns_per_day"] = float(perf[-1].split()[1])
        if "failed" not in res and "a_mean_second_half" in res:
            res["pressure_check"] = self._pressure_check(pot, res["a_mean_second_half"])
        (self.dir / "npt.json").write_text(json.dumps(res, indent=1))
        if "failed" in res:
            self.report()
            sys.exit("npt failed (npt.json):\n" + res["failed"])
        _say(f"npt: {n} steps; conventional lattice constant <a> = "
             f"{res['a_mean_second_half']:.3f} ± {res['a_std_second_half']:.3f} Å over the "
             f"second half (final {res['a_final']:.3f} Å; start cell {a0:.3f} Å, experiment "
             f"25.832 Å); {res.get('ns_per_day', float('nan')):.3f} ns/day; "
             f"{res['extrapolation_warnings_total']} extrapolation warnings")
        self.report()

    def _pressure_check(self, pot, a_conv: float, frames: int = 5) -> dict:
        """GFN2-xTB against the potential at the NPT lattice constant: Langevin MD (300 K,
        0.5 fs) of the 106-atom cell scaled to ``a_conv`` with the potential, a frame every
        0.25 ps after 0.5 ps; static pressure (-trace(stress)/3, GPa) of both methods on each
        frame. Their mean difference, over the slope dP/da of GFN2-xTB, estimates how far
        GFN2-xTB's own 300 K lattice constant lies from the potential's."""
        from pyfragnn.active_learning import explore
        from pyfragnn.calculator import FragNN
        from pyfragnn.labelling import make_calculator

        rel = self.relaxed()
        gpa = 160.21766208
        out = {"a_conv": a_conv, "frames": frames, "P_nn_GPa": [], "P_gfn2_GPa": []}
        os.environ["OMP_NUM_THREADS"] = str(max(1, self.workers))
        for da in (0.0, 0.15):  # two cells: the NPT one and one 0.15 Å larger (the slope)
            start = rel.copy()
            start.set_cell(rel.cell * (a_conv + da) / _a_conv(rel),
                           scale_atoms=True)
            if da == 0:  # the scaled cell before MD: fractional coordinates of the 0 K cell
                start.calc = make_calculator("gfn2", start)
                out["P_gfn2_fixed_fractional"] = -float(np.mean(start.get_stress()[:3])) * gpa
                start.calc = None
            fr = explore(start, [pot], 300.0, 1000 + 500 * frames, 0.5, 500, seed=17)[2:]
            pn, pg, dF, nex = [], [], [], []
            for f in fr:
                f.calc = FragNN(pot)
                pn.append(-float(np.mean(f.get_stress()[:3])) * gpa)
                fn = f.get_forces()
                nex.append(int((f.arrays["extrapolations"] > 0).sum()))
                f.calc = make_calculator("gfn2", f)
                pg.append(-float(np.mean(f.get_stress()[:3])) * gpa)
                dF.append((fn - f.get_forces()).ravel())
            key = "" if da == 0 else "_plus_0.15"
            out[f"P_nn_GPa{key}"], out[f"P_gfn2_GPa{key}"] = pn, pg
            out[f"F_rmse_eV_A{key}"] = float(np.sqrt(np.mean(np.concatenate(dF) ** 2)))
            out[f"extrapolating_atoms{key}"] = nex
        d = np.mean(out["P_nn_GPa"]) - np.mean(out["P_gfn2_GPa"])
        slope = (np.mean(out["P_gfn2_GPa_plus_0.15"]) - np.mean(out["P_gfn2_GPa"])) / 0.15
        out.update(P_nn_mean=float(np.mean(out["P_nn_GPa"])),
                   P_gfn2_mean=float(np.mean(out["P_gfn2_GPa"])), dP_nn_minus_gfn2=float(d),
                   dP_da_gfn2_GPa_per_A=float(slope),
                   a_gfn2_estimate=float(a_conv + d / slope) if slope < 0 else float("nan"))
        _say(f"npt: pressure check at a = {a_conv:.3f} Å: P(potential) {out['P_nn_mean']:.3f}, "
             f"P(GFN2-xTB) {out['P_gfn2_mean']:.3f} GPa; GFN2-xTB's own 300 K lattice constant "
             f"≈ {out['a_gfn2_estimate']:.3f} Å; force RMSE {out['F_rmse_eV_A']:.3f} eV/Å")
        return out

    def mdspeed(self):
        """LAMMPS NVE (2000 steps of 0.5 fs from 600 K initial velocities) of the 2x2x2
        supercell with HDNNP1 (+AL when it exists) at np=1 and np=2 -> mdspeed.json."""
        import subprocess

        sup = self.relaxed().repeat((2, 2, 2))
        n = self.args.steps or 2000
        name = self._md_potential()
        pot = self.dir / name / "potential.fragnn"
        res = {"atoms": len(sup), "steps": n, "timestep_fs": 0.5, "T_init_K": 600.0,
               "potential": name,
               "cpu_count": os.cpu_count(), "loadavg_1min_at_start": os.getloadavg()[0],
               "runs": {}}
        for nprocs in (1, 2):
            _say(f"mdspeed: NVE, {len(sup)} atoms, {n} steps, np={nprocs}")
            try:
                md = lammps_md(pot, sup, self.dir / "mdspeed" / f"np{nprocs}", n, 0.5, 300.0,
                               nprocs)
                md["log"] = os.path.relpath(md["log"], self.dir)
                res["runs"][str(nprocs)] = md
                _say(f"mdspeed: np={nprocs}: {md['us_per_atom_step']:.2f} µs/atom-step, "
                     f"{md['ns_per_day']:.3f} ns/day, drift {md['drift_eV_atom']:.2e} eV/atom")
            except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
                res["runs"][str(nprocs)] = {"failed": str(err)[-2000:]}
                _say(f"mdspeed: np={nprocs} failed: {str(err).splitlines()[0]}")
        res["loadavg_1min_at_end"] = os.getloadavg()[0]
        (self.dir / "mdspeed.json").write_text(json.dumps(res, indent=1))
        self.report()

    def eos(self):
        """E(a) of the relaxed cell scaled isotropically (fixed fractional coordinates), GFN2-xTB
        vs the HDNNPs -> eos.json, eos.png: the 0 K lattice constant each method prefers, the
        reference for the NPT lattice constant (the cell itself is not relaxed here)."""
        from pyfragnn.labelling import make_calculator

        rel = self.relaxed()
        factors = np.linspace(0.97, 1.03, 7)
        cells = []
        for f in factors:
            a = rel.copy()
            a.calc = None
            a.set_cell(rel.cell.array * f, scale_atoms=True)
            cells.append(a)
        a_conv = [_a_conv(c) for c in cells]
        os.environ["OMP_NUM_THREADS"] = str(max(1, self.workers))
        res = {"scale_factors": factors.tolist(), "a_conv": a_conv, "energies": {}}
        _say(f"eos: GFN2-xTB, {len(cells)} cells")
        e = []
        for c in cells:
            c.calc = make_calculator("gfn2", c)
            e.append(float(c.get_potential_energy()) / len(c))
        res["energies"]["GFN2-xTB"] = e
        for name, pot in self._trained():
            res["energies"][name.upper()] = [demo._energy_per_atom(pot, c) for c in cells]
        res["a_min"] = {}
        for k, ev in res["energies"].items():
            cf = np.polyfit(a_conv, ev, 3)
            roots = [r.real for r in np.roots(np.polyder(cf)) if abs(r.imag) < 1e-9
                     and min(a_conv) <= r.real <= max(a_conv) and np.polyval(np.polyder(cf, 2),
                                                                            r.real) > 0]
            res["a_min"][k] = float(roots[0]) if roots else float("nan")
        (self.dir / "eos.json").write_text(json.dumps(res, indent=1))
        plt = demo._plt()
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for k, ev in res["energies"].items():
            ev = np.array(ev)
            ax.plot(a_conv, (ev - ev.min()) * 1000, "o-" if k == "GFN2-xTB" else "s--",
                    label=f"{k} (a_min {res['a_min'][k]:.3f} Å)")
        ax.set_xlabel("conventional lattice constant a (Å)")
        ax.set_ylabel("E − E_min (meV/atom)")
        ax.set_title("IRMOF-1, fixed fractional coordinates")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.dir / "eos.png", dpi=100)
        plt.close(fig)
        _say("eos: a_min " + ", ".join(f"{k} {v:.3f} Å" for k, v in res["a_min"].items()))
        self.report()

    def mdval(self):
        """Bulk validation on MD snapshots: Langevin MD (300 K, 0.5 fs) of the relaxed cell with
        HDNNP1, with HDNNP2 and (once the active step has run) with HDNNP1+AL (ASE, FragNN),
        1 ps equilibration then one snapshot every 0.5 ps (5 per potential; missing ones are
        added to bulk_md.extxyz), GFN2-xTB labels, errors of every potential -> mdval.json.
        Snapshots from every potential, so that none is tested only where it took itself."""
        from ase import units
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        from pyfragnn.calculator import FragNN
        from pyfragnn.labelling import label

        rel = self.relaxed()
        src = self.dir / "bulk_md.extxyz"
        snaps = demo._read(src) if src.exists() else []
        have = {a.info.get("md_potential") for a in snaps}
        todo = [(k, name) for k, name in enumerate(("hdnnp1", "hdnnp2", "hdnnp1_al"))
                if name not in have and (self.dir / name / "potential.fragnn").exists()]
        if todo:
            for k, name in todo:
                a = rel.copy()
                a.calc = FragNN(self.dir / name / "potential.fragnn")
                MaxwellBoltzmannDistribution(a, temperature_K=300,
                                             rng=np.random.default_rng(31 + k))
                dyn = Langevin(a, 0.5 * units.fs, temperature_K=300, friction=0.01,
                               rng=np.random.default_rng(41 + k))
                _say(f"mdval: Langevin MD with {name}, 300 K")
                dyn.run(2000)
                for j in range(5):
                    dyn.run(1000)
                    b = a.copy()
                    b.calc = None
                    b.info.update(role="val", sampling="md", md_potential=name,
                                  md_time_ps=1.0 + 0.5 * (j + 1))
                    snaps.append(b)
            demo._write_atomic(src, snaps)
        out = self.dir / "labels_bulk_md.extxyz"
        label(src, out, "gfn2", workers=self.workers)
        data = sorted(demo._read(out), key=lambda a: int(a.info["label_index"]))
        res = {"snapshots": len(data), "T_K": 300.0, "potentials": {}}
        sources = [n for n in ("hdnnp1", "hdnnp2", "hdnnp1_al")
                   if any(a.info["md_potential"] == n for a in data)]
        for name, pot in self._trained():
            off = demo._offset_per_atom(pot, rel)
            row = {}
            for src_pot in sources + ["all"]:
                sub = [a for a in data if src_pot == "all" or a.info["md_potential"] == src_pot]
                ev = evaluate(pot, sub)
                e = demo._errors(ev, off)
                row[src_pot] = {"n": e["n"], "rmse_E_offset": e["rmse_E"],
                                "rmse_F": e["rmse_F"], "extrapolations": e["extrapolations"]}
            res["potentials"][name] = row
        res["force_std_ref"] = float(np.std(np.concatenate([a.get_forces().ravel()
                                                            for a in data])))
        if {"hdnnp1", "hdnnp2"} <= set(res["potentials"]):
            res["ratio_F_1_2"] = (res["potentials"]["hdnnp1"]["all"]["rmse_F"]
                                  / res["potentials"]["hdnnp2"]["all"]["rmse_F"])
        (self.dir / "mdval.json").write_text(json.dumps(res, indent=1))
        _say("mdval: F RMSE " + ", ".join(f"{k} {v['all']['rmse_F']:.4f}"
                                          for k, v in res["potentials"].items()))
        self.report()

    # ---------------------------------------------------------------- publish
    def publish(self):
        """Copy report.md, the JSON files and every file the report links into
        examples/irmof/results/ (or --dest), flattening paths and rewriting the links."""
        import re
        import shutil

        self.report()
        rep = self.dir / "report.md"
        if not rep.exists():
            sys.exit("publish: no report.md (run validate)")
        dest = Path(self.args.dest) if self.args.dest else Path(__file__).resolve().parent \
            / "results"
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.iterdir():  # only what an earlier publish wrote
            if old.is_file() and old.suffix in (".md", ".json", ".png", ".csv"):
                old.unlink()
        copied = []

        def put(rel: str) -> str:
            flat = rel.replace("/", "_")
            shutil.copyfile(self.dir / rel, dest / flat)
            copied.append(flat)
            return flat

        def link(m):
            target = m.group(2)
            if "://" in target:
                return m.group(0)
            if not (self.dir / target).is_file():  # not there: keep the text, drop the link
                return re.sub(r"^!?\[|\]$", "", m.group(1))
            return f"{m.group(1)}({put(target)})"

        text = re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", link, rep.read_text())
        for name in ("validation.json", "npt.json", "mdspeed.json", "eos.json", "mdval.json"):
            if (self.dir / name).exists():
                put(name)
        for name in POTENTIALS:
            for f in ("rmse_table.md", "rmse_table.csv", "learning_curve.png"):
                if (self.dir / name / f).exists() and f"{name}_{f}" not in copied:
                    put(f"{name}/{f}")
        (dest / "report.md").write_text(text)
        size = sum((dest / f).stat().st_size for f in copied) + len(text.encode())
        _say(f"publish: report.md + {len(copied)} files -> {dest} ({size / 1e3:.0f} kB)")

    def all(self):
        for s in ("relax", "range", "fragments", "label", "train", "active", "validate",
                  "mdval", "eos", "npt", "mdspeed"):
            _say(f"== {s}")
            getattr(self, s)()


# -------------------------------------------------------------------- paper and helpers
POTENTIALS = ("hdnnp1", "hdnnp2", "hdnnp3", "hdnnp1_al")
#: name, training fragments, ACSF cutoff in units of R_c (as in Run.train)
POTENTIALS_DEF = (("hdnnp1", "small", 1), ("hdnnp2", "large", 1), ("hdnnp3", "large", 2))
#: Herbold & Behler (2023), IRMOF-1 with PBE-D3 (Tables 1, 2, 4, 6; Table 3 text: HDNNP1-initial)
PAPER = {
    "r_c": 4.359,
    "table1": {"I1-As": [59, 17], "I1-Bs": [42, 11], "I1-A'": [107, 65], "I1-B'": [146, 62]},
    "table2_extended": {"I1-A'": [107, 17], "I1-B'": [146, 12]},
    "table3_hdnnp1_initial_all": {"E_train": 0.0012, "E_test": 0.0013, "F_train": 0.1436,
                                  "F_test": 0.1453},
    "table4_all": {"hdnnp2": {"E_train": 0.0012, "E_test": 0.0011, "F_train": 0.1448,
                              "F_test": 0.1441},
                   "hdnnp3": {"E_train": 0.0011, "E_test": 0.0012, "F_train": 0.1654,
                              "F_test": 0.1636}},
    "table6_irmof1": {"hdnnp1": {"E": 0.0009, "F": 0.1041}, "hdnnp2": {"E": 0.0008, "F": 0.1100},
                      "hdnnp3": {"E": 0.0014, "F": 0.1301}},
    "bulk_like_environments": {"hdnnp2": 1051611, "hdnnp3": 400885},
    "force_target": 0.125, "a_experiment": 25.832,
}


def _f(x):
    return None if x is None else float(x)


def _mean(x) -> float:
    x = np.asarray(x, float)
    return float(np.nanmean(x)) if x.size else float("nan")


def _a_conv(prim) -> float:
    """Conventional cubic lattice constant (Å) of an fcc primitive cell (4 primitive cells)."""
    return float((4 * prim.get_volume()) ** (1 / 3))


def _al_runs_from_frames(frames, runs) -> list:
    """Per-run summary of an active-learning iteration from its annotated frames."""
    out = []
    for k, (T, ens, strain) in enumerate(runs):
        fr = [f for f in frames if int(f.info.get("al_run", -1)) == k]
        out.append({"T_K": T, "ensemble": ens, "strain": strain,
                    "ps": float(fr[-1].info["md_time_ps"]) if fr else 0.0,
                    "stopped": str(fr[-1].info.get("md_stopped", "")) if fr else "",
                    "frames": len(fr),
                    "max_deviation": float(max(f.arrays["force_deviation"].max() for f in fr))
                    if fr else 0.0})
    return out


def _json(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def _n_extrap(ev) -> int:
    return int(sum(1 for x in ev["structures"] if x["n_extrapolations"] > 0))


def _dev_stats(v) -> dict:
    v = np.asarray(v, float)
    if not v.size:
        return {"n": 0, "rms": float("nan"), "max": float("nan"), "n_above_0.125": 0}
    return {"n": int(v.size), "rms": float(np.sqrt(np.mean(v * v))), "max": float(v.max()),
            "n_above_0.125": int((v > 0.125).sum())}


def _pivot_rmse(rows) -> list:
    """Trainer rmse_table.csv rows -> [{label, n_train, n_test, E_train, E_test, F_train,
    F_test}] with '(all)' first."""
    d: dict = {}
    for r in rows:
        x = d.setdefault(r["label"], {"label": r["label"]})
        s = r["set"]
        x[f"n_{s}"] = int(r["structures"])
        x[f"E_{s}"] = float(r["rmse_E_eV_atom"])
        x[f"F_{s}"] = float(r["rmse_F_eV_A"])
    return sorted(d.values(), key=lambda x: (x["label"] != "(all)", x["label"]))


def _learning_curve(p: Path) -> dict:
    import csv

    if not p.exists():
        return {}
    with open(p) as fh:
        rows = [r for r in csv.DictReader(fh)]
    ep = [r for r in rows if int(float(r["epoch"])) >= 1 and r.get("time_s")]
    t = [float(r["time_s"]) for r in ep]
    last = rows[-1] if rows else {}
    return {"epochs": len(ep), "epoch_s_mean": _mean(t), "train_s": float(sum(t)),
            "final_epoch": {k: float(v) for k, v in last.items() if v not in ("", None)}}


def _thermo_rows(log: str) -> list:
    rows, header = [], None
    for line in log.splitlines():
        t = line.split()
        if t[:1] == ["Step"]:
            header = t
            continue
        if header is None:
            continue
        if len(t) != len(header):
            header = None if rows else header
            continue
        try:
            rows.append(dict(zip(header, map(float, t))))
        except ValueError:
            header = None
    return rows


def _site_png(path: Path, sites, raw, nn_err, rc) -> None:
    """Fig. 6/7 analogue: ‖F_fragment − F_bulk‖ (GFN2-xTB) at the fragment centres and at all
    central atoms per site, and the HDNNP force RMSE per site on the periodic snapshots."""
    plt = demo._plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    x = np.arange(len(sites))
    names = {"small": f"small (R = {rc:.2f} Å)", "large": f"large (R = {2 * rc:.2f} Å)"}
    for ax, key, title in ((axes[0], "centre", "at the fragment centre"),
                           (axes[1], "central_atoms", "all central atoms")):
        for k, (tag, d) in enumerate(raw[key].items()):
            for i, s in enumerate(sites):
                v = d.get(s, np.zeros(0))
                ax.scatter(np.full(len(v), i + (k - 0.5) * 0.25), v, s=10, alpha=0.6,
                           color=f"C{k}", label=names[tag] if i == 0 else None)
        ax.axhline(0.125, color="k", lw=0.8, ls="--", label="0.125 eV/Å")
        ax.set_xticks(x, sites)
        ax.set_ylabel("‖F_fragment − F_bulk‖ (eV/Å)")
        ax.set_title(f"GFN2-xTB fragment vs bulk, {title}", fontsize=10)
        ax.legend(fontsize=8)
    w = 0.8 / max(len(nn_err), 1)
    for k, (name, d) in enumerate(nn_err.items()):
        axes[2].bar(x + (k - (len(nn_err) - 1) / 2) * w, [d.get(s, np.nan) for s in sites], w,
                    label=name.upper())
    axes[2].set_xticks(x, sites)
    axes[2].set_ylabel("force component RMSE vs GFN2-xTB (eV/Å)")
    axes[2].set_title("HDNNP error per site, periodic validation snapshots", fontsize=10)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parity_png(path: Path, evs: dict, offsets: dict) -> None:
    """Parity of the periodic validation snapshots: force components and per-atom energies
    (relaxed-cell offset subtracted, relative to the mean reference energy)."""
    plt = demo._plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, ev in evs.items():
        st = ev["structures"]
        fr = np.concatenate([x["F_ref"].ravel() for x in st])
        fn = np.concatenate([x["F_nn"].ravel() for x in st])
        axes[0].scatter(fr, fn, s=2, alpha=0.4,
                        label=f"{name} (RMSE {demo._rmse(fn - fr):.3f} eV/Å)")
        er = np.array([x["E_ref"] / x["n"] for x in st])
        en = np.array([x["E_nn"] / x["n"] for x in st]) - offsets.get(name, 0.0)
        axes[1].scatter(1e3 * (er - er.mean()), 1e3 * (en - er.mean()), s=14,
                        label=f"{name} (RMSE {1e3 * demo._rmse(en - er):.2f} meV/atom)")
    for ax, q in zip(axes, ("force component (eV/Å)", "E/atom − mean ref (meV/atom)")):
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"GFN2-xTB {q}")
        ax.set_ylabel(f"HDNNP {q}")
        ax.legend(fontsize=8)
    axes[1].set_title("energies with the relaxed-cell offset subtracted", fontsize=10)
    fig.suptitle("periodic IRMOF-1 validation snapshots")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _lattice_png(path: Path, t_ps, a, temp, a0, t_half, cell: str = "conventional cell",
                 who: str = "HDNNP1") -> None:
    plt = demo._plt()
    fig, axes = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    axes[0].plot(t_ps, a, lw=1)
    axes[0].axhline(a0, color="k", ls="--", lw=0.8, label=f"start cell {a0:.3f} Å")
    axes[0].axhline(PAPER["a_experiment"], color="C3", ls=":", lw=0.8,
                    label=f"experiment {PAPER['a_experiment']} Å")
    axes[0].axvline(t_half, color="grey", lw=0.6)
    axes[0].set_ylabel("conventional a (Å)")
    axes[0].legend(fontsize=8)
    axes[1].plot(t_ps, temp, lw=1, color="C1")
    axes[1].axhline(300, color="k", ls="--", lw=0.8)
    axes[1].set_ylabel("T (K)")
    axes[1].set_xlabel("time (ps)")
    axes[0].set_title(f"IRMOF-1 {cell}, LAMMPS NPT 300 K / 1 bar, {who}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _tab(rows, header) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(v) for v in r) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _render_report(V: dict, npt, mds, wd: Path) -> str:
    m, sp = V["meta"], V["meta"]["scale_params"]
    rc = m["r_c"]
    P = V.get("paper", PAPER)
    tr = V["training"]
    L = ["# IRMOF-1: HDNNPs from small and large fragments, GFN2-xTB reference\n",
         "Analogue of Herbold & Behler, PCCP 25, 12979 (2023), sections 4.1-4.4, produced by "
         f"`examples/irmof/irmof.py` (scale `{m['scale']}`, {m['date']}). Reference method "
         "GFN2-xTB (tblite) instead of PBE-D3; all energies in eV/atom, forces in eV/Å.\n"]
    rng = m.get("range")
    src = {"--rc": "set with --rc", "range.json": "from the Hessian range analysis",
           "default": "default"}[m["r_c_source"]]
    hess = ""
    if rng:
        hess = (f" The Hessian range analysis (`range` step, {rng.get('sites')} sites, "
                f"{'conventional' if rng.get('cell') == 'conv' else 'primitive'} cell) gave "
                f"R_frag^conv = {rng['r_frag_conv']:.3f} Å, i.e. R_c = {rng['r_c']:.3f} Å"
                + (" ([plot](hessian_range.png))" if (wd / "hessian_range.png").exists()
                   else "") + ".")
    hidden = "-".join(map(str, sp["hidden"]))
    acsf = m.get("acsf_per_element", {})
    acsf_s = "; ".join(f"{n.upper()} " + ", ".join(f"{e} {k}" for e, k in d.items())
                       for n, d in acsf.items())
    L.append(
        f"- **Cutoff**: R_c = {rc:.3f} Å ({src}; paper: {P['r_c']} Å for PBE-D3).{hess}\n"
        f"- **Fragments**: small R_frag = R_c = {rc:.3f} Å (HDNNP1), large R_frag = 2 R_c = "
        f"{2 * rc:.3f} Å (HDNNP2 with cutoff R_c, HDNNP3 with cutoff 2 R_c = {2 * rc:.3f} Å); "
        f"H-capped, centred on random members of each of the {len(m['sites'])} nonequivalent "
        f"sites ({', '.join(f'{k}×{v}' for k, v in m['sites'].items())}), "
        f"{sp.get('small_per_site', 3)} small and {sp.get('large_per_site', 1)} large per site "
        f"and training snapshot, one of each per site and validation snapshot.\n"
        f"- **Snapshots**: {sp['n_train']} training and {sp['n_val']} validation snapshots of "
        f"the {m['n_atoms_cell']}-atom primitive cell ({m['formula']}), random symmetric strain "
        f"≤ {sp['strain']:g}, Gaussian rattle σ = {sp['rattle']:g} Å (in place of the paper's "
        f"vacuum fragment MD and active learning).\n"
        f"- **Relaxation** (GFN2-xTB, BFGS): {m.get('relax_steps')} steps, max|F| "
        f"{_fmt(m.get('relax_fmax') or float('nan'))} eV/Å (from "
        f"{_fmt(m.get('relax_initial_fmax') or float('nan'))}; target {sp['relax_fmax']:g}); "
        f"cell {'relaxed' if m.get('cell_relaxed') else 'fixed'} "
        f"(conventional a = {m['a_conv_relaxed_cell']:.3f} Å).\n"
        f"- **Networks**: {hidden} tanh, EKF, {sp['epochs']} epochs, {sp['radial_n']} radial "
        f"shifted ACSFs per pair and type-9 angular ACSFs per triple minus those without "
        f"information in the data (ACSFs per element: {acsf_s or '–'}); 10 % of each fragment "
        f"type held out as the test set.\n")

    # Table 1
    rows = []
    for s, d in V["table1"].items():
        rows.append([s] + [x for k in ("small", "large") for x in
                           (d[k]["n_atom"], d[k]["n_central"], d[k]["ratio"])])
    L.append("## Fragment sizes (Table 1 analogue)\n")
    L.append(f"Mean over all labelled fragments of a site (training and validation). N_central: "
             f"atoms whose whole R_c = {rc:.3f} Å sphere equals the bulk one (`arrays['central']`"
             f"). Paper (PBE-D3, one fragment per type): small I1-As 59/17, I1-Bs 42/11; "
             f"extended large I1-A' 107/65, I1-B' 146/62.\n")
    L.append(_tab([[r[0]] + [f"{x:.1f}" if i % 3 != 2 else f"{x:.2f}"
                             for i, x in enumerate(r[1:])] for r in rows],
                  ["site", "N_atom small", "N_central small", "ratio", "N_atom large",
                   "N_central large", "ratio"]) + "\n")
    # Table 2
    L.append("## Central atoms with the 2 R_c cutoff (Table 2 analogue)\n")
    L.append(f"Large fragments, N_central with a {2 * rc:.3f} Å sphere (what HDNNP3 sees). "
             f"{V['table2_method']}. Paper (extended large fragments): I1-A' 107/17, "
             f"I1-B' 146/12.\n")
    L.append(_tab([[s, f"{d['n_atom']:.1f}", f"{d['n_central_2rc']:.1f}", f"{d['ratio']:.2f}"]
                   for s, d in V["table2"].items()],
                  ["site", "N_atom", "N_central (2 R_c)", "ratio"]) + "\n")
    # training data
    L.append("## Training data and its GFN2-xTB cost\n")
    L.append("Bulk-like environments: sum of N_central over the training fragments with the "
             "potential's own cutoff (paper: 1 051 611 for HDNNP2, 400 885 for HDNNP3). "
             "GFN2-xTB seconds: sum of the single-thread wall times of the labelled fragments.\n")
    L.append(_tab([[n.upper(), d["data"], f"{d['cutoff']:.3f}", d["structures"], d["atoms"],
                    d["bulk_like_environments"], f"{d['gfn2_cpu_s']:.0f}"]
                   for n, d in tr.items()],
                  ["potential", "fragments", "cutoff (Å)", "structures (train+test)", "atoms",
                   "bulk-like environments", "GFN2-xTB CPU-s"]) + "\n")
    # Tables 3/4
    for n, d in tr.items():
        if not d.get("rmse_table"):
            continue
        num = "3" if n == "hdnnp1" else "4"
        L.append(f"## {n.upper()} training and test fragments (Table {num} analogue)\n")
        ref = (P["table3_hdnnp1_initial_all"] if n == "hdnnp1"
               else P["table4_all"].get(n))
        extra = ""
        if (wd / n / "learning_curve.png").exists():
            extra = f" [learning curve]({n}/learning_curve.png)"
        if (wd / n / "rmse_table.md").exists():
            extra += f", [trainer's RMSE table]({n}/rmse_table.md)"
        L.append(f"Cutoff {d['cutoff']:.3f} Å, {d.get('epochs', '?')} epochs." + extra
                 + (f" Paper, all: E {ref['E_train']}/{ref['E_test']}, F {ref['F_train']}/"
                    f"{ref['F_test']}" + (" (HDNNP1-initial)" if n == "hdnnp1" else "")
                    + "." if ref else "") + "\n")
        L.append(_tab([[r["label"], r.get("n_train", 0), r.get("n_test", 0),
                        r.get("E_train", float("nan")), r.get("E_test", float("nan")),
                        r.get("F_train", float("nan")), r.get("F_test", float("nan"))]
                       for r in d["rmse_table"]],
                      ["fragment", "N train", "N test", "E train", "E test", "F train",
                       "F test"]) + "\n")
    # Table 5
    t5 = V.get("table5", {})
    if t5:
        has_type = any("rmse_E_type_offset" in r for d in t5.values() for r in d.values())
        L.append("## Validation fragments (Table 5 analogue)\n")
        L.append("Fragments cut from the held-out validation snapshots. Offset corrections: "
                 "'cell' subtracts the per-atom energy difference HDNNP − GFN2-xTB of the relaxed "
                 "periodic cell (as for Table 6); 'type' subtracts, per fragment type, the "
                 "per-atom difference for the same fragment cut from the relaxed cell (the "
                 "fragment-specific correction of section 4.3). Extrapolations: warnings (atom, "
                 "ACSF) summed over the structures / structures with any.\n")
        rows = []
        for n, d in t5.items():
            for k, r in d.items():
                rows.append([n.upper(), k, r["n"], r["rmse_E"], r["rmse_E_offset"]]
                            + ([r.get("rmse_E_type_offset", float("nan"))] if has_type else [])
                            + [r["rmse_F"], f"{r['extrapolations']} / "
                               f"{r['structures_extrapolating']}"])
        L.append(_tab(rows, ["potential", "fragments", "N", "E raw", "E cell-corr."]
                      + (["E type-corr."] if has_type else [])
                      + ["F", "extrapolations"]) + "\n")
    # Table 6
    t6 = V.get("table6", {})
    if t6:
        L.append("## Periodic bulk validation snapshots (Table 6 analogue)\n")
        n0 = next(iter(t6.values()))
        L.append(f"{n0['n']} held-out snapshots of the {n0['atoms']}-atom cell vs GFN2-xTB. "
                 f"Offset (section 4.4): per-atom energy difference HDNNP − GFN2-xTB of the "
                 f"relaxed cell, subtracted in 'E corr.'. Reference force-component std "
                 f"{n0['force_std_ref']:.3f} eV/Å. Paper: IRMOF-1 bulk, 502 structures, PBE-D3.\n")
        L.append(_tab([[n.upper(), r["n"], r["rmse_E"], r["rmse_E_offset"], r["offset"],
                        r["rmse_F"], f"{r['extrapolations']} / {r['structures_extrapolating']}",
                        P["table6_irmof1"].get(n, {}).get("E", "–"),
                        P["table6_irmof1"].get(n, {}).get("F", "–")]
                       for n, r in t6.items()],
                      ["potential", "N", "E raw", "E corr.", "offset", "F", "extrapolations",
                       "paper E", "paper F"]) + "\n")
        if any("by_sampling" in r for r in t6.values()):
            L.append("By snapshot type (rattle: Gaussian σ = 0.05 Å + strain; harmonic: thermal "
                     "snapshots of the preliminary potential's normal modes at 200-700 K):\n")
            L.append(_tab([[n.upper(), smp, d["n"], d["rmse_E_offset"], d["rmse_F"],
                            d["force_std_ref"], d["extrapolations"]]
                           for n, r in t6.items() for smp, d in r.get("by_sampling", {}).items()],
                          ["potential", "snapshots", "N", "E corr.", "F", "F std (ref)",
                           "extrapolations"]) + "\n")
        if "bulk_F_ratio_1_2" in V:
            L.append(f"**Bulk force RMSE ratio HDNNP1/HDNNP2 = {V['bulk_F_ratio_1_2']:.3f}** "
                     f"({t6['hdnnp1']['rmse_F']:.4f}/{t6['hdnnp2']['rmse_F']:.4f}); paper "
                     f"0.104/0.110 = 0.95.\n")
        if (wd / "parity.png").exists():
            L.append("![parity of the periodic validation snapshots](parity.png)\n")
    # Fig 6/7
    dev = V["ref_force_deviation"]
    sites = list(V["table1"])
    L.append("## Fragment vs bulk GFN2-xTB forces (Fig. 6/7 analogue)\n")
    L.append("‖F_fragment − F_bulk‖ of the reference method on the validation fragments, per "
             "site: RMS / max (eV/Å) at the fragment centre and over all central atoms (R_c "
             "spheres complete, grouped by their own site), with the number above the 0.125 eV/Å "
             "target (paper: large fragments ≤ 0.16, small up to 0.35 eV/Å). Last columns: HDNNP "
             "force-component RMSE per site on the periodic validation snapshots.\n")
    rows = []
    pss = V.get("bulk_F_rmse_per_site", {})
    for s in sites + ["(all)"]:
        row = [s]
        for key in ("centre", "central_atoms"):
            for k in ("small", "large"):
                x = dev[key][k].get(s)
                row.append(f"{x['rms']:.3f} / {x['max']:.3f} ({x['n_above_0.125']}/{x['n']})"
                           if x and x["n"] else "–")
        row += [d.get(s, float("nan")) if s != "(all)" else V["table6"][n]["rmse_F"]
                for n, d in pss.items()]
        rows.append(row)
    L.append(_tab(rows, ["site", "centre small", "centre large", "central atoms small",
                         "central atoms large"] + [f"{n.upper()} F" for n in pss]) + "\n")
    if (wd / "force_error_per_site.png").exists():
        L.append("![force error per site](force_error_per_site.png)\n")
    al = _load(wd / "al.json")
    if al:
        L.append(_render_al(al))
    # MD
    who = (npt or {}).get("potential", "hdnnp1")
    L.append(f"## Molecular dynamics (LAMMPS, pair_style fragnn, {who.upper()})\n")
    if npt:
        if "a_mean_second_half" in npt:
            nvt = (f"after {npt['nvt_steps']} NVT and {npt['nvt_steps']} Berendsen-barostat "
                   f"steps, then Nose-Hoover iso" if npt.get("nvt_steps") else "tri")
            cells = ("conventional cubic cell" if npt.get("cell") == "conventional"
                     else "2×2×2 primitive cells")
            L.append(f"NPT ({nvt}), 300 K / 1 bar, {npt['atoms']} atoms ({cells}), {npt.get('steps_done', npt['steps'])} of {npt['steps']} steps × "
                     f"{npt['timestep_fs']} fs, np={npt['nprocs']}: conventional lattice constant "
                     f"**⟨a⟩ = {npt['a_mean_second_half']:.3f} ± {npt['a_std_second_half']:.3f} "
                     f"Å** over the second half (final {npt['a_final']:.3f} Å; ⟨T⟩ "
                     f"{npt['T_mean_second_half']:.0f} K, ⟨P⟩ {npt['P_mean_second_half']:.0f} "
                     f"bar); start cell {npt['a_relaxed_cell']:.3f} Å ("
                     + ("GFN2-xTB-relaxed" if npt.get("cell_relaxed") else
                        "shipped cell, only the positions relaxed")
                     + f"), experiment {npt['a_experiment']} Å. "
                     f"{npt.get('ns_per_day', float('nan')):.3f} ns/day, "
                     f"{npt.get('us_per_atom_step', float('nan')):.1f} µs/atom-step; "
                     f"{npt.get('extrapolation_warnings_total', '?')} extrapolation warnings "
                     f"(cumulative atom-ACSF-step count; {npt.get('sampled_steps_with_warnings')}"
                     f" of {npt.get('sampled_steps')} sampled steps had any).\n")
        pc = npt.get("pressure_check")
        if pc:
            L.append(f"Check against GFN2-xTB at ⟨a⟩ (`_pressure_check`: {pc['frames']} frames "
                     f"of 300 K MD of the 106-atom cell at a = {pc['a_conv']:.3f} Å, and as "
                     f"many 0.15 Å larger for the slope): static pressure (virial only; the "
                     f"kinetic part adds ≈ 0.1 GPa) {pc['P_nn_mean']:.3f} GPa with the "
                     f"potential, {pc['P_gfn2_mean']:.3f} GPa with GFN2-xTB; with GFN2-xTB's "
                     f"dP/da = {pc['dP_da_gfn2_GPa_per_A']:.2f} GPa/Å this puts GFN2-xTB's own "
                     f"300 K lattice constant at ≈ **{pc['a_gfn2_estimate']:.2f} Å**. Force "
                     f"RMSE vs GFN2-xTB on these frames {pc.get('F_rmse_eV_A', float('nan')):.3f}"
                     f" eV/Å; atoms with extrapolating ACSFs per frame (of 106): "
                     f"{', '.join(map(str, pc.get('extrapolating_atoms', [])))}. The same cell "
                     f"with the fractional coordinates of the relaxed 25.832 Å cell (no MD) has "
                     f"a GFN2-xTB static pressure of "
                     f"{pc.get('P_gfn2_fixed_fractional', float('nan')):.2f} GPa: relaxing the "
                     f"linkers makes the framework far softer than the fixed-coordinate E(a) "
                     f"below suggests, hence ⟨a⟩ well below that curve's minimum.\n")
        if "failed" in npt:
            L.append("NPT run failed:\n\n```\n" + npt["failed"] + "\n```\n")
        if (wd / "npt_lattice.png").exists():
            L.append("![lattice constant during NPT](npt_lattice.png)\n")
    else:
        L.append("NPT: not run yet (`irmof.py npt`).\n")
    if mds:
        parts = []
        for np_, r in mds["runs"].items():
            if "failed" in r:
                parts.append(f"np={np_}: failed ({r['failed'].splitlines()[0]})")
            else:
                parts.append(f"np={np_}: {r['us_per_atom_step']:.2f} µs/atom-step, "
                             f"{r['ns_per_day']:.3f} ns/day, energy drift "
                             f"{r['drift_eV_atom']:.1e} eV/atom over the run")
        L.append(f"MD speed, NVE with {mds.get('potential', 'hdnnp1').upper()}, "
                 f"{mds['atoms']} atoms, {mds['steps']} × {mds['timestep_fs']} fs: " + "; ".join(parts) + f" ({mds['cpu_count']} cores, load average "
                 f"{mds['loadavg_1min_at_start']:.1f} at the start).\n")
    else:
        L.append("MD speed: not run yet (`irmof.py mdspeed`).\n")
    # timings
    L.append("## Timings\n")
    rows = [[n.upper(), d.get("epochs", "–"), _fmt1(d.get("epoch_s_mean", float("nan"))),
             _fmt1(d.get("train_s", float("nan")))] for n, d in tr.items()]
    L.append(_tab(rows, ["potential", "epochs", "s per epoch", "training s"]) + "\n")
    L.append("GFN2-xTB labelling (single-thread wall time per structure, summed):\n")
    L.append(_tab([[k, d["structures"], _fmt1(d["atoms_mean"]), _fmt(d["s_per_structure"]),
                    f"{d['cpu_s']:.0f}"] for k, d in V["labelling"].items()],
                  ["set", "structures", "mean atoms", "s per structure", "CPU-s"]) + "\n")
    L.append("All numbers: [validation.json](validation.json)"
             + (", [npt.json](npt.json)" if npt else "")
             + (", [mdspeed.json](mdspeed.json)" if mds else "") + ".\n")
    return "\n".join(L)


def _render_al(al: dict) -> str:
    its = al.get("iterations", [])
    L = ["## Active learning of HDNNP1 (`active` step)\n",
         "Paper, section 3: bulk MD with preliminary potentials, fragments centred at atoms "
         "whose forces differ between two HDNNPs by more than 1 eV/Å or whose ACSFs "
         "extrapolate. Here: ASE MD of the 106-atom cell driven by the current HDNNP1 (0.5 fs; "
         "Langevin NVT or Berendsen NPT), every 20 steps a frame annotated with the "
         "committee HDNNP1 vs HDNNP2 (the large-fragment potential stands in for the paper's "
         "second small-fragment HDNNP; a fixed member, so its own extrapolations also "
         "select); a run stops when T > 1.5 T_target or > 10 atoms extrapolate (> 60 for the "
         "compressed runs added from iteration 6, whose start already extrapolates). At most 3 "
         "centres per frame, 3 Å apart; new *small* fragments (radius R_c) only, labelled "
         "with GFN2-xTB (those with reference force components > 20 eV/Å, deep inside a "
         "hole, are dropped); then HDNNP1 is fine-tuned on all small fragments, continuing "
         "its weights and Kalman filter. 'ps' = simulated time before the stop (the run "
         "length if it did not stop).\n"]
    def key(r):
        return f"{r['T_K']:.0f} K {r['ensemble']} {r['strain']:+.2f}"
    keys: list = []
    for it in its:
        keys += [key(r) for r in it.get("runs", []) if key(r) not in keys]
    head = ["iteration"] + keys + ["candidates", "fragments (dropped)", "F RMSE train/test",
                                   "fine-tune s"]
    rows = []
    for it in its:
        rm = it.get("rmse", {})
        by = {key(r): r for r in it.get("runs", [])}
        rows.append([it["iteration"]]
                    + [f"{by[k]['ps']:.2f}" + ("*" if by[k].get("stopped") else "")
                       if k in by else "–" for k in keys]
                    + [it.get("candidates", "–"),
                       f"{it.get('fragments', '–')} ({it.get('dropped_max_force', 0)})",
                       f"{rm.get('rmse_F_train', float('nan')):.3f}/"
                       f"{rm.get('rmse_F_test', float('nan')):.3f}" if rm else "–",
                       _fmt1(it.get("train_s", float("nan")))])
    L.append(_tab(rows, head) + "\n")
    L.append("\\* stopped (temperature or extrapolation criterion). Per-run details in "
             "[al.json](al.json).\n")
    return "\n".join(L)


def _render_mdval(m: dict) -> str:
    rows = [[n.upper(), src, d["n"], d["rmse_E_offset"], d["rmse_F"], d["extrapolations"]]
            for n, r in m["potentials"].items() for src, d in r.items()]
    P = m["potentials"]
    ratio = ""
    if {"hdnnp1", "hdnnp2"} <= set(P):
        ratio = "\nBulk force RMSE ratio HDNNP1/HDNNP2 on these cells: " + ", ".join(
            f"MD with {src.upper() if src != 'all' else 'either'}: "
            f"{P['hdnnp1'][src]['rmse_F'] / P['hdnnp2'][src]['rmse_F']:.3f}"
            for src in P["hdnnp1"]) + (
            ". Snapshots from a run that left the physical region (force errors of eV/Å for "
            "both potentials, many extrapolations) measure that run's failure, not accuracy."
            "\n")
    return ("### Periodic bulk from MD at 300 K\n\n"
            f"{m['snapshots']} snapshots of the 106-atom cell from Langevin MD at 300 K (0.5 fs, "
            "one every 0.5 ps after 1 ps) run with each potential (not HDNNP3), labelled with "
            f"GFN2-xTB (force spread {m['force_std_ref']:.3f} eV/Å); 'from' = the potential that "
            "ran the MD. Energies offset-corrected as in Table 6.\n\n"
            + _tab(rows, ["potential", "from", "N", "E corr.", "F", "extrapolations"])
            + "\n" + ratio)


def _render_eos(eos: dict) -> str:
    a = eos["a_min"]
    ref = a.get("GFN2-xTB", float("nan"))
    rows = [[k, f"{v:.3f}", f"{v - ref:+.3f}" if k != "GFN2-xTB" else "–"] for k, v in a.items()]
    return ("## Equation of state (0 K, fixed fractional coordinates)\n\n"
            f"Relaxed cell scaled by {eos['scale_factors'][0]:.2f}–{eos['scale_factors'][-1]:.2f};"
            " minimum of a cubic fit of E(a). With the internal coordinates fixed this is "
            "not the 300 K lattice constant: in MD the linkers relax and the cell is much "
            "softer under compression (see the GFN2-xTB pressures in the NPT check above)."
            "\n\n" + _tab(rows, ["method", "a_min (Å)", "vs GFN2-xTB (Å)"])
            + "\n\n![E(a)](eos.png)\n")


def _fmt1(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["relax", "range", "fragments", "label", "train",
                                     "active", "validate", "mdval", "eos", "npt", "mdspeed", "report",
                                     "publish", "all"])
    ap.add_argument("--workdir", default="irmof_run")
    ap.add_argument("--scale", default="reduced", choices=sorted(SCALES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rc", type=float, default=None, help="ACSF cutoff R_c (Å)")
    ap.add_argument("--only", nargs="+", choices=["hdnnp1", "hdnnp2", "hdnnp3"], default=None,
                    help="train: only these potentials (run several train steps in parallel)")
    ap.add_argument("--cell", action="store_true", help="relax the cell too (GFN2-xTB stress)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="train: epochs instead of the scale's (a rerun with more resumes from "
                         "the checkpoint)")
    ap.add_argument("--prelim", default=None,
                    help="fragments: preliminary potential (round-1 HDNNP1) whose harmonic model "
                         "gives the thermal snapshots of round 2")
    ap.add_argument("--force-fraction", type=float, default=None,
                    help="train: EKF force updates per epoch / force components instead of the "
                         "scale's")
    ap.add_argument("--steps", type=int, default=None,
                    help="npt / mdspeed: MD steps (default: the scale's npt_steps / 200)")
    ap.add_argument("--potential", default=None,
                    help="npt: potential directory name in the workdir (default hdnnp1_al if "
                         "it exists, else hdnnp1)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="active: active-learning iterations instead of the scale's")
    ap.add_argument("--dest", default=None,
                    help="publish: target folder (default examples/irmof/results)")
    args = ap.parse_args(argv)
    getattr(Run(args), args.step)()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Herbold & Behler (2023) for IRMOF-1 with GFN2-xTB in place of DFT, step by step.

    python irmof.py STEP [--workdir DIR] [--scale reduced|full] [--workers N] [--rc Å]

Steps (each reads the previous steps' files in DIR and skips work already done):

    relax      GFN2-xTB relaxation of the primitive cell (positions; --cell also the cell)
    range      Hessian range analysis -> R_frag^conv -> R_c = R_frag^conv / 2 (range.json)
    fragments  distorted bulk snapshots; small (R_c) and large (2 R_c) fragments per site
    label      GFN2-xTB energies and forces of fragments and periodic validation snapshots
    train      HDNNP1 (small, R_c), HDNNP2 (large, R_c), HDNNP3 (large, 2 R_c); 2x15 tanh
    validate   Tables 3-6 and Fig. 6/7 analogues with the section 4.3 offset correction
    npt        LAMMPS NPT (300 K, 1 bar) of bulk IRMOF-1 with HDNNP1 -> lattice constant
    all        everything in order

R_c: from range.json when the range step has run, else --rc (default 4.0 Å). Scales:
``reduced`` runs in about 5 minutes on 2 cores (a smoke test of the scripts), ``full`` is the
experiment (hours; use many cores and ``--workers``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyfragnn import demo
from pyfragnn.demo import (IRMOF1_PRIM, cut_site_fragments, distorted_snapshots, evaluate,
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


SCALES = {
    "reduced": Scale(0.1, 30, 2, "prim", 6, 2, 0.04, 0.01, 8, (15, 15), 5, 200),
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
        train, val = snaps[:sc.n_train], snaps[sc.n_train:]
        for k, a in enumerate(val):
            a.info.update(role="val", snapshot=k)
        for tag, name, radius, per in (("s", "small", rc, 3), ("l", "large", 2 * rc, 1)):
            # small fragments are ~10x cheaper: three per site and snapshot, as in the demo
            fr = cut_site_fragments(train, labels, members, radius, rc, 12, tag, "train", per)
            fr += cut_site_fragments(val, labels, members, radius, rc, 13, tag, "val")
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
            out = self.dir / name
            if (out / "potential.fragnn").exists() and (out / "rmse_table.csv").exists():
                _say(f"train: {name} exists")
                continue
            st = to_structures([a for a in self._labelled(data) if a.info["role"] == "train"])
            _say(f"train: {name} on {len(st)} {data} fragments, cutoff {cutoff:.3f} Å")
            train_hdnnp(st, out, cutoff, sc.epochs, hidden=sc.hidden, radial_n=sc.radial_n,
                        seed=1)

    def validate(self):
        from pyfragnn.potential import Potential

        rel = self.relaxed()
        e_rel = rel.get_potential_energy() / len(rel)
        bulk = self._labelled("bulk_val")
        frag = {k: [a for a in self._labelled(k) if a.info["role"] == "val"]
                for k in ("small", "large")}
        sites, labels = self.sites()
        lines = ["# IRMOF-1 with GFN2-xTB: validation (Tables 5-6 analogues)\n",
                 f"R_c = {self.rc:.3f} Å; Tables 3/4: hdnnp*/rmse_table.md\n",
                 "| potential | data | N | E RMSE raw (eV/atom) | E RMSE offset-corr. | "
                 "F RMSE (eV/Å) | extrapolations |", "|---|---|---|---|---|---|---|"]
        per_site = {}
        for name in ("hdnnp1", "hdnnp2", "hdnnp3"):
            p = self.dir / name / "potential.fragnn"
            if not p.exists():
                continue
            pot = Potential.load(p)
            r = pot.compute(rel.positions, rel.get_chemical_symbols(), rel.cell.array, rel.pbc,
                            forces=False, virial=False)
            off = r["energy"] / len(rel) - e_rel
            for key, data in (("small fragments", frag["small"]),
                              ("large fragments", frag["large"]), ("periodic bulk", bulk)):
                ev = evaluate(pot, data)
                e, ec = demo._errors(ev), demo._errors(ev, off)
                lines.append(f"| {name} | {key} | {e['n']} | {e['rmse_E']:.4f} | "
                             f"{ec['rmse_E']:.4f} | {e['rmse_F']:.4f} | {e['extrapolations']} |")
                if key == "periodic bulk":
                    per_site[name] = {s.label: demo._rmse(np.concatenate(
                        [(x["F_nn"] - x["F_ref"])[np.array(labels) == s.label].ravel()
                         for x in ev["structures"]])) for s in sites}
        ref_dev = {}
        for key in ("small", "large"):
            d = {}
            for f in frag[key]:
                b = bulk[int(f.info["snapshot"])]
                d.setdefault(f.info["site"], []).append(float(np.linalg.norm(
                    f.get_forces()[0] - b.get_forces()[int(f.info["centre"])])))
            ref_dev[key] = {k: np.array(v) for k, v in d.items()}
        demo._site_png(self.dir / "force_error_per_site.png", [s.label for s in sites],
                       ref_dev, per_site)
        lines.append("\n![force error per site](force_error_per_site.png)\n")
        (self.dir / "report.md").write_text("\n".join(lines))
        print("\n".join(lines))

    def npt(self):
        """NPT at 300 K and 1 bar with HDNNP1; prints the mean conventional lattice constant."""
        import shutil
        import subprocess

        from ase.data import atomic_numbers

        from pyfragnn.lammps import lammps_env

        sup = self.relaxed().repeat((2, 2, 2))
        work = self.dir / "npt"
        work.mkdir(exist_ok=True)
        # NVE run first writes data.lmp and checks the plugin
        lammps_md(self.dir / "hdnnp1" / "potential.fragnn", sup, work, 10)
        n = self.sc.npt_steps
        (work / "in.npt").write_text(f"""units metal
atom_style atomic
boundary p p p
read_data data.lmp
pair_style fragnn {(self.dir / 'hdnnp1' / 'potential.fragnn').resolve()} showew no maxew -1
pair_coeff * * {' '.join(sorted(set(sup.get_chemical_symbols()), key=atomic_numbers.get))}
velocity all create 300 4928 mom yes rot no dist gaussian
timestep 0.0005
fix npt all npt temp 300 300 0.05 tri 1.0 1.0 0.5
variable a equal (vol/2)^(1/3)
fix av all ave/time 10 {max(1, n // 20)} {n} v_a
thermo_style custom step temp pe press vol v_a
thermo {max(1, n // 20)}
run {n}
print "MEAN_A ${{a}} $(f_av)"
""")
        cmd = [shutil.which("mpirun"), "-np", str(max(1, self.workers)), shutil.which("lmp"),
               "-in", "in.npt", "-log", "log.npt", "-screen", "none"]
        p = subprocess.run(cmd, cwd=work, env=lammps_env(), capture_output=True, text=True)
        log = (work / "log.npt").read_text() if (work / "log.npt").exists() else ""
        mean = [l for l in log.splitlines() if l.startswith("MEAN_A")]
        if p.returncode != 0 or not mean:
            sys.exit("npt failed:\n" + "\n".join((log + p.stderr).splitlines()[-15:]))
        a_end, a_mean = map(float, mean[-1].split()[1:3])
        a0 = (self.relaxed().get_volume() * 4) ** (1 / 3)
        _say(f"npt: {n} steps; conventional lattice constant <a> = {a_mean:.3f} Å over the "
             f"second half (final {a_end:.3f} Å; relaxed cell {a0:.3f} Å, experiment 25.832 Å)")

    def all(self):
        for s in ("relax", "range", "fragments", "label", "train", "validate", "npt"):
            _say(f"== {s}")
            getattr(self, s)()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["relax", "range", "fragments", "label", "train",
                                     "validate", "npt", "all"])
    ap.add_argument("--workdir", default="irmof_run")
    ap.add_argument("--scale", default="reduced", choices=sorted(SCALES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rc", type=float, default=None, help="ACSF cutoff R_c (Å)")
    ap.add_argument("--cell", action="store_true", help="relax the cell too (GFN2-xTB stress)")
    args = ap.parse_args(argv)
    getattr(Run(args), args.step)()
    return 0


if __name__ == "__main__":
    sys.exit(main())

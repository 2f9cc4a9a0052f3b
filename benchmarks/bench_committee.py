"""Benchmark a 2-member committee in pair_style fragnn against the single model.

System and run as benchmarks/bench_lammps.py: n2p2's 8640-atom liquid-water box with the n2p2
H2O_RPBE-D3 potential (bohr/hartree, cflength/cfenergy as n2p2), 300 K, fix nve, 0.5 fs.
The second member is a copy of the potential with other weights (each weight times
1 + 0.05 N(0, 1), seed 1) written to the work directory, so it has the same symmetry functions
and shares their evaluation. The committee runs carry `compute fragnn/atom` and
`compute fragnn` in the thermo output, as an active-learning exploration would:

* "every step": thermo every step, so both members are evaluated on every step (the cost
  of the committee itself);
* "sampled": thermo (hence the deviation) every --sample steps; pair fragnn evaluates the
  second member only on those steps.

    python benchmarks/bench_committee.py                  # np 1, 20 steps, sample 10
    python benchmarks/bench_committee.py --np 2 --steps 40

Prints µs per atom-step of LAMMPS's Pair time (average over ranks) for each run, the ratios
to the single model (the target is <= 1.3), Pair %CPU (below 100 % when cores are shared: the
wall-clock figures are then upper bounds) and the CPU-time ratio (µs x %CPU).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_lammps  # noqa: E402

COMMITTEE_EXTRA = """compute al all fragnn/atom
compute alg all fragnn threshold 0.1
thermo_style custom step temp pe etotal press c_alg[1] c_alg[2] c_alg[3]
thermo {every}
"""


def perturbed_copy(src: Path, dst: Path, scale: float = 0.05, seed: int = 1) -> Path:
    from pyfragnn import Potential
    p = Potential.load(str(src))
    rng = np.random.default_rng(seed)
    for e in range(len(p.elements)):
        w = np.asarray(p.core.get_parameters(e))
        p.core.set_parameters(e, w * (1.0 + scale * rng.normal(size=w.shape)))
    dst.mkdir(parents=True, exist_ok=True)
    p.save_n2p2(str(dst))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sample", type=int, default=10)
    ap.add_argument("--data", type=Path,
                    default=bench_lammps.SHARED / "lammps" / "h2o_8640_liquid_NpT_RPBE-D3.data")
    ap.add_argument("--pot", type=Path, default=bench_lammps.SHARED / "H2O_RPBE-D3" / "pot")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    import pyfragnn.lammps as pl
    env = pl.lammps_env()
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_committee_"))
    pot = args.pot.resolve()
    second = perturbed_copy(pot, workdir / "member2")
    print(f"plugin: {pl.plugin_path()}\ndata: {args.data}\nmember 1: {pot}\nmember 2: {second} "
          f"(weights x (1 + 0.05 N(0,1)))\nnp: {args.np}, steps: {args.steps}")

    def lammps(pots: str, wd: Path) -> dict:
        pair = bench_lammps.WATER_PAIR.format(pot=pots)
        return bench_lammps.run(args.np, args.steps, args.data.resolve(), pair,
                                bench_lammps.WATER_MASSES, wd, env)

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at start")
    single = lammps(str(pot), workdir / "single")
    template = bench_lammps.INPUT
    runs = [("single model", single)]
    try:
        for name, every in (("committee, every step", 1),
                            (f"committee, every {args.sample}", args.sample)):
            extra = COMMITTEE_EXTRA.replace("{every}", str(every))
            # after the `thermo {steps}` line, so that this thermo setting wins
            bench_lammps.INPUT = template.replace("timer full\n", extra + "timer full\n")
            runs.append((name, lammps(f"{pot} {second}", workdir / f"c{every}")))
    finally:
        bench_lammps.INPUT = template
    s1 = single["us_per_atom_step"]
    c1 = s1 * single["cpu_frac"]
    print(f"\n{'run':<24} {'atoms':>6} {'steps':>5} {'Pair s':>8} {'us/atom-step':>13} "
          f"{'ratio':>6} {'Pair %CPU':>9} {'CPU us/atom-step':>16} {'CPU ratio':>9}")
    for name, r in runs:
        cpu = r["us_per_atom_step"] * r["cpu_frac"]
        print(f"{name:<24} {r['natoms']:>6} {r['steps']:>5} {r['pair_avg']:>8.3f} "
              f"{r['us_per_atom_step']:>13.2f} {r['us_per_atom_step'] / s1:>6.3f} "
              f"{r['cpu_frac']:>9.1%} {cpu:>16.2f} {cpu / c1:>9.3f}")
    print("(target: committee <= 1.3 x single model per atom-step)")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print(f"\nlogs in {workdir}")


if __name__ == "__main__":
    main()

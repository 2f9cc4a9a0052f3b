"""Floor analysis: the work an energy+forces evaluation cannot avoid, priced at this machine's
measured peak rates, next to the achieved time of pyfragnn's kernel (one core).

    python benchmarks/bench_floor.py [--repeat N] [--cases water irmof]

Cases: water = n2p2 H2O_RPBE-D3 (types 2/3, rc 12 bohr) on the 8640-atom box (counts on the
1080-atom cell; per-atom counts are those of the replica); irmof = the shipped IRMOF-1 potential
(types 2/9, rc 4.359 Å) on the 3x3x3 primitive supercell (2862 atoms; counts on the 106-atom
primitive cell).

Counted per atom (from the neighbour list and the symmetry-function parameters):
  pairs          neighbours inside each radial group's cutoff, times that group's functions
                 (one Gaussian exp each: "radial terms")
  triplets       angular neighbour pairs (j < k) per group: type 3 also needs r_jk < rc
  SF terms       triplets x functions of the group (the pair loop's inner work)
  transcendental exp per radial term, per (neighbour, angular Gaussian), per (narrow triplet,
                 distinct r_jk Gaussian) [n2p2's count; pyfragnn uses powers of a base Gaussian
                 where eta is an integer multiple], tanh/exp per hidden network node; sqrt for
                 r_ij and r_jk
  network MACs   sum over layers n_in x n_out, twice (value and dE/dG back-propagation)
  moments        wide angular functions (type 9) with integer zeta as Cartesian moments (the
                 kernel's algorithm): per (neighbour, moment set) C(zmax+3, 3) monomials x 5
                 multiply-adds (monomial, moment, value and gradient sums); per pair of sets
                 3 C(zmax+3, 3) (S_m and the two dE/dM updates); per function 2 (zeta + 1).
Priced with these multiply-add costs (a documented model, not a measurement): per radial term
4 (value 1, gradient 3); per narrow/wide SF term 4 (power ~1-2, value 1, gradient 2); per
triplet geometry and gradient vectors 30 (narrow) / 20 (wide); per neighbour 20.
Peak rates (measured here by a small C++ program compiled with -O3 -march=native): fused
multiply-add throughput on independent vector chains, the kernel's vectorised exp_approx, sqrt,
and scalar std::exp / std::tanh (printed for reference). Network activations (tanh) are priced
at the vectorised exp rate, as the kernel evaluates them (4 lanes: exp_approx's reduction and
polynomial, one division).
The floor is sum(count / rate); achieved / floor shows how far the kernel is from it.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N2P2 = ROOT.parent / "shared" / "data" / "n2p2" / "H2O_RPBE-D3"
KERNEL = ROOT / "cython_ext" / "kernel"

MICRO = r"""
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>
#include "compact_function.h"
using clk = std::chrono::steady_clock;
static double secs(clk::time_point a, clk::time_point b) { return std::chrono::duration<double>(b - a).count(); }
int main() {
    const int n = 4096, reps = 4000;
    std::vector<double> x(n), y(n);
    for (int i = 0; i < n; ++i) x[i] = -0.001 * (i % 997);
    double best;
    // FMA throughput: 16 independent accumulators per lane group.
    {
        double a[32];
        for (int k = 0; k < 32; ++k) a[k] = 1.0 + 1e-9 * k;
        const double m = 0.999999999, c = 1e-9;
        best = 1e30;
        for (int t = 0; t < 5; ++t) {
            auto t0 = clk::now();
            for (long r = 0; r < 2000000; ++r)
                for (int k = 0; k < 32; ++k) a[k] = a[k] * m + c;
            best = std::min(best, secs(t0, clk::now()));
        }
        double s = 0; for (int k = 0; k < 32; ++k) s += a[k];
        std::printf("fma %.6e %g\n", 2000000.0 * 32 / best, s);
    }
    auto rate = [&](const char* name, auto f) {
        double b = 1e30;
        for (int t = 0; t < 5; ++t) {
            auto t0 = clk::now();
            for (int r = 0; r < reps / 8; ++r) f();
            b = std::min(b, secs(t0, clk::now()));
        }
        double s = 0; for (int i = 0; i < n; i += 64) s += y[i];
        std::printf("%s %.6e %g\n", name, (double)n * (reps / 8) / b, s);
    };
    rate("exp_vec", [&] { for (int i = 0; i < n; ++i) y[i] = pyfragnn::exp_approx(x[i]); x[0] += 1e-12; });
    rate("sqrt_vec", [&] { for (int i = 0; i < n; ++i) y[i] = std::sqrt(-x[i] + 1.0); x[0] += 1e-12; });
    rate("exp_libm", [&] { for (int i = 0; i < n; ++i) y[i] = std::exp(x[i]); x[0] += 1e-12; });
    rate("tanh_libm", [&] { for (int i = 0; i < n; ++i) y[i] = std::tanh(x[i]); x[0] += 1e-12; });
    return 0;
}
"""


def peak_rates() -> dict:
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "micro.cpp", Path(d) / "micro"
        src.write_text(MICRO)
        subprocess.run(["g++", "-O3", "-march=native", "-fno-math-errno", "-std=c++17",
                        f"-I{KERNEL}", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()}


# ------------------------------------------------------------------------------- structures

def case_water():
    from ase.units import Bohr, Hartree
    from bench_calculator import read_structure  # the n2p2 input.data reader of the benchmarks
    from pyfragnn import Potential
    pot = Potential.load(N2P2 / "pot", length_unit=Bohr, energy_unit=Hartree)
    base = read_structure(N2P2 / "input.data")
    return "water (n2p2 H2O_RPBE-D3)", pot, base, base.repeat(2)


def case_irmof():
    from ase.io import read
    from pyfragnn import Potential
    from pyfragnn.demo import IRMOF1_PRIM
    pot = Potential.load(ROOT / "potentials" / "irmof1_hdnnp1_gfn2.fragnn")
    base = read(IRMOF1_PRIM, 0)  # as bench_calculator's IRMOF case
    return "IRMOF-1 (shipped potential)", pot, base, base.repeat(3)


CASES = {"water": case_water, "irmof": case_irmof}


# ------------------------------------------------------------------------------- counting

def parse_setup(text: str):
    """Symmetry functions per central element and the network layer sizes from input.nn text."""
    sfs = defaultdict(list)
    nodes, elements = [], []
    for line in text.splitlines():
        t = line.split("#")[0].split()
        if not t:
            continue
        if t[0] == "elements":
            elements = t[1:]
        elif t[0] == "global_nodes_short":
            nodes = [int(x) for x in t[1:]]
        elif t[0] == "global_activation_short":
            acts = t[1:]
        elif t[0] == "symfunction_short":
            ec, typ = t[1], int(t[2])
            if typ == 2:
                sfs[ec].append(dict(type=2, e1=t[3], eta=float(t[4]), rs=float(t[5]),
                                    rc=float(t[6])))
            elif typ in (3, 9):
                sfs[ec].append(dict(type=typ, e1=min(t[3], t[4], key=elements.index),
                                    e2=max(t[3], t[4], key=elements.index), eta=float(t[5]),
                                    lam=float(t[6]), zeta=float(t[7]), rc=float(t[8]),
                                    rs=float(t[9]) if len(t) > 9 else 0.0))
            else:
                raise SystemExit(f"bench_floor counts types 2, 3, 9 only (got {typ})")
    return elements, sfs, nodes, acts


def count(pot, atoms) -> dict:
    """Per-atom averages of the unavoidable work (see module docstring)."""
    from pyfragnn._core import neighbor_list
    lu = pot.length_unit
    elements, sfs, nodes, acts = parse_setup(pot.core.input_nn_text())
    offsets, index, d = neighbor_list(atoms.positions / lu, atoms.cell.array / lu, atoms.pbc,
                                      pot.core.cutoff)
    sym = np.array(atoms.get_chemical_symbols())
    c = defaultdict(float)
    n = len(atoms)
    for i in range(n):
        ec = sym[i]
        nb = slice(offsets[i], offsets[i + 1])
        dv, r, es = d[nb], np.linalg.norm(d[nb], axis=1), sym[index[nb]]
        c["neighbours"] += np.count_nonzero(r < max(s["rc"] for s in sfs[ec]))
        groups = defaultdict(list)
        for s in sfs[ec]:
            key = (s["type"], s["e1"], s.get("e2"), s["rc"])
            groups[key].append(s)
        msets = defaultdict(int)  # (element, rc, eta, rs) -> max zeta
        for (typ, e1, e2, rc), g in groups.items():
            if typ == 2:
                m = np.count_nonzero((es == e1) & (r < rc))
                c["pairs"] += m
                c["radial terms"] += m * len(g)
                c["exp"] += m * len(g)
                continue
            j = np.nonzero((es == e1) & (r < rc))[0]
            k = np.nonzero((es == e2) & (r < rc))[0]
            jj, kk = np.meshgrid(j, k, indexing="ij")
            mask = jj < kk if e1 == e2 else np.ones_like(jj, bool)
            jj, kk = jj[mask], kk[mask]
            gauss = {(s["eta"], s["rs"]) for s in g}
            nb_in = len(set(j) | set(k))
            c["exp"] += nb_in * len(gauss)
            if typ == 3:
                rjk = np.linalg.norm(dv[kk] - dv[jj], axis=1)
                nt = np.count_nonzero(rjk < rc)
                c["narrow triplets"] += nt
                c["narrow SF terms"] += nt * len(g)
                c["exp"] += nt * len(gauss)
                c["sqrt"] += nt
            else:
                nt = len(jj)
                c["wide triplets"] += nt
                c["wide SF terms"] += nt * len(g)
                if all(float(s["zeta"]).is_integer() for s in g):
                    zmax = defaultdict(int)
                    for s in g:
                        for e in (e1, e2):
                            key = (e, rc, s["eta"], s["rs"])
                            msets[key] = max(msets[key], int(s["zeta"]))
                        zmax[(s["eta"], s["rs"])] = max(zmax[(s["eta"], s["rs"])], int(s["zeta"]))
                        c["moment SF MACs"] += 2 * (int(s["zeta"]) + 1)
                    for z in zmax.values():  # S_m and the two dE/dM updates per pair of sets
                        c["moment SF MACs"] += 3 * math.comb(z + 3, 3)
        for (e, rc, eta, rs), z in msets.items():
            m = np.count_nonzero((es == e) & (r < rc))
            c["moment neighbour MACs"] += 5 * m * math.comb(z + 3, 3)
        nsf = len(sfs[ec])
        layers = [nsf] + nodes + [1]
        c["network MACs"] += 2 * sum(a * b for a, b in zip(layers[:-1], layers[1:]))
        c["activations"] += sum(nodes)
    c["sqrt"] += c["neighbours"]
    return {k: v / n for k, v in c.items()}


def floor_us(c: dict, rates: dict, moments: bool) -> dict:
    fma = rates["fma"]
    c = defaultdict(float, c)
    macs = (4 * c["radial terms"] + 4 * c["narrow SF terms"] + 30 * c["narrow triplets"]
            + 20 * c["neighbours"] + c["network MACs"])
    if moments and c.get("moment neighbour MACs"):
        macs += c["moment neighbour MACs"] + c["moment SF MACs"]
    else:
        macs += 4 * c["wide SF terms"] + 20 * c["wide triplets"]
    parts = {
        "multiply-adds": macs / fma,
        "exp (vectorised)": c["exp"] / rates["exp_vec"],
        "sqrt": c["sqrt"] / rates["sqrt_vec"],
        "network activations": c["activations"] / rates["exp_vec"],
    }
    return {k: 1e6 * v for k, v in parts.items()}


def achieved_us(pot, atoms, repeat: int) -> tuple:
    from pyfragnn._core import neighbor_list
    lu = pot.length_unit
    el = pot.core.element_indices(atoms.get_chemical_symbols())
    off, idx, d = neighbor_list(atoms.positions / lu, atoms.cell.array / lu, atoms.pbc,
                                pot.core.cutoff)
    best_k, best_full, cpu_k = math.inf, math.inf, math.inf
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        pot.core.compute_neighbors(off, idx, d, el, forces=True, virial=True)
        best_k = min(best_k, time.perf_counter() - t)
        cpu_k = min(cpu_k, time.process_time() - c)
        t = time.perf_counter()
        pot.compute(atoms.positions, atoms.get_chemical_symbols(), atoms.cell.array, atoms.pbc)
        best_full = min(best_full, time.perf_counter() - t)
    n = len(atoms)
    return 1e6 * best_k / n, 1e6 * best_full / n, 1e6 * cpu_k / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average; 2-core machine shared with others)")
    rates = peak_rates()
    print("measured peak rates (one core): " + ", ".join(
        f"{k} {v / 1e9:.2f} G/s" for k, v in rates.items()))
    for name in args.cases:
        label, pot, small, big = CASES[name]()
        c = count(pot, small)
        print(f"\n== {label}: counts per atom on {len(small)} atoms, timed on {len(big)} atoms")
        for k in ("neighbours", "pairs", "radial terms", "narrow triplets", "narrow SF terms",
                  "wide triplets", "wide SF terms", "exp", "sqrt", "activations", "network MACs",
                  "moment neighbour MACs", "moment SF MACs"):
            if c.get(k):
                print(f"  {k:24s} {c[k]:12.1f}")
        t_kernel, t_full, c_kernel = achieved_us(pot, big, args.repeat)
        floors = [("pair loop", floor_us(c, rates, False))]
        if c.get("moment neighbour MACs"):
            floors.append(("moments for type 9", floor_us(c, rates, True)))
        for what, parts in floors:
            tot = sum(parts.values())
            print(f"  floor ({what}): {tot:8.2f} µs/atom  = " +
                  " + ".join(f"{k} {v:.2f}" for k, v in parts.items()))
        print(f"  achieved: kernel {t_kernel:8.2f} µs/atom wall, {c_kernel:8.2f} CPU "
              f"(energy+forces+virial, neighbour list given); with neighbour search "
              f"{t_full:8.2f} µs/atom wall")
        for what, parts in floors:
            print(f"  achieved / floor ({what}): {t_kernel / sum(parts.values()):6.1f}x wall, "
                  f"{c_kernel / sum(parts.values()):6.1f}x CPU")


if __name__ == "__main__":
    main()

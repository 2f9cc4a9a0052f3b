"""Energy+forces per atom through FragNN (neighbour search included) for the n2p2 H2O_RPBE-D3
box (1080 atoms) and its 2x2x2 replica (8640 atoms), one core; peak memory.

    python benchmarks/bench_calculator.py [--repeat N]

Anchor on this kind of machine: n2p2 libnnp 253 µs/atom (1080) and 288 µs/atom (8640), excluding
its neighbour list. Prints µs/atom for the whole call and for its parts.
"""
import argparse
import resource
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from pyfragnn import FragNN, Potential
from pyfragnn._core import neighbor_list

N2P2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "n2p2" / "H2O_RPBE-D3"


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


def best_of(f, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pot = Potential.load(N2P2 / "pot", length_unit=Bohr, energy_unit=Hartree)
    base = read_structure(N2P2 / "input.data")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for label, atoms in (("1080", base), ("8640", base.repeat(2))):
        n = len(atoms)
        calc = FragNN(pot)

        def full():
            calc.reset()
            calc.get_forces(atoms)

        def nl_only():
            neighbor_list(atoms.positions / Bohr, atoms.cell.array / Bohr, atoms.pbc, pot.core.cutoff)

        t_full = best_of(full, args.repeat)
        t_nl = best_of(nl_only, args.repeat)
        print(f"{label} atoms: {1e6 * t_full / n:7.1f} µs/atom energy+forces+stress "
              f"(neighbour search {1e6 * t_nl / n:5.1f} µs/atom), "
              f"E = {calc.results['energy']:.6f} eV")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MB (after imports and loading: {rss0:.0f} MB)")


if __name__ == "__main__":
    main()

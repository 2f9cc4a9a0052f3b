"""Write a LAMMPS data file (atom_style atomic, units metal: Å) from an n2p2 input.data.

    python make_data.py INPUT_DATA OUT.data --length-unit 0.529177210544 --elements H O

--length-unit: Å per length unit of input.data (H2O_RPBE-D3: bohr = 1/1.8897261328 Å).
--elements: element of atom type 1, 2, ... (the order of pair_coeff * * El1 El2 ...).
The cell must be expressible as a LAMMPS restricted triclinic box (a along x, b in xy).
"""
import argparse

import numpy as np


def read_n2p2(path):
    """First structure of an n2p2 input.data: (cell rows or None, positions, symbols)."""
    cell, pos, sym = [], [], []
    with open(path) as fh:
        for line in fh:
            w = line.split()
            if not w:
                continue
            if w[0] == "lattice":
                cell.append([float(v) for v in w[1:4]])
            elif w[0] == "atom":
                pos.append([float(v) for v in w[1:4]])
                sym.append(w[4])
            elif w[0] == "end":
                break
    return (np.array(cell) if cell else None), np.array(pos), sym


def write_lammps_data(path, cell, pos, sym, elements, comment="pyfragnn"):
    a, b, c = cell
    if abs(a[1]) > 1e-12 or abs(a[2]) > 1e-12 or abs(b[2]) > 1e-12:
        raise ValueError("cell is not a LAMMPS restricted triclinic box (a || x, b in xy)")
    types = [elements.index(s) + 1 for s in sym]
    a, b, c = ([float(v) for v in vec] for vec in (a, b, c))
    r = lambda v: repr(float(v))  # noqa: E731  (17 significant digits, exact round trip)
    with open(path, "w") as fh:
        fh.write(f"# {comment}\n\n{len(pos)} atoms\n{len(elements)} atom types\n\n")
        fh.write(f"0.0 {a[0]!r} xlo xhi\n0.0 {b[1]!r} ylo yhi\n0.0 {c[2]!r} zlo zhi\n")
        if any(abs(v) > 0 for v in (b[0], c[0], c[1])):
            fh.write(f"{b[0]!r} {c[0]!r} {c[1]!r} xy xz yz\n")
        fh.write("\nAtoms # atomic\n\n")
        for i, (t, p) in enumerate(zip(types, pos)):
            fh.write(f"{i + 1} {t} {r(p[0])} {r(p[1])} {r(p[2])}\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input_data")
    ap.add_argument("out")
    ap.add_argument("--length-unit", type=float, default=1.0)
    ap.add_argument("--elements", nargs="+", required=True)
    args = ap.parse_args()
    cell, pos, sym = read_n2p2(args.input_data)
    write_lammps_data(args.out, cell * args.length_unit, pos * args.length_unit, sym,
                      args.elements,
                      comment=f"from {args.input_data} (length unit {args.length_unit!r} A)")

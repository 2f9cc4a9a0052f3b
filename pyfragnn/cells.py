"""Idealised primitive cells of frameworks whose molecules break a lattice centring.

IRMOF-16's crystal structure (Zn4O(TPDC)3) is face-centred in all but the orientation of some
linker rings: 16 of the 72 phenylene rings of the 904-atom conventional cell are turned, so the
fcc translations (½ ½ 0) map 128 C/H atoms onto nothing (spglib: Pm-3, not Fm-3m), and the
smallest periodic cell is the 904-atom one. :func:`primitive_by_molecules` builds the cell of the
centred lattice (226 atoms for IRMOF-16) by keeping *whole molecules*: the bond graph without
the bonds to the framework's nodes (metal atoms) splits the structure into linkers and node
atoms; molecules that the centring maps onto each other form one class, and each class keeps
one member, whole (the member with the lowest atom index, so the choice is reproducible).
Every atom of the result is an atom of the input moved by a vector of the primitive lattice,
bonds stay intact, and the turned rings take the orientation of the kept member.
The report (:class:`CellReport`) states per class how far the members differ, so that what the
idealisation changed is visible (Herbold & Behler 2023, section 2.1, use the experimental cells;
an idealised cell is needed here only because a reference calculation of 904 atoms is too
expensive for GFN2-xTB on a workstation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

#: fcc primitive vectors in fractional coordinates of the conventional cubic cell (rows)
FCC_PRIMITIVE = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])


@dataclass
class CellReport:
    """What :func:`primitive_by_molecules` did. ``class_deviation``: per class of molecules,
    the largest distance (Å) between an atom of the kept member and the nearest atom of the
    same element of another member after the centring translation; ``changed``: the classes
    with a deviation above ``tolerance`` (their members are not images of each other)."""
    molecules: int
    classes: int
    multiplicity: int
    class_formula: List[str] = field(default_factory=list)
    class_deviation: List[float] = field(default_factory=list)
    tolerance: float = 0.05

    @property
    def changed(self) -> List[int]:
        return [k for k, d in enumerate(self.class_deviation) if d > self.tolerance]

    def __str__(self) -> str:
        ch = self.changed
        txt = (f"{self.molecules} molecules in {self.classes} classes of {self.multiplicity} "
               f"images; {len(ch)} classes whose images differ by more than "
               f"{self.tolerance} Å")
        if ch:
            txt += ": " + ", ".join(f"{self.class_formula[k]} {self.class_deviation[k]:.2f} Å"
                                    for k in ch)
        return txt


def _molecules(atoms: Atoms, nodes: Sequence[str], bond_scale: float
               ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Connected components of the bond graph without bonds that touch a node element:
    list of (atom indices, unwrapped Cartesian positions (n, 3), Å)."""
    radii = np.array([covalent_radii[z] for z in atoms.numbers]) * bond_scale
    i, j, S = neighbor_list("ijS", atoms, radii)
    sym = np.array(atoms.get_chemical_symbols())
    node = np.isin(sym, list(nodes))
    keep = ~node[i] & ~node[j]
    i, j, S = i[keep], j[keep], S[keep]
    order = np.argsort(i, kind="stable")
    i, j, S = i[order], j[order], S[order]
    start = np.searchsorted(i, np.arange(len(atoms) + 1))
    cell = atoms.cell.array
    pos = atoms.positions
    seen = np.full(len(atoms), False)
    out = []
    for root in range(len(atoms)):
        if seen[root]:
            continue
        seen[root] = True
        unwrapped = {root: pos[root]}
        queue = deque([root])
        while queue:  # breadth-first: each atom placed next to the neighbour that found it
            a = queue.popleft()
            for k in range(start[a], start[a + 1]):
                b = j[k]
                if not seen[b]:
                    seen[b] = True
                    unwrapped[b] = pos[b] + S[k] @ cell + (unwrapped[a] - pos[a])
                    queue.append(b)
        idx = np.array(sorted(unwrapped))
        out.append((idx, np.array([unwrapped[b] for b in idx])))
    return out


def primitive_by_molecules(conventional: Atoms, primitive: np.ndarray = FCC_PRIMITIVE,
                           nodes: Sequence[str] = ("Zn",), bond_scale: float = 1.2,
                           tolerance: float = 0.05) -> Tuple[Atoms, CellReport]:
    """The primitive cell ``primitive @ conventional.cell`` (rows: fractional coordinates of
    the conventional cell; fcc by default) filled with one whole member of each class of
    molecules that the centring maps onto each other (module docstring). Molecules are the
    components of the bond graph (``d <= bond_scale (r_cov,i + r_cov,j)``) without the bonds
    of the ``nodes`` elements; a class is the set of molecules whose centres coincide modulo
    the primitive lattice (within 0.5 Å) and whose formulas agree.

    Returns the primitive cell (atoms wrapped into it; molecules keep their input order by
    first atom) and a :class:`CellReport`. Raises ValueError naming the molecule when a class
    does not have exactly det(conventional)/det(primitive) members or the result has atoms
    closer than 0.5 Å (the kept members collide)."""
    P = np.asarray(primitive, dtype=float)
    n_img = int(round(abs(1.0 / np.linalg.det(P))))
    if n_img < 1 or abs(n_img * np.linalg.det(P) - 1.0) > 1e-8 * n_img:
        raise ValueError(f"primitive: det = {np.linalg.det(P)!r} is not 1/n for an integer n")
    pcell = P @ conventional.cell.array
    inv = np.linalg.inv(pcell)
    mols = _molecules(conventional, nodes, bond_scale)
    sym = np.array(conventional.get_chemical_symbols())
    classes: List[List[int]] = []
    keys: List[Tuple[str, np.ndarray]] = []
    for m, (idx, xyz) in enumerate(mols):
        formula = "".join(sorted(sym[idx]))
        centre = xyz.mean(axis=0)
        f = centre @ inv
        for c, (form, fc) in enumerate(keys):
            d = f - fc
            d -= np.round(d)
            if form == formula and np.linalg.norm(d @ pcell) < 0.5:
                classes[c].append(m)
                break
        else:
            keys.append((formula, f))
            classes.append([m])
    for c, members in enumerate(classes):
        if len(members) != n_img:
            idx = mols[members[0]][0]
            raise ValueError(
                f"molecule of atom {idx[0]} ({_formula(sym[idx])}): {len(members)} images under the centring, expected "
                f"{n_img}; the structure is not centred by this primitive cell")
    report = CellReport(molecules=len(mols), classes=len(classes), multiplicity=n_img,
                        tolerance=tolerance)
    symbols: List[str] = []
    positions: List[np.ndarray] = []
    for members in sorted(classes, key=lambda ms: mols[ms[0]][0][0]):
        idx0, xyz0 = mols[members[0]]
        report.class_formula.append(_formula(sym[idx0]))
        report.class_deviation.append(max(
            (_image_deviation(xyz0, sym[idx0], mols[m][1], sym[mols[m][0]], pcell)
             for m in members[1:]), default=0.0))
        symbols.extend(sym[idx0])
        positions.extend(xyz0)
    prim = Atoms(symbols=symbols, positions=np.array(positions), cell=pcell,
                 pbc=conventional.pbc)
    prim.wrap()
    _check_no_collision(prim)
    return prim, report


def _formula(symbols: Sequence[str]) -> str:
    return Atoms(symbols=list(symbols)).get_chemical_formula()


def _image_deviation(xyz0: np.ndarray, sym0: np.ndarray, xyz1: np.ndarray, sym1: np.ndarray,
                     pcell: np.ndarray) -> float:
    """Largest distance (Å) from an atom of molecule 0 to the nearest same-element atom of
    molecule 1 moved onto it by a primitive lattice vector (the one matching the centres)."""
    d = xyz0.mean(axis=0) - xyz1.mean(axis=0)
    shift = np.round(d @ np.linalg.inv(pcell)) @ pcell
    moved = xyz1 + shift
    diff = np.linalg.norm(xyz0[:, None, :] - moved[None, :, :], axis=2)
    diff[sym0[:, None] != sym1[None, :]] = np.inf
    return float(diff.min(axis=1).max())


def _check_no_collision(atoms: Atoms, min_distance: float = 0.5) -> None:
    i, j, d = neighbor_list("ijd", atoms, min_distance)
    if len(i):
        k = int(np.argmin(d))
        raise ValueError(f"idealised cell: atoms {i[k]} and {j[k]} are {d[k]:.3f} Å apart "
                         "(the kept molecules collide)")

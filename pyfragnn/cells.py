"""Idealised primitive cells of frameworks whose molecules break a lattice centring.

IRMOF-16's crystal structure (Zn4O(TPDC)3) is face-centred in all but the orientation of some
linker rings: rings of the 904-atom conventional cell are turned differently in the fcc images
of one linker, so the translations (½ ½ 0) map C/H atoms onto nothing (spglib: Pm-3, not an
fcc group), and the smallest periodic cell is the 904-atom one. :func:`primitive_by_molecules`
builds the cell of the centred lattice (226 atoms for IRMOF-16) from *whole molecules*: the bond
graph without the bonds to the framework's nodes (metal atoms) splits the structure into
linkers and node atoms; molecules that the centring maps onto each other form a class, the
members of a class come in one or more variants (orientations), and the cell takes one variant
of each class: the combination with the most space-group operations (spglib at ``symprec``;
ties: the lowest atom indices). For IRMOF-16 that is Fm-3, the fcc counterpart of the
experimental Pm-3 (all rings turned alike). The positions are then symmetrised to that space
group (``ase.spacegroup.symmetrize.refine_symmetry``; atoms move by less than ``symprec``), so
that a relaxation keeps the symmetry and the sites are found (``pyfragnn.fragments.find_sites``).
Every atom of the result lies within ``symprec`` of an atom of the input moved by a vector of
the primitive lattice; bonds stay intact. The report (:class:`CellReport`) states what changed.
Herbold & Behler (2023, section 2.1) use the experimental cells; an idealised cell is needed
here only because a reference calculation of 904 atoms is too expensive for GFN2-xTB on a
workstation.
"""

from __future__ import annotations

import itertools
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
import spglib
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list
from ase.spacegroup.symmetrize import refine_symmetry

#: fcc primitive vectors in fractional coordinates of the conventional cubic cell (rows)
FCC_PRIMITIVE = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])

#: combinations of variants tried at most (beyond: the first variant of every class)
MAX_COMBINATIONS = 4096


@dataclass
class CellReport:
    """What :func:`primitive_by_molecules` did. Per class of molecules: ``class_formula``,
    ``class_variants`` (members that are not images of each other within ``tolerance`` Å),
    ``class_deviation`` (Å: the largest distance from an atom of the first member to the
    nearest same-element atom of another member moved onto it by the centring). The space group
    of the chosen combination (``spacegroup``, spglib at ``symprec``) and the largest atom
    displacement of the symmetrisation (``max_displacement``, Å)."""
    molecules: int
    classes: int
    multiplicity: int
    class_formula: List[str] = field(default_factory=list)
    class_variants: List[int] = field(default_factory=list)
    class_deviation: List[float] = field(default_factory=list)
    tolerance: float = 0.05
    combinations: int = 1
    spacegroup: str = ""
    operations: int = 1
    max_displacement: float = 0.0

    @property
    def changed(self) -> List[int]:
        """Classes whose members are not all images of each other."""
        return [k for k, v in enumerate(self.class_variants) if v > 1]

    def __str__(self) -> str:
        ch = self.changed
        txt = (f"{self.molecules} molecules in {self.classes} classes of {self.multiplicity} "
               f"images; {len(ch)} classes with more than one variant")
        if ch:
            txt += " (" + ", ".join(f"{self.class_formula[k]} {self.class_deviation[k]:.2f} Å"
                                    for k in ch) + ")"
        return (txt + f"; {self.combinations} combinations tried, chosen: {self.spacegroup} "
                f"({self.operations} operations), symmetrised by at most "
                f"{self.max_displacement:.3f} Å")


def _molecules(atoms: Atoms, nodes: Sequence[str], bond_scale: float
               ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Connected components of the bond graph without bonds that touch a node element:
    list of (atom indices, unwrapped Cartesian positions (n, 3), Å)."""
    radii = np.array([covalent_radii[z] for z in atoms.numbers]) * bond_scale
    i, j, S = neighbor_list("ijS", atoms, radii)
    node = np.isin(np.array(atoms.get_chemical_symbols()), list(nodes))
    keep = ~node[i] & ~node[j]
    i, j, S = i[keep], j[keep], S[keep]
    order = np.argsort(i, kind="stable")
    i, j, S = i[order], j[order], S[order]
    start = np.searchsorted(i, np.arange(len(atoms) + 1))
    shift = S @ atoms.cell.array
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
                    unwrapped[b] = pos[b] + shift[k] + (unwrapped[a] - pos[a])
                    queue.append(b)
        idx = np.array(sorted(unwrapped))
        out.append((idx, np.array([unwrapped[b] for b in idx])))
    return out


def _classes(mols, sym: np.ndarray, pcell: np.ndarray) -> List[List[int]]:
    """Molecules grouped by centre modulo the primitive lattice (0.5 Å) and formula."""
    inv = np.linalg.inv(pcell)
    classes: List[List[int]] = []
    keys: List[Tuple[str, np.ndarray]] = []
    for m, (idx, xyz) in enumerate(mols):
        formula = "".join(sorted(sym[idx]))
        f = xyz.mean(axis=0) @ inv
        for c, (form, fc) in enumerate(keys):
            d = f - fc
            d -= np.round(d)
            if form == formula and np.linalg.norm(d @ pcell) < 0.5:
                classes[c].append(m)
                break
        else:
            keys.append((formula, f))
            classes.append([m])
    return classes


def primitive_by_molecules(conventional: Atoms, primitive: np.ndarray = FCC_PRIMITIVE,
                           nodes: Sequence[str] = ("Zn",), bond_scale: float = 1.2,
                           tolerance: float = 0.05, symprec: float = 0.05
                           ) -> Tuple[Atoms, CellReport]:
    """The primitive cell ``primitive @ conventional.cell`` (rows: fractional coordinates of
    the conventional cell; fcc by default) filled with one whole member of each class of
    molecules that the centring maps onto each other, the variants chosen for the most
    symmetry and the positions symmetrised (module docstring). Molecules are the components of
    the bond graph (``d <= bond_scale (r_cov,i + r_cov,j)``) without the bonds of the ``nodes``
    elements; a class is the set of molecules whose centres coincide modulo the primitive
    lattice (within 0.5 Å) and whose formulas agree; members that differ by more than
    ``tolerance`` Å (after the centring translation) are different variants.

    Returns the primitive cell (atoms wrapped into it, molecules in input order of their
    first atom) and a :class:`CellReport`. Raises ValueError naming the molecule when a class
    does not have exactly det(conventional)/det(primitive) members, and when the result has
    atoms closer than 0.5 Å (the kept members collide)."""
    P = np.asarray(primitive, dtype=float)
    n_img = int(round(abs(1.0 / np.linalg.det(P))))
    if n_img < 1 or abs(n_img * np.linalg.det(P) - 1.0) > 1e-8 * n_img:
        raise ValueError(f"primitive: det = {np.linalg.det(P)!r} is not 1/n for an integer n")
    pcell = P @ conventional.cell.array
    mols = _molecules(conventional, nodes, bond_scale)
    sym = np.array(conventional.get_chemical_symbols())
    classes = sorted(_classes(mols, sym, pcell), key=lambda ms: mols[ms[0]][0][0])
    for members in classes:
        if len(members) != n_img:
            idx = mols[members[0]][0]
            raise ValueError(
                f"molecule of atom {idx[0]} ({_formula(sym[idx])}): {len(members)} images "
                f"under the centring, expected {n_img}; the structure is not centred by this "
                "primitive cell")
    report = CellReport(molecules=len(mols), classes=len(classes), multiplicity=n_img,
                        tolerance=tolerance)
    variants: List[List[int]] = []
    for members in classes:
        idx0, xyz0 = mols[members[0]]
        dev = [_image_deviation(xyz0, sym[idx0], mols[m][1], sym[mols[m][0]], pcell)
               for m in members[1:]]
        vs = [members[0]]
        for m in members[1:]:
            if all(_image_deviation(mols[v][1], sym[mols[v][0]], mols[m][1], sym[mols[m][0]],
                                    pcell) > tolerance for v in vs):
                vs.append(m)
        variants.append(vs)
        report.class_formula.append(_formula(sym[idx0]))
        report.class_variants.append(len(vs))
        report.class_deviation.append(max(dev, default=0.0))

    def build(choice: Sequence[int]) -> Atoms:
        a = Atoms(symbols=[s for m in choice for s in sym[mols[m][0]]],
                  positions=np.concatenate([mols[m][1] for m in choice]), cell=pcell,
                  pbc=conventional.pbc)
        a.wrap()
        return a

    def operations(a: Atoms) -> int:
        with warnings.catch_warnings():  # spglib 2.5+ deprecates its old error handling
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                ds = spglib.get_symmetry_dataset(
                    (a.cell.array, a.get_scaled_positions(), a.numbers), symprec=symprec)
            except Exception:  # new-style SpglibError: no symmetry found
                ds = None
        return 0 if ds is None else len(ds.rotations)

    n_comb = int(np.prod([len(v) for v in variants]))
    choices = (itertools.product(*variants) if n_comb <= MAX_COMBINATIONS
               else iter([tuple(v[0] for v in variants)]))
    report.combinations = n_comb if n_comb <= MAX_COMBINATIONS else 1
    best, best_ops = None, -1
    for choice in choices:  # product order: the first maximum has the lowest indices
        ops = operations(build(choice))
        if ops > best_ops:
            best, best_ops = choice, ops
    prim = build(best)
    _check_no_collision(prim)
    before = prim.positions.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = refine_symmetry(prim, symprec=symprec)
    prim.wrap()
    d = (prim.positions - before) @ np.linalg.inv(prim.cell.array)
    d -= np.round(d)
    report.max_displacement = float(np.linalg.norm(d @ prim.cell.array, axis=1).max())
    report.spacegroup, report.operations = ds.international, len(ds.rotations)
    return prim, report


def _formula(symbols: Sequence[str]) -> str:
    return Atoms(symbols=list(symbols)).get_chemical_formula()


def _image_deviation(xyz0: np.ndarray, sym0: np.ndarray, xyz1: np.ndarray, sym1: np.ndarray,
                     pcell: np.ndarray) -> float:
    """Largest distance (Å) from an atom of molecule 0 to the nearest same-element atom of
    molecule 1 moved onto it by a primitive lattice vector (the one matching the centres)."""
    d = xyz0.mean(axis=0) - xyz1.mean(axis=0)
    moved = xyz1 + np.round(d @ np.linalg.inv(pcell)) @ pcell
    diff = np.linalg.norm(xyz0[:, None, :] - moved[None, :, :], axis=2)
    diff[sym0[:, None] != sym1[None, :]] = np.inf
    return float(diff.min(axis=1).max())


def _check_no_collision(atoms: Atoms, min_distance: float = 0.5) -> None:
    i, j, d = neighbor_list("ijd", atoms, min_distance)
    if len(i):
        k = int(np.argmin(d))
        raise ValueError(f"idealised cell: atoms {i[k]} and {j[k]} are {d[k]:.3f} Å apart "
                         "(the kept molecules collide)")

"""Bond topology of a periodic structure, taken from a relaxed reference and checked on snapshots.

A thermal snapshot can stretch a bond past the distance test that defines bonds
(``d <= bond_scale * (r_cov,i + r_cov,j)``); re-detecting bonds there detaches atoms, and a
fragment cut around a detached H is a lone H atom (issue 11). With a :class:`BondTopology`
from the relaxed reference structure (same atoms, same order) the bond graph of every snapshot
is the reference one, and a snapshot in which a bond of it is stretched beyond

    ``d > max_stretch * d_ref``   (``max_stretch`` = 1.25 by default, ``d_ref`` its length
    in the reference, Å)

is reported (:func:`check_snapshot`, :class:`StretchedBondError`) instead of being cut. With
the default 1.25 a C-H bond (1.09 Å) may reach 1.36 Å, a ring C-C bond (1.39 Å) 1.74 Å and a
Zn-O bond (1.95 Å) 2.44 Å: far beyond thermal motion at a few hundred K, well short of a
broken bond.

Periodic images: each bond is stored as ``(i, j, shift)`` with bond vector
``r_j + shift @ cell - r_i`` in the reference. A snapshot may wrap atoms differently and
have another cell; :meth:`BondTopology.shifts_for` maps the shifts onto the snapshot's own
wrapping (atoms may move by less than half a cell vector from the reference, in fractional
coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

__all__ = ["BondTopology", "StretchedBond", "StretchedBondError", "check_snapshot",
           "DEFAULT_MAX_STRETCH"]

DEFAULT_MAX_STRETCH = 1.25  # largest allowed d / d_ref of a topology bond in a snapshot


@dataclass(frozen=True)
class StretchedBond:
    """A bond of the topology that a snapshot stretches: atoms ``i``, ``j`` (indices in the
    structure), ``length`` in the snapshot, ``reference_length`` and ``limit`` (Å)."""

    i: int
    j: int
    symbols: Tuple[str, str]
    length: float
    reference_length: float
    limit: float
    basis: str = "reference"  # what reference_length is ("bond test" without a reference)

    def __str__(self) -> str:
        return (f"{self.symbols[0]}{self.i}-{self.symbols[1]}{self.j} {self.length:.3f} Å "
                f"({self.basis} {self.reference_length:.3f} Å, limit {self.limit:.3f} Å)")


class StretchedBondError(ValueError):
    """A snapshot stretches one or more bonds of the reference topology beyond the limit;
    ``bonds`` lists them (:class:`StretchedBond`). Skip the snapshot (or the fragment)."""

    def __init__(self, bonds: Sequence[StretchedBond], context: str = "") -> None:
        self.bonds = list(bonds)
        shown = "; ".join(str(b) for b in self.bonds[:5])
        more = f" and {len(self.bonds) - 5} more" if len(self.bonds) > 5 else ""
        pre = f"{context}: " if context else ""
        super().__init__(f"{pre}{len(self.bonds)} stretched bond(s): {shown}{more}")


def _frac(atoms: Atoms) -> np.ndarray:
    pbc = np.asarray(atoms.pbc, bool)
    if not pbc.any():
        return np.zeros((len(atoms), 3))
    f = np.linalg.solve(np.array(atoms.cell.complete()).T, atoms.positions.T).T
    return np.where(pbc, f, 0.0)


class BondTopology:
    """Bonds of a reference structure: ``d <= bond_scale * (r_cov,i + r_cov,j)`` (ASE
    covalent radii, all periodic images).

    Attributes: ``i``, ``j`` (B,) atom indices and ``shift`` (B, 3) lattice shifts with
    ``i < j`` or (``i == j`` and a positive shift), ``length`` (B,) reference lengths (Å),
    ``max_stretch``; ``symbols`` and ``frac`` (fractional coordinates) of the reference.
    """

    def __init__(self, reference: Atoms, bond_scale: float = 1.2,
                 max_stretch: float = DEFAULT_MAX_STRETCH) -> None:
        from ase.neighborlist import neighbor_list

        if len(reference) == 0:
            raise ValueError("BondTopology: empty reference structure")
        if not max_stretch > 1.0:
            raise ValueError(f"BondTopology: 'max_stretch' must be > 1, got {max_stretch}")
        self.symbols = reference.get_chemical_symbols()
        self.numbers = np.array(reference.numbers)
        self.pbc = np.asarray(reference.pbc, bool)
        self.frac = _frac(reference)
        self.bond_scale = float(bond_scale)
        self.max_stretch = float(max_stretch)
        ref = reference.copy()
        if not self.pbc.any() and ref.cell.rank == 0:
            ref.set_cell(np.eye(3))  # neighbor_list needs a cell, unused without pbc
        cut = (covalent_radii[ref.numbers] * bond_scale).tolist()
        i, j, s, d = neighbor_list("ijSd", ref, cut, self_interaction=False)
        keep = (i < j) | ((i == j) & (_lex_positive(s)))
        self.i, self.j, self.shift, self.length = i[keep], j[keep], s[keep].astype(int), d[keep]

    def __len__(self) -> int:
        return int(len(self.i))

    def __repr__(self) -> str:
        return (f"BondTopology({len(self.symbols)} atoms, {len(self)} bonds, "
                f"max_stretch={self.max_stretch})")

    def check_atoms(self, atoms: Atoms, what: str = "snapshot") -> None:
        """Raise ``ValueError`` unless ``atoms`` has the reference's elements in its order."""
        if len(atoms) != len(self.numbers) or not np.array_equal(atoms.numbers, self.numbers):
            raise ValueError(f"{what} does not match the reference topology: the reference has "
                             f"{len(self.numbers)} atoms ({_formula(self.symbols)}), the {what} "
                             f"{len(atoms)} ({_formula(atoms.get_chemical_symbols())}); same atoms "
                             "in the same order are needed")

    def shifts_for(self, atoms: Atoms) -> np.ndarray:
        """Bond shifts (B, 3) in the wrapping of ``atoms``: ``r_j + shift @ cell - r_i`` is the
        bond vector in the snapshot for every bond."""
        self.check_atoms(atoms)
        n = np.rint(_frac(atoms) - self.frac).astype(int)  # per-atom wrapping offsets
        return self.shift + n[self.i] - n[self.j]

    def lengths(self, atoms: Atoms) -> np.ndarray:
        """Length (Å) of every bond in ``atoms`` (same atoms as the reference), shape (B,)."""
        sh = self.shifts_for(atoms)
        cell = np.array(atoms.cell.complete()) if self.pbc.any() else np.zeros((3, 3))
        v = atoms.positions[self.j] + sh @ cell - atoms.positions[self.i]
        return np.linalg.norm(v, axis=1)

    def neighbours(self, atoms: Atoms) -> List[List[Tuple[int, np.ndarray, int]]]:
        """Per atom, its bonded partners as ``(j, shift, bond index)`` in the wrapping of
        ``atoms`` (both directions of every bond)."""
        sh = self.shifts_for(atoms)
        nb: List[List[Tuple[int, np.ndarray, int]]] = [[] for _ in range(len(atoms))]
        for b, (a, c) in enumerate(zip(self.i, self.j)):
            nb[int(a)].append((int(c), sh[b], b))
            nb[int(c)].append((int(a), -sh[b], b))
        return nb

    def stretched(self, atoms: Atoms, atoms_subset: Sequence[int] = ()) -> List[StretchedBond]:
        """Bonds longer than ``max_stretch`` x their reference length in ``atoms`` (all bonds,
        or those with an end in ``atoms_subset``)."""
        d = self.lengths(atoms)
        limit = self.max_stretch * self.length
        bad = d > limit
        if len(atoms_subset):
            sub = np.zeros(len(atoms), bool)
            sub[np.asarray(atoms_subset, int)] = True
            bad &= sub[self.i] | sub[self.j]
        return [StretchedBond(int(self.i[b]), int(self.j[b]),
                              (self.symbols[self.i[b]], self.symbols[self.j[b]]),
                              float(d[b]), float(self.length[b]), float(limit[b]))
                for b in np.nonzero(bad)[0]]


def check_snapshot(snapshot: Atoms, reference: "Atoms | BondTopology",
                   max_stretch: float = DEFAULT_MAX_STRETCH, bond_scale: float = 1.2,
                   raise_error: bool = False) -> List[StretchedBond]:
    """Bonds of the reference topology that ``snapshot`` stretches beyond ``max_stretch`` x
    their reference length (empty list: the snapshot is sound). ``reference`` is the relaxed
    structure (same atoms, same order) or its :class:`BondTopology` (whose own ``max_stretch``
    and ``bond_scale`` are used then). With ``raise_error`` a non-empty result raises
    :class:`StretchedBondError`."""
    topo = reference if isinstance(reference, BondTopology) else \
        BondTopology(reference, bond_scale=bond_scale, max_stretch=max_stretch)
    bad = topo.stretched(snapshot)
    if bad and raise_error:
        raise StretchedBondError(bad, "snapshot")
    return bad


def _lex_positive(s: np.ndarray) -> np.ndarray:
    """True where the first non-zero component of each shift is positive."""
    out = np.zeros(len(s), bool)
    done = np.zeros(len(s), bool)
    for k in range(3):
        nz = (s[:, k] != 0) & ~done
        out[nz] = s[nz, k] > 0
        done |= nz
    return out


def _formula(symbols: Sequence[str]) -> str:
    from collections import Counter

    return "".join(f"{e}{n}" for e, n in sorted(Counter(symbols).items()))

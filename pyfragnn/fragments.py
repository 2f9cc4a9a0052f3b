"""Molecular fragments cut from periodic structures (Herbold & Behler 2023, sections 2-4).

Main entry points
-----------------
``find_sites(atoms)``
    Symmetry-nonequivalent atoms (spglib) with labels such as ``Zn, O1, O2, C1, C2, C3, H``.
``FragmentCutter(atoms).cut(centres, radius)`` / ``cut_fragment(...)``
    A fragment of radius ``radius`` (Å) around one centre or the union of spheres around
    several centres, in any periodic cell (all images are searched), hydrogen-capped.
``central_mask(...)``
    Atoms whose whole ``r_c`` sphere in the fragment equals the bulk one.
``check_fragment(frag, topology)``
    Problems of a fragment (>= 10 atoms, closed-shell neutral, the centre's bonded neighbours,
    no pair < 0.75 Å); empty list = sound.
``unique_fragments(frags)`` / ``fragment_sources(frag)`` (from :mod:`pyfragnn.dedup`)
    Each distinct molecule once, with every centre and site it serves.

Sound fragments from snapshots (issue 11)
-----------------------------------------
``FragmentCutter(snapshot, reference=relaxed)`` takes the bond graph (and the site labels)
from the relaxed reference structure (same atoms, same order; :mod:`pyfragnn.topology`), so a
thermal snapshot cannot detach an atom; a cut that involves a bond stretched beyond
``CappingRules.max_stretch`` (1.25) x its reference length raises ``StretchedBondError``
(``pyfragnn.topology.check_snapshot`` checks a whole snapshot). Without a reference, bonds are
detected in the snapshot and a cut that would keep an atom without any bond, or its partner,
raises ``StretchedBondError`` (partner within ``max_stretch`` x the bond test) or
``UnsoundFragmentError`` (a centre without any bond) instead of giving e.g. a lone H atom.

Capping rules (``CappingRules``, all configurable)
--------------------------------------------------
1. Bonds: atoms i, j are bonded if ``d_ij <= bond_scale * (r_cov,i + r_cov,j)`` (ASE covalent
   radii, ``bond_scale = 1.2``).
2. Only *breakable* bonds may be cut: single bonds between an element pair listed in
   ``breakable_pairs`` (default C-C), not part of a ring of at most ``max_ring_size`` atoms
   (``keep_rings=True``), and not to a terminal atom (both ends need >= 2 non-H neighbours).
   Metal-ligand bonds, C-O bonds, X-H bonds and ring bonds are never cut.
3. Rigid units are the connected components of the bond graph without the breakable bonds
   (IRMOF-1: the Zn4O(CO2)6 secondary building unit, C6H4 rings). A unit is included whole if
   any of its atoms lies within ``radius`` of a centre (``include="any"``, guarantees that the
   complete sphere is contained) or if its centroid does (``include="centroid"``).
4. Pieces not bonded (through included atoms) to a centre are dropped.
5. Every cut bond X-Y (X kept) is replaced by X-H with H on the X->Y line at ``cap_lengths[X]``
   (default C-H 1.09, N-H 1.01, O-H 0.97, Si-H 1.48, S-H 1.34, P-H 1.42, B-H 1.19 Å).
6. A cap closer than ``min_cap_distance`` (1.0 Å) to any other atom is removed by including the
   unit of the removed atom Y instead; repeated until no clashes remain.
7. Charge 0 (homolytic cuts); multiplicity 1 for an even electron count, otherwise according to
   ``odd_electrons``: ``"doublet"`` (charge 0, multiplicity 2), ``"anion"`` (charge -1, singlet)
   or ``"cation"`` (charge +1, singlet).

With ``cap=False`` the fragment is the plain sphere of atoms (metals, EMT tests).

Bookkeeping (kept through extxyz)
---------------------------------
``info``: ``label`` = ``frag_type`` (type label; ``label`` is what pyfragnn.dataset reads),
``frag_centres`` (bulk indices; extxyz reads a single one back as a scalar, use
``np.atleast_1d``), ``frag_type`` (type label), ``frag_radius`` (Å),
``frag_rc`` (Å), ``frag_parent`` (:func:`snapshot_key` of the structure cut), ``charge``,
``multiplicity``, ``n_electrons``, ``n_atom``, ``n_central``, ``n_cap``; after
:func:`unique_fragments` also ``centres`` and ``sites`` (one entry per source, each ending in
';', e.g. ``"12;40+3;"`` and ``"O2;O2;"``), ``n_sources``.
``arrays``: ``bulk_index`` (int, -1 for caps), ``image`` (int, (N, 3) lattice
shift), ``cap`` (bool), ``central`` (bool).  Atom 0 is the first centre.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .dedup import fragment_sources, same_geometry, unique_fragments
from .topology import BondTopology, StretchedBond, StretchedBondError

__all__ = [
    "Site",
    "CappingRules",
    "FragmentCutter",
    "find_sites",
    "cut_fragment",
    "site_fragments",
    "central_mask",
    "electron_count",
    "charge_multiplicity",
    "bond_graph",
    "snapshot_key",
    "check_fragment",
    "same_geometry",
    "unique_fragments",
    "fragment_sources",
    "UnsoundFragmentError",
    "StretchedBondError",
    "BondTopology",
    "register_cli",
]

_TOL = 1e-6  # Å, distance tolerance for sphere membership

# Pauling electronegativities used only to order site labels deterministically.
_PAULING = {
    "H": 2.20, "Li": 0.98, "Be": 1.57, "B": 2.04, "C": 2.55, "N": 3.04, "O": 3.44, "F": 3.98,
    "Na": 0.93, "Mg": 1.31, "Al": 1.61, "Si": 1.90, "P": 2.19, "S": 2.58, "Cl": 3.16,
    "K": 0.82, "Ca": 1.00, "Sc": 1.36, "Ti": 1.54, "V": 1.63, "Cr": 1.66, "Mn": 1.55,
    "Fe": 1.83, "Co": 1.88, "Ni": 1.91, "Cu": 1.90, "Zn": 1.65, "Ga": 1.81, "Ge": 2.01,
    "As": 2.18, "Se": 2.55, "Br": 2.96, "Zr": 1.33, "Ag": 1.93, "Cd": 1.69, "I": 2.66,
    "Pt": 2.28, "Au": 2.54, "Pd": 2.20,
}



# --------------------------------------------------------------------------- rules / sites
@dataclass
class CappingRules:
    """Configurable capping rules (see module docstring). Lengths in Å."""

    bond_scale: float = 1.2
    cap_lengths: Dict[str, float] = field(
        default_factory=lambda: {"C": 1.09, "N": 1.01, "O": 0.97, "Si": 1.48, "S": 1.34,
                                 "P": 1.42, "B": 1.19}
    )
    breakable_pairs: FrozenSet[FrozenSet[str]] = field(
        default_factory=lambda: frozenset({frozenset({"C"})})
    )
    keep_rings: bool = True
    max_ring_size: int = 8
    include: str = "any"
    drop_disconnected: bool = True
    min_cap_distance: float = 1.0
    odd_electrons: str = "doublet"
    max_stretch: float = 1.25  # see pyfragnn.topology: largest d / d_ref of a bond in a snapshot
    unit_buffer: float = 8.0  # Å searched beyond the radius to complete rigid units (doubled up to 3x if needed)

    def breakable(self, a: str, b: str) -> bool:
        """True if a bond between elements ``a`` and ``b`` may be cut."""
        return frozenset({a, b}) in self.breakable_pairs

    def __post_init__(self) -> None:
        if self.include not in ("any", "centroid"):
            raise ValueError(f"CappingRules.include must be 'any' or 'centroid', got {self.include!r}")
        if self.odd_electrons not in ("doublet", "anion", "cation"):
            raise ValueError("CappingRules.odd_electrons must be 'doublet', 'anion' or 'cation', "
                             f"got {self.odd_electrons!r}")
        self.breakable_pairs = frozenset(frozenset(p) for p in self.breakable_pairs)
        if not self.max_stretch > 1.0:
            raise ValueError(f"CappingRules.max_stretch must be > 1, got {self.max_stretch}")


@dataclass
class Site:
    """A symmetry-nonequivalent site: ``label`` (e.g. 'O1'), ``index`` (representative atom),
    ``members`` (all equivalent atom indices)."""

    label: str
    element: str
    index: int
    members: np.ndarray

    @property
    def multiplicity(self) -> int:
        return int(len(self.members))


def _cell_for(atoms: Atoms) -> np.ndarray:
    cell = np.array(atoms.cell.complete())
    return cell


def images_within(
    atoms: Atoms, centre: np.ndarray, radius: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All periodic images of all atoms within ``radius`` (Å) of Cartesian ``centre`` (3,).

    Works for any cell shape and mixed periodicity. Returns ``(index, shift, position,
    distance)`` with shapes (M,), (M, 3) int, (M, 3) Å and (M,) Å; positions are
    ``atoms.positions[index] + shift @ cell``.
    """
    pos = atoms.positions
    pbc = np.asarray(atoms.pbc, bool)
    if not pbc.any():
        d = np.linalg.norm(pos - centre, axis=1)
        m = d <= radius + _TOL
        idx = np.nonzero(m)[0]
        return idx, np.zeros((len(idx), 3), int), pos[idx], d[m]
    cell = _cell_for(atoms)
    inv = np.linalg.inv(cell)
    frac = (pos - centre) @ inv  # (N,3)
    base = np.where(pbc, -np.round(frac), 0.0).astype(int)
    heights = 1.0 / np.linalg.norm(inv, axis=0)  # spacing between lattice planes
    m = np.where(pbc, np.ceil(radius / heights + 0.5), 0).astype(int)
    rng = [np.arange(-m[k], m[k] + 1) for k in range(3)]
    offs = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
    shifts = base[:, None, :] + offs[None, :, :]  # (N,K,3)
    p = pos[:, None, :] + shifts @ cell  # (N,K,3)
    d = np.linalg.norm(p - centre, axis=2)
    ii, kk = np.nonzero(d <= radius + _TOL)
    return ii, shifts[ii, kk], p[ii, kk], d[ii, kk]


def bond_graph(
    symbols: Sequence[str], positions: np.ndarray, bond_scale: float = 1.2
) -> np.ndarray:
    """Bonded pairs (i < j), shape (B, 2), from ``d <= bond_scale * (r_i + r_j)`` (Å)."""
    z = np.array([atomic_numbers[s] for s in symbols])
    rad = covalent_radii[z]
    if len(positions) < 2:
        return np.zeros((0, 2), int)
    tree = cKDTree(positions)
    pairs = tree.query_pairs(bond_scale * 2 * rad.max(), output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros((0, 2), int)
    d = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    keep = d <= bond_scale * (rad[pairs[:, 0]] + rad[pairs[:, 1]])
    return pairs[keep]


def _periodic_neighbors(atoms: Atoms, bond_scale: float) -> List[List[int]]:
    from ase.neighborlist import neighbor_list

    rad = covalent_radii[atoms.numbers] * bond_scale
    i, j = neighbor_list("ij", atoms, rad.tolist(), self_interaction=False)
    nb: List[List[int]] = [[] for _ in range(len(atoms))]
    for a, b in zip(i, j):
        nb[a].append(int(b))
    return nb


def find_sites(atoms: Atoms, symprec: float = 1e-3, bond_scale: float = 1.2) -> List[Site]:
    """Symmetry-nonequivalent sites of a crystal (spglib ``equivalent_atoms``).

    Labels: the element symbol if the element has one site, otherwise element + number.
    Sites of one element are numbered by decreasing sum of Pauling electronegativities of
    their bonded neighbours (IRMOF-1: O1 = mu4-O, O2 = carboxylate O; C1 = carboxylate C,
    C2 = ring C bonded to it, C3 = ring C-H), then by multiplicity, then by first index.
    Structures without symmetry (snapshots) give one site per atom.
    """
    import spglib

    if len(atoms) == 0:
        raise ValueError("find_sites: empty structure")
    if not np.all(atoms.pbc):
        eq = np.arange(len(atoms))
    else:
        cellt = (np.array(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
        with warnings.catch_warnings():  # spglib 2.5+ deprecates its old error handling
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                ds = spglib.get_symmetry_dataset(cellt, symprec=symprec)
                err = None if ds is not None else spglib.get_error_message()
            except Exception as exc:  # new-style SpglibError
                ds, err = None, str(exc)
        if ds is None:
            raise RuntimeError(f"find_sites: spglib failed (symprec={symprec}): {err}")
        eq = np.asarray(ds.equivalent_atoms)
    nb = _periodic_neighbors(atoms, bond_scale) if np.any(atoms.pbc) else None
    sym = atoms.get_chemical_symbols()
    reps = sorted(set(eq.tolist()))
    by_el: Dict[str, List[Tuple[float, int, int, np.ndarray]]] = {}
    for r in reps:
        members = np.nonzero(eq == r)[0]
        if nb is not None:
            en = sum(_PAULING.get(sym[k], 2.0) for k in nb[r])
        else:
            en = 0.0
        by_el.setdefault(sym[r], []).append((-round(en, 3), len(members), int(members[0]), members))
    sites: List[Site] = []
    for el in sorted(by_el, key=lambda e: -atomic_numbers[e]):
        lst = sorted(by_el[el], key=lambda t: (t[0], t[1], t[2]))
        for n, (_, _, first, members) in enumerate(lst, 1):
            label = el if len(lst) == 1 else f"{el}{n}"
            sites.append(Site(label, el, first, members))
    return sites


def electron_count(numbers: Iterable[int], charge: int = 0) -> int:
    """Number of electrons: sum of atomic numbers minus ``charge``."""
    return int(np.sum(list(numbers))) - int(charge)


def charge_multiplicity(numbers: Iterable[int], odd_electrons: str = "doublet") -> Tuple[int, int]:
    """(charge, multiplicity) from the electron count of a neutral, homolytically cut fragment."""
    n = electron_count(numbers)
    if n % 2 == 0:
        return 0, 1
    if odd_electrons == "doublet":
        return 0, 2
    if odd_electrons == "anion":
        return -1, 1
    if odd_electrons == "cation":
        return 1, 1
    raise ValueError(f"odd_electrons must be 'doublet', 'anion' or 'cation', got {odd_electrons!r}")


# --------------------------------------------------------------------------- cutting
class _IncompleteUnit(ValueError):
    pass


class UnsoundFragmentError(ValueError):
    """A fragment that :func:`check_fragment` rejects (or a cut that cannot give a sound one);
    ``problems`` lists the reasons."""

    def __init__(self, problems: Sequence[str], context: str = "") -> None:
        self.problems = list(problems)
        pre = f"{context}: " if context else ""
        super().__init__(f"{pre}unsound fragment: " + "; ".join(self.problems))


def snapshot_key(atoms: Atoms) -> str:
    """Short sha1 of numbers, positions and cell (as 8-decimal text, so it survives an extxyz
    round trip) and pbc of a structure: ``info['frag_parent']`` of the fragments cut from it."""
    import hashlib

    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, np.int64).tobytes())
    for arr in (atoms.positions, np.array(atoms.cell)):
        h.update(" ".join("%.8f" % x for x in np.asarray(arr, float).ravel())
                 .replace("-0.00000000", "0.00000000").encode())
    h.update(np.asarray(atoms.pbc, bool).tobytes())
    return h.hexdigest()[:16]


class FragmentCutter:
    """Cuts fragments from one periodic (or finite) structure; caches per-structure data.

    Parameters
    ----------
    atoms : Atoms
        Bulk structure (ideal crystal or distorted snapshot), any cell shape.
    rules : CappingRules, optional
    site_labels : sequence of str, optional
        Per-atom type labels; default from ``find_sites`` of the reference (or of ``atoms``
        without one; element symbols if that fails).
    reference : Atoms or BondTopology, optional
        Relaxed reference structure (same atoms, same order) or its
        :class:`~pyfragnn.topology.BondTopology`: the bond graph comes from it instead of
        being re-detected in ``atoms``, and a cut that involves a bond stretched beyond
        ``rules.max_stretch`` x its reference length raises
        :class:`~pyfragnn.topology.StretchedBondError`. Without a reference, bonds are detected
        in ``atoms`` and a cut that would separate a detached atom from its nearest partner
        (nearer than ``max_stretch`` x the bond test) raises ``StretchedBondError`` as well.
    """

    def __init__(self, atoms: Atoms, rules: Optional[CappingRules] = None,
                 site_labels: Optional[Sequence[str]] = None, symprec: float = 1e-3,
                 reference: Optional[Union[Atoms, BondTopology]] = None) -> None:
        if len(atoms) == 0:
            raise ValueError("FragmentCutter: empty structure")
        self.atoms = atoms
        self.rules = rules or CappingRules()
        self.symbols = atoms.get_chemical_symbols()
        self.topology: Optional[BondTopology] = None
        sites_from = atoms
        if reference is not None:
            if isinstance(reference, BondTopology):
                self.topology = reference
            else:
                self.topology = BondTopology(reference, self.rules.bond_scale, self.rules.max_stretch)
                sites_from = reference
            self.topology.check_atoms(atoms)
            self._topo_nb = self.topology.neighbours(atoms)
            self._stretched = self.topology.stretched(atoms)
        if site_labels is None:
            site_labels = list(self.symbols)
            try:
                for s in find_sites(sites_from, symprec=symprec, bond_scale=self.rules.bond_scale):
                    for k in s.members:
                        site_labels[k] = s.label
            except Exception:  # pragma: no cover - spglib failure: fall back to elements
                pass
        if len(site_labels) != len(atoms):
            raise ValueError(f"site_labels has {len(site_labels)} entries, structure has {len(atoms)} atoms")
        self.site_labels = list(site_labels)
        self.parent_key = snapshot_key(atoms)
        self._bulk_counts: Dict[float, np.ndarray] = {}

    @property
    def stretched_bonds(self) -> List[StretchedBond]:
        """Bonds of the reference topology stretched in this snapshot (empty without reference)."""
        return list(self._stretched) if self.topology is not None else []

    # ------------------------------------------------------------------ helpers
    def _centre_positions(self, centres: Sequence[int]) -> np.ndarray:
        n = len(self.atoms)
        for c in centres:
            if not 0 <= int(c) < n:
                raise IndexError(f"centre index {c} out of range for a structure with {n} atoms")
        p0 = self.atoms.positions[int(centres[0])]
        out = [p0]
        for c in centres[1:]:  # nearest image of c to the first centre
            out.append(self._nearest_image(int(c), p0)[2])
        return np.array(out)

    def _nearest_image(self, i: int, ref: np.ndarray):
        r = 0.5
        while True:
            idx, sh, pos, d = images_within(self.atoms, ref, r)
            m = idx == i
            if m.any():
                k = np.argmin(np.where(m, d, np.inf))
                return idx[k], sh[k], pos[k], d[k]
            r *= 2.0

    def bulk_counts(self, r_c: float) -> np.ndarray:
        """Number of bulk neighbours (all images) within ``r_c`` (Å) of each atom, shape (N,)."""
        key = round(float(r_c), 9)
        if key not in self._bulk_counts:
            from ase.neighborlist import neighbor_list

            i = neighbor_list("i", self.atoms, float(r_c) + _TOL, self_interaction=False)
            self._bulk_counts[key] = np.bincount(i, minlength=len(self.atoms))
        return self._bulk_counts[key]

    # --------------------------------------------------------------------- cut
    def cut(self, centres: Union[int, Sequence[int]], radius: float, r_c: Optional[float] = None,
            cap: bool = True, type_label: Optional[str] = None, check: bool = False) -> Atoms:
        """Cut the fragment around ``centres`` (bulk indices) with radius ``radius`` (Å).

        ``r_c`` (Å, default ``radius``) defines the ``central`` atoms. Several centres give the
        union of spheres; each further centre is taken at its image nearest the first one.
        Returns a non-periodic ``Atoms`` with the bookkeeping described in the module docstring.
        Raises :class:`~pyfragnn.topology.StretchedBondError` for a stretched bond (see the class
        docstring) and, with ``check=True``, :class:`UnsoundFragmentError` when
        :func:`check_fragment` (default limits, this cutter's topology) finds a problem.
        """
        if np.isscalar(centres):
            centres = [int(centres)]  # type: ignore[list-item]
        centres = [int(c) for c in centres]  # type: ignore[union-attr]
        if not centres:
            raise ValueError("cut: 'centres' is empty")
        if not radius > 0:
            raise ValueError(f"cut: 'radius' must be > 0 Å, got {radius}")
        r_c = float(radius if r_c is None else r_c)
        if not r_c > 0:
            raise ValueError(f"cut: 'r_c' must be > 0 Å, got {r_c}")
        rules = self.rules
        cpos = self._centre_positions(centres)
        buffer = rules.unit_buffer if cap else 0.0
        for attempt in range(4):  # grow the search region until all rigid units are complete
            try:
                frag = self._cut(centres, cpos, radius, r_c, cap, type_label, radius + buffer)
            except _IncompleteUnit:
                if attempt == 3:
                    raise
                buffer *= 2.0
                continue
            if check:
                problems = check_fragment(frag, self.topology)
                if problems:
                    raise UnsoundFragmentError(problems, f"cut around {self._centre_names(centres)}")
            return frag
        raise AssertionError  # pragma: no cover

    def _cut(self, centres, cpos, radius, r_c, cap, type_label, region_r) -> Atoms:
        rules = self.rules
        # region: union over centres of images within radius+buffer
        keys: Dict[Tuple[int, int, int, int], int] = {}
        ridx: List[int] = []
        rsh: List[np.ndarray] = []
        rpos: List[np.ndarray] = []
        for p in cpos:
            idx, sh, pos, _ = images_within(self.atoms, p, region_r)
            for a, s, q in zip(idx, sh, pos):
                k = (int(a), int(s[0]), int(s[1]), int(s[2]))
                if k not in keys:
                    keys[k] = len(ridx)
                    ridx.append(int(a))
                    rsh.append(s)
                    rpos.append(q)
        ridx_a = np.array(ridx)
        rsh_a = np.array(rsh, int).reshape(-1, 3)
        rpos_a = np.array(rpos).reshape(-1, 3)
        dist = np.min(np.linalg.norm(rpos_a[:, None, :] - cpos[None, :, :], axis=2), axis=1)
        centre_nodes = []
        for c, p in zip(centres, cpos):
            k = int(np.argmin(np.where(ridx_a == c, np.linalg.norm(rpos_a - p, axis=1), np.inf)))
            centre_nodes.append(k)
        inside = dist <= radius + _TOL
        sym = [self.symbols[i] for i in ridx_a]

        self._region_index = ridx_a
        if not cap:
            sel = np.nonzero(inside)[0]
            caps_pos = np.zeros((0, 3))
            caps_parent = np.zeros(0, int)
        else:
            bonds = self._region_bonds(keys, ridx_a, rsh_a) if self.topology is not None \
                else bond_graph(sym, rpos_a, rules.bond_scale)
            sel, caps_pos, caps_parent = self._select_and_cap(
                sym, rpos_a, dist, inside, centre_nodes, radius, region_r, bonds)
        if self.topology is not None:
            inside_set = set(ridx_a[sel].tolist())
            bad = [x for x in self._stretched if x.i in inside_set or x.j in inside_set]
            if bad:
                raise StretchedBondError(bad, f"cut around {self._centre_names(centres)}")

        # order: centres first, then by distance, caps last
        first = [n for n in dict.fromkeys(centre_nodes)]
        rest = sorted(set(sel.tolist()) - set(first), key=lambda n: (dist[n], n))
        order = np.array(first + rest, int)
        symbols = [sym[n] for n in order] + ["H"] * len(caps_pos)
        positions = np.vstack([rpos_a[order], caps_pos]) if len(caps_pos) else rpos_a[order]
        frag = Atoms(symbols, positions=positions, pbc=False)
        nreal = len(order)
        bulk_index = np.concatenate([ridx_a[order], -np.ones(len(caps_pos), int)])
        image = np.vstack([rsh_a[order], np.zeros((len(caps_pos), 3), int)])
        is_cap = np.zeros(len(frag), bool)
        is_cap[nreal:] = True
        frag.set_array("bulk_index", bulk_index.astype(int))
        frag.set_array("image", image.astype(int))
        frag.set_array("cap", is_cap)
        central = self._central(frag, r_c)
        frag.set_array("central", central)
        charge, mult = charge_multiplicity(frag.numbers, rules.odd_electrons)
        labels = [self.site_labels[c] for c in centres]
        frag.info.update(
            frag_centres=np.array(centres, int),
            frag_parent=self.parent_key,
            frag_type=type_label if type_label is not None else "+".join(labels),
            label=type_label if type_label is not None else "+".join(labels),
            frag_radius=float(radius),
            frag_rc=r_c,
            charge=int(charge),
            multiplicity=int(mult),
            n_electrons=electron_count(frag.numbers, charge),
            n_atom=int(len(frag)),
            n_central=int(central.sum()),
            n_cap=int(is_cap.sum()),
        )
        return frag

    def _select_and_cap(self, sym, pos, dist, inside, centre_nodes, radius, region_r, bonds):
        rules = self.rules
        n = len(sym)
        adj: List[List[int]] = [[] for _ in range(n)]
        for a, b in bonds:
            adj[a].append(int(b))
            adj[b].append(int(a))
        heavy_deg = np.array([sum(1 for b in adj[a] if sym[b] != "H") for a in range(n)])

        def in_ring(a: int, b: int) -> bool:
            # BFS from a to b avoiding edge (a,b), path length <= max_ring_size - 1
            lim = rules.max_ring_size - 1
            seen = {a: 0}
            frontier = [a]
            depth = 0
            while frontier and depth < lim:
                depth += 1
                nxt = []
                for u in frontier:
                    for v in adj[u]:
                        if (u == a and v == b) or v in seen:
                            continue
                        if v == b:
                            return True
                        seen[v] = depth
                        nxt.append(v)
                frontier = nxt
            return False

        breakable = np.zeros(len(bonds), bool)
        for k, (a, b) in enumerate(bonds):
            if not rules.breakable(sym[a], sym[b]):
                continue
            if heavy_deg[a] < 2 or heavy_deg[b] < 2:
                continue
            if rules.keep_rings and in_ring(int(a), int(b)):
                continue
            breakable[k] = True
        keep = bonds[~breakable]
        g = coo_matrix((np.ones(len(keep)), (keep[:, 0], keep[:, 1])), shape=(n, n)) if len(keep) \
            else coo_matrix((n, n))
        _, unit = connected_components(g, directed=False)
        nunits = unit.max() + 1
        members: List[List[int]] = [[] for _ in range(nunits)]
        for a in range(n):
            members[unit[a]].append(a)
        # atoms near the region boundary: their units may be incomplete
        if self.topology is not None:  # exact: a topology partner lies outside the region
            boundary = self._region_incomplete
        else:
            max_bond = rules.bond_scale * 2 * max(covalent_radii[atomic_numbers[s]] for s in set(sym))
            boundary = dist > region_r - max_bond
        chosen = np.zeros(nunits, bool)
        for c in centre_nodes:
            chosen[unit[c]] = True
        if rules.include == "any":
            chosen[np.unique(unit[inside])] = True
        else:
            for u in range(nunits):
                cen = pos[members[u]].mean(axis=0)
                if np.min(np.linalg.norm(cen - pos[centre_nodes], axis=1)) <= radius + _TOL:
                    chosen[u] = True
        bonds_cut = bonds[breakable]
        for _ in range(1000):
            selmask = chosen[unit]
            bad = np.nonzero(selmask & boundary)[0]
            if len(bad):
                raise _IncompleteUnit(
                    f"cut: a rigid unit containing atom {self._name(bad[0])} reaches beyond "
                    f"radius + unit_buffer = {region_r:.2f} Å; increase CappingRules.unit_buffer "
                    "or cut with cap=False")
            if rules.drop_disconnected:
                sel_nodes = np.nonzero(selmask)[0]
                mp = -np.ones(n, int)
                mp[sel_nodes] = np.arange(len(sel_nodes))
                eb = bonds[selmask[bonds[:, 0]] & selmask[bonds[:, 1]]]
                gs = coo_matrix((np.ones(len(eb)), (mp[eb[:, 0]], mp[eb[:, 1]])),
                                shape=(len(sel_nodes),) * 2)
                _, comp = connected_components(gs, directed=False)
                keepc = {comp[mp[c]] for c in centre_nodes}
                drop = sel_nodes[[comp[k] not in keepc for k in range(len(sel_nodes))]]
                if len(drop):
                    chosen[np.unique(unit[drop])] = False
                    selmask = chosen[unit]
            # caps
            cut = bonds_cut[selmask[bonds_cut[:, 0]] != selmask[bonds_cut[:, 1]]]
            parents, removed = [], []
            for a, b in cut:
                x, y = (a, b) if selmask[a] else (b, a)
                parents.append(x)
                removed.append(y)
            caps = []
            for x, y in zip(parents, removed):
                if sym[x] not in rules.cap_lengths:
                    raise ValueError(f"cut: no X-H cap length for element {sym[x]!r} "
                                     f"(atom {self._name(x)}); add it to CappingRules.cap_lengths")
                v = pos[y] - pos[x]
                caps.append(pos[x] + rules.cap_lengths[sym[x]] * v / np.linalg.norm(v))
            caps_a = np.array(caps).reshape(-1, 3)
            sel_nodes = np.nonzero(selmask)[0]
            clash_units = set()
            if len(caps_a):
                allpos = np.vstack([pos[sel_nodes], caps_a])
                tree = cKDTree(allpos)
                for ci in range(len(caps_a)):
                    hits = tree.query_ball_point(caps_a[ci], rules.min_cap_distance)
                    me = len(sel_nodes) + ci
                    others = [h for h in hits if h != me and
                              not (h < len(sel_nodes) and sel_nodes[h] == parents[ci])]
                    if others:
                        clash_units.add(unit[removed[ci]])
            if not clash_units:
                if self.topology is None:
                    self._check_detached(sym, pos, bonds, boundary, selmask, centre_nodes)
                return sel_nodes, caps_a, np.array(parents, int)
            for u in clash_units:
                chosen[u] = True
        raise RuntimeError("cut: capping did not converge")  # pragma: no cover

    def _name(self, region_node: int) -> str:
        b = int(self._region_index[region_node])
        return f"{self.symbols[b]} (bulk index {b})"

    def _centre_names(self, centres: Sequence[int]) -> str:
        return "+".join(f"{self.symbols[c]}{c}" for c in centres)

    def _region_bonds(self, keys: Dict[Tuple[int, int, int, int], int], ridx: np.ndarray,
                      rsh: np.ndarray) -> np.ndarray:
        """Bonds (B, 2) between region nodes from the reference topology; sets
        ``_region_incomplete`` (nodes with a bonded partner outside the region)."""
        pairs: List[Tuple[int, int]] = []
        incomplete = np.zeros(len(ridx), bool)
        for node, (a, s) in enumerate(zip(ridx, rsh)):
            for j, shift, _ in self._topo_nb[int(a)]:
                t = s + shift
                m = keys.get((j, int(t[0]), int(t[1]), int(t[2])))
                if m is None:
                    incomplete[node] = True
                elif m > node:
                    pairs.append((node, m))
        self._region_incomplete = incomplete
        return np.array(pairs, int).reshape(-1, 2)

    def _check_detached(self, sym, pos, bonds, boundary, selmask, centre_nodes) -> None:
        """Without a reference topology: raise if the cut keeps an atom without any bond while
        a partner lies within ``max_stretch`` x the bond test (a stretched, undetected bond), or
        if a centre has no bond at all (its fragment would lack the centre's bonded unit)."""
        rules = self.rules
        deg = np.bincount(bonds.ravel(), minlength=len(sym))
        rad = np.array([covalent_radii[atomic_numbers[x]] for x in sym])
        lone = np.nonzero((deg == 0) & ~boundary)[0]
        if not len(lone):
            return
        tree = cKDTree(pos)
        found: List[StretchedBond] = []
        for a in lone:
            reach = rules.max_stretch * rules.bond_scale * (rad[a] + rad.max())
            for b in tree.query_ball_point(pos[a], reach):
                test = rules.bond_scale * (rad[a] + rad[b])
                d = float(np.linalg.norm(pos[b] - pos[a]))
                if b != a and d <= rules.max_stretch * test and (selmask[a] or selmask[b]):
                    ia, ib = int(self._region_index[a]), int(self._region_index[b])
                    found.append(StretchedBond(ia, ib, (sym[a], sym[b]), d, test,
                                               rules.max_stretch * test, "bond test"))
        if found:
            raise StretchedBondError(found, "cut (no reference structure: a detached atom)")
        for c in centre_nodes:
            if deg[c] == 0 and len(sym) > 1:
                raise UnsoundFragmentError([f"centre {self._name(c)} has no bonded neighbour"])

    def _central(self, frag: Atoms, r_c: float) -> np.ndarray:
        is_cap = frag.arrays["cap"]
        bi = frag.arrays["bulk_index"]
        counts = self.bulk_counts(r_c)
        tree = cKDTree(frag.positions)
        central = np.zeros(len(frag), bool)
        for a in np.nonzero(~is_cap)[0]:
            hits = tree.query_ball_point(frag.positions[a], r_c + _TOL)
            if any(is_cap[h] for h in hits):
                continue
            central[a] = (len(hits) - 1) == counts[bi[a]]
        return central


def cut_fragment(atoms: Atoms, centres: Union[int, Sequence[int]], radius: float,
                 r_c: Optional[float] = None, cap: bool = True,
                 rules: Optional[CappingRules] = None, type_label: Optional[str] = None,
                 reference: Optional[Union[Atoms, BondTopology]] = None,
                 check: bool = False) -> Atoms:
    """One-off ``FragmentCutter(atoms, rules, reference=reference).cut(centres, radius, r_c,
    cap, type_label, check)``."""
    return FragmentCutter(atoms, rules, reference=reference).cut(
        centres, radius, r_c=r_c, cap=cap, type_label=type_label, check=check)


def site_fragments(atoms: Atoms, radius: float, r_c: Optional[float] = None, cap: bool = True,
                   rules: Optional[CappingRules] = None, symprec: float = 1e-3,
                   progress: Optional[bool] = None,
                   reference: Optional[Atoms] = None, check: bool = False) -> List[Atoms]:
    """One fragment around the representative atom of each nonequivalent site (sites of
    ``reference`` when given, whose bond topology is then used; see :class:`FragmentCutter`)."""
    from .progress import Progress

    cutter = FragmentCutter(atoms, rules, symprec=symprec, reference=reference)
    sites = find_sites(atoms if reference is None else reference, symprec=symprec)
    return [cutter.cut(s.index, radius, r_c=r_c, cap=cap, type_label=s.label, check=check)
            for s in Progress(sites, desc="fragments", disable=None if progress else True)]


def central_mask(fragment: Atoms, bulk: Atoms, r_c: float) -> np.ndarray:
    """Recompute the ``central`` mask of a fragment against its bulk (needs ``bulk_index``,
    ``cap`` arrays): non-cap atoms whose ``r_c`` (Å) sphere contains exactly the bulk atoms."""
    for key in ("bulk_index", "cap"):
        if key not in fragment.arrays:
            raise KeyError(f"central_mask: fragment lacks array {key!r}")
    cutter = FragmentCutter(bulk, site_labels=bulk.get_chemical_symbols())
    return cutter._central(fragment, r_c)


# --------------------------------------------------------------------------- soundness
MIN_ATOMS = 10          # smallest sound fragment (atoms)
MIN_PAIR_DISTANCE = 0.75  # Å, closest allowed pair in a sound fragment


def _centre_atoms(frag: Atoms) -> List[int]:
    """Fragment indices of the centres: atoms 0..m-1 for m distinct entries of frag_centres."""
    if "frag_centres" not in frag.info:
        return []
    m = len(dict.fromkeys(np.atleast_1d(frag.info["frag_centres"]).astype(int).tolist()))
    return list(range(min(m, len(frag))))


def _missing_neighbours(frag: Atoms, topology: BondTopology) -> List[str]:
    """Bonds of the topology from each centre whose partner is not a real fragment atom within
    ``max_stretch`` x the reference length (each fragment atom matches one bond)."""
    out: List[str] = []
    if "bulk_index" not in frag.arrays:
        return ["no 'bulk_index' array: cannot match the centre's bonded neighbours"]
    bi = np.asarray(frag.arrays["bulk_index"], int)
    real = ~np.asarray(frag.arrays.get("cap", np.zeros(len(frag), bool)), bool)
    for k in _centre_atoms(frag):
        c = int(bi[k])
        if not 0 <= c < len(topology.symbols):
            out.append(f"centre bulk index {c} outside the reference topology")
            continue
        used = set()
        for b in np.nonzero((topology.i == c) | (topology.j == c))[0]:
            partner = int(topology.j[b] if topology.i[b] == c else topology.i[b])
            lim = topology.max_stretch * topology.length[b]
            d = np.linalg.norm(frag.positions - frag.positions[k], axis=1)
            cand = [a for a in np.nonzero(real & (bi == partner) & (d <= lim))[0]
                    if a not in used and a != k]
            if cand:
                used.add(min(cand, key=lambda a: d[a]))
            else:
                out.append(f"centre {topology.symbols[c]}{c} lacks its bonded neighbour "
                           f"{topology.symbols[partner]}{partner} (within {lim:.2f} Å)")
    return out


def check_fragment(frag: Atoms, topology: Optional[Union[BondTopology, Atoms]] = None,
                   min_atoms: int = MIN_ATOMS, min_distance: float = MIN_PAIR_DISTANCE,
                   bond_scale: float = 1.2, closed_shell: bool = True) -> List[str]:
    """Problems of a fragment (empty list: sound).

    Checks: at least ``min_atoms`` atoms; closed-shell neutral (``info['charge']`` 0, even
    electron count, ``info['multiplicity']`` 1 where given); no pair closer than
    ``min_distance`` (Å); every centre (atoms 0..m-1 for the m ``frag_centres``) keeps its
    bonded neighbours: from ``topology`` (a :class:`~pyfragnn.topology.BondTopology` or the
    reference structure) as real atoms within ``max_stretch`` x the reference length, or,
    without one, at least one neighbour by the bond test ``d <= bond_scale (r_i + r_j)``.
    ``closed_shell=False`` drops the charge/parity rule (uncapped metal clusters).
    """
    problems: List[str] = []
    n = len(frag)
    if n < min_atoms:
        problems.append(f"{n} atoms < {min_atoms}")
    charge = float(frag.info.get("charge", 0))
    mult = float(frag.info.get("multiplicity", 1))
    n_el = electron_count(frag.numbers, int(round(charge)))
    if closed_shell and (charge != 0 or n_el % 2 or mult != 1):
        problems.append(f"not closed-shell neutral (charge {charge:g}, {n_el} electrons, "
                        f"multiplicity {mult:g})")
    if n >= 2:
        from scipy.spatial.distance import pdist, squareform

        d = squareform(pdist(frag.positions))
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < min_distance:
            problems.append(f"atoms {min(i, j)} and {max(i, j)} {d[i, j]:.3f} Å apart "
                            f"(< {min_distance} Å)")
    if topology is not None:
        if not isinstance(topology, BondTopology):
            topology = BondTopology(topology, bond_scale=bond_scale)
        problems += _missing_neighbours(frag, topology)
    elif n:
        bonded = set(bond_graph(frag.get_chemical_symbols(), frag.positions, bond_scale).ravel())
        for k in _centre_atoms(frag) or [0]:
            if k not in bonded:
                problems.append(f"centre atom {k} ({frag[k].symbol}) has no bonded neighbour")
    return problems


# --------------------------------------------------------------------------- CLI
def _cmd_fragments(args: argparse.Namespace) -> int:
    import sys

    from ase.io import read, write

    from .progress import Progress

    atoms = read(args.structure, index=int(args.frame))
    reference = read(args.reference, index=-1) if args.reference else None
    rules = CappingRules(include=args.include, odd_electrons=args.odd_electrons,
                         keep_rings=not args.cut_rings, min_cap_distance=args.min_cap_distance,
                         max_stretch=args.max_stretch)
    cutter = FragmentCutter(atoms, rules, symprec=args.symprec, reference=reference)
    if cutter.stretched_bonds:
        print(f"{args.structure}: {len(cutter.stretched_bonds)} bond(s) stretched beyond "
              f"{rules.max_stretch} x the reference length: "
              + "; ".join(str(b) for b in cutter.stretched_bonds[:5]), file=sys.stderr)
    if args.centres:
        jobs = [([int(x) for x in c.split("+")], None) for c in args.centres]
    else:
        sites = find_sites(atoms if reference is None else reference, symprec=args.symprec)
        jobs = [([s.index], s.label) for s in sites]
    frags, skipped = [], 0
    t0 = time.perf_counter()
    tasks = [(c, lab, r) for r in args.radius for c, lab in jobs]
    for c, lab, r in Progress(tasks, desc="fragments", disable=args.quiet or None):
        try:
            frags.append(cutter.cut(c, r, r_c=args.rc, cap=not args.no_cap, type_label=lab))
        except (StretchedBondError, UnsoundFragmentError) as exc:
            skipped += 1
            print(f"skipped centre {'+'.join(map(str, c))} R={r}: {exc}", file=sys.stderr)
    dt = time.perf_counter() - t0
    n_cut = len(frags)
    if not args.keep_duplicates:
        frags = unique_fragments(frags)
    topo = cutter.topology
    print(f"{'type':>10} {'R_frag':>7} {'N_atom':>6} {'N_cap':>5} {'N_central':>9} "
          f"{'ratio':>5} {'charge':>6} {'mult':>4} {'sources':>7} {'sound':>5}")
    n_unsound = 0
    for f in frags:
        i = f.info
        problems = check_fragment(f, topo) if not args.no_cap else []
        n_unsound += bool(problems)
        print(f"{i['frag_type']:>10} {i['frag_radius']:7.3f} {i['n_atom']:6d} {i['n_cap']:5d} "
              f"{i['n_central']:9d} {i['n_central'] / i['n_atom']:5.2f} {i['charge']:6d} "
              f"{i['multiplicity']:4d} {len(fragment_sources(f)):7d} "
              f"{'no' if problems else 'yes':>5}")
        for p in problems:
            print(f"{'':>10}   {p}")
    bad = sum(1 for f in frags if f.info["charge"] != 0 or f.info["multiplicity"] != 1)
    print(f"{n_cut} fragments in {dt:.2f} s ({n_cut / max(dt, 1e-9):.1f}/s); "
          f"distinct: {len(frags)}; skipped (stretched bonds): {skipped}; "
          f"not closed-shell neutral: {bad}/{len(frags)}; unsound: {n_unsound}/{len(frags)}")
    if args.output:
        write(args.output, frags, format="extxyz")
        print(f"wrote {args.output}")
    return 0


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``fragments`` subcommand."""
    p = subparsers.add_parser("fragments", help="cut H-capped fragments from a periodic structure")
    p.add_argument("structure", help="structure file readable by ASE (cif, extxyz, ...)")
    p.add_argument("-r", "--radius", type=float, action="append", required=True,
                   help="fragment radius R_frag in Å (repeatable)")
    p.add_argument("--rc", type=float, default=None, help="R_c in Å for central atoms (default R_frag)")
    p.add_argument("-c", "--centres", action="append",
                   help="centre atom index, or several joined by '+' (repeatable; default: all sites)")
    p.add_argument("-o", "--output", help="extxyz file for the fragments")
    p.add_argument("--frame", default="-1", help="frame of the structure file (default last)")
    p.add_argument("--include", choices=["any", "centroid"], default="any")
    p.add_argument("--odd-electrons", choices=["doublet", "anion", "cation"], default="doublet")
    p.add_argument("--cut-rings", action="store_true", help="allow cutting ring bonds")
    p.add_argument("--no-cap", action="store_true", help="plain sphere, no capping (metals)")
    p.add_argument("--min-cap-distance", type=float, default=1.0)
    p.add_argument("--reference", help="relaxed reference structure (same atoms, same order): "
                   "bond topology and site labels come from it, and cuts that involve a bond "
                   "stretched beyond --max-stretch x its reference length are skipped")
    p.add_argument("--max-stretch", type=float, default=CappingRules.max_stretch,
                   help="largest allowed bond length / reference length (default %(default)s)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="write every cut, also the same molecule reached from several centres "
                   "(default: each distinct molecule once, its centres and sites in "
                   "info['centres'] / info['sites'])")
    p.add_argument("--symprec", type=float, default=1e-3)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_fragments)
    return p

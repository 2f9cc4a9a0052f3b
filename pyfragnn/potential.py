"""HDNNP potentials: loading, saving and evaluation in Å and eV.

A :class:`Potential` wraps the C++ model of :mod:`pyfragnn._core`. The model works in the
potential's own units (n2p2 potentials are often trained in bohr and hartree); this class
converts at the boundary: positions in Å, energies in eV, forces in eV/Å, virial in eV.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from pyfragnn._core import CoreModel

PathLike = Union[str, os.PathLike]

#: Folder of potentials shipped with the package (loadable by name); `pip install .` copies the
#: repository's potentials/*.fragnn there.
SHIPPED = Path(__file__).resolve().parent / "potentials"

#: Environment variable: colon-separated directories searched for potentials by name, before
#: the shipped ones (``pair_style fragnn NAME`` reads the same variable).
ENV_VAR = "FRAGNN_POTENTIALS"


def shipped_dirs() -> list[Path]:
    """Folders of shipped potentials: :data:`SHIPPED` (``pyfragnn/potentials``, where
    ``pip install .`` puts them) and, when pyfragnn runs from a source checkout (built in
    place), the checkout's ``potentials/``. ``pair_style fragnn`` searches the same folders
    relative to its plugin (``pyfragnn/lammps/fragnnplugin.so``)."""
    dirs = [SHIPPED]
    root = SHIPPED.parent.parent
    if (root / "setup.py").is_file() and (root / "cython_ext" / "kernel").is_dir():
        dirs.append(root / "potentials")
    return dirs


def search_dirs() -> list[Path]:
    """Folders searched for a potential by name, in order: each directory of
    ``$FRAGNN_POTENTIALS`` (colon-separated), then :func:`shipped_dirs`."""
    env = os.environ.get(ENV_VAR, "")
    return [Path(d) for d in env.split(":") if d] + shipped_dirs()


def available() -> dict[str, Path]:
    """Potentials loadable by name: ``{name: path}`` of the ``*.fragnn`` files in
    :func:`search_dirs` (the first of a name wins, as in :meth:`Potential.load`)."""
    found: dict[str, Path] = {}
    for d in search_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.fragnn")):
                found.setdefault(f.stem, f)
    return found


def _find(path: PathLike) -> Path:
    """Resolve a path, or the name of a potential: the path as given if it exists; else (for a
    relative name) NAME and NAME.fragnn in each of :func:`search_dirs`."""
    p = Path(path)
    if p.exists():
        return p
    searched = [p]
    if not p.is_absolute():
        for d in search_dirs():
            for candidate in (d / str(path), d / f"{path}.fragnn"):
                if candidate.exists():
                    return candidate
                searched.append(candidate)
    names = ", ".join(available()) or "none"
    raise FileNotFoundError(
        f"no potential at '{path}' (neither a file, an n2p2 directory nor the name of a "
        f"potential in ${ENV_VAR} or the shipped potentials; available by name: {names}); "
        f"searched: {', '.join(map(str, searched))}")


class Potential:
    """A second-generation HDNNP.

    Parameters
    ----------
    core:
        The compiled model (:class:`pyfragnn._core.CoreModel`).
    """

    def __init__(self, core: CoreModel):
        self.core = core

    # --- construction and files ------------------------------------------------------
    @classmethod
    def load(cls, path: PathLike, length_unit: Optional[float] = None,
             energy_unit: Optional[float] = None) -> "Potential":
        """Load a native potential file, an n2p2 directory (input.nn, scaling.data,
        weights.NNN.data), an input.nn path, or a potential by name: NAME or NAME.fragnn in
        the directories of ``$FRAGNN_POTENTIALS`` (colon-separated), then in the shipped
        potentials (:func:`search_dirs`).

        length_unit, energy_unit: Å and eV per potential unit (e.g. ``ase.units.Bohr``,
        ``ase.units.Hartree``); they override units stored in the file (default 1, 1).
        """
        core = CoreModel.load(str(_find(path)))
        pot = cls(core)
        if length_unit is not None or energy_unit is not None:
            pot.set_units(length_unit if length_unit is not None else core.length_unit,
                          energy_unit if energy_unit is not None else core.energy_unit)
        return pot

    @classmethod
    def from_n2p2(cls, input_nn: PathLike, scaling: Optional[PathLike] = None,
                  weights: Optional[str] = None, length_unit: Optional[float] = None,
                  energy_unit: Optional[float] = None) -> "Potential":
        """Load n2p2 files explicitly. input_nn: a directory or an input.nn path; scaling:
        scaling.data path; weights: path whose last "%03d" stands for the atomic number."""
        p = Path(input_nn)
        d = p if p.is_dir() else p.parent
        nn = p / "input.nn" if p.is_dir() else p
        core = CoreModel.read_n2p2(str(nn), str(scaling or d / "scaling.data"),
                                   weights or str(d / "weights.%03d.data"))
        pot = cls(core)
        if length_unit is not None or energy_unit is not None:
            pot.set_units(length_unit or core.length_unit, energy_unit or core.energy_unit)
        return pot

    def save(self, path: PathLike) -> None:
        """Write the native single-file format (exact round trip, atomic write)."""
        self.core.write_native(str(path))

    def save_n2p2(self, directory: PathLike) -> None:
        """Write input.nn, scaling.data and weights.NNN.data into an existing directory."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.core.write_n2p2(str(directory))

    def copy(self) -> "Potential":
        return Potential(self.core.copy())

    # --- properties ------------------------------------------------------------------
    @property
    def elements(self) -> list[str]:
        """Element symbols in atomic-number order (the potential's element indices)."""
        return self.core.elements

    @property
    def cutoff(self) -> float:
        """Largest symmetry-function cutoff in Å."""
        return self.core.cutoff * self.core.length_unit

    @property
    def length_unit(self) -> float:
        """Å per potential length unit."""
        return self.core.length_unit

    @property
    def energy_unit(self) -> float:
        """eV per potential energy unit."""
        return self.core.energy_unit

    def set_units(self, length_unit: float, energy_unit: float) -> None:
        self.core.set_units(float(length_unit), float(energy_unit))

    def __repr__(self) -> str:
        return (f"Potential(elements={self.elements}, cutoff={self.cutoff:.4g} Å, "
                f"length_unit={self.length_unit:.6g} Å, energy_unit={self.energy_unit:.6g} eV)")

    # --- evaluation ------------------------------------------------------------------
    def element_indices(self, symbols: Sequence[str]) -> np.ndarray:
        """(n,) index of each symbol in :attr:`elements` (an element the potential lacks is a
        ValueError naming it)."""
        return self.core.element_indices(list(symbols))

    def compute(self, positions: np.ndarray, symbols: Sequence[str],
                cell: Optional[np.ndarray] = None, pbc: Sequence[bool] = (False,) * 3,
                forces: bool = True, virial: bool = True, atom_virial: bool = False,
                max_warnings: int = -1, threads: Optional[int] = 1) -> dict:
        """Energy and derivatives of one structure.

        positions: (n, 3) Å; symbols: n element symbols; cell: (3, 3) Å, rows are cell
        vectors (needed on periodic axes); pbc: (3,) bools.

        Returns a dict: ``energy`` (eV), ``energies`` (n,) eV, ``forces`` (n, 3) eV/Å,
        ``virial`` (6,) eV in order xx yy zz xy xz yz (W = sum r (x) F), ``atom_virial``
        (n, 6) eV, ``n_warnings`` and ``warnings``: extrapolations as tuples
        (atom, element symbol, 1-based symmetry-function index, value, Gmin, Gmax).
        threads: OpenMP threads of the kernel (None: OMP_NUM_THREADS, else all cores); the
        results are the same for every thread count.
        """
        return self.compute_indexed(positions, symbols, None, cell, pbc, forces, virial,
                                    atom_virial, max_warnings, threads)

    def compute_indexed(self, positions: np.ndarray, symbols: Sequence[str],
                        element_index: Optional[np.ndarray], cell: Optional[np.ndarray] = None,
                        pbc: Sequence[bool] = (False,) * 3, forces: bool = True,
                        virial: bool = True, atom_virial: bool = False, max_warnings: int = -1,
                        threads: Optional[int] = 1) -> dict:
        """:meth:`compute` with the atoms' element indices given (n,) as ``element_index``
        (from :meth:`element_indices` of ``symbols``; None: computed here), so that a caller
        evaluating the same atoms again (an MD run) converts the symbols once."""
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if len(symbols) != len(pos):
            raise ValueError(f"{len(pos)} positions but {len(symbols)} element symbols")
        bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
        if bad.size:
            raise ValueError(f"atom {bad[0]} ({symbols[bad[0]]}) has a non-finite position "
                             f"{pos[bad[0]].tolist()}")
        elem = self.element_indices(symbols) if element_index is None else element_index
        c = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        lu, eu = self.core.length_unit, self.core.energy_unit
        res = self.core.compute_structure(pos / lu, elem, c / lu, np.asarray(pbc, bool),
                                          forces=forces, virial=virial,
                                          atom_virial=atom_virial, max_warnings=max_warnings,
                                          min_distance=1e-8 / lu,
                                          threads=0 if threads is None else int(threads))
        res["energy"] *= eu
        res["energies"] *= eu
        if forces:
            res["forces"] *= eu / lu
        if virial:
            res["virial"] *= eu
        if atom_virial:
            res["atom_virial"] *= eu
        _check_finite(res, forces)
        els = self.elements
        res["warnings"] = [(a, els[e], s + 1, v, lo, hi) for a, e, s, v, lo, hi in res["warnings"]]
        return res


def _check_finite(res: dict, forces: bool) -> None:
    """Raise ValueError when an energy or force of a result is not finite (overflow from a
    potential's extreme weights, offsets or units), instead of returning inf/NaN."""
    if not np.isfinite(res["energy"]):
        raise ValueError(f"the total energy is not finite ({res['energy']}): the potential's "
                         "weights, energy offsets or units overflow for this structure")
    if forces:
        bad = np.flatnonzero(~np.isfinite(res["forces"]).all(axis=1))
        if bad.size:
            raise ValueError(f"the force on atom {bad[0]} is not finite: the potential's "
                             "weights or units overflow for this structure")


def virial_to_stress(virial: np.ndarray, volume: float) -> np.ndarray:
    """ASE stress (Voigt xx yy zz yz xz xy, eV/Å^3) from a kernel virial (xx yy zz xy xz yz, eV).

    virial may be (6,) or (n, 6) (per-atom stresses)."""
    v = np.asarray(virial, dtype=np.float64)
    return -v[..., [0, 1, 2, 5, 4, 3]] / volume

"""ASE calculator for pyfragnn potentials.

Energies in eV, forces in eV/Å, stress in eV/Å^3 in ASE's Voigt order (xx, yy, zz, yz, xz, xy).
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

from ase.calculators.calculator import (Calculator, PropertyNotImplementedError,
                                        all_changes)

from pyfragnn.potential import Potential, virial_to_stress


class ExtrapolationWarning(UserWarning):
    """A symmetry function left the range of the training data."""


class ExtrapolationError(RuntimeError):
    """Raised with ``extrapolation='raise'`` when a symmetry function extrapolates."""


class FragNN(Calculator):
    """HDNNP calculator.

    Parameters
    ----------
    potential:
        A :class:`~pyfragnn.Potential`, or anything :meth:`Potential.load` accepts (a native
        file, an n2p2 directory, the name of a shipped potential).
    extrapolation:
        What to do when a symmetry function lies outside the training range:
        ``'record'`` (default: only ``results['extrapolations']``), ``'warn'``
        (an :class:`ExtrapolationWarning`) or ``'raise'`` (:class:`ExtrapolationError`).
    max_warnings:
        At most this many extrapolations are listed per call (the count is always complete).
    threads:
        OpenMP threads for the evaluation; None (default): ``OMP_NUM_THREADS`` if set, else
        all cores. Energies and forces are the same for every thread count.

    Notes
    -----
    ``results`` also holds ``n_extrapolations`` and ``extrapolations``: tuples
    (atom index, element, 1-based symmetry-function index, value, Gmin, Gmax).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress",
                              "stresses"]
    default_parameters = {"extrapolation": "record", "max_warnings": 100, "threads": None}

    def __init__(self, potential: Union[Potential, str], extrapolation: str = "record",
                 max_warnings: int = 100, threads: Optional[int] = None, **kwargs):
        if extrapolation not in ("record", "warn", "raise"):
            raise ValueError(f"extrapolation must be 'record', 'warn' or 'raise', "
                             f"not {extrapolation!r}")
        self.potential = potential if isinstance(potential, Potential) else Potential.load(potential)
        self._elements_key: Optional[bytes] = None
        self._elements_cache: tuple = ()
        super().__init__(extrapolation=extrapolation, max_warnings=max_warnings, threads=threads,
                         **kwargs)

    def _elements(self, atoms) -> tuple:
        """The atoms' symbols and element indices, converted again only when the atomic
        numbers change (for 2862 atoms the conversion took ~7 % of an evaluation)."""
        key = atoms.numbers.tobytes()
        if key != self._elements_key:
            symbols = atoms.get_chemical_symbols()
            self._elements_cache = (symbols, self.potential.element_indices(symbols))
            self._elements_key = key
        return self._elements_cache

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic_3d = atoms.cell.rank == 3
        want_stress = "stress" in properties or "stresses" in properties
        if want_stress and not periodic_3d:
            raise PropertyNotImplementedError("stress needs a cell with three vectors")
        symbols, elem = self._elements(atoms)
        res = self.potential.compute_indexed(atoms.positions, symbols, elem, atoms.cell.array,
                                             atoms.pbc, forces=True, virial=periodic_3d,
                                             atom_virial="stresses" in properties,
                                             max_warnings=self.parameters.max_warnings,
                                             threads=self.parameters.get("threads"))
        self.results["energy"] = res["energy"]
        self.results["free_energy"] = res["energy"]
        self.results["energies"] = res["energies"]
        self.results["forces"] = res["forces"]
        if periodic_3d:
            volume = atoms.get_volume()
            self.results["stress"] = virial_to_stress(res["virial"], volume)
            if "atom_virial" in res:
                self.results["stresses"] = virial_to_stress(res["atom_virial"], volume)
        self.results["n_extrapolations"] = res["n_warnings"]
        self.results["extrapolations"] = res["warnings"]
        if res["n_warnings"]:
            first = res["warnings"][0] if res["warnings"] else None
            msg = (f"{res['n_warnings']} symmetry-function values outside the training range"
                   + (f"; first: atom {first[0]} ({first[1]}) function {first[2]} = {first[3]:.6g}"
                      f" not in [{first[4]:.6g}, {first[5]:.6g}]" if first else ""))
            if self.parameters.extrapolation == "raise":
                raise ExtrapolationError(msg)
            if self.parameters.extrapolation == "warn":
                warnings.warn(msg, ExtrapolationWarning, stacklevel=2)

"""Validation of a potential against labelled reference structures: predictions, energy and
force RMSEs (eV/atom, eV/Å), the energy offset of section 4.3.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from ase import Atoms

__all__ = ["evaluate", "errors", "rmse", "energy_per_atom", "offset_per_atom"]


def evaluate(pot, images: Sequence[Atoms]) -> dict:
    """Predictions of Potential ``pot`` for labelled ``images``: per structure dicts with
    ``n``, ``E_ref``, ``E_nn`` (eV), ``F_ref``, ``F_nn`` ((n, 3) eV/Å), ``n_extrapolations``."""
    out = []
    for a in images:
        r = pot.compute(a.positions, a.get_chemical_symbols(), a.cell.array, a.pbc,
                        forces=True, virial=False)
        out.append({"n": len(a), "E_ref": float(a.get_potential_energy()),
                    "E_nn": float(r["energy"]), "F_ref": np.array(a.get_forces()),
                    "F_nn": np.array(r["forces"]), "n_extrapolations": int(r["n_warnings"])})
    return {"structures": out}


def energy_per_atom(pot, atoms: Atoms) -> float:
    """Energy per atom (eV) of ``atoms`` with Potential ``pot`` (no forces)."""
    return float(pot.compute(atoms.positions, atoms.get_chemical_symbols(), atoms.cell.array,
                             atoms.pbc, forces=False, virial=False)["energy"]) / len(atoms)


def offset_per_atom(pot, relaxed: Atoms) -> float:
    """Energy offset of section 4.3 (eV/atom): HDNNP minus reference per-atom energy of the
    labelled relaxed structure."""
    return energy_per_atom(pot, relaxed) - float(relaxed.get_potential_energy()) / len(relaxed)


def rmse(x: np.ndarray) -> float:
    x = np.asarray(x, float).ravel()
    return float(np.sqrt(np.mean(x * x))) if x.size else float("nan")


def errors(ev: dict, offset_per_atom: float = 0.0, mask_key: Optional[Callable] = None) -> dict:
    """E RMSE (eV/atom, after subtracting ``offset_per_atom``), F RMSE (eV/Å, components)."""
    st = ev["structures"]
    dE = [(s["E_nn"] - s["E_ref"]) / s["n"] - offset_per_atom for s in st]
    dF = np.concatenate([(s["F_nn"] - s["F_ref"]).ravel() for s in st]) if st else np.zeros(0)
    return {"n": len(st), "rmse_E": rmse(dE), "rmse_F": rmse(dF),
            "extrapolations": int(sum(s["n_extrapolations"] for s in st))}


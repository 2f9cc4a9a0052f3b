"""Validation of a potential against labelled reference structures: predictions, energy and
force RMSEs (eV/atom, eV/Å), the energy offset of section 4.3.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from ase import Atoms

__all__ = ["evaluate", "errors", "rmse", "energy_per_atom", "offset_per_atom",
           "pressure_check"]

_EV_A3_TO_GPA = 160.21766208


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



def pressure_check(potential: str, relaxed: Atoms, scale: float, reference,
                   frames: int = 5, temperature: float = 300.0, dscale: float = 0.006,
                   seed: int = 17, threads: int = 1) -> dict:
    """The lattice-constant check of section 4.4 against the reference method, where a
    reference NPT run is too expensive: Langevin MD (0.5 fs) with ``potential`` of
    ``relaxed`` with its cell scaled by ``scale`` (the potential's NPT result), a frame every
    0.25 ps after 0.5 ps; the static pressure -tr(σ)/3 (GPa) of the potential and of the
    reference method (``reference``: any :func:`pyfragnn.labelling.make_calculator` spec
    that gives stresses) on each frame, and the same at ``scale + dscale``. The pressure
    difference over the reference's slope dP/ds estimates the reference's own scale at that
    temperature: ``scale_reference = scale + (P_nn - P_ref) / (dP_ref/ds)``.

    Returns ``P_nn_GPa``/``P_ref_GPa`` per frame for both cells, their means, the slope
    ``dP_ref_ds_GPa``, ``scale_reference`` (nan if the slope is not negative), the force
    RMSE (eV/Å) and extrapolating atoms per frame."""
    from .active_learning import explore
    from .calculator import FragNN
    from .labelling import _thread_env, make_calculator

    out: dict = {"scale": scale, "dscale": dscale, "frames": frames,
                 "temperature_K": temperature}
    nn = FragNN(potential)  # loaded once for every frame
    with _thread_env(max(1, threads)):
        for key, s in (("", scale), ("_plus", scale + dscale)):
            start = relaxed.copy()
            start.calc = None
            start.set_cell(relaxed.cell.array * s, scale_atoms=True)
            fr = explore(start, [potential], temperature, 1000 + 500 * frames, 0.5, 500,
                         seed=seed)[2:]
            pn, pr, dF, nex = [], [], [], []
            for f in fr:
                f.calc = nn
                pn.append(-float(np.mean(f.get_stress()[:3])) * _EV_A3_TO_GPA)
                fn = f.get_forces()
                nex.append(int((f.arrays["extrapolations"] > 0).sum()))
                f.calc = make_calculator(reference, f)
                pr.append(-float(np.mean(f.get_stress()[:3])) * _EV_A3_TO_GPA)
                dF.append((fn - f.get_forces()).ravel())
            out[f"P_nn_GPa{key}"], out[f"P_ref_GPa{key}"] = pn, pr
            out[f"F_rmse_eV_A{key}"] = rmse(np.concatenate(dF)) if dF else float("nan")
            out[f"extrapolating_atoms{key}"] = nex
    p_nn, p_ref = float(np.mean(out["P_nn_GPa"])), float(np.mean(out["P_ref_GPa"]))
    slope = (float(np.mean(out["P_ref_GPa_plus"])) - p_ref) / dscale
    out.update(P_nn_mean=p_nn, P_ref_mean=p_ref, dP_ref_ds_GPa=slope,
               scale_reference=scale + (p_nn - p_ref) / slope if slope < 0 else float("nan"))
    return out

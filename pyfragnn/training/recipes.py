"""Ready-made HDNNP training runs of the fragment workflow: labelled ASE frames -> trainer
structures, an ACSF set without uninformative functions, EKF training and fine-tuning.

Units: Å, eV, eV/Å.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms

__all__ = ["to_structures", "symmetry_function_lines", "train_hdnnp", "fine_tune_hdnnp"]

PathLike = Union[str, os.PathLike]


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_structures(images: Sequence[Atoms], label_key: str = "label",
                  force_mask_key: Optional[str] = None):
    """Labelled ASE Atoms (energy and forces in a calculator or info/arrays) →
    :class:`pyfragnn.dataset.Structure` list for the trainer. ``label`` from
    ``info[label_key]``; optional per-atom bool ``arrays[force_mask_key]`` as force mask."""
    from pyfragnn.dataset import Structure

    out = []
    for k, a in enumerate(images):
        res = getattr(a.calc, "results", {}) if a.calc is not None else {}
        e = res.get("energy", a.info.get("energy"))
        f = res.get("forces", a.arrays.get("forces"))
        if e is None or f is None:
            raise ValueError(f"structure {k} has no energy/forces (label it first)")
        cell = np.array(a.cell.array, float) if a.cell.rank == 3 or a.pbc.any() \
            else np.zeros((3, 3))
        out.append(Structure(symbols=a.get_chemical_symbols(), positions=a.positions.copy(),
                             cell=cell, pbc=np.array(a.pbc, bool), energy=float(e),
                             forces=np.array(f, float), label=str(a.info.get(label_key, "")),
                             force_mask=(np.asarray(a.arrays[force_mask_key], bool)
                                         if force_mask_key else None),
                             source=f"structure {k}"))
    return out


def symmetry_function_lines(structures, elements: Sequence[str], cutoff: float,
                            radial_n: int = 5, r_min: float = 0.8,
                            angular_zeta: Sequence[float] = (1.0, 4.0),
                            min_active_atoms: int = 5,
                            min_range: float = 0.01) -> Tuple[List[str], Dict[str, int]]:
    """ACSF lines (n2p2 ``symfunction_short`` syntax) for ``elements``: ``radial_n`` shifted
    type-2 functions per element pair from ``r_min`` to ``cutoff`` Å and type-9 angular
    functions (eta 0.02 Å⁻², zetas ``angular_zeta``, lambda ±1) per element triple, without
    the functions that carry (almost) no information on ``structures`` (list of
    :class:`pyfragnn.dataset.Structure`): those whose range max - min over the atoms of their
    element is below ``min_range`` or that differ from their minimum on fewer than
    ``min_active_atoms`` atoms (e.g. Zn-H-H angles within 4 Å, range 1e-8). Such functions
    are scaled to [0, 1] by that tiny range, so that any bulk environment extrapolates wildly
    through them. Returns (lines, number dropped per element)."""
    from pyfragnn import _core
    from pyfragnn.training import prepare

    sfs = prepare.radial_functions(elements, cutoff, n=radial_n, r_min=r_min, mode="shifted")
    sfs += prepare.angular_functions(elements, cutoff, etas=(0.02,), zetas=angular_zeta,
                                     lambdas=(-1, 1), sf_type=9)
    core = _core.CoreModel.from_text(prepare.make_input_nn(elements, sfs), "", None, "<demo>")
    ne = len(core.elements)
    G: List[List[np.ndarray]] = [[] for _ in range(ne)]
    for st in structures:
        el = core.element_indices(list(st.symbols))
        ts = _core.TrainingStructure(core, np.asarray(st.positions, float),
                                     np.asarray(st.cell, float), np.asarray(st.pbc, bool),
                                     el, False)
        for a in range(len(el)):
            G[int(el[a])].append(np.asarray(ts.G(a), float))
    lines, dropped = [], {}
    for e in range(ne):
        all_lines = list(core.symmetry_function_lines(e))
        if not G[e]:
            raise ValueError(f"element {core.elements[e]} does not occur in the training data")
        g = np.array(G[e])
        active = (np.abs(g - g.min(axis=0)) > 1e-9 * np.maximum(1.0, np.abs(g).max(axis=0)))
        keep = ((active.sum(axis=0) >= min(min_active_atoms, max(len(g) // 2, 2)))
                & (g.max(axis=0) - g.min(axis=0) >= min_range))
        dropped[core.elements[e]] = int((~keep).sum())
        lines += [ln for ln, k in zip(all_lines, keep) if k]
    return lines, dropped


def train_hdnnp(structures, outdir: PathLike, cutoff: float, epochs: int,
                hidden: Sequence[int] = (15, 15), radial_n: int = 5, r_min: float = 0.8,
                angular_zeta: Sequence[float] = (1.0, 4.0), test_fraction: float = 0.1,
                seed: int = 12345, progress: bool = True, elements: Optional[List[str]] = None,
                extra_training: Optional[dict] = None):
    """Train an HDNNP with :class:`pyfragnn.training.Trainer`: EKF, tanh networks ``hidden``,
    ACSFs from :func:`symmetry_function_lines` (cutoff ``cutoff`` Å, cutoff type POLY2).

    ``structures``: list of :class:`pyfragnn.dataset.Structure`; the train/test split is
    stratified per label. ``extra_training`` updates the ``[training]`` config table.
    Returns the trainer's ``TrainResult``; ``outdir/potential.fragnn`` is the potential,
    ``outdir/input.nn`` the model definition.
    """
    from ase.data import atomic_numbers

    from pyfragnn.training import prepare

    structures = list(structures)
    els = list(elements) if elements else sorted({s for st in structures for s in st.symbols},
                                                 key=lambda x: atomic_numbers[x])
    lines, dropped = symmetry_function_lines(structures, els, cutoff, radial_n, r_min,
                                             angular_zeta)
    if any(dropped.values()) and progress:
        _say("ACSFs without information dropped: "
             + ", ".join(f"{k} {v}" for k, v in dropped.items() if v))
    Path(outdir).mkdir(parents=True, exist_ok=True)
    nn = Path(outdir) / "input.nn"
    nn.write_text(prepare.make_input_nn(els, lines, hidden, ["t"] * len(hidden) + ["l"]))
    return _run_ekf(structures, outdir, {"input_nn": str(nn.resolve())}, {}, epochs,
                    test_fraction, seed, progress, extra_training)


def _run_ekf(structures, outdir: PathLike, model: dict, kalman: dict, epochs: int,
             test_fraction: float, seed: int, progress: bool,
             extra_training: Optional[dict]):
    """The Trainer run of :func:`train_hdnnp` and :func:`fine_tune_hdnnp`: EKF, split
    stratified per label, resumable, no n2p2 files; ``extra_training`` updates ``[training]``
    (its ``kalman`` table is merged into the filter's settings)."""
    from pyfragnn.training.trainer import Trainer

    # the recipes train serially (one process per committee member), so the filter keeps one
    # triangle of P and uses BLAS SYMV/SYRK: 3-5x faster per epoch than the MPI-splittable row
    # kernels (demo data, 731 fragments, 2.7k weights: 4.6 against 15-24 s per epoch)
    extra = dict(extra_training or {})
    kalman = {"symmetric": True, **kalman, **extra.pop("kalman", {})}  # merged, not replaced
    training = {"optimizer": "ekf", "epochs": int(epochs), "seed": int(seed),
                "progress": bool(progress), "resume": True, "kalman": kalman}
    training.update(extra)
    cfg = {
        "data": {"test_fraction": float(test_fraction), "split": "label"},
        "model": model,
        "training": training,
        "output": {"directory": str(outdir), "n2p2": False, "plots": True, "checkpoint": True},
    }
    Path(outdir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, structures=list(structures)).run()


def fine_tune_hdnnp(structures, outdir: PathLike, init_potential: PathLike, epochs: int,
                    init_state: Optional[PathLike] = None, test_fraction: float = 0.1,
                    seed: int = 12345, progress: bool = True,
                    extra_training: Optional[dict] = None):
    """Continue training a potential on (extended) data: model, scaling, atom energies and
    weights from ``init_potential`` (``model.init_from``), the Kalman filter from the
    ``init_state`` checkpoint if given (``training.kalman.init_state``). Otherwise as
    :func:`train_hdnnp`; returns the ``TrainResult``."""
    return _run_ekf(structures, outdir, {"init_from": str(init_potential)},
                    {"init_state": str(init_state) if init_state else ""}, epochs,
                    test_fraction, seed, progress, extra_training)


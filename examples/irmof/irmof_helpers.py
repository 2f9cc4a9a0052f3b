"""Helpers of the IRMOF-1 pipeline in irmof.py that the package's workflow replaced
(``pyfragnn.workflow``): kept here, unchanged, so that irmof.py reruns as it produced the
published results in results/ until the example is a workflow configuration.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from ase import Atoms

from pyfragnn.demo import IRMOF1_PRIM  # noqa: F401
from pyfragnn.md import lammps_md  # noqa: F401
from pyfragnn.sampling import distorted_snapshots  # noqa: F401
from pyfragnn.training.recipes import fine_tune_hdnnp, to_structures, train_hdnnp  # noqa: F401
from pyfragnn.validation import errors as _errors  # noqa: F401
from pyfragnn.validation import energy_per_atom as _energy_per_atom  # noqa: F401
from pyfragnn.validation import evaluate  # noqa: F401
from pyfragnn.validation import offset_per_atom as _offset_per_atom  # noqa: F401
from pyfragnn.validation import rmse as _rmse  # noqa: F401

PathLike = Union[str, os.PathLike]


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _read(path: PathLike, index=":") -> List[Atoms]:
    from ase.io import read

    res = read(str(path), index=index)
    return [res] if isinstance(res, Atoms) else list(res)


def _write_atomic(path: PathLike, images: Sequence[Atoms]) -> None:
    """Write extxyz via a temporary file and rename (a crash never leaves half a step)."""
    from ase.io import write

    tmp = Path(str(path) + ".tmp")
    write(str(tmp), list(images), format="extxyz")
    os.replace(tmp, path)


def harmonic_snapshots(atoms: Atoms, potential, n: int, temperatures: Tuple[float, float],
                       strain: float, seed: int, delta: float = 0.005,
                       min_wavenumber: float = 30.0) -> List[Atoms]:
    """``n`` thermal snapshots of ``atoms`` in the harmonic approximation of ``potential`` (a
    :class:`pyfragnn.Potential`, path or name, e.g. a preliminary HDNNP): the Γ-point Hessian by
    central differences of its forces (``delta`` Å), normal-mode coordinates drawn from the
    classical Boltzmann distribution at a temperature uniform in ``temperatures`` (K), plus a
    random symmetric strain (components uniform in ±``strain``). Modes below
    ``min_wavenumber`` (cm⁻¹; the acoustic ones, soft or unstable modes) are sampled as if at
    that wavenumber, so that no amplitude diverges. ``info``: ``sampling='harmonic'``,
    ``temperature``. Unlike a Gaussian rattle, soft motions (H wagging, ring librations) get
    their thermal amplitudes, which MD then visits."""
    from ase import units

    from pyfragnn.calculator import FragNN
    from pyfragnn.interaction_range import hessian_blocks
    from pyfragnn.potential import Potential

    pot = potential if isinstance(potential, Potential) else Potential.load(potential)
    nat = len(atoms)
    # blocks[k, A, j, alpha] = H[3A + j, 3k + alpha]
    blocks = hessian_blocks(atoms, lambda a: FragNN(pot), displace=range(nat), fd_step=delta,
                            progress=False).blocks
    hess = blocks.transpose(1, 2, 0, 3).reshape(3 * nat, 3 * nat)
    hess = 0.5 * (hess + hess.T)
    m = np.repeat(atoms.get_masses(), 3)
    w2, vec = np.linalg.eigh(hess / np.sqrt(np.outer(m, m)))       # eV/(Å² amu)
    # wavenumber of w2 = 1 eV/(Å² amu): sqrt(eV/amu)/Å / (2π c)
    unit_cm = np.sqrt(units._e / units._amu) * 1e10 / (2 * np.pi * units._c * 100)
    w2 = np.maximum(w2, (min_wavenumber / unit_cm) ** 2)
    # Displacements x = C^(1/2) z with z ~ N(0, 1) in mass-weighted Cartesian space and
    # C^(1/2) = V diag(1/w) V^T: the same distribution as drawing each mode's amplitude, but
    # independent of the basis eigh picks inside degenerate (symmetry-related) modes, which
    # changes with the BLAS thread count; so a seed gives the same snapshots everywhere.
    root = (vec / np.sqrt(w2)) @ vec.T
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = float(rng.uniform(*temperatures))
        x = np.sqrt(units.kB * t) * (root @ rng.normal(0.0, 1.0, 3 * nat))
        a = atoms.copy()
        a.calc = None
        e = rng.uniform(-strain, strain, (3, 3))
        e = 0.5 * (e + e.T)
        a.positions = a.positions + (x / np.sqrt(m)).reshape(nat, 3)
        a.set_cell(a.cell.array @ (np.eye(3) + e), scale_atoms=True)
        a.info.update(sampling="harmonic", temperature=t)
        out.append(a)
    return out


def cut_site_fragments(snapshots: Sequence[Atoms], site_labels: Sequence[str],
                       site_members: Dict[str, np.ndarray], radius: float, r_c: float,
                       seed: int, tag: str, role: str, per_site: int = 1) -> List[Atoms]:
    """``per_site`` H-capped fragments of ``radius`` Å per snapshot and site, centred on
    distinct random members of the site (fewer if the site has fewer members). ``info``: ``label`` = ``<site>-<tag>``, ``site``, ``snapshot``, ``role``,
    ``centre``; ``arrays['central']`` marks atoms whose ``r_c`` sphere is bulk-complete."""
    from pyfragnn.fragments import FragmentCutter, StretchedBondError, UnsoundFragmentError

    rng = np.random.default_rng(seed)
    out = []
    for s, snap in enumerate(snapshots):
        cutter = FragmentCutter(snap, site_labels=list(site_labels))
        for site, members in site_members.items():
            for c in rng.choice(members, min(per_site, len(members)), replace=False):
                try:
                    f = cutter.cut(int(c), radius, r_c=r_c, type_label=site)
                except (StretchedBondError, UnsoundFragmentError) as exc:  # detached atom
                    _say(f"fragments: snapshot {s}, centre {int(c)} skipped: {exc}")
                    continue
                f.info.update(label=f"{site}-{tag}", site=site, snapshot=s, role=role,
                              centre=int(c))
                out.append(f)
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _relax(atoms: Atoms, out: Path, fmax: float, steps: int, threads: int) -> Atoms:
    """BFGS relaxation of the positions with GFN2-xTB (cell fixed); writes ``out``."""
    from ase.optimize import BFGS

    from pyfragnn.labelling import make_calculator

    os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
    a = atoms.copy()
    a.calc = make_calculator("gfn2", a)
    f0 = float(np.linalg.norm(a.get_forces(), axis=1).max())
    _say(f"relax: GFN2-xTB, {len(a)} atoms, initial max|F| = {f0:.3f} eV/Å, "
         f"target {fmax} eV/Å, at most {steps} steps")
    from pyfragnn.progress import Progress

    opt = BFGS(a, logfile=str(out.with_suffix(".log")), maxstep=0.1)
    bar = Progress(total=steps, desc="relax", disable=None)
    n = 0
    with bar:
        for k, _ in enumerate(opt.irun(fmax=fmax, steps=steps)):
            n = k  # irun yields once before the first step
            bar.update()
    fmax_end = float(np.linalg.norm(a.get_forces(), axis=1).max())
    e = float(a.get_potential_energy())
    res = a.copy()
    from ase.calculators.singlepoint import SinglePointCalculator

    res.calc = SinglePointCalculator(res, energy=e, forces=a.get_forces())
    res.info.update(relax_steps=n, relax_fmax=fmax_end, relax_initial_fmax=f0)
    _write_atomic(out, [res])
    _say(f"relax: {n} steps, max|F| = {fmax_end:.3f} eV/Å, E = {e:.4f} eV")
    return res


def _labelled_in_order(items: Sequence[Atoms], path: Path) -> List[Atoms]:
    """The labelled frames of ``items`` from the data set ``path``, in input order (frames of
    other inputs that an earlier run left in the file are ignored)."""
    from pyfragnn.labelling import labelled_in_order

    got = labelled_in_order(items, _read(path))
    missing = [i for i, f in enumerate(got) if f is None]
    if missing:
        raise RuntimeError(f"{path}: no label for structures {missing[:10]}")
    return list(got)


def _read_rmse_csv(path: Path) -> List[dict]:
    import csv

    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))

"""``pyfragnn example``: the one-minute check of an installation.

Evaluates a potential shipped in ``pyfragnn/potentials`` on a matching structure shipped in
``pyfragnn/data`` and runs a short ASE NVE MD with it; with no shipped potential (or
``--train``) it trains a tiny EMT-labelled Cu potential with the project trainer, compares it
with EMT on fcc Cu cells and runs the MD. Prints and writes ``example.json``.
Units: Å, eV, eV/Å, fs, K.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Union

import numpy as np
from ase import Atoms
from ase.io import read

from .sampling import distorted_snapshots
from .training.recipes import to_structures, train_hdnnp
from .validation import rmse

__all__ = ["run_example", "register_cli", "DATA_DIR"]

PathLike = Union[str, os.PathLike]

#: Structures shipped with the package.
DATA_DIR = Path(__file__).resolve().parent / "data"


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _shipped_case():
    """(potential path, structure path) of a shipped potential with a shipped structure whose
    elements it covers, or None."""
    from pyfragnn.potential import Potential, shipped_dirs

    for d in shipped_dirs():
        for p in sorted(d.glob("*.fragnn")) if d.is_dir() else []:
            try:
                pot = Potential.load(p)
            except (ValueError, RuntimeError, OSError):
                continue
            for s in sorted(DATA_DIR.glob("*.extxyz")):
                at = read(str(s), 0)
                if set(at.get_chemical_symbols()) <= set(pot.elements):
                    return p, s
    return None


def _ase_md(atoms: Atoms, calc, steps: int, timestep_fs: float, temperature: float,
            seed: int = 7) -> dict:
    """Velocity-Verlet NVE; returns total-energy drift per atom (eV) and wall time."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    a = atoms.copy()
    a.calc = calc
    MaxwellBoltzmannDistribution(a, temperature_K=2 * temperature,
                                 rng=np.random.default_rng(seed))
    Stationary(a)
    dyn = VelocityVerlet(a, timestep_fs * units.fs)
    etot = [a.get_total_energy()]
    t0 = time.perf_counter()
    for _ in range(steps):
        dyn.run(1)
        etot.append(a.get_total_energy())
    wall = time.perf_counter() - t0
    etot = np.array(etot) / len(a)
    return {"steps": steps, "drift_eV_atom": float(etot[-1] - etot[0]),
            "fluct_eV_atom": float(etot.std()), "T_K": float(a.get_temperature()),
            "us_per_atom_step": wall / (steps * len(a)) * 1e6, "atoms": len(a)}


def run_example(outdir: PathLike = "pyfragnn_example", md_steps: int = 100,
                epochs: int = 30, use_shipped: bool = True, progress: bool = False) -> dict:
    """The fast main job (see module docstring). Prints and returns a summary dict with
    ``rmse_E_eV_atom``, ``rmse_F_eV_A`` (vs the reference, where one is available) and
    ``md`` (``drift_eV_atom`` over the run)."""
    from pyfragnn.calculator import FragNN
    from pyfragnn.potential import Potential

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    case = _shipped_case() if use_shipped else None
    summary: dict = {}
    if case is not None:
        pot_path, s_path = case
        pot = Potential.load(pot_path)
        atoms = read(str(s_path), 0)
        _say(f"example: shipped potential {pot_path.name} on {s_path.name} ({len(atoms)} atoms)")
        calc = FragNN(pot)
        atoms.calc = calc
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
        _say(f"example: E = {e:.4f} eV ({e / len(atoms):.5f} eV/atom), max|F| = "
             f"{np.abs(f).max():.3f} eV/Å, {calc.results['n_extrapolations']} extrapolations")
        summary.update(potential=str(pot_path), structure=str(s_path), energy_eV=e)
        md_atoms, temperature, dt = atoms, 300.0, 0.5
    else:
        from ase.build import bulk
        from ase.calculators.emt import EMT

        _say("example: no shipped potential; training a Cu HDNNP on EMT-labelled cells")
        cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))        # 32 atoms
        snaps = distorted_snapshots(cu, 24, rattle=0.08, strain=0.03, seed=1)
        for k, a in enumerate(snaps):
            a.calc = EMT()
            a.get_forces()
            a.info["label"] = "Cu32"
        pot_file = out / "cu_emt" / "potential.fragnn"
        if pot_file.exists():
            pot = Potential.load(pot_file)
        else:
            train_hdnnp(to_structures(snaps), out / "cu_emt", cutoff=5.0, epochs=epochs,
                        hidden=(10, 10), radial_n=6, r_min=2.0, angular_zeta=(1.0, 4.0),
                        test_fraction=0.2, seed=3, progress=progress,
                        extra_training={"force_fraction": 0.1, "force_weight": 1.0})
            pot = Potential.load(pot_file)
        test = distorted_snapshots(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3)),
                                   3, rattle=0.08, strain=0.02, seed=99)
        calc = FragNN(pot)
        dE, dF = [], []
        for a in test:
            a.calc = EMT()
            e_ref, f_ref = a.get_potential_energy(), a.get_forces()
            a.calc = calc
            dE.append((a.get_potential_energy() - e_ref) / len(a))
            dF.append((a.get_forces() - f_ref).ravel())
        summary.update(potential=str(pot_file), rmse_E_eV_atom=rmse(dE),
                       rmse_F_eV_A=rmse(np.concatenate(dF)),
                       force_std_eV_A=float(np.std([a.get_forces() for a in test])))
        _say(f"example: fcc Cu 108-atom cells vs EMT: E RMSE {summary['rmse_E_eV_atom']:.4f} "
             f"eV/atom, F RMSE {summary['rmse_F_eV_A']:.4f} eV/Å (force std "
             f"{summary['force_std_eV_A']:.3f} eV/Å)")
        md_atoms, temperature, dt = test[0], 300.0, 2.0
    if md_steps > 0:
        md = _ase_md(md_atoms, calc, md_steps, dt, temperature)
        summary["md"] = md
        _say(f"example: ASE NVE MD {md_steps} × {dt} fs, {md['atoms']} atoms: energy drift "
             f"{md['drift_eV_atom']:.2e} eV/atom (fluctuation {md['fluct_eV_atom']:.1e}), "
             f"T = {md['T_K']:.0f} K, {md['us_per_atom_step']:.1f} µs/atom-step")
    summary["wall_s"] = time.perf_counter() - t0
    (out / "example.json").write_text(json.dumps(summary, indent=1, default=float))
    _say(f"example: done in {summary['wall_s']:.1f} s")
    return summary


def _cmd_example(args: argparse.Namespace) -> int:
    run_example(args.outdir, md_steps=args.md_steps, use_shipped=not args.train)
    return 0


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``example`` to the ``pyfragnn`` command line."""
    q = subparsers.add_parser(
        "example", help="fast example: shipped (or freshly trained Cu/EMT) potential, "
                        "errors and a short MD")
    q.add_argument("--outdir", default="pyfragnn_example")
    q.add_argument("--md-steps", type=int, default=100)
    q.add_argument("--train", action="store_true",
                   help="train the Cu/EMT potential even if a shipped potential exists")
    q.set_defaults(func=_cmd_example)
    return q

"""Structures to learn from: reference MD of fragments in vacuum (the paper's initial data,
section 3) and distorted copies of a periodic cell.

- :func:`fragment_md`: Langevin MD of each fragment with the reference method; the sampled
  frames carry the reference energy and forces of that step (labels at no extra cost).
- :func:`distorted_snapshots`: random symmetric strain plus Gaussian rattle.

Bulk MD with a (preliminary) potential is :func:`pyfragnn.active_learning.explore`.
Units: Å, eV, eV/Å, fs, K.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms

__all__ = ["fragment_md", "distorted_snapshots"]


def distorted_snapshots(atoms: Atoms, n: int, rattle: float, strain: float,
                        seed: int) -> List[Atoms]:
    """``n`` copies of ``atoms`` with a random symmetric strain (components uniform in
    ±``strain``, positions scaled with the cell) and Gaussian displacements (sigma ``rattle`` Å)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.calc = None
        e = rng.uniform(-strain, strain, (3, 3))
        e = 0.5 * (e + e.T)
        a.set_cell(a.cell.array @ (np.eye(3) + e), scale_atoms=True)
        a.positions += rng.normal(0.0, rattle, a.positions.shape)
        out.append(a)
    return out


def _md_one(task: Tuple[int, Atoms, object, int, float, float, int, int]) -> Tuple[int, list]:
    """Worker: Langevin MD of one fragment; returns (index, sampled frames)."""
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    from .labelling import make_calculator

    k, frag, spec, steps, temperature, timestep_fs, sample_every, seed = task
    a = frag.copy()
    a.calc = make_calculator(spec, a)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(a, temperature_K=temperature, rng=rng)
    Stationary(a)
    ZeroRotation(a)
    dyn = Langevin(a, timestep_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   fixcm=False, rng=rng)
    frames = []

    def sample() -> None:
        f = a.copy()
        f.arrays.pop("momenta", None)
        f.calc = SinglePointCalculator(f, energy=float(a.get_potential_energy()),
                                       forces=np.array(a.get_forces()))
        f.info.update(frag.info)
        f.info.update(md_step=int(dyn.nsteps), md_temperature=float(temperature),
                      sampling="fragment_md")
        frames.append(f)

    import time

    t0 = time.process_time()
    dyn.attach(sample, interval=sample_every)
    dyn.run(steps)
    per_frame = (time.process_time() - t0) / max(len(frames), 1)
    for f in frames:  # the reference cost of the trajectory, shared by its frames
        f.info["label_seconds"] = round(per_frame, 4)
    return k, frames


def fragment_md(fragments: Sequence[Atoms], calculator, steps: int, temperature: float,
                timestep_fs: float = 0.5, sample_every: int = 10, seed: int = 0,
                workers: int = 1, checkpoint_dir: Optional[Union[str, Path]] = None,
                progress: Optional[bool] = None) -> List[Atoms]:
    """Reference MD of each fragment in vacuum (Langevin, friction 0.01 fs⁻¹, start from the
    Maxwell-Boltzmann distribution at ``temperature`` K without net momentum or rotation).
    Every ``sample_every`` steps (step 0 included) a frame with the reference energy (eV) and
    forces (eV/Å) of that step is kept; ``info`` gets the fragment's info plus ``md_step``,
    ``md_temperature``, ``sampling='fragment_md'`` and ``label_seconds`` (CPU seconds of the
    trajectory per kept frame). ``calculator``: a labelling spec
    (``'emt'``, ``'gfn2'``, ``'module:factory'``). Fragments run in parallel on ``workers``
    processes (one thread each). With ``checkpoint_dir``, each finished trajectory is written
    there (``md_NNNN.extxyz``) and reused by a rerun. Returns the frames, fragment by fragment.
    """
    import multiprocessing as mp

    from ase.io import read, write

    from .labelling import _thread_env, check_calculator_spec
    from .progress import Progress

    check_calculator_spec(calculator)
    if steps < 0 or sample_every < 1:
        raise ValueError("fragment_md: steps must be >= 0 and sample_every >= 1")
    ck = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ck is not None:
        ck.mkdir(parents=True, exist_ok=True)
    results: List[Optional[list]] = [None] * len(fragments)
    tasks = []
    for k, f in enumerate(fragments):
        p = ck / f"md_{k:04d}.extxyz" if ck is not None else None
        if p is not None and p.exists():
            results[k] = read(str(p), ":")
        else:
            tasks.append((k, f, calculator, steps, temperature, timestep_fs, sample_every,
                          seed + 7919 * k))
    bar = Progress(total=len(tasks), desc="fragment MD",
                   disable=None if progress is None else not progress)

    def take(k: int, frames: list) -> None:
        if ck is not None:
            p = ck / f"md_{k:04d}.extxyz"
            write(str(p) + ".tmp", frames, format="extxyz")
            os.replace(str(p) + ".tmp", p)
        results[k] = frames
        bar.update()

    # largest first (the reference cost grows faster than the atom count): the workers
    # finish together instead of one running the biggest fragment alone at the end
    tasks.sort(key=lambda t: -len(t[1]))
    with bar:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                take(*_md_one(t))
        else:
            with _thread_env(1), mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
                for k, frames in pool.imap_unordered(_md_one, tasks, chunksize=1):
                    take(k, frames)
    return [f for r in results for f in (r or [])]

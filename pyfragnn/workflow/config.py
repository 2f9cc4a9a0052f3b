"""Typed configuration of the fragment workflow (one TOML file, see :func:`load_config`).

Every table and key is a dataclass field below with its documentation (``describe()`` prints
them all, ``pyfragnn run --keys``). Unknown tables or keys and values of the wrong type are a
:class:`WorkflowConfigError` naming the key (``training.epochs: expected an integer, got
'20'``). Lengths in Å, energies in eV, forces in eV/Å, temperatures in K, times in fs.

Minimal example (EMT, copper)::

    [run]
    directory = "run"

    [[structures]]
    name = "Cu"
    file = "cu.extxyz"

    [reference]
    method = "emt"

    [range]
    r_c = 4.5
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union, get_args, get_origin, get_type_hints

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

__all__ = ["WorkflowConfig", "WorkflowConfigError", "load_config", "config_from_dict",
           "describe"]


class WorkflowConfigError(ValueError):
    """An invalid workflow configuration; the message names the file and key."""


def _doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class RunConfig:
    directory: str = _doc("run folder, relative to the configuration file", "run")
    seed: int = _doc("seed of every random choice (snapshots, fragments, splits, MD)", 1)
    workers: int = _doc("parallel reference calculations (processes, one thread each)", 2)


@dataclass
class StructureConfig:
    name: str = _doc("short name of the system (site labels become NAME:site)", "")
    file: str = _doc("periodic structure, any ASE-readable file (first frame), relative to "
                     "the configuration file; a path starting with 'pyfragnn:' names a "
                     "structure shipped in pyfragnn/data", "")


@dataclass
class ReferenceConfig:
    method: str = _doc("reference method: 'emt', 'gfn2' (GFN2-xTB, tblite) or "
                       "'module:factory' (a function atoms -> ASE calculator, e.g. DFT)", "emt")
    max_force: float = _doc("outlier rule: reference structures with any |F| component above "
                            "this are left out of training and counted in the report", 20.0)
    max_energy_deviation: float = _doc(
        "outlier rule: energy per atom further than max(this, 8 x 1.4826 MAD) eV/atom from "
        "the median of structures with the same composition is left out and counted "
        "(pyfragnn.outliers)", 0.2)


@dataclass
class RelaxConfig:
    steps: int = _doc("BFGS steps of the positions with the reference method (cell fixed); "
                      "0: use the structure as given", 50)
    fmax: float = _doc("convergence of the relaxation (largest |F|)", 0.05)


@dataclass
class RangeConfig:
    r_c: float = _doc("ACSF cutoff R_c = small-fragment radius; 0: from the Hessian "
                      "analysis of the reference method, R_c = R_frag^conv / 2 (section 2.2)",
                      0.0)
    threshold: float = _doc("Hessian analysis: truncation error allowed for R_frag^conv",
                            0.125)
    delta: float = _doc("Hessian analysis: displacement scale of the truncation estimate",
                        0.1)
    fd_step: float = _doc("Hessian analysis: finite-difference step", 0.01)


@dataclass
class InitialConfig:
    fragments_per_site: int = _doc("small fragments per site cut from the relaxed structure "
                                   "for the reference MD in vacuum", 1)
    md_steps: int = _doc("reference MD steps per fragment in vacuum (Langevin)", 200)
    md_temperature: float = _doc("temperature of the fragment MD", 500.0)
    timestep_fs: float = _doc("MD time step", 0.5)
    sample_every: int = _doc("keep every N-th MD frame (with its reference labels)", 10)
    rattled: int = _doc("extra rattled/strained copies of each fragment, labelled", 2)
    rattle: float = _doc("Gaussian displacement sigma of those copies", 0.05)


@dataclass
class SamplingConfig:
    temperatures: List[float] = _doc("bulk MD temperatures with the preliminary potential, "
                                     "one run each", factory=lambda: [300.0, 500.0])
    runs: int = _doc("MD runs per temperature (other seeds); each stops where the "
                     "preliminary potential heats the system past 1.5 x its temperature", 1)
    md_steps: int = _doc("MD steps per run (Langevin, 0.5 fs)", 400)
    sample_every: int = _doc("snapshot every N steps", 50)
    strain: float = _doc("random symmetric strain (max component) of extra snapshots", 0.02)
    strained: int = _doc("extra strained + rattled copies of the relaxed structure", 2)
    rattle: float = _doc("Gaussian displacement sigma of the strained copies", 0.04)
    restarts: int = _doc("a run stopped early is restarted from the relaxed structure with "
                         "another seed, up to this many times, until it has "
                         "md_steps / sample_every frames", 0)
    stop_deviation: float = _doc("also stop a run after the first snapshot whose largest "
                                 "force deviation between the two preliminary potentials "
                                 "exceeds this (eV/Å; 0: off): the preliminary potential has "
                                 "entered a hole there, and the later frames (bonds stretched "
                                 "far beyond the bulk's, forces of 10-20 eV/Å) would only teach "
                                 "the wreck", 0.0)


@dataclass
class FragmentsConfig:
    small_per_site: int = _doc("small fragments (radius fragments.small_radius) per site and "
                                 "snapshot", 1)
    large_per_site: int = _doc("large fragments (radius 2 R_c) per site and snapshot", 1)
    cap: bool = _doc("cap broken covalent bonds with H", True)
    small_radius: float = _doc(
        "radius of the small fragments in Å (HDNNP1's data, snapshots and active-learning "
        "candidates); 0: R_c, the paper's choice. With a network cutoff R_c below the "
        "reference method's range (R_frag^conv / 2 of the Hessian analysis), cut them at that "
        "range: the central atoms' reference energies then converge (large fragments stay at "
        "2 R_c)", 0.0)
    max_bond_stretch: float = _doc(
        "a snapshot whose bond (topology of the relaxed structure) is longer than this factor "
        "times its relaxed length is skipped and reported", 1.25)


@dataclass
class TrainingConfig:
    epochs: int = _doc("EKF epochs of every HDNNP", 20)
    hidden: List[int] = _doc("hidden layers of HDNNP1/2/3", factory=lambda: [10, 10])
    committee_hidden: List[int] = _doc("hidden layers of HDNNP1's committee partner (another "
                                       "architecture and seed, section 3)",
                                       factory=lambda: [12, 8])
    radial_n: int = _doc("shifted radial ACSFs (type 2) per element pair", 5)
    r_min: float = _doc("smallest radial shift", 0.8)
    angular_zeta: List[float] = _doc("zetas of the wide angular ACSFs (type 9, eta 0.02, "
                                     "lambda +-1)", factory=lambda: [1.0, 4.0])
    force_fraction: float = _doc("EKF force updates per epoch / force components", 0.02315)
    test_fraction: float = _doc("held-out fraction per fragment type", 0.1)
    kalman_decoupled: bool = _doc("element-decoupled Kalman filter (one covariance block per "
                                  "element, shared innovation; RuNNer's choice): less filter "
                                  "work per update, another model (demo data, 1379 fragments, "
                                  "15 epochs: 1.5x faster, bulk force RMSE 0.066 against "
                                  "0.059 eV/Å, Zn 0.064 against 0.034)", False)
    hdnnp3: bool = _doc("also train HDNNP3 (large fragments, cutoff 2 R_c)", False)


@dataclass
class ActiveConfig:
    iterations: int = _doc("active-learning iterations of HDNNP1 (0: none)", 3)
    engine: str = _doc("exploration MD: 'lammps' (pair_style fragnn with the committee, "
                       "compute fragnn/atom dumps, fix halt; Nose-Hoover) or 'ase' (Langevin)",
                       "lammps")
    ensemble: str = _doc("'nvt', 'npt' at 1 bar (isotropic; lammps engine only), or "
                         "'nvt+npt': every run in both, so that the exploration also covers "
                         "the NPT step's first stage (NVT at the relaxed volume)", "nvt")
    temperatures: List[float] = _doc("bulk MD temperatures explored per iteration (one run "
                                     "each)", factory=lambda: [300.0, 600.0])
    strains: List[float] = _doc("cell strains of extra runs at the first temperature "
                                "(lammps engine)", factory=list)
    supercell: List[int] = _doc("repetitions of the relaxed cell for the exploration",
                                factory=lambda: [1, 1, 1])
    nprocs: int = _doc("MPI ranks of the LAMMPS exploration", 1)
    md_steps: int = _doc("MD steps per run (0.5 fs)", 400)
    sample_every: int = _doc("frames checked every N steps", 20)
    check_every: int = _doc("lammps engine: committee checked every N steps (a divisor of "
                            "sample_every), steps between the samples with a flagged atom "
                            "dumped as well, one candidate per excursion; 0: sample_every",
                            0)
    tolerance: float = _doc("convergence: largest fraction of sampled atom-frames that may "
                            "deviate or extrapolate (0: none), with no run stopped early", 0.0)
    threshold: float = _doc("committee force deviation that makes an atom a candidate", 1.0)
    max_per_frame: int = _doc("candidates per frame", 3)
    min_separation: float = _doc("smallest distance between candidates of one frame", 3.0)
    max_candidates: int = _doc("candidates per iteration", 40)
    extrapolation_share: float = _doc(
        "share of max_candidates kept for atoms that only extrapolate (deviation below the "
        "threshold), the rest for the deviating ones; a kind with fewer atoms leaves its "
        "places to the other (0: ranked together, the deviating first)", 0.5)
    epochs: int = _doc("fine-tuning epochs per iteration (weights and Kalman filter continue)",
                       4)
    stop_deviation: float = _doc("halt a run after the first sampled frame whose largest "
                                 "committee force deviation exceeds this (eV/Å; 0: off), so "
                                 "that the candidates come from the frames leading into a hole, "
                                 "not from the wreck after it", 0.0)
    max_bond_stretch: float = _doc(
        "bond-stretch limit (x relaxed length) of the candidates' fragments: a potential that "
        "stretches a bond learns the restoring force from these labels; beyond the limit the "
        "candidate is skipped and reported", 1.5)
    large_fragments: bool = _doc(
        "also cut large fragments (2 R_c) around the candidates for HDNNP2/3, so that the "
        "controls see the same bulk structures and centres as HDNNP1 (section 3)", True)
    select: str = _doc(
        "the committee shipped when the loop ends unconverged: 'best' (of the explored "
        "committees, the last one explored once more, the one with no run stopped and the "
        "fewest flagged atom-frames) or 'last' (the one trained last)", "best")
    small_per_candidate: int = _doc(
        "small fragments (R_c) per candidate: the candidate's own and ones centred on atoms "
        "drawn from its R_c sphere, so that HDNNP1 gets complete R_c environments of the "
        "atoms around it as the candidate's large fragment holds them (at a fraction of the "
        "reference cost)", 1)


@dataclass
class ValidationConfig:
    md_frames: int = _doc("held-out bulk frames per temperature from MD with the final "
                          "HDNNP1", 4)
    md_temperatures: List[float] = _doc("temperatures of that MD (one run each)",
                                        factory=lambda: [300.0])
    md_steps: int = _doc("MD steps between the validation frames", 100)
    distorted: int = _doc("held-out rattled + strained cells", 2)
    rattle: float = _doc("their Gaussian displacement sigma", 0.05)
    strain: float = _doc("their largest strain component", 0.01)


@dataclass
class MDConfig:
    steps: int = _doc("LAMMPS NVE steps with HDNNP1 (0: no MD check)", 2000)
    timestep_fs: float = _doc("time step", 0.5)
    temperature: float = _doc("initial temperature", 300.0)
    supercell: List[int] = _doc("repetitions of the relaxed cell", factory=lambda: [2, 2, 2])
    nprocs: int = _doc("MPI ranks (mpirun -np)", 2)
    max_drift: float = _doc("largest |total-energy drift| per atom over the run that passes",
                            1e-3)


@dataclass
class NPTConfig:
    steps: int = _doc("LAMMPS Nosé-Hoover NPT steps (0.5 fs) with HDNNP1 after the "
                      "equilibration, per structure (0: no NPT check); the lattice constant is "
                      "the mean over the second half (section 4.4)", 0)
    equilibration_steps: int = _doc("NVT steps, then as many Berendsen-barostat steps "
                                    "(orthogonal cells), before the NPT run", 4000)
    temperature: float = _doc("temperature", 300.0)
    pressure_bar: float = _doc("pressure (bar)", 1.0)
    cell: List[int] = _doc("3x3 integer matrix, row by row, that makes the simulation cell "
                           "from the relaxed one (ase.build.make_supercell), e.g. the "
                           "conventional cubic cell of an fcc primitive cell: "
                           "[-1,1,1, 1,-1,1, 1,1,-1]; empty: md.supercell", factory=list)
    nprocs: int = _doc("MPI ranks (mpirun -np)", 2)
    pressure_frames: int = _doc("frames of the pressure check against the reference method at "
                                "the NPT cell (pyfragnn.validation.pressure_check; two cells, "
                                "so 2 x this many reference calls of the relaxed cell); 0: "
                                "none", 0)


@dataclass
class WorkflowConfig:
    run: RunConfig = _doc("where and how", factory=RunConfig)
    structures: List[StructureConfig] = _doc("periodic structures (one [[structures]] table "
                                             "each)", factory=list)
    reference: ReferenceConfig = _doc("reference method", factory=ReferenceConfig)
    relax: RelaxConfig = _doc("relaxation", factory=RelaxConfig)
    range: RangeConfig = _doc("interaction range and cutoff", factory=RangeConfig)
    initial: InitialConfig = _doc("initial data: reference MD of small fragments in vacuum",
                                  factory=InitialConfig)
    sampling: SamplingConfig = _doc("bulk snapshots from MD with the preliminary potential",
                                    factory=SamplingConfig)
    fragments: FragmentsConfig = _doc("small and large fragments of the snapshots",
                                      factory=FragmentsConfig)
    training: TrainingConfig = _doc("HDNNP training (EKF)", factory=TrainingConfig)
    active: ActiveConfig = _doc("active learning of HDNNP1", factory=ActiveConfig)
    validation: ValidationConfig = _doc("held-out bulk validation", factory=ValidationConfig)
    md: MDConfig = _doc("LAMMPS NVE stability check", factory=MDConfig)
    npt: NPTConfig = _doc("LAMMPS NPT lattice constants with HDNNP1 (section 4.4)",
                          factory=NPTConfig)
    #: folder of the configuration file (paths are relative to it); not a TOML key
    base_dir: str = field(default=".", metadata={"internal": True})

    def section(self, name: str) -> Dict[str, Any]:
        """Plain dict of one table, or of one key ``'table.key'`` (for fingerprints);
        ``'seed'`` is ``run.seed`` alone (the folder and the worker count change no result)."""
        if name == "seed":
            return {"seed": self.run.seed}
        if "." in name:  # one key, e.g. "training.epochs"
            table, key = name.split(".")
            return {key: getattr(getattr(self, table), key)}
        v = getattr(self, name)
        if isinstance(v, list):
            return {"items": [dataclasses.asdict(x) for x in v]}
        d = dataclasses.asdict(v)
        for key, old in _ADDED_KEYS.get(name, {}).items():
            if d.get(key) == old:  # the behaviour from before the key existed
                del d[key]
        return d

    def path(self, p: str) -> Path:
        """A path of the configuration resolved against its folder."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q


def _type_name(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp))


def _check_scalar(key: str, tp: Any, v: Any) -> Any:
    if tp is bool:
        if not isinstance(v, bool):
            raise WorkflowConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise WorkflowConfigError(f"{key}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise WorkflowConfigError(f"{key}: expected a finite number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise WorkflowConfigError(f"{key}: expected a string, got {v!r}")
        return v
    raise AssertionError(tp)  # pragma: no cover


def _build(cls: Any, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise WorkflowConfigError(f"{prefix or 'configuration'}: expected a table, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise WorkflowConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                                  + ", ".join(f"{prefix}{k}" for k in unknown)
                                  + f" (known: {', '.join(sorted(fields))})")
    kw = {}
    for name, v in data.items():
        key, tp = prefix + name, hints[name]
        if dataclasses.is_dataclass(tp):
            kw[name] = _build(tp, v, key + ".")
        elif get_origin(tp) in (list, List):
            (inner,) = get_args(tp)
            if not isinstance(v, list):
                raise WorkflowConfigError(f"{key}: expected a list, got {v!r}")
            if dataclasses.is_dataclass(inner):
                kw[name] = [_build(inner, x, f"{key}[{i}].") for i, x in enumerate(v)]
            else:
                kw[name] = [_check_scalar(f"{key}[{i}]", inner, x) for i, x in enumerate(v)]
        else:
            kw[name] = _check_scalar(key, tp, v)
    return cls(**kw)


#: keys added after finished runs existed, with the value that reproduces the behaviour from
#: before: at that value they are left out of the fingerprints (WorkflowConfig.section), so
#: that a new key does not make those runs redo their steps
_ADDED_KEYS: Dict[str, Dict[str, Any]] = {"active": {"check_every": 0}}

_POSITIVE = ("run.workers", "training.epochs", "training.radial_n", "md.nprocs",
             "initial.sample_every", "sampling.sample_every", "active.sample_every",
             "md.timestep_fs", "initial.timestep_fs", "relax.fmax", "fragments.max_bond_stretch",
             "active.max_bond_stretch", "active.small_per_candidate",
             "reference.max_force", "reference.max_energy_deviation", "range.threshold",
             "range.delta", "range.fd_step", "active.max_per_frame", "active.max_candidates")
_NON_NEGATIVE = ("relax.steps", "active.check_every", "range.r_c", "initial.md_steps",
                 "initial.rattled",
                 "initial.rattle", "sampling.md_steps", "sampling.strained", "sampling.rattle",
                 "sampling.strain", "sampling.runs", "fragments.small_per_site", "fragments.large_per_site",
                 "fragments.small_radius",
                 "training.force_fraction", "active.iterations", "active.epochs",
                 "sampling.restarts", "sampling.stop_deviation", "active.stop_deviation",
                 "active.threshold", "active.min_separation", "active.tolerance",
                 "active.extrapolation_share", "validation.md_frames",
                 "validation.md_steps", "validation.distorted", "validation.rattle",
                 "validation.strain", "md.steps", "md.max_drift", "initial.fragments_per_site",
                 "npt.steps", "npt.equilibration_steps", "npt.pressure_frames")
_POSITIVE += ("npt.temperature", "npt.nprocs")


def _validate(cfg: WorkflowConfig) -> None:
    def get(key: str) -> Any:
        sec, name = key.split(".")
        return getattr(getattr(cfg, sec), name)

    for k in _POSITIVE:
        if get(k) <= 0:
            raise WorkflowConfigError(f"{k}: must be > 0, got {get(k)!r}")
    for k in _NON_NEGATIVE:
        if get(k) < 0:
            raise WorkflowConfigError(f"{k}: must be >= 0, got {get(k)!r}")
    for k in ("fragments.max_bond_stretch", "active.max_bond_stretch"):
        if not get(k) > 1.0:
            raise WorkflowConfigError(f"{k}: must be > 1 (a factor on the relaxed bond "
                                      f"length), got {get(k)!r}")
    if not 0.0 <= cfg.training.test_fraction < 1.0:
        raise WorkflowConfigError("training.test_fraction: must be in [0, 1)")
    if not cfg.active.extrapolation_share <= 1.0:
        raise WorkflowConfigError("active.extrapolation_share: must be in [0, 1], got "
                                  f"{cfg.active.extrapolation_share!r}")
    for k in ("training.hidden", "training.committee_hidden"):
        if not get(k) or any(n < 1 for n in get(k)):
            raise WorkflowConfigError(f"{k}: needs at least one layer, each >= 1 node")
    for k in ("md.supercell", "active.supercell"):
        if len(get(k)) != 3 or any(n < 1 for n in get(k)):
            raise WorkflowConfigError(f"{k}: three integers >= 1")
    if any(not t > 0 for t in cfg.validation.md_temperatures):
        raise WorkflowConfigError("validation.md_temperatures: temperatures must be > 0")
    if cfg.npt.cell and (len(cfg.npt.cell) != 9 or round(abs(np.linalg.det(
            np.reshape(cfg.npt.cell, (3, 3))))) < 1):
        raise WorkflowConfigError("npt.cell: nine integers (a 3x3 matrix, row by row) with a "
                                  f"nonzero determinant, got {cfg.npt.cell!r}")
    if cfg.active.engine not in ("lammps", "ase"):
        raise WorkflowConfigError(f"active.engine: 'lammps' or 'ase', got {cfg.active.engine!r}")
    if cfg.active.ensemble not in ("nvt", "npt", "nvt+npt"):
        raise WorkflowConfigError("active.ensemble: 'nvt', 'npt' or 'nvt+npt', got "
                                  f"{cfg.active.ensemble!r}")
    if cfg.active.ensemble != "nvt" and cfg.active.engine != "lammps":
        raise WorkflowConfigError(f"active.ensemble: {cfg.active.ensemble!r} needs "
                                  "active.engine = 'lammps'")
    if cfg.active.check_every and cfg.active.sample_every % cfg.active.check_every:
        raise WorkflowConfigError(f"active.check_every: must divide active.sample_every "
                                  f"({cfg.active.sample_every}), got {cfg.active.check_every}")
    if cfg.active.select not in ("best", "last"):
        raise WorkflowConfigError(f"active.select: 'best' or 'last', got {cfg.active.select!r}")
    if cfg.active.nprocs < 1:
        raise WorkflowConfigError("active.nprocs: must be >= 1")
    if not cfg.structures:
        raise WorkflowConfigError("structures: at least one [[structures]] table with 'file'")
    names = set()
    for i, s in enumerate(cfg.structures):
        if not s.file:
            raise WorkflowConfigError(f"structures[{i}].file: missing")
        s.name = s.name or Path(s.file).stem
        if s.name in names:
            raise WorkflowConfigError(f"structures[{i}].name: {s.name!r} used twice")
        names.add(s.name)
    from ..labelling import check_calculator_spec

    try:
        check_calculator_spec(cfg.reference.method)
    except (TypeError, ValueError) as exc:
        raise WorkflowConfigError(f"reference.method: {exc}") from None


def config_from_dict(data: Dict[str, Any], base_dir: Union[str, Path] = ".") -> WorkflowConfig:
    """Build and check a :class:`WorkflowConfig` from a parsed TOML dict."""
    cfg = _build(WorkflowConfig, data, "")
    cfg.base_dir = str(Path(base_dir).resolve())
    _validate(cfg)
    return cfg


def load_config(path: Union[str, Path]) -> WorkflowConfig:
    """Read a workflow TOML file; errors name the file and the key."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowConfigError(f"{p}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WorkflowConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return config_from_dict(data, p.resolve().parent)
    except WorkflowConfigError as exc:
        raise WorkflowConfigError(f"{p}: {exc}") from None


def describe() -> str:
    """Every table and key with its type, default and documentation (plain text)."""
    out: List[str] = []

    def walk(cls: Any, prefix: str) -> None:
        hints = get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            tp = hints[f.name]
            inner: Tuple[Any, ...] = get_args(tp)
            if dataclasses.is_dataclass(tp) or (inner and dataclasses.is_dataclass(inner[0])):
                sub = tp if dataclasses.is_dataclass(tp) else inner[0]
                brackets = "[[{}]]" if inner else "[{}]"
                out.append(f"\n{brackets.format(prefix + f.name)}  # {f.metadata['doc']}")
                walk(sub, "")
            else:
                out.append(f"{prefix}{f.name} = {json.dumps(getattr(inst, f.name))}  "
                           f"# {f.metadata['doc']}")

    walk(WorkflowConfig, "")
    return "\n".join(out).lstrip() + "\n"

"""Reference labelling (energies, forces) of fragments and periodic cells, parallel and resumable.

``label(structures, output, calculator="gfn2", workers=2)`` computes every structure with an
ASE calculator and appends each result as one extxyz frame to ``output``. Where the
calculations run:

* default: ``workers`` local processes (a ``concurrent.futures.ProcessPoolExecutor``);
  ``workers=0`` computes in the calling process;
* ``executor=``: any ``concurrent.futures.Executor`` (or a ``dask.distributed.Client``), e.g.
  ``mpi4py.futures.MPIPoolExecutor()`` or ``Client(cluster).get_executor()`` for a Dask cluster
  (dask-jobqueue's ``SLURMCluster`` runs each worker as a batch job); :func:`make_executor`
  builds one from a CLI string (``process``, ``mpi``, ``dask``, ``dask:ADDRESS``,
  ``module:function``);
* under ``mpirun`` with mpi4py (more than one rank, no executor): a master/worker scheme, rank
  0 writes, ranks >= 1 compute; under ``mpirun ... python -m mpi4py.futures`` the
  ``MPIPoolExecutor`` of that shared pool.

Only the calling process writes, whatever the executor, so resuming works the same way:

* frame = the input atoms with all ``info``/``arrays`` (type label, ``central``, ``cap``, ...),
  ``energy`` (eV) and ``forces`` (eV/Å, shape (N, 3)) as calculator results, plus
  ``label_key``, ``label_index``, ``label_method``, ``label_seconds`` in ``info``;
* each frame is written with a single ``write`` on an ``O_APPEND`` descriptor followed by
  ``fsync``; a torn last frame left by a crash is truncated away on the next start, so a crash
  loses at most the structures in progress;
* a failed calculation is appended to ``<output>.failed.jsonl`` (key, index, error) and the run
  goes on; on restart finished and failed keys are skipped (``retry_failed=True`` retries the
  failed ones).

Identical inputs are computed once: periodic structures with the same :func:`structure_hash`
(numbers, positions and cell to 8 decimals, pbc, charge, multiplicity), molecules also when
their atoms are reordered or translated (positions relative to the centroid equal to 1e-5 Å;
e.g. one fragment reached from two centres). The
result is written for each input under its own key and index, forces in its own atom order
(``LabelSummary.n_duplicates`` counts the copies), also when the identical structure was
finished in an earlier run.

Structure keys are ``"<index>-<sha1 of numbers, positions, cell, pbc, charge, multiplicity>"``
(or ``info["label_key"]`` when present), so a restart with the same input skips exactly the
finished structures. Positions and cell enter the hash as the text ASE's extxyz writer
produces for positions (``%.8f``), which is idempotent under format -> parse -> format: a
structure held in memory and the same structure re-read from an extxyz file written by ASE get
the same key (see :func:`structure_key`). Label files written before this key format (hash of
positions rounded to 1e-6 Å, which a round trip could flip) are still resumed: their keys are
recognised as well.

Calculators: ``"emt"`` (ASE EMT), ``"gfn2"`` / ``"gfn1"`` (tblite; charge and multiplicity from
``info["charge"]``/``info["multiplicity"]``; periodic cells at Γ; ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` set to ``omp_threads`` = 1 per worker by default), ``"package.module:factory"`` (``factory(atoms)``
returns a calculator), or a picklable callable ``factory(atoms)``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = [
    "make_calculator",
    "check_calculator_spec",
    "compute",
    "compute_many",
    "structure_key",
    "structure_hash",
    "legacy_structure_key",
    "labelled_in_order",
    "label",
    "make_executor",
    "LabelSummary",
    "read_dataset",
    "repair_extxyz",
    "register_cli",
]

CalcSpec = Union[str, Callable[[Atoms], Any]]


# --------------------------------------------------------------------------- calculators
def make_calculator(spec: CalcSpec, atoms: Atoms):
    """Build a calculator for ``atoms`` from ``spec`` (see module docstring)."""
    if callable(spec):
        return spec(atoms)
    if not isinstance(spec, str):
        raise TypeError(f"calculator spec must be a string or callable, got {type(spec).__name__}")
    name = spec.strip()
    low = name.lower()
    if low == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if low in ("gfn2", "gfn2-xtb", "gfn1", "gfn1-xtb", "ipea1"):
        try:
            from tblite.ase import TBLite
        except ImportError as exc:  # pragma: no cover - depends on installation
            raise ImportError("calculator 'gfn2' needs the 'tblite' package (pip install tblite)") from exc
        method = {"gfn2": "GFN2-xTB", "gfn2-xtb": "GFN2-xTB", "gfn1": "GFN1-xTB",
                  "gfn1-xtb": "GFN1-xTB", "ipea1": "IPEA1-xTB"}[low]
        charge = int(atoms.info.get("charge", 0))
        mult = int(atoms.info.get("multiplicity", 1))
        return TBLite(method=method, charge=charge, multiplicity=mult, verbosity=0)
    if ":" in name:
        import importlib

        mod, _, fn = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"calculator spec {spec!r}: cannot import factory {fn!r} from {mod!r}") from exc
        return factory(atoms)
    raise ValueError(f"unknown calculator spec {spec!r}: use 'emt', 'gfn2', 'module:factory' or a callable")


_BUILTIN = ("emt", "gfn2", "gfn2-xtb", "gfn1", "gfn1-xtb", "ipea1")


def check_calculator_spec(spec: CalcSpec) -> None:
    """Raise ``ValueError`` naming ``spec`` if it cannot give a calculator (checked before any
    worker starts, so a typo is not recorded as one failure per structure)."""
    if callable(spec):
        return
    if not isinstance(spec, str):
        raise TypeError(f"calculator spec must be a string or callable, got {type(spec).__name__}")
    low = spec.strip().lower()
    if low in _BUILTIN:
        if low != "emt":
            import importlib.util

            if importlib.util.find_spec("tblite") is None:
                raise ValueError(f"calculator spec {spec!r} needs the 'tblite' package")
        return
    if ":" in spec:
        import importlib

        mod, _, fn = spec.strip().partition(":")
        try:
            getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"calculator spec {spec!r}: cannot import factory {fn!r} from {mod!r}") from exc
        return
    raise ValueError(f"unknown calculator spec {spec!r}: use 'emt', 'gfn2', 'module:factory' or a callable")


def _method_name(spec: CalcSpec) -> str:
    if callable(spec):
        return getattr(spec, "__qualname__", repr(spec))
    return str(spec)


def compute(atoms: Atoms, calculator: CalcSpec) -> Atoms:
    """Energy (eV) and forces (eV/Å) of a copy of ``atoms``; results in a SinglePointCalculator."""
    a = atoms.copy()
    a.calc = make_calculator(calculator, a)
    t0 = time.perf_counter()
    e = float(a.get_potential_energy())
    f = np.array(a.get_forces(), float)
    extra: Dict[str, Any] = {}
    try:
        if "energies" in getattr(a.calc, "implemented_properties", ()):
            extra["energies"] = np.array(a.calc.get_property("energies", a), float)
    except Exception:  # pragma: no cover - optional property
        pass
    dt = time.perf_counter() - t0
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=e, forces=f, **extra)
    out.info["label_seconds"] = round(dt, 4)
    return out


def _extxyz_text(values) -> bytes:
    """Numbers as ASE's extxyz writer formats positions ('%16.8f', without the padding), with
    negative zero written as zero. format(parse(format(x))) == format(x) for |x| < 1e6: parsing
    an 8-decimal string gives a double within 1e-10 of it, far from the next rounding
    boundary (5e-9 away), so the text survives any number of write/read round trips."""
    txt = " ".join("%.8f" % x for x in np.asarray(values, float).ravel())
    return txt.replace("-0.00000000", "0.00000000").encode()


def _canonical_number(v: Any) -> str:
    """charge / multiplicity as text that survives an extxyz info round trip (0 == 0.0)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else repr(f)


def structure_key(atoms: Atoms, index: int) -> str:
    """Stable key ``"<index>-<sha1[:16]>"`` of a structure (or ``info['label_key']``).

    The hash covers atomic numbers, positions and cell as the text ASE's extxyz writer gives
    positions ('%.8f' Å; the cell is written losslessly, so its 8-decimal text is stable too),
    pbc, and charge/multiplicity from ``info``. The key is therefore the same for a structure in
    memory and after ``ase.io.write``/``read`` in extxyz (positions written with 8 decimals);
    structures that differ by less than ~1e-8 Å share a key.
    """
    if "label_key" in atoms.info:
        return str(atoms.info["label_key"])
    return f"{index}-{structure_hash(atoms)}"


def structure_hash(atoms: Atoms) -> str:
    """The content part of :func:`structure_key` (sha1[:16], ignores ``info['label_key']``):
    equal for structures with the same numbers, positions and cell to 8 decimals (Å), pbc,
    charge and multiplicity. :func:`label` computes each distinct hash once."""
    h = hashlib.sha1()
    h.update(b"pyfragnn-key-2\n")
    h.update(np.asarray(atoms.numbers, np.int64).tobytes())
    h.update(b"\npos ")
    h.update(_extxyz_text(atoms.positions))
    h.update(b"\ncell ")
    h.update(_extxyz_text(atoms.cell[:]))
    h.update(b"\npbc ")
    h.update(np.asarray(atoms.pbc, bool).tobytes())
    h.update(f"\n{_canonical_number(atoms.info.get('charge', 0))}/"
             f"{_canonical_number(atoms.info.get('multiplicity', 1))}".encode())
    return h.hexdigest()[:16]


def legacy_structure_key(atoms: Atoms, index: int) -> str:
    """The key of label files written before the extxyz-stable key (positions and cell rounded
    to 1e-6 Å, which an extxyz round trip can flip at a rounding boundary); :func:`label`
    accepts it so that such files are resumed."""
    if "label_key" in atoms.info:
        return str(atoms.info["label_key"])
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, np.int64).tobytes())
    h.update(np.round(np.asarray(atoms.positions, float), 6).tobytes())
    h.update(np.round(np.asarray(atoms.cell, float), 6).tobytes())
    h.update(np.asarray(atoms.pbc, bool).tobytes())
    h.update(f"{atoms.info.get('charge', 0)}/{atoms.info.get('multiplicity', 1)}".encode())
    return f"{index}-{h.hexdigest()[:16]}"


def labelled_in_order(items: Sequence[Atoms], frames: Sequence[Atoms]) -> List[Optional[Atoms]]:
    """For each input structure (index = position in ``items``) its labelled frame among
    ``frames`` (e.g. :func:`read_dataset` of the output of :func:`label`), matched by
    :func:`structure_key` or, for files written before it, :func:`legacy_structure_key`;
    None where there is none."""
    by_key = {str(f.info["label_key"]): f for f in frames if "label_key" in f.info}
    out: List[Optional[Atoms]] = []
    for i, a in enumerate(items):
        f = by_key.get(structure_key(a, i))
        if f is None:
            f = by_key.get(legacy_structure_key(a, i))
        out.append(f)
    return out


# --------------------------------------------------------------------------- worker side
_WORKER_SPEC: Optional[CalcSpec] = None


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _thread_env(n: Optional[int]):
    """Temporarily set OpenMP/BLAS thread counts to ``n`` (inherited by spawned workers; without
    the BLAS variables numpy's OpenBLAS threads oversubscribe the cores and halve throughput)."""
    old = {v: os.environ.get(v) for v in _THREAD_VARS}
    if n:
        for v in _THREAD_VARS:
            os.environ[v] = str(int(n))
    try:
        yield
    finally:
        if n:
            for v, val in old.items():
                if val is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = val


def _init_worker(spec: CalcSpec, omp_threads: Optional[int]) -> None:
    global _WORKER_SPEC
    _WORKER_SPEC = spec
    if omp_threads:
        for v in _THREAD_VARS:
            os.environ[v] = str(int(omp_threads))


def _run_task(spec: CalcSpec, omp_threads: Optional[int],
              task: Tuple[int, str, Atoms]) -> Tuple[int, str, Optional[Atoms], Optional[str]]:
    """One structure on an executor's worker (a process of ours, an MPI rank, a Dask worker):
    the calculator spec travels with the task; OpenMP/BLAS threads are limited to
    ``omp_threads`` for its duration (environment, for calculators that start programs, and
    the already loaded thread pools through threadpoolctl)."""
    global _WORKER_SPEC
    _WORKER_SPEC = spec
    with _thread_env(omp_threads), _thread_limits(omp_threads):
        return _run_one(task)


@contextmanager
def _thread_limits(n: Optional[int]):
    if not n:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=int(n)):
        yield


def _run_one(task: Tuple[int, str, Atoms]) -> Tuple[int, str, Optional[Atoms], Optional[str]]:
    index, key, atoms = task
    try:
        assert _WORKER_SPEC is not None
        return index, key, compute(atoms, _WORKER_SPEC), None
    except Exception as exc:  # failed SCF etc.: report, do not die
        tb = traceback.format_exc(limit=3)
        return index, key, None, f"{type(exc).__name__}: {exc}\n{tb}"


# --------------------------------------------------------------------------- file handling
def _frame_spans(text: str) -> Tuple[List[Tuple[int, int]], int]:
    """Byte-free line scan of an extxyz text: list of (start, end) character spans of complete
    frames and the end offset of the last complete frame."""
    spans: List[Tuple[int, int]] = []
    pos = 0
    n = len(text)
    while pos < n:
        nl = text.find("\n", pos)
        if nl < 0:
            break
        head = text[pos:nl].strip()
        if not head:
            pos = nl + 1
            continue
        try:
            natoms = int(head)
        except ValueError:
            break
        end = nl + 1
        ok = True
        for _ in range(natoms + 1):
            nxt = text.find("\n", end)
            if nxt < 0:
                ok = False
                break
            end = nxt + 1
        if not ok:
            break
        spans.append((pos, end))
        pos = end
    good_end = spans[-1][1] if spans else 0
    return spans, good_end


def repair_extxyz(path: Union[str, Path]) -> int:
    """Truncate a torn trailing frame (crash during a write); returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    _, good = _frame_spans(text)
    good_b = len(text[:good].encode("utf-8", errors="replace"))
    removed = len(data) - good_b
    if removed > 0:
        with open(path, "r+b") as fh:
            fh.truncate(good_b)
            fh.flush()
            os.fsync(fh.fileno())
        print(f"label: removed a torn {removed}-byte frame at the end of {path}", file=sys.stderr)
    return removed


def _done_keys(path: Path) -> Set[str]:
    from ase.io.extxyz import key_val_str_to_dict

    if not path.exists():
        return set()
    text = path.read_text()
    spans, _ = _frame_spans(text)
    keys: Set[str] = set()
    for s, e in spans:
        l1 = text.find("\n", s) + 1
        l2 = text.find("\n", l1)
        d = key_val_str_to_dict(text[l1:l2])
        if "label_key" in d:
            keys.add(str(d["label_key"]))
    return keys


def _failed_keys(path: Path) -> Set[str]:
    keys: Set[str] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                keys.add(str(json.loads(line)["key"]))
            except (ValueError, KeyError):
                continue  # torn last line
    return keys


def _append(path: Path, payload: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = payload.encode()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame_text(atoms: Atoms) -> str:
    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    return buf.getvalue()


def read_dataset(path: Union[str, Path]) -> List[Atoms]:
    """All complete frames of a labelled extxyz data set (a torn last frame is ignored)."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data set {path} does not exist")
    text = path.read_text()
    _, good = _frame_spans(text)
    if good == 0:
        return []
    return read(io.StringIO(text[:good]), index=":", format="extxyz")


# --------------------------------------------------------------------------- driver
@dataclass
class LabelSummary:
    """Outcome of one ``label`` run; times in s."""

    n_total: int
    n_already_done: int
    n_computed: int
    n_failed: int
    n_skipped_failed: int
    wall_s: float
    n_duplicates: int = 0  # inputs labelled with the result of an identical input (no calculation)

    @property
    def per_structure_s(self) -> float:
        return self.wall_s / self.n_computed if self.n_computed else float("nan")


def _load_structures(structures: Union[str, Path, Sequence[Atoms]]) -> List[Atoms]:
    if isinstance(structures, (str, Path)):
        from ase.io import read

        p = Path(structures)
        if not p.exists():
            raise FileNotFoundError(f"input structures file {p} does not exist")
        return list(read(p, index=":"))
    return list(structures)


def _mpi_size_from_env() -> int:
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 1


def label(
    structures: Union[str, Path, Sequence[Atoms]],
    output: Union[str, Path],
    calculator: CalcSpec = "emt",
    workers: int = 1,
    retry_failed: bool = False,
    omp_threads: Optional[int] = 1,
    start_method: str = "spawn",
    progress: Optional[bool] = None,
    mpi: Optional[bool] = None,
    executor: Optional[Any] = None,
) -> LabelSummary:
    """Label ``structures`` (list of Atoms or a file) into the extxyz data set ``output``.

    ``workers`` local processes (0: compute in this process), or ``executor``: any
    ``concurrent.futures.Executor`` (``MPIPoolExecutor``, a Dask ``Client``'s executor, ...) or
    a ``dask.distributed.Client``; it is used, not shut down. Without an executor, ``mpi=None``
    switches to mpi4py when started under ``mpirun`` with more than one rank (to the shared
    pool's ``MPIPoolExecutor`` under ``python -m mpi4py.futures``). Returns a
    ``LabelSummary`` (on MPI worker ranks a summary with zero counts).
    """
    if workers < 0:
        raise ValueError(f"label: 'workers' must be >= 0, got {workers}")
    check_calculator_spec(calculator)
    out = Path(output)
    failed_path = out.with_name(out.name + ".failed.jsonl")
    items = _load_structures(structures)
    if executor is None and mpi is not False and _in_mpi4py_shared_pool():
        from mpi4py.futures import MPIPoolExecutor

        with MPIPoolExecutor() as pool:
            return label(items, output, calculator, workers, retry_failed, omp_threads,
                         start_method, progress, mpi=False, executor=pool)
    if executor is not None:
        executor = _as_executor(executor)
        mpi = False
    use_mpi = (_mpi_size_from_env() > 1) if mpi is None else mpi
    comm = None
    if use_mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if comm.Get_size() < 2:
            comm = None
    rank = comm.Get_rank() if comm is not None else 0
    if comm is not None and rank != 0:
        _mpi_worker(comm, calculator, omp_threads)
        return LabelSummary(len(items), 0, 0, 0, 0, 0.0)

    t0 = time.perf_counter()
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    repair_extxyz(out)
    done = _done_keys(out)
    failed = _failed_keys(failed_path)
    tasks: List[Tuple[int, str, Atoms]] = []
    n_done = n_skip = 0
    for i, a in enumerate(items):
        k = structure_key(a, i)
        old = legacy_structure_key(a, i)  # files written before the extxyz-stable key
        if k in done or old in done:
            n_done += 1
        elif (k in failed or old in failed) and not retry_failed:
            n_skip += 1
        else:
            tasks.append((i, k, a))
    method = _method_name(calculator)
    n_ok = n_fail = n_copy = 0

    def handle_one(index: int, key: str, res: Optional[Atoms], err: Optional[str],
                   copy: bool = False) -> None:
        nonlocal n_ok, n_fail, n_copy
        if res is None:
            n_fail += 1
            _append(failed_path, json.dumps({"key": key, "index": index, "method": method,
                                             "error": err, "time": time.time()}) + "\n")
            print(f"label: structure {index} ({key}) failed: {str(err).splitlines()[0]}",
                  file=sys.stderr)
            return
        res.info["label_key"] = key
        res.info["label_index"] = index
        res.info["label_method"] = method
        _append(out, _frame_text(res))
        if copy:
            n_copy += 1
        else:
            n_ok += 1

    # each distinct structure is computed once; its result is written for every identical input
    tasks, copies = _merge_duplicates(tasks)
    _copy_done_results(tasks, copies, n_done, out, handle_one)
    tasks = [t for t in tasks if t[1] not in copies or copies[t[1]] is not None]
    handle = _fan_out(handle_one, copies)

    from .progress import Progress

    bar = Progress(total=len(tasks), desc=f"label[{method}]",
                   disable=None if progress is None else not progress)
    with bar:
        if executor is not None:
            _run_on_executor(executor, calculator, omp_threads, tasks, handle, bar)
        elif comm is not None:
            _mpi_master(comm, tasks, handle, bar)
        elif workers == 0:
            _init_worker(calculator, None)
            for t in tasks:
                handle(*_run_one(t))
                bar.update()
        elif tasks:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # the workers inherit the thread limits from the environment at their start, before
            # numpy or the calculator loads a thread pool
            with _thread_env(omp_threads), ProcessPoolExecutor(
                    min(workers, len(tasks)), mp_context=mp.get_context(start_method)) as pool:
                _run_on_executor(pool, calculator, omp_threads, tasks, handle, bar)
    return LabelSummary(len(items), n_done, n_ok, n_fail, n_skip, time.perf_counter() - t0,
                        n_copy)


Task = Tuple[int, str, Atoms]


def _dedup_key(atoms: Atoms) -> Tuple[str, np.ndarray]:
    """``(key, order)``: inputs with equal keys are one calculation. Periodic structures:
    :func:`structure_hash`, identity order. Molecules (no pbc): the hash of the atoms sorted by
    element and position relative to their centroid (to 1e-5 Å), plus charge and
    multiplicity, so the same molecule in another atom order or translated by a lattice vector
    (a fragment reached from another centre) is recognised; ``order`` maps sorted to input
    atoms."""
    n = len(atoms)
    if np.any(atoms.pbc) or n == 0:
        return structure_hash(atoms), np.arange(n)
    # positions as an extxyz file gives them back, so that a re-read structure has the same key
    pos = np.array(_extxyz_text(atoms.positions).split(), float).reshape(-1, 3)
    r = np.round(pos - pos.mean(axis=0), 5) + 0.0  # 1e-5 Å: above the 1e-8 text noise
    order = np.lexsort((r[:, 2], r[:, 1], r[:, 0], atoms.numbers))
    h = hashlib.sha1(b"pyfragnn-molecule-1\n")
    h.update(np.asarray(atoms.numbers[order], np.int64).tobytes())
    h.update(" ".join("%.5f" % x for x in r[order].ravel()).encode())
    h.update(f"\n{_canonical_number(atoms.info.get('charge', 0))}/"
             f"{_canonical_number(atoms.info.get('multiplicity', 1))}".encode())
    return "m" + h.hexdigest()[:16], order


_Copies = Dict[str, Optional[List[Tuple[Task, np.ndarray, np.ndarray]]]]


def _merge_duplicates(tasks: List[Task]) -> Tuple[List[Task], _Copies]:
    """One task per distinct :func:`_dedup_key`; ``copies[key of the kept task]`` lists the
    identical inputs that get its result, each with its own and the kept task's atom order."""
    first: Dict[str, Tuple[str, np.ndarray]] = {}
    kept: List[Task] = []
    copies: _Copies = {}
    for t in tasks:
        h, order = _dedup_key(t[2])
        if h in first:
            rep_key, rep_order = first[h]
            copies[rep_key].append((t, order, rep_order))  # type: ignore[union-attr]
        else:
            first[h] = (t[1], order)
            copies[t[1]] = []
            kept.append(t)
    return kept, copies


def _copy_done_results(tasks: List[Task], copies: _Copies, n_done: int, out: Path,
                       handle) -> None:
    """On resume: pending inputs identical to a structure already in ``out`` get its result
    (``copies[key]`` is set to None for them)."""
    if not tasks or not n_done:
        return
    frames: Dict[str, Tuple[Atoms, np.ndarray]] = {}
    for f in read_dataset(out):
        h, order = _dedup_key(f)
        frames.setdefault(h, (f, order))
    for t in tasks:
        h, order = _dedup_key(t[2])
        if h not in frames:
            continue
        f, f_order = frames[h]
        for (i, k, a), o, fo in [(t, order, f_order)] + [(c[0], c[1], f_order)
                                                          for c in copies[t[1]] or []]:
            handle(i, k, _with_result(a, f, o, fo), None, copy=True)
        copies[t[1]] = None


def _with_result(atoms: Atoms, labelled: Atoms, order: np.ndarray,
                 labelled_order: np.ndarray) -> Atoms:
    """A copy of ``atoms`` carrying the results of the identical ``labelled`` (per-atom results
    such as forces mapped through both canonical orders)."""
    n = len(atoms)
    res = {}
    for name, v in labelled.calc.results.items():
        arr = np.asarray(v)
        if arr.ndim >= 1 and arr.shape[0] == n and name != "stress":
            mapped = np.empty_like(arr)
            mapped[order] = arr[labelled_order]
            res[name] = mapped
        else:
            res[name] = v
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, **res)
    out.info["label_seconds"] = labelled.info.get("label_seconds", 0.0)
    return out


def _fan_out(handle_one, copies: _Copies):
    """``handle`` for the executors: the result of a kept task is written for it and for every
    identical input (an error is recorded for each of them)."""
    def handle(index: int, key: str, res: Optional[Atoms], err: Optional[str]) -> None:
        dup = list(copies.get(key) or [])
        handle_one(index, key, res, err)
        for (i, k, a), order, rep_order in dup:
            handle_one(i, k, None if res is None else _with_result(a, res, order, rep_order),
                       err, copy=True)
    return handle


def _run_on_executor(executor: Executor, calculator: CalcSpec, omp_threads: Optional[int],
                     tasks: List[Tuple[int, str, Atoms]], handle, bar) -> None:
    """Submit every task, hand each result to ``handle`` (in this process) as it completes.

    A structure whose future fails (a worker lost, e.g. Dask's ``KilledWorker``) is recorded
    as failed like a failed calculation; a broken executor (a local worker process died)
    cancels the rest and raises: the finished structures are on disk, a rerun resumes."""
    from concurrent.futures import BrokenExecutor, as_completed

    pending = {executor.submit(_run_task, calculator, omp_threads, t): t for t in tasks}
    try:
        for fut in as_completed(list(pending)):
            index, key, _ = pending.pop(fut)
            try:
                r = fut.result()
            except BrokenExecutor:
                raise
            except Exception as exc:  # noqa: BLE001 - the executor lost this task
                r = (index, key, None, f"{type(exc).__name__} (executor): {exc}")
            handle(*r)
            bar.update()
    finally:
        for fut in pending:
            fut.cancel()


def _as_executor(obj: Any) -> Executor:
    """``obj`` itself if it is an Executor; a Dask ``Client``'s ``get_executor()``."""
    if isinstance(obj, Executor):
        return obj
    get = getattr(obj, "get_executor", None)
    if callable(get):
        ex = get()
        if isinstance(ex, Executor):
            return ex
    raise TypeError("label: 'executor' must be a concurrent.futures.Executor or a "
                    f"dask.distributed.Client, got {type(obj).__name__}")


def _in_mpi4py_shared_pool() -> bool:
    """True on the master of ``mpirun -n N python -m mpi4py.futures ...`` (the other ranks
    are waiting as the workers of an MPIPoolExecutor)."""
    core = sys.modules.get("mpi4py.futures._core")
    return getattr(core, "SharedPool", None) is not None


EXECUTOR_HELP = (
    "where the calculations run: 'process' (default: -j local worker processes); 'mpi' "
    "(mpi4py.futures.MPIPoolExecutor: run as 'mpirun -n N python -m mpi4py.futures -m pyfragnn "
    "label ...', N-1 workers); 'dask' (a local Dask cluster of -j worker processes); "
    "'dask:ADDRESS' (a running Dask scheduler, e.g. tcp://host:8786) or 'dask:FILE.json' (its "
    "scheduler file); 'module:function' (a function of no arguments returning a "
    "concurrent.futures.Executor or a dask.distributed.Client, e.g. one set up with "
    "dask-jobqueue's SLURMCluster)")


@contextmanager
def make_executor(spec: Optional[str], workers: int = 1) -> Iterator[Optional[Executor]]:
    """The executor named by ``spec`` (see ``EXECUTOR_HELP``), shut down on exit.

    ``None`` or ``"process"`` yields None: :func:`label` then uses ``workers`` local
    processes. Raises ``ValueError`` for an unknown spec, ``ImportError`` naming the package
    (mpi4py, dask[distributed]) that a spec needs."""
    name = (spec or "process").strip()
    low = name.lower()
    if low in ("process", "processes", "local"):
        yield None
        return
    if low in ("mpi", "mpi4py"):
        if _mpi_size_from_env() > 1 and not _in_mpi4py_shared_pool():
            raise ValueError("executor 'mpi' under mpirun needs the mpi4py.futures launcher: "
                             "mpirun -n N python -m mpi4py.futures -m pyfragnn label ... "
                             "(N-1 workers); plain 'mpirun -n N pyfragnn label' uses the "
                             "built-in master/worker mode without --executor")
        from mpi4py.futures import MPIPoolExecutor

        with MPIPoolExecutor() as ex:
            yield ex
        return
    if low == "dask" or low.startswith("dask:"):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise ImportError(f"executor {spec!r} needs dask.distributed: "
                              "pip install 'pyfragnn[dask]'") from exc
        target = name[5:].strip() if low.startswith("dask:") else ""
        if not target:
            with LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                yield client.get_executor()
        elif target.endswith(".json") or Path(target).is_file():
            with Client(scheduler_file=target) as client:
                yield client.get_executor()
        else:
            with Client(target) as client:
                yield client.get_executor()
        return
    if ":" in name:
        import importlib

        mod, _, fn = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"executor {spec!r}: cannot import {fn!r} from {mod!r}") from exc
        obj = factory()
        try:
            yield _as_executor(obj)
        finally:
            for closer in ("shutdown", "close"):
                if callable(getattr(obj, closer, None)):
                    getattr(obj, closer)()
                    break
        return
    raise ValueError(f"unknown executor {spec!r}: use process, mpi, dask, dask:ADDRESS, "
                     "dask:FILE.json or module:function")


_TAG_TASK, _TAG_STOP, _TAG_RESULT = 1, 2, 3


def _mpi_master(comm, tasks, handle, bar) -> None:
    from mpi4py import MPI

    size = comm.Get_size()
    it = iter(tasks)
    active = 0
    for w in range(1, size):
        t = next(it, None)
        if t is None:
            comm.send(None, dest=w, tag=_TAG_STOP)
        else:
            comm.send(t, dest=w, tag=_TAG_TASK)
            active += 1
    status = MPI.Status()
    while active:
        r = comm.recv(source=MPI.ANY_SOURCE, tag=_TAG_RESULT, status=status)
        src = status.Get_source()
        handle(*r)
        bar.update()
        t = next(it, None)
        if t is None:
            comm.send(None, dest=src, tag=_TAG_STOP)
            active -= 1
        else:
            comm.send(t, dest=src, tag=_TAG_TASK)


def _mpi_worker(comm, calculator, omp_threads) -> None:
    from mpi4py import MPI

    _init_worker(calculator, omp_threads)
    status = MPI.Status()
    while True:
        t = comm.recv(source=0, tag=MPI.ANY_TAG, status=status)
        if status.Get_tag() == _TAG_STOP:
            return
        comm.send(_run_one(t), dest=0, tag=_TAG_RESULT)


def compute_many(structures: Sequence[Atoms], calculator: CalcSpec, workers: int = 1,
                 omp_threads: Optional[int] = 1, start_method: str = "spawn",
                 desc: str = "compute", progress: Optional[bool] = None) -> List[Atoms]:
    """Energies/forces of ``structures`` in memory, in input order (workers as in ``label``).
    Raises ``RuntimeError`` naming the structure index if any calculation fails."""
    from .progress import Progress

    check_calculator_spec(calculator)
    tasks = [(i, str(i), a) for i, a in enumerate(structures)]
    results: List[Optional[Atoms]] = [None] * len(tasks)
    bar = Progress(total=len(tasks), desc=desc, disable=None if progress is None else not progress)

    def take(r):
        i, _, res, err = r
        if res is None:
            raise RuntimeError(f"{desc}: calculation of structure {i} failed: {err}")
        results[i] = res
        bar.update()

    with bar:
        if workers <= 1 or len(tasks) <= 1:
            _init_worker(calculator, None)
            for t in tasks:
                take(_run_one(t))
        else:
            import multiprocessing as mp

            ctx = mp.get_context(start_method)
            with _thread_env(omp_threads), ctx.Pool(
                    min(workers, len(tasks)), initializer=_init_worker,
                    initargs=(calculator, omp_threads)) as pool:
                for r in pool.imap_unordered(_run_one, tasks, chunksize=1):
                    take(r)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- CLI
def _cmd_label(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    items: List[Atoms] = []
    for f in args.inputs:
        items.extend(_load_structures(f))
    with ExitStack() as stack:
        try:
            ex = stack.enter_context(make_executor(args.executor, args.workers))
        except (ValueError, ImportError) as err:
            print(f"pyfragnn label: {err}", file=sys.stderr)
            return 2
        s = label(items, args.output, calculator=args.method, workers=args.workers,
                  retry_failed=args.retry_failed, omp_threads=args.omp_threads,
                  start_method=args.start_method, progress=False if args.quiet else None,
                  mpi=True if args.mpi else None, executor=ex)
    if s.n_computed or s.n_failed or s.n_already_done or s.n_duplicates:
        print(f"{s.n_total} structures: {s.n_already_done} already done, {s.n_computed} computed, "
              f"{s.n_duplicates} copied from an identical structure, "
              f"{s.n_failed} failed, {s.n_skipped_failed} skipped (failed before); "
              f"{s.wall_s:.1f} s wall, {s.per_structure_s:.3f} s/structure")
    return 0


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``label`` subcommand."""
    p = subparsers.add_parser("label", help="compute reference energies/forces (resumable)")
    p.add_argument("inputs", nargs="+", help="structure files (extxyz, ...)")
    p.add_argument("-o", "--output", required=True, help="extxyz data set to append to")
    p.add_argument("-m", "--method", default="gfn2", help="emt | gfn2 | gfn1 | module:factory")
    p.add_argument("-j", "--workers", type=int, default=1,
                   help="local worker processes (0: in-process); Dask workers with --executor dask")
    p.add_argument("--executor", default="process", metavar="SPEC", help=EXECUTOR_HELP)
    p.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS per worker")
    p.add_argument("--retry-failed", action="store_true")
    p.add_argument("--start-method", default="spawn", choices=["spawn", "fork", "forkserver"])
    p.add_argument("--mpi", action="store_true",
                   help="force the built-in mpi4py master/worker mode (auto under mpirun)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_label)
    return p

"""Run or resume the workflow: steps in order, each skipped when its inputs have not changed.

A step's *fingerprint* is a hash of the configuration tables it reads and of the fingerprints
of the steps it reads from. A step whose fingerprint equals the one recorded in
``RUN/STEP/step.json`` is reused; otherwise it runs in ``RUN/.STEP.partial`` (kept across a
kill, so that labelling and training resume inside it) and, once finished, replaces
``RUN/STEP`` in one rename. A changed key therefore reruns the step that reads it and every
step after it, never one before.

A step with ``background(cfg)`` true runs in a process of its own (Linux, where the child can
be tied to the runner's life) while the runner goes on with the steps after it; the first
step that reads it, or the end of the run, waits for it. Its outputs and resumption are those
of any step.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import WorkflowConfig

__all__ = ["Step", "Context", "run_workflow", "step_names", "WorkflowError"]

#: bump when a step's algorithm changes so that old outputs are not reused
STEP_VERSION = 1


class WorkflowError(RuntimeError):
    """A step could not produce its outputs; the message names the step."""


@dataclass(frozen=True)
class Step:
    """One stage of the pipeline. ``run(ctx) -> record`` writes its files into ``ctx.out``
    and returns a JSON-serialisable record (stored in ``step.json``)."""

    name: str
    run: Callable[["Context"], Dict[str, Any]]
    sections: Tuple[str, ...]
    after: Tuple[str, ...]
    doc: str
    background: Optional[Callable[[WorkflowConfig], bool]] = None


@dataclass
class Context:
    """What a step sees: the configuration, its output folder and the finished steps."""

    cfg: WorkflowConfig
    root: Path
    out: Path
    step: str

    def input(self, step: str) -> Path:
        """Output folder of a finished earlier step."""
        return self.root / step

    def record(self, step: str) -> Dict[str, Any]:
        """The record an earlier step returned."""
        return json.loads((self.root / step / "step.json").read_text())["record"]

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {self.step}: {msg}", flush=True)


def _fingerprint(step: Step, cfg: WorkflowConfig, upstream: Dict[str, str]) -> str:
    payload = {"step": step.name, "version": STEP_VERSION,
               "config": {s: cfg.section(s) for s in step.sections},
               "after": {u: upstream[u] for u in step.after}}
    if "structures" in step.sections:  # the files' contents, not only their names
        payload["files"] = [hashlib.sha256(cfg_file(cfg, s.file).read_bytes()).hexdigest()
                            for s in cfg.structures]
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cfg_file(cfg: WorkflowConfig, name: str) -> Path:
    """A structure file of the configuration (``pyfragnn:NAME`` = shipped in pyfragnn/data)."""
    if name.startswith("pyfragnn:"):
        return Path(__file__).resolve().parents[1] / "data" / name.split(":", 1)[1]
    return cfg.path(name)


def _steps() -> List[Step]:
    from .steps import STEPS

    return STEPS


def step_names() -> List[str]:
    """The steps in order."""
    return [s.name for s in _steps()]


def run_workflow(cfg: WorkflowConfig, until: Optional[str] = None,
                 force: Sequence[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Run or resume every step up to and including ``until`` (default: all).
    ``force``: step names to rerun even if unchanged. Returns ``{step: record}``."""
    steps = _steps()
    names = [s.name for s in steps]
    for n in ([until] if until else []) + list(force):
        if n not in names:
            raise WorkflowError(f"unknown step {n!r}; steps: {', '.join(names)}")
    root = cfg.path(cfg.run.directory)
    root.mkdir(parents=True, exist_ok=True)
    fps: Dict[str, str] = {}
    records: Dict[str, Dict[str, Any]] = {}
    running: Dict[str, _Background] = {}
    forced = False
    try:
        for step in steps:
            for dep in [d for d in step.after if d in running]:
                records[dep] = running.pop(dep).join()
            fp = _fingerprint(step, cfg, fps)
            fps[step.name] = fp
            final = root / step.name
            done = final / "step.json"
            forced = forced or step.name in force
            if not forced and done.exists() and json.loads(done.read_text())["fingerprint"] == fp:
                records[step.name] = json.loads(done.read_text())["record"]
                print(f"[{time.strftime('%H:%M:%S')}] {step.name}: reusing {final}", flush=True)
            elif step.background is not None and step.background(cfg) and step.name != until \
                    and _can_background():
                running[step.name] = _Background(step, cfg, root, fp)
            else:
                records[step.name] = _run_step(step, cfg, root, fp)
            if step.name == until:
                break
        for name in list(running):
            records[name] = running.pop(name).join()
    finally:
        for bg in running.values():  # a failed step: stop the others
            bg.stop()
    return records


def _can_background() -> bool:
    return sys.platform.startswith("linux")


class _Background:
    """A step in a spawned process of its own, killed with the runner (PR_SET_PDEATHSIG)."""

    def __init__(self, step: Step, cfg: WorkflowConfig, root: Path, fp: str) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.name = step.name
        self._recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_background_main, args=(step, cfg, root, fp, send,
                                                               os.getpid()),
                                name=f"pyfragnn-{step.name}")
        self.proc.start()
        send.close()

    def join(self) -> Dict[str, Any]:
        """Wait for the step; its record, or its WorkflowError raised here."""
        try:
            kind, value = self._recv.recv()
        except EOFError:  # the process died without a word (killed, out of memory)
            kind, value = "error", None
        self.proc.join()
        if kind == "ok":
            return value
        raise WorkflowError(value or f"step {self.name!r} ended with exit code "
                            f"{self.proc.exitcode} before it finished")

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _background_main(step: Step, cfg: WorkflowConfig, root: Path, fp: str, send,
                     parent: int) -> None:
    import ctypes

    try:  # die with the runner, whatever kills it; its partial folder stays resumable
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the runner died before prctl
        os._exit(1)
    try:
        send.send(("ok", _run_step(step, cfg, root, fp)))
    except WorkflowError as exc:
        send.send(("error", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - reported to the runner, which raises
        send.send(("error", f"step {step.name!r} failed: {type(exc).__name__}: {exc}"))


def _run_step(step: Step, cfg: WorkflowConfig, root: Path, fp: str) -> Dict[str, Any]:
    final = root / step.name
    work = root / f".{step.name}.partial"
    stamp = work / ".fingerprint"
    if work.exists() and (not stamp.exists() or stamp.read_text() != fp):
        shutil.rmtree(work)  # a partial run of other inputs: not resumable
    resumed = work.exists()
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fp)
    ctx = Context(cfg, root, work, step.name)
    ctx.say(("resuming" if resumed else "running") + f" ({step.doc})")
    t0 = time.perf_counter()
    try:
        record = step.run(ctx)
    except WorkflowError:
        raise
    except Exception as exc:
        raise WorkflowError(f"step {step.name!r} failed: {type(exc).__name__}: {exc}") from exc
    record = dict(record or {})
    info = {"step": step.name, "fingerprint": fp, "wall_s": round(time.perf_counter() - t0, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "record": record}
    (work / "step.json").write_text(json.dumps(info, indent=1, default=_json_default))
    stamp.unlink()
    if final.exists():
        old = root / f".{step.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old)
    else:
        os.replace(work, final)
    ctx.say(f"done in {info['wall_s']:.1f} s")
    return json.loads(json.dumps(record, default=_json_default))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")

"""The workflow runner's background steps (pyfragnn.workflow.runner): a step flagged
``background`` runs beside the steps after it, the first step that reads it waits for it, its
failure stops the run naming it, and it dies with the runner (then resumes like any step)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import package_env
from pyfragnn.workflow import runner
from pyfragnn.workflow.config import config_from_dict
from pyfragnn.workflow.runner import Step, WorkflowError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="background steps run in the foreground elsewhere")

HERE = Path(__file__).resolve().parent


def config(root: Path):
    return config_from_dict({"structures": [{"name": "x", "file": "x.extxyz"}]}, root)


def _wait_for(path: Path, seconds: float) -> bool:
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > seconds:
            return False
        time.sleep(0.02)
    return True


# toy steps (module level: the background process imports them)
def step_waits_for_go(ctx):
    (ctx.root / "bg.pid").write_text(str(os.getpid()))
    if not _wait_for(ctx.root / "go-now", 60):  # only a step running beside it makes "go-now"
        raise RuntimeError("no go-now within 60 s: the steps did not run side by side")
    (ctx.out / "result.txt").write_text("done")
    return {"pid": os.getpid()}


def step_go(ctx):
    (ctx.root / "go-now").write_text("")
    return {"pid": os.getpid()}


def step_reader(ctx):
    return {"bg_pid": ctx.record("bg")["pid"],
            "bg_file": (ctx.input("bg") / "result.txt").read_text()}


def step_fails(ctx):
    raise RuntimeError("boom")


def always(cfg):
    return True


def toy_steps(bg_run=step_waits_for_go):
    return [Step("bg", bg_run, (), (), "background toy", always),
            Step("go", step_go, (), (), "foreground toy"),
            Step("reader", step_reader, (), ("bg",), "reads bg")]


def test_background_step_runs_beside_the_next_and_its_reader_waits(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_steps", toy_steps)
    rec = runner.run_workflow(config(tmp_path))
    assert rec["bg"]["pid"] != os.getpid()  # its own process ...
    assert rec["go"]["pid"] == os.getpid()
    assert rec["reader"] == {"bg_pid": rec["bg"]["pid"], "bg_file": "done"}  # ... waited for
    assert (tmp_path / "run" / "bg" / "step.json").exists()
    assert not (tmp_path / "run" / ".bg.partial").exists()
    again = runner.run_workflow(config(tmp_path))  # unchanged: reused, nothing started
    assert again["bg"] == rec["bg"]


def test_background_failure_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_steps", lambda: toy_steps(step_fails))
    with pytest.raises(WorkflowError, match=r"step 'bg' failed: RuntimeError: boom"):
        runner.run_workflow(config(tmp_path))
    assert not (tmp_path / "run" / "reader").exists()


SCRIPT = """
import sys
sys.path.insert(0, {here!r})
import test_workflow_runner as t
from pyfragnn.workflow import runner
from pathlib import Path
runner._steps = lambda: [t.toy_steps()[0]] + [s for s in t.toy_steps()[2:]]  # no 'go': bg waits
runner.run_workflow(t.config(Path({root!r})))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_background_step_dies_with_the_runner_and_resumes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(here=str(HERE),
                                                                root=str(tmp_path))],
                            env=package_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert _wait_for(tmp_path / "run" / "bg.pid", 60)
    child = int((tmp_path / "run" / "bg.pid").read_text())
    assert child != proc.pid and _alive(child)
    os.kill(proc.pid, signal.SIGKILL)  # the runner alone
    proc.wait()
    t0 = time.time()
    while _alive(child):
        assert time.time() - t0 < 10, "background step outlived the runner"
        time.sleep(0.05)
    assert (tmp_path / "run" / ".bg.partial").is_dir()  # resumable
    (tmp_path / "run" / "go-now").write_text("")
    p = subprocess.run([sys.executable, "-c", SCRIPT.format(here=str(HERE), root=str(tmp_path))],
                       env=package_env(), cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "bg: resuming" in p.stdout
    assert (tmp_path / "run" / "reader" / "step.json").exists()

"""Labelling through concurrent.futures executors: a real Dask LocalCluster of 2 workers (Python
API and ``pyfragnn label --executor dask:ADDRESS``), mpi4py's MPIPoolExecutor under
``mpirun -n 3 python -m mpi4py.futures``, and a local worker that dies. Results must equal
direct EMT calculations, come from the executor's workers, and resume as before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

from conftest import package_env
from pyfragnn.labelling import label, make_executor, read_dataset

HELPER = textwrap.dedent(
    '''
    import os, time
    from ase.calculators.emt import EMT

    def pid_emt(atoms):
        """EMT that logs the worker's process id and takes a moment."""
        with open(os.environ["LABEL_CALL_LOG"], "a") as fh:
            fh.write(f"{atoms.info['tag']} {os.getpid()}\\n")
        time.sleep(float(os.environ.get("LABEL_SLEEP", "0.3")))
        return EMT()

    class Broken(EMT):
        def calculate(self, *args, **kwargs):
            raise RuntimeError("SCF did not converge (simulated)")

    def crash_or_fail(atoms):
        if atoms.info.get("crash"):
            os._exit(3)          # the worker process dies (segfault, OOM kill, ...)
        return Broken() if atoms.info.get("fail") else EMT()
    '''
)


def _structures(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.info["tag"] = k
        out.append(a)
    return out


@pytest.fixture()
def helper(tmp_path, monkeypatch):
    # its own module name: test_labelling.py's helper module `labhelp` stays in sys.modules
    (tmp_path / "labexec_help.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path),
                                                      package_env()["PYTHONPATH"]]))
    monkeypatch.setenv("LABEL_CALL_LOG", str(tmp_path / "calls.log"))
    monkeypatch.chdir(tmp_path)  # worker processes must not import the unbuilt source tree
    return tmp_path


def _check_frames(path: Path, structs, tags, tol: float = 1e-9):
    """Each tag labelled exactly once, with EMT's energy and forces (``tol``: 1e-6 where some
    frames were computed from the 8-decimal positions of an extxyz file)."""
    frames = read_dataset(path)
    assert sorted(f.info["tag"] for f in frames) == sorted(tags)
    for f in frames:
        a = structs[f.info["tag"]].copy()
        a.calc = EMT()
        assert abs(f.get_potential_energy() - a.get_potential_energy()) < tol
        assert np.allclose(f.get_forces(), a.get_forces(), atol=tol)


def _calls(helper: Path) -> list[tuple[int, int]]:
    log = helper / "calls.log"
    if not log.exists():
        return []
    return [tuple(map(int, ln.split())) for ln in log.read_text().splitlines()]


def test_dask_local_cluster_two_workers(helper):
    distributed = pytest.importorskip("dask.distributed")
    structs = _structures(10)
    out = helper / "dask.extxyz"
    # two structures already labelled locally: the Dask run must skip them
    s0 = label(structs[:2], out, calculator="emt", workers=0, progress=False)
    assert s0.n_computed == 2
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        workers = {w["id"] for w in client.scheduler_info()["workers"].values()}
        assert len(workers) == 2
        s = label(structs[:6], out, calculator="labexec_help:pid_emt", executor=client,
                  progress=False)
        assert (s.n_already_done, s.n_computed, s.n_failed) == (2, 4, 0)
        calls = _calls(helper)
        assert sorted(t for t, _ in calls) == [2, 3, 4, 5]
        pids = {p for _, p in calls}
        assert len(pids) == 2 and os.getpid() not in pids  # both Dask workers computed
        _check_frames(out, structs, range(6))

        # the command line against the same running scheduler: resumes, labels the rest
        inp = helper / "in.extxyz"
        write(inp, structs)
        r = subprocess.run([sys.executable, "-m", "pyfragnn", "label", str(inp), "-o", str(out),
                            "-m", "labexec_help:pid_emt", "--executor",
                            f"dask:{cluster.scheduler_address}", "-q"],
                           env=os.environ.copy(), cwd=helper, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert "6 already done, 4 computed, 0 copied from an identical structure, 0 failed" \
            in r.stdout
        new_calls = _calls(helper)[len(calls):]
        assert sorted(t for t, _ in new_calls) == [6, 7, 8, 9]
        assert {p for _, p in new_calls} <= pids  # on the cluster's workers, not the CLI
    _check_frames(out, structs, range(10), tol=1e-6)


def test_dask_failed_structure_is_recorded(helper):
    distributed = pytest.importorskip("dask.distributed")
    structs = _structures(4)
    structs[1].info["fail"] = True
    out = helper / "flaky.extxyz"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        s = label(structs, out, calculator="labexec_help:crash_or_fail",
                  executor=client.get_executor(), progress=False)
    assert (s.n_computed, s.n_failed) == (3, 1)
    assert "SCF did not converge" in Path(str(out) + ".failed.jsonl").read_text()
    s2 = label(structs, out, calculator="emt", workers=0, progress=False)
    assert (s2.n_already_done, s2.n_skipped_failed, s2.n_computed) == (3, 1, 0)


@pytest.mark.mpi
def test_mpi4py_futures_pool(helper):
    pytest.importorskip("mpi4py")
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        pytest.skip("mpirun not found")
    structs = _structures(8)
    inp4, inp8, out = helper / "in4.extxyz", helper / "in8.extxyz", helper / "mpi.extxyz"
    write(inp4, structs[:4])
    write(inp8, structs)
    base = [mpirun, "-n", "3", sys.executable, "-m", "mpi4py.futures", "-m", "pyfragnn", "label",
            "-o", str(out), "-m", "labexec_help:pid_emt", "-q"]
    run = dict(env=os.environ.copy(), cwd=helper, capture_output=True, text=True, timeout=180)
    r = subprocess.run(base + [str(inp4), "--executor", "mpi"], **run)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = _calls(helper)
    assert sorted(t for t, _ in calls) == [0, 1, 2, 3]
    assert len({p for _, p in calls}) == 2  # the two worker ranks
    # resumed without --executor: the shared pool of mpi4py.futures is used by itself
    r = subprocess.run(base + [str(inp8)], **run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 already done, 4 computed, 0 copied from an identical structure, 0 failed" \
        in r.stdout
    new = _calls(helper)[len(calls):]
    assert sorted(t for t, _ in new) == [4, 5, 6, 7]
    _check_frames(out, read(inp8, index=":"), range(8))


def test_dying_local_worker_stops_the_run_and_resumes(helper):
    """A worker process that dies raises (BrokenProcessPool) instead of hanging or marking the
    remaining structures failed; the finished ones are kept and a rerun completes."""
    from concurrent.futures.process import BrokenProcessPool

    structs = _structures(5)
    structs[2].info["crash"] = True
    out = helper / "crash.extxyz"
    with pytest.raises(BrokenProcessPool):
        label(structs, out, calculator="labexec_help:crash_or_fail", workers=1, progress=False)
    done = {f.info["tag"] for f in read_dataset(out)}
    assert {0, 1} <= done and 2 not in done
    assert not Path(str(out) + ".failed.jsonl").exists()
    del structs[2].info["crash"]
    s = label(structs, out, calculator="labexec_help:crash_or_fail", workers=2, progress=False)
    assert s.n_already_done == len(done) and s.n_failed == 0
    _check_frames(out, structs, range(5))


def test_executor_specs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown executor 'slurm'"):
        with make_executor("slurm"):
            pass
    with pytest.raises(ValueError, match="cannot import"):
        with make_executor("no_such_module_xyz:make"):
            pass
    with make_executor("process") as ex:
        assert ex is None
    with pytest.raises(TypeError, match="Executor"):
        label(_structures(1), tmp_path / "x.extxyz", calculator="emt", executor=object())
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:  # any Executor works, threads included
        s = label(_structures(3), tmp_path / "t.extxyz", calculator="emt", executor=ex,
                  progress=False)
    assert s.n_computed == 3
    assert Counter(f.info["label_index"] for f in read_dataset(tmp_path / "t.extxyz")) == \
        Counter(range(3))

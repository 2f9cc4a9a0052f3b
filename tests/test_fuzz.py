"""Seeded mutation fuzzing of every file pyfragnn reads (issue 15): the four n2p2 potential
files (input.nn, scaling.data, weights.001/008.data), the native .fragnn file, n2p2
input.data and extxyz. Each case mutates one file (byte flips, special numbers such as nan,
inf, 1e308 or %s%n, deleted/duplicated/swapped lines, truncation, random bytes) and reads it
(a potential is then evaluated on a 12-atom water cluster) in a worker subprocess
(tests/fuzz_worker.py), many cases per process. Required: no crash (the case that started
last is named), no hang (timeout), no non-finite result without an error, and only
exceptions that say what is wrong (ValueError/RuntimeError/OSError with a message; never
KeyError, IndexError, TypeError or UnicodeDecodeError).

About 1 400 cases in about 30 s. FUZZ_CASES (per target) and FUZZ_SEED (first seed) widen
the search; a failing case is replayed with
``python tests/fuzz_worker.py TARGET SEED 1 DIR`` (FUZZ_KEEP=1 keeps the file).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import package_env

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fuzz_worker import TARGETS  # noqa: E402

CASES = int(os.environ.get("FUZZ_CASES", "200"))
FIRST = int(os.environ.get("FUZZ_SEED", "0"))
BATCH = 100          # cases per worker process
TIMEOUT = 90.0       # seconds per batch (a case takes ~20 ms)


def run_batch(target: str, first: int, count: int, workdir: Path, timeout: float = TIMEOUT,
              **env: str):
    """Run seeds first..first+count-1; returns ({seed: outcome}, failure or None). A crash or
    a hang ends the batch; the failure names the seed that had started."""
    cmd = [sys.executable, str(HERE / "fuzz_worker.py"), target, str(first), str(count),
           str(workdir)]
    try:
        r = subprocess.run(cmd, cwd=workdir, env=package_env(OPENBLAS_NUM_THREADS="1", **env),
                           capture_output=True, text=True, timeout=timeout,
                           errors="backslashreplace")
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else \
            (exc.stdout or "")
        err, rc = "", "timeout"
    done, started = {}, None
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "START":
            started = int(rest)
        elif word == "DONE":
            seed, _, outcome = rest.partition(" ")
            done[int(seed)] = outcome
            started = None
    failure = None
    if started is not None or rc != 0:
        what = "hang (timeout)" if rc == "timeout" else f"crash (exit status {rc})"
        failure = (started, f"{target} seed {started}: {what}\n{err[-1500:]}")
    return done, failure


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target, tmp_path):
    problems, seed, end = [], FIRST, FIRST + CASES
    outcomes: dict = {}
    while seed < end:
        done, failure = run_batch(target, seed, min(BATCH, end - seed), tmp_path)
        outcomes.update(done)
        if failure is not None:
            crashed, msg = failure
            problems.append(msg)
            seed = (crashed if crashed is not None else max(done, default=seed - 1)) + 1
        else:
            seed = max(done) + 1
    for s, outcome in sorted(outcomes.items()):
        kind, _, detail = outcome.partition(" ")
        if kind == "nonfinite":
            problems.append(f"{target} seed {s}: accepted, but not finite: {detail}")
        elif kind == "bad":
            problems.append(f"{target} seed {s}: unclear exception {detail[:300]}")
        elif kind == "error" and not detail.partition(": ")[2].strip():
            problems.append(f"{target} seed {s}: exception without a message ({detail})")
        elif kind not in ("ok", "error"):
            problems.append(f"{target} seed {s}: unexpected outcome {outcome[:300]}")
    n_err = sum(o.startswith("error") for o in outcomes.values())
    assert not problems, (f"{len(problems)} of {CASES} cases failed (replay: python "
                          f"tests/fuzz_worker.py {target} SEED 1 DIR):\n" + "\n".join(problems[:20]))
    # the mutations do reach the parsers: most cases end in an error, some still load
    assert len(outcomes) == CASES and n_err > CASES // 4, (n_err, len(outcomes))


def test_fuzz_harness_attributes_crash_and_hang(tmp_path):
    """A crash (abort) or a hang in one case is reported with that case's seed."""
    done, failure = run_batch("input.data", 0, 5, tmp_path, FUZZ_SELFTEST="crash:2")
    assert sorted(done) == [0, 1] and failure[0] == 2 and "crash" in failure[1]
    done, failure = run_batch("input.data", 0, 5, tmp_path, timeout=5.0,
                              FUZZ_SELFTEST="hang:1")
    assert sorted(done) == [0] and failure[0] == 1 and "hang" in failure[1]

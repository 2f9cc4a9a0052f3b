"""Kalman-filter covariance kernels, per update, on one core.

The default filter (KalmanFilter, serial and MPI) multiplies full rows of P by h every update
(``kf_rows_times_vector``) and folds ``rank_block`` (64) deferred rank-1 terms into P every 64
updates (``kf_rows_downdate``); the serial ``symmetric`` filter uses one triangle of P with
BLAS dsymv + dsyrk instead. Prints, for n = 2700 and 4924 weights (the demo's and the bench
set's networks), the time of each kernel and the per-update cost (product + 1/64 of a fold)
of both, next to BLAS dgemv on the same full matrix (the memory floor of a full-row product):

    python benchmarks/bench_kalman.py
    python benchmarks/bench_kalman.py --n 2700 --reps 20
    PYFRAGNN_ISA=generic python benchmarks/bench_kalman.py   # the compiled kernels' plain path

Figures only; nothing is asserted. BLAS runs on one thread (threadpoolctl), as the trainer's.
Times are the calling thread's CPU time (median of --reps calls), so preemption by other jobs
is left out, though their use of the shared caches and memory bandwidth is not.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if any(f.startswith("_core") for f in os.listdir(os.path.join(os.path.dirname(HERE), "pyfragnn"))):
    sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402


def _best(f, reps):
    """Median of reps calls of f: seconds of this thread's CPU time, which on a loaded machine
    (the figures are meant to be taken under `nice`) leaves out the time spent preempted."""
    ts = []
    for _ in range(reps):
        t0 = time.thread_time()
        f()
        ts.append(time.thread_time() - t0)
    return float(np.median(ts))


def bench(n: int, m: int, reps: int) -> dict:
    from scipy.linalg import blas
    from pyfragnn import _core

    rng = np.random.default_rng(0)
    B = rng.standard_normal((n, n)) / n
    P = B @ B.T + np.eye(n)  # symmetric positive definite, like the filter's covariance
    h = rng.standard_normal(n)
    y = np.empty(n)
    U = rng.standard_normal((n, m)) * 1e-3
    UT = np.ascontiguousarray(U.T)
    Pf = P.T  # Fortran view for BLAS (P is symmetric)
    Uf = np.asfortranarray(U)

    out = {}
    out["rows_times_vector"] = _best(lambda: _core.kf_rows_times_vector(P, h, y), reps)
    if hasattr(_core, "kf_block_times_vector"):
        out["block_times_vector"] = _best(lambda: _core.kf_block_times_vector(P, 0, h, y), reps)
    out["dgemv"] = _best(lambda: blas.dgemv(1.0, Pf, h, trans=1), reps)
    out["dsymv"] = _best(lambda: blas.dsymv(1.0, Pf, h, lower=0), reps)
    # the folds change P: scale 1 and tiny U keep it well conditioned over the repetitions
    r = max(2, reps // 4)
    out["rows_downdate"] = _best(lambda: _core.kf_rows_downdate(P, U, UT, 1.0), r)
    if hasattr(_core, "kf_block_downdate"):
        out["block_downdate"] = _best(lambda: _core.kf_block_downdate(P, 0, U, UT, 1.0), r)
        out["block_update"] = out["block_times_vector"] + out["block_downdate"] / m
    out["dsyrk"] = _best(lambda: blas.dsyrk(-1.0, Uf, beta=1.0, c=Pf, trans=0, lower=0,
                                            overwrite_c=1), r)
    out["rows_update"] = out["rows_times_vector"] + out["rows_downdate"] / m
    out["symmetric_update"] = out["dsymv"] + out["dsyrk"] / m
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[2700, 4924])
    ap.add_argument("--m", type=int, default=64, help="rank_block: rank-1 terms per fold")
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args(argv)
    from scipy.linalg import blas  # noqa: F401  (loaded before the thread limit is set)
    from threadpoolctl import threadpool_limits

    import pyfragnn
    print(f"pyfragnn {pyfragnn.__file__}; PYFRAGNN_ISA={os.environ.get('PYFRAGNN_ISA', '(best)')}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with threadpool_limits(1, user_api="blas"):
        for n in args.n:
            t = bench(n, args.m, args.reps)
            ms = {k: 1e3 * v for k, v in t.items()}
            blk = "block_update" in ms
            print(f"n={n} m={args.m}: P.h  rows kernel {ms['rows_times_vector']:.2f} ms, "
                  + (f"block kernel {ms['block_times_vector']:.2f} ms, " if blk else "")
                  + f"dgemv {ms['dgemv']:.2f} ms, dsymv {ms['dsymv']:.2f} ms")
            print(f"  fold of {args.m}: rows kernel {ms['rows_downdate']:.1f} ms, "
                  + (f"block kernel {ms['block_downdate']:.1f} ms, " if blk else "")
                  + f"dsyrk {ms['dsyrk']:.1f} ms")
            print(f"  per update (P.h + fold/{args.m}): "
                  + (f"block kernels (default, serial) {ms['block_update']:.2f} ms, " if blk else "")
                  + f"rows kernels {ms['rows_update']:.2f} ms, "
                  f"BLAS dsymv + dsyrk (symmetric) {ms['symmetric_update']:.2f} ms")


if __name__ == "__main__":
    main()

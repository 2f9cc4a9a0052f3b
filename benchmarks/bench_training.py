"""Training benchmark on the shared EMT fragment set (../shared/bench beside the repo, see its README):
2000 structures of 30-60 atoms, Ni Cu Pd Au, 64 SFs per element, 64-15-15-1 networks
(4924 weights), n2p2's Kalman-filter settings from its input.nn.

Reports wall time per EKF / Adam epoch (update phase and the per-epoch error evaluation of all
structures, as n2p2's epoch timing includes), time per Kalman update, setup time and peak RSS
per rank. Serial and MPI:

    python benchmarks/bench_training.py --optimizer ekf --epochs 1
    mpirun -np 2 python benchmarks/bench_training.py --optimizer ekf --epochs 1
    python benchmarks/bench_training.py --optimizer ekf --epochs 1 --symmetric
    python benchmarks/bench_training.py --optimizer adam --epochs 1
    python benchmarks/bench_training.py --limit 200      # quick check on 200 structures
    python benchmarks/bench_training.py --epochs 3 --seed 1 --jacobian-mb 1536   # with cache
    python benchmarks/bench_training.py --epochs 3 --max-innovation 0   # n2p2's ungated filter

Prints, besides timings and memory, the RMSEs per epoch, the energy RMSE of the periodic cells
and of the fragments apart, and the ten structures with the largest energy error.

n2p2 anchor (same data and settings, 2-vCPU EPYC): 350.9 s/epoch serial (37.7 ms per KF
update), 189.0 s with 2 ranks; peak RSS 2.47 GiB serial. Back to back on 2026-12-01 (load ~3
from another job, one epoch each, default settings): nnp-train 661.1 s/epoch (74.4 ms per KF
update), peak RSS 2.47 GiB; this benchmark 127.1 s/epoch (17.2 ms per update), 0.49 GiB:
0.19x the time, 0.20x the memory; test RMSE after the epoch 0.0552 eV/atom, 0.336 eV/Å against
n2p2's 0.0904, 0.434. After 3 epochs (--epochs 3 --seed S, 105-126 s per epoch, 0.49 GiB): test
RMSE seed 12345 0.0249 eV/atom / 0.146 eV/Å, seed 1 0.0461 / 0.174, seed 2 0.0117 / 0.161,
against n2p2's 0.055 / 0.22. Idle guest, 2026-12-03 (nnp-train not rebuilt: anchor above): 58.7
s/epoch (7.95 ms per update), 0.49 GiB; after 3 epochs (59-64 s per epoch, seeds 1 and 2 run
side by side) test RMSE seed 12345 0.0462 eV/atom / 0.156 eV/Å, seed 1 0.0453 / 0.172, seed 2
0.0162 / 0.161. AVX2 guest (AMD EPYC Zen 3, idle), 2026-12-03: 80-85 s/epoch (11.6 ms per
update), 0.49 GiB; after 3 epochs seed 12345 0.0462 / 0.156 (the same figures).
Intel Xeon guest (AVX-512), 2026-12-03 evening, back to back with nnp-train rebuilt there (n2p2
61daa0d, -O3 -march=native, serial, `epochs 1`): nnp-train 451.3 s/epoch, peak RSS 2.47 GiB,
test RMSE after the epoch 0.0904 eV/atom / 0.434 eV/Å; this benchmark 72.3 s/epoch (9.8 ms per
update), 0.49 GiB, 0.0447 / 0.329: 0.160x the time, 0.20x the memory.
Same guest, that night (same training path): 63.3 s/epoch; after 3 epochs (53-66 s per epoch,
seeds 1 and 2 side by side) test RMSE seed 12345 0.0590 eV/atom / 0.149 eV/Å (periodic cells
0.184, fragments 0.0097 eV/atom), seed 1 0.0496 / 0.166, seed 2 0.0220 / 0.159; seed 12345 with
--max-innovation 0 (n2p2's filter) 0.0549 / 0.209, with 1.0 0.0695 / 0.191.
Same guest, 2026-12-04, with the energy updates exempt from the gate and the saved model the
moving average of the weights (training.ema_epochs 0.1; the old behaviour: --gate-energies
--ema-epochs 0): seed 12345 0.0385 / 0.149 (cells 0.121, fragments 0.0059), seed 1 0.0466 /
0.167, seed 2 0.0246 / 0.156; 52-62 s per epoch, 0.49 GiB. n2p2 there (3 epochs, serial):
seed 12345 0.0504 / 0.225, seed 1 0.0610 / 0.185.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# the checkout only if it is built in place; otherwise the installed package
if any(f.startswith("_core") for f in os.listdir(os.path.join(os.path.dirname(HERE), "pyfragnn"))):
    sys.path.insert(0, os.path.dirname(HERE))

BENCH = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "bench")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bench-dir", default=BENCH)
    ap.add_argument("--optimizer", default="ekf", choices=["ekf", "adam"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N structures")
    ap.add_argument("--jacobian-mb", type=float, default=None,
                    help="training.jacobian_memory_mb: per-process budget for cached descriptor "
                         "Jacobians (MiB); default the trainer's (0, no cache); the whole bench "
                         "set's training structures need about 1.5 GiB")
    ap.add_argument("--symmetric", action="store_true",
                    help="serial one-triangle SYMV/SYRK Kalman filter (kalman.symmetric)")
    ap.add_argument("--batch-size", type=int, default=32, help="Adam mini-batch")
    ap.add_argument("--seed", type=int, default=12345, help="training.seed (n2p2 anchor: 12345)")
    ap.add_argument("--max-innovation", type=float, default=None,
                    help="training.kalman.max_innovation (default: the trainer's; 0 = n2p2's "
                         "ungated filter)")
    ap.add_argument("--ema-epochs", type=float, default=None,
                    help="training.ema_epochs (default: the trainer's; 0 = the last weights, "
                         "as n2p2)")
    ap.add_argument("--gate-energies", action="store_true",
                    help="training.kalman.gate_energies: the innovation gate on energy "
                         "updates too")
    ap.add_argument("--out", default="/tmp/pyfragnn_bench_training")
    ap.add_argument("--json", default="", help="append the result as one JSON line here")
    args = ap.parse_args(argv)

    from pyfragnn.training.cli import _comm
    comm = _comm()
    rank = comm.Get_rank() if comm else 0
    size = comm.Get_size() if comm else 1

    from pyfragnn.dataset import read_input_data
    from pyfragnn.training.trainer import Trainer

    t0 = time.perf_counter()
    data = read_input_data(os.path.join(args.bench_dir, "input.data"))
    if args.limit:
        data = data[: args.limit]
    t_read = time.perf_counter() - t0
    cfg = {
        "data": {"files": [], "use_file_split": True, "test_fraction": 0.1},
        "model": {"input_nn": os.path.join(args.bench_dir, "input.nn"),
                  "reference_energies": False},   # n2p2 run: no atom_energy, no nnp-norm
        "training": {
            "optimizer": args.optimizer, "epochs": args.epochs, "seed": args.seed,
            "force_weight": 10.0, "energy_fraction": 1.0, "force_fraction": 0.02315,
            "energy_error_threshold": 0.0, "force_error_threshold": 1.0, "threshold_trials": 3,
            **({} if args.jacobian_mb is None else {"jacobian_memory_mb": args.jacobian_mb}),
            **({} if args.ema_epochs is None else {"ema_epochs": args.ema_epochs}),
            "resume": False, "progress": rank == 0,
            "kalman": {"type": 0, "epsilon": 1e-2, "q0": 0.01, "qtau": 2.302, "qmin": 1e-6,
                       "eta": 0.01, "etatau": 2.302, "etamax": 1.0,
                       "symmetric": args.symmetric, "gate_energies": args.gate_energies,
                       **({} if args.max_innovation is None
                          else {"max_innovation": args.max_innovation})},
            "adam": {"learning_rate": 1e-3, "batch_size": args.batch_size, "force_weight": 1.0}},
        "output": {"directory": args.out + (f"_np{size}" if size > 1 else ""),
                   "plots": False, "checkpoint": False, "n2p2": False},
    }
    tr = Trainer(cfg, structures=data, comm=comm)
    t0 = time.perf_counter()
    tr.setup()
    t_setup = time.perf_counter() - t0
    res = tr.run()
    hist = res.history
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # GiB (ru_maxrss in KiB)
    rss_all = comm.gather(rss, root=0) if comm else [rss]
    jac = comm.gather(tr.jacobian_bytes / 2 ** 30, root=0) if comm else [tr.jacobian_bytes / 2 ** 30]
    if rank != 0:
        return 0
    ep = [h for h in hist if h["epoch"] > 0]
    # energy RMSE (eV/atom) of periodic cells and fragments apart, and the worst structures
    import numpy as np
    pe = res.predictions["energy"]
    dE = np.array([(pe[i] - s.energy) / s.n_atoms for i, s in enumerate(data)])
    cell = np.array([bool(np.any(s.pbc)) for s in data])
    by_kind = {}
    for name, idx in (("train", tr.train_idx), ("test", tr.test_idx)):
        for kind, sel in (("cells", cell), ("fragments", ~cell)):
            k = np.asarray(idx)[sel[idx]]
            if k.size:
                by_kind[f"rmse_E_{kind}_{name}"] = round(float(np.sqrt(np.mean(dE[k] ** 2))), 5)
    worst = [{"index": int(i), "cell": bool(cell[i]), "set": "test" if tr.is_test[i] else "train",
              "dE_eV_atom": round(float(dE[i]), 4)} for i in np.argsort(-np.abs(dE))[:10]]
    out = {
        "optimizer": args.optimizer, "symmetric": args.symmetric, "ranks": size, "structures": len(data),
        "seed": args.seed, "max_innovation": tr.cfg["training"]["kalman"]["max_innovation"],
        "gate_energies": tr.cfg["training"]["kalman"]["gate_energies"],
        "ema_epochs": tr.cfg["training"]["ema_epochs"],
        "gated_updates": [h.get("gated_updates", 0) for h in ep],
        "atoms": int(sum(s.n_atoms for s in data)), "weights": tr.nw,
        "read_s": round(t_read, 2), "setup_s": round(t_setup, 2),
        "epoch0_eval_s": round(hist[0]["time_s"], 2),
        "epoch_s": [round(h["time_s"], 2) for h in ep],
        "update_phase_s": [round(h["update_time_s"], 2) for h in ep],
        "epoch_cpu_s_rank0": [round(h.get("cpu_time_s", float("nan")), 2) for h in ep],
        "loadavg_end": open("/proc/loadavg").read().split()[:3],
        "updates_per_epoch": [h["updates"] for h in ep],
        "ms_per_update": [round(1e3 * h["update_time_s"] / max(h["updates"], 1), 2) for h in ep],
        "peak_rss_gib_per_rank": [round(r, 3) for r in rss_all],
        "jacobian_memory_mb": tr.cfg["training"]["jacobian_memory_mb"],
        "jacobian_cache_gib_per_rank": [round(j, 3) for j in jac],
        "cached_structures_rank0": tr.n_cached,
        "rmse": {k: round(v, 5) for k, v in hist[-1].items() if k.startswith("rmse")},
        "rmse_epoch0": {k: round(v, 5) for k, v in hist[0].items() if k.startswith("rmse")},
        "rmse_E_by_kind": by_kind,
        "worst_structures": worst,
        "rmse_per_epoch": [{k: round(v, 5) for k, v in h.items() if k.startswith("rmse")}
                           for h in ep],
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

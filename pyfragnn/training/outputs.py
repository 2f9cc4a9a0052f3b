"""Learning curve (CSV + PNG), RMSE table per type label, parity plots, dropped SFs."""
from __future__ import annotations

import csv
import math
import os
from typing import List

import numpy as np

__all__ = ["write_learning_curve", "write_rmse_table", "format_table", "parity_plots",
           "write_dropped_symmetry_functions"]

# *_raw: training RMSEs of the optimiser's own weights when the model is their moving average
# (training.ema_epochs > 0); empty otherwise
_COLS = ["epoch", "rmse_E_train", "rmse_E_test", "rmse_F_train", "rmse_F_test", "time_s",
         "updates", "gated_updates", "rmse_E_train_raw", "rmse_F_train_raw"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def write_learning_curve(history: List[dict], out_dir: str, plots: bool = True) -> None:
    """learning_curve.csv (RMSE in eV/atom and eV/Å per epoch; epoch 0 = initial weights)."""
    path = os.path.join(out_dir, "learning_curve.csv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(_COLS)
        for r in history:
            w.writerow([r.get(c, "") for c in _COLS])
    if not plots:
        return
    plt = _plt()
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, (key, unit) in enumerate((("E", "eV/atom"), ("F", "eV/Å"))):
        for s, st in (("train", "-o"), ("test", "--s")):
            y = [r[f"rmse_{key}_{s}"] for r in history]
            if not all(math.isnan(v) for v in y):
                ax[k].semilogy(ep, y, st, ms=3, label=s)
        ax[k].set_xlabel("epoch")
        ax[k].set_ylabel(f"RMSE {key} ({unit})")
        ax[k].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "learning_curve.png"), dpi=120)
    plt.close(fig)


def format_table(rows: List[dict]) -> str:
    head = "| label | set | structures | RMSE E (meV/atom) | RMSE F (meV/Å) |\n|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        lines.append(f"| {r['label'] or '-'} | {r['set']} | {r['structures']} | "
                     f"{1000 * r['rmse_E_eV_atom']:.2f} | {1000 * r['rmse_F_eV_A']:.1f} |")
    return "\n".join(lines)


def write_rmse_table(rows: List[dict], out_dir: str) -> None:
    """rmse_table.csv (eV/atom, eV/Å) and rmse_table.md (meV)."""
    with open(os.path.join(out_dir, "rmse_table.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["label", "set", "structures", "rmse_E_eV_atom",
                                           "rmse_F_eV_A", "force_components"])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    with open(os.path.join(out_dir, "rmse_table.md"), "w") as fh:
        fh.write(format_table(rows) + "\n")


def write_dropped_symmetry_functions(rows: List[dict], out_dir: str) -> None:
    """dropped_symmetry_functions.txt: the (near-)constant functions removed before training
    (model.constant_sf = "drop"): element, index in the original n2p2 order, input.nn line,
    the symfunction_short tokens and the range over the training atoms."""
    with open(os.path.join(out_dir, "dropped_symmetry_functions.txt"), "w") as fh:
        fh.write("# element  sf_index  input_nn_line  range  min  max  symfunction_short\n")
        for r in rows:
            fh.write(f"{r['element']} {r['index']} {r['line']} {r['range']:.6g} "
                     f"{r['min']:.17g} {r['max']:.17g} {r['symfunction']}\n")


def _parity(trainer, values, quantity: str, unit: str, ms: float, alpha: float,
            path: str) -> None:
    """One parity PNG; values(idx) -> (reference, prediction) arrays for those structures."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, idx, mk in (("train", trainer.train_idx, "o"), ("test", trainer.test_idx, "s")):
        if idx.size == 0:
            continue
        ref, nn = values(idx)
        ax.plot(ref, nn, mk, ms=ms, alpha=alpha, label=name)
    lim = ax.get_xlim()
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"HDNNP {quantity} ({unit})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parity_plots(trainer, pred: dict, out_dir: str) -> None:
    """parity_energy.png (E/atom) and parity_forces.png (force components), train and test."""
    s = trainer.structures

    def energies(idx):
        return (np.array([s[i].energy / trainer.nat[i] for i in idx]),
                np.array([pred["energy"][int(i)] / trainer.nat[i] for i in idx]))

    def forces(idx):
        return (np.concatenate([s[i].forces[s[i].mask()].ravel() for i in idx]),
                np.concatenate([pred["forces"][int(i)][s[i].mask()].ravel() for i in idx]))

    _parity(trainer, energies, "E", "eV/atom", 3, 0.6, os.path.join(out_dir, "parity_energy.png"))
    if trainer.cfg["data"]["use_forces"]:
        _parity(trainer, forces, "F", "eV/Å", 1.5, 0.4, os.path.join(out_dir, "parity_forces.png"))

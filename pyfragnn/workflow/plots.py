"""The workflow's figures: parity of bulk validation predictions, and the Figs. 6/7 analogue
(reference force deviation fragment vs bulk per site, HDNNP force error per site)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["parity_png", "site_png"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parity_png(path: Path, evs: Dict[str, dict], reference: str) -> None:
    """Force components and energies per atom (relative to the reference mean) of every
    potential against the reference; ``evs`` from :func:`pyfragnn.validation.evaluate`."""
    from ..validation import rmse

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, ev in evs.items():
        st = ev["structures"]
        if not st:
            continue
        fr = np.concatenate([s["F_ref"].ravel() for s in st])
        fn = np.concatenate([s["F_nn"].ravel() for s in st])
        axes[0].scatter(fr, fn, s=3, alpha=0.5, label=f"{name} (RMSE {rmse(fn - fr):.3f})")
        er = np.array([s["E_ref"] / s["n"] for s in st])
        en = np.array([s["E_nn"] / s["n"] for s in st])
        axes[1].scatter(er - er.mean(), en - er.mean(), s=12, label=name)
    for ax, q in zip(axes, ("force component (eV/Å)", "E/atom − mean ref (eV/atom)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel(f"{reference} {q}")
        ax.set_ylabel(f"HDNNP {q}")
        ax.legend(fontsize=7)
    fig.suptitle("periodic bulk validation frames")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def site_png(path: Path, sites: Sequence[str], ref_dev: Dict[str, Dict[str, List[float]]],
             nn_err: Dict[str, Dict[str, float]], reference: str, r_c: float) -> None:
    """Left: ‖F_fragment − F_bulk‖ at the centre for small (R_c) and large (2 R_c) fragments
    per site (Figs. 6/7); right: force RMSE of each potential per site on the bulk frames."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    x = np.arange(len(sites))
    for k, (tag, d) in enumerate(ref_dev.items()):
        radius = r_c if tag == "small" else 2 * r_c
        for i, s in enumerate(sites):
            v = d.get(s, [])
            axes[0].scatter(np.full(len(v), i + (k - 0.5) * 0.25), v, s=14, color=f"C{k}",
                            label=f"{tag} (R = {radius:.2f} Å)" if i == 0 else None)
    axes[0].axhline(0.125, color="k", lw=0.8, ls="--", label="0.125 eV/Å")
    axes[0].set_xticks(x, sites, rotation=45, ha="right", fontsize=7)
    axes[0].set_ylabel("‖F_fragment − F_bulk‖ at the centre (eV/Å)")
    axes[0].set_title(f"{reference}: fragment vs bulk force (Figs. 6/7)")
    axes[0].legend(fontsize=7)
    w = 0.8 / max(len(nn_err), 1)
    for k, (name, d) in enumerate(nn_err.items()):
        axes[1].bar(x + (k - (len(nn_err) - 1) / 2) * w, [d.get(s, np.nan) for s in sites], w,
                    label=name)
    axes[1].set_xticks(x, sites, rotation=45, ha="right", fontsize=7)
    axes[1].set_ylabel(f"force RMSE vs {reference}, bulk (eV/Å)")
    axes[1].set_title("HDNNP force error per site")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""The workflow's NPT step (Herbold & Behler 2023, section 4.4): the lattice constant of every
structure with the final HDNNP1 in LAMMPS (:func:`pyfragnn.md.lammps_npt`), extrapolation
warnings counted, and optionally checked against the reference method's pressures at the
potential's cell (:func:`pyfragnn.validation.pressure_check`). Units: Å, GPa, bar, K.
"""
from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np

from .runner import Context, WorkflowError
from .steps import _relaxed

__all__ = ["run_npt", "npt_cell"]


def npt_cell(cfg, relaxed):
    """The NPT simulation cell of a relaxed structure: ``npt.cell`` (integer matrix) applied to
    it, or else ``md.supercell`` repetitions."""
    from ase.build import make_supercell

    if cfg.npt.cell:
        return make_supercell(relaxed, np.reshape(cfg.npt.cell, (3, 3)))
    return relaxed.repeat(tuple(cfg.md.supercell))


def _lattice_png(path, name: str, res: Dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["series"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(s["time_ps"], np.array(s["scale"]) * res["lengths_mean"][0] / res["scale_mean"],
            lw=1)
    ax.axhline(res["lengths_mean"][0], color="k", ls="--", lw=0.8,
               label=f"mean (2nd half) {res['lengths_mean'][0]:.3f} Å")
    ax.set_xlabel("NPT time (ps)")
    ax.set_ylabel("cell length a (Å)")
    ax.set_title(f"{name}: NPT {res['temperature_K']:g} K, {res['pressure_bar']:g} bar")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_npt(ctx: Context) -> Dict[str, Any]:
    """NPT of every structure; returns {structure: lammps_npt result (+ pressure check)}."""
    from ..md import lammps_npt
    from ..validation import pressure_check

    n = ctx.cfg.npt
    if n.steps == 0:
        return {"skipped": True}
    pot = ctx.input("active") / "hdnnp1" / "potential.fragnn"
    rec: Dict[str, Any] = {"skipped": False, "structures": {}}
    for a in _relaxed(ctx):
        name = str(a.info["name"])
        done = ctx.out / f"npt_{name}.json"  # resumable per structure
        if done.exists():
            rec["structures"][name] = json.loads(done.read_text())
            continue
        cell = npt_cell(ctx.cfg, a)
        try:
            res = lammps_npt(pot, cell, ctx.out / name, n.steps, n.equilibration_steps,
                             n.temperature, n.pressure_bar, 0.5, n.nprocs,
                             seed=ctx.cfg.run.seed + 31)
        except RuntimeError as exc:
            raise WorkflowError(f"npt: {name}: {exc}") from None
        _lattice_png(ctx.out / f"npt_{name}.png", name, res)
        ctx.say(f"{name}: {len(cell)} atoms, {n.steps} NPT steps: cell scale "
                f"{res['scale_mean']:.4f} ± {res['scale_std']:.4f} of the relaxed one, "
                f"a = {res['lengths_mean'][0]:.3f} Å, {res['extrapolation_warnings']} "
                "extrapolation warnings")
        if n.pressure_frames:
            bare = a.copy()
            bare.calc = None
            pc = pressure_check(str(pot), bare, res["scale_mean"], ctx.cfg.reference.method,
                                frames=n.pressure_frames, temperature=n.temperature,
                                seed=ctx.cfg.run.seed + 17, threads=ctx.cfg.run.workers)
            res["pressure_check"] = pc
            ctx.say(f"{name}: pressure at the NPT cell: potential {pc['P_nn_mean']:.3f} GPa, "
                    f"reference {pc['P_ref_mean']:.3f} GPa; reference's own scale "
                    f"≈ {pc['scale_reference']:.4f}")
        done.write_text(json.dumps(res, indent=1))
        rec["structures"][name] = res
    return rec

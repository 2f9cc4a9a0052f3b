"""``report.md`` and ``summary.json`` of a workflow run: the analogues of the paper's
Tables 1-6 and Figs. 6/7, the active-learning record, the MD check and the reference cost.
Numbers are printed as measured; the checks section says which criteria failed."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from .runner import Context
from ..frames import read_frames

__all__ = ["write_report", "summary"]


def _tab(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if not np.isfinite(v) else (f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}")
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def _fragment_table(frames: List) -> List[List[Any]]:
    """Per site: fragments, mean N_atom, mean N_central, N_central/N_atom (Tables 1/2)."""
    by: Dict[str, List] = {}
    for f in frames:
        by.setdefault(str(f.info.get("site", "?")), []).append(f)
    rows = []
    for site, fr in sorted(by.items()):
        n = np.array([len(f) for f in fr], float)
        c = np.array([int(np.sum(f.arrays["central"])) if "central" in f.arrays else 0
                      for f in fr], float)
        rows.append([site, len(fr), f"{n.min():.0f}-{n.max():.0f}", float(c.mean()),
                     float(c.sum() / n.sum())])
    return rows


def _rmse_rows(d: Path, name: str) -> List[List[Any]]:
    p = d / "rmse_table.csv"
    if not p.exists():
        return []
    with open(p) as fh:
        rows = list(csv.DictReader(fh))
    return [[name, r["label"], r["set"], int(r["structures"]), float(r["rmse_E_eV_atom"]),
             float(r["rmse_F_eV_A"])] for r in rows]


def summary(ctx: Context) -> Dict[str, Any]:
    """The headline figures (eV/Å, eV/atom) and the reference cost (CPU-seconds)."""
    from .steps import small_radius

    val, md, act = ctx.record("validate"), ctx.record("md"), ctx.record("active")
    pots = val["potentials"]

    def f_rmse(name: str) -> float:
        return float(pots[name]["all"]["rmse_F"]) if name in pots else float("nan")

    ini, lab = ctx.record("initial"), ctx.record("label")
    al_cost = sum(float(r.get("label_cpu_s", 0.0)) for r in act["iterations"])
    al_cost_large = sum(float(r.get("label_cpu_s_large", 0.0)) for r in act["iterations"])
    return {
        "hdnnp1_bulk_force_rmse": f_rmse("HDNNP1"),
        "hdnnp2_bulk_force_rmse": f_rmse("HDNNP2"),
        "hdnnp3_bulk_force_rmse": f_rmse("HDNNP3"),
        "hdnnp1_before_al_bulk_force_rmse": f_rmse("HDNNP1 before AL"),
        "hdnnp1_bulk_extrapolation_warnings": int(pots["HDNNP1"]["all"]["extrapolations"]),
        "bulk_force_spread": float(val["force_spread_eV_A"]),
        "md_energy_drift_ev_per_atom": float(md.get("drift_eV_atom", float("nan"))),
        "md_steps_completed": int(md.get("steps_completed", 0)),
        "md_steps": int(ctx.cfg.md.steps),
        "md_passed": bool(md.get("passed", False)),
        "active_learning_converged": bool(act["converged"]),
        "active_learning_iterations": sum(r["iteration"] != "final" for r in act["iterations"]),
        "active_learning_shipped_iteration": act.get("shipped", "last"),
        "reference_cpu_s": {"hdnnp1": float(ini["label_cpu_s"] + lab["small"]["label_cpu_s"]
                                            + al_cost),
                            "hdnnp2": float(lab["large"]["label_cpu_s"]) + al_cost_large,
                            "validation": float(val["label_cpu_s"])},
        "outliers_left_out": len(ini["outliers"]) + len(lab["small"]["outliers"])
        + len(lab["large"]["outliers"]) + sum(len(r.get("outliers", []))
                                              + len(r.get("large_outliers", []))
                                              for r in act["iterations"]),
        "r_c": float(ctx.record("range")["r_c"]),
        "small_radius": small_radius(ctx),
        "npt": {k: {"scale": v["scale_mean"], "lengths": v["lengths_mean"],
                    "extrapolation_warnings": v["extrapolation_warnings"],
                    "reference_scale": v.get("pressure_check", {}).get("scale_reference")}
                for k, v in ctx.record("npt").get("structures", {}).items()},
        "hdnnp1_md_force_rmse_by_temperature": {
            st: {t: e["rmse_F"] for t, e in r["md_by_temperature"].items()}
            for st, r in pots["HDNNP1"]["structures"].items()},
    }


def _shipped(act: Dict[str, Any]) -> str:
    """The sentence naming the shipped committee (``active.select``)."""
    it = act.get("shipped", "last")
    if it == "last" or act["converged"]:
        return ""
    rec = next(r for r in act["iterations"] if r["iteration"] == it)
    what = ("the committee trained last (row 'final': explored once more, no new data)"
            if it == "final" else f"the committee explored in iteration {it}")
    return (f" HDNNP1 and its partner are {what}: of the explored committees, no run stopped "
            f"and the fewest flagged atom-frames ({rec['exploration']['flagged_fraction']:.4f}).")


def _npt_section(ctx: Context) -> List[str]:
    """Section 4.4 analogue: NPT lattice constants with HDNNP1, the reference's pressures."""
    npt = ctx.record("npt")
    L = ["## NPT lattice constants (LAMMPS, HDNNP1; section 4.4)", ""]
    if npt.get("skipped"):
        return L + ["not run (npt.steps = 0)", ""]
    rows = []
    for name, r in npt["structures"].items():
        pc = r.get("pressure_check", {})
        rows.append([name, r["atoms"], r["steps"], r["T_mean_K"], r["P_mean_bar"],
                     r["scale_mean"], r["scale_std"], " × ".join(f"{x:.3f}" for x in
                                                                  r["lengths_mean"]),
                     r["extrapolation_warnings"], pc.get("P_nn_mean", float("nan")),
                     pc.get("P_ref_mean", float("nan")), pc.get("scale_reference", float("nan")),
                     pc.get("F_rmse_eV_A", float("nan"))])
        if (ctx.input("npt") / f"npt_{name}.png").exists():
            shutil.copy(ctx.input("npt") / f"npt_{name}.png", ctx.out / f"npt_{name}.png")
    cfg = ctx.cfg.npt
    L += [f"{cfg.equilibration_steps} NVT (+ as many Berendsen-barostat steps in orthogonal "
          f"cells), then Nosé-Hoover NPT, 0.5 fs, {cfg.temperature:g} K, {cfg.pressure_bar:g} "
          "bar; means over the second half. Scale: (V/V_relaxed)^(1/3). Pressure check: static "
          "pressures of HDNNP1 and the reference method on MD frames of the relaxed cell scaled "
          "to the NPT result; 'reference scale' is where the reference's pressure would match "
          "(from its slope dP/ds).", "",
          _tab(rows, ["structure", "atoms", "steps", "⟨T⟩ (K)", "⟨P⟩ (bar)", "scale",
                      "± (std)", "cell lengths (Å)", "extrapolation warnings",
                      "P HDNNP1 (GPa)", "P reference (GPa)", "reference scale",
                      "F RMSE on those frames (eV/Å)"]), ""]
    L += [f"![{n}](npt_{n}.png)" for n in npt["structures"]] + [""]
    return L


def write_report(ctx: Context) -> Dict[str, Any]:
    cfg = ctx.cfg
    s = summary(ctx)
    rng, val, act, md = (ctx.record(k) for k in ("range", "validate", "active", "md"))
    from .steps import large_data

    small = read_frames(ctx.input("label") / "small.extxyz")
    for it in sorted(ctx.input("active").glob("iter*/added.extxyz")):
        small += read_frames(it)
    large = sum(large_data(ctx), [])
    for png in ("parity.png", "force_error_per_site.png"):
        if (ctx.input("validate") / png).exists():
            shutil.copy(ctx.input("validate") / png, ctx.out / png)
    hdr = ["site", "fragments", "N_atom", "mean N_central", "N_central/N_atom"]
    L = [f"# Fragment workflow report: {', '.join(x.name for x in cfg.structures)}", "",
         f"Reference method: `{cfg.reference.method}`. R_c = {s['r_c']:.3f} Å "
         f"({rng['source']}). Seed {cfg.run.seed}.", ""]
    if rng["source"] == "hessian":
        L += ["Hessian analysis (R_frag^conv per structure): " + ", ".join(
            f"{k} {v['r_frag_conv']:.3f} Å" for k, v in rng["structures"].items()), ""]
    L += ["## Tables 1/2: training fragments (bulk-complete centres within R_c)", "",
          f"Small fragments (R = {s['small_radius']:.3f} Å) of the bulk snapshots and the "
          "active-learning candidates (HDNNP1):", "",
          _tab(_fragment_table(small), hdr), "",
          f"Large fragments (R = {2 * s['r_c']:.3f} Å) around centres of the same structures "
          "(HDNNP2/3):", "", _tab(_fragment_table(large), hdr),
          "", "## Tables 3/4: fragment train/test RMSEs (eV/atom, eV/Å)", ""]
    rows = []
    for name, d in (("HDNNP1 before AL", ctx.input("train") / "hdnnp1"),
                    ("HDNNP1", ctx.input("active") / "hdnnp1"),
                    ("HDNNP2", ctx.input("controls") / "hdnnp2"),
                    ("HDNNP3", ctx.input("controls") / "hdnnp3")):
        rows += _rmse_rows(d, name)
    L += [_tab(rows, ["potential", "fragment type", "set", "structures", "E RMSE", "F RMSE"]), ""]
    L += ["## Table 6: bulk validation (held out; eV/atom, eV/Å)", "",
          f"{val['frames']['md']} MD frames ("
          f"{', '.join(f'{t:g}' for t in cfg.validation.md_temperatures)} K, final HDNNP1) "
          f"and {val['frames']['distorted']} rattled/strained cells. RMS reference force "
          f"component: {s['bulk_force_spread']:.3f} eV/Å.", ""]
    rows = []
    for name, r in val["potentials"].items():
        for st, e in r["structures"].items():
            rows.append([name, st, e["raw"]["n"], e["raw"]["rmse_E"],
                         e["offset_corrected"]["rmse_E"], e["raw"]["rmse_F"], e["md"]["rmse_F"],
                         e["raw"]["extrapolations"]])
    L += [_tab(rows, ["potential", "structure", "frames", "E RMSE", "E RMSE (offset)",
                      "F RMSE", "F RMSE (MD frames)", "extrapolation warnings"]), ""]
    sites = list(next(iter(val["potentials"].values()))["per_site_F"]) if val["potentials"] \
        else []
    dev = val["reference_deviation"]
    L += ["## Figs. 6/7: reference force deviation fragment vs bulk, HDNNP error per site", "",
          "![sites](force_error_per_site.png) ![parity](parity.png)", "",
          _tab([[st, dev["small"].get(st, float("nan")), dev["large"].get(st, float("nan"))]
                + [r["per_site_F"].get(st, float("nan")) for r in val["potentials"].values()]
                for st in sites],
               ["site", "ref |ΔF| small", "ref |ΔF| large"]
               + [f"{k} F RMSE" for k in val["potentials"]]), ""]
    L += ["## Active learning of HDNNP1", "",
          f"{s['active_learning_iterations']} iterations, {act['added']} fragments added, "
          + ("converged: an iteration ran every exploration to its end with at most "
           f"{cfg.active.tolerance:g} of the sampled atom-frames above {cfg.active.threshold:g} "
           "eV/Å or extrapolating" if act["converged"]
           else "NOT converged within the iterations allowed") + "."
          + _shipped(act),
          "", _tab([[r["iteration"], r["exploration"]["frames"], r["exploration"]["atoms"],
                     r["exploration"]["max_deviation"], r["exploration"]["above"],
                     r["exploration"]["extrapolating"], r["exploration"]["flagged_fraction"],
                     "; ".join(x["stopped"] for x in r["runs"] if x["stopped"]) or "-",
                     r["candidates"], r.get("kept", 0)]
                    for r in act["iterations"]],
                   ["iteration", "frames", "atom-frames", "max deviation (eV/Å)",
                    "above threshold", "extrapolating", "flagged fraction", "runs stopped",
                    "candidates", "fragments kept"]), ""]
    L += ["## MD check (LAMMPS NVE, HDNNP1)", ""]
    if md.get("skipped"):
        L += ["not run (md.steps = 0)", ""]
    elif "error" in md:
        L += [f"**FAILED** after {md['steps_completed']} of {cfg.md.steps} steps:", "",
              "```", md["error"][-1500:], "```", ""]
    else:
        L += [f"{md['atoms']} atoms, {md['steps']} steps of {cfg.md.timestep_fs} fs, np "
              f"{md['nprocs']}: energy drift {md['drift_eV_atom']:.2e} eV/atom "
              f"(limit {cfg.md.max_drift:g}: {'pass' if md['passed'] else 'FAIL'}), "
              f"{md['ns_per_day']:.3f} ns/day, {md['us_per_atom_step']:.1f} µs/atom-step", ""]
    L += _npt_section(ctx)
    cost = s["reference_cpu_s"]
    L += ["## Reference cost (CPU-seconds of the reference method)", "",
          _tab([["HDNNP1 (+ partner)", cost["hdnnp1"]], ["HDNNP2/3", cost["hdnnp2"]],
                ["bulk validation", cost["validation"]]], ["training set", "CPU-s"]), "",
          f"Reference outliers left out: {s['outliers_left_out']}.", ""]
    (ctx.out / "report.md").write_text("\n".join(L))
    (ctx.out / "summary.json").write_text(json.dumps(s, indent=1))
    return s

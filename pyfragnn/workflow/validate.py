"""The workflow's bulk validation (Herbold & Behler 2023, section 4.3, Table 6, Figs. 6/7).

Held-out periodic frames of every structure: ``validation.md_frames`` frames of NVT MD at
each of ``validation.md_temperatures`` with the final HDNNP1 (``validation.md_steps`` apart) and
``validation.distorted`` rattled + strained cells, labelled with the reference method. Every
potential is evaluated on them: energy RMSE (eV/atom, raw and after the offset of section 4.3
taken from the relaxed structure), force-component RMSE (eV/Å), per structure and per site.
The reference force deviation between a fragment's centre and the same atom in the bulk
(small and large fragments of the first MD frames) is the analogue of Figs. 6/7.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from .runner import Context
from ..frames import read_frames, write_frames
from .steps import _labelled, _r_c, _relaxed, _site_labels, _site_members

__all__ = ["run_bulk", "run_validate", "potentials_to_validate"]


def potentials_to_validate(ctx: Context) -> Dict[str, Path]:
    """Name -> potential file of every model the workflow trained (that exists)."""
    cand = {"HDNNP1": ctx.input("active") / "hdnnp1",
            "HDNNP1-partner": ctx.input("active") / "hdnnp1b",
            "HDNNP1 before AL": ctx.input("train") / "hdnnp1",
            "HDNNP2": ctx.input("controls") / "hdnnp2",
            "HDNNP3": ctx.input("controls") / "hdnnp3"}
    if not ctx.record("active")["iterations"]:
        cand.pop("HDNNP1 before AL")
    return {k: v / "potential.fragnn" for k, v in cand.items()
            if (v / "potential.fragnn").exists()}


def _frames(ctx: Context) -> List:
    from ..active_learning import explore
    from ..sampling import distorted_snapshots

    v, seed = ctx.cfg.validation, ctx.cfg.run.seed
    pot = str(ctx.input("active") / "hdnnp1" / "potential.fragnn")
    out = []
    for a in _relaxed(ctx):
        name = str(a.info["name"])
        start = a.copy()
        start.calc = None
        md = []
        for k, temp in enumerate(v.md_temperatures if v.md_frames else []):
            fr = explore(start, [pot], temp, v.md_frames * v.md_steps, 0.5, max(v.md_steps, 1),
                         stop_temperature=3.0 * temp, seed=seed + 777 + 13 * k)
            fr = [f for f in fr if int(f.info["md_step"]) > 0]
            if len(fr) < v.md_frames:
                ctx.say(f"{name}: validation MD at {temp:g} K stopped after {len(fr)} of "
                        f"{v.md_frames} frames "
                        f"({fr[-1].info.get('md_stopped', '') if fr else 'at the start'})")
            md += fr
        for f in md:
            f.info.update(structure=name, kind="md")
            for key in ("force_deviation", "extrapolations"):
                f.arrays.pop(key, None)
        dist = distorted_snapshots(start, v.distorted, v.rattle, v.strain, seed + 999)
        for f in dist:
            f.info.update(structure=name, kind="distorted")
        out += md + dist
    return out


def _reference_deviation(ctx: Context, bulk: List) -> Dict[str, Dict[str, List[float]]]:
    """|F_fragment,centre - F_bulk| (eV/Å) per fragment size and site, first 2 MD frames."""
    from ..fragments import UnsoundFragmentError
    from ..topology import StretchedBondError
    from .steps import _cut, _cutter

    r_c = _r_c(ctx)
    members = _site_members(ctx)
    rng = np.random.default_rng(ctx.cfg.run.seed + 3)
    frags, where = [], []
    seen: Dict[str, int] = {}
    for i, b in enumerate(bulk):
        name = str(b.info["structure"])
        if b.info.get("kind") != "md" or seen.get(name, 0) >= 2:
            continue
        seen[name] = seen.get(name, 0) + 1
        bare = b.copy()
        bare.calc = None
        try:
            cutter = _cutter(ctx, bare, name)
        except StretchedBondError as exc:
            ctx.say(f"frame {i}: no centre fragments: {exc}")
            continue
        for site, mem in members[name].items():
            c = int(rng.choice(mem))
            for tag, radius in (("small", r_c), ("large", 2 * r_c)):
                try:
                    frags.append(_cut(cutter, c, radius, r_c, ctx.cfg.fragments.cap, site, {}))
                    where.append((i, c, site, tag))
                except (StretchedBondError, UnsoundFragmentError) as exc:
                    ctx.say(f"no {tag} fragment around {c} of frame {i}: {exc}")
    lab = _labelled(ctx, frags, "centre_fragments")
    out: Dict[str, Dict[str, List[float]]] = {"small": {}, "large": {}}
    for f, (i, c, site, tag) in zip(lab, where):
        k = int(np.flatnonzero((f.arrays["bulk_index"] == c) & ~f.arrays["cap"])[0])
        d = float(np.linalg.norm(f.get_forces()[k] - bulk[i].get_forces()[c]))
        out[tag].setdefault(site, []).append(d)
    return out


def run_bulk(ctx: Context) -> Dict[str, Any]:
    """The held-out bulk frames with reference labels (``bulk_validation.extxyz``) and the
    centre-fragment deviations of Figs. 6/7: all that validation needs from the reference
    method, none of it from the controls (so it runs while they train)."""
    bulk = _labelled(ctx, _frames(ctx), "bulk")
    write_frames(ctx.out / "bulk_validation.extxyz", bulk)
    return {"frames": {"md": sum(1 for b in bulk if b.info["kind"] == "md"),
                       "distorted": sum(1 for b in bulk if b.info["kind"] == "distorted")},
            "label_cpu_s": float(sum(float(b.info.get("label_seconds", 0)) for b in bulk)),
            "force_spread_eV_A": float(np.sqrt(np.mean(np.concatenate(
                [b.get_forces().ravel() for b in bulk]) ** 2))) if bulk else float("nan"),
            "reference_deviation_samples": _reference_deviation(ctx, bulk)}


def run_validate(ctx: Context) -> Dict[str, Any]:
    """Errors of every trained potential on the held-out bulk frames (step ``bulk``)."""
    from ..potential import Potential
    from ..validation import errors, evaluate, offset_per_atom, rmse
    from .plots import parity_png, site_png

    bulk = read_frames(ctx.input("bulk") / "bulk_validation.extxyz")
    held = ctx.record("bulk")
    relaxed = {str(a.info["name"]): a for a in _relaxed(ctx)}
    labels = _site_labels(ctx)
    res: Dict[str, Any] = {}
    evs = {}
    for name, path in potentials_to_validate(ctx).items():
        pot = Potential.load(str(path))
        ev = evaluate(pot, bulk)
        evs[name] = ev
        per_struct, per_site = {}, {}
        for s, rel in relaxed.items():
            idx = [k for k, b in enumerate(bulk) if b.info["structure"] == s]
            sub = {"structures": [ev["structures"][k] for k in idx]}
            per_struct[s] = {"raw": errors(sub),
                             "offset_corrected": errors(sub, offset_per_atom(pot, rel)),
                             "md": errors({"structures": [ev["structures"][k] for k in idx
                                                          if bulk[k].info["kind"] == "md"]}),
                             "md_by_temperature": {
                                 f"{t:g}": errors({"structures": [
                                     ev["structures"][k] for k in idx
                                     if bulk[k].info["kind"] == "md"
                                     and float(bulk[k].info["md_temperature"]) == t]})
                                 for t in ctx.cfg.validation.md_temperatures}}
            lab = np.array(labels[s])
            for site in dict.fromkeys(labels[s]):
                per_site[site] = rmse(np.concatenate(
                    [(ev["structures"][k]["F_nn"] - ev["structures"][k]["F_ref"])[lab == site]
                     .ravel() for k in idx])) if idx else float("nan")
        res[name] = {"all": errors(ev), "structures": per_struct, "per_site_F": per_site}
        ctx.say(f"{name}: force RMSE {res[name]['all']['rmse_F']:.4f} eV/Å, "
                f"{res[name]['all']['extrapolations']} extrapolation warnings")
    dev = held["reference_deviation_samples"]
    sites = [s for lab in labels.values() for s in dict.fromkeys(lab)]
    parity_png(ctx.out / "parity.png", evs, ctx.cfg.reference.method)
    site_png(ctx.out / "force_error_per_site.png", sites, dev,
             {k: v["per_site_F"] for k, v in res.items()}, ctx.cfg.reference.method,
             r_c=_r_c(ctx))
    return {"frames": held["frames"], "label_cpu_s": held["label_cpu_s"],
            "force_spread_eV_A": held["force_spread_eV_A"], "potentials": res,
            "reference_deviation": {t: {s: float(np.sqrt(np.mean(np.square(v))))
                                        for s, v in d.items()} for t, d in dev.items()}}

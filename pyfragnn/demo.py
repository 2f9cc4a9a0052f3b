"""``pyfragnn demo``: the paper's experiment in miniature, run through the workflow.

The configuration ``pyfragnn/data/demo_irmof1.toml`` (IRMOF-1 primitive cell, GFN2-xTB) goes
through :mod:`pyfragnn.workflow`: relaxation, reference MD of small fragments in vacuum, a
preliminary committee, bulk snapshots, small (radius 5.38 Å, GFN2-xTB's Hessian range, around
R_c = 4.0 Å environments) and large (2 R_c) fragments, HDNNP1 with
its committee partner and HDNNP2, active learning of HDNNP1, bulk validation against the
reference, a LAMMPS NVE check of the 2×2×2 supercell and the report. The data come only from
the reference method and from potentials the demo trains itself.

The demo then checks the paper's claim on its own numbers and says whether it holds:

- HDNNP1 bulk force RMSE ≤ ``ratio_limit`` × HDNNP2's and ≤ ``rmse_limit`` eV/Å;
- the NVE run completes every step with |energy drift| ≤ ``md.max_drift`` eV/atom.

``summary.json`` in the output folder holds the figures (``hdnnp1_bulk_force_rmse``,
``hdnnp2_bulk_force_rmse`` in eV/Å, ``md_energy_drift_ev_per_atom``, ``md_steps_completed``),
the checks and ``passed``; the command exits 1 when a check fails. A rerun reuses every
finished step.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

__all__ = ["DEMO_CONFIG", "IRMOF1_PRIM", "demo_config", "run_demo", "check_demo",
           "register_cli"]

PathLike = Union[str, os.PathLike]

DATA_DIR = Path(__file__).resolve().parent / "data"
#: IRMOF-1 fcc primitive cell (106 atoms, Zn8 O26 C48 H24, a = 18.266 Å, 60°).
IRMOF1_PRIM = DATA_DIR / "IRMOF-1_prim.extxyz"
#: The demo's workflow configuration.
DEMO_CONFIG = DATA_DIR / "demo_irmof1.toml"

#: Reduced settings for a quick functional check of the demo (not a science result).
CI_OVERRIDES: Dict[str, Dict[str, Any]] = {
    "relax": {"steps": 1},
    "initial": {"md_steps": 10, "sample_every": 5},
    "sampling": {"temperatures": [300.0], "md_steps": 40, "sample_every": 20, "strained": 1},
    "fragments": {"small_per_site": 1, "large_per_site": 1},
    "training": {"epochs": 2, "hidden": [6, 6], "committee_hidden": [5, 5], "radial_n": 3,
                 "angular_zeta": [1.0], "test_fraction": 0.2},
    "active": {"iterations": 1, "temperatures": [300.0], "md_steps": 40, "sample_every": 20,
               "max_candidates": 4, "epochs": 1, "supercell": [1, 1, 1], "nprocs": 1},
    "validation": {"md_frames": 1, "md_steps": 20, "distorted": 1},
    "md": {"steps": 20},
}


def demo_config(outdir: PathLike, seed: int = 1, workers: int = 2, scale: str = "default"):
    """The demo's :class:`~pyfragnn.workflow.WorkflowConfig` with its run folder
    ``outdir/run``; ``scale='ci'`` applies :data:`CI_OVERRIDES`."""
    from .workflow.config import config_from_dict, tomllib

    if scale not in ("default", "ci"):
        raise ValueError(f"scale must be 'default' or 'ci', not {scale!r}")
    data = tomllib.loads(DEMO_CONFIG.read_text())
    if scale == "ci":
        for table, keys in CI_OVERRIDES.items():
            data[table].update(keys)
    data["run"].update(seed=int(seed), workers=int(workers), directory="run")
    return config_from_dict(data, Path(outdir))


def check_demo(summary: Dict[str, Any], max_drift: float, ratio_limit: float = 1.25,
               rmse_limit: float = 0.20) -> Dict[str, Dict[str, Any]]:
    """The demo's pass/fail checks on a workflow summary (see the module docstring)."""
    h1, h2 = summary["hdnnp1_bulk_force_rmse"], summary["hdnnp2_bulk_force_rmse"]
    drift, done = summary["md_energy_drift_ev_per_atom"], summary["md_steps_completed"]
    return {
        "hdnnp1_vs_hdnnp2": {"value": h1 / h2, "limit": ratio_limit,
                             "passed": bool(h1 <= ratio_limit * h2)},
        "hdnnp1_bulk_force_rmse": {"value": h1, "limit": rmse_limit,
                                   "passed": bool(h1 <= rmse_limit)},
        "md_completed": {"value": done, "limit": summary["md_steps"],
                         "passed": bool(done >= summary["md_steps"] > 0)},
        "md_energy_drift": {"value": drift, "limit": max_drift,
                            "passed": bool(abs(drift) <= max_drift)},
    }


def run_demo(outdir: PathLike = "pyfragnn_demo", seed: int = 1, workers: int = 2,
             scale: str = "default") -> Dict[str, Any]:
    """Run (or resume) the demo in ``outdir``; returns ``summary.json``'s content (with
    ``checks`` and ``passed``)."""
    from .workflow import run_workflow

    if importlib.util.find_spec("tblite") is None:
        raise RuntimeError("the demo needs GFN2-xTB from the 'tblite' package: "
                           "pip install tblite (or pip install '.[xtb]')")
    out = Path(outdir)
    cfg = demo_config(out, seed, workers, scale)
    rec = run_workflow(cfg)
    summary = dict(rec["report"])
    summary["checks"] = check_demo(summary, cfg.md.max_drift)
    summary["passed"] = all(c["passed"] for c in summary["checks"].values())
    summary.update(seed=seed, scale=scale,
                   report=str(out / "run" / "report" / "report.md"),
                   wall_s={k: json.loads((out / "run" / k / "step.json").read_text())["wall_s"]
                           for k in rec})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, c in summary["checks"].items():
        print(f"demo check {name}: {c['value']:.4g} (limit {c['limit']:g}): "
              f"{'pass' if c['passed'] else 'FAIL'}")
    print(f"demo: {'PASSED' if summary['passed'] else 'FAILED'} — the paper's result "
          f"{'reproduced' if summary['passed'] else 'NOT reproduced'} at seed {seed}; "
          f"report: {summary['report']}")
    return summary


def _cmd_demo(args: argparse.Namespace) -> int:
    s = run_demo(args.outdir, seed=args.seed, workers=args.workers, scale=args.scale)
    return 0 if s["passed"] else 1


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``demo`` to the ``pyfragnn`` command line."""
    p = subparsers.add_parser(
        "demo", help="IRMOF-1 with GFN2-xTB through the fragment workflow: HDNNP1 from small "
                     "fragments vs HDNNP2 from large ones on the bulk, LAMMPS MD")
    p.add_argument("--outdir", default="pyfragnn_demo", help="output folder (reused on rerun)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    p.add_argument("--workers", type=int, default=2, help="parallel GFN2-xTB calculations")
    p.add_argument("--scale", default="default", choices=("default", "ci"),
                   help="'ci': a reduced functional check, not a science result")
    p.set_defaults(func=_cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyfragnn.demo")
    register_cli(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

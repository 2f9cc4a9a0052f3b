"""The fragment-learning workflow of Herbold & Behler (2023) for any periodic structure and
any reference method: one TOML configuration, resumable steps, one command.

    pyfragnn run workflow.toml                  # run or resume every step
    pyfragnn run workflow.toml --until train    # stop after a step
    pyfragnn run --keys                         # every configuration key, documented

Steps (see :mod:`pyfragnn.workflow.steps`): relax → sites → range → initial → preliminary →
sampling → fragments → label → train → active → controls → bulk → md → npt → validate →
report. Python:
``run_workflow(load_config("workflow.toml"))``.
"""
from __future__ import annotations

import argparse
import sys

from .config import WorkflowConfig, WorkflowConfigError, config_from_dict, describe, load_config
from .runner import WorkflowError, run_workflow, step_names

__all__ = ["WorkflowConfig", "WorkflowConfigError", "WorkflowError", "load_config",
           "config_from_dict", "describe", "run_workflow", "step_names", "register_cli"]


def _cmd_run(args: argparse.Namespace) -> int:
    if args.keys:
        sys.stdout.write(describe())
        return 0
    if not args.config:
        print("pyfragnn run: error: a WORKFLOW.toml is needed (or --keys)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        rec = run_workflow(cfg, until=args.until, force=args.rerun or ())
    except (WorkflowConfigError, WorkflowError) as exc:
        print(f"pyfragnn run: error: {exc}", file=sys.stderr)
        return 2
    if "report" in rec:
        print(f"report: {cfg.path(cfg.run.directory) / 'report' / 'report.md'}")
    return 0


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help="run or resume the fragment workflow of a TOML file",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="workflow configuration (TOML)")
    p.add_argument("--until", metavar="STEP", help="stop after STEP (" + ", ".join(
        step_names()) + ")")
    p.add_argument("--rerun", metavar="STEP", action="append",
                   help="rerun STEP (and the steps after it) even if its inputs are unchanged")
    p.add_argument("--keys", action="store_true", help="print every configuration key")
    p.set_defaults(func=_cmd_run)
    return p

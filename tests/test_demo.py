"""``pyfragnn example`` and the reduced IRMOF-1 / GFN2-xTB demo (``run_demo(scale='ci')``).

What they prove: the main jobs run end to end on a fresh output directory with only the package
(shipped structure, no ../shared), write their outputs with finite errors, and a rerun reuses
every finished step instead of recomputing it.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time

import pytest

from conftest import package_env


def test_example_cli_runs_fast_and_prints_errors(tmp_path):
    """``pyfragnn example``: the shipped potential on the shipped structure (or, with none
    shipped, the Cu/EMT training) and a short MD with finite energy drift."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pyfragnn", "example", "--outdir",
                        str(tmp_path / "ex"), "--md-steps", "50"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=180,
                       env=package_env())
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert "energy drift" in p.stdout, p.stdout
    summary = json.loads((tmp_path / "ex" / "example.json").read_text())
    assert math.isfinite(summary["md"]["drift_eV_atom"])
    if "rmse_F_eV_A" in summary:           # the trained Cu/EMT case
        assert summary["rmse_F_eV_A"] < 0.1, summary
        assert summary["rmse_E_eV_atom"] < 0.02, summary
        assert abs(summary["md"]["drift_eV_atom"]) < 1e-3, summary
    print(f"pyfragnn example: {wall:.1f} s wall")  # a figure, not a test (timings vary)


@pytest.mark.skipif(importlib.util.find_spec("tblite") is None,
                    reason="the demo needs GFN2-xTB: the 'tblite' package is not installed")
def test_demo_ci_scale_runs_the_workflow_checks_and_reuses_steps(tmp_path, capsys):
    """The demo at a reduced scale (a functional check, not the science result): every
    workflow step runs on the shipped IRMOF-1 cell with GFN2-xTB, summary.json carries the
    figures and the checks, the verdict is printed, and a rerun reuses every step."""
    from pyfragnn.demo import run_demo
    from pyfragnn.workflow import step_names

    out = tmp_path / "demo"
    t0 = time.perf_counter()
    summary = run_demo(out, scale="ci", workers=2)
    wall = time.perf_counter() - t0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["passed"] == summary["passed"]
    for key in ("hdnnp1_bulk_force_rmse", "hdnnp2_bulk_force_rmse"):
        assert math.isfinite(saved[key]) and saved[key] > 0, saved
    assert saved["md_steps_completed"] >= 0 and "md_energy_drift_ev_per_atom" in saved
    assert set(saved["checks"]) == {"hdnnp1_vs_hdnnp2", "hdnnp1_bulk_force_rmse",
                                    "md_completed", "md_energy_drift"}
    assert saved["passed"] == all(c["passed"] for c in saved["checks"].values())
    report = (out / "run" / "report" / "report.md").read_text()
    rows = [l for l in report.splitlines() if l.startswith("| HDNNP")]
    assert rows and all("nan" not in l and "inf" not in l for l in rows), report
    printed = capsys.readouterr().out
    assert ("demo: PASSED" in printed) == saved["passed"] and "demo check" in printed
    print(f"ci demo: {wall:.0f} s wall")  # a figure, not a test (timings vary)

    run_demo(out, scale="ci", workers=2)
    again = capsys.readouterr().out
    for s in step_names():
        assert f"{s}: reusing" in again, again


def test_demo_exits_nonzero_when_a_check_fails():
    """check_demo is the demo's verdict: each criterion of the issue, measured, pass/fail."""
    from pyfragnn.demo import check_demo

    good = {"hdnnp1_bulk_force_rmse": 0.10, "hdnnp2_bulk_force_rmse": 0.09,
            "md_energy_drift_ev_per_atom": 2e-4, "md_steps_completed": 2000, "md_steps": 2000}
    assert all(c["passed"] for c in check_demo(good, 1e-3).values())
    for key, bad, failing in (("hdnnp1_bulk_force_rmse", 0.15, "hdnnp1_vs_hdnnp2"),
                              ("hdnnp1_bulk_force_rmse", 0.105, None),
                              ("md_energy_drift_ev_per_atom", -2e-3, "md_energy_drift"),
                              ("md_steps_completed", 120, "md_completed")):
        checks = check_demo(dict(good, **{key: bad}), 1e-3)
        failed = {k for k, c in checks.items() if not c["passed"]}
        assert failed == ({failing} if failing else set()), (key, bad, failed)
    checks = check_demo(dict(good, hdnnp1_bulk_force_rmse=0.25, hdnnp2_bulk_force_rmse=0.30),
                        1e-3)
    assert not checks["hdnnp1_bulk_force_rmse"]["passed"]

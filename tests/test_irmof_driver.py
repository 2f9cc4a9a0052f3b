"""examples/irmof/irmof.py: the acceptance checks of the IRMOF experiments (issues 12, 13)
say FAIL for each figure past its limit and check what each configuration asks for."""
import importlib.util
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parents[1] / "examples" / "irmof" / "irmof.py"


@pytest.fixture(scope="module")
def irmof():
    if not DRIVER.exists():
        pytest.skip("examples/ is not beside the tests (installed package only)")
    spec = importlib.util.spec_from_file_location("irmof_driver", DRIVER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _records(f300=0.05, f600=0.07, bulk=(0.09, 0.12), ratio_den=0.1, warn=0, npt=0):
    sts = ["IRMOF-1", "IRMOF-10"]
    summary = {"hdnnp1_md_force_rmse_by_temperature": {s: {"300": f300, "600": f600}
                                                       for s in sts},
               "npt": {s: {"extrapolation_warnings": npt} for s in sts},
               "md_energy_drift_ev_per_atom": 2e-4, "md_passed": True}
    validate = {"potentials": {
        "HDNNP1": {"structures": {s: {"raw": {"rmse_F": b, "extrapolations": warn}}
                                  for s, b in zip(sts, bulk)}},
        "HDNNP2": {"structures": {s: {"raw": {"rmse_F": ratio_den, "extrapolations": 0}}
                                  for s in sts}}}}
    return summary, validate


def failed(rows):
    return sorted(what for what, _, _, ok in rows if not ok)


def test_irmof1_limits_are_issue_12s(irmof):
    lim = irmof.LIMITS["irmof1"]
    s, v = _records(f300=0.05, f600=0.086, bulk=(0.09, 0.09), ratio_den=0.1)
    assert failed(irmof.checks(s, v, lim)) == sorted([
        "IRMOF-1: HDNNP1 force RMSE, 600 K MD frames (eV/Å)",
        "IRMOF-10: HDNNP1 force RMSE, 600 K MD frames (eV/Å)"])
    s, v = _records(f300=0.05, f600=0.079, bulk=(0.2, 0.2), ratio_den=0.19, warn=3, npt=1)
    # bulk RMSE and bulk warnings are not issue 12's figures; NPT warnings are
    assert failed(irmof.checks(s, v, lim)) == sorted(["IRMOF-1: extrapolation warnings in NPT",
                                               "IRMOF-10: extrapolation warnings in NPT"])


def test_three_framework_limits_are_issue_13s(irmof):
    lim = irmof.LIMITS["irmof_all"]
    s, v = _records(f300=0.2, f600=0.3, bulk=(0.095, 0.12), ratio_den=0.1, warn=0)
    assert failed(irmof.checks(s, v, lim)) == sorted([
        "IRMOF-10: HDNNP1 / HDNNP2 force RMSE",
        "IRMOF-10: HDNNP1 force RMSE, all bulk frames (eV/Å)"])
    s, v = _records(bulk=(0.08, 0.08), ratio_den=0.1, warn=2)
    assert failed(irmof.checks(s, v, lim)) == sorted([
        "IRMOF-1: HDNNP1 extrapolation warnings in the bulk frames",
        "IRMOF-10: HDNNP1 extrapolation warnings in the bulk frames"])
    s, v = _records(bulk=(0.08, 0.08), ratio_den=0.1)
    rows = irmof.checks(s, v, lim)
    assert failed(rows) == [] and len(rows) == 2 * 4 + 1


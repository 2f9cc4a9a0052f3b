"""Packaging: importing pyfragnn maps no MPI library, the one version, the installed layout."""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import package_env

ROOT = Path(__file__).resolve().parents[1]

MAPS = """
import pyfragnn, pyfragnn.labelling, pyfragnn.fragments, pyfragnn.training
from pyfragnn import FragNN, Potential
Potential.load("irmof1_hdnnp1_gfn2")
maps = open("/proc/self/maps").read()
print("LIBMPI" if "libmpi" in maps else "CLEAN")
import pyfragnn.lammps
print("LIBMPI" if "libmpi" in open("/proc/self/maps").read() else "CLEAN")
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_import_maps_no_mpi_library(tmp_path):
    """`import pyfragnn` and the light modules load no libmpi (it would clash with another
    MPI's mpi4py); pyfragnn.lammps, used for LAMMPS, does load mpich's."""
    r = subprocess.run([sys.executable, "-c", MAPS], cwd=tmp_path, env=package_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["CLEAN", "LIBMPI"]


def _pyproject_version() -> str:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["version"]


def test_one_version():
    import pyfragnn

    try:
        installed = metadata.version("pyfragnn")
    except metadata.PackageNotFoundError:
        assert pyfragnn.__version__ == "0+unknown"  # a source tree built in place
        return
    assert pyfragnn.__version__ == installed == _pyproject_version()


def test_no_setup_metadata_besides_pyproject():
    """setup.py only drives the C++ build: name, version and dependencies live in
    pyproject.toml alone."""
    text = (ROOT / "setup.py").read_text()
    for key in ("version=", "install_requires", "name=", "python_requires"):
        assert key not in text, key

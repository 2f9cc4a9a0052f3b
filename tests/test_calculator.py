"""The ASE calculator in ASE workflows: MD (Verlet, Langevin, NPT), relaxation with a cell filter."""
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError

from conftest import make_synthetic_potential, water_like


@pytest.fixture(scope="module")
def pot():
    return make_synthetic_potential(seed=4)


def periodic(pot):
    from pyfragnn import FragNN

    pos, sym = water_like(6, 6.5, seed=5)
    atoms = Atoms(sym, positions=pos, cell=np.eye(3) * 6.5, pbc=True)
    atoms.calc = FragNN(pot)
    return atoms


def test_properties_and_results(pot):
    atoms = periodic(pot)
    e = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == e
    assert atoms.calc.results["energies"].shape == (len(atoms),)
    assert atoms.get_stress().shape == (6,)
    assert "n_extrapolations" in atoms.calc.results
    mol = Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]])
    mol.calc = atoms.calc
    mol.get_forces()
    with pytest.raises(PropertyNotImplementedError):
        mol.get_stress()


def test_changed_elements_reach_the_kernel(pot):
    """The calculator converts symbols to element indices once per set of atomic numbers: a
    change of elements (same atom count) between calls must give the new structure's energy
    and forces, as a fresh calculator and Potential.compute do."""
    from pyfragnn import FragNN

    atoms = periodic(pot)
    e0 = atoms.get_potential_energy()
    o, h = (int(np.flatnonzero(atoms.numbers == z)[0]) for z in (8, 1))
    atoms.numbers[[o, h]] = atoms.numbers[[h, o]]  # in place: swap an O and an H
    e1, f1 = atoms.get_potential_energy(), atoms.get_forces()
    assert e1 != e0
    fresh = atoms.copy()
    fresh.calc = FragNN(pot)
    assert e1 == fresh.get_potential_energy()
    np.testing.assert_array_equal(f1, fresh.get_forces())
    ref = pot.compute(atoms.positions, atoms.get_chemical_symbols(), atoms.cell.array, atoms.pbc)
    assert e1 == ref["energy"]


def test_verlet_conserves_energy(pot):
    from ase.md.verlet import VelocityVerlet

    atoms = periodic(pot)
    m = atoms.get_masses()[:, None]
    atoms.set_momenta(np.sqrt(m * units.kB * 300) * np.random.default_rng(0).normal(size=(len(atoms), 3)))
    dyn = VelocityVerlet(atoms, timestep=0.2 * units.fs)
    e0 = atoms.get_total_energy()
    dyn.run(100)
    assert abs(atoms.get_total_energy() - e0) / len(atoms) < 1e-4


def test_langevin_and_npt_run(pot):
    from ase.md.langevin import Langevin
    from ase.md.melchionna import MelchionnaNPT as NPT

    atoms = periodic(pot)
    Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
             rng=np.random.default_rng(1)).run(10)
    assert np.isfinite(atoms.get_potential_energy())
    atoms.set_cell(atoms.cell.cellpar(), scale_atoms=True)  # upper-triangular for NPT
    dyn = NPT(atoms, 0.5 * units.fs, temperature_K=300, externalstress=0.0,
              ttime=25 * units.fs, pfactor=100.0 * units.fs**2 * units.GPa)
    dyn.run(10)
    assert np.isfinite(atoms.get_volume())


def test_relaxation_with_cell_filter(pot):
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = periodic(pot)
    e0 = atoms.get_potential_energy()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=0.05, steps=12)
    assert atoms.get_potential_energy() < e0


def test_extrapolation_modes(pot):
    from pyfragnn import FragNN
    from pyfragnn.calculator import ExtrapolationError, ExtrapolationWarning

    atoms = Atoms("OHH", positions=[[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]])  # far outside data
    atoms.calc = FragNN(pot, extrapolation="raise")
    with pytest.raises(ExtrapolationError, match="outside the training range"):
        atoms.get_potential_energy()
    atoms.calc = FragNN(pot, extrapolation="warn")
    with pytest.warns(ExtrapolationWarning):
        atoms.get_potential_energy()
    atoms.calc = FragNN(pot)
    atoms.get_potential_energy()
    n = atoms.calc.results["n_extrapolations"]
    assert n > 0 and len(atoms.calc.results["extrapolations"]) == min(n, 100)

"""Forces and stress against finite differences of the energy; physical invariances."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import make_supercell

from conftest import make_synthetic_potential, water_like


def fd_forces(calc, atoms, h=1e-5):
    f = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for a in range(3):
            p = atoms.positions.copy()
            atoms.positions[i, a] = p[i, a] + h
            ep = calc.get_potential_energy(atoms)
            atoms.positions[i, a] = p[i, a] - h
            em = calc.get_potential_energy(atoms)
            atoms.positions[:] = p
            f[i, a] = -(ep - em) / (2 * h)
    return f


def fd_stress(calc, atoms, h=1e-5):
    """(1/V) dE/d(strain) by central differences, Voigt order xx yy zz yz xz xy."""
    cell0, pos0, vol = atoms.cell.array.copy(), atoms.positions.copy(), atoms.get_volume()
    s = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                eps = np.eye(3)
                eps[a, b] += sign * h
                atoms.set_cell(cell0 @ eps, scale_atoms=False)
                atoms.positions = pos0 @ eps
                e.append(calc.get_potential_energy(atoms))
            s[a, b] = (e[0] - e[1]) / (2 * h) / vol
    atoms.set_cell(cell0)
    atoms.positions = pos0
    return s.flat[[0, 4, 8, 5, 2, 1]]


def structures():
    pos, sym = water_like(5, 5.5, seed=3)
    rng = np.random.default_rng(7)
    tric = np.array([[5.5, 0.0, 0.0], [1.2, 5.3, 0.0], [-0.7, 0.9, 5.6]])
    frac = np.linalg.solve(np.eye(3) * 5.5, pos.T).T
    yield "triclinic", Atoms(sym, scaled_positions=frac % 1.0, cell=tric, pbc=True)
    # a cell shorter than the cutoff (4 Å) along z: atoms meet their own images
    short = Atoms(sym[:6], positions=pos[:6] * [1, 1, 0.4], cell=[5.5, 5.5, 2.6], pbc=True)
    short.wrap()
    yield "short", short
    yield "molecule", Atoms(sym, positions=pos + rng.normal(0, 0.02, pos.shape))
    yield "slab", Atoms(sym, positions=pos, cell=[5.5, 5.5, 12.0], pbc=[True, True, False])


@pytest.fixture(scope="module", params=[(6, 0.0, "t p l"), (1, 0.2, "s g l"), (3, 0.0, "t t l")],
                ids=["poly2", "cos-alpha", "tanh"])
def calc(request):
    from pyfragnn import FragNN

    ct, alpha, act = request.param
    return FragNN(make_synthetic_potential(seed=2, cutoff_type=ct, alpha=alpha, activations=act))


@pytest.mark.parametrize("name,atoms", list(structures()), ids=[n for n, _ in structures()])
def test_forces_are_minus_energy_gradient(calc, name, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    f = atoms.get_forces()
    assert np.abs(f).max() > 1e-3, "forces should not vanish in this test"
    fd = fd_forces(calc, atoms)
    assert np.abs(f - fd).max() <= max(1e-6, 1e-7 * np.abs(f).max())
    np.testing.assert_allclose(f.sum(axis=0), 0.0, atol=1e-10)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)


@pytest.mark.parametrize("name,atoms", [s for s in structures() if s[0] != "molecule"],
                         ids=["triclinic", "short", "slab"])
def test_stress_is_strain_derivative(calc, name, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    s = atoms.get_stress(voigt=True)
    num = fd_stress(calc, atoms)
    assert np.abs(s - num).max() <= max(1e-6, 1e-7 * np.abs(s).max())
    per_atom = atoms.get_stresses()
    np.testing.assert_allclose(per_atom.sum(axis=0), s, rtol=1e-10, atol=1e-14)


def test_invariances(calc):
    _, atoms = next(structures())
    atoms.calc = calc
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    rot = atoms.copy()
    rot.rotate(37, (1, 2, 3), rotate_cell=True)
    rot.translate([0.3, -1.1, 2.5])
    rot.calc = calc
    R = np.linalg.solve(atoms.cell.array, rot.cell.array)  # rows: cell_rot = cell @ R
    assert rot.get_potential_energy() == pytest.approx(e0, rel=1e-10)
    np.testing.assert_allclose(rot.get_forces(), f0 @ R, atol=1e-9)
    # permutation of same-element atoms
    perm = np.arange(len(atoms))
    o = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "O"]
    perm[o] = o[::-1]
    p = atoms[perm]
    p.calc = calc
    assert p.get_potential_energy() == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(p.get_forces(), f0[perm], atol=1e-10)
    # a 2x2x2 supercell: 8x the energy, same forces
    sc = make_supercell(atoms, 2 * np.eye(3))
    sc.calc = calc
    assert sc.get_potential_energy() == pytest.approx(8 * e0, rel=1e-10)
    np.testing.assert_allclose(sc.get_forces()[:len(atoms)], f0, atol=1e-9)


def test_lone_atom_and_empty_neighbourhood():
    from pyfragnn import FragNN

    pot = make_synthetic_potential()
    atoms = Atoms("OH", positions=[[0, 0, 0], [20, 0, 0]])
    atoms.calc = FragNN(pot)
    f = atoms.get_forces()
    np.testing.assert_array_equal(f, 0.0)
    assert np.isfinite(atoms.get_potential_energy())


def test_neighbours_at_cutoff():
    """Just inside and outside rc: energy continuous, force finite (cutoff function -> 0)."""
    from pyfragnn import FragNN

    pot = make_synthetic_potential()
    rc = pot.cutoff
    calc = FragNN(pot)
    es = []
    for r in (rc - 1e-4, rc + 1e-4):
        atoms = Atoms("OO", positions=[[0, 0, 0], [r, 0, 0]])
        atoms.calc = calc
        es.append(atoms.get_potential_energy())
        assert np.abs(atoms.get_forces()).max() < 1e-4
    assert es[0] == pytest.approx(es[1], abs=1e-8)

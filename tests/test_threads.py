"""The kernel's OpenMP driver: energies, forces and virials do not depend on the thread count
(centres in parallel, contributions added in centre order), and errors and extrapolation
warnings are those of the serial loop."""
from pathlib import Path

import numpy as np
import pytest

from conftest import N2P2, read_n2p2_structure
from pyfragnn import FragNN, Potential

ROOT = Path(__file__).resolve().parents[1]


def _water():
    from ase import Atoms
    from ase.units import Bohr, Hartree
    pot = Potential.load(N2P2 / "H2O_RPBE-D3" / "pot", length_unit=Bohr, energy_unit=Hartree)
    pos, sym, lat = read_n2p2_structure(N2P2 / "H2O_RPBE-D3" / "input.data")
    return pot, Atoms(sym, positions=pos * Bohr, cell=lat * Bohr, pbc=True)


def _irmof():
    from ase.io import read

    from pyfragnn.demo import IRMOF1_PRIM
    return Potential.load(ROOT / "potentials" / "irmof1_hdnnp1_gfn2.fragnn"), read(IRMOF1_PRIM, 0)


@pytest.mark.parametrize("case", [_water, _irmof], ids=["water", "irmof"])
def test_thread_count_does_not_change_results(case):
    pot, atoms = case()
    atoms.rattle(0.05, seed=3)
    ref = None
    for threads in (1, 2, 3):
        calc = FragNN(pot, threads=threads)
        atoms.calc = calc
        res = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(),
               calc.get_property("energies", atoms))
        if ref is None:
            ref = res
            continue
        assert abs(res[0] - ref[0]) <= 1e-12 * max(1.0, abs(ref[0]))
        for a, b in zip(res[1:], ref[1:]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    # atom virials through the core with and without threads
    lu = pot.length_unit
    el = pot.core.element_indices(atoms.get_chemical_symbols())
    r1 = pot.core.compute_structure(atoms.positions / lu, el, atoms.cell.array / lu, atoms.pbc,
                                    atom_virial=True, threads=1)
    r2 = pot.core.compute_structure(atoms.positions / lu, el, atoms.cell.array / lu, atoms.pbc,
                                    atom_virial=True, threads=2)
    for k in ("forces", "virial", "atom_virial", "energies"):
        np.testing.assert_allclose(r2[k], r1[k], rtol=0, atol=1e-12)


def test_threaded_warnings_and_errors_match_serial():
    pot, atoms = _water()
    atoms = atoms[:300]
    atoms.positions *= 0.93  # compressed: extrapolates
    res = [pot.compute(atoms.positions, atoms.get_chemical_symbols(), atoms.cell.array,
                       atoms.pbc, max_warnings=7, threads=t) for t in (1, 2)]
    assert res[0]["n_warnings"] > 7
    assert res[0]["n_warnings"] == res[1]["n_warnings"]
    assert res[0]["warnings"] == res[1]["warnings"]
    # an atom without element in the core (-1) is skipped the same way
    el = pot.core.element_indices(atoms.get_chemical_symbols())
    el[5] = -1
    lu = pot.length_unit
    r = [pot.core.compute_structure(atoms.positions / lu, el, atoms.cell.array / lu, atoms.pbc,
                                    threads=t) for t in (1, 2)]
    np.testing.assert_allclose(r[1]["forces"], r[0]["forces"], rtol=0, atol=1e-12)
    assert r[0]["energies"][5] == r[1]["energies"][5] == 0.0
    # the serial loop's error for a bad neighbour index, with threads too
    off, idx = np.array([0, 1, 2, 3]), np.array([1, 2, 99], dtype=np.int32)
    d = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    for t in (1, 2):
        with pytest.raises(ValueError, match="neighbour index 99"):
            pot.core.compute_neighbors(off, idx, d, np.zeros(3, dtype=np.intc), threads=t)


def test_trainer_structure_loop_threads_give_identical_errors_and_predictions(tmp_path):
    from test_training import base_config, emt_cells

    from pyfragnn.training import Trainer
    data = emt_cells(40, seed=4)
    out = {}
    for threads in (1, 2):
        cfg = base_config(tmp_path / f"t{threads}", epochs=1)
        cfg["training"]["threads"] = threads
        cfg["output"]["plots"] = False
        tr = Trainer(cfg, structures=data)
        tr.setup()
        out[threads] = (tr.errors(), tr.predict())
    assert out[1][0] == out[2][0]
    for i in out[1][1]["energy"]:
        assert out[1][1]["energy"][i] == out[2][1]["energy"][i]
        np.testing.assert_array_equal(out[1][1]["forces"][i], out[2][1]["forces"][i])


def test_threaded_error_in_a_later_chunk_is_the_serial_one():
    """Centres are evaluated in chunks whose contributions are added while the next chunk is
    evaluated: an error far into the structure is still the serial loop's (lowest centre)."""
    pot, atoms = _water()
    lu = pot.length_unit
    el = pot.core.element_indices(atoms.get_chemical_symbols())
    pos = atoms.positions / lu
    pos[900] = pos[700]  # a pair at the same position, found searching centre 700
    for t in (1, 2, 3):
        with pytest.raises(ValueError, match="atoms 700 and 900 are at the same position"):
            pot.core.compute_structure(pos, el, atoms.cell.array / lu, atoms.pbc, threads=t)
    from pyfragnn._core import neighbor_list
    off, idx, d = neighbor_list(atoms.positions / lu, atoms.cell.array / lu, atoms.pbc,
                                pot.core.cutoff)
    idx[off[1000]] = len(atoms) + 5
    idx[off[1050]] = len(atoms) + 7
    for t in (1, 2, 3):
        with pytest.raises(ValueError, match=f"neighbour index {len(atoms) + 5} of atom 1000"):
            pot.core.compute_neighbors(off, idx, d, el, threads=t)

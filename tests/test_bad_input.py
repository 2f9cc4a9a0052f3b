"""Bad input gives a clear exception naming the cause; never a crash or a silent NaN."""
import shutil

import numpy as np
import pytest
from ase import Atoms

from conftest import N2P2, make_synthetic_potential, require_shared, synthetic_input_nn


@pytest.fixture
def water_pot(tmp_path):
    src = require_shared(N2P2 / "H2O_RPBE-D3" / "pot")
    dst = tmp_path / "pot"
    shutil.copytree(src, dst)
    return dst


def edit(path, old, new, count=1):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def load(path):
    from pyfragnn import Potential

    return Potential.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no potential at"):
        load(tmp_path / "nothing")


def test_missing_weights_file(water_pot):
    (water_pot / "weights.008.data").unlink()
    with pytest.raises(RuntimeError, match=r"weights.008.data"):
        load(water_pot)


def test_missing_keyword(water_pot):
    edit(water_pot / "input.nn", "global_nodes_short", "#global_nodes_short")
    with pytest.raises(ValueError, match="missing keyword 'global_nodes_short'"):
        load(water_pot)


def test_garbled_number(water_pot):
    edit(water_pot / "input.nn", "symfunction_short H 2 H 0.001 0.0 12.00",
         "symfunction_short H 2 H 0.0x1 0.0 12.00")
    with pytest.raises(ValueError, match=r"input.nn line \d+: .*'0.0x1'"):
        load(water_pot)


def test_truncated_symmetry_function_line(water_pot):
    edit(water_pot / "input.nn", "symfunction_short H 2 H 0.001 0.0 12.00",
         "symfunction_short H 2 H 0.001")
    with pytest.raises(ValueError, match=r"input.nn line \d+"):
        load(water_pot)


def test_unknown_cutoff_type(water_pot):
    edit(water_pot / "input.nn", "cutoff_type                     2", "cutoff_type 11")
    with pytest.raises(ValueError, match="unknown cutoff type 11"):
        load(water_pot)


def test_unknown_activation(water_pot):
    edit(water_pot / "input.nn", "global_activation_short         t t l",
         "global_activation_short t q l")
    with pytest.raises(ValueError, match="unknown activation function 'q'"):
        load(water_pot)


def test_weight_count_mismatch(water_pot):
    lines = (water_pot / "weights.001.data").read_text().splitlines()
    (water_pot / "weights.001.data").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"weights.001.data: found 1375 weights, .* needs 1376"):
        load(water_pot)


def test_scaling_line_count_mismatch(water_pot):
    lines = (water_pot / "scaling.data").read_text().splitlines()
    (water_pot / "scaling.data").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"scaling.data: found 56 data lines, the potential needs 57"):
        load(water_pot)


def test_garbled_native_file(tmp_path):
    pot = make_synthetic_potential()
    pot.save(tmp_path / "p.fragnn")
    text = (tmp_path / "p.fragnn").read_text()
    (tmp_path / "p.fragnn").write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(ValueError, match="truncated file"):
        load(tmp_path / "p.fragnn")


def test_constant_symmetry_function_in_scaling():
    from pyfragnn._core import CoreModel

    core = CoreModel.from_text(synthetic_input_nn())
    n = core.n_symmetry_functions(0)
    lo = np.zeros(n)
    with pytest.raises(ValueError, match="element H symmetry function 1: Gmin == Gmax"):
        core.set_scaling(0, lo, lo + np.r_[0.0, np.ones(n - 1)], lo, lo + 1)


def test_element_not_in_potential():
    from pyfragnn import FragNN

    atoms = Atoms("OHCu", positions=[[0, 0, 0], [1, 0, 0], [0, 2, 0]])
    atoms.calc = FragNN(make_synthetic_potential())
    with pytest.raises(ValueError, match="atom 2 is Cu, which the potential does not have"):
        atoms.get_potential_energy()


def test_nan_position():
    from pyfragnn import FragNN

    atoms = Atoms("OH", positions=[[0, 0, 0], [np.nan, 0, 0]])
    atoms.calc = FragNN(make_synthetic_potential())
    with pytest.raises(ValueError, match=r"atom 1 \(H\) has a non-finite position"):
        atoms.get_potential_energy()


def test_two_atoms_at_same_position():
    from pyfragnn import FragNN

    atoms = Atoms("OHH", positions=[[0, 0, 0], [1, 0, 0], [1, 0, 0]])
    atoms.calc = FragNN(make_synthetic_potential())
    with pytest.raises(ValueError, match="atoms 1 and 2 are at the same position"):
        atoms.get_potential_energy()


def test_bad_extrapolation_option():
    from pyfragnn import FragNN

    with pytest.raises(ValueError, match="extrapolation must be"):
        FragNN(make_synthetic_potential(), extrapolation="ignore")

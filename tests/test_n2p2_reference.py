"""The kernel against n2p2's own results (tests/data/n2p2/*/reference.txt)."""
import numpy as np
import pytest

from conftest import N2P2, read_n2p2_structure, read_reference, require_shared

FOLDERS = ["Cu2S_PBE", "H2O_RPBE-D3", "H2O_RPBE-D3_cluster12", "DMABN_SCAN"]


def load_case(name):
    from pyfragnn import Potential

    folder = require_shared(N2P2 / name)
    pot = Potential.load(folder / "pot")  # potential's own units (bohr/hartree for H2O)
    pos, sym, lat = read_n2p2_structure(folder / "input.data")
    return pot, pos, sym, lat, read_reference(folder / "reference.txt")


def evaluate(pot, pos, sym, lat):
    pbc = [lat is not None] * 3
    return pot.compute(pos, sym, lat, pbc, virial=False)


@pytest.mark.parametrize("name", FOLDERS)
def test_energy_forces_match_n2p2(name):
    pot, pos, sym, lat, ref = load_case(name)
    res = evaluate(pot, pos, sym, lat)
    assert res["energy"] == pytest.approx(ref["energy"], rel=1e-10, abs=1e-9)
    # reference per-atom energies exclude mean_energy and atom_energy offsets
    _, mean, _, _ = pot.core.normalisation
    offsets = np.array([mean + pot.core.atom_energy(pot.elements.index(s)) for s in sym])
    np.testing.assert_allclose(res["energies"] - offsets, ref["energies"], rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(res["forces"], ref["forces"], rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("name", FOLDERS)
def test_symmetry_functions_match_n2p2(name):
    from pyfragnn._core import neighbor_list

    pot, pos, sym, lat, ref = load_case(name)
    core = pot.core
    cell = lat if lat is not None else np.zeros((3, 3))
    off, idx, d = neighbor_list(pos, cell, [lat is not None] * 3, core.cutoff)
    elem = core.element_indices(sym)
    assert ref["sf"], "reference lists symmetry functions"
    for atom, sfs in ref["sf"].items():
        e = int(elem[atom])
        sl = slice(off[atom], off[atom + 1])
        G = core.symmetry_functions(e, d[sl], elem[idx[sl]])
        x = core.scale(e, G)
        assert len(G) == len(sfs)
        lines = core.symmetry_function_lines(e)
        for s, (g_raw, g_scaled, line) in sfs.items():
            assert G[s] == pytest.approx(g_raw, rel=1e-10, abs=1e-13), (atom, s, line)
            assert x[s] == pytest.approx(g_scaled, rel=1e-10, abs=1e-12), (atom, s, line)
            # same function in the same sorted position (type and neighbour elements)
            assert lines[s].split()[:2] == line.split()[1:3]


def test_cluster_extrapolates():
    pot, pos, sym, lat, ref = load_case("H2O_RPBE-D3_cluster12")
    res = evaluate(pot, pos, sym, lat)
    assert res["n_warnings"] > 0
    atom, el, s, value, lo, hi = res["warnings"][0]
    assert el == sym[atom] and not (lo <= value <= hi)


@pytest.mark.parametrize("name", FOLDERS)
def test_n2p2_round_trip(name, tmp_path):
    from pyfragnn import Potential

    pot, pos, sym, lat, ref = load_case(name)
    first = evaluate(pot, pos, sym, lat)
    pot.save_n2p2(tmp_path / "n2p2")
    again = Potential.load(tmp_path / "n2p2")
    second = evaluate(again, pos, sym, lat)
    assert second["energy"] == first["energy"]
    np.testing.assert_array_equal(second["forces"], first["forces"])
    # the written files are a valid n2p2 potential: same weights and scaling, same SF order
    for e in range(len(pot.elements)):
        np.testing.assert_array_equal(again.core.get_parameters(e), pot.core.get_parameters(e))
        assert again.core.symmetry_function_lines(e) == pot.core.symmetry_function_lines(e)
    pot.save(tmp_path / "pot.fragnn")
    native = Potential.load(tmp_path / "pot.fragnn")
    third = evaluate(native, pos, sym, lat)
    assert third["energy"] == first["energy"]
    np.testing.assert_array_equal(third["forces"], first["forces"])
    assert native.core.input_nn_text() == pot.core.input_nn_text()
    assert native.core.scaling_text() == pot.core.scaling_text()


def test_units_conversion():
    """The H2O potential in bohr/hartree gives eV and Å through the unit factors."""
    from ase.units import Bohr, Hartree
    from pyfragnn import Potential

    folder = require_shared(N2P2 / "H2O_RPBE-D3_cluster12")
    pos, sym, _ = read_n2p2_structure(folder / "input.data")
    ref = read_reference(folder / "reference.txt")
    pot = Potential.load(folder / "pot", length_unit=Bohr, energy_unit=Hartree)
    res = pot.compute(pos * Bohr, sym)
    assert res["energy"] == pytest.approx(ref["energy"] * Hartree, rel=1e-10)
    np.testing.assert_allclose(res["forces"], ref["forces"] * Hartree / Bohr, rtol=1e-10, atol=1e-9)

"""Potentials by name: Potential.load / FragNN search $FRAGNN_POTENTIALS, then the shipped
potentials (pair_style fragnn resolves names the same way; see test_lammps_plugin.py)."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from conftest import make_synthetic_potential, water_like


@pytest.fixture(scope="module")
def pots():
    return make_synthetic_potential(seed=1), make_synthetic_potential(seed=2)


@pytest.fixture
def structure():
    pos, sym = water_like(6, 6.5, seed=5)
    return pos, sym, np.eye(3) * 6.5


def _compute(pot, structure):
    pos, sym, cell = structure
    return pot.compute(pos, sym, cell, (True,) * 3)


def test_load_by_name_from_env(pots, structure, tmp_path, monkeypatch):
    """NAME and NAME.fragnn in a $FRAGNN_POTENTIALS directory load the same potential as the
    full path (energy and forces to 1e-12), through Potential.load and FragNN."""
    from pyfragnn import FragNN, Potential

    d = tmp_path / "pots"
    d.mkdir()
    path = d / "synth.fragnn"
    pots[0].save(path)
    monkeypatch.setenv("FRAGNN_POTENTIALS", f"{tmp_path / 'missing'}:{d}")
    monkeypatch.chdir(tmp_path)
    ref = _compute(Potential.load(str(path)), structure)
    for name in ("synth", "synth.fragnn"):
        res = _compute(Potential.load(name), structure)
        assert abs(res["energy"] - ref["energy"]) <= 1e-12 * abs(ref["energy"]), name
        assert np.max(np.abs(res["forces"] - ref["forces"])) <= 1e-12 * np.max(
            np.abs(ref["forces"])), name
    pos, sym, cell = structure
    atoms = Atoms(sym, positions=pos, cell=cell, pbc=True)
    atoms.calc = FragNN("synth")
    assert abs(atoms.get_potential_energy() - ref["energy"]) <= 1e-12 * abs(ref["energy"])


def test_search_order(pots, structure, tmp_path, monkeypatch):
    """An existing path as given comes first, then the $FRAGNN_POTENTIALS directories in
    order (then the shipped potentials)."""
    from pyfragnn import Potential
    from pyfragnn.potential import search_dirs, shipped_dirs

    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    pots[0].save(d1 / "same.fragnn")
    pots[1].save(d2 / "same.fragnn")
    e = [_compute(p, structure)["energy"] for p in pots]
    assert abs(e[0] - e[1]) > 1e-6

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAGNN_POTENTIALS", f"{d1}:{d2}")
    assert search_dirs() == [d1, d2] + shipped_dirs()
    assert _compute(Potential.load("same"), structure)["energy"] == e[0]
    monkeypatch.setenv("FRAGNN_POTENTIALS", f"{d2}::{d1}")
    assert _compute(Potential.load("same"), structure)["energy"] == e[1]
    # a file in the working directory given by its (relative) path wins over the variable
    pots[0].save(tmp_path / "same")
    assert _compute(Potential.load("same"), structure)["energy"] == e[0]


def test_unknown_name_lists_searched_locations(tmp_path, monkeypatch):
    from pyfragnn import Potential
    from pyfragnn.potential import SHIPPED, shipped_dirs

    d = tmp_path / "pots"
    d.mkdir()
    monkeypatch.setenv("FRAGNN_POTENTIALS", str(d))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        Potential.load("no_such_potential")
    msg = str(err.value)
    assert "'no_such_potential'" in msg and "FRAGNN_POTENTIALS" in msg
    for folder in [d] + shipped_dirs():
        assert str(folder / "no_such_potential") in msg
        assert str(folder / "no_such_potential.fragnn") in msg
    assert str(SHIPPED / "no_such_potential.fragnn") in msg


def test_shipped_dirs_without_env(monkeypatch):
    """Without the variable only the shipped folders are searched: pyfragnn/potentials, and
    in a source checkout its potentials/ (mirrored by pair_style fragnn)."""
    from pyfragnn.potential import SHIPPED, search_dirs, shipped_dirs

    monkeypatch.delenv("FRAGNN_POTENTIALS", raising=False)
    assert search_dirs() == shipped_dirs()
    assert shipped_dirs()[0] == SHIPPED
    root = SHIPPED.parent.parent
    checkout = (root / "setup.py").is_file() and (root / "cython_ext" / "kernel").is_dir()
    assert shipped_dirs() == ([SHIPPED, root / "potentials"] if checkout else [SHIPPED])

"""Idealised primitive cells (pyfragnn.cells): checked against the conventional cells they come
from, atom by atom, and against spglib's symmetry of the exactly centred IRMOF-1/-10 cells."""
from pathlib import Path

import numpy as np
import pytest
from ase.build import make_supercell
from ase.io import read

from pyfragnn.cells import FCC_PRIMITIVE, primitive_by_molecules

STRUCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"
DATA = Path(__file__).resolve().parents[1] / "pyfragnn" / "data"
CONV = np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])  # fcc primitive -> conventional cubic

needs_shared = pytest.mark.skipif(not STRUCT.is_dir(), reason="../shared/data/structures absent")


def matched(a, b, cell=None):
    """For each atom of a: distance (Å) to the nearest atom of b of the same element, modulo
    the lattice of ``cell`` (default b's)."""
    cell = b.cell.array if cell is None else np.asarray(cell)
    inv = np.linalg.inv(cell)
    out = np.empty(len(a))
    for k, (z, r) in enumerate(zip(a.numbers, a.positions)):
        same = b.positions[b.numbers == z]
        d = (r - same) @ inv
        d -= np.round(d)
        out[k] = np.linalg.norm(d @ cell, axis=1).min()
    return out


@needs_shared
@pytest.mark.parametrize("name, n", [("IRMOF-1_conv_CH109.cif", 106),
                                     ("IRMOF-10_conv_sym_CH109.cif", 166)])
def test_centred_cell_gives_the_exact_primitive_cell(name, n):
    conv = read(STRUCT / name)
    prim, rep = primitive_by_molecules(conv)
    assert len(prim) == n and rep.changed == [] and rep.multiplicity == 4
    assert rep.spacegroup == "Fm-3m" and rep.combinations == 1
    np.testing.assert_allclose(prim.cell.array, FCC_PRIMITIVE @ conv.cell.array)
    back = make_supercell(prim, CONV)
    assert len(back) == len(conv)
    assert matched(back, conv).max() < 1e-4 and matched(conv, back).max() < 1e-4


@needs_shared
def test_irmof16_idealised_cell_keeps_whole_linkers_and_gains_fcc_symmetry():
    import warnings

    import spglib
    from ase.neighborlist import neighbor_list

    warnings.simplefilter("ignore", DeprecationWarning)  # spglib's old error handling

    conv = read(STRUCT / "IRMOF-16_conv_CH109.cif")
    prim, rep = primitive_by_molecules(conv)
    assert len(prim) == 226 and prim.get_chemical_formula() == "C120H72O26Zn8"
    # 32 Zn + 8 mu4-O + 24 TPDC linkers in 4 images each; in 6 linker classes the images come
    # in two orientations of their rings (2.5 Å apart), the node atoms in one
    assert rep.molecules == 64 and rep.classes == 16
    assert len(rep.changed) == 6 and rep.combinations == 2 ** 6
    assert all(rep.class_formula[k] == "C20H12O4" for k in rep.changed)
    assert max(rep.class_deviation) == pytest.approx(2.50, abs=0.01)
    # the chosen orientations: Fm-3 (the fcc counterpart of the experiment's Pm-3), exact
    # after the symmetrisation, which moved no atom by more than symprec
    cell = (prim.cell.array, prim.get_scaled_positions(), prim.numbers)
    assert spglib.get_spacegroup(cell, symprec=1e-5) == "Fm-3 (202)"
    assert spglib.get_spacegroup((conv.cell.array, conv.get_scaled_positions(), conv.numbers),
                                 symprec=0.05) == "Pm-3 (200)"
    assert rep.spacegroup == "Fm-3" and 0 < rep.max_displacement < 0.05
    # every atom is (within symprec) an atom of the experimental cell moved by a primitive
    # lattice vector
    assert matched(prim, conv, prim.cell).max() < 0.05
    # back in the cubic cell, only C and H of turned rings are far from an experimental atom
    ideal = make_supercell(prim, CONV)
    m = matched(ideal, conv)
    off = m > 0.05
    assert 0 < off.sum() <= 128 and set(ideal[off].get_chemical_symbols()) == {"C", "H"}
    assert m[off].min() > 0.5
    # as many bonds and no closer contact than in the experimental cell (to 0.01 Å)
    assert neighbor_list("d", ideal, 3.0).min() == pytest.approx(
        neighbor_list("d", conv, 3.0).min(), abs=0.01)
    assert len(neighbor_list("i", conv, 1.7)) == 4 * len(neighbor_list("i", prim, 1.7))


def test_shipped_irmof16_cell_is_the_idealised_one():
    shipped = read(DATA / "IRMOF-16_prim.extxyz")
    assert len(shipped) == 226
    if STRUCT.is_dir():
        prim, _ = primitive_by_molecules(read(STRUCT / "IRMOF-16_conv_CH109.cif"))
        assert matched(shipped, prim).max() < 1e-8


@needs_shared
def test_structure_that_is_not_centred_names_the_molecule():
    conv = read(STRUCT / "IRMOF-1_conv_CH109.cif")
    prim, _ = primitive_by_molecules(conv)
    # one BDC linker (C8H4O4) deleted: its class has 3 images, not 4
    from pyfragnn.cells import _molecules
    linker = next(idx for idx, _ in _molecules(conv, ("Zn",), 1.2) if len(idx) == 16)
    del conv[list(linker)]
    with pytest.raises(ValueError, match=r"molecule of atom \d+ \(C8H4O4\): 3 images"):
        primitive_by_molecules(conv)

"""The kernel's cell-list neighbour search against ASE's neighbour list."""
import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list


def canonical(i, j, d):
    rows = np.column_stack([i, j, np.round(d, 8)])
    return rows[np.lexsort(rows.T[::-1])]


CASES = {
    "cubic": (np.eye(3) * 7.0, [True] * 3, 40),
    "triclinic": (np.array([[6.0, 0, 0], [2.5, 5.0, 0], [-1.5, 1.0, 5.5]]), [True] * 3, 30),
    "short": (np.array([[2.1, 0, 0], [0.5, 6.0, 0], [0, 0, 6.0]]), [True] * 3, 12),
    "tiny": (np.array([[1.3, 0.2, 0], [0, 1.4, 0], [0.3, 0.1, 1.2]]), [True] * 3, 2),
    "slab": (np.array([[5.0, 0, 0], [1.0, 5.0, 0], [0, 0, 20.0]]), [True, True, False], 25),
    "wire": (np.array([[3.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]]), [True, False, False], 20),
    "molecule": (np.zeros((3, 3)), [False] * 3, 35),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_ase(name):
    from pyfragnn._core import neighbor_list

    cell, pbc, n = CASES[name]
    rng = np.random.default_rng(len(name))
    span = cell if np.linalg.matrix_rank(cell) == 3 else np.eye(3) * 8.0
    pos = rng.uniform(0, 1, (n, 3)) @ span + rng.normal(0, 2.0, (n, 3))  # some outside the cell
    rc = 3.7
    atoms = Atoms(f"H{n}", positions=pos, cell=cell, pbc=pbc)
    if not any(pbc):
        atoms.cell = np.eye(3) * 100  # ASE needs no cell for open systems; give room
        atoms.pbc = False
    i0, j0, d0 = ase_neighbor_list("ijD", atoms, rc)
    off, idx, d = neighbor_list(pos, cell, pbc, rc)
    i1 = np.repeat(np.arange(n), np.diff(off))
    assert len(i1) == len(i0) > 0
    np.testing.assert_allclose(canonical(i1, idx, d), canonical(i0, j0, d0), atol=1e-7)


def test_degenerate_cell_is_an_error():
    from pyfragnn._core import neighbor_list

    with pytest.raises(ValueError, match="linearly dependent"):
        neighbor_list(np.zeros((1, 3)), [[1, 0, 0], [2, 0, 0], [0, 0, 1]], [True] * 3, 2.0)


@pytest.mark.parametrize("name", ["triclinic", "slab", "molecule"])
def test_threaded_search_is_the_serial_list(name):
    """Blocks of atoms searched on several threads give the serial list entry for entry, and
    the serial loop's error (the lowest failing atom)."""
    from pyfragnn._core import neighbor_list

    cell, pbc, _ = CASES[name]
    n = 700  # several blocks of the threaded search
    rng = np.random.default_rng(7)
    span = cell * 3 if np.linalg.matrix_rank(cell) == 3 else np.eye(3) * 20.0
    pos = rng.uniform(0, 1, (n, 3)) @ span
    ref = neighbor_list(pos, cell * 3, pbc, 3.7, threads=1)
    assert len(ref[1]) > 10 * n
    for threads in (2, 3):
        got = neighbor_list(pos, cell * 3, pbc, 3.7, threads=threads)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    pos[650] = pos[600]
    pos[400] = pos[300] + 1e-10
    for threads in (1, 2, 3):
        with pytest.raises(ValueError, match="atoms 300 and 400 are at the same position"):
            neighbor_list(pos, cell * 3, pbc, 3.7, threads=threads)

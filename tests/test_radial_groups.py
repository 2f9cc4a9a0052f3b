"""Radial functions (types 2 and 12) against a direct numpy sum and central differences.

n2p2-style sets repeat each (eta, rs) for every neighbour element; the kernel evaluates such
consecutive elements as one group over their joint neighbour list and splits the sums by
element (masked per element for 2-4 elements, one dot per element beyond). Checked here for
groups of 1-6 elements, groups that differ in one Gaussian (not merged), type 12's Z weights,
neighbours beyond the cutoff and lists whose length is not a multiple of four."""
import numpy as np
import pytest

from pyfragnn._core import CoreModel
from test_moments import assert_jacobian_and_contraction

SYMBOLS = ["H", "C", "N", "O", "Zn", "S"]
Z = {"H": 1, "C": 6, "N": 7, "O": 8, "Zn": 30, "S": 16}
TERMS = [(0.9, 0.8), (0.9, 1.5), (0.3, 2.2), (2.0, 0.0)]  # (eta, rs) shared by the group
RC = 4.4


def _model(n_el: int, split: bool) -> tuple[CoreModel, list[tuple]]:
    """Centre element H; type 2 for neighbour elements 0..n_el-1 with TERMS (one group of all
    n_el elements; with ``split``, element 1 also has an extra Gaussian, which leaves groups
    {0}, {1}, {2..}), type 12, cutoff POLY2."""
    els = SYMBOLS[:n_el]
    sfs = [(2, e, eta, rs) for e in els for eta, rs in TERMS]
    if split and n_el > 1:
        sfs.append((2, els[1], 0.5, 3.0))
    sfs += [(12, None, 0.3, 0.5)]
    lines = [f"symfunction_short H 2 {e} {eta} {rs} {RC}" if t == 2
             else f"symfunction_short H 12 {eta} {rs} {RC}" for t, e, eta, rs in sfs]
    lines += [f"symfunction_short {e} 2 H 0.1 0.0 {RC}" for e in els[1:]]
    text = (f"number_of_elements {n_el}\nelements {' '.join(els)}\ncutoff_type 6 0.0\n"
            "global_hidden_layers_short 1\nglobal_nodes_short 2\nglobal_activation_short t l\n"
            + "\n".join(lines) + "\n")
    return CoreModel.from_text(text), sfs


def _fc(r):
    x = np.clip(r / RC, 0, 1)
    return np.where(r < RC, ((15 - 6 * x) * x - 10) * x ** 3 + 1, 0.0)


def _reference(sf, d, el, symbols):
    t, e, eta, rs = sf
    r = np.linalg.norm(d, axis=1)
    g = np.exp(-eta * (r - rs) ** 2) * _fc(r)
    if t == 2:
        return g[el == symbols.index(e)].sum()
    return (g * np.array([Z[symbols[k]] for k in el])).sum()


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("n_el", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("n", [1, 6, 13, 30])
def test_radial_values_and_jacobian(n_el, n, split):
    m, sfs = _model(n_el, split)
    rng = np.random.default_rng(100 * n_el + n + split)
    d = rng.normal(size=(n, 3))
    d *= (rng.uniform(0.7, 4.8, n) / np.linalg.norm(d, axis=1))[:, None]  # some beyond rc
    el = rng.integers(0, n_el, n)
    eo = m.elements.index("H")
    G, J = m.symmetry_functions(eo, d, el, jacobian=True)
    lines = m.symmetry_function_lines(eo)
    assert len(lines) == len(sfs)
    for s, line in enumerate(lines):
        t = line.split()
        if t[1] == "2":
            key = (2, t[2], float(t[3]), float(t[4]))
        else:
            key = (12, None, float(t[2]), float(t[3]))
        sf = next(f for f in sfs if f[:2] == key[:2] and np.allclose(f[2:], key[2:]))
        assert G[s] == pytest.approx(_reference(sf, d, el, m.elements), rel=1e-13, abs=1e-14), line
    assert_jacobian_and_contraction(m, eo, d, el, J, rng, range(n))

"""Narrow angular functions (types 3 and 13): contract() writes the angular factors of a group
whose powers all have integer zeta <= 8 and |lambda| <= 1 as polynomials in cos (Horner's rule
per triplet), and keeps the powers for the others (non-integer zeta, zeta > 8, |lambda| > 1, where
1 + lambda cos is clipped). Values against a direct numpy triplet sum; the Jacobian (one
contraction per function) against central differences of the values; for groups of either
kind and groups that mix them."""
import numpy as np
import pytest

from pyfragnn._core import CoreModel
from test_moments import _fc, assert_jacobian_and_contraction

# (e1, e2, eta, lambda, zeta, rc, rs); O-centred type 3 (the H-H group: polynomial; O-O:
# zeta > 8 and non-integer zeta beside polynomial ones; H-O: |lambda| > 1 beside lambda 0.5)
SF3 = [
    ("H", "H", 0.1, 1, 1, 4.0, 0.0), ("H", "H", 0.1, -1, 1, 4.0, 0.0),
    ("H", "H", 0.3, 1, 4, 4.0, 0.0), ("H", "H", 0.3, -1, 8, 4.0, 0.0),
    ("H", "H", 0.02, -1, 6, 4.0, 0.0), ("H", "H", 0.02, 1, 3, 4.0, 0.0),
    ("H", "O", 0.1, 0.5, 2, 3.6, 0.4), ("H", "O", 0.1, 1, 5, 3.6, 0.4),
    ("H", "O", 0.05, -2.0, 3, 3.6, 0.4),
    ("O", "O", 0.1, -1, 7, 4.0, 0.0), ("O", "O", 0.1, 1, 12, 4.0, 0.0),
    ("O", "O", 0.2, -1, 2.5, 4.0, 0.0),
]
SF13 = [(0.05, 0.0, 1, 2, 3.8), (0.05, 0.0, -1, 4, 3.8), (0.2, 0.5, 1, 1, 3.8)]  # eta rs lam zeta rc
Z = {"H": 1, "O": 8}


def _model(cutoff_type, alpha, with13):
    lines = [f"symfunction_short O 3 {a} {b} {eta} {lam} {z} {rc} {rs}"
             for a, b, eta, lam, z, rc, rs in SF3]
    if with13:
        lines += [f"symfunction_short O 13 {eta} {rs} {lam} {z} {rc}"
                  for eta, rs, lam, z, rc in SF13]
    text = (f"number_of_elements 2\nelements O H\ncutoff_type {cutoff_type} {alpha}\n"
            "global_hidden_layers_short 1\nglobal_nodes_short 2\nglobal_activation_short t l\n"
            "symfunction_short H 2 H 0.1 0.0 4.0\n" + "\n".join(lines) + "\n")
    return CoreModel.from_text(text)


def _triplet_sum(d, el, ct, alpha, eta, lam, z, rc, rs, weight):
    r = np.linalg.norm(d, axis=1)
    u = d / r[:, None]
    g = 0.0
    for j in range(len(r)):
        for k in range(j + 1, len(r)):
            w = weight(el[j], el[k])
            if w == 0:
                continue
            rjk = np.linalg.norm(d[j] - d[k])
            f = _fc(r[j], rc, ct, alpha) * _fc(r[k], rc, ct, alpha) * _fc(rjk, rc, ct, alpha)
            gauss = np.exp(-eta * ((r[j] - rs) ** 2 + (r[k] - rs) ** 2 + (rjk - rs) ** 2))
            g += w * max(0.0, 1 + lam * (u[j] @ u[k])) ** z * gauss * f
    return g * 2.0 ** (1 - z)


@pytest.mark.parametrize("ct,alpha,with13", [(6, 0.0, False), (1, 0.3, True)])
def test_narrow_values_and_jacobian(ct, alpha, with13):
    m = _model(ct, alpha, with13)
    rng = np.random.default_rng(11)
    n = 21
    d = rng.normal(size=(n, 3))
    d *= (rng.uniform(0.8, 3.0, n) / np.linalg.norm(d, axis=1))[:, None]  # some r_jk beyond rc
    d[3] = -d[2] * 1.1  # collinear pair (cos = -1) and a repeated direction
    d[4] = d[2] * 0.7
    el = rng.integers(0, 2, n)
    symbols = m.elements
    eo = symbols.index("O")
    G, J = m.symmetry_functions(eo, d, el, jacobian=True)
    for s, line in enumerate(m.symmetry_function_lines(eo)):
        t = line.split()
        if t[1] == "3":
            pair = sorted((symbols.index(t[2]), symbols.index(t[3])))
            ref = _triplet_sum(d, el, ct, alpha, *map(float, t[4:9]),
                               weight=lambda a, b: float(sorted((a, b)) == pair))
        elif t[1] == "13":
            eta, rs, lam, z, rc = map(float, t[2:7])
            ref = _triplet_sum(d, el, ct, alpha, eta, lam, z, rc, rs,
                               weight=lambda a, b: Z[symbols[a]] * Z[symbols[b]])
        else:
            continue
        assert G[s] == pytest.approx(ref, rel=1e-12, abs=1e-13), line
    assert_jacobian_and_contraction(m, eo, d, el, J, rng, range(n))

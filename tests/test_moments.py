"""Wide angular functions (type 9) with integer zeta are evaluated as Cartesian moments of the
neighbour unit vectors (linear in the neighbour count); non-integer zeta keeps the pair loop.
Both are checked here against a direct numpy pair sum and central differences, for same and
different neighbour elements, lambda +-1, zeta 1..8, shifted Gaussians, several cutoff types
and neighbours beyond a function's cutoff."""
import numpy as np
import pytest

from pyfragnn._core import CoreModel

SF = [  # (e1, e2, eta, lambda, zeta, rc, rs)
    ("H", "H", 0.1, 1, 1, 4.0, 0.0), ("H", "H", 0.1, -1, 1, 4.0, 0.0),
    ("H", "O", 0.1, 1, 2, 4.0, 0.0), ("H", "O", 0.1, -1, 4, 4.0, 0.0),
    ("O", "O", 0.3, -1, 3, 3.5, 0.7), ("O", "O", 0.3, 1, 8, 3.5, 0.7),
    ("H", "H", 0.02, -1, 6, 3.0, 0.0), ("H", "O", 0.02, 1, 5, 3.0, 0.0),
    ("H", "O", 0.1, 1, 2.5, 4.0, 0.0), ("O", "O", 0.1, -1, 9, 4.0, 0.0),
]


def _model(cutoff_type, alpha):
    lines = [f"symfunction_short O 9 {a} {b} {eta} {lam} {z} {rc} {rs}"
             for a, b, eta, lam, z, rc, rs in SF]
    text = (f"number_of_elements 2\nelements O H\ncutoff_type {cutoff_type} {alpha}\n"
            "global_hidden_layers_short 1\nglobal_nodes_short 2\nglobal_activation_short t l\n"
            "symfunction_short H 2 H 0.1 0.0 4.0\n" + "\n".join(lines) + "\n")
    return CoreModel.from_text(text)


def _fc(r, rc, ct, alpha):
    x = np.clip((r - alpha * rc) / (rc - alpha * rc), 0, 1)
    if ct == 6:  # POLY2
        f = ((15 - 6 * x) * x - 10) * x ** 3 + 1
    elif ct == 1:
        f = 0.5 * (np.cos(np.pi * x) + 1)
    else:
        raise ValueError(ct)
    return np.where(r < rc, f, 0.0)


def _reference(d, el, ct, alpha, symbols):
    r = np.linalg.norm(d, axis=1)
    u = d / r[:, None]
    out = {}
    for a, b, eta, lam, z, rc, rs in SF:
        ea, eb = symbols.index(a), symbols.index(b)
        A = np.exp(-eta * (r - rs) ** 2) * _fc(r, rc, ct, alpha)
        g = 0.0
        for j in range(len(r)):
            for k in range(j + 1, len(r)):
                if sorted((el[j], el[k])) != sorted((ea, eb)):
                    continue
                c = u[j] @ u[k]
                g += max(0.0, 1 + lam * c) ** z * A[j] * A[k]
        out[(a, b, eta, lam, z, rc, rs)] = g * 2.0 ** (1 - z)
    return out


def assert_jacobian_and_contraction(m, eo, d, el, J, rng, atoms) -> None:
    """The kernel's Jacobian J (functions x neighbours x 3) of centre element ``eo`` against
    central differences of its own values for the neighbours ``atoms``, and its contraction
    with random dE/dG against the Jacobian so weighted."""
    h = 1e-6
    for j in atoms:
        for a in range(3):
            dp, dm = d.copy(), d.copy()
            dp[j, a] += h
            dm[j, a] -= h
            fd = (m.symmetry_functions(eo, dp, el) - m.symmetry_functions(eo, dm, el)) / (2 * h)
            np.testing.assert_allclose(J[:, j, a], fd, rtol=1e-6, atol=1e-8)
    w = rng.normal(size=J.shape[0])
    np.testing.assert_allclose(m.contract(eo, d, el, w), np.einsum("s,sja->ja", w, J),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ct,alpha", [(6, 0.0), (1, 0.3)])
def test_type9_values_and_jacobian(ct, alpha):
    m = _model(ct, alpha)
    rng = np.random.default_rng(5)
    n = 23
    d = rng.normal(size=(n, 3))
    d *= (rng.uniform(0.8, 4.4, n) / np.linalg.norm(d, axis=1))[:, None]  # some beyond rc
    d[3] = -d[2] * 1.1  # collinear pair (cos = -1) and a repeated direction
    d[4] = d[2] * 0.7
    el = rng.integers(0, 2, n)
    eo = m.elements.index("O")
    G, J = m.symmetry_functions(eo, d, el, jacobian=True)
    lines = m.symmetry_function_lines(eo)
    ref = _reference(d, el, ct, alpha, m.elements)
    # match each kernel function to its parameters through the sorted input.nn lines
    for s, line in enumerate(lines):
        t = line.split()
        key = (t[2], t[3], float(t[4]), float(t[5]), float(t[6]), float(t[7]), float(t[8]))
        key = next(k for k in ref if (k[0], k[1]) in ((key[0], key[1]), (key[1], key[0]))
                   and np.allclose(k[2:], key[2:]))
        assert G[s] == pytest.approx(ref[key], rel=1e-12, abs=1e-13), line
    assert_jacobian_and_contraction(m, eo, d, el, J, rng, range(n))

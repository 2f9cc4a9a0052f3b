"""Wide angular functions of many elements as Cartesian moments: the kernel evaluates the sets
of one degree in lane groups of four (one set per vector lane) and the pair sums as products of
a group's lanes with another group's rotated lanes. Six neighbour elements with two Gaussians
and mixed degrees give groups of four and fewer, pairs within and across groups at every lane
offset; values against a direct pair sum, the Jacobian against central differences and the
contraction against the Jacobian."""
import numpy as np

from pyfragnn._core import CoreModel
from test_moments import assert_jacobian_and_contraction

ELEMENTS = ["H", "C", "N", "O", "F", "S"]
SF = [(a, b, 0.05, lam, z, 4.0, 0.0)
      for i, a in enumerate(ELEMENTS) for b in ELEMENTS[i:] for z, lam in ((1, 1), (4, -1))]
SF += [("H", "S", 0.2, 1, 3, 3.5, 0.5), ("C", "F", 0.2, 1, 2, 3.5, 0.5),
       ("N", "N", 0.2, -1, 5, 3.5, 0.5), ("H", "O", 0.2, 1, 1, 3.5, 0.5)]


def _model():
    lines = [f"symfunction_short O 9 {a} {b} {eta} {lam} {z} {rc} {rs}"
             for a, b, eta, lam, z, rc, rs in SF]
    text = (f"number_of_elements {len(ELEMENTS)}\nelements {' '.join(ELEMENTS)}\n"
            "cutoff_type 6 0.0\nglobal_hidden_layers_short 1\nglobal_nodes_short 2\n"
            "global_activation_short t l\n"
            + "".join(f"symfunction_short {e} 2 H 0.1 0.0 4.0\n" for e in ELEMENTS if e != "O")
            + "\n".join(lines) + "\n")
    return CoreModel.from_text(text)


def _fc(r, rc):
    x = np.clip(r / rc, 0, 1)
    return np.where(r < rc, ((15 - 6 * x) * x - 10) * x ** 3 + 1, 0.0)


def test_lane_groups_match_pair_sums():
    m = _model()
    rng = np.random.default_rng(7)
    n = 40
    d = rng.normal(size=(n, 3))
    d *= (rng.uniform(0.8, 4.4, n) / np.linalg.norm(d, axis=1))[:, None]  # some beyond rc
    el = rng.integers(0, len(ELEMENTS), n)
    eo = m.elements.index("O")
    G, J = m.symmetry_functions(eo, d, el, jacobian=True)
    r = np.linalg.norm(d, axis=1)
    u = d / r[:, None]
    for s, line in enumerate(m.symmetry_function_lines(eo)):
        t = line.split()
        a, b = m.elements.index(t[2]), m.elements.index(t[3])
        eta, lam, z, rc, rs = (float(x) for x in t[4:9])
        A = np.exp(-eta * (r - rs) ** 2) * _fc(r, rc)
        ref = sum(max(0.0, 1 + lam * (u[j] @ u[k])) ** z * A[j] * A[k]
                  for j in range(n) for k in range(j + 1, n)
                  if sorted((el[j], el[k])) == sorted((a, b))) * 2.0 ** (1 - z)
        assert abs(G[s] - ref) <= 1e-12 * abs(ref) + 1e-13, line
    assert_jacobian_and_contraction(m, eo, d, el, J, rng, range(0, n, 3))

"""Weight derivatives of energies and forces (pyfragnn._core.TrainingStructure) against
central finite differences, for every activation and every symmetry-function type."""
import numpy as np
import pytest

_core = pytest.importorskip("pyfragnn._core")
if not hasattr(_core, "TrainingStructure"):
    pytest.skip("pyfragnn._core built without training.pxi", allow_module_level=True)

SF_LINES = {
    2: ["{c} 2 {a} 0.5 1.0 4.2", "{c} 2 {b} 1.2 2.5 4.2"],
    3: ["{c} 3 {a} {b} 0.05 1 2 4.2", "{c} 3 {a} {a} 0.02 -1 1 4.2"],
    9: ["{c} 9 {a} {b} 0.03 -1 4 4.2", "{c} 9 {b} {b} 0.01 1 1 4.2"],
    12: ["{c} 12 0.3 1.5 4.2"],
    13: ["{c} 13 0.02 0.0 1 2 4.2"],
    20: ["{c} 20 {a} 0.0 4.2 p2", "{c} 20 {b} 1.5 4.2 p2a"],
    21: ["{c} 21 {a} {b} 0.0 4.2 30 170 p2"],
    22: ["{c} 22 {a} {a} 0.0 4.2 20 160 p3"],
}
ELEMENTS = ["Ni", "Cu"]


def make_model(sf_types, activations, hidden=(6, 5), seed=0, normalise=False):
    lines = [f"number_of_elements {len(ELEMENTS)}", "elements " + " ".join(ELEMENTS),
             "cutoff_type 6 0.0", "scale_symmetry_functions", "center_symmetry_functions",
             "scale_min_short 0.0", "scale_max_short 1.0",
             f"global_hidden_layers_short {len(hidden)}",
             "global_nodes_short " + " ".join(map(str, hidden)),
             "global_activation_short " + " ".join(activations)]
    for c in ELEMENTS:
        for t in sf_types:
            for tmpl in SF_LINES[t]:
                lines.append("symfunction_short " + tmpl.format(c=c, a="Ni", b="Cu"))
    core = _core.CoreModel.from_text("\n".join(lines) + "\n", "", None, "<test>")
    rng = np.random.default_rng(seed)
    for e in range(len(ELEMENTS)):
        n = core.n_symmetry_functions(e)
        lo = rng.uniform(0.0, 0.5, n)
        hi = lo + rng.uniform(1.0, 3.0, n)
        core.set_scaling(e, lo, hi, 0.5 * (lo + hi), np.ones(n))
        core.set_atom_energy(e, -0.3 * (e + 1))
    if normalise:
        core.set_normalisation(True, 0.1, 2.5, 1.0)
    nw = int(_core.model_weight_offsets(core)[-1])
    _core.set_weights(core, rng.normal(0.0, 0.4, nw))
    return core


def structure(periodic=False, seed=1):
    rng = np.random.default_rng(seed)
    if periodic:
        a = 3.6
        base = a * np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]], float)
        pos = base + rng.normal(0, 0.08, base.shape)
        cell = a * np.eye(3) + rng.normal(0, 0.05, (3, 3))
        pbc = np.ones(3, bool)
    else:
        pos = []
        while len(pos) < 9:
            p = rng.uniform(0, 4.5, 3)
            if all(np.linalg.norm(p - q) > 1.9 for q in pos):
                pos.append(p)
        pos = np.array(pos)
        cell = np.zeros((3, 3))
        pbc = np.zeros(3, bool)
    el = rng.integers(0, 2, len(pos)).astype(np.intc)
    el[0], el[1] = 0, 1
    return pos, cell, pbc, el


def fit_scaling(core, pos, cell, pbc, el):
    """Scaling from the structure's own SF values (inputs in a sane range, as in training)."""
    ts = _core.TrainingStructure(core, pos, cell, pbc, el)
    for e in range(len(ELEMENTS)):
        G = np.array([ts.G(i) for i in np.flatnonzero(el == e)])
        span = G.max(0) - G.min(0) + 0.05 * np.abs(G).max(0) + 1e-3
        lo, hi = G.min(0) - 0.3 * span, G.max(0) + 0.3 * span
        core.set_scaling(e, lo, hi, G.mean(0), G.std(0) + 1e-3)


def rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def fd_weights(core, fn, h=1e-5):
    w0 = _core.get_weights(core)
    g = np.zeros_like(w0)
    for k in range(w0.size):
        w = w0.copy()
        w[k] += h
        _core.set_weights(core, w)
        fp = fn()
        w[k] -= 2 * h
        _core.set_weights(core, w)
        fm = fn()
        g[k] = (fp - fm) / (2 * h)
    _core.set_weights(core, w0)
    return g


CASES = [((2, 9), ("t", "t", "l")), ((2, 3), ("s", "p", "l")), ((12, 13), ("r", "g", "l")),
         ((20, 21, 22), ("c", "S", "l")), ((2, 9), ("e", "h", "t")), ((2, 22), ("l", "t", "s"))]


@pytest.mark.parametrize("sf_types,acts", CASES)
@pytest.mark.parametrize("cache", [False, True])
def test_energy_and_force_weight_gradients(sf_types, acts, cache):
    core = make_model(sf_types, acts)
    pos, cell, pbc, el = structure(periodic=(sf_types[0] != 20))
    fit_scaling(core, pos, cell, pbc, el)
    ts = _core.TrainingStructure(core, pos, cell, pbc, el, cache)
    assert ts.jacobians_cached == cache
    # energies and forces agree with the model's own compute()
    off, idx, d = _core.neighbor_list(pos, cell, pbc, core.cutoff)
    ref = core.compute_neighbors(off, idx, d, el)
    E, F = ts.energy_forces()
    assert abs(E - ref["energy"]) <= 1e-12 * max(1, abs(E))
    assert np.allclose(F, ref["forces"], rtol=0, atol=1e-12 * max(1, np.abs(F).max()))
    assert abs(ts.energy() - E) <= 1e-12 * max(1, abs(E))
    # a single component alone (the EKF's threshold trials): energy_forces' value bit for bit,
    # self-images of the short periodic cell included
    single = np.array([[ts.force_component(k, a) for a in range(3)] for k in range(len(pos))])
    assert np.array_equal(single, F)
    # dE/dw
    E2, g = ts.energy_gradient()
    assert E2 == pytest.approx(E, abs=1e-12)
    gfd = fd_weights(core, ts.energy)
    assert rel_err(g, gfd) < 1e-6
    # dF_ka/dw for a few components, and d(sum c.F)/dw for a random projection
    rng = np.random.default_rng(3)
    for k, a in [(0, 0), (len(pos) - 1, 2), (3, 1)]:
        Fk, gk = ts.force_component_gradient(k, a)
        assert Fk == pytest.approx(F[k, a], abs=1e-10)
        gfd = fd_weights(core, lambda: ts.energy_forces()[1][k, a])
        assert rel_err(gk, gfd) < 1e-6, (k, a)
    c = rng.normal(size=F.shape)
    S, gc = ts.force_gradient(c, 0.5)
    assert S == pytest.approx(float((c * F).sum()), rel=1e-10)
    gfd = fd_weights(core, lambda: float((c * ts.energy_forces()[1]).sum()))
    assert rel_err(gc, 0.5 * gfd) < 1e-6  # scale 0.5 applied to the derivative


def test_forces_are_minus_position_gradient_and_normalisation():
    core = make_model((2, 9), ("t", "t", "l"), normalise=True)
    pos, cell, pbc, el = structure(periodic=True)
    ts = _core.TrainingStructure(core, pos, cell, pbc, el, True)
    E, F = ts.energy_forces()
    h = 1e-5
    for k, a in [(0, 0), (2, 1)]:
        p = pos.copy()
        p[k, a] += h
        ep = _core.TrainingStructure(core, p, cell, pbc, el).energy()
        p[k, a] -= 2 * h
        em = _core.TrainingStructure(core, p, cell, pbc, el).energy()
        assert -(ep - em) / (2 * h) == pytest.approx(F[k, a], rel=1e-6, abs=1e-9)
    _, g = ts.energy_gradient()
    assert rel_err(g, fd_weights(core, ts.energy)) < 1e-6
    _, g = ts.force_component_gradient(1, 2)
    assert rel_err(g, fd_weights(core, lambda: ts.energy_forces()[1][1, 2])) < 1e-6


def test_weights_roundtrip_and_errors():
    core = make_model((2,), ("t", "t", "l"))
    w = _core.get_weights(core)
    off = _core.model_weight_offsets(core)
    assert off[-1] == w.size and len(off) == len(ELEMENTS) + 1
    assert np.array_equal(np.concatenate([core.get_parameters(e) for e in range(2)]), w)
    with pytest.raises(ValueError):
        _core.set_weights(core, w[:-1])
    pos, cell, pbc, el = structure()
    ts = _core.TrainingStructure(core, pos, cell, pbc, el)
    with pytest.raises(ValueError):
        ts.force_component_gradient(len(pos), 0)
    with pytest.raises(ValueError, match="out of range"):
        ts.force_component(0, 3)
    with pytest.raises(ValueError):
        _core.TrainingStructure(core, pos, cell, pbc, np.full(len(pos), 5, np.intc))

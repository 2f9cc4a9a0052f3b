"""Trainer: data sets, config, preparation, optimisers (pure Python), and end-to-end training
on EMT-labelled Cu-Ni cells (compiled core): accuracy bars, FragNN reload, kill-and-resume,
MPI np=2 versus serial, bad data and bad config."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pyfragnn.dataset import (DatasetError, Structure, read_dataset, read_input_data,
                              validate, write_extxyz, write_input_data)
from pyfragnn.training import prepare
from pyfragnn.training.config import ConfigError, load_config, normalise_config
from pyfragnn.training.optim import Adam, KalmanFilter, WeightAverage


# ---------------------------------------------------------------- optimisers (pure Python)

@pytest.mark.parametrize("kt", [0, 1])
@pytest.mark.parametrize("rank_block", [1, 5, 64])
def test_kalman_filter_matches_dense_reference(kt, rank_block):
    rng = np.random.default_rng(0)
    n, upe = 40, 10
    kf = KalmanFilter(n, kalman_type=kt, rank_block=rank_block, updates_per_epoch=upe)
    w = np.zeros(n)
    w_ref = np.zeros(n)
    P = np.eye(n) / 1e-2
    q, eta, lam = 0.01, 0.01, 0.96
    for _ in range(30):
        h = rng.normal(size=n)
        e = rng.normal()
        kf.update(w, h, e)
        x = P @ h
        if kt == 0:
            a = h @ x + 1 / eta
            w_ref += x * e / a
            P = P - np.outer(x, x) / a + q * np.eye(n)
            q = max(q * math.exp(-2.302 / upe), 1e-6)
            eta = min(eta * math.exp(2.302 / upe), 1.0)
        else:
            a = h @ x + lam
            w_ref += x * e / a
            P = (P - np.outer(x, x) / a) / lam
            lam = 0.99987 * lam + 1 - 0.99987
    assert np.allclose(w, w_ref, rtol=1e-12, atol=1e-12 * np.abs(w_ref).max())
    kf.flush()
    assert np.allclose(kf.blocks[0].full_matrix(), P, rtol=0, atol=1e-11 * np.abs(P).max())


_KF_KERNEL_SCRIPT = r"""
import sys
import numpy as np
from pyfragnn import _core
rng = np.random.default_rng(7)
out = []
for n in [1, 7, 8, 9, 17, 64, 100, 257, 531]:
    B = rng.standard_normal((n, n))
    P = np.tril(B) + np.tril(B, -1).T  # bit-symmetric, as the filter keeps P
    h = rng.standard_normal(n)
    m = int(rng.integers(1, 70))
    U = rng.standard_normal((n, m))
    UT = np.ascontiguousarray(U.T)
    y = np.empty(n)
    _core.kf_rows_times_vector(P, h, y)
    Pd = P.copy()
    _core.kf_rows_downdate(Pd, U, UT, 1 / 0.96)
    assert np.array_equal(Pd, Pd.T)
    out += [y, Pd.ravel()]
    for size in [1, 2, 3, 5]:  # row splits as over MPI ranks
        bounds = [n * k // size for k in range(size + 1)]
        for r0, r1 in zip(bounds, bounds[1:]):
            A = P[r0:r1].copy()
            iu = np.triu_indices(r1 - r0, 1)
            blk = A[:, r0:r1]
            blk[iu] = np.nan  # the diagonal block's upper triangle is neither read nor written
            A[:, r0:r1] = blk
            yb = np.empty(r1 - r0)
            _core.kf_block_times_vector(A, r0, h, yb)
            assert np.array_equal(yb, y[r0:r1]), (n, size, r0)
            _core.kf_block_downdate(A, r0, np.ascontiguousarray(U[r0:r1]), UT, 1 / 0.96)
            ref = Pd[r0:r1].copy()
            blk = ref[:, r0:r1]
            blk[iu] = np.nan
            ref[:, r0:r1] = blk
            assert np.array_equal(A, ref, equal_nan=True), (n, size, r0)
np.save(sys.argv[1], np.concatenate(out))
"""


def test_kalman_kernels_bit_identical_over_row_splits_and_isas(tmp_path):
    """The compiled Kalman kernels: the block kernels (one triangle of the diagonal block) give
    the full-row kernels' bits for every row split, and the AVX-512, AVX2 and generic paths
    (PYFRAGNN_ISA caps the path at load time; one subprocess each) give the same bits."""
    from conftest import package_env
    script = tmp_path / "kf.py"
    script.write_text(_KF_KERNEL_SCRIPT)
    res = {}
    for isa in ("generic", "avx2", "best"):
        out = tmp_path / f"{isa}.npy"
        subprocess.run([sys.executable, str(script), str(out)], check=True, cwd=str(tmp_path),
                       env=package_env(PYFRAGNN_ISA=isa))
        res[isa] = np.load(out)
    assert np.all(np.isfinite(res["generic"]))
    assert np.array_equal(res["avx2"], res["generic"])
    assert np.array_equal(res["best"], res["generic"])


def test_kalman_filter_full_matrix_is_symmetric_and_round_trips():
    """The default filter keeps one triangle of P's diagonal block; full_matrix() returns the
    symmetric P and set_full_matrix() symmetrises what it is given (lower triangle)."""
    rng = np.random.default_rng(4)
    n = 23
    kf = KalmanFilter(n, rank_block=3)
    w = np.zeros(n)
    for _ in range(10):
        kf.update(w, rng.normal(size=n), rng.normal())
    P = kf.blocks[0].full_matrix()
    assert np.array_equal(P, P.T)
    Q = P + np.triu(rng.normal(size=(n, n)) * 1e-9, 1)  # asymmetric input
    kf.blocks[0].set_full_matrix(Q)
    assert np.array_equal(kf.blocks[0].full_matrix(), P)


@pytest.mark.parametrize("blocks", [None, [0, 15, 40]])
def test_kalman_innovation_gate_matches_dense_reference_and_bounds_steps(blocks):
    """max_innovation kappa: a = max(h.P h + R, e^2 / kappa^2); each step is at most kappa
    long in the P^-1 metric; updates under the gate are exactly the ungated filter's."""
    rng = np.random.default_rng(3)
    n, kappa = 40, 0.5
    kf = KalmanFilter(n, rank_block=4, updates_per_epoch=10, max_innovation=kappa,
                      blocks=blocks)
    w, w_ref = np.zeros(n), np.zeros(n)
    P = np.eye(n) / 1e-2
    if blocks is not None:
        P[:15, 15:] = P[15:, :15] = 0.0
    q, eta = 0.01, 0.01
    gated = 0
    for k in range(40):
        h = rng.normal(size=n)
        e = rng.normal() * (300.0 if k % 5 == 0 else 1.0)   # every fifth an outlier
        exempt = k in (7, 20)    # gate=False (as the trainer's energy updates)
        Pold = P.copy()
        kf.update(w, h, e, gate=not exempt)
        x = P @ h
        a = h @ x + 1 / eta
        if exempt:
            pass
        elif e * e > kappa ** 2 * a:
            a = e * e / kappa ** 2
            gated += 1
        dw = x * e / a
        if not exempt:
            assert math.sqrt(dw @ np.linalg.solve(Pold, dw)) <= kappa * (1 + 1e-9)
        elif k == 20:   # an exempt outlier takes the full (ungated) step
            assert math.sqrt(dw @ np.linalg.solve(Pold, dw)) > kappa
        w_ref += dw
        P = P - np.outer(x, x) / a + q * np.eye(n)
        if blocks is not None:
            P[:15, 15:] = P[15:, :15] = 0.0
        q = max(q * math.exp(-2.302 / 10), 1e-6)
        eta = min(eta * math.exp(2.302 / 10), 1.0)
    assert kf.n_gated == gated >= 5
    assert np.allclose(w, w_ref, rtol=1e-11, atol=1e-11 * np.abs(w_ref).max())
    kf.flush()
    full = np.zeros((n, n))
    for b in kf.blocks:
        full[b.lo:b.hi, b.lo:b.hi] = b.full_matrix()
    assert np.allclose(full, P, rtol=0, atol=1e-10 * np.abs(P).max())
    # kappa = 0: n2p2's filter, no gate
    kf0 = KalmanFilter(n, max_innovation=0.0)
    kf0.update(np.zeros(n), np.ones(n), 1e6)
    assert kf0.n_gated == 0
    with pytest.raises(ValueError):
        KalmanFilter(n, max_innovation=-1.0)


def test_decoupled_kalman_is_blockwise_and_fits_linear_model():
    rng = np.random.default_rng(1)
    n = 12
    w_true = rng.normal(size=n)
    kf = KalmanFilter(n, blocks=[0, 5, 12], q0=0.0, qmin=0.0, eta=1.0, etamax=1.0)
    w = np.zeros(n)
    for _ in range(400):
        h = rng.normal(size=n)
        kf.update(w, h, float(h @ (w_true - w)))
    assert np.allclose(w, w_true, atol=1e-3)
    assert len(kf.blocks) == 2 and kf.blocks[0].P0.shape == (5, 5)


@pytest.mark.parametrize("kt", [0, 1])
@pytest.mark.parametrize("rank_block,symmetric", [(1, False), (3, False), (64, False),
                                                  (3, True)])
def test_decoupled_kalman_matches_dense_reference(kt, rank_block, symmetric):
    """Element-decoupled EKF (Puskorius & Feldkamp): block-diagonal P, shared innovation
    a = sum_b h_b.P_b h_b + R, every block sees the full error; an empty block is ignored.
    (n2p2's update_strategy 1 differs by design: independent filters with a_e = h_e.P_e h_e + R
    and the error apportioned by element fractions.)"""
    rng = np.random.default_rng(5)
    n, upe, bounds = 17, 7, [0, 6, 6, 13, 17]
    kf = KalmanFilter(n, kalman_type=kt, blocks=bounds, rank_block=rank_block,
                      updates_per_epoch=upe, symmetric=symmetric)
    bl = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    assert len(kf.blocks) == len(bl)
    w, w_ref = np.zeros(n), np.zeros(n)
    Ps = [np.eye(b - a) / 1e-2 for a, b in bl]
    q, eta, lam = 0.01, 0.01, 0.96
    for _ in range(40):
        h = rng.normal(size=n) * rng.uniform(0.1, 10)
        e = rng.normal()
        kf.update(w, h, e)
        xs = [P @ h[a:b] for P, (a, b) in zip(Ps, bl)]
        A = (1 / eta if kt == 0 else lam) + sum(h[a:b] @ x for x, (a, b) in zip(xs, bl))
        for k, ((a, b), x) in enumerate(zip(bl, xs)):
            w_ref[a:b] += x * e / A
            if kt == 0:
                Ps[k] = Ps[k] - np.outer(x, x) / A + q * np.eye(b - a)
            else:
                Ps[k] = (Ps[k] - np.outer(x, x) / A) / lam
        if kt == 0:
            q = max(q * math.exp(-2.302 / upe), 1e-6)
            eta = min(eta * math.exp(2.302 / upe), 1.0)
        else:
            lam = 0.99987 * lam + 1 - 0.99987
    assert np.allclose(w, w_ref, rtol=0, atol=1e-12 * np.abs(w_ref).max())
    kf.flush()
    for blk, P in zip(kf.blocks, Ps):
        assert np.allclose(blk.full_matrix(), P, rtol=0, atol=1e-12 * np.abs(P).max())


def test_adam_minimises_quadratic():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(8, 8))
    A = A @ A.T + np.eye(8)
    b = rng.normal(size=8)
    w = np.zeros(8)
    opt = Adam(8, lr=0.05)
    for _ in range(3000):
        opt.step(w, A @ w - b)
    assert np.allclose(w, np.linalg.solve(A, b), atol=1e-3)  # Adam oscillates at ~lr scale


def test_weight_average_is_bias_corrected_exponential_mean():
    """Against the explicit weighted sum  sum_k d^(t-k) (1-d) w_k / (1 - d^t)."""
    rng = np.random.default_rng(5)
    ws = rng.normal(size=(40, 6))
    avg = WeightAverage(6, tau=7.0)
    d = math.exp(-1 / 7.0)
    for t, w in enumerate(ws, start=1):
        avg.update(w)
        coef = np.array([d ** (t - k) * (1 - d) for k in range(1, t + 1)])
        ref = (coef[:, None] * ws[:t]).sum(0) / (1 - d ** t)
        assert np.allclose(avg.value(), ref, rtol=1e-13, atol=1e-15)
    avg1 = WeightAverage(1, 3.0)
    avg1.update(np.array([2.5]))
    assert avg1.value()[0] == pytest.approx(2.5, rel=1e-15)  # first update: the weights
    b = WeightAverage(6, 7.0)
    b.set_state(avg.state())
    assert np.array_equal(b.value(), avg.value())
    with pytest.raises(RuntimeError):
        WeightAverage(2, 3.0).value()
    with pytest.raises(ValueError):
        WeightAverage(2, 0.0)


# ---------------------------------------------------------------- data sets

def _toy_structures(n=4):
    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        m = 3 + k
        out.append(Structure(symbols=["Cu"] * (m - 1) + ["Ni"], positions=rng.normal(0, 2, (m, 3)),
                             cell=np.eye(3) * 9.0 if k % 2 else np.zeros((3, 3)),
                             pbc=np.array([k % 2 == 1] * 3), energy=float(rng.normal()),
                             forces=rng.normal(size=(m, 3)), label=f"T{k % 2}",
                             set="test" if k == 0 else "train", weight=1.0 + k,
                             force_mask=np.arange(m) % 2 == 0))
    return out


@pytest.mark.parametrize("fmt", ["extxyz", "n2p2", "db"])
def test_dataset_roundtrip(tmp_path, fmt):
    S = _toy_structures()
    if fmt == "extxyz":
        path = str(tmp_path / "d.extxyz")
        write_extxyz(S, path)
    elif fmt == "n2p2":
        path = str(tmp_path / "input.data")
        write_input_data(S, path)
    else:
        import ase.db
        path = str(tmp_path / "d.db")
        with ase.db.connect(path) as db:
            for s in S:
                db.write(s.to_atoms(), label=s.label, set=s.set, weight=s.weight,
                         data={"force_mask": s.mask()})
    R = read_dataset(path)
    assert len(R) == len(S)
    for a, b in zip(S, R):
        assert a.symbols == b.symbols and a.label == b.label and a.set == b.set
        assert b.weight == pytest.approx(a.weight)
        assert np.allclose(a.positions, b.positions, atol=1e-7)
        assert np.allclose(a.forces, b.forces, atol=1e-7)
        assert b.energy == pytest.approx(a.energy, abs=1e-7)
        assert np.array_equal(a.mask(), b.mask())
        assert np.array_equal(np.asarray(a.pbc), np.asarray(b.pbc))
        assert b.source.endswith(f"record {R.index(b) + 1}")


def test_bad_data_reported_with_file_and_record(tmp_path):
    S = _toy_structures()
    path = str(tmp_path / "input.data")
    write_input_data(S, path)
    from pathlib import Path
    text = Path(path).read_text().splitlines()
    # record 3: NaN force; record 4: energy line removed
    starts = [i for i, l in enumerate(text) if l.startswith("begin")]
    atom3 = next(i for i in range(starts[2], len(text)) if text[i].startswith("atom"))
    tok = text[atom3].split()
    tok[7] = "nan"
    text[atom3] = " ".join(tok)
    text = [l for i, l in enumerate(text) if not (i > starts[3] and l.startswith("energy"))]
    Path(path).write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match="record 4: no energy line"):
        read_input_data(path)
    # NaN forces and unknown elements are found by validate, naming file and record
    S2 = _toy_structures()
    S2[2].forces[0, 0] = np.nan
    S2[2].source = "x.data: record 3"
    S2[1].symbols[0] = "Zn"
    S2[1].source = "x.data: record 2"
    with pytest.raises(DatasetError) as ei:
        validate(S2, ["Ni", "Cu"])
    msg = str(ei.value)
    assert "x.data: record 3: non-finite force on atom 1" in msg
    assert "x.data: record 2: unknown element(s) Zn" in msg
    bad = tmp_path / "bad.data"
    bad.write_text("begin\natom 0 0 0 Cu 0 0 0 0\nend\n")
    with pytest.raises(DatasetError, match=r"bad.data: record 1 \(line 2\): atom line needs 9"):
        read_input_data(str(bad))


# ---------------------------------------------------------------- config and preparation

def test_bad_config_values(tmp_path):
    with pytest.raises(ConfigError, match="training.optimizer"):
        normalise_config({"data": {"files": ["a.xyz"]}, "training": {"optimizer": "sgd"}})
    with pytest.raises(ConfigError, match="training.kalman.epsilon"):
        normalise_config({"data": {"files": ["a.xyz"]}, "training": {"kalman": {"epsilon": -1}}})
    with pytest.raises(ConfigError, match="unknown key 'training.epoch'"):
        normalise_config({"data": {"files": ["a.xyz"]}, "training": {"epoch": 3}})
    with pytest.raises(ConfigError, match="model.activations"):
        normalise_config({"data": {"files": ["a.xyz"]}, "model": {"activations": ["t", "l"]}})
    p = tmp_path / "c.toml"
    p.write_text('[data]\nfiles = ["d.extxyz"]\n[training]\nepochs = "ten"\n')
    with pytest.raises(ConfigError, match="'training.epochs' must be a number"):
        load_config(str(p))
    p.write_text('[data]\nfiles = ["d.extxyz"]\n[training]\nepochs = 3\n')
    cfg = load_config(str(p))
    assert cfg["data"]["files"] == [str(tmp_path / "d.extxyz")]
    assert cfg["training"]["kalman"]["qtau"] == 2.302


def test_reference_energies_and_sf_statistics():
    counts = np.array([[2, 0], [1, 3], [4, 4], [0, 5]], float)
    eps = np.array([-1.5, -3.25])
    assert np.allclose(prepare.reference_energies(counts, counts @ eps), eps)
    G = np.array([[0.1, 2.0, 5.0], [0.3, 2.0, 6.0], [0.2, 2.0, 4.0]])
    with pytest.raises(prepare.ConstantSymmetryFunctionError, match="SF 2 .*constant value 2"):
        prepare.sf_statistics(G, "Cu", ["a", "Cu 2 Cu 1.0 0.0 6.0", "c"])
    lo, hi, mu, sig = prepare.sf_statistics(G[:, [0, 2]], "Cu")
    assert np.allclose(lo, [0.1, 4.0]) and np.allclose(mu, [0.2, 5.0])


def test_near_constant_symmetry_functions_relative_check():
    """max - min <= tol * max(1, |max|, |min|) is (near-)constant: a tiny nonzero range passes
    a zero test but would be scaled up by 1/range."""
    gmin = np.array([0.0, 5.0, 1e3, 0.0, 2.0, 0.0, 1e-9, np.nan])
    gmax = np.array([1e-8, 5 + 1e-7, 1e3 + 1e-4, 1e-3, 2.0, 3e-6, 2e-9, 1.0])
    bad = prepare.near_constant_functions(gmin, gmax)
    assert prepare.CONSTANT_SF_TOL == 1e-6
    assert list(bad) == [0, 1, 2, 4, 6, 7]
    assert list(prepare.near_constant_functions(gmin, gmax, tol=0.0)) == [4, 7]
    G = np.array([[0.1, 2.0, 5.0], [0.3, 2.0 + 3e-9, 6.0], [0.2, 2.0, 4.0]])
    with pytest.raises(prepare.ConstantSymmetryFunctionError,
                       match=r"(?s)element Cu: 1 .*SF 2 \(Cu 2 Cu 1.0 0.0 6.0\): range 3e-09.*"
                             r"Hint: set model.constant_sf"):
        prepare.sf_statistics(G, "Cu", ["a", "Cu 2 Cu 1.0 0.0 6.0", "c"])
    lo, hi, _, _ = prepare.sf_statistics(G, "Cu", tol=1e-12)
    assert hi[1] - lo[1] == pytest.approx(3e-9)


def test_sf_generators_and_pruning():
    el = ["H", "C", "Zn"]
    rad = prepare.radial_functions(el, 6.0, n=4, r_min=1.0, drop_pairs=[("Zn", "H"), ("H", "H")])
    # 9 central-neighbour pairs minus Zn-H, H-Zn, H-H
    assert len(rad) == 4 * 6
    assert not any(l.startswith("H 2 H") or l.startswith("Zn 2 H") for l in rad)
    cen = prepare.radial_functions(["Cu"], 5.0, n=3, r_min=1.0, mode="centred")
    assert [float(l.split()[4]) for l in cen] == [0.0] * 3
    ang = prepare.angular_functions(["Cu", "Ni"], 5.0, etas=[0.01], zetas=[1, 2], lambdas=[-1, 1],
                                    pair_cutoffs={("Cu", "Ni"): 4.0})
    assert len(ang) == 2 * 3 * 4
    assert all(l.split()[-1] == "4" for l in ang if "Ni" in l.split()[1:4] and "Cu" in l)


# ---------------------------------------------------------------- end-to-end (compiled core)

def _core_ok():
    try:
        from pyfragnn import _core
        return hasattr(_core, "TrainingStructure")
    except ImportError:
        return False


needs_core = pytest.mark.skipif(not _core_ok(), reason="pyfragnn._core with training.pxi needed")


def emt_cells(n, seed=0):
    """Rattled (0.02-0.12 Å) and strained (+-4 %) fcc Cu-Ni cells of 8 atoms, EMT labels."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        at = bulk("Cu", "fcc", a=3.58) * (2, 2, 2)
        at.set_chemical_symbols(list(np.where(rng.random(len(at)) < 0.4, "Ni", "Cu")))
        F = np.eye(3) + rng.uniform(-0.04, 0.04, (3, 3))
        at.set_cell(at.cell @ (0.5 * (F + F.T)), scale_atoms=True)
        at.positions += rng.normal(0, rng.uniform(0.02, 0.12), at.positions.shape)
        at.calc = EMT()
        out.append(Structure(symbols=at.get_chemical_symbols(), positions=at.positions.copy(),
                             cell=np.array(at.cell), pbc=np.ones(3, bool),
                             energy=float(at.get_potential_energy()),
                             forces=at.get_forces().copy(),
                             label="Cu-rich" if (np.array(at.get_chemical_symbols()) == "Cu").sum() >= 5
                             else "Ni-rich", source=f"emt:{k + 1}"))
    return out


@pytest.fixture(scope="module")
def emt_data():
    return emt_cells(300)


def base_config(out, optimizer="ekf", epochs=8):
    return {"data": {"files": [], "test_fraction": 0.2, "split": "label"},
            "model": {"cutoff": 4.5, "hidden": [10, 10], "radial": {"n": 5, "r_min": 1.8},
                      "angular": {"eta": [0.02], "zeta": [1, 4], "lambda": [-1, 1]}},
            "training": {"optimizer": optimizer, "epochs": epochs, "seed": 11,
                         "force_weight": 2.0, "force_fraction": 0.03, "progress": False,
                         "adam": {"learning_rate": 0.005, "batch_size": 8}},
            "output": {"directory": str(out), "plots": True}}


@needs_core
def test_ekf_training_reaches_bars_and_fragnn_reproduces(emt_data, tmp_path):
    """Bars: test RMSE E < 20 meV/atom and F < 0.15 eV/Å after 8 epochs. The data spread is
    0.27 eV/atom (s.d. of E/atom) and 1.0 eV/Å (force RMS), so the bars demand 93 % / 85 %
    of it explained; n2p2's 3-epoch anchor on the harder fragment set is 55 meV/atom,
    0.22 eV/Å. A fit measured at 6-10 meV/atom, 0.06-0.09 eV/Å leaves margin for platform
    round-off."""
    from pyfragnn.training.trainer import Trainer
    from pyfragnn import FragNN, Potential
    tr = Trainer(base_config(tmp_path / "ekf"), structures=emt_data)
    res = tr.run()
    last = res.history[-1]
    assert res.history[0]["rmse_E_test"] > 0.1
    assert last["rmse_E_test"] < 0.020, last
    assert last["rmse_F_test"] < 0.15, last
    for f in ("potential.fragnn", "learning_curve.csv", "learning_curve.png", "rmse_table.csv",
              "rmse_table.md", "parity_energy.png", "parity_forces.png", "n2p2/input.nn",
              "n2p2/scaling.data", "checkpoint.npz"):
        assert (tmp_path / "ekf" / f).exists(), f
    labels = {(r["label"], r["set"]) for r in res.table}
    assert ("Cu-rich", "test") in labels and ("(all)", "train") in labels
    # trainer predictions (its own cache path) agree with Model::compute to round-off ...
    err = tr.errors()
    assert err["rmse_F_test"] == pytest.approx(last["rmse_F_test"], rel=1e-12)
    # ... and reloading the written potential in FragNN reproduces them exactly
    calc = FragNN(str(tmp_path / "ekf" / "potential.fragnn"))
    n2p2 = Potential.load(str(tmp_path / "ekf" / "n2p2"))
    for i in list(tr.test_idx[:5]) + list(tr.train_idx[:3]):
        at = emt_data[i].to_atoms()
        at.calc = calc
        assert at.get_potential_energy() == res.predictions["energy"][i]
        assert np.array_equal(at.get_forces(), res.predictions["forces"][i])
        r = n2p2.compute(emt_data[i].positions, emt_data[i].symbols, emt_data[i].cell,
                         emt_data[i].pbc)
        assert r["energy"] == pytest.approx(res.predictions["energy"][i], rel=1e-12)


@needs_core
def test_adam_training_improves(emt_data, tmp_path):
    from pyfragnn.training.trainer import Trainer
    res = Trainer(base_config(tmp_path / "adam", "adam", epochs=6), structures=emt_data[:150]).run()
    h0, h1 = res.history[0], res.history[-1]
    assert h1["rmse_E_test"] < 0.3 * h0["rmse_E_test"]
    assert h1["rmse_F_test"] < 0.5 * h0["rmse_F_test"]


@needs_core
def test_weight_average_leaves_the_optimiser_path_and_improves_the_fit(emt_data, tmp_path):
    """training.ema_epochs: the filter follows the same path as without averaging (its own
    weights' training RMSEs, recorded as *_raw, equal the plain run's bit for bit), the
    history's errors are those of the saved (averaged) potential, and averaging does not fit
    worse here."""
    from pyfragnn.training.trainer import Trainer
    data = emt_data[:150]
    runs = {}
    for ema in (0.0, 0.25):
        cfg = base_config(tmp_path / f"ema{ema}", epochs=4)
        cfg["training"]["ema_epochs"] = ema
        cfg["output"].update(plots=False, n2p2=False)
        tr = Trainer(cfg, structures=data)
        runs[ema] = (tr, tr.run())
    plain, avg = runs[0.0][1].history, runs[0.25][1].history
    for hp, ha in zip(plain[1:], avg[1:]):
        assert "rmse_E_train_raw" not in hp
        assert ha["rmse_E_train_raw"] == hp["rmse_E_train"]
        assert ha["rmse_F_train_raw"] == hp["rmse_F_train"]
        assert ha["rmse_E_train"] != hp["rmse_E_train"]
    tr, res = runs[0.25]
    err = tr.errors()  # the trainer now holds the averaged weights
    for k in ("rmse_E_test", "rmse_F_test", "rmse_E_train"):
        assert err[k] == pytest.approx(avg[-1][k], rel=1e-12)
    assert avg[-1]["rmse_E_test"] + avg[-1]["rmse_F_test"] / 10 < \
        1.1 * (plain[-1]["rmse_E_test"] + plain[-1]["rmse_F_test"] / 10)


def _write_run(tmp_path, data, name, optimizer="ekf", epochs=3, **train):
    d = tmp_path / name
    d.mkdir()
    write_extxyz(data, str(d / "data.extxyz"))
    cfg = base_config("out", optimizer, epochs)
    cfg["data"]["files"] = ["data.extxyz"]
    cfg["training"].update(train)
    cfg["output"]["plots"] = False
    (d / "train.json").write_text(json.dumps(cfg))
    return d


def _env():
    import pyfragnn
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyfragnn.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def _cli(d, *extra, env=None, mpi=0):
    cmd = [sys.executable, "-m", "pyfragnn", "train", str(d / "train.json"), "-q",
           *extra]
    if mpi:
        cmd = [shutil.which("mpirun") or shutil.which("mpiexec"), "-np", str(mpi)] + cmd
    return subprocess.run(cmd, env=env or _env(), cwd=d, capture_output=True, text=True,
                          timeout=300)


def _weights(path):
    from pyfragnn import Potential
    core = Potential.load(str(path)).core
    return np.concatenate([core.get_parameters(e) for e in range(len(core.elements))])


@needs_core
@pytest.mark.parametrize("optimizer,kill", [("ekf", "2:40"), ("adam", "2:5")])
def test_sigkill_and_resume_gives_identical_weights(emt_data, tmp_path, optimizer, kill):
    data = emt_data[:120]
    a = _write_run(tmp_path, data, "a", optimizer)
    r = _cli(a)
    assert r.returncode == 0, r.stderr
    b = _write_run(tmp_path, data, "b", optimizer)
    env = _env()
    env["PYFRAGNN_TEST_SIGKILL"] = kill  # SIGKILL in epoch 2, mid-epoch
    r = _cli(b, env=env)
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert not (b / "out" / "potential.fragnn").exists()
    r = _cli(b)
    assert r.returncode == 0, r.stderr
    wa, wb = _weights(a / "out" / "potential.fragnn"), _weights(b / "out" / "potential.fragnn")
    assert np.array_equal(wa, wb)


@needs_core
@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found")
@pytest.mark.parametrize("optimizer", ["ekf", "adam"])
def test_mpi_two_ranks_equal_serial(emt_data, tmp_path, optimizer):
    data = emt_data[:120]
    s = _write_run(tmp_path, data, "serial", optimizer)
    p = _write_run(tmp_path, data, "mpi", optimizer)
    r = _cli(s)
    assert r.returncode == 0, r.stderr
    r = _cli(p, mpi=2)
    assert r.returncode == 0, r.stdout + r.stderr
    ws, wp = _weights(s / "out" / "potential.fragnn"), _weights(p / "out" / "potential.fragnn")
    assert np.max(np.abs(ws - wp)) <= 1e-10 * np.max(np.abs(ws))
    # with the core's fixed-order covariance kernels the runs agree bit for bit
    assert np.array_equal(ws, wp)


@needs_core
def test_constant_symmetry_function_and_bad_structure_errors(tmp_path):
    from pyfragnn.training.trainer import Trainer
    data = emt_cells(6, seed=5)
    cfg = base_config(tmp_path / "c", epochs=1)
    # a radial function whose shell no atom reaches is constant (zero) over the data
    cfg["model"]["radial"] = {"n": 2, "r_min": 0.2}
    cfg["model"]["cutoff"] = 1.0
    with pytest.raises(prepare.ConstantSymmetryFunctionError, match="constant"):
        Trainer(cfg, structures=data).setup()
    data[3].forces = data[3].forces[:-1]
    with pytest.raises(DatasetError, match="emt:4: forces have shape"):
        Trainer(base_config(tmp_path / "d"), structures=data).setup()


# two functions that only see the far tails of their Gaussians on the Cu-Ni cells: ranges
# ~1e-9 (angular, like Zn-H-H within 4 Å) and ~1e-8 (radial); nonzero, so a zero-range test
# passes them
_TINY_SFS = ["Cu 9 Ni Ni 2.0 1 1 4.5", "Cu 2 Ni 4.0 0.0 4.5"]


def _input_nn_with_tiny_sfs(path):
    sfs = prepare.radial_functions(["Ni", "Cu"], 4.5, n=3, r_min=1.8)
    text = prepare.make_input_nn(["Ni", "Cu"], sfs[:9] + [_TINY_SFS[0]] + sfs[9:] +
                                 [_TINY_SFS[1]], hidden=(6,), activations=("t", "l"))
    path.write_text(text)
    lines = text.splitlines()
    return [lines.index("symfunction_short " + t) + 1 for t in _TINY_SFS]


@needs_core
def test_near_constant_symmetry_function_error_names_element_index_line_and_range(tmp_path):
    from pyfragnn.training.trainer import Trainer
    data = emt_cells(12, seed=21)
    nums = _input_nn_with_tiny_sfs(tmp_path / "input.nn")
    cfg = base_config(tmp_path / "out", epochs=1)
    cfg["model"]["input_nn"] = str(tmp_path / "input.nn")
    with pytest.raises(prepare.ConstantSymmetryFunctionError) as ei:
        Trainer(cfg, structures=data).setup()
    msg = str(ei.value)
    assert "element Cu: 2 symmetry function(s) are (nearly) constant" in msg
    assert f"line {nums[0]} of input.nn: Cu 9 Ni Ni 2 1 1 4.5" in msg
    assert f"line {nums[1]} of input.nn: Cu 2 Ni 4 0 4.5" in msg
    assert "range " in msg and "model.constant_sf" in msg
    # the SF indices are the 1-based positions in n2p2 order (as in scaling.data)
    from pyfragnn import _core
    core = _core.CoreModel.from_text((tmp_path / "input.nn").read_text())
    cu = core.elements.index("Cu")
    for n in nums:
        k = core.symmetry_function_source_lines(cu).index(n)
        assert f"SF {k + 1} (line {n} of input.nn" in msg
    # the ranges are nonzero: the previous zero-range test (1e-12 relative) passed them
    ranges = [float(x) for x in __import__("re").findall(r"range ([0-9.e+-]+) \(min", msg)]
    assert len(ranges) == 2 and all(1e-12 < r <= 1e-6 for r in ranges), ranges
    # a looser tolerance accepts them
    cfg["model"]["constant_sf_tol"] = 1e-13
    Trainer(cfg, structures=data).setup()


@needs_core
def test_near_constant_symmetry_functions_dropped_and_saved_potential_consistent(tmp_path):
    """model.constant_sf = "drop": the functions are removed before training, training stays
    finite, the written potential (native and n2p2) lacks them and reproduces the trainer."""
    from pyfragnn import FragNN, Potential
    from pyfragnn.training.trainer import Trainer
    data = emt_cells(30, seed=22)
    nums = _input_nn_with_tiny_sfs(tmp_path / "input.nn")
    cfg = base_config(tmp_path / "out", epochs=2)
    cfg["model"]["input_nn"] = str(tmp_path / "input.nn")
    cfg["model"]["constant_sf"] = "drop"
    tr = Trainer(cfg, structures=data)
    res = tr.run()
    cu = tr.elements.index("Cu")
    assert sorted(r["line"] for r in tr.dropped_sfs) == sorted(nums)
    assert {r["element"] for r in tr.dropped_sfs} == {"Cu"}
    assert tr.core.n_symmetry_functions(cu) == 6
    assert tr.core.n_symmetry_functions(1 - cu) == 6
    lines = tr.core.symmetry_function_lines(cu)
    assert not any(l.startswith(("Cu 9", "Cu 2 Ni 4 ")) for l in lines)
    gmin, gmax, _, _ = tr.core.get_scaling(cu)
    assert np.all(gmax - gmin > 1e-3)
    assert all(np.isfinite(r["rmse_E_train"]) and np.isfinite(r["rmse_F_train"])
               for r in res.history)
    assert res.history[-1]["rmse_E_train"] < res.history[0]["rmse_E_train"]
    out = tmp_path / "out"
    txt = (out / "dropped_symmetry_functions.txt").read_text().splitlines()
    assert len(txt) == 3 and all(l.startswith("Cu ") for l in txt[1:])
    n2p2_nn = (out / "n2p2" / "input.nn").read_text()
    assert n2p2_nn.count("symfunction_short") == 12
    assert "Cu 9" not in n2p2_nn
    calc = FragNN(str(out / "potential.fragnn"))
    n2p2 = Potential.load(str(out / "n2p2"))
    for i in range(0, len(data), 4):
        at = data[i].to_atoms()
        at.calc = calc
        assert at.get_potential_energy() == res.predictions["energy"][i]
        assert np.array_equal(at.get_forces(), res.predictions["forces"][i])
        r = n2p2.compute(data[i].positions, data[i].symbols, data[i].cell, data[i].pbc)
        assert r["energy"] == pytest.approx(res.predictions["energy"][i], rel=1e-12)
        assert np.allclose(r["forces"], res.predictions["forces"][i], rtol=0, atol=1e-10)
    # resume from the checkpoint of the reduced model works (same deterministic drop)
    cfg["training"]["epochs"] = 3
    res2 = Trainer(cfg, structures=data).run()
    assert len(res2.history) == 4 and res2.history[2] == res.history[2]


@needs_core
def test_decoupled_kalman_fading_memory_and_early_stopping(emt_data, tmp_path):
    """Element-decoupled filter with kalman_type 1 trains; early stopping keeps the best
    epoch's weights and stops after `patience` epochs without test improvement."""
    from pyfragnn.training.trainer import Trainer
    cfg = base_config(tmp_path / "dec", epochs=6)
    cfg["training"]["kalman"] = {"decoupled": True, "type": 1, "lambda": 0.98, "nu": 0.9987}
    cfg["training"]["early_stopping_patience"] = 1
    cfg["training"]["early_stopping_metric"] = "force"
    tr = Trainer(cfg, structures=emt_data[:100])
    res = tr.run()
    h = res.history
    best = min(h[1:], key=lambda r: r["rmse_F_test"])
    assert best["rmse_F_test"] < 0.3 * h[0]["rmse_F_test"]
    # stopped at most one epoch after the best one, and the final weights are the best ones
    assert h[-1]["epoch"] - best["epoch"] <= 1
    assert tr.errors()["rmse_F_test"] == pytest.approx(best["rmse_F_test"], rel=1e-12)


@needs_core
def test_fine_tuning_starts_from_the_potential_and_its_filter(emt_data, tmp_path):
    """model.init_from: epoch 0 of the new run predicts exactly what the loaded potential
    predicts (model, scaling, atom energies, weights taken over, also for new structures);
    training.kalman.init_state continues the filter (its update count carries over); a filter
    of the wrong size and init_from beside input_nn are errors."""
    from pyfragnn import Potential
    from pyfragnn.training.trainer import Trainer
    first = tmp_path / "first"
    Trainer(base_config(first, epochs=2), structures=emt_data[:80]).run()
    pot = Potential.load(str(first / "potential.fragnn"))
    cfg = base_config(tmp_path / "tuned", epochs=0)
    cfg["model"] = {"init_from": str(first / "potential.fragnn")}
    more = emt_data[:80] + emt_cells(20, seed=3)
    tr = Trainer(cfg, structures=more)
    res = tr.run()
    for i in (0, 5, 85, 99):
        s = more[i]
        r = pot.compute(s.positions, s.symbols, s.cell, s.pbc)
        assert res.predictions["energy"][i] == pytest.approx(r["energy"], rel=1e-12, abs=1e-12)
        assert np.allclose(res.predictions["forces"][i], r["forces"], rtol=1e-10, atol=1e-12)
    # continue training with the first run's filter: the update count carries over
    cfg = base_config(tmp_path / "cont", epochs=1)
    cfg["model"] = {"init_from": str(first / "potential.fragnn")}
    cfg["training"]["kalman"] = {"init_state": str(first / "checkpoint.npz")}
    tr = Trainer(cfg, structures=more)
    res = tr.run()
    from pyfragnn.training.checkpoint import load_state
    n0 = load_state(str(first / "checkpoint.npz"))["opt"]["n_updates"]
    n1 = load_state(str(tmp_path / "cont" / "checkpoint.npz"))["opt"]["n_updates"]
    assert n1 == n0 + res.history[-1]["updates"]
    assert res.history[-1]["rmse_F_train"] < 2 * res.history[0]["rmse_F_train"]
    # a filter from a model with another number of weights
    other = tmp_path / "other"
    c = base_config(other, epochs=1)
    c["model"]["hidden"] = [5, 5]
    Trainer(c, structures=emt_data[:20]).run()
    cfg = base_config(tmp_path / "bad", epochs=1)
    cfg["model"] = {"init_from": str(first / "potential.fragnn")}
    cfg["training"]["kalman"] = {"init_state": str(other / "checkpoint.npz")}
    with pytest.raises(ConfigError, match="init_state.*weights"):
        Trainer(cfg, structures=more).run()
    with pytest.raises(ConfigError, match="exclude"):
        normalise_config({"data": {"files": ["x"]},
                          "model": {"init_from": "a.fragnn", "input_nn": "input.nn"}})
    cfg["training"]["kalman"] = {}
    cfg["model"] = {"init_from": str(tmp_path / "missing.fragnn")}
    with pytest.raises(ConfigError, match="init_from.*missing"):
        Trainer(cfg, structures=more).run()


@needs_core
@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found")
def test_mpi_fine_tuning_equals_serial(emt_data, tmp_path):
    """model.init_from + training.kalman.init_state under mpirun -np 2 (rank 0 reads the
    filter, the covariance is scattered) gives the serial run's weights."""
    first = _write_run(tmp_path, emt_data[:60], "first", epochs=1)
    r = _cli(first)
    assert r.returncode == 0, r.stderr
    runs = []
    for name, mpi in (("serial", 0), ("mpi", 2)):
        d = _write_run(tmp_path, emt_data[:90], name, epochs=1)
        cfg = json.loads((d / "train.json").read_text())
        cfg["model"] = {"init_from": str(first / "out" / "potential.fragnn")}
        cfg["training"]["kalman"] = {"init_state": str(first / "out" / "checkpoint.npz")}
        (d / "train.json").write_text(json.dumps(cfg))
        r = _cli(d, mpi=mpi)
        assert r.returncode == 0, r.stdout + r.stderr
        runs.append(_weights(d / "out" / "potential.fragnn"))
    w0 = _weights(first / "out" / "potential.fragnn")
    assert not np.array_equal(runs[0], w0)
    assert np.max(np.abs(runs[0] - runs[1])) <= 1e-10 * np.max(np.abs(runs[0]))
    # an unreadable filter is an error on every rank: the run ends (no rank left waiting)
    d = _write_run(tmp_path, emt_data[:30], "bad", epochs=1)
    cfg = json.loads((d / "train.json").read_text())
    cfg["model"] = {"init_from": str(first / "out" / "potential.fragnn")}
    cfg["training"]["kalman"] = {"init_state": str(tmp_path / "missing.npz")}
    (d / "train.json").write_text(json.dumps(cfg))
    r = _cli(d, mpi=2)
    assert r.returncode == 2 and "init_state" in r.stderr, r.stdout + r.stderr

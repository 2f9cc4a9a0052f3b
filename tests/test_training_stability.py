"""EKF stability on GFN2-xTB fragments of IRMOF-1 (issue 14).

``data/irmof1_gfn2_fragments.extxyz``: 120 of the 288 small fragments (29-66 atoms, H C O Zn)
of the workflow demo at seed 3 (reference MD frames and R_c fragments of bulk snapshots,
GFN2-xTB energies and forces; positions and forces rounded to 1e-5). The committee partner of
that demo ([12, 8] tanh networks, force_fraction 0.015) oscillated with n2p2's ungated filter
(force RMSE per epoch 1.52, 0.86, 0.98, 1.07, 1.88, ...): single force updates with errors of
2-9 eV/Å that the (partly saturated) networks hardly respond to moved the weights by 10-40
(norm) each, the weight norm grew from 11 to 110 in four epochs. On this subset the ungated
filter (``kalman.max_innovation = 0``) gives the training force RMSE per epoch

    seed 1: 1.73 1.05 1.41 1.17 1.97 1.43 1.43
    seed 3: 1.72 1.48 1.17 1.35 1.45 1.29 1.14

and the gated default (0.5)

    seed 1: 1.73 1.05 1.10 0.89 0.92 0.67 0.60
    seed 3: 1.72 1.05 1.08 0.79 0.83 0.71 0.64

The trajectories depend on round-off (the BLAS build, the filter's summation order): with the
one-triangle BLAS filter of the workflow recipes, scipy 1.17 / OpenBLAS of 2026-12, seed 1 gave
1.73 1.05 1.10 0.99 0.91 0.79 0.76 with 102 of 1842 updates gated (row kernels: ... 0.75, 94),
so the limits below leave room for that spread while the ungated filter still fails them.
"""
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "irmof1_gfn2_fragments.extxyz")

try:
    from pyfragnn import _core  # noqa: F401
    HAVE_CORE = True
except ImportError:  # pragma: no cover
    HAVE_CORE = False


@pytest.mark.skipif(not HAVE_CORE, reason="compiled core not built")
@pytest.mark.parametrize("seed", [1, 3])
def test_ekf_on_gfn2_fragments_converges_without_oscillating(tmp_path, seed):
    from ase.io import read

    from pyfragnn.training.recipes import to_structures, train_hdnnp

    structures = to_structures(read(DATA, ":"))
    # the workflow's committee-partner run (pyfragnn/workflow/steps.py _train), 6 epochs
    res = train_hdnnp(structures, tmp_path / "out", 4.0, 6, hidden=(12, 8), radial_n=5,
                      r_min=0.8, angular_zeta=(1.0, 4.0), test_fraction=0.1, seed=seed,
                      progress=False, elements=["H", "C", "O", "Zn"],
                      extra_training={"force_fraction": 0.015})
    f = np.array([h["rmse_F_train"] for h in res.history])
    e = np.array([h["rmse_E_train"] for h in res.history])
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(e))
    # no epoch undoes the progress made so far (ungated: +34 % and +90 % jumps)
    for k in range(2, f.size):
        assert f[k] <= 1.15 * f[1:k].min(), f"force RMSE rose to {f[k]:.3f} in epoch {k}: {f}"
    # and it gets somewhere (ungated: 1.43 and 1.14 eV/Å after 6 epochs)
    assert f[-1] < 0.9, f
    assert e[-1] < e[0]
    # the gate acted, and only on a small share of the updates
    gated = sum(h["gated_updates"] for h in res.history[1:])
    updates = sum(h["updates"] for h in res.history[1:])
    assert 0 < gated < 0.08 * updates

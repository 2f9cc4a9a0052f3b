"""The exactly local control of issue 6 (Herbold & Behler 2023, section 2, with an EMT teacher).

ASE's EMT is exactly local: an atom's energy depends only on neighbours within
``EMT().rc_list`` (5.88 Å for Cu), so a force depends on atoms within twice that. An HDNNP with
ACSF cutoff r_t = rc_list can represent EMT exactly. The claim tested: trained on *small*
fragments (spheres of radius r_t, whose reference forces are far from bulk forces), it reproduces
the forces of a periodic bulk cell it never saw about as well as the same HDNNP trained on
*large* fragments of radius 2·r_t, whose central forces are bulk-exact.

Data: distorted fcc Cu cells (strain ≤ 2 %, rattle σ = 0.1 Å), non-capped spherical clusters:
144 small ones (~76 atoms, 10.9k atoms in all) against 8 large ones (~600 atoms, 4.8k in all).
For a reference method scaling as N³ the small set costs ~1/40 of the large one. In a small
cluster only the centre atom has a bulk-complete r_t sphere (asserted below): the network has to
learn bulk atomic energies from the centres alone. Same network, ACSFs, optimiser, epochs, seed.

Bars, and why:
* HDNNP(r_t) bulk force RMSE ≤ 1.25 × HDNNP(2·r_t) bulk force RMSE: "about as well" with room
  for the run-to-run noise of a 20-epoch EKF fit (±15 % observed when only the random centres
  change; observed ratio 0.99 in development);
* both ≤ 0.1 × the standard deviation of the bulk force components (1.16 eV/Å): both learned.

Observed, not asserted: EMT's effective range is much shorter than rc_list; the centre force of
a small cluster deviates from bulk by only ~1e-3 eV/Å (printed), so this control shows that
bulk forces are learned from clusters whose other 75 atoms have truncated environments, not
that labels far from bulk are repaired (the GFN2-xTB demo, where the small-fragment centre
forces deviate by up to 0.45 eV/Å, is the test of that).
Runs in about 15-30 s on 2 cores.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pyfragnn._core")


def _clusters(snaps, radius, r_c, n_per, rng):
    from ase.calculators.emt import EMT

    from pyfragnn.fragments import FragmentCutter

    out = []
    for k, s in enumerate(snaps):
        cutter = FragmentCutter(s, site_labels=s.get_chemical_symbols())
        for c in rng.choice(len(s), n_per, replace=False):
            f = cutter.cut(int(c), radius, r_c=r_c, cap=False)
            f.calc = EMT()
            f.get_forces()
            f.info["label"] = f"R{radius:g}"
            f.info["centre"] = int(c)
            f.info["snapshot"] = k
            out.append(f)
    return out


def test_small_fragments_give_bulk_forces_as_well_as_large(tmp_path):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from pyfragnn.sampling import distorted_snapshots
    from pyfragnn.training.recipes import to_structures, train_hdnnp

    t0 = time.perf_counter()
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    calc = EMT()
    cu.calc = calc
    cu.get_potential_energy()
    r_t = float(np.ceil(calc.rc_list * 10) / 10)          # 5.9 Å: EMT's full range
    snaps = distorted_snapshots(cu, 8, rattle=0.1, strain=0.02, seed=5)
    rng = np.random.default_rng(0)
    small = _clusters(snaps, r_t, r_t, 18, rng)
    n_central = np.mean([f.info["n_central"] for f in small])
    assert n_central <= 2, f"small clusters have {n_central:.1f} bulk-complete atoms"
    large = _clusters(snaps, 2 * r_t, r_t, 1, rng)

    # held-out periodic bulk (a different, larger cell and other random numbers)
    test = distorted_snapshots(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4)), 2,
                               rattle=0.1, strain=0.02, seed=77)
    for a in test:
        a.calc = EMT()
        a.get_forces()
    F_bulk = np.array([a.get_forces() for a in test])

    # how far the small fragments' reference forces are from bulk (at their centres)
    for s in snaps:
        s.calc = EMT()
    dev = [f.get_forces()[0] - snaps[f.info["snapshot"]].get_forces()[f.info["centre"]]
           for f in small]
    ref_dev = float(np.sqrt(np.mean(np.square(dev))))

    rmse = {}
    for name, data in (("small", small), ("large", large)):
        res = train_hdnnp(to_structures(data), tmp_path / name, r_t, 20, hidden=(8, 8),
                          radial_n=6, r_min=2.0, angular_zeta=(1.0, 4.0), test_fraction=0.0,
                          seed=1, progress=False,
                          extra_training={"force_fraction": 0.02, "force_weight": 1.0})
        pot = res.potential
        dF = [pot.compute(a.positions, a.get_chemical_symbols(), a.cell.array, a.pbc,
                          virial=False)["forces"] - a.get_forces() for a in test]
        rmse[name] = float(np.sqrt(np.mean(np.square(dF))))
    msg = (f"r_t = {r_t} Å; bulk force RMSE: HDNNP(small, {np.mean([len(f) for f in small]):.0f}"
           f" atoms) {rmse['small']:.4f}, HDNNP(large, {np.mean([len(f) for f in large]):.0f} "
           f"atoms) {rmse['large']:.4f} eV/Å, ratio {rmse['small'] / rmse['large']:.2f}; bulk "
           f"force std {F_bulk.std():.3f}; small-fragment reference deviation at the centre "
           f"{ref_dev:.2e} eV/Å; {time.perf_counter() - t0:.0f} s")
    print(msg)
    assert rmse["small"] <= 1.25 * rmse["large"], msg
    assert max(rmse.values()) <= 0.1 * F_bulk.std(), msg

"""Shared fixtures: location of ../shared, n2p2 file readers for tests, synthetic potentials."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

try:
    import pyfragnn._core  # noqa: F401
except ImportError as err:  # the source tree shadows the installed package, or no build
    raise pytest.UsageError(
        f"pyfragnn's compiled core is not importable ({err}). Install with `pip install .` "
        "and run `pytest tests` (not `python -m pytest`, which puts the unbuilt source tree "
        "first on sys.path), or build in place with `python setup.py build_ext --inplace`."
    ) from err

SHARED = Path(__file__).resolve().parents[2] / "shared"
# n2p2's example potentials with n2p2's own results, vendored so that the correctness tests
# run in any clone (tests/data/n2p2/README.md says where they come from).
N2P2 = Path(__file__).resolve().parent / "data" / "n2p2"
# CI sets this so that a core test that would skip for want of its data fails instead.
REQUIRE_DATA = os.environ.get("PYFRAGNN_REQUIRE_TEST_DATA", "") not in ("", "0")


def package_env(**extra: str) -> dict:
    """Environment for subprocesses that import pyfragnn: the package this test process
    imported (installed, or built in place) comes first on PYTHONPATH. Run such subprocesses
    with cwd outside the checkout, so that the unbuilt source tree cannot shadow it."""
    import pyfragnn

    env = dict(os.environ, **extra)
    parent = str(Path(pyfragnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH", "")) if p)
    return env


def require_shared(path: Path) -> Path:
    """Skip the test when its data file is missing; fail instead when
    PYFRAGNN_REQUIRE_TEST_DATA is set (CI), so that a core test cannot pass by skipping."""
    if not path.exists():
        msg = f"test data not available: {path}"
        if REQUIRE_DATA:
            pytest.fail(msg + " (PYFRAGNN_REQUIRE_TEST_DATA is set)")
        pytest.skip(msg)
    return path


def read_n2p2_structure(path: Path):
    """First structure of an n2p2 input.data: (positions (n,3), symbols, lattice (3,3) or None)."""
    pos, sym, lat = [], [], []
    for line in Path(path).read_text().splitlines():
        t = line.split()
        if not t:
            continue
        if t[0] == "lattice":
            lat.append([float(x) for x in t[1:4]])
        elif t[0] == "atom":
            pos.append([float(x) for x in t[1:4]])
            sym.append(t[4])
        elif t[0] == "end":
            break
    return np.array(pos), sym, (np.array(lat) if lat else None)


def emt_force_rmse(potential, frames) -> float:
    """Force-component RMSE (eV/Å) of a potential (path or name) against EMT on ``frames``."""
    from ase.calculators.emt import EMT

    from pyfragnn import Potential

    p = Potential.load(str(potential))
    d = []
    for f in frames:
        g = f.copy()
        g.calc = EMT()
        r = p.compute(f.positions, f.get_chemical_symbols(), f.cell.array, f.pbc)
        d.append((r["forces"] - g.get_forces()).ravel())
    return float(np.sqrt(np.mean(np.concatenate(d) ** 2)))


def read_reference(path: Path) -> dict:
    """Parse an n2p2 reference.txt (see tests/data/n2p2/README.md)."""
    out = {"energies": [], "forces": [], "sf": {}}
    atom = None
    for line in Path(path).read_text().splitlines():
        t = line.split()
        if not t or t[0].startswith("#"):
            continue
        if t[0] == "total_energy":
            out["energy"] = float(t[1])
        elif t[0] == "atom":
            out["energies"].append(float(t[3]))
            out["forces"].append([float(x) for x in t[4:7]])
        elif t[0] == "sfatom":
            atom = int(t[1]) - 1
            out["sf"][atom] = {}
        elif t[0] == "sf":
            out["sf"][atom][int(t[1]) - 1] = (float(t[2]), float(t[3]), line.split("|")[1].strip())
    out["energies"] = np.array(out["energies"])
    out["forces"] = np.array(out["forces"])
    return out


# A potential with every supported symmetry-function type, for finite-difference tests.
SYNTHETIC_SF = """\
symfunction_short H 2 H 0.5 0.0 {rc}
symfunction_short H 2 O 0.3 1.0 {rc}
symfunction_short O 2 H 0.5 0.8 {rc}
symfunction_short O 2 O 0.2 0.0 {rc}
symfunction_short H 3 H O 0.1 1 2 {rc}
symfunction_short H 3 O O 0.1 -1 1 {rc}
symfunction_short O 3 H H 0.05 1 4 {rc} 0.5
symfunction_short O 3 H O 0.05 -1 2.5 {rc}
symfunction_short O 9 H O 0.1 -1 2 {rc}
symfunction_short H 9 H H 0.1 1 1 {rc}
symfunction_short H 12 0.3 0.5 {rc}
symfunction_short O 13 0.1 0.0 1 2 {rc}
symfunction_short H 20 O -{rc} {rc} p2
symfunction_short O 20 H 0.5 {rc} p3
symfunction_short O 20 O 0.0 {rc} p2a
symfunction_short O 21 H O -{rc} {rc} 30 150 p2
symfunction_short H 22 O H -{rc} {rc} 0 180 p2
symfunction_short H 22 H H -{rc} {rc} 45 135 p4
"""


def synthetic_input_nn(rc: float = 4.0, cutoff_type: int = 6, alpha: float = 0.0,
                       activations: str = "t p l", nodes: str = "6 5",
                       scaling: str = "scale_symmetry_functions\ncenter_symmetry_functions",
                       extra: str = "") -> str:
    n_hidden = len(nodes.split())
    return (f"number_of_elements 2\nelements O H\ncutoff_type {cutoff_type} {alpha}\n{scaling}\n"
            f"global_hidden_layers_short {n_hidden}\nglobal_nodes_short {nodes}\n"
            f"global_activation_short {activations}\n{extra}\n"
            + SYNTHETIC_SF.format(rc=rc))


def water_like(n_mol: int = 6, box: float = 6.0, seed: int = 1):
    """Random H/O structure (positions (n,3) Å, symbols) with no pair closer than 0.8 Å."""
    rng = np.random.default_rng(seed)
    pos, sym = [], []
    while len(pos) < 3 * n_mol:
        o = rng.uniform(0, box, 3)
        mol = [o, o + [0.96, 0, 0], o + [-0.24, 0.93, 0]]
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        mol = [o + rot @ (m - o) for m in mol]
        if all(np.linalg.norm(m - p) > 1.5 for m in mol for p in pos):
            pos.extend(mol)
            sym.extend(["O", "H", "H"])
    return np.array(pos), sym


def make_synthetic_potential(seed: int = 0, **kw):
    """A Potential with random weights and scaling fitted to a random structure."""
    from pyfragnn._core import CoreModel, neighbor_list
    from pyfragnn.potential import Potential

    core = CoreModel.from_text(synthetic_input_nn(**kw))
    pos, sym = water_like(8, 7.0, seed=seed + 11)
    elem = core.element_indices(sym)
    off, idx, d = neighbor_list(pos, np.eye(3) * 7.0, [True] * 3, core.cutoff)
    gs = {e: [] for e in range(2)}
    for i in range(len(pos)):
        sl = slice(off[i], off[i + 1])
        gs[elem[i]].append(core.symmetry_functions(int(elem[i]), d[sl], elem[idx[sl]]))
    rng = np.random.default_rng(seed)
    for e in range(2):
        g = np.array(gs[e])
        lo, hi = g.min(axis=0), g.max(axis=0)
        hi = np.where(hi > lo, hi, lo + 1.0)
        core.set_scaling(e, lo, hi, g.mean(axis=0), g.std(axis=0) + 0.1)
        n = len(core.get_parameters(e))
        core.set_parameters(e, rng.normal(0.0, 0.5, n))
    return Potential(core)

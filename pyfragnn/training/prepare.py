"""Preparation: reference energies, symmetry-function statistics and SF-set generators.

SF statistics reject (near-)constant functions, max - min <= tol * max(1, |max|, |min|) with
tol = :data:`CONSTANT_SF_TOL` = 1e-6 by default (:func:`near_constant_functions`): scaling
divides by that range, so a tiny nonzero range (e.g. 1e-8 for a Zn-H-H angular function within
4 Å) would make every new environment extrapolate wildly. The trainer either stops with a
message naming them or drops them (config ``model.constant_sf``).

SF generators return ``symfunction_short`` lines (without the keyword) for input.nn:

- :func:`radial_functions` type 2. ``mode="shifted"``: ``n`` Gaussians with centres r_s evenly
  spaced from ``r_min`` to ``rc - spacing`` and width eta = 1/(2 spacing^2) (neighbouring
  Gaussians cross at half height-ish, covering the range evenly); ``mode="centred"``: r_s = 0 and
  eta_k = 1/(2 r_k^2) for r_k evenly spaced from ``r_min`` to ``rc``, i.e. Gaussians of
  decreasing width all centred on the atom (the n2p2/``gen-symfunc`` grids).
- :func:`angular_functions` type 9 (or 3) for every unordered neighbour pair, all combinations of
  eta, zeta and lambda.

Pruning: ``drop_pairs`` removes central-neighbour pairs (both directions, e.g.
``[("Zn", "H"), ("H", "H")]``); for angular functions a pair is dropped if the central element
is paired with a dropped neighbour in either leg. ``pair_cutoffs`` caps rc for a pair.
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["reference_energies", "sf_statistics", "ConstantSymmetryFunctionError",
           "CONSTANT_SF_TOL", "near_constant_functions", "describe_constant_functions",
           "radial_functions", "angular_functions", "make_input_nn", "glorot_weights"]


class ConstantSymmetryFunctionError(ValueError):
    """A symmetry function takes the same value on every training atom of its element."""


def reference_energies(counts: np.ndarray, energies: np.ndarray,
                       weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-element reference energies by (weighted) least squares: E_s ~ sum_e n_se * eps_e.

    counts [n_structures, n_elements], energies [n_structures]. Elements that never occur get 0.
    Rank-deficient systems (e.g. one fixed stoichiometry) give the minimum-norm solution.
    """
    A = np.asarray(counts, dtype=float)
    b = np.asarray(energies, dtype=float)
    if weights is not None:
        sw = np.sqrt(np.asarray(weights, dtype=float))
        A = A * sw[:, None]
        b = b * sw
    present = A.sum(axis=0) > 0
    eps = np.zeros(A.shape[1])
    if present.any():
        sol, *_ = np.linalg.lstsq(A[:, present], b, rcond=None)
        eps[present] = sol
    return eps


#: Default relative tolerance of the (near-)constant check, see :func:`near_constant_functions`.
CONSTANT_SF_TOL = 1e-6


def near_constant_functions(gmin: np.ndarray, gmax: np.ndarray,
                            tol: float = CONSTANT_SF_TOL) -> np.ndarray:
    """Indices of (near-)constant symmetry functions: max - min <= tol * max(1, |max|, |min|)
    (or a non-finite range).

    Scaling maps [min, max] to [scale_min, scale_max], i.e. divides by max - min. A range of
    zero gives NaN; a tiny nonzero range (e.g. 1e-8 for a Zn-H-H angular function that only
    sees the tails of its Gaussians) passes a zero test but turns any new environment into an
    input of order 1e6 and can blow up training. ``tol`` is relative to the magnitude of the
    values, with an absolute floor of ``tol`` for values below 1.
    """
    gmin = np.asarray(gmin, dtype=float)
    gmax = np.asarray(gmax, dtype=float)
    rng = gmax - gmin
    scale = np.maximum(1.0, np.maximum(np.abs(gmax), np.abs(gmin)))
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(~(rng > tol * scale))


def sf_statistics(G: np.ndarray, element: str, lines: Optional[Sequence[str]] = None,
                  tol: float = CONSTANT_SF_TOL
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(min, max, mean, sigma) over rows of G [n_atoms, n_sf] of one element.

    Raises ConstantSymmetryFunctionError naming every (near-)constant function (see
    :func:`near_constant_functions`; n2p2 scaling would divide by (almost) zero).
    """
    G = np.asarray(G, dtype=float)
    if G.ndim != 2 or G.shape[0] == 0:
        raise ConstantSymmetryFunctionError(
            f"element {element}: no atoms in the training set, cannot compute SF statistics")
    return finish_statistics(element, G.shape[0], G.min(axis=0), G.max(axis=0), G.sum(axis=0),
                             ((G - G.sum(axis=0) / G.shape[0]) ** 2).sum(axis=0), lines, tol)


def describe_constant_functions(element: str, count: int, bad: Sequence[int], gmin, gmax,
                                lines: Optional[Sequence[str]] = None,
                                line_numbers: Optional[Sequence[int]] = None,
                                source: str = "input.nn", tol: float = CONSTANT_SF_TOL,
                                hint: bool = True) -> str:
    """Message naming the element, each function's index (1-based, n2p2 sorted order as in
    scaling.data), its line in input.nn and its range."""
    desc = []
    for s in list(bad)[:20]:
        where = []
        if line_numbers is not None and s < len(line_numbers) and line_numbers[s]:
            where.append(f"line {line_numbers[s]} of {source}")
        if lines is not None and s < len(lines):
            where.append(str(lines[s]))
        txt = f" ({': '.join(where)})" if where else ""
        if gmax[s] == gmin[s]:
            val = f"constant value {gmin[s]:.6g}"
        else:
            val = (f"range {gmax[s] - gmin[s]:.3g} (min {gmin[s]:.10g}, max {gmax[s]:.10g})")
        desc.append(f"  SF {s + 1}{txt}: {val}")
    if len(bad) > 20:
        desc.append(f"  ... and {len(bad) - 20} more")
    msg = (f"element {element}: {len(bad)} symmetry function(s) are (nearly) constant over the "
           f"{count} training atoms of {element} (max - min <= {tol:g} * max(1, |max|, |min|)); "
           "the scaling divides by that range, so any new environment would extrapolate "
           "wildly (or give NaN):\n" + "\n".join(desc))
    if hint:
        msg += ("\nHint: set model.constant_sf = \"drop\" in the training config to remove "
                "them automatically (the saved input.nn/potential then lacks them), remove "
                "them from input.nn or prune them with model.drop_pairs / model.pair_cutoffs, "
                "or add training structures in which they vary; model.constant_sf_tol sets "
                "the tolerance.")
    return msg


def finish_statistics(element, count, gmin, gmax, gsum, gssq, lines=None,
                      tol: float = CONSTANT_SF_TOL, line_numbers=None, source="input.nn"):
    """(min, max, mean, sigma) from accumulated sums; raises ConstantSymmetryFunctionError for
    (near-)constant functions (:func:`near_constant_functions`)."""
    mean = gsum / count
    sigma = np.sqrt(gssq / max(count - 1, 1))
    bad = near_constant_functions(gmin, gmax, tol)
    if bad.size:
        raise ConstantSymmetryFunctionError(describe_constant_functions(
            element, count, bad, gmin, gmax, lines, line_numbers, source, tol))
    return gmin, gmax, mean, sigma


def _pair_ok(a: str, b: str, drop: set) -> bool:
    return (a, b) not in drop and (b, a) not in drop


def _rc(a: str, b: str, rc: float, caps: Dict[Tuple[str, str], float]) -> float:
    return min(rc, caps.get((a, b), rc), caps.get((b, a), rc))


def radial_functions(elements: Sequence[str], rc: float, n: int = 6, r_min: float = 1.0,
                     mode: str = "shifted", drop_pairs: Iterable[Tuple[str, str]] = (),
                     pair_cutoffs: Optional[Dict[Tuple[str, str], float]] = None) -> List[str]:
    if n < 1:
        raise ValueError("radial: n must be >= 1")
    if not 0 < r_min < rc:
        raise ValueError(f"radial: need 0 < r_min < rc, got r_min={r_min}, rc={rc}")
    drop = set(tuple(p) for p in drop_pairs)
    caps = {tuple(k): float(v) for k, v in (pair_cutoffs or {}).items()}
    out = []
    for ec in elements:
        for e1 in elements:
            if not _pair_ok(ec, e1, drop):
                continue
            rcp = _rc(ec, e1, rc, caps)
            if mode == "shifted":
                dr = (rcp - r_min) / n
                for k in range(n):
                    rs = r_min + k * dr
                    out.append(f"{ec} 2 {e1} {1.0 / (2 * dr * dr):.10g} {rs:.10g} {rcp:.10g}")
            elif mode == "centred":
                rk = np.linspace(r_min, rcp, n) if n > 1 else np.array([rcp])
                for r in rk:
                    out.append(f"{ec} 2 {e1} {1.0 / (2 * r * r):.10g} 0 {rcp:.10g}")
            else:
                raise ValueError(f"radial mode must be 'shifted' or 'centred', got {mode!r}")
    return out


def angular_functions(elements: Sequence[str], rc: float, etas: Sequence[float] = (0.02,),
                      zetas: Sequence[float] = (1, 4), lambdas: Sequence[float] = (-1, 1),
                      sf_type: int = 9, drop_pairs: Iterable[Tuple[str, str]] = (),
                      pair_cutoffs: Optional[Dict[Tuple[str, str], float]] = None) -> List[str]:
    if sf_type not in (3, 9):
        raise ValueError("angular type must be 3 or 9")
    drop = set(tuple(p) for p in drop_pairs)
    caps = {tuple(k): float(v) for k, v in (pair_cutoffs or {}).items()}
    out = []
    for ec in elements:
        for e1, e2 in itertools.combinations_with_replacement(elements, 2):
            if not (_pair_ok(ec, e1, drop) and _pair_ok(ec, e2, drop)):
                continue
            rcp = min(_rc(ec, e1, rc, caps), _rc(ec, e2, rc, caps))
            for eta in etas:
                for zeta in zetas:
                    for lam in lambdas:
                        out.append(f"{ec} {sf_type} {e1} {e2} {eta:.10g} {lam:g} {zeta:.10g} "
                                   f"{rcp:.10g}")
    return out


def make_input_nn(elements: Sequence[str], sf_lines: Sequence[str],
                  hidden: Sequence[int] = (15, 15), activations: Sequence[str] = ("t", "t", "l"),
                  cutoff_type: int = 6, cutoff_alpha: float = 0.0,
                  scaling: str = "scalecenter", normalize_nodes: bool = False) -> str:
    if len(activations) != len(hidden) + 1:
        raise ValueError(f"need {len(hidden) + 1} activations (hidden layers + output), "
                         f"got {len(activations)}")
    lines = [f"number_of_elements {len(elements)}", "elements " + " ".join(elements),
             f"cutoff_type {cutoff_type} {cutoff_alpha:g}"]
    flags = {"none": [], "scale": ["scale_symmetry_functions"],
             "center": ["center_symmetry_functions"],
             "scalecenter": ["scale_symmetry_functions", "center_symmetry_functions"],
             "sigma": ["scale_symmetry_functions_sigma"]}
    if scaling not in flags:
        raise ValueError(f"scaling must be one of {', '.join(flags)}, got {scaling!r}")
    lines += flags[scaling]
    lines += ["scale_min_short 0.0", "scale_max_short 1.0",
              f"global_hidden_layers_short {len(hidden)}",
              "global_nodes_short " + " ".join(str(int(h)) for h in hidden),
              "global_activation_short " + " ".join(activations)]
    if normalize_nodes:
        lines.append("normalize_nodes")
    lines += [f"symfunction_short {s}" for s in sf_lines]
    return "\n".join(lines) + "\n"


def glorot_weights(layers: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Parameters in n2p2 layout: per layer W^T (n_in x n_out) uniform in
    +-sqrt(6/(n_in+n_out)) (Glorot & Bengio; keeps tanh units near their linear range for
    inputs scaled to ~[-1, 1]), then zero biases."""
    parts = []
    for nin, nout in zip(layers[:-1], layers[1:]):
        lim = np.sqrt(6.0 / (nin + nout))
        parts.append(rng.uniform(-lim, lim, size=nin * nout))
        parts.append(np.zeros(nout))
    return np.concatenate(parts)

"""Reference outliers: labelled structures to leave out of training, by a stated rule.

A structure is an outlier if

* **force**: any atomic force has ``|F| > max_force`` (eV/Å; default 20 eV/Å, several times
  the largest force of thermal fragments at a few hundred K); or
* **energy**: its energy per atom ``e = E / N`` lies far from the median of its *composition
  group* (structures with the same element counts, e.g. one fragment type and radius):
  ``|e - median| > max(max_energy_dev_per_atom, n_mad * 1.4826 * MAD)`` with
  ``MAD = median(|e - median|)`` (1.4826 MAD estimates the standard deviation of normal data
  and is not inflated by the outliers themselves). Defaults: 0.2 eV/atom, ``n_mad = 8``.
  Groups with fewer than ``min_group`` (3) structures have no robust median and are checked
  for forces only.

Non-finite energies or forces are always outliers. :func:`outliers` reports; the caller leaves
the structures out and counts them (:func:`split_outliers`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from ase import Atoms

__all__ = ["Outlier", "outliers", "split_outliers", "MAX_FORCE", "MAX_ENERGY_DEV_PER_ATOM"]

MAX_FORCE = 20.0               # eV/Å
MAX_ENERGY_DEV_PER_ATOM = 0.2  # eV/atom, floor of the energy rule
N_MAD = 8.0


@dataclass(frozen=True)
class Outlier:
    """Structure ``index`` breaks the rule ``reason`` ('force', 'energy' or 'non-finite'):
    ``value`` vs ``limit`` (eV/Å for forces, eV/atom deviation from ``median`` for energies);
    ``group`` is its composition (e.g. 'C8H6O4Zn4')."""

    index: int
    reason: str
    value: float
    limit: float
    group: str
    median: float = float("nan")

    def __str__(self) -> str:
        unit = "eV/Å" if self.reason == "force" else "eV/atom"
        return (f"structure {self.index} ({self.group}): {self.reason} {self.value:.4g} {unit} "
                f"> {self.limit:.4g} {unit}")


def _energy_forces(a: Atoms, index: int) -> Tuple[float, np.ndarray]:
    if a.calc is not None and "energy" in getattr(a.calc, "results", {}):
        e, f = a.calc.results["energy"], a.calc.results.get("forces")
    else:
        e, f = a.info.get("energy"), a.arrays.get("forces")
    if e is None or f is None:
        raise ValueError(f"outliers: structure {index} has no energy and forces")
    return float(e), np.asarray(f, float)


def _group(a: Atoms) -> str:
    return "".join(f"{el}{n}" for el, n in sorted(Counter(a.get_chemical_symbols()).items()))


def outliers(frames: Sequence[Atoms], max_force: float = MAX_FORCE,
             max_energy_dev_per_atom: float = MAX_ENERGY_DEV_PER_ATOM, n_mad: float = N_MAD,
             min_group: int = 3) -> List[Outlier]:
    """Outliers among labelled ``frames`` (energy in eV, forces in eV/Å from the attached
    calculator or ``info['energy']``/``arrays['forces']``) by the rule in the module docstring,
    in input order (a structure breaking both rules is listed twice)."""
    found: List[Outlier] = []
    groups: Dict[str, List[Tuple[int, float]]] = {}
    for k, a in enumerate(frames):
        e, f = _energy_forces(a, k)
        g = _group(a)
        if not (np.isfinite(e) and np.all(np.isfinite(f))):
            found.append(Outlier(k, "non-finite", float("nan"), float("nan"), g))
            continue
        fmax = float(np.max(np.linalg.norm(f, axis=1))) if len(f) else 0.0
        if fmax > max_force:
            found.append(Outlier(k, "force", fmax, float(max_force), g))
        groups.setdefault(g, []).append((k, e / max(len(a), 1)))
    for g, members in groups.items():
        if len(members) < min_group:
            continue
        e = np.array([x for _, x in members])
        med = float(np.median(e))
        mad = float(np.median(np.abs(e - med)))
        limit = max(float(max_energy_dev_per_atom), n_mad * 1.4826 * mad)
        for (k, x) in members:
            if abs(x - med) > limit:
                found.append(Outlier(k, "energy", abs(x - med), limit, g, med))
    return sorted(found, key=lambda o: (o.index, o.reason))


def split_outliers(frames: Sequence[Atoms], **rule) -> Tuple[List[Atoms], List[Outlier]]:
    """``(kept frames, outliers)`` with :func:`outliers` (``rule``: its keyword arguments)."""
    bad = outliers(frames, **rule)
    drop = {o.index for o in bad}
    return [a for k, a in enumerate(frames) if k not in drop], bad

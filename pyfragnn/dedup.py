"""De-duplication of fragments: each distinct molecule once, with every centre and site it serves.

The common case is the *same cut* reached from several centres of one snapshot (a small
fragment of IRMOF-1 serves 3-4 centres on average): same parent snapshot
(``info['frag_parent']``), same ``frag_rc``, same bulk atoms (``arrays['bulk_index']``) up to one
lattice translation (``arrays['image']``) at the same relative positions, same caps; detected
exactly. :func:`same_geometry` decides the general case (any two molecules, up to a
permutation of like atoms and a proper rigid motion).

``unique_fragments`` records on the kept copy ``info['centres']`` and ``info['sites']`` (one
entry per source, each ending in ';' so that extxyz keeps them strings: ``"12;40+3;"``,
``"O2;O2;"``) and ``info['n_sources']``; :func:`fragment_sources` reads them back.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms

__all__ = ["unique_fragments", "fragment_sources", "same_geometry"]

_SEP = ";"  # separator of info['centres'] / info['sites'] entries; every entry ends with it


def _cut_key(frag: Atoms) -> Optional[tuple]:
    """Identity of a cut: parent snapshot, r_c, real atoms as (bulk index, image relative to a
    reference atom) with their positions relative to it, and the cap positions (1e-4 Å).
    Invariant under reordering and lattice translation; None without bookkeeping."""
    if "frag_parent" not in frag.info or not all(k in frag.arrays for k in ("bulk_index", "image", "cap")):
        return None
    cap = np.asarray(frag.arrays["cap"], bool)
    real = np.nonzero(~cap)[0]
    if not len(real):
        return None
    bi = np.asarray(frag.arrays["bulk_index"], int)
    im = np.asarray(frag.arrays["image"], int)
    order = sorted(real.tolist(), key=lambda k: (bi[k], tuple(im[k])))
    ref = order[0]
    rel = np.round(frag.positions - frag.positions[ref], 4) + 0.0  # + 0.0: no negative zeros
    atoms = tuple((int(bi[k]), tuple((im[k] - im[ref]).tolist()), tuple(rel[k].tolist()))
                  for k in order)
    caps = tuple(sorted(map(tuple, rel[cap].tolist())))
    return (str(frag.info["frag_parent"]), round(float(frag.info.get("frag_rc", 0.0)), 6), atoms, caps)


def _kabsch(p: np.ndarray, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Proper rotation ``rot`` and translation ``t`` with ``p @ rot + t`` closest to ``q``."""
    pc, qc = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
    dsign = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ np.diag([1.0, 1.0, dsign]) @ vt
    return rot, qc - pc @ rot


def same_geometry(a: Atoms, b: Atoms, tol: float = 1e-3) -> bool:
    """True if ``b`` is ``a`` up to a permutation of like atoms and a proper rigid motion
    (RMSD <= ``tol`` Å after the best alignment; mirror images are different).

    Three non-collinear anchor atoms of ``a`` are tried against every atom triple of ``b`` with
    the same elements, distance fingerprints and mutual distances (within ``10 tol``); each
    candidate alignment is completed by optimal assignment of like atoms.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist, pdist, squareform

    if len(a) != len(b) or sorted(a.numbers.tolist()) != sorted(b.numbers.tolist()):
        return False
    if len(a) < 3:
        return bool(len(a) < 2 or abs(a.get_distance(0, 1) - b.get_distance(0, 1)) <= tol)
    loose = 10 * tol
    da, db = squareform(pdist(a.positions)), squareform(pdist(b.positions))
    if np.max(np.abs(np.sort(da.ravel()) - np.sort(db.ravel()))) > loose:
        return False
    fa, fb = np.sort(da, axis=1), np.sort(db, axis=1)
    cand = [np.nonzero((b.numbers == a.numbers[i]) &
                       (np.max(np.abs(fb - fa[i]), axis=1) <= loose))[0] for i in range(len(a))]
    i0 = int(np.argmin([len(c) for c in cand]))
    i1 = int(np.argmax(da[i0]))
    line = (a.positions[i1] - a.positions[i0]) / da[i0, i1]
    off = a.positions - a.positions[i0]
    i2 = int(np.argmax(np.linalg.norm(off - np.outer(off @ line, line), axis=1)))
    anchors = [i0, i1, i2]
    elements = [(np.nonzero(a.numbers == z)[0], np.nonzero(b.numbers == z)[0])
                for z in np.unique(a.numbers)]
    for j0 in cand[i0]:
        for j1 in cand[i1]:
            if abs(db[j0, j1] - da[i0, i1]) > loose:
                continue
            for j2 in cand[i2]:
                if abs(db[j0, j2] - da[i0, i2]) > loose or abs(db[j1, j2] - da[i1, i2]) > loose:
                    continue
                rot, t = _kabsch(a.positions[anchors], b.positions[[j0, j1, j2]])
                moved = a.positions @ rot + t
                sq = 0.0
                for ia, ib in elements:
                    cost = cdist(moved[ia], b.positions[ib], "sqeuclidean")
                    r, c = linear_sum_assignment(cost)
                    sq += float(cost[r, c].sum())
                if np.sqrt(sq / len(a)) <= tol:
                    return True
    return False


def unique_fragments(frags: Sequence[Atoms], geometric: bool = False,
                     tol: float = 1e-3) -> List[Atoms]:
    """Each distinct fragment once, in order of first appearance, with every source recorded.

    Identity: the same cut (same parent snapshot ``frag_parent``, same ``frag_rc``, same bulk
    atoms up to one lattice translation at the same relative positions, same caps; 1e-4 Å),
    detected exactly; with ``geometric=True``
    also fragments that :func:`same_geometry` finds equal within ``tol`` (Å), e.g. from other
    snapshots or without bookkeeping. The kept copy gets ``info['centres']`` (each source's
    centres joined by '+') and ``info['sites']`` (each source's ``frag_type``), entries
    terminated by ';' so that they stay strings in extxyz (read with :func:`fragment_sources`),
    and ``info['n_sources']``.
    """
    kept: List[Atoms] = []
    by_key: Dict[tuple, int] = {}
    for f in frags:
        key = _cut_key(f)
        hit = by_key.get(key) if key is not None else None
        if hit is None and geometric:
            hit = next((k for k, g in enumerate(kept) if same_geometry(g, f, tol)), None)
        if hit is None:
            g = f.copy()
            g.info["centres"], g.info["sites"], g.info["n_sources"] = "", "", 0
            kept.append(g)
            hit = len(kept) - 1
            if key is not None:
                by_key[key] = hit
        g = kept[hit]
        cen = "+".join(str(int(c)) for c in np.atleast_1d(f.info.get("frag_centres", [])))
        g.info["centres"] = str(g.info["centres"]) + cen + _SEP
        g.info["sites"] = str(g.info["sites"]) + str(f.info.get("frag_type", "")) + _SEP
        g.info["n_sources"] = int(g.info["n_sources"]) + 1
    return kept


def fragment_sources(frag: Atoms) -> List[Tuple[Tuple[int, ...], str]]:
    """``[(centres, site label), ...]`` recorded by :func:`unique_fragments` on a fragment (also
    after an extxyz round trip); a fragment that was not de-duplicated gives its own."""
    if "centres" not in frag.info:
        cen = tuple(int(c) for c in np.atleast_1d(frag.info.get("frag_centres", [])))
        return [(cen, str(frag.info.get("frag_type", "")))]
    cs = str(frag.info["centres"]).split(_SEP)[:-1]
    ss = str(frag.info["sites"]).split(_SEP)[:-1]
    return [(tuple(int(x) for x in c.split("+") if x), s) for c, s in zip(cs, ss)]

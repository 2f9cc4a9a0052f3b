"""Interaction range of reference forces: fragment-size convergence and Hessian analysis.

Two complementary analyses (Herbold & Behler 2023, Figs. 6-7 and ref. 48):

``force_convergence``
    Force on a centre atom in fragments of growing radius R (Å) against the same atom in the
    periodic cell: ``|ΔF|(R) = ||F_frag,centre(R) - F_bulk,centre||`` (eV/Å). Table + PNG.

``hessian_blocks`` + ``analyse_hessian``
    3x3 Hessian blocks ``H_AB = d^2E / dR_A dR_B`` (eV/Å^2) by central finite differences of
    forces, ``H_AB[β, α] = -(F_A,β(R_B + hê_α) - F_A,β(R_B - hê_α)) / 2h`` with ``h`` =
    ``fd_step`` (default 0.01 Å). Only the representative atom B of each symmetry-nonequivalent
    site is displaced (6 force calls per site, run in parallel); since the Hessian is symmetric,
    ``||H_BA|| = ||H_AB||`` gives the complete row of site B, i.e. the dependence of ``F_B`` on
    every atom A.

    Norm: spectral norm ``||H_AB||_2`` (largest singular value) = the largest force change on A
    per Å of displacement of B in any direction.

    Truncation estimate: ``δF_B(R) = Σ_{A: r_AB > R} ||H_AB||_2 · δ`` with the displacement scale
    ``δ`` (default 0.1 Å, a typical thermal amplitude). By the triangle inequality it bounds the
    change of F_B (eV/Å) when every atom beyond R moves by up to δ. ``R_frag^conv`` of a site is the
    smallest R with ``δF_B(R) <= threshold`` (default 0.125 eV/Å, as in the paper); overall
    ``R_frag^conv`` is the maximum over sites and the recommended cutoff ``R_c = R_frag^conv / 2``.

    Per element pair (X, Y): ``R_XY`` = smallest R with ``Σ_{A∈Y, r_AB>R} ||H_AB||·δ <= threshold
    / n_elements`` for every site B of element X, symmetrised as max(R_XY, R_YX). A pair with
    ``R_XY`` well below ``R_c`` contributes little beyond that distance, so its radial symmetry
    functions can be pruned there.

    Distances are minimum-image distances; the analysis is meaningful only up to half the
    smallest cell width (a warning is issued if the range reaches it).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from ase import Atoms

from .fragments import CappingRules, FragmentCutter, find_sites
from .labelling import CalcSpec, compute, compute_many, label, labelled_in_order, read_dataset

__all__ = [
    "ConvergenceResult",
    "force_convergence",
    "HessianResult",
    "hessian_blocks",
    "RangeResult",
    "analyse_hessian",
    "truncation_error",
    "min_cell_width",
    "register_cli",
]


def min_cell_width(atoms: Atoms) -> float:
    """Smallest distance between lattice planes over periodic directions (Å; inf if none)."""
    if not np.any(atoms.pbc):
        return float("inf")
    inv = np.linalg.inv(np.array(atoms.cell.complete()))
    h = 1.0 / np.linalg.norm(inv, axis=0)
    return float(np.min(h[np.asarray(atoms.pbc, bool)]))


# --------------------------------------------------------------------------- convergence
@dataclass
class ConvergenceResult:
    """Rows of (centre index, site label, R (Å), N_atom, |ΔF| (eV/Å)); bulk forces (N, 3)."""

    centres: List[int]
    labels: List[str]
    radii: np.ndarray
    n_atoms: np.ndarray  # (n_centres, n_radii)
    dF: np.ndarray  # (n_centres, n_radii) eV/Å
    bulk_forces: np.ndarray
    threshold: float

    def converged_radius(self) -> Dict[str, float]:
        """Per label: smallest tested R from which |ΔF| stays <= threshold (nan if never)."""
        out: Dict[str, float] = {}
        for k, lab in enumerate(self.labels):
            ok = self.dF[k] <= self.threshold
            r = float("nan")
            for j in range(len(self.radii) - 1, -1, -1):
                if not ok[j]:
                    break
                r = float(self.radii[j])
            out[lab] = r
        return out

    def table(self) -> str:
        lines = ["centre,label,R_frag_A,N_atom,dF_eV_per_A"]
        for k, (c, lab) in enumerate(zip(self.centres, self.labels)):
            for j, r in enumerate(self.radii):
                lines.append(f"{c},{lab},{r:.4f},{self.n_atoms[k, j]},{self.dF[k, j]:.6e}")
        return "\n".join(lines) + "\n"

    def plot(self, path: Union[str, Path], title: str = "") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for k, lab in enumerate(self.labels):
            ax.semilogy(self.radii, np.maximum(self.dF[k], 1e-12), "o-", label=lab, ms=3)
        ax.axhline(self.threshold, color="k", lw=1, label=f"{self.threshold} eV/Å")
        ax.set_xlabel("fragment radius R_frag (Å)")
        ax.set_ylabel("|F_frag - F_bulk| of centre (eV/Å)")
        ax.set_title(title or "force convergence")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def force_convergence(
    bulk: Atoms,
    radii: Sequence[float],
    calculator: CalcSpec,
    centres: Optional[Sequence[int]] = None,
    cap: bool = True,
    rules: Optional[CappingRules] = None,
    workers: int = 1,
    threshold: float = 0.125,
    bulk_forces: Optional[np.ndarray] = None,
    progress: Optional[bool] = None,
) -> ConvergenceResult:
    """|ΔF| of the centre atom between fragments of each radius (Å) and the periodic cell.

    ``centres`` default: the representative atom of each nonequivalent site. ``cap=False`` cuts
    plain spheres (metals). ``bulk_forces`` (N, 3) eV/Å skips the periodic calculation.
    """
    radii = np.asarray(sorted(float(r) for r in radii))
    if len(radii) == 0 or radii[0] <= 0:
        raise ValueError("force_convergence: 'radii' must be a non-empty list of positive radii (Å)")
    cutter = FragmentCutter(bulk, rules)
    if centres is None:
        sites = find_sites(bulk)
        centres = [s.index for s in sites]
        labels = [s.label for s in sites]
    else:
        centres = [int(c) for c in centres]
        labels = [f"{cutter.site_labels[c]}#{c}" for c in centres]
    if bulk_forces is None:
        bulk_forces = compute(bulk, calculator).get_forces()
    bulk_forces = np.asarray(bulk_forces)
    if bulk_forces.shape != (len(bulk), 3):
        raise ValueError(f"bulk_forces has shape {bulk_forces.shape}, expected {(len(bulk), 3)}")
    frags = [cutter.cut(c, r, cap=cap) for c in centres for r in radii]
    res = compute_many(frags, calculator, workers=workers, desc="fragments", progress=progress)
    n_atoms = np.array([len(f) for f in frags]).reshape(len(centres), len(radii))
    dF = np.array([np.linalg.norm(r.get_forces()[0] - bulk_forces[c])
                   for r, c in zip(res, [c for c in centres for _ in radii])])
    return ConvergenceResult(list(centres), labels, radii, n_atoms,
                             dF.reshape(len(centres), len(radii)), bulk_forces, threshold)


# --------------------------------------------------------------------------- hessian
@dataclass
class HessianResult:
    """Hessian columns of the displaced atoms.

    ``blocks[k, A]`` = H_{A, displaced[k]} (3x3, eV/Å^2; rows: force components on A, columns:
    displacement directions), shape (n_displaced, N, 3, 3); ``distances[k, A]`` minimum-image
    r_AB (Å), shape (n_displaced, N); ``labels`` site label of each displaced atom.
    """

    atoms: Atoms
    displaced: np.ndarray
    labels: List[str]
    blocks: np.ndarray
    distances: np.ndarray
    fd_step: float

    @property
    def norms(self) -> np.ndarray:
        """Spectral norms ||H_AB||_2, shape (n_displaced, N), eV/Å^2."""
        return np.linalg.norm(self.blocks, ord=2, axis=(2, 3))

    def save(self, path: Union[str, Path]) -> None:
        np.savez_compressed(path, numbers=self.atoms.numbers, positions=self.atoms.positions,
                            cell=np.array(self.atoms.cell), pbc=self.atoms.pbc,
                            displaced=self.displaced, labels=np.array(self.labels),
                            blocks=self.blocks, distances=self.distances, fd_step=self.fd_step)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "HessianResult":
        d = np.load(path)
        atoms = Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
        return cls(atoms, d["displaced"], [str(x) for x in d["labels"]], d["blocks"],
                   d["distances"], float(d["fd_step"]))


def hessian_blocks(
    atoms: Atoms,
    calculator: CalcSpec,
    displace: Optional[Sequence[int]] = None,
    fd_step: float = 0.01,
    workers: int = 1,
    checkpoint: Optional[Union[str, Path]] = None,
    symprec: float = 1e-3,
    progress: Optional[bool] = None,
) -> HessianResult:
    """Hessian blocks H_{A,B} for all A and the displaced atoms B (central differences).

    ``displace`` default: one representative per symmetry-nonequivalent site (spglib); all atoms
    for structures without symmetry. ``fd_step`` in Å. ``checkpoint``: extxyz data set through
    which the 6 displaced force calls per atom are labelled resumably (see ``labelling.label``).
    """
    if fd_step <= 0:
        raise ValueError(f"hessian_blocks: 'fd_step' must be > 0 Å, got {fd_step}")
    if displace is None:
        sites = find_sites(atoms, symprec=symprec)
        displace = [s.index for s in sites]
        labels = [s.label for s in sites]
    else:
        displace = [int(b) for b in displace]
        for b in displace:
            if not 0 <= b < len(atoms):
                raise IndexError(f"hessian_blocks: displaced atom {b} out of range ({len(atoms)} atoms)")
        try:
            lab = {k: s.label for s in find_sites(atoms, symprec=symprec) for k in s.members}
        except Exception:  # pragma: no cover
            lab = {}
        labels = [lab.get(b, atoms[b].symbol) + f"#{b}" for b in displace]
    structs: List[Atoms] = []
    for b in displace:
        for alpha in range(3):
            for sign in (1.0, -1.0):
                a = atoms.copy()
                a.calc = None
                a.positions[b, alpha] += sign * fd_step
                a.info["hessian_atom"] = b
                a.info["hessian_dir"] = alpha
                a.info["hessian_sign"] = int(sign)
                structs.append(a)
    if checkpoint is not None:
        label(structs, checkpoint, calculator=calculator, workers=workers, progress=progress)
        # matched by key (ignores stale frames; accepts keys of older label files)
        frames = labelled_in_order(structs, read_dataset(checkpoint))
        missing = [i for i, f in enumerate(frames) if f is None]
        if missing:
            raise RuntimeError(f"hessian_blocks: {len(missing)} displaced force calls failed; "
                               f"see {checkpoint}.failed.jsonl")
        forces = [f.get_forces() for f in frames]
    else:
        forces = [r.get_forces() for r in compute_many(structs, calculator, workers=workers,
                                                       desc="hessian", progress=progress)]
    n = len(atoms)
    blocks = np.zeros((len(displace), n, 3, 3))
    for k in range(len(displace)):
        for alpha in range(3):
            fp = forces[6 * k + 2 * alpha]
            fm = forces[6 * k + 2 * alpha + 1]
            blocks[k, :, :, alpha] = -(fp - fm) / (2 * fd_step)
    from ase.geometry import get_distances

    _, dist = get_distances(atoms.positions[displace], atoms.positions,
                            cell=atoms.cell, pbc=atoms.pbc)
    return HessianResult(atoms.copy(), np.array(displace), labels, blocks, dist, fd_step)


def truncation_error(distances: np.ndarray, norms: np.ndarray, delta: float,
                     radii: np.ndarray) -> np.ndarray:
    """δF(R) = Σ_{r > R} norm·δ (eV/Å) evaluated at each R of ``radii``; 1-D inputs."""
    order = np.argsort(distances)
    r = distances[order]
    w = norms[order] * delta
    tail = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])  # tail[i] = Σ_{j>=i}
    idx = np.searchsorted(r, radii, side="right")  # first index with r > R
    return tail[idx]


def _conv_radius(distances: np.ndarray, weights: np.ndarray, threshold: float) -> float:
    """Smallest R with Σ_{r > R} weights <= threshold (R among 0 and the distances)."""
    if weights.sum() <= threshold:
        return 0.0
    u = np.unique(distances)
    tails = truncation_error(distances, weights, 1.0, u)
    ok = np.nonzero(tails <= threshold)[0]
    return float(u[ok[0]])


@dataclass
class RangeResult:
    """Output of ``analyse_hessian``; radii in Å, forces in eV/Å."""

    threshold: float
    delta: float
    site_radius: Dict[str, float]
    r_frag_conv: float
    r_c: float
    pair_radius: Dict[Tuple[str, str], float]
    pair_threshold: float
    min_cell_width: float
    curves: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(repr=False, default_factory=dict)

    def report(self) -> str:
        lines = [f"Hessian range analysis: norm = spectral (2-norm), delta = {self.delta} Å, "
                 f"threshold = {self.threshold} eV/Å",
                 "site  R_frag^conv (Å)"]
        for lab, r in self.site_radius.items():
            lines.append(f"{lab:>8}  {r:8.3f}")
        lines.append(f"overall R_frag^conv = {self.r_frag_conv:.3f} Å; recommended R_c = {self.r_c:.3f} Å")
        lines.append(f"element-pair interaction distances (threshold {self.pair_threshold:.4g} eV/Å):")
        for (x, y), r in sorted(self.pair_radius.items()):
            flag = "  (prunable beyond this)" if r < self.r_c else ""
            lines.append(f"  {x:>2}-{y:<2} {r:8.3f} Å{flag}")
        if self.r_frag_conv > self.min_cell_width / 2:
            lines.append(f"WARNING: range exceeds half the cell width ({self.min_cell_width / 2:.2f} Å); "
                         "use a larger supercell")
        return "\n".join(lines)


def analyse_hessian(hess: HessianResult, threshold: float = 0.125, delta: float = 0.1,
                    pair_threshold: Optional[float] = None) -> RangeResult:
    """R_frag^conv per site and overall, R_c = R_frag^conv/2, per-element-pair distances."""
    if threshold <= 0 or delta <= 0:
        raise ValueError("analyse_hessian: 'threshold' and 'delta' must be > 0")
    norms = hess.norms
    dist = hess.distances
    symbols = np.array(hess.atoms.get_chemical_symbols())
    elements = sorted(set(symbols))
    if pair_threshold is None:
        pair_threshold = threshold / len(elements)
    site_radius: Dict[str, float] = {}
    curves: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    grid = np.linspace(0, max(float(dist.max()), 1e-9), 400)
    pair: Dict[Tuple[str, str], float] = {}
    for k, lab in enumerate(hess.labels):
        b = int(hess.displaced[k])
        mask = np.arange(len(symbols)) != b
        site_radius[lab] = _conv_radius(dist[k, mask], norms[k, mask] * delta, threshold)
        curves[lab] = (grid, truncation_error(dist[k, mask], norms[k, mask], delta, grid))
        x = symbols[b]
        for y in elements:
            m = mask & (symbols == y)
            if not m.any():
                continue
            r = _conv_radius(dist[k, m], norms[k, m] * delta, pair_threshold)
            key = tuple(sorted((x, y)))
            pair[key] = max(pair.get(key, 0.0), r)  # type: ignore[index]
    r_conv = max(site_radius.values()) if site_radius else 0.0
    width = min_cell_width(hess.atoms)
    if r_conv > width / 2:
        warnings.warn(f"interaction range {r_conv:.2f} Å exceeds half the smallest cell width "
                      f"({width / 2:.2f} Å): periodic images overlap, use a larger supercell")
    return RangeResult(threshold, delta, site_radius, r_conv, r_conv / 2, pair,  # type: ignore[arg-type]
                       pair_threshold, width, curves)


def plot_hessian(hess: HessianResult, rng: RangeResult, path: Union[str, Path], title: str = "") -> None:
    """Two panels: ||H_AB|| vs r_AB per site, and δF(R) per site with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    norms = hess.norms
    for k, lab in enumerate(hess.labels):
        m = hess.distances[k] > 0
        a1.semilogy(hess.distances[k, m], np.maximum(norms[k, m], 1e-12), ".", ms=3, label=lab)
        g, c = rng.curves[lab]
        a2.semilogy(g, np.maximum(c, 1e-12), "-", label=f"{lab}: {rng.site_radius[lab]:.2f} Å")
    a1.set_xlabel("r_AB (Å)")
    a1.set_ylabel("||H_AB||_2 (eV/Å²)")
    a1.legend(fontsize=7)
    a2.axhline(rng.threshold, color="k", lw=1)
    a2.set_ylim(bottom=rng.threshold * 1e-3)
    a2.axvline(rng.r_frag_conv, color="k", ls="--", lw=1)
    a2.set_xlabel("R (Å)")
    a2.set_ylabel(f"δF(R) = Σ_(r>R) ||H||·{rng.delta} Å (eV/Å)")
    a2.legend(fontsize=7)
    fig.suptitle(title or f"R_frag^conv = {rng.r_frag_conv:.2f} Å, R_c = {rng.r_c:.2f} Å")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def _parse_radii(spec: str) -> List[float]:
    """'4:12:0.5' (start:stop:step, inclusive) or '4.359,8.718'."""
    try:
        if ":" in spec:
            a, b, s = (float(x) for x in spec.split(":"))
            return list(np.round(np.arange(a, b + 0.5 * s, s), 6))
        return [float(x) for x in spec.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--radii {spec!r}: use start:stop:step or a comma list") from exc


def _cmd_range(args: argparse.Namespace) -> int:
    from ase.io import read

    atoms = read(args.structure, index=-1)
    prefix = Path(args.output)
    if prefix.parent and not prefix.parent.exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
    prog = False if args.quiet else None
    if args.supercell:
        atoms = atoms.repeat([int(x) for x in args.supercell.split(",")])
    if args.radii:
        conv = force_convergence(atoms, args.radii, args.method, centres=args.centres,
                                 cap=not args.no_cap, workers=args.workers,
                                 threshold=args.threshold, progress=prog)
        Path(f"{prefix}_convergence.csv").write_text(conv.table())
        conv.plot(f"{prefix}_convergence.png")
        print(conv.table(), end="")
        print("converged from R =", conv.converged_radius())
    if args.hessian:
        hess = hessian_blocks(atoms, args.method, displace=args.centres, fd_step=args.fd_step,
                              workers=args.workers, checkpoint=f"{prefix}_displacements.extxyz",
                              progress=prog)
        hess.save(f"{prefix}_hessian.npz")
        rng = analyse_hessian(hess, threshold=args.threshold, delta=args.delta)
        text = rng.report()
        Path(f"{prefix}_range.txt").write_text(text + "\n")
        plot_hessian(hess, rng, f"{prefix}_hessian.png")
        print(text)
    if not args.radii and not args.hessian:
        print("nothing to do: give --radii and/or --hessian", file=sys.stderr)
        return 2
    return 0


def register_cli(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``range`` subcommand."""
    p = subparsers.add_parser("range", help="force convergence vs fragment radius and Hessian range")
    p.add_argument("structure", help="periodic structure file")
    p.add_argument("-m", "--method", default="gfn2", help="emt | gfn2 | module:factory")
    p.add_argument("--radii", type=_parse_radii, help="fragment radii in Å, e.g. 4:12:1 or 4.359,8.718")
    p.add_argument("--hessian", action="store_true", help="finite-difference Hessian analysis")
    p.add_argument("-c", "--centres", type=int, nargs="+", help="centre/displaced atoms (default: sites)")
    p.add_argument("--supercell", help="repeat the cell, e.g. 2,2,2")
    p.add_argument("--threshold", type=float, default=0.125, help="force threshold in eV/Å")
    p.add_argument("--delta", type=float, default=0.1, help="displacement scale δ in Å")
    p.add_argument("--fd-step", type=float, default=0.01, help="finite-difference step in Å")
    p.add_argument("--no-cap", action="store_true", help="plain-sphere fragments (metals)")
    p.add_argument("-j", "--workers", type=int, default=1)
    p.add_argument("-o", "--output", default="range", help="output prefix")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_range)
    return p

"""The trainer: data, preparation, EKF/Adam epochs, checkpoints, MPI, outputs.

MPI (mpi4py, data-parallel over structures): structure i lives on rank i % size (its
neighbour lists, symmetry functions and cached Jacobians); the Kalman covariance is split by
rows over the ranks. Every rank draws the same random numbers; the owner of a drawn candidate
computes its error and weight derivative and broadcasts them; error sums are combined with
exact (disjoint) reductions, so serial and parallel runs agree to round-off of the covariance
products (the only operation whose summation order depends on the rank count).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..dataset import DatasetError, Structure, read_dataset, validate
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_state, save_state
from .config import ConfigError, normalise_config
from .optim import Adam, KalmanFilter, WeightAverage
from . import prepare

__all__ = ["Trainer", "TrainResult", "train"]


def _progress(total, desc, enabled):
    from ..progress import Progress
    return Progress(total=total, desc=desc, disable=None if enabled else True)


@dataclass
class TrainResult:
    potential: Any
    history: List[dict]
    table: List[dict] = field(default_factory=list)
    predictions: Optional[dict] = None
    output_directory: Optional[str] = None


class Trainer:
    """Train an HDNNP from a config dict (see :mod:`pyfragnn.training.config`).

    ``structures`` may be given directly (list of :class:`pyfragnn.dataset.Structure`) instead
    of ``data.files``; ``comm`` is an mpi4py communicator or None (serial).
    """

    def __init__(self, config: Dict[str, Any], structures: Optional[List[Structure]] = None,
                 comm=None):
        if structures is not None and not config.get("data", {}).get("files"):
            config = json.loads(json.dumps(config))
            config.setdefault("data", {})["files"] = ["<given>"]
        self.cfg = normalise_config(config)
        self.comm = comm if (comm is not None and comm.Get_size() > 1) else None
        self.rank = comm.Get_rank() if self.comm else 0
        self.size = comm.Get_size() if self.comm else 1
        self._given = structures
        self._setup_done = False
        self._avg: Optional[WeightAverage] = None

    # ------------------------------------------------------------------ setup
    def log(self, msg: str) -> None:
        if self.rank == 0 and self.cfg["training"]["progress"]:
            print(msg, flush=True)

    def setup(self) -> None:
        from .. import _core
        self._core_mod = _core
        cfg = self.cfg
        d, m, t = cfg["data"], cfg["model"], cfg["training"]
        # --- data
        if self._given is not None:
            structs = list(self._given)
        else:
            structs = []
            for f in d["files"]:
                structs += read_dataset(f, None if d["format"] == "auto" else d["format"])
        if not structs:
            raise DatasetError("no structures in the data files")
        input_nn = ""
        init_core = None
        if m["init_from"]:
            from ..potential import Potential
            try:
                init_core = Potential.load(m["init_from"]).core
            except (OSError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"model.init_from: {exc}") from exc
        if m["input_nn"]:
            with open(m["input_nn"]) as fh:
                input_nn = fh.read()
        if init_core is not None:
            elements = None
        elif m["elements"]:
            elements = list(m["elements"])
        elif input_nn:
            elements = None
        else:
            from ase.data import atomic_numbers
            syms = sorted({s for st in structs for s in st.symbols}, key=lambda x: atomic_numbers[x])
            elements = syms
        # --- model
        if init_core is not None:
            input_nn = init_core.input_nn_text()
        elif not input_nn:
            drop = [tuple(p) for p in m["drop_pairs"]]
            caps = {(p[0], p[1]): float(p[2]) for p in m["pair_cutoffs"]}
            r = m["radial"]
            sfs = prepare.radial_functions(elements, m["cutoff"], n=int(r.get("n", 6)),
                                           r_min=float(r.get("r_min", 1.5)),
                                           mode=r.get("mode", "shifted"), drop_pairs=drop,
                                           pair_cutoffs=caps)
            a = m["angular"]
            if int(a.get("n", 1)) > 0:
                sfs += prepare.angular_functions(elements, m["cutoff"], etas=a["eta"],
                                                 zetas=a["zeta"], lambdas=a["lambda"],
                                                 sf_type=int(a.get("type", 9)),
                                                 drop_pairs=drop, pair_cutoffs=caps)
            input_nn = prepare.make_input_nn(elements, sfs, m["hidden"], m["activations"],
                                             m["cutoff_type"], m["cutoff_alpha"], m["scaling"],
                                             m["normalize_nodes"])
        self.input_nn_text = input_nn
        self.input_nn_source = m["input_nn"] or ("<init_from>" if init_core is not None
                                                 else "<config>")
        self.dropped_sfs: List[dict] = []
        if init_core is not None:
            core = init_core.copy()
        else:
            try:
                core = _core.CoreModel.from_text(input_nn, "", None, self.input_nn_source)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"model: {exc}") from exc
        self.core = core
        self.elements = list(core.elements)
        validate(structs, self.elements, need_forces=d["use_forces"])
        self.structures = structs
        self.lu, self.eu = core.length_unit, core.energy_unit
        N = len(structs)
        self.N = N
        # --- split
        rng_split = np.random.default_rng(t["seed"] + 7919)
        is_test = np.zeros(N, dtype=bool)
        free = []
        for i, s in enumerate(structs):
            if d["use_file_split"] and s.set in ("train", "test"):
                is_test[i] = s.set == "test"
            else:
                free.append(i)
        frac = d["test_fraction"]
        if free and frac > 0:
            if d["split"] == "label":
                groups: Dict[str, List[int]] = {}
                for i in free:
                    groups.setdefault(structs[i].label, []).append(i)
                for lab in sorted(groups):
                    idx = np.array(groups[lab])
                    ntest = int(round(frac * len(idx)))
                    is_test[rng_split.permutation(idx)[:ntest]] = True
            else:
                idx = np.array(free)
                ntest = int(round(frac * len(idx)))
                is_test[rng_split.permutation(idx)[:ntest]] = True
        self.is_test = is_test
        self.train_idx = np.flatnonzero(~is_test)
        self.test_idx = np.flatnonzero(is_test)
        if self.train_idx.size == 0:
            raise ConfigError("no training structures after the split")
        # --- per-structure data (all ranks)
        self.nat = np.array([s.n_atoms for s in structs])
        self.Eref = np.array([s.energy for s in structs], dtype=float) / self.eu
        self.wt = np.array([s.weight for s in structs], dtype=float)
        self.labels = [s.label for s in structs]
        self.nF = np.array([3 * int(s.mask().sum()) if d["use_forces"] else 0 for s in structs])
        self.elem_idx = [core.element_indices(s.symbols) for s in structs]
        # --- reference energies (deterministic on every rank)
        if m["reference_energies"] and init_core is None:
            counts = np.zeros((N, len(self.elements)))
            for i in range(N):
                counts[i] = np.bincount(self.elem_idx[i], minlength=len(self.elements))
            tr = self.train_idx
            eps = prepare.reference_energies(counts[tr], self.Eref[tr])
            for e, v in enumerate(eps):
                core.set_atom_energy(e, float(v))
        # --- owned structures
        self.owned = [i for i in range(N) if i % self.size == self.rank]
        self.Fref: Dict[int, np.ndarray] = {}
        self.fmask: Dict[int, np.ndarray] = {}
        # flat (3 atom + direction) index of each training force component, built once: the
        # EKF looks one up per threshold trial and per observation
        self._fflat: Dict[int, np.ndarray] = {}
        for i in self.owned:
            s = structs[i]
            if d["use_forces"]:
                self.Fref[i] = np.asarray(s.forces, dtype=float) * (self.lu / self.eu)
                self.fmask[i] = s.mask()
                self._fflat[i] = np.flatnonzero(np.repeat(self.fmask[i], 3))
        self._build_training_structures()
        if init_core is None:
            self._scaling()
        else:  # fine-tuning: the potential's scaling stays
            for ts in self.ts.values():
                ts.rescale()
        core = self.core
        # --- Jacobian cache within the memory budget (training structures first)
        budget = t["jacobian_memory_mb"] * 2 ** 20
        used = 0
        self.n_cached = 0
        if d["use_forces"]:
            for i in [i for i in self.owned if not is_test[i]]:
                b = self.ts[i].jacobian_bytes
                if used + b <= budget:
                    self.ts[i].set_cache_jacobians(True)
                    used += b
                    self.n_cached += 1
        self.jacobian_bytes = used
        # --- weights
        self.woff = _core.model_weight_offsets(core)
        self.nw = int(self.woff[-1])
        rng_w = np.random.default_rng(t["seed"])
        if init_core is not None:
            w = np.array(_core.get_weights(core), dtype=float)
            self.log(f"weights, scaling and atom energies from {m['init_from']}")
        else:
            w = np.concatenate([prepare.glorot_weights(core.network_layers(e), rng_w)
                                for e in range(len(self.elements))])
        self.w = w
        _core.set_weights(core, w)
        self.rng = np.random.default_rng(t["seed"] + 1)
        self._setup_done = True

    def _build_training_structures(self) -> None:
        """Neighbour lists and raw symmetry functions of the owned structures for self.core."""
        _core = self._core_mod
        self.ts: Dict[int, Any] = {}
        for i in self.owned:
            s = self.structures[i]
            cell = np.asarray(s.cell, dtype=float) / self.lu
            try:
                self.ts[i] = _core.TrainingStructure(self.core,
                                                     np.asarray(s.positions) / self.lu,
                                                     cell, np.asarray(s.pbc, bool),
                                                     self.elem_idx[i], False)
            except (ValueError, RuntimeError) as exc:
                raise DatasetError(f"{s.source or f'structure {i + 1}'}: {exc}") from exc

    def _drop_symmetry_functions(self, drops: Dict[int, np.ndarray], stats) -> None:
        """Comment the given functions (per element, indices in n2p2 order) out of the input.nn
        text, rebuild the model (atom energies kept) and the training structures."""
        m = self.cfg["model"]
        tol = float(m["constant_sf_tol"])
        src = self.input_nn_source
        text_lines = self.input_nn_text.split("\n")
        remove = {}
        for e, bad in drops.items():
            el = self.elements[e]
            nums = list(self.core.symmetry_function_source_lines(e))
            nsf = self.core.n_symmetry_functions(e)
            if bad.size == nsf:
                raise prepare.ConstantSymmetryFunctionError(
                    f"model.constant_sf = 'drop' would remove all {nsf} symmetry functions of "
                    f"element {el}:\n" + prepare.describe_constant_functions(
                        el, stats[e][0], bad, stats[e][1], stats[e][2],
                        self.core.symmetry_function_lines(e),
                        nums if src != "<config>" else None, os.path.basename(src), tol,
                        hint=False))
            sf_lines = self.core.symmetry_function_lines(e)
            for s in bad:
                ln = int(nums[s])
                if not 1 <= ln <= len(text_lines):  # pragma: no cover - defensive
                    raise RuntimeError(f"symmetry function {s + 1} of {el}: no input.nn line")
                remove[ln] = True
                self.dropped_sfs.append({
                    "element": el, "index": int(s) + 1, "line": ln, "source": src,
                    "symfunction": sf_lines[s], "min": float(stats[e][1][s]),
                    "max": float(stats[e][2][s]),
                    "range": float(stats[e][2][s] - stats[e][1][s])})
        for ln in remove:
            text_lines[ln - 1] = ("# dropped by pyfragnn (near-constant over the training "
                                  "set): " + text_lines[ln - 1])
        new_text = "\n".join(text_lines)
        old = self.core
        core = self._core_mod.CoreModel.from_text(new_text, "", None, src)
        if list(core.elements) != self.elements:  # pragma: no cover - defensive
            raise RuntimeError("dropping symmetry functions changed the element list")
        for e in range(len(self.elements)):
            core.set_atom_energy(e, old.atom_energy(e))
        self.core = core
        self.input_nn_text = new_text
        n = len(self.dropped_sfs)
        per = ", ".join(f"{self.elements[e]}: {drops[e].size}" for e in sorted(drops))
        self.log(f"dropped {n} near-constant symmetry function(s) ({per}; "
                 f"model.constant_sf = 'drop', tol {tol:g})")
        for r in self.dropped_sfs:
            self.log(f"  {r['element']} SF {r['index']} (line {r['line']}: {r['symfunction']}): "
                     f"range {r['range']:.3g}")
        self._build_training_structures()

    def _scaling(self, _second: bool = False) -> None:
        """SF statistics over training atoms of all ranks, combined in structure order; drops
        or rejects (near-)constant functions (model.constant_sf)."""
        core = self.core
        ne = len(self.elements)
        nsf = [core.n_symmetry_functions(e) for e in range(ne)]
        # per structure: count, min, max, sum per element
        own_train = [i for i in self.owned if not self.is_test[i]]
        rows = {i: [None if G is None else (len(G), G.min(0), G.max(0), G.sum(0))
                    for G in self._element_G(i)] for i in own_train}
        allrows = self._gather_dict(rows)
        cnt = [0] * ne
        gmin = [np.full(n, np.inf) for n in nsf]
        gmax = [np.full(n, -np.inf) for n in nsf]
        gsum = [np.zeros(n) for n in nsf]
        for i in self.train_idx:
            for e, p in enumerate(allrows[int(i)]):
                if p is None:
                    continue
                cnt[e] += p[0]
                gmin[e] = np.minimum(gmin[e], p[1])
                gmax[e] = np.maximum(gmax[e], p[2])
                gsum[e] = gsum[e] + p[3]
        mean = [gsum[e] / max(cnt[e], 1) for e in range(ne)]
        rows2 = {i: [None if G is None else ((G - mean[e]) ** 2).sum(0)
                     for e, G in enumerate(self._element_G(i))] for i in own_train}
        allrows2 = self._gather_dict(rows2)
        m = self.cfg["model"]
        tol = float(m["constant_sf_tol"])
        for e in range(ne):
            if cnt[e] == 0:
                raise prepare.ConstantSymmetryFunctionError(
                    f"element {self.elements[e]} has no atoms in the training set")
        if m["constant_sf"] == "drop" and not _second:
            drops = {}
            for e in range(ne):
                bad = prepare.near_constant_functions(gmin[e], gmax[e], tol)
                if bad.size:
                    drops[e] = bad
            if drops:
                self._drop_symmetry_functions(
                    drops, {e: (cnt[e], gmin[e], gmax[e]) for e in range(ne)})
                return self._scaling(_second=True)
        # line numbers only for a user's input.nn (the generated text is not written out)
        from_file = self.input_nn_source != "<config>"
        src = os.path.basename(self.input_nn_source)
        for e in range(ne):
            ssq = np.zeros(nsf[e])
            for i in self.train_idx:
                p = allrows2[int(i)][e]
                if p is not None:
                    ssq = ssq + p
            lines = core.symmetry_function_lines(e)
            lo, hi, mu, sig = prepare.finish_statistics(
                self.elements[e], cnt[e], gmin[e], gmax[e], gsum[e], ssq, lines, tol,
                self.core.symmetry_function_source_lines(e) if from_file else None, src)
            core.set_scaling(e, lo, hi, mu, sig)
        for ts in self.ts.values():
            ts.rescale()

    def _element_G(self, i: int) -> list:
        """Raw symmetry functions of structure i per element: (n_atoms_e, n_sf_e) or None."""
        ts, el = self.ts[i], self.elem_idx[i]
        out = []
        for e in range(len(self.elements)):
            idx = np.flatnonzero(el == e)
            out.append(np.array([ts.G(int(a)) for a in idx]) if idx.size else None)
        return out

    def _gather_dict(self, d: dict) -> dict:
        if self.comm is None:
            return d
        out = {}
        for part in self.comm.allgather(d):
            out.update(part)
        return out

    # ------------------------------------------------------------------ errors
    def _map(self, fn, items):
        """[fn(x) for x in items], on training.threads threads (the compiled calls release
        the GIL); results in input order, so every reduction over them has a fixed order."""
        items = list(items)
        n = int(self.cfg["training"].get("threads", 1))
        if n <= 1 or len(items) < 2:
            return [fn(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(fn, items))

    def errors(self) -> dict:
        """RMSEs (eV/atom, eV/Å) on train and test, from the trainer's structures."""
        N = self.N
        rows = np.zeros((N, 3))
        use_forces = self.cfg["data"]["use_forces"]

        def one(i):
            ts = self.ts[i]
            if use_forces:
                E, F = ts.energy_forces()
                dF = (F - self.Fref[i])[self.fmask[i]]
                return E, float((dF * dF).sum()), dF.size
            return ts.energy(), 0.0, 0

        for i, (E, sq, nf) in zip(self.owned, self._map(one, self.owned)):
            if use_forces:
                rows[i, 1] = sq
                rows[i, 2] = nf
            rows[i, 0] = (E - self.Eref[i]) / self.nat[i]
        if self.comm is not None:
            tot = np.zeros_like(rows)
            self.comm.Allreduce(rows, tot)
            rows = tot
        self._last_rows = rows
        out = {}
        for name, idx in (("train", self.train_idx), ("test", self.test_idx)):
            if idx.size == 0:
                out[f"rmse_E_{name}"] = float("nan")
                out[f"rmse_F_{name}"] = float("nan")
                continue
            out[f"rmse_E_{name}"] = math.sqrt(float(np.mean(rows[idx, 0] ** 2))) * self.eu
            nf = rows[idx, 2].sum()
            out[f"rmse_F_{name}"] = (math.sqrt(rows[idx, 1].sum() / nf) * self.eu / self.lu
                                     if nf > 0 else float("nan"))
        return out

    # ------------------------------------------------------------------ EKF
    def _owner(self, i: int) -> int:
        return i % self.size

    def _bcast(self, buf: np.ndarray, root: int) -> None:
        if self.comm is not None:
            self.comm.Bcast(buf, root=root)

    def _energy_obs(self, i: int, buf: np.ndarray) -> None:
        """buf = [E_ref - E, dE/dw]: the total-energy error and Jacobian, as n2p2's combined
        update (Training::update, US_COMBINED: error energyRef - energy, Jacobian the sum of
        the atomic dE_i/dc; no division by the number of atoms)."""
        buf[:] = 0.0
        if self._owner(i) == self.rank:
            E, _ = self.ts[i].energy_gradient(1.0, out=buf[1:])
            buf[0] = self.Eref[i] - E
        self._bcast(buf, self._owner(i))

    def _force_index(self, i: int, comp: int) -> tuple:
        """Atom and direction of structure i's training force component number comp."""
        return divmod(int(self._fflat[i][comp]), 3)

    def _force_obs(self, i: int, comp: int, buf: np.ndarray) -> None:
        buf[:] = 0.0
        if self._owner(i) == self.rank:
            fw = self.cfg["training"]["force_weight"]
            k, a = self._force_index(i, comp)
            F, _ = self.ts[i].force_component_gradient(k, a, fw, out=buf[1:])
            buf[0] = (self.Fref[i][k, a] - F) * fw
        self._bcast(buf, self._owner(i))

    def _trial_error(self, u: int, i: int, comp: int) -> float:
        """The error alone of a threshold trial (no Jacobian: a trial that fails costs a
        forward pass, or for a force the atoms touching it): the energy error per atom,
        or the weighted force-component error, as the observations give them."""
        e = np.zeros(1)
        if self._owner(i) == self.rank:
            if u == 0:
                e[0] = (self.Eref[i] - self.ts[i].energy()) / self.nat[i]
            else:
                k, a = self._force_index(i, comp)
                e[0] = (self.Fref[i][k, a] - self.ts[i].force_component(k, a)) \
                    * self.cfg["training"]["force_weight"]
        self._bcast(e, self._owner(i))
        return abs(float(e[0]))

    def _ekf_epoch(self, kf: KalmanFilter, err: dict, bar) -> int:
        """One EKF epoch as n2p2's Training::loop()/update() with selection_mode 2:
        - update candidates (training structures for energies, training force components for
          forces) are shuffled once per epoch and consumed in that order, wrapping around
          (n2p2 shuffleUpdateCandidates / posUpdateCandidates): every structure gets one
          energy update per epoch at energy_fraction 1;
        - the epoch schedule (int(energy_fraction * structures) energy and
          int(force_fraction * components) force updates) is shuffled (setEpochSchedule);
        - threshold selection: a candidate is taken once |E_ref - E| / N > thr_E * RMSE_E/atom
          or |F_ref - F| > thr_F * RMSE_F (previous epoch's training RMSEs); each trial
          consumes a candidate; after threshold_trials failures the last one drawn is used
          (as n2p2's 2G update, which computes error and Jacobian of the last candidate);
        - energy observation in total energy (see _energy_obs), force observation with error
          and Jacobian both multiplied by force_weight;
        - not in n2p2: the innovation gate (kalman.max_innovation) on force updates only
          (unless kalman.gate_energies), and the moving average of the weights after each
          update (training.ema_epochs; the model that is evaluated and saved).
        """
        t = self.cfg["training"]
        tr = self.train_idx
        nE = int(t["energy_fraction"] * tr.size)
        nFc = self.nF[tr]
        nF = int(t["force_fraction"] * nFc.sum()) if self.cfg["data"]["use_forces"] else 0
        # candidate lists (same draws on every rank)
        candE = self.rng.permutation(tr)
        cumF = np.cumsum(nFc)
        nFtot = int(cumF[-1]) if cumF.size else 0
        candF = self.rng.permutation(nFtot) if nF > 0 else np.zeros(0, dtype=np.int64)
        sched = np.concatenate([np.zeros(nE, dtype=np.int8), np.ones(nF, dtype=np.int8)])
        self.rng.shuffle(sched)
        posE = posF = 0
        rmseE = err["rmse_E_train"] / self.eu
        rmseF = err["rmse_F_train"] * self.lu / self.eu
        thrE = t["energy_error_threshold"] * rmseE
        thrF = t["force_error_threshold"] * rmseF * t["force_weight"]
        trials = int(t["threshold_trials"])
        gate_energies = bool(t["kalman"]["gate_energies"])
        buf = np.zeros(self.nw + 1)
        w = self.w
        kill_at = self._kill_at
        for nu, u in enumerate(sched):
            if kill_at is not None and kill_at == (self._epoch, nu):
                os.kill(os.getpid(), 9)  # test hook: PYFRAGNN_TEST_SIGKILL="epoch:update"
            for trial in range(trials):
                if u == 0:
                    if posE >= candE.size:
                        posE = 0
                    i, comp = int(candE[posE]), 0
                    posE += 1
                else:
                    if posF >= candF.size:
                        posF = 0
                    k = int(candF[posF])
                    posF += 1
                    j = int(np.searchsorted(cumF, k, side="right"))
                    i = int(tr[j])
                    comp = k - (int(cumF[j - 1]) if j > 0 else 0)
                # the last trial's candidate is used whatever its error
                if trial == trials - 1 or self._trial_error(u, i, comp) > (thrF if u else thrE):
                    break
            if u == 0:
                self._energy_obs(i, buf)
            else:
                self._force_obs(i, comp, buf)
            sw = math.sqrt(self.wt[i])
            if sw != 1.0:
                buf *= sw
            kf.update(w, buf[1:], float(buf[0]), gate=bool(u) or gate_energies)
            self._core_mod.set_weights(self.core, w)
            if self._avg is not None:
                self._avg.update(w)
            bar.update()
        kf.flush()
        return len(sched)

    # ------------------------------------------------------------------ Adam
    def _loss_grad(self, i: int, g: np.ndarray) -> float:
        ts = self.ts[i]
        n = self.nat[i]
        wt = self.wt[i]
        use_f = self.cfg["data"]["use_forces"]
        beta = self.cfg["training"]["adam"]["force_weight"]
        if use_f:
            E, F = ts.energy_forces()
        else:
            E = ts.energy()
        dE = E - self.Eref[i]
        ts.energy_gradient(2.0 * wt * dE / (n * n), out=g)
        loss = wt * (dE / n) ** 2
        nm = int(self.fmask[i].sum()) * 3 if use_f else 0
        if use_f and nm > 0 and beta > 0:
            dF = (F - self.Fref[i]) * self.fmask[i][:, None]
            c = (2.0 * wt * beta / nm) * dF
            ts.force_gradient(c, 1.0, out=g)
            loss += wt * beta * float((dF * dF).sum()) / nm
        return loss

    def _adam_epoch(self, adam: Adam, bar) -> int:
        a = self.cfg["training"]["adam"]
        B = int(a["batch_size"])
        perm = self.rng.permutation(self.train_idx)
        nsteps = 0
        for b0 in range(0, perm.size, B):
            if self._kill_at is not None and self._kill_at == (self._epoch, nsteps):
                os.kill(os.getpid(), 9)  # test hook
            batch = perm[b0:b0 + B]
            G = np.zeros((batch.size, self.nw))
            for j, i in enumerate(batch):
                if self._owner(int(i)) == self.rank:
                    self._loss_grad(int(i), G[j])
            if self.comm is not None:
                tot = np.empty_like(G)
                self.comm.Allreduce(G, tot)
                G = tot
            grad = G.sum(axis=0) / self.wt[batch].sum() if self.wt[batch].sum() > 0 else G[0] * 0
            adam.step(self.w, grad)
            self._core_mod.set_weights(self.core, self.w)
            if self._avg is not None:
                self._avg.update(self.w)
            nsteps += 1
            bar.update(batch.size)
        return nsteps

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> str:
        c = json.loads(json.dumps(self.cfg))
        c["training"].pop("epochs", None)
        c["training"].pop("resume", None)
        c["training"].pop("progress", None)
        c["training"].pop("early_stopping_patience", None)
        c["training"].pop("ema_epochs", None)  # the averaged model, not the optimiser's path
        c.pop("output", None)
        return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()

    def _ckpt_path(self) -> str:
        return os.path.join(self.cfg["output"]["directory"], CHECKPOINT_NAME)

    def _save_checkpoint(self, epoch, opt, history, best) -> None:
        ost = opt.state()  # collective for the Kalman filter
        if self.rank != 0:
            return
        save_state(self._ckpt_path(),
                   {"fingerprint": self._fingerprint(), "epoch": epoch, "w": self.w.copy(),
                    "opt": ost, "rng": self.rng.bit_generator.state, "history": history,
                    "best": best,
                    **({"average": self._avg.state()} if self._avg is not None else {})})

    def _on_root(self, read):
        """``read()`` on rank 0 (in serial: here). Any exception it raises is raised on every
        rank (as a ConfigError with rank 0's message on the others), so that no rank is left
        waiting in a collective. Returns the result on rank 0, None on the others."""
        res, err = None, None
        if self.rank == 0:
            try:
                res = read()
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                err = exc
        if self.comm is not None:
            msg = self.comm.bcast(None if err is None else str(err), root=0)
            if self.rank != 0 and msg is not None:
                raise ConfigError(msg)
        if err is not None:
            raise err
        return res

    def _share_opt_state(self, ost: Optional[dict], opt) -> dict:
        """Optimizer state held on rank 0 -> every rank: all but the Kalman covariances are
        broadcast; those stay on rank 0 (``set_state`` scatters them), the others get None."""
        if self.comm is None:
            return ost
        small = self.comm.bcast({k: v for k, v in ost.items() if k != "P"}
                                if self.rank == 0 else None, root=0)
        if self.rank == 0:
            if "P" in ost:
                small["P"] = ost["P"]
        elif isinstance(opt, KalmanFilter):
            small["P"] = [None] * len(opt.blocks)
        return small

    def _load_checkpoint(self, opt):
        path = self._ckpt_path()

        def read():
            if not os.path.exists(path):
                old = os.path.join(os.path.dirname(path), "checkpoint.pkl")
                if os.path.exists(old):
                    raise CheckpointError(
                        f"{old} is a pickle checkpoint of an older pyfragnn; it is not loaded "
                        "(a pickle can run code). Delete it, or set training.resume = false")
                return None
            st = load_state(path)
            if st.get("fingerprint") != self._fingerprint():
                raise ConfigError(f"{path} was written with a different configuration; "
                                  "delete it or set training.resume = false")
            if not isinstance(st.get("opt"), dict) or not isinstance(st.get("w"), np.ndarray) \
                    or st["w"].shape != self.w.shape:
                raise CheckpointError(f"{path}: weights or optimizer state missing or of the "
                                      "wrong size")
            if isinstance(opt, KalmanFilter) and "P" not in st["opt"]:
                raise ConfigError(f"{path}: optimizer in the checkpoint differs")
            return st

        st = self._on_root(read)
        if self.comm is not None:
            head = None
            if self.rank == 0 and st is not None:
                head = {k: v for k, v in st.items() if k != "opt"}
            if not self.comm.bcast(st is not None if self.rank == 0 else None, root=0):
                return None
            head = self.comm.bcast(head, root=0)
            st = dict(head, opt=self._share_opt_state(st["opt"] if self.rank == 0 else None,
                                                      opt))
        if st is None:
            return None
        opt.set_state(st["opt"])
        self.w[:] = st["w"]
        self._core_mod.set_weights(self.core, self.w)
        self.rng.bit_generator.state = st["rng"]
        return st

    def _init_filter_state(self, opt, path: str) -> None:
        """Start the Kalman filter from the state saved in another run's checkpoint."""
        def read():
            try:
                st = load_state(path)["opt"]
                if "P" not in st:
                    raise ConfigError(f"training.kalman.init_state: {path} holds no Kalman "
                                      "filter")
            except CheckpointError as exc:
                raise CheckpointError(f"training.kalman.init_state: {exc}") from exc
            except (KeyError, TypeError) as exc:
                raise CheckpointError(f"training.kalman.init_state: {path}: not a training "
                                      f"checkpoint ({exc})") from exc
            n = sum(np.asarray(P).shape[0] for P in st["P"])
            if n != self.nw or len(st["P"]) != len(opt.blocks):
                raise ConfigError(f"training.kalman.init_state: {path} has a filter over {n} "
                                  f"weights in {len(st['P'])} block(s); this model has "
                                  f"{self.nw} in {len(opt.blocks)}")
            return st

        st = self._share_opt_state(self._on_root(read), opt)
        opt.set_state(st)
        self.log(f"Kalman filter state from {path} ({st['n_updates']} updates)")

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        if not self._setup_done:
            self.setup()
        t = self.cfg["training"]
        out_dir = self.cfg["output"]["directory"]
        if self.rank == 0:
            os.makedirs(out_dir, exist_ok=True)
        if self.comm is not None:
            self.comm.Barrier()
        ntr = self.train_idx.size
        if t["optimizer"] == "ekf":
            nE = int(t["energy_fraction"] * ntr)
            nF = int(t["force_fraction"] * self.nF[self.train_idx].sum()) if \
                self.cfg["data"]["use_forces"] else 0
            k = t["kalman"]
            blocks = [int(x) for x in self.woff] if k["decoupled"] else None
            opt = KalmanFilter(self.nw, kalman_type=k["type"], epsilon=k["epsilon"], q0=k["q0"],
                               qtau=k["qtau"], qmin=k["qmin"], eta=k["eta"], etatau=k["etatau"],
                               etamax=k["etamax"], lambda_=k["lambda"], nu=k["nu"],
                               updates_per_epoch=max(nE + nF, 1), blocks=blocks,
                               rank_block=k["rank_block"], comm=self.comm,
                               threads=k["threads"],
                               symmetric=bool(k["symmetric"]) and self.comm is None,
                               max_innovation=k["max_innovation"])
            per_epoch = steps = nE + nF
        else:
            a = t["adam"]
            opt = Adam(self.nw, lr=a["learning_rate"], beta1=a["beta1"], beta2=a["beta2"],
                       eps=a["eps"])
            per_epoch = ntr
            steps = -(-ntr // int(a["batch_size"]))
        ema = float(t["ema_epochs"])
        self._avg = WeightAverage(self.nw, ema * max(steps, 1)) if ema > 0 else None
        history: List[dict] = []
        best = None
        start = 1
        hook = os.environ.get("PYFRAGNN_TEST_SIGKILL")
        self._kill_at = tuple(int(x) for x in hook.split(":")) if hook else None
        st = None
        if t["resume"] and self.cfg["output"]["checkpoint"]:
            st = self._load_checkpoint(opt)
        init_state = t["kalman"]["init_state"] if t["optimizer"] == "ekf" else ""
        if st is None and init_state:
            self._init_filter_state(opt, init_state)
        if st is not None:
            history = st["history"]
            best = st["best"]
            start = st["epoch"] + 1
            self.log(f"resumed from epoch {st['epoch']}")
            self._resume_average(st)
        else:
            t0 = time.perf_counter()
            err = self.errors()
            history.append({"epoch": 0, **err, "time_s": time.perf_counter() - t0,
                            "updates": 0})
            self._log_epoch(history[-1])
        patience = int(t["early_stopping_patience"])
        stop = False
        if patience and best is not None and history[-1]["epoch"] - best["epoch"] >= patience:
            stop = True
        for epoch in range(start, int(t["epochs"]) + 1):
            if stop:
                break
            t0 = time.perf_counter()
            c0 = time.process_time()
            self._epoch = epoch
            # threshold selection compares with the optimiser's own weights' training RMSEs
            err = {k: history[-1].get(k + "_raw", history[-1][k])
                   for k in ("rmse_E_train", "rmse_F_train")}
            gated0 = getattr(opt, "n_gated", 0)
            with _progress(per_epoch, f"epoch {epoch}", self.rank == 0 and t["progress"]) as bar:
                if t["optimizer"] == "ekf":
                    nup = self._ekf_epoch(opt, err, bar)
                else:
                    nup = self._adam_epoch(opt, bar)
            t_upd = time.perf_counter() - t0
            err, raw = self._epoch_errors()
            rec = {"epoch": epoch, **err, **raw, "time_s": time.perf_counter() - t0,
                   "cpu_time_s": time.process_time() - c0, "update_time_s": t_upd,
                   "updates": nup}
            if t["optimizer"] == "ekf":
                rec["gated_updates"] = opt.n_gated - gated0
            history.append(rec)
            self._log_epoch(rec)
            metric = self._metric(rec)
            if patience:
                if best is None or metric < best["metric"]:
                    best = {"epoch": epoch, "metric": metric, "w": self._model_weights()}
                elif epoch - best["epoch"] >= patience:
                    stop = True
            if self.cfg["output"]["checkpoint"]:
                self._save_checkpoint(epoch, opt, history, best)
        if patience and best is not None:
            self.w[:] = best["w"]
        else:
            self.w[:] = self._model_weights()
        self._core_mod.set_weights(self.core, self.w)
        self.history = history
        return self._finish(history)

    def _model_weights(self) -> np.ndarray:
        """The weights of the model that is evaluated and saved: the moving average of the
        optimiser's weights (training.ema_epochs > 0, once it has seen an update), else
        those weights themselves."""
        if self._avg is not None and self._avg.t > 0:
            return self._avg.value()
        return self.w.copy()

    def _epoch_errors(self) -> tuple:
        """RMSEs of the model (averaged weights) and, when averaging, the training RMSEs of
        the optimiser's own weights (keys ``*_raw``; the next epoch's threshold selection
        uses these, as n2p2 does its current weights')."""
        if self._avg is None or self._avg.t == 0:
            return self.errors(), {}
        raw = self.errors()
        self._core_mod.set_weights(self.core, self._avg.value())
        try:
            err = self.errors()
        finally:
            self._core_mod.set_weights(self.core, self.w)
        return err, {k + "_raw": raw[k] for k in ("rmse_E_train", "rmse_F_train")}

    def _resume_average(self, st: dict) -> None:
        """Weight average from a checkpoint; restarted (and said so) when the checkpoint has
        none or one with another time constant."""
        if self._avg is None:
            return
        a = st.get("average")
        if isinstance(a, dict) and isinstance(a.get("m"), np.ndarray) \
                and a["m"].shape == self._avg.m.shape \
                and float(a.get("decay", -1.0)) == self._avg.decay:
            self._avg.set_state(a)
        else:
            self.log("weight average restarted at the resumed epoch (the checkpoint holds "
                     "none with this training.ema_epochs)")

    def _metric(self, rec) -> float:
        m = self.cfg["training"]["early_stopping_metric"]
        suffix = "test" if self.test_idx.size else "train"
        e, f = rec[f"rmse_E_{suffix}"], rec[f"rmse_F_{suffix}"]
        if m == "energy" or not self.cfg["data"]["use_forces"]:
            return e
        if m == "force":
            return f
        return e + f

    def _log_epoch(self, r) -> None:
        self.log(f"epoch {r['epoch']:4d}  E rmse train {r['rmse_E_train']:.5f} test "
                 f"{r['rmse_E_test']:.5f} eV/atom   F rmse train {r['rmse_F_train']:.5f} test "
                 f"{r['rmse_F_test']:.5f} eV/A   {r['time_s']:.1f} s")

    # ------------------------------------------------------------------ outputs
    @property
    def potential(self):
        from ..potential import Potential
        return Potential(self.core.copy())

    def predict(self, indices: Optional[Sequence[int]] = None) -> dict:
        """Energies (eV) and forces (eV/Å) of the trainer's structures through
        :meth:`pyfragnn.Potential.compute` (the code path of ``FragNN``), gathered on all ranks."""
        from ..potential import Potential
        pot = Potential(self.core)
        idx = range(self.N) if indices is None else indices
        mine = [i for i in idx if self._owner(i) == self.rank]

        def one(i):
            s = self.structures[i]
            r = pot.compute(s.positions, s.symbols, s.cell, s.pbc, forces=True, virial=False)
            return r["energy"], r["forces"]

        res = self._gather_dict(dict(zip(mine, self._map(one, mine))))
        return {"energy": {i: res[i][0] for i in idx}, "forces": {i: res[i][1] for i in idx}}

    def rmse_table(self, pred: dict) -> List[dict]:
        """Per type label and set: RMSE of E/atom (eV/atom) and force components (eV/Å)."""
        rows = []
        labels = sorted(set(self.labels))
        for lab in labels + ["(all)"]:
            for name, idx in (("train", self.train_idx), ("test", self.test_idx)):
                sel = [int(i) for i in idx if lab == "(all)" or self.labels[i] == lab]
                if not sel:
                    continue
                de = [(pred["energy"][i] - self.structures[i].energy) / self.nat[i] for i in sel]
                sse, nf = 0.0, 0
                if self.cfg["data"]["use_forces"]:
                    for i in sel:
                        s = self.structures[i]
                        dF = (pred["forces"][i] - s.forces)[s.mask()]
                        sse += float((dF * dF).sum())
                        nf += dF.size
                rows.append({"label": lab, "set": name, "structures": len(sel),
                             "rmse_E_eV_atom": math.sqrt(np.mean(np.square(de))),
                             "rmse_F_eV_A": math.sqrt(sse / nf) if nf else float("nan"),
                             "force_components": nf})
        return rows

    def _finish(self, history) -> TrainResult:
        o = self.cfg["output"]
        out_dir = o["directory"]
        pred = self.predict()
        table = self.rmse_table(pred)
        pot = self.potential
        if self.rank == 0:
            pot.save(os.path.join(out_dir, "potential.fragnn"))
            if o["n2p2"]:
                pot.save_n2p2(os.path.join(out_dir, "n2p2"))
            from . import outputs
            outputs.write_learning_curve(history, out_dir, plots=o["plots"])
            outputs.write_rmse_table(table, out_dir)
            if self.dropped_sfs:
                outputs.write_dropped_symmetry_functions(self.dropped_sfs, out_dir)
            if o["plots"]:
                outputs.parity_plots(self, pred, out_dir)
            self.log(outputs.format_table(table))
        if self.comm is not None:
            self.comm.Barrier()
        return TrainResult(potential=pot, history=history, table=table, predictions=pred,
                           output_directory=out_dir)


def train(config: Dict[str, Any], structures: Optional[List[Structure]] = None,
          comm=None) -> TrainResult:
    """Train from a config dict (see :mod:`pyfragnn.training.config`); returns TrainResult."""
    return Trainer(config, structures=structures, comm=comm).run()

"""Optimisers: the global extended Kalman filter of RuNNer/n2p2 and Adam.

Kalman filter (n2p2 ``KalmanFilter``), one scalar observation per update with Jacobian h
(= d prediction / d w) and error e (= reference - prediction):

    x = P h;   a = h.x + R;   w += x e / a;   P <- s (P - x x^T / a) + q I

- ``kalman_type 0`` (standard): R = 1/eta, s = 1; after each update q <- max(q exp(-qtau), qmin)
  and eta <- min(eta exp(etatau), etamax); qtau and etatau are given per epoch and divided by
  the number of updates per epoch, as n2p2 does.
- ``kalman_type 1`` (fading memory): R = lambda, s = 1/lambda, q = 0;
  lambda <- nu lambda + 1 - nu.
- P starts as I/epsilon.

Innovation gate (``max_innovation`` = kappa > 0; not in n2p2, 0 switches it off): the
innovation variance a is raised to e^2 / kappa^2 when |e| > kappa sqrt(a), i.e. R is inflated
for that one observation so that its normalised innovation e^2 / a is at most kappa^2. The step
is then at most kappa long in the metric of P^-1 (|dw|_P = |e| sqrt(h.P h) / a <= kappa), and P
shrinks less (the observation is trusted less). Without it the filter corrects every error in
full (a ~ h.P h >> R): an error far outside the linear range of the networks (e.g. a force
component the networks, saturated, hardly respond to) moves the weights by O(10) in one update,
which saturates more neurons and makes the next such error larger (seen as RMSEs that rise and
fall from epoch to epoch). The gate is not rare once P has shrunk: on ../shared/bench (seed
12345, kappa 0.5) it damped 30, 279 and 1065 of the 7344 updates in epochs 1-3, nearly all force
updates (energy updates of the periodic cells: 0, 1, 7 of 180). The trainer exempts its energy
updates (``update(..., gate=False)``, config ``kalman.gate_energies``): the 7 gated cell updates
of epoch 3 were those of the densest cells, whose energies the filter forgets between their one
update per epoch (docs/training.md), and gating left them half-corrected.

Implementation (default): P is held as sigma (P0 - U U^T) with up to ``rank_block`` deferred rank-1
terms in U, so an update reads P0 once (one GEMV, memory bound) instead of three passes
(SYMV, SYR, diagonal); every ``rank_block`` updates the columns are folded into P0 with one
GEMM done in row blocks. With MPI (``comm``), P0 is split by rows over the ranks: each rank multiplies
its rows, the products are all-gathered, and every rank applies the same small vector algebra,
so all ranks hold identical weights. The compiled block kernels (``kf_block_*``) keep of each
rank's diagonal block only the lower triangle (serially: half of P is read and folded, as with
SYMV/SYRK) and sum every element in one fixed order (eight lanes j % 8 per row, no FMAs), so any
row split, and any instruction set, gives the same bits. The element-decoupled variant (``blocks``) keeps one
covariance per weight block (block-diagonal P, e.g. one per element) and shares the innovation
variance a = sum_b h_b.P_b h_b + R between the blocks (decoupled EKF of Puskorius & Feldkamp),
so memory and work drop by the number of blocks. This is exactly the global update with the
cross-element covariances held at zero. It is not n2p2's ``update_strategy 1``
(element-decoupled), which runs fully independent filters, each with its own
a_e = h_e.P_e h_e + R and a share of the error (energy: N_e/N of the total-energy error; force:
the fraction of the atom's neighbours of element e).
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["KalmanFilter", "Adam", "WeightAverage"]


@functools.lru_cache(maxsize=1)
def _blas_controllers() -> tuple:
    """threadpoolctl's controllers of the BLAS libraries loaded now (numpy's and scipy's
    OpenBLAS, MKL, ...); looked up once, since a look-up costs about a millisecond."""
    from threadpoolctl import ThreadpoolController
    _scipy_blas()  # the symmetric filter calls scipy's BLAS: have it loaded before the look-up
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


class blas_threads:
    """Context manager: the loaded BLAS libraries on n threads (threadpoolctl); no-op for None
    or 0. Cheap enough (microseconds) to wrap every Kalman update."""

    def __init__(self, n: Optional[int]):
        self.n = n
        self.old: list = []

    def __enter__(self):
        if self.n:
            for lib in _blas_controllers():
                old = lib.get_num_threads()
                if old != self.n:
                    lib.set_num_threads(int(self.n))
                    self.old.append((lib, old))
        return self

    def __exit__(self, *exc):
        for lib, old in self.old:
            lib.set_num_threads(old)
        self.old = []
        return False


def _kf_kernels():
    """Block kernels of the compiled core (fixed summation order; one triangle of the diagonal
    block), or None."""
    try:
        from .. import _core
        return _core.kf_block_times_vector, _core.kf_block_downdate
    except (ImportError, AttributeError):
        return None


def _scipy_blas():
    try:
        from scipy.linalg import blas
        return blas
    except ImportError:  # pragma: no cover
        return None


class _KFBlock:
    """Covariance of one weight block [lo, hi), rows [r0, r1) of it on this rank."""

    def __init__(self, lo: int, hi: int, epsilon: float, rank_block: int, comm,
                 symmetric: bool = False):
        self.lo, self.hi = lo, hi
        n = hi - lo
        self.n = n
        self.comm = comm
        size = comm.Get_size() if comm is not None else 1
        rank = comm.Get_rank() if comm is not None else 0
        bounds = [n * k // size for k in range(size + 1)]
        self.bounds = bounds
        self.r0, self.r1 = bounds[rank], bounds[rank + 1]
        self.counts = [bounds[k + 1] - bounds[k] for k in range(size)]
        self.P0 = np.zeros((self.r1 - self.r0, n))
        self._diag()[:] = 1.0 / epsilon
        # symmetric (serial only): only the lower triangle (C order) of P0 is kept up to date
        # and used, through BLAS SYMV/SYRK on its Fortran view (half the memory traffic).
        # Default: the core's fixed-order block kernels on this rank's rows: columns left and
        # right of the diagonal block in full, of the diagonal block [r0, r1)^2 only the lower
        # triangle (its upper one is stale; full_matrix() mirrors it). P stays bit-symmetric
        # (set_full_matrix() makes it so), so any split of the rows over MPI ranks, serial
        # included, gives bit-identical results; serially this reads half of P, as SYMV does.
        self.blas = _scipy_blas() if (symmetric and comm is None) else None
        self.sym = self.blas is not None
        self.kern = None if self.sym else _kf_kernels()
        self.K = max(1, int(rank_block))
        self.U = np.zeros((n, self.K))
        self.m = 0
        self.sigma = 1.0
        self.y = np.empty(n)

    def _diag(self):
        # diagonal entries of the local row block: flat index i*n + r0 + i
        return self.P0.reshape(-1)[self.r0::self.n + 1][: self.r1 - self.r0]

    def multiply(self, h: np.ndarray) -> np.ndarray:
        """P h."""
        if self.sym:
            self.y[:] = self.blas.dsymv(1.0, self.P0.T, h, lower=0)
        elif self.comm is None:
            if self.kern is not None:
                self.kern[0](self.P0, 0, np.ascontiguousarray(h), self.y)
            else:
                np.dot(self.P0, h, out=self.y)
        else:
            if self.kern is not None:
                loc = np.empty(self.r1 - self.r0)
                self.kern[0](self.P0, self.r0, np.ascontiguousarray(h), loc)
            else:
                loc = self.P0 @ h
            self.comm.Allgatherv(loc, [self.y, self.counts])
        y = self.y
        if self.m:
            Um = self.U[:, : self.m]
            y -= Um @ (Um.T @ h)
        if self.sigma != 1.0:
            y *= self.sigma
        return y

    def downdate(self, x: np.ndarray, a: float, s: float, q: float) -> None:
        """P <- s (P - x x^T / a) + q I."""
        self.U[:, self.m] = x / math.sqrt(a * self.sigma)
        self.m += 1
        self.sigma *= s
        if q != 0.0:
            self._diag()[:] += q / self.sigma
        if self.m == self.K:
            self.flush()

    def flush(self) -> None:
        """Fold the deferred columns and the scale into P0."""
        if self.m == 0 and self.sigma == 1.0:
            return
        if self.m and self.sym:
            Uf = np.asfortranarray(self.U[:, : self.m])
            c = self.blas.dsyrk(-self.sigma, Uf, beta=self.sigma, c=self.P0.T, trans=0, lower=0,
                                overwrite_c=1)
            if not np.shares_memory(c, self.P0):  # pragma: no cover - scipy copied
                self.P0[:] = c.T
        elif self.m and self.kern is not None:
            UmT = np.ascontiguousarray(self.U[:, : self.m].T)
            Uloc = np.ascontiguousarray(self.U[self.r0:self.r1, : self.m])
            self.kern[1](self.P0, self.r0, Uloc, UmT, self.sigma)
        elif self.m:
            UmT = np.ascontiguousarray(self.U[:, : self.m].T)
            Uloc = np.ascontiguousarray(self.U[self.r0:self.r1, : self.m])
            step = max(1, (1 << 21) // max(self.n, 1))  # ~16 MB temporaries
            for a in range(0, self.r1 - self.r0, step):
                blk = self.P0[a:a + step]
                blk -= Uloc[a:a + step] @ UmT
                if self.sigma != 1.0:
                    blk *= self.sigma
        else:
            self.P0 *= self.sigma
        self.sigma = 1.0
        self.m = 0
        self.U[:] = 0.0

    def full_matrix(self) -> Optional[np.ndarray]:
        """The whole P (rank 0 only under MPI; None elsewhere)."""
        self.flush()
        if self.comm is None:
            if self.sym or self.kern is not None:
                low = np.tril(self.P0)
                return low + np.tril(self.P0, -1).T
            return self.P0.copy()
        rank = self.comm.Get_rank()
        out = np.empty((self.n, self.n)) if rank == 0 else None
        counts = [c * self.n for c in self.counts]
        loc = np.array(self.P0)
        if self.kern is not None:  # the diagonal block's upper triangle from its lower one
            blk = loc[:, self.r0:self.r1]
            iu = np.triu_indices(self.r1 - self.r0, 1)
            blk[iu] = blk.T[iu]
        self.comm.Gatherv(loc, [out, counts] if rank == 0 else None, root=0)
        return out

    def set_full_matrix(self, P: Optional[np.ndarray]) -> None:
        """Scatter a full P from rank 0 (or set it in serial); P is made exactly symmetric (its
        lower triangle mirrored), which the row split's bit-identity needs."""
        self.flush()
        if P is not None:
            P = np.asarray(P, dtype=np.float64)
            P = np.tril(P) + np.tril(P, -1).T
        if self.comm is None:
            self.P0[:] = P
            return
        counts = [c * self.n for c in self.counts]
        self.comm.Scatterv([P, counts] if self.comm.Get_rank() == 0 else None, self.P0, root=0)


class KalmanFilter:
    """Global (or element-decoupled) extended Kalman filter on a weight vector.

    Parameters
    ----------
    n : number of weights.
    kalman_type : 0 standard (epsilon, q0, qtau, qmin, eta, etatau, etamax) or 1 fading
        memory (epsilon, lambda_, nu).
    updates_per_epoch : divides qtau and etatau (n2p2 convention: decay given per epoch).
    blocks : optional weight offsets [0, n1, ..., n] for the element-decoupled variant.
    rank_block : number of deferred rank-1 terms between folds into P.
    comm : mpi4py communicator (rows of P distributed) or None.
    symmetric : serial only: keep one triangle of P and use BLAS SYMV/SYRK (half the memory
        traffic, fastest serial filter); its round-off differs from the row-split kernels used
        by default and under MPI, so serial and MPI runs then no longer agree bit for bit.
    threads : BLAS threads for the covariance products (default 1: the products are memory
        bound, and extra threads lose badly on shared or oversubscribed cores).
    max_innovation : innovation gate kappa (see the module docstring); 0: off (n2p2).
    """

    def __init__(self, n: int, kalman_type: int = 0, epsilon: float = 1e-2, q0: float = 0.01,
                 qtau: float = 2.302, qmin: float = 1e-6, eta: float = 0.01,
                 etatau: float = 2.302, etamax: float = 1.0, lambda_: float = 0.96,
                 nu: float = 0.99987, updates_per_epoch: int = 1,
                 blocks: Optional[Sequence[int]] = None, rank_block: int = 64, comm=None,
                 threads: Optional[int] = None, symmetric: bool = False,
                 max_innovation: float = 0.0):
        if kalman_type not in (0, 1):
            raise ValueError(f"kalman_type must be 0 (standard) or 1 (fading memory), "
                             f"got {kalman_type}")
        if not epsilon > 0:
            raise ValueError(f"kalman epsilon must be > 0, got {epsilon}")
        self.n = int(n)
        self.kalman_type = kalman_type
        self.q = float(q0) if kalman_type == 0 else 0.0
        upe = max(1, int(updates_per_epoch))
        self.qdecay = math.exp(-float(qtau) / upe)
        self.qmin = float(qmin)
        self.eta = float(eta)
        self.etagrow = math.exp(float(etatau) / upe)
        self.etamax = float(etamax)
        self.lambda_ = float(lambda_)
        self.nu = float(nu)
        if kalman_type == 0 and not eta > 0:
            raise ValueError(f"kalman eta must be > 0, got {eta}")
        if kalman_type == 1 and not (0 < lambda_ <= 1 and 0 < nu <= 1):
            raise ValueError("kalman lambda and nu must lie in (0, 1]")
        bounds = list(blocks) if blocks is not None else [0, self.n]
        if bounds[0] != 0 or bounds[-1] != self.n or any(b > c for b, c in zip(bounds, bounds[1:])):
            raise ValueError("blocks must be increasing offsets from 0 to n")
        self.blocks: List[_KFBlock] = [_KFBlock(lo, hi, epsilon, rank_block, comm, symmetric)
                                       for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        self.threads = 1 if threads is None else int(threads)
        if not max_innovation >= 0:
            raise ValueError(f"max_innovation must be >= 0, got {max_innovation}")
        self.max_innovation = float(max_innovation)
        self.n_updates = 0
        self.n_gated = 0

    def update(self, w: np.ndarray, h: np.ndarray, error: float, gate: bool = True) -> None:
        """One scalar observation: w (in place) with Jacobian h and error e = ref - pred;
        ``gate=False`` exempts it from the innovation gate."""
        if self.kalman_type == 0:
            R, s = 1.0 / self.eta, 1.0
        else:
            R, s = self.lambda_, 1.0 / self.lambda_
        with blas_threads(self.threads):
            # Decoupled EKF (Puskorius & Feldkamp): block-diagonal P, one shared innovation
            # variance a = sum_b h_b.P_b h_b + R; with one block this is the global filter.
            xs = []
            a = R
            for b in self.blocks:
                hb = h[b.lo:b.hi]
                x = b.multiply(hb)
                xs.append(x.copy() if len(self.blocks) > 1 else x)
                a += float(hb @ x)
            k = self.max_innovation
            if gate and k > 0.0 and error * error > k * k * a:
                a = error * error / (k * k)
                self.n_gated += 1
            for b, x in zip(self.blocks, xs):
                w[b.lo:b.hi] += x * (error / a)
                b.downdate(x, a, s, self.q)
        self.n_updates += 1
        if self.kalman_type == 0:
            self.q = max(self.q * self.qdecay, self.qmin)
            self.eta = min(self.eta * self.etagrow, self.etamax)
        else:
            self.lambda_ = self.nu * self.lambda_ + 1.0 - self.nu

    def flush(self) -> None:
        with blas_threads(self.threads):
            for b in self.blocks:
                b.flush()

    # --- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        """Scalars and (rank 0) full covariance blocks; call on all ranks."""
        Ps = [b.full_matrix() for b in self.blocks]
        return {"q": self.q, "eta": self.eta, "lambda": self.lambda_,
                "n_updates": self.n_updates, "n_gated": self.n_gated, "P": Ps}

    def set_state(self, st: dict) -> None:
        self.q, self.eta, self.lambda_ = float(st["q"]), float(st["eta"]), float(st["lambda"])
        self.n_updates = int(st["n_updates"])
        self.n_gated = int(st.get("n_gated", 0))
        for b, P in zip(self.blocks, st["P"]):
            b.set_full_matrix(P)


class Adam:
    """Adam (Kingma & Ba) on a weight vector, in place."""

    def __init__(self, n: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"adam learning_rate must be > 0, got {lr}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError("adam beta1 and beta2 must lie in [0, 1)")
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(beta1), float(beta2), float(eps)
        self.m = np.zeros(n)
        self.v = np.zeros(n)
        self.t = 0

    def step(self, w: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        self.m *= b1
        self.m += (1 - b1) * grad
        self.v *= b2
        self.v += (1 - b2) * grad * grad
        mhat = self.m / (1 - b1 ** self.t)
        vhat = self.v / (1 - b2 ** self.t)
        w -= self.lr * mhat / (np.sqrt(vhat) + self.eps)

    def state(self) -> dict:
        return {"m": self.m.copy(), "v": self.v.copy(), "t": self.t, "lr": self.lr}

    def set_state(self, st: dict) -> None:
        self.m[:] = st["m"]
        self.v[:] = st["v"]
        self.t = int(st["t"])
        self.lr = float(st["lr"])


class WeightAverage:
    """Exponential moving average of the weights over the optimiser's updates, bias-corrected
    (Polyak-Ruppert averaging with forgetting; the "EMA" of the MACE and NequIP trainers):

        m <- d m + (1 - d) w   after each update,   w_avg = m / (1 - d^t),   d = exp(-1/tau)

    tau in updates (the trainer gives it as a fraction of an epoch). The optimiser keeps
    working on w; w_avg is the model that is evaluated and saved. It smooths the last updates'
    fluctuations: on ../shared/bench (EKF, 3 epochs, tau 0.1 epoch) the fragments' energy
    RMSE drops by 25-40 % and the force RMSE by ~5 %.
    """

    def __init__(self, n: int, tau: float):
        if not tau > 0:
            raise ValueError(f"weight averaging time constant must be > 0, got {tau}")
        self.decay = math.exp(-1.0 / float(tau))
        self.m = np.zeros(int(n))
        self.t = 0

    def update(self, w: np.ndarray) -> None:
        self.m *= self.decay
        self.m += (1.0 - self.decay) * w
        self.t += 1

    def value(self) -> np.ndarray:
        """The averaged weights (a new array); undefined before the first update."""
        if self.t == 0:
            raise RuntimeError("WeightAverage.value() before any update")
        return self.m / (1.0 - self.decay ** self.t)

    def state(self) -> dict:
        return {"m": self.m.copy(), "t": self.t, "decay": self.decay}

    def set_state(self, st: dict) -> None:
        self.m[:] = st["m"]
        self.t = int(st["t"])
        self.decay = float(st["decay"])

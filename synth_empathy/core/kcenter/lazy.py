"""The lazy exact greedy on the CPU: ``exact``, and ``fast`` with a low-precision ranking.

The same picks as the plain farthest-first (ties to the lowest row index; float32
rounding can flip a near-tie closer than ~1e-7), from two ideas, neither of which
changes a pick:

1. *Lazy bounds.* Each row keeps its distance to the first ``last[i]`` centers, an upper
   bound on its distance to the whole chosen set. Only rows whose bound reaches the top
   are brought up to date, so a row that came close to some center early is never
   compared with the later ones (the share of the plain form's row x center distances
   evaluated is ``details["evaluated_fraction"]``; measured shares: benchmarks/README.md,
   "k-center selection").
2. *Several exact picks per round.* Once the top ``pool_size`` rows are up to date,
   farthest-first runs inside that pool (one pool x pool product) for as long as the
   pool's best row beats the largest bound outside it, which makes it the global
   farthest row. Bounds are refreshed with blocked matrix products (BLAS 3, module
   ``products``) instead of one memory-bound pass per pick.

With ``fast`` a refresh keeps the float32 distance to the nearest new center as ranked in
low precision (bound in the package docstring). FAISS's flat index computes the same BLAS
product plus a min, but cannot give each row its own range of new centers, which the lazy
bounds need, so the products are called directly.
"""

from __future__ import annotations

import numpy as np

from synth_empathy.core.kcenter.products import RANKINGS, _Numpy, _ranking, _Torch
from synth_empathy.core.kcenter.rows import _check_matrix, _prepare, with_copies
from synth_empathy.errors import SelectionError

_ROWS, _CENTERS = 4096, 2048  # one product block: 32 MiB of float32
_APPROX_MIN_CENTERS = 256


class _Lazy:
    """Lazy farthest-first over distinct rows.

    ``u[i]`` is row i's squared distance to the first ``last[i]`` centers: exact for that
    prefix (up to float32 rounding) and an upper bound for the whole chosen set.
    ``u = -1`` marks a chosen row. With ``approx`` (``bfloat16`` or ``int8``, a key of
    :data:`RANKINGS`), a refresh keeps the float32 distance to the nearest center *as
    ranked in that precision*: still an upper bound, and above the exact one only when
    two centers are within the ranking error of each other.
    """

    def __init__(self, xs: np.ndarray, orig: np.ndarray, k: int, be, approx=None):
        self.xs, self.orig, self.be, self.approx = xs, orig, be, approx
        self.n, self.d = xs.shape
        self.xn = np.einsum("ij,ij->i", xs, xs)
        self.u = np.full(self.n, np.inf, dtype=np.float32)
        self.last = np.zeros(self.n, dtype=np.int64)
        cap = min(k, self.n)
        self.cpos = np.empty(cap, dtype=np.int64)
        self.nc = 0
        self.pairs = 0  # row x center distances evaluated
        self.passes = 0  # refresh calls
        if be.host:
            self.gx, self.gxn = xs, self.xn
            self.gc2 = np.empty((cap, self.d), dtype=np.float32)  # -2 x centers, pick order
            self.gcn = np.empty(cap, dtype=np.float32)
        else:
            self.gx, self.gxn = be.put(xs), be.put(self.xn)
            self.gc2 = be.t.empty((cap, self.d), dtype=be.t.float32, device=be.dev)
            self.gcn = be.t.empty(cap, dtype=be.t.float32, device=be.dev)
        if approx is not None:
            self.approx = RANKINGS[approx](xs, self.xn, cap)

    def add_centers(self, pos: np.ndarray):
        a, b = self.nc, self.nc + len(pos)
        p = pos if self.be.host else self.be.put(pos)
        self.gc2[a:b] = -2.0 * self.gx[p]
        self.gcn[a:b] = self.gxn[p]
        if self.approx is not None:
            self.approx.add(a, b, pos)
        self.cpos[a:b] = pos
        self.nc = b
        self.u[pos] = -1.0
        self.last[pos] = b

    def _exact_min(self, g: np.ndarray, a: int, upto: int) -> np.ndarray:
        be = self.be
        gi = g if be.host else be.put(g)
        xr, xrn = self.gx[gi], self.gxn[gi]
        best = self.u[g]
        for c in range(a, upto, _CENTERS):
            e = min(upto, c + _CENTERS)
            best = np.minimum(best, be.get(be.min_sqdist(xr, xrn, self.gc2[c:e], self.gcn[c:e])))
        return best

    def _near_min(self, g: np.ndarray, a: int, upto: int) -> np.ndarray:
        # Gathers and merges in numpy: each torch call is a parallel region whose barrier
        # stalls when other processes hold the cores, so only the products go to torch.
        xr = self.approx.rows(g)
        bv = np.full(len(g), np.inf, dtype=np.float32)
        bi = np.zeros(len(g), dtype=np.int64)
        for c in range(a, upto, _CENTERS):
            e = min(upto, c + _CENTERS)
            v, j = self.approx.min_arg(xr, c, e)
            v, j = v[: len(g)], j[: len(g)]  # a padded block's extra rows
            take = v < bv
            bv[take] = v[take]
            bi[take] = j[take] + c
        near = self.cpos[bi]
        dot = np.einsum("ij,ij->i", self.xs[g], self.xs[near])
        d2 = np.maximum(self.xn[g] + self.xn[near] - 2.0 * dot, 0.0)
        return np.minimum(self.u[g], d2)

    def refresh(self, rows: np.ndarray, upto: int | None = None, exact: bool = False):
        """Bring the bounds of ``rows`` up to date with the first ``upto`` centers."""
        upto = self.nc if upto is None else upto
        rows = rows[(self.last[rows] < upto) & (self.u[rows] >= 0)]
        if rows.size == 0:
            return
        self.passes += 1
        rows = rows[np.argsort(self.last[rows], kind="stable")]
        cuts = np.flatnonzero(np.diff(self.last[rows])) + 1
        for grp in np.split(rows, cuts):  # rows sharing a prefix share one product
            a = int(self.last[grp[0]])
            # Against a few new centers the fixed cost of the ranking pass (gathers, the
            # float32 recheck) outweighs its faster product: stay exact there.
            near = self.approx is not None and not exact and upto - a >= _APPROX_MIN_CENTERS
            for s in range(0, len(grp), _ROWS):
                g = grp[s : s + _ROWS]
                self.u[g] = self._near_min(g, a, upto) if near else self._exact_min(g, a, upto)
                self.pairs += len(g) * (upto - a)
        self.last[rows] = upto

    def _top(self, size: int) -> np.ndarray:
        """The ``size`` live rows with the largest bounds, ties to the lowest index."""
        u = self.u
        size = min(size, self.n - self.nc)
        if size <= 0:
            return np.zeros(0, dtype=np.int64)
        cand = np.argpartition(u, self.n - size)[self.n - size :]
        thr = u[cand].min()
        above = cand[u[cand] > thr]
        ties = np.flatnonzero(u == thr)
        ties = ties[np.argsort(self.orig[ties], kind="stable")]
        return np.concatenate([above, ties[: size - len(above)]])

    def fresh_pool(self, size: int):
        """The top ``size`` rows, all up to date, and ``(bound, lowest original index)``
        of the best row outside them, or ``(-inf, -1)``."""
        while True:
            wide = self._top(2 * size)
            order = np.lexsort((self.orig[wide], -self.u[wide]))
            pool, rest = wide[order[:size]], wide[order[size:]]
            stale = wide[self.last[wide] < self.nc]
            if not np.isin(pool, stale).any():
                break
            # Refreshing twice the pool's worth of stale rows per pass needs far fewer
            # passes: most refreshed bounds drop and make room for the next stale ones.
            self.refresh(stale)
        if rest.size == 0:
            return pool, (-np.inf, -1)
        tau = self.u[rest[0]]
        tied = np.flatnonzero(self.u == tau)
        tied = tied[~np.isin(tied, pool)]
        return pool, (float(tau), int(self.orig[tied].min()))

    def round(self, want: int, size: int):
        """Picks inside a fresh pool while its best row beats every row outside.

        Returns (positions, squared distances at pick).
        """
        pool, (tau, tau_orig) = self.fresh_pool(size)
        if pool.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        pool = pool[np.argsort(self.orig[pool], kind="stable")]  # argmax ties -> lowest index
        porig = self.orig[pool]
        pm = self.u[pool].copy()
        if self.be.host:
            g = self.be.sqdist(self.xs[pool], self.xn[pool], self.xs[pool], self.xn[pool])
        else:
            p = self.be.put(pool)
            g = self.be.get(self.be.sqdist(self.gx[p], self.gxn[p], self.gx[p], self.gxn[p]))
        picks, vals = [], []
        while len(picks) < want:
            j = int(np.argmax(pm))
            v = pm[j]
            if v < 0 or not (v > tau or (v == tau and porig[j] < tau_orig)):
                break
            picks.append(j)
            vals.append(v)
            np.minimum(pm, g[j], out=pm)
            pm[j] = -1.0
        picks = np.asarray(picks, dtype=np.int64)
        self.u[pool] = pm  # the pool rows are now up to date with the new centers too
        self.add_centers(pool[picks])
        self.last[pool] = self.nc
        return pool[picks], np.asarray(vals, dtype=np.float32)

    def radius(self, batch: int = 1024) -> float:
        """Exact covering radius (float32) of the chosen centers over all rows."""
        if self.approx is not None:
            # bf16-ranked bounds are upper bounds, not exact: re-check the top ones fully.
            self.last[self.u >= 0] = 0
        while self.nc < self.n:
            top = self._top(batch)
            best = top[np.argmax(self.u[top])]
            if self.last[best] == self.nc:
                return float(np.sqrt(max(float(self.u[best]), 0.0)))
            self.refresh(top, exact=True)
        return 0.0


def greedy(x, k: int, start: int, *, fast: bool = False, pool_size: int = 2048):
    """Lazy farthest-first on the CPU from row ``start``: (indices, distance_at_pick,
    radius, details, device name), as :func:`synth_empathy.core.kcenter.device.greedy`.
    ``x`` checked, ``k`` resolved and ``start`` a row index (:func:`greedy._greedy`)."""
    n = x.shape[0]
    be = _Numpy()
    uniq, rep, xs = _prepare(x)
    approx = _ranking() if fast else None
    if approx is not None:
        # All products through torch then: numpy's BLAS threads and torch's OpenMP
        # threads, each spinning while the other works, would fight over the cores.
        be = _Torch("cpu")
    eng = _Lazy(xs, uniq, k, be, approx)
    first = int(np.searchsorted(uniq, rep[start]))
    eng.add_centers(np.array([first]))
    eng.refresh(np.arange(eng.n))  # every bound against the start
    picks, vals = [np.array([first])], [np.array([np.inf])]
    got, rounds = 1, 0
    while got < min(k, eng.n):
        p, v = eng.round(k - got, pool_size)
        if len(p) == 0:
            break
        picks.append(p)
        vals.append(np.sqrt(v.astype(np.float64)))
        got += len(p)
        rounds += 1
    idx = eng.orig[np.concatenate(picks)]
    idx[0] = start  # the start row itself, even when it repeats an earlier row
    dist = np.concatenate(vals)
    radius = eng.radius()
    idx, dist = with_copies(idx, dist, n, k)
    details = {
        "rows": n,
        "distinct_rows": int(eng.n),
        "dim": int(eng.d),
        "rounds": rounds,
        "pool_size": pool_size,
        "refresh_passes": eng.passes,
        "products": f"{approx} ranking, float32 distances" if approx is not None else "float32",
        # E of the ranking's bound (module products), measured on this input (int8; bf16's is a priori)
        "ranking_error_bound": None if approx is None else eng.approx.error_bound(),
        "int8_levels": getattr(eng.approx, "levels", None),
        "distance_evaluations": int(eng.pairs),
        # share of the plain form's N x k row-center distances that were evaluated
        "evaluated_fraction": round(eng.pairs / max(1.0, float(n) * k), 4),
    }
    return idx.astype(np.int64), dist, radius, details, "cpu" if approx is not None else be.name


def covering_radius(x: np.ndarray, indices) -> float:
    """Max over rows of the Euclidean distance to the nearest row in ``indices``.

    Exact (float32); uses the same lazy bounds, so a row that is close to an early
    center is not compared with the rest.
    """
    x = _check_matrix(x)
    idx = np.asarray(indices).ravel()
    if idx.size == 0:
        raise SelectionError("no selected rows to measure the covering radius from")
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(x):
        raise SelectionError(f"selected indices must be row indices in [0, {len(x)})")
    uniq, rep, xs = _prepare(x)
    pos = np.searchsorted(uniq, rep[idx])
    _, keep = np.unique(pos, return_index=True)
    pos = pos[np.sort(keep)]  # distinct, in the given order
    eng = _Lazy(xs, uniq, len(pos), _Numpy())
    eng.add_centers(pos)
    # Bounds from the first centers (in pick order these are spread out), then lazily.
    eng.refresh(np.arange(eng.n), upto=min(eng.nc, _CENTERS))
    return eng.radius()

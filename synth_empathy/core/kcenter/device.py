"""Greedy k-center resident on one torch device: a CUDA GPU, or the CPU so CI runs it.

The plain greedy on a GPU makes one pass over all N rows per pick and reads the newest
center's distances back to the host (``int(argmax)``) before the next: bound by memory
(N d 4 bytes per pick) and by one host round trip per pick. The CPU's lazy bounds
(module ``lazy``) need per-row bookkeeping that would keep a GPU waiting on the host.
Here nothing leaves the device inside a round, and a round makes many exact picks:

1. *Pool.* The ``pool_size`` rows farthest from the chosen set (``topk`` of ``md``, every
   row's squared distance to its nearest center, exact) and ``tau``, the largest
   distance outside them.
2. *Picks inside the pool.* Farthest-first runs over the pool's own distance matrix
   (one pool x pool product) while the pool's best row is farther than ``tau``: then it
   is the farthest row of all, the plain greedy's pick. Each step is argmax, one row of
   the matrix, one ``minimum``; on CUDA the steps are replayed from a captured CUDA graph
   in chunks, with one host read per few chunks, not per pick.
3. *Update.* Every live row's ``md`` against the round's new centers: one N x b matrix
   product (tensor-core friendly) instead of b memory-bound passes. Chosen rows leave
   the live arrays once they are half of them, so at keep 90 % late rounds touch few rows.

Modes:

* ``exact`` - IEEE float32 products (TF32 off): the plain greedy's picks up to float32
  near-ties (ties to the lowest row index), its covering radius, so 2 x OPT.
* ``fast`` - the products in TF32 on a CUDA GPU (10-bit mantissa). Every squared distance
  is then within ``E = (2**-9 + 2 d 2**-24) max|x|^2`` of its float32 value (input
  rounding of both factors plus float32 accumulation), so each pick is farthest up to
  ``2E`` and the covering radius is at most ``sqrt((2 OPT)^2 + 2E)``. The radius reported
  is recomputed in float32 for every row within ``2E`` of the top (exact); when too many
  rows are that close, the float32 bound ``sqrt(max md + E)`` is reported and marked.
  On the CPU ``fast`` is ``exact`` (torch has no faster float32 product there).

Storage: float32 by default; ``float16`` (or ``bfloat16``) halves the device memory for
inputs that would not fit. Distances are then exact distances between the *stored*
points, each within ``2**-11 max|x|`` (float16; ``2**-8`` for bfloat16) of its input
row, so the radius is off by at most twice that from the float32 one.

Exact duplicate rows are collapsed on the device first (a hash of the stored bits, then
a row compare), as on the CPU path: a copy is picked only once every distinct row is.
Measured times against the plain GPU greedy: benchmarks/README.md, "On one GPU: the
device-resident engine".
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from synth_empathy.core.kcenter.rows import with_copies
from synth_empathy.errors import SelectionError

STORAGE_DTYPES = ("auto", "float32", "float16", "bfloat16")
# Relative rounding of a stored element (half a unit in the last place).
_STORAGE_UNIT = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
_TEMP_BYTES = 256 << 20  # one product block's output
_FIT_SHARE = 0.45  # float32 storage when it takes at most this share of free GPU memory
_RECHECK_ROWS = 1 << 16  # fast mode: rows re-measured in float32 for the radius, at most
_STEPS = 32  # picks per captured CUDA graph


def _torch():
    import torch

    return torch


def resolve_device(device: str):
    """``cuda``, ``cuda:i`` or ``torch-cpu`` (the same code on the CPU) as a torch device."""
    torch = _torch()
    if device == "torch-cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SelectionError(f"device {device!r} asked for, but no GPU is visible")
        return torch.device(device)
    raise SelectionError(f"device must be auto, cpu, torch-cpu or cuda, got {device!r}")


def _name(dev) -> str:
    return "torch-cpu" if dev.type == "cpu" else str(dev)


@contextlib.contextmanager
def _fp32_products(tf32: bool):
    """Float32 matrix products in IEEE float32 (``exact``) or TF32 (``fast``), restored after."""
    torch = _torch()
    m = torch.backends.cuda.matmul
    new_api = hasattr(m, "fp32_precision")
    old = m.fp32_precision if new_api else m.allow_tf32
    try:
        if new_api:
            m.fp32_precision = "tf32" if tf32 else "ieee"
        else:
            m.allow_tf32 = tf32
        yield
    finally:
        if new_api:
            m.fp32_precision = old
        else:
            m.allow_tf32 = old


def _oom(dev, needed: int, what: str, storage: str) -> SelectionError:
    torch = _torch()
    free = ""
    if dev.type == "cuda":
        f, total = torch.cuda.mem_get_info(dev)
        free = f" ({f / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
    lower = (
        "diversity.storage_dtype=float16 halves it" if storage == "float32" else "the storage dtype is already 16-bit"
    )
    return SelectionError(
        f"selection ran out of memory on {_name(dev)}{free}: {what} needs {needed / 2**30:.1f} GiB; "
        f"{lower}, diversity.shards=N splits the rows over N GPUs (one shard each)"
    )


def choose_storage(requested: str, n: int, d: int, dev, top: float, resident: bool = False) -> tuple[str, str]:
    """(storage dtype, why): ``auto`` is float32 when it fits comfortably, else float16
    (bfloat16 when the values exceed float16's range)."""
    if requested not in STORAGE_DTYPES:
        raise SelectionError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {requested!r}")
    if requested != "auto":
        if requested == "float16" and top >= 6.0e4:
            raise SelectionError(f"embeddings reach |x| = {top:.3g}, beyond float16's range; use bfloat16")
        return requested, "set in the config"
    if dev.type != "cuda":
        return "float32", "CPU memory"
    if resident:
        return "float32", "the float32 input is already on the device"
    free, _ = _torch().cuda.mem_get_info(dev)
    need = n * d * 4
    if need <= _FIT_SHARE * free:
        return "float32", f"{need / 2**30:.1f} GiB fits in {free / 2**30:.1f} GiB free"
    half = "float16" if top < 6.0e4 else "bfloat16"
    return half, f"float32 would take {need / 2**30:.1f} GiB of {free / 2**30:.1f} GiB free"


# ----------------------------------------------------------------------------- input


def to_device(x, dev, storage: str):
    """The matrix on ``dev`` in the storage dtype, moved in blocks (a float16 input is never
    widened on the host), with the NaN / infinity check on the way."""
    torch = _torch()
    dt = getattr(torch, storage)
    n, d = x.shape
    if isinstance(x, torch.Tensor) and x.device == dev and x.dtype == dt and x.is_contiguous():
        _check_finite(x)
        return x  # read only from here on: no second copy of a large input
    try:
        out = torch.empty((n, d), dtype=dt, device=dev)
    except torch.OutOfMemoryError:
        raise _oom(dev, n * d * dt.itemsize, f"the {n:,} x {d} embeddings as {storage}", storage) from None
    step = max(1, _TEMP_BYTES // (8 * d))
    for i in range(0, n, step):
        blk = x[i : i + step]
        blk = blk.to(dev) if isinstance(blk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(blk)).to(dev)
        bad = ~torch.isfinite(blk).all(dim=1)
        if bool(bad.any()):
            raise SelectionError(f"row {i + int(torch.nonzero(bad)[0])}: embedding has NaN or infinite values")
        out[i : i + step] = blk.to(dt)
    return out


def _check_finite(x):
    torch = _torch()
    step = max(1, _TEMP_BYTES // (8 * x.shape[1]))
    for i in range(0, x.shape[0], step):
        bad = ~torch.isfinite(x[i : i + step]).all(dim=1)
        if bool(bad.any()):
            raise SelectionError(f"row {i + int(torch.nonzero(bad)[0])}: embedding has NaN or infinite values")


def max_abs(x) -> float:
    """Largest |value| (NaN/inf as inf), block by block: no full-size temporary."""
    torch = _torch()
    step = max(1, _TEMP_BYTES // (8 * max(1, x.shape[1])))
    top = 0.0
    for i in range(0, x.shape[0], step):
        b = x[i : i + step]
        m = float(b.abs().max()) if isinstance(b, torch.Tensor) else float(np.abs(b).max(initial=0.0))
        top = max(top, m) if math.isfinite(m) else math.inf
    return top


def dedup(xs):
    """``(uniq, rep)`` as on the CPU path: ascending first occurrences of each distinct
    stored row, and each row's first occurrence. Hash of the bits (``+ 0.0`` folds -0.0),
    wrapping int64 arithmetic, then a row compare of equal hashes."""
    torch = _torch()
    n, d = xs.shape
    dev = xs.device
    gen = torch.Generator().manual_seed(0x6B63)
    mult = (torch.randint(1, 2**62, (d,), generator=gen, dtype=torch.int64) * 2 + 1).to(dev)
    ity = torch.int32 if xs.dtype == torch.float32 else torch.int16
    h = torch.empty(n, dtype=torch.int64, device=dev)
    step = max(1, _TEMP_BYTES // (8 * d))
    for i in range(0, n, step):
        bits = (xs[i : i + step] + 0.0).view(ity).to(torch.int64)
        h[i : i + step] = (bits * mult).sum(dim=1)
    hs, order = torch.sort(h, stable=True)
    cand = torch.nonzero(hs[1:] == hs[:-1]).flatten() + 1
    ar = torch.arange(n, device=dev)
    if cand.numel() == 0:
        return ar, ar
    same = torch.zeros(n, dtype=torch.bool, device=dev)
    for s in range(0, cand.numel(), step):
        c = cand[s : s + step]
        same[c] = ((xs[order[c - 1]] + 0.0) == (xs[order[c]] + 0.0)).all(dim=1)
    run = torch.cumsum((~same).to(torch.int64), 0) - 1
    first = order[~same]
    rep = torch.empty(n, dtype=torch.int64, device=dev)
    rep[order] = first[run]
    return torch.sort(first).values, rep


# ----------------------------------------------------------------------------- engine


class _PoolSteps:
    """Farthest-first steps inside the pool: ``pm`` (the pool's md), ``dm`` (its squared
    distance matrix, diagonal -1 so a pick marks itself chosen in the same ``minimum``).
    On CUDA a chunk of ``_STEPS`` steps is one captured graph over these fixed buffers."""

    def __init__(self, size: int, dev):
        torch = _torch()
        self.torch, self.dev, self.size = torch, dev, size
        self.dm = torch.zeros((size, size), dtype=torch.float32, device=dev)
        self.pm = torch.full((size,), -math.inf, dtype=torch.float32, device=dev)
        self.picks = torch.zeros(_STEPS, dtype=torch.int64, device=dev)
        self.graph, self.graph_error = None, None
        if dev.type == "cuda":
            try:
                side = torch.cuda.Stream(dev)
                side.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up outside capture, as CUDA graphs require
                        self._chunk()
                torch.cuda.current_stream(dev).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._chunk()
                self.graph = graph
            except RuntimeError as e:  # same steps, launched one by one: slower, same picks
                self.graph_error = str(e).splitlines()[0][:200]
                torch.cuda.synchronize(dev)

    def _chunk(self):
        torch, pm, dm = self.torch, self.pm, self.dm
        for s in range(_STEPS):
            j = torch.argmax(pm)  # first maximum: the lowest position among ties
            self.picks[s].copy_(j)
            torch.minimum(pm, dm.index_select(0, j.view(1)).view(-1), out=pm)

    def run_chunk(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            self._chunk()
        return self.picks.clone()


class DeviceGreedy:
    """Exact rounds of farthest-first over the distinct rows ``xs`` (on one device)."""

    def __init__(self, xs, pool_size: int = 4096, tf32: bool = False):
        torch = _torch()
        self.torch = torch
        self.dev = xs.device
        self.n, self.d = xs.shape
        self.tf32 = tf32
        self.x = xs  # live rows (compacted as rows are chosen)
        self.pos = torch.arange(self.n, device=self.dev)  # distinct-row position of each live row
        self.xn = self._norms(xs)
        self.md = torch.full((self.n,), math.inf, dtype=torch.float32, device=self.dev)
        self.pool = min(pool_size, self.n)
        self.steps = _PoolSteps(self.pool, self.dev)
        self.rounds = self.updates = self.single = self.compactions = 0
        self.pairs = 0  # row x center distances computed by updates

    def _f32(self, a):
        return a if a.dtype == self.torch.float32 else a.float()

    def _norms(self, xs):
        torch = self.torch
        out = torch.empty(xs.shape[0], dtype=torch.float32, device=xs.device)
        step = max(1, _TEMP_BYTES // (4 * self.d))
        for i in range(0, xs.shape[0], step):
            b = self._f32(xs[i : i + step])
            out[i : i + step] = torch.einsum("ij,ij->i", b, b)
        return out

    def update(self, live_idx):
        """``md`` of every live row against the live rows ``live_idx`` as new centers."""
        torch = self.torch
        c = self._f32(self.x.index_select(0, live_idx))
        c2, cn = -2.0 * c, self.xn.index_select(0, live_idx)
        m = self.x.shape[0]
        step = max(1024, _TEMP_BYTES // (4 * max(1, len(live_idx))))
        for i in range(0, m, step):
            g = torch.addmm(cn[None, :], self._f32(self.x[i : i + step]), c2.T)
            near = g.amin(dim=1).add_(self.xn[i : i + step]).clamp_(min=0.0)
            torch.minimum(self.md[i : i + step], near, out=self.md[i : i + step])
        self.md.index_fill_(0, live_idx, -1.0)
        self.updates += 1
        self.pairs += m * len(live_idx)

    def compact(self):
        """Drop chosen rows from the live arrays once they are at least half of them."""
        torch = self.torch
        keep = torch.nonzero(self.md >= 0).flatten()
        if keep.numel() * 2 > self.md.numel() or self.md.numel() <= 4 * self.pool:
            return
        self.x = self.x.index_select(0, keep)
        self.xn, self.md, self.pos = self.xn[keep], self.md[keep], self.pos[keep]
        self.compactions += 1

    def start(self, first: int):
        live = self.torch.tensor([first], device=self.dev)
        self.update(live)
        return live

    def round(self, want: int, expect: int):
        """Up to ``want`` exact picks: (live positions, their squared distances), on the device."""
        torch = self.torch
        m = self.md.numel()
        p = min(self.pool, m)
        vals, top = torch.topk(self.md, min(p + 1, m))
        tau = vals[p] if m > p else vals.new_tensor(-math.inf)
        pool = torch.sort(top[:p]).values  # argmax ties -> lowest position -> lowest row index
        xp = self._f32(self.x.index_select(0, pool))
        pn = self.xn.index_select(0, pool)
        st = self.steps
        dm = st.dm[:p, :p]
        torch.addmm(pn[:, None] + pn[None, :], xp, xp.T, alpha=-2.0, out=dm)
        dm.clamp_(min=0.0).fill_diagonal_(-1.0)
        pm0 = self.md.index_select(0, pool)
        st.pm.fill_(-math.inf)
        st.pm[:p] = pm0
        cap = min(want, p)
        chunks, got = [], 0
        launch = max(1, min(-(-cap // _STEPS), -(-expect // _STEPS)))
        while True:
            for _ in range(launch):
                chunks.append(st.run_chunk())
            picks = torch.cat(chunks)[:cap]
            # The value of each pick when it was made: its pool md, lowered by the picks before it.
            sub = dm.index_select(0, picks).index_select(1, picks)
            sub = torch.where(torch.ones_like(sub, dtype=torch.bool).tril_(), math.inf, sub)
            at = torch.minimum(pm0.index_select(0, picks), sub.amin(dim=0))
            ok = (at > tau) & (at >= 0)
            bad = torch.nonzero(~ok)
            got = int(bad[0]) if bad.numel() else len(picks)  # one host read per launch
            if got < len(picks) or len(picks) >= cap:
                break
            launch = min(2 * launch, -(-(cap - len(picks)) // _STEPS))  # all valid: go on, further
        self.rounds += 1
        if got == 0:  # the top is tied with a row outside the pool: one plain step
            j = torch.argmax(self.md).view(1)
            self.single += 1
            return j, self.md.index_select(0, j)
        return pool.index_select(0, picks[:got]), at[:got]

    def radius_sq(self, centers_live=None) -> tuple[float, str]:
        """Squared covering radius of the chosen set over every row (chosen rows are at 0)."""
        top = float(self.md.max()) if self.md.numel() else 0.0
        return max(top, 0.0), "float32"


def greedy(x, k: int, start: int, *, device: str, fast: bool = False, storage: str = "auto", pool_size: int = 4096):
    """Device-resident farthest-first from row ``start``: (indices, distance_at_pick,
    radius, details, device name), as :func:`synth_empathy.core.kcenter.lazy.greedy` on the
    CPU. ``x`` checked, ``k`` resolved and ``start`` a row index (:func:`greedy._greedy`)."""
    torch = _torch()
    dev = resolve_device(device)
    n, d = x.shape
    top = max_abs(x)  # NaN / inf: to_device names the row
    resident = isinstance(x, torch.Tensor) and x.device == dev and x.dtype == torch.float32
    stored, why = choose_storage(storage, n, d, dev, top if math.isfinite(top) else 0.0, resident)
    tf32 = fast and dev.type == "cuda"
    t0 = time.perf_counter()
    xs = to_device(x, dev, stored)
    uniq, rep = dedup(xs)
    nd = int(uniq.numel())
    if nd < n:
        xs = xs.index_select(0, uniq)
    try:
        with _fp32_products(tf32):
            eng = DeviceGreedy(xs, pool_size=pool_size, tf32=tf32)
            first = int(torch.searchsorted(uniq, rep[start]))
            live = eng.start(first)
            picks = [eng.pos.index_select(0, live)]
            vals = [torch.tensor([math.inf], device=dev)]
            got, expect = 1, _STEPS
            target = min(k, nd)
            while got < target:
                p, v = eng.round(target - got, expect)
                picks.append(eng.pos.index_select(0, p))
                vals.append(v)
                eng.update(p)
                got += len(p)
                expect = max(_STEPS, len(p) + len(p) // 4)
                eng.compact()
            r2, how = eng.radius_sq()
            if tf32:
                r2, how = _recheck_radius(eng, xs, torch.cat(picks), r2)
    except torch.OutOfMemoryError:
        raise _oom(dev, n * d * 4, f"k-center over {n:,} x {d} rows", stored) from None
    pos = torch.cat(picks).cpu().numpy()
    dist = np.sqrt(torch.cat(vals).double().cpu().numpy())
    idx = uniq.cpu().numpy()[pos]
    idx[0] = start
    idx, dist = with_copies(idx, dist, n, k)
    details = {
        "rows": n,
        "distinct_rows": nd,
        "dim": d,
        "rounds": eng.rounds,
        "single_steps": eng.single,
        "pool_size": eng.pool,
        "compactions": eng.compactions,
        "cuda_graphs": eng.steps.graph is not None if dev.type == "cuda" else None,
        "storage_dtype": stored,
        "storage_why": why,
        "products": "tf32" if tf32 else "float32",
        "radius": how,
        "distance_evaluations": int(eng.pairs),
        "evaluated_fraction": round(eng.pairs / max(1.0, float(n) * k), 4),
        "engine_seconds": round(time.perf_counter() - t0, 3),
    }
    if eng.steps.graph_error:
        details["cuda_graph_error"] = eng.steps.graph_error
    return idx.astype(np.int64), dist, math.sqrt(r2), details, _name(dev)


def _recheck_radius(eng, xs, picks_pos, r2_fast: float) -> tuple[float, str]:
    """Fast mode: the exact float32 radius from the rows that could hold it."""
    torch = eng.torch
    big = float(eng.xn.max()) if eng.xn.numel() else 0.0
    err = (2.0**-9 + 2 * eng.d * 2.0**-24) * big
    cand = torch.nonzero(eng.md >= r2_fast - 2 * err).flatten()
    if cand.numel() > _RECHECK_ROWS:
        return r2_fast + err, f"bound: tf32 max + E ({cand.numel():,} rows within 2E of the top)"
    with _fp32_products(False):
        rows = eng._f32(eng.x.index_select(0, cand))
        rn = eng.xn.index_select(0, cand)
        best = torch.full((len(cand),), math.inf, device=eng.dev)
        cstep = max(1024, _TEMP_BYTES // (4 * max(1, len(cand))))
        for i in range(0, len(picks_pos), cstep):
            c = eng._f32(xs.index_select(0, picks_pos[i : i + cstep]))
            g = torch.addmm((c * c).sum(1)[None, :], rows, c.T, alpha=-2.0)
            best = torch.minimum(best, g.amin(dim=1) + rn)
    r2 = float(best.clamp(min=0).max()) if len(cand) else 0.0
    return r2, f"float32 re-check of {len(cand):,} rows"

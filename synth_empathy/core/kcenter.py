"""Greedy k-center (farthest-first traversal) for diversity selection, exact and at scale.

Greedy k-center (Gonzalez 1985) starts from one row and repeatedly adds the row farthest
(Euclidean) from everything chosen so far; its covering radius is within 2x of the
optimum (OPT). The plain form makes one pass over all N rows per pick: O(N k d), one
memory-bound matrix-vector product per step. Methods here:

* ``exact`` - **lazy exact greedy**: the same picks as the plain form (ties to the lowest
  row index; float32 rounding can flip a near-tie closer than ~1e-7). Two ideas, neither
  of which changes a pick:

  1. *Lazy bounds.* Each row keeps its distance to the first ``last[i]`` centers, an
     upper bound on its distance to the whole chosen set. Only rows whose bound reaches
     the top are brought up to date, so a row that came close to some center early is
     never compared with the later ones (100k clustered rows: about 17 % of the plain
     form's row x center distances at keep 10 %, 48 % at keep 90 %).
  2. *Several exact picks per round.* Once the top ``pool_size`` rows are up to date,
     farthest-first runs inside that pool (one pool x pool product) for as long as the
     pool's best row beats the largest bound outside it, which makes it the global
     farthest row. Bounds are refreshed with blocked matrix products (BLAS 3, near the
     machine's peak) instead of one memory-bound pass per pick.

  Bound: identical to the plain greedy, so 2 x OPT.
* ``fast`` - the same algorithm, but each refresh ranks the new centers in low precision
  and keeps the float32 distance to the nearest one as ranked; the pool and the reported
  radius stay float32 and exact. The precision (:func:`hardware.kcenter_ranking`):

  - **bf16** on a CPU with native bfloat16 (AVX512-BF16 or AMX): about 2.7x the float32
    rate; score error E <= 0.04 max|x|^2 (squared distance).
  - **int8** elsewhere on x86 with AVX2 (or VNNI): every row is quantised once with its
    own scale, ``x = s_x q_x + dx``, ``s_x = max_i |x_i| / L``, ``q_x`` in [-L, L], so each
    element's rounding is at most ``s_x / 2`` and ``|dx| <= sqrt(d) s_x / 2 <= sqrt(d) |x|
    / 2L``. L = 127 where ``torch._int_mm`` is exact at 127; oneDNN's AVX2 kernel (no VNNI)
    saturates there, so L = 79 on AVX2-only CPUs (probed once per process, ``_int8_levels``;
    reported as ``details["int8_levels"]``). The ranked score ``|c|^2 - 2 s_x s_c <q_x, q_c>`` (exact int32
    sums, ``torch._int_mm``) differs from ``|c|^2 - 2 <x, c>`` by ``2 |<dx, c> + <x - dx,
    dc>|``, so by at most **E = 2 r (2 M + r)**, r the largest residual norm |dx| and M
    the largest row norm; a priori E <= 0.33 M^2 at d = 384, measured on the input and
    reported as ``details["ranking_error_bound"]`` (about 0.05 M^2 on unit vectors,
    d = 384). On AVX2 kernels this ranks a score in ~2.5-3.3 ns against ~4-5 ns for the
    float32 product (2 cores; benchmarks/README.md).

  With either, the center kept for a row is nearest up to 2E, so a kept distance exceeds
  the true one by at most 2E (squared), each pick is farthest up to 2E and the covering
  radius is at most sqrt((2 OPT)^2 + 2E) (measured: within 0.12 % of ``exact``). Without
  either (no torch, no AVX2), ``fast`` is ``exact``.
* ``sharded`` - two-round composable coreset (Malkomes, Kusner, Chen, Weinberger and
  Moseley, NeurIPS 2015): rows are split into ``shards`` parts (``shard_by``: random, or
  k-means regions, :mod:`synth_empathy.core.shard_split`), each part runs the greedy for
  ``min(k, part size)`` centers as a Ray task, and the greedy runs again over the union
  of the local centers. Bound: **4 x OPT** for any split, hence at most 4x the exact
  greedy's radius (greedy >= OPT); measured ratios are in benchmarks/README.md. When
  ``k * shards >= N`` the union is the whole input and sharding saves nothing; it pays
  off on a cluster for k well below N / shards. ``per_shard="proportional"`` keeps
  ``min(k, ceil(2 k |part| / N))`` centers per part instead (a union of about 2k rows):
  no a-priori bound, since a part can meet more optimal clusters than its share, but
  every run reports ``certified_ratio_to_opt`` = 2 radius / r_U, r_U being the merge's
  radius over the union: its k picks and the farthest union row are k+1 rows pairwise
  >= r_U apart, two of which share an optimal center, so OPT >= r_U / 2.
* ``auto`` - ``sharded`` when ``shards > 1``; else ``fast`` when N k >= 5e9 row x center
  pairs, else ``exact``.

Exact duplicate rows are collapsed first (the lowest index stands for its copies; copies
are picked only once every distinct row is, lowest index first), so ties behave as in
the plain form. On a GPU (``device="cuda"``, or ``auto`` when torch sees one) the greedy
runs device-resident instead (:mod:`synth_empathy.core.kcenter_device`: pool rounds,
CUDA-graph steps, one product per round; ``fast`` there means TF32 products); the lazy
bounds above need per-row bookkeeping that keeps a GPU waiting on the host. The CPU path
never needs a GPU library. FAISS's flat index computes the same BLAS product plus a
min, but cannot give each row its own range of new centers, which the lazy bounds need,
so the products are called directly.
"""

from __future__ import annotations

import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from synth_empathy.core import hardware
from synth_empathy.errors import SelectionError  # noqa: F401 (re-exported)

METHODS = ("auto", "exact", "fast", "sharded")


def resolve_k(n: int, k: int | None, ratio: float | None) -> int:
    """Number of rows to keep: exactly one of ``k`` or ``ratio``.

    ``ratio`` in (0, 1] keeps ``ceil(ratio * n)`` rows (any positive ratio keeps at least
    one row, 1.0 keeps all); ``k`` must be a whole number in [1, n].
    """
    if n <= 0:
        raise SelectionError("no rows to select from (the input is empty)")
    if (k is None) == (ratio is None):
        raise SelectionError("give exactly one of k (a count) or ratio (a fraction in (0, 1])")
    if ratio is not None:
        r = float(ratio)
        if not (0.0 < r <= 1.0):  # also false for NaN
            raise SelectionError(f"ratio must be in (0, 1], got {ratio!r}")
        # The slack keeps 0.1 * 30 (= 3.0000000000000004) from becoming 4.
        return max(1, min(n, math.ceil(r * n - 1e-9)))
    try:
        whole = not isinstance(k, bool) and int(k) == k
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise SelectionError(f"k must be a whole number, got {k!r}")
    k = int(k)
    if k < 1:
        raise SelectionError(f"k must be at least 1, got {k}")
    if k > n:
        raise SelectionError(f"k={k} is larger than the number of rows ({n})")
    return k


@dataclass
class KCenterResult:
    """Picks in order, with the quality and the cost of the run."""

    indices: np.ndarray  # int64 row indices in pick order
    distance_at_pick: np.ndarray  # float64 distance of each pick to the earlier ones (inf first)
    radius: float  # covering radius: max over rows of the distance to the nearest pick
    method: str
    device: str
    seconds: float
    peak_rss_bytes: int  # how far the run raised this process's peak resident set (ru_maxrss)
    details: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- input


def _check_matrix(x) -> np.ndarray:
    """Shape and dtype checks (values are checked chunk by chunk in :func:`_dedup`).

    A torch tensor (on a GPU, say) is checked the same way and returned as it is."""
    if _tensor_device(x) is not None:
        if x.ndim != 2:
            raise SelectionError(f"embeddings must be a 2-D array (rows x dims), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise SelectionError("no rows to select from (the input is empty)")
        if x.shape[1] == 0:
            raise SelectionError("embeddings have zero dimensions")
        if not x.dtype.is_floating_point:
            raise SelectionError(f"embeddings must be floating point, got dtype {x.dtype}")
        return x
    try:
        x = np.asarray(x)
    except ValueError:  # ragged rows
        x = np.asarray(x, dtype=object)
    if x.dtype == object and x.ndim == 1 and len(x) and all(np.ndim(r) == 1 for r in x):
        d0 = len(x[0])
        i = next((i for i, r in enumerate(x) if len(r) != d0), None)
        if i is not None:
            raise SelectionError(f"row {i}: embedding has {len(x[i])} values, row 0 has {d0} (mixed dimensions)")
    if x.dtype == object:
        raise SelectionError("embeddings must be one numeric 2-D array (mixed dimensions?)")
    if x.ndim != 2:
        raise SelectionError(f"embeddings must be a 2-D array (rows x dims), got shape {x.shape}")
    if x.shape[0] == 0:
        raise SelectionError("no rows to select from (the input is empty)")
    if x.shape[1] == 0:
        raise SelectionError("embeddings have zero dimensions")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise SelectionError(f"embeddings must be numeric, got dtype {x.dtype}")
    return x


_CHUNK = 16384


def _dedup(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact duplicate rows, and a check for NaN / infinite values, chunk by chunk.

    Returns ``(uniq, rep)``: the ascending indices of each distinct row's first occurrence,
    and ``rep[i]``, the first occurrence of row i's vector. Rows are compared as float32
    bits after ``+ 0.0`` (which folds -0.0 into 0.0).
    """
    n, d = x.shape
    mult = np.random.default_rng(0x6B63).integers(1, 2**63, size=d, dtype=np.uint64) | np.uint64(1)
    h = np.empty(n, dtype=np.uint64)
    for i in range(0, n, _CHUNK):
        c = np.asarray(x[i : i + _CHUNK], dtype=np.float32) + np.float32(0.0)
        bad = ~np.isfinite(c).all(axis=1)
        if bad.any():
            raise SelectionError(f"row {i + int(np.flatnonzero(bad)[0])}: embedding has NaN or infinite values")
        # Integer multiply-add wraps mod 2**64: exact, whatever the summation order.
        h[i : i + _CHUNK] = (c.view(np.uint32).astype(np.uint64) * mult).sum(axis=1)
    order = np.argsort(h, kind="stable")  # equal hashes stay in index order
    hs = h[order]
    same = np.zeros(n, dtype=bool)
    cand = np.flatnonzero(hs[1:] == hs[:-1]) + 1
    for s in range(0, len(cand), _CHUNK):
        c = cand[s : s + _CHUNK]
        a = np.asarray(x[order[c - 1]], dtype=np.float32) + np.float32(0.0)
        b = np.asarray(x[order[c]], dtype=np.float32) + np.float32(0.0)
        same[c] = (a == b).all(axis=1)  # a hash collision of different rows stays apart
    run = np.cumsum(~same) - 1
    first = order[~same]
    rep = np.empty(n, dtype=np.int64)
    rep[order] = first[run]
    return np.sort(first), rep


# ----------------------------------------------------------------------------- backends


class _Numpy:
    """Matrix products on the CPU through numpy's BLAS (float32)."""

    name = "cpu"
    host = True  # arrays are numpy arrays

    def put(self, a):
        return a

    def get(self, a):
        return a

    def sqdist(self, a, an, b, bn):
        """Full squared-distance matrix (len(a), len(b))."""
        g = a @ b.T
        g *= -2.0
        g += an[:, None]
        g += bn[None, :]
        return np.maximum(g, 0.0, out=g)

    def min_sqdist(self, a, an, b2, bn):
        """Per row of ``a``, the smallest squared distance to the rows b (given as -2b)."""
        g = a @ b2.T  # folding the -2 into the centers saves a pass over g
        g += bn[None, :]
        m = g.min(axis=1)
        m += an
        return np.maximum(m, 0.0, out=m)


class _Torch:
    """The same float32 products through torch on a CUDA device (or on the CPU, so that
    CI can run this code path)."""

    host = False

    def __init__(self, device: str):
        import torch

        self.t = torch
        self.dev = torch.device(device)
        self.name = "torch-cpu" if self.dev.type == "cpu" else str(self.dev)

    def put(self, a):
        a = np.ascontiguousarray(a)
        with warnings.catch_warnings():  # read-only input: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            return self.t.from_numpy(a).to(self.dev)

    def get(self, a):
        return a.cpu().numpy()

    def sqdist(self, a, an, b, bn):
        g = self.t.addmm(an[:, None] + bn[None, :], a, b.T, alpha=-2.0)
        return g.clamp_(min=0.0)

    def min_sqdist(self, a, an, b2, bn):
        g = self.t.addmm(bn[None, :].expand(a.shape[0], -1), a, b2.T)
        return (g.amin(dim=1) + an).clamp_(min=0.0)


class _BF16:
    """bfloat16 products through torch on a CPU with native bf16 (AVX512-BF16 or AMX),
    about 2.7x the float32 BLAS rate on the benchmark machine. Used only to find each
    row's nearest new center; the distance kept is recomputed in float32."""

    name = "bf16"

    def __init__(self, xs: np.ndarray, xn: np.ndarray, cap: int):
        import torch

        self.t = t = torch
        with warnings.catch_warnings():  # read-only input: converted, never written
            warnings.simplefilter("ignore", UserWarning)
            self.ax = t.from_numpy(np.ascontiguousarray(xs)).to(t.bfloat16)
        self.ax_bits = self.ax.view(t.int16).numpy()  # same memory, for numpy gathers
        self.xn = xn
        self.ac2 = t.empty((cap, xs.shape[1]), dtype=t.bfloat16)
        self.acn = t.empty(cap, dtype=t.bfloat16)

    def add(self, a: int, b: int, pos: np.ndarray):
        tp = self.t.from_numpy(pos)
        self.ac2[a:b] = -2.0 * self.ax[tp]  # exact in bf16: a power of two
        self.acn[a:b] = self.t.from_numpy(self.xn[pos])

    def rows(self, g: np.ndarray):
        return self.t.from_numpy(self.ax_bits[g]).view(self.t.bfloat16)

    def min_arg(self, xr, c: int, e: int):
        """Per row: (smallest |b|^2 - 2ab over centers c:e, its column), |a|^2 left out;
        all bf16, the |b|^2 added inside the product so the big matrix is written once."""
        v, j = self.t.addmm(self.acn[c:e][None, :], xr, self.ac2[c:e].T).min(dim=1)
        return v.float().numpy(), j.numpy()

    def error_bound(self) -> float | None:
        return None  # documented a priori: E <= 0.04 max|x|^2


_I8_ROWS = 512  # rows per int8 product: the int32 block (512 x 2048) stays in cache
# Quantisation levels tried, widest first. 79 is the widest an int16-saturating kernel
# keeps exact: oneDNN without VNNI (AVX2) adds 128 to one operand to use vpmaddubsw
# (u8 x s8, two products summed in int16), and (79 + 128) * 79 * 2 <= 32767 < (80 + 128) * 80 * 2.
_I8_LEVELS = (127, 79)


@cache  # oneDNN picks its kernel once per process
def _int8_levels(torch) -> int | None:
    """The widest level L in _I8_LEVELS at which ``torch._int_mm`` is exact on this
    process's kernel for values in [-L, L]; None if none is (then ``fast`` ranks in float32).

    Measured, not assumed from the CPU flags: with oneDNN's AVX2 kernel (no VNNI: every
    AVX2-only CPU, or ``ONEDNN_MAX_CPU_ISA=AVX2``) 127 x 127 x 64 came back as 8,160 instead
    of 1,032,256. The probe is one 512 x 384 x 256 product per level, once per process."""
    g = torch.Generator().manual_seed(0)
    for level in _I8_LEVELS:
        a = torch.randint(-level, level + 1, (_I8_ROWS, 384), generator=g, dtype=torch.int8)
        b = torch.randint(-level, level + 1, (384, 256), generator=g, dtype=torch.int8)
        a[:8] = level  # the worst cases for a saturating pair sum: equal signs at +-L
        a[8:16] = -level
        b[:, :8] = level
        b[:, 8:16] = -level
        if torch.equal(torch._int_mm(a, b), a.int() @ b.int()):
            return level
    return None


class _Int8:
    """int8 x int8 -> int32 products (``torch._int_mm``: oneDNN, AVX2 vpmaddubsw or VNNI)
    where bf16 is not native: 1.5-2x the float32 rate per row x center score on AVX2
    kernels, scaling included (benchmarks/kcenter_int8_bench.py). Every row is quantised once with its own scale,
    ``x ~ s_x q_x``, ``s_x = max|x_i| / L``; a center keeps its row's ``q`` and ``s``. L is
    127, or 79 where the product kernel saturates at 127 (:func:`_int8_levels`; E grows with
    the rounding residuals, about 1.6x).
    The ranked score ``|c|^2 - 2 s_x s_c <q_x, q_c>`` is divided by ``s_x`` (a row's
    ranking does not change), so one pass over the int32 block scales and offsets it.
    Used only to find each row's nearest new center; the distance kept is float32."""

    name = "int8"

    def __init__(self, xs: np.ndarray, xn: np.ndarray, cap: int):
        import torch

        self.t = t = torch
        self.levels = level = _int8_levels(torch)
        if level is None:
            raise SelectionError("int8 ranking: torch._int_mm is not exact on this machine; rank in float32")
        n, d = xs.shape
        self.q = np.empty((n, d), dtype=np.int8)
        self.s = np.empty(n, dtype=np.float32)
        res = np.empty(n, dtype=np.float32)  # |x - s q|: the rounding residual, for E
        for i in range(0, n, _CHUNK):
            c = xs[i : i + _CHUNK]
            s = np.abs(c).max(axis=1) / np.float32(level)
            s[s == 0] = 1.0  # a zero row quantises to zeros whatever its scale
            q = np.rint(c / s[:, None])
            self.q[i : i + _CHUNK] = q
            self.s[i : i + _CHUNK] = s
            res[i : i + _CHUNK] = np.linalg.norm(c - s[:, None] * q, axis=1)
        self.inv = (1.0 / self.s).astype(np.float32)
        self.xn = xn
        # E bound (see error_bound): the largest residual and the largest norm.
        self.res_max = float(res.max())
        self.norm_max = float(np.sqrt(xn.max()))
        self.cq = t.empty((cap, d), dtype=t.int8)
        self.cw = t.empty(cap, dtype=t.float32)  # -2 s_c
        self.cn = t.empty(cap, dtype=t.float32)  # |c|^2

    def add(self, a: int, b: int, pos: np.ndarray):
        t = self.t
        self.cq[a:b] = t.from_numpy(self.q[pos])
        self.cw[a:b] = t.from_numpy(-2.0 * self.s[pos])
        self.cn[a:b] = t.from_numpy(self.xn[pos])

    def rows(self, g: np.ndarray):
        return self.t.from_numpy(self.q[g]), self.t.from_numpy(self.inv[g])

    def min_arg(self, xr, c: int, e: int):
        """Per row: (smallest (|c|^2 - 2 s_x s_c <q_x, q_c>) / s_x over centers c:e, its
        column): comparable across center blocks of the same row, not across rows."""
        t = self.t
        q, inv = xr
        cq, cw, cn = self.cq[c:e].T, self.cw[c:e], self.cn[c:e]
        v = np.empty(len(q), dtype=np.float32)
        j = np.empty(len(q), dtype=np.int64)
        for i in range(0, len(q), _I8_ROWS):
            g = t._int_mm(q[i : i + _I8_ROWS], cq) * cw  # int32 exact, then float32
            g.addr_(inv[i : i + _I8_ROWS], cn)
            # numpy's SIMD argmin: ~0.07 ns per score here, torch's min(dim=1) ~0.9 ns
            g = g.numpy()
            bj = g.argmin(axis=1)
            v[i : i + len(g)], j[i : i + len(g)] = g[np.arange(len(g)), bj], bj
        return v, j

    def error_bound(self) -> float:
        """E: the largest |ranked - true| score (squared-distance units) over any row x and
        center c. With residuals dx = x - s_x q_x, dc likewise (|.| <= sqrt(d) s / 2),
        <x, c> - <x - dx, c - dc> = <dx, c> + <x - dx, dc>, so the score error is at most
        2 (|dx| |c| + (|x| + |dx|) |dc|) <= 2 r (2 M + r), r the largest residual norm and
        M the largest row norm (int32 sums are exact; float32 scaling adds ~1e-7 relative)."""
        r, m = self.res_max, self.norm_max
        return 2.0 * r * (2.0 * m + r)


RANKINGS = {"bfloat16": _BF16, "int8": _Int8}


def _ranking() -> str | None:
    """The low precision ``fast`` ranks in on this CPU (:func:`hardware.kcenter_ranking`);
    the environment variable SYNTH_EMPATHY_KCENTER_RANKING (bfloat16, int8 or float32)
    overrides it, so the benchmark can compare them on one machine. None: no ranking
    pass (torch missing, or no int8 product in this torch)."""
    want = os.environ.get("SYNTH_EMPATHY_KCENTER_RANKING") or hardware.kcenter_ranking()
    if want in (None, "float32"):
        return None
    if want not in RANKINGS:
        raise SelectionError(f"SYNTH_EMPATHY_KCENTER_RANKING must be bfloat16, int8 or float32, got {want!r}")
    try:
        import torch
    except ImportError:
        return None
    if want == "int8" and (not hasattr(torch, "_int_mm") or _int8_levels(torch) is None):
        return None
    return want


def _on_device(x, device: str) -> str | None:
    """The torch device name when the greedy runs device-resident
    (:mod:`synth_empathy.core.kcenter_device`), None for the numpy path.

    ``auto`` is CUDA when torch sees a GPU (or the input is already a CUDA tensor);
    ``torch-cpu`` runs the device code on the CPU, so CI tests the GPU's code path."""
    tensor_dev = _tensor_device(x)
    if device == "cpu":
        if tensor_dev is not None and tensor_dev != "cpu":
            raise SelectionError(f"device 'cpu' asked for, but the embeddings are on {tensor_dev}")
        return None
    if device == "auto":
        if tensor_dev is not None and tensor_dev != "cpu":
            return tensor_dev
        try:
            import torch
        except ImportError:  # no torch, no GPU to use
            return None
        return "cuda" if torch.cuda.is_available() else None
    if device == "torch-cpu" or device == "cuda" or device.startswith("cuda:"):
        if device != "torch-cpu":
            try:
                import torch
            except ImportError:
                raise SelectionError(f"device {device!r} needs torch with CUDA") from None
            if not torch.cuda.is_available():
                raise SelectionError(f"device {device!r} asked for, but no GPU is visible")
        return device
    raise SelectionError(f"device must be auto, cpu or cuda, got {device!r}")


def _tensor_device(x) -> str | None:
    """The device of a torch tensor input (without importing torch for numpy input)."""
    if type(x).__module__.startswith("torch") and hasattr(x, "device"):
        return str(x.device)
    return None


# ----------------------------------------------------------------------------- engine

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


def _prepare(x):
    """(first-occurrence indices, representative of each row, distinct rows as float32)."""
    x = _check_matrix(x)
    uniq, rep = _dedup(x)
    if len(uniq) == len(x) and x.dtype == np.float32 and x.flags.c_contiguous:
        return uniq, rep, x  # read only from here on: no second copy of a large input
    return uniq, rep, np.ascontiguousarray(x[uniq], dtype=np.float32)


# From this many row x center pairs (N k) on, ``auto`` takes ``fast``: below it the bf16
# pass's fixed costs ate its gain on the benchmark machine (100k rows, keep 10 %).
_AUTO_FAST_PAIRS = 5 * 10**9


def with_copies(idx: np.ndarray, dist: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Picks of the distinct rows, then, when k asks for more, the copies of chosen rows
    (all at distance 0) lowest index first, as the plain greedy would take them."""
    if len(idx) >= k:
        return idx, dist
    chosen = np.zeros(n, dtype=bool)
    chosen[idx] = True
    extra = np.flatnonzero(~chosen)[: k - len(idx)]
    return np.concatenate([idx, extra]), np.concatenate([dist, np.zeros(len(extra))])


def _greedy(
    x, k: int, start: int, *, device: str = "cpu", fast: bool = False, pool_size: int = 2048, storage: str = "auto"
):
    """Lazy farthest-first; returns (indices, distance_at_pick, radius, details, device)."""
    x = _check_matrix(x)
    n = x.shape[0]
    k = resolve_k(n, k, None)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n:
        raise SelectionError(f"start must be a row index in [0, {n}), got {start!r}")
    start = int(start)
    on = _on_device(x, device)
    if on is not None:
        from synth_empathy.core import kcenter_device

        return kcenter_device.greedy(x, k, start, device=on, fast=fast, storage=storage)
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
        # E of the docstring's bound, measured on this input (int8; bf16's is a priori)
        "ranking_error_bound": None if approx is None else eng.approx.error_bound(),
        "int8_levels": getattr(eng.approx, "levels", None),
        "distance_evaluations": int(eng.pairs),
        # share of the plain form's N x k row-center distances that were evaluated
        "evaluated_fraction": round(eng.pairs / max(1.0, float(n) * k), 4),
    }
    return idx.astype(np.int64), dist, radius, details, "cpu" if approx is not None else be.name


def greedy_k_center(x: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Exact farthest-first traversal from row ``start``: int64 row indices in pick order.

    Ties go to the lowest row index. Same picks as the plain O(N k d) form.
    """
    return _greedy(x, k, start, device="cpu")[0]


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


# ----------------------------------------------------------------------------- sharded


def shard_greedy(x, rows: np.ndarray, k: int, start: int, device: str, fast: bool) -> np.ndarray:
    """One shard's local greedy; returns the chosen global row indices."""
    local_start = int(np.searchsorted(rows, start)) if start in rows else 0
    return rows[_greedy(x[rows], min(k, len(rows)), local_start, device=device, fast=fast)[0]]


def per_part(k, parts) -> list:
    """``k`` for each part: one number for all, or a list with one per part."""
    return list(k) if isinstance(k, (list, tuple)) else [k] * len(parts)


def map_shards_here(x, parts, k, start: int, device: str, fast: bool) -> list:
    """Run every shard in this process, one after another (no Ray: the core stays pure).
    :func:`synth_empathy.stages.kcenter_shards.map_shards_on_ray` runs them as Ray tasks.
    ``k``: centers per shard, one number or one per part."""
    return [shard_greedy(x, p, kp, start, device, fast) for p, kp in zip(parts, per_part(k, parts))]


PER_SHARD = ("full", "proportional")
_SLACK = 2.0  # proportional: twice a shard's share of k


def _sharded(x, k, start, seed, shards, device, map_shards=None, shard_by="random", per_shard="full"):
    from synth_empathy.core.shard_split import split

    if per_shard not in PER_SHARD:
        raise SelectionError(f"per_shard must be one of {', '.join(PER_SHARD)}, got {per_shard!r}")
    n = len(x)
    shards = max(1, min(int(shards), n))
    t0 = time.perf_counter()
    parts, split_info = split(x, shards, seed, shard_by, "numpy" if device == "cpu" else "auto")
    split_s = time.perf_counter() - t0
    # full: k per shard, the composable-coreset bound (4 x OPT). proportional: a share of
    # k by shard size with slack, no a-priori bound (see certified_ratio below).
    ks = [min(k, len(p)) if per_shard == "full" else min(len(p), k, math.ceil(_SLACK * k * len(p) / n)) for p in parts]
    fast = max(len(p) * kp for p, kp in zip(parts, ks)) >= _AUTO_FAST_PAIRS
    t0 = time.perf_counter()
    local = (map_shards or map_shards_here)(x, parts, ks, start, device, fast)
    map_s = time.perf_counter() - t0
    union = np.unique(np.concatenate(local))
    if len(union) < k:  # proportional shares can fall short: top up with the lowest rows left
        rest = np.setdiff1d(np.arange(n), union)[: k - len(union)]
        union = np.union1d(union, rest)
    # The start row's shard started from it, so it is in the union.
    merge_fast = len(union) * k >= _AUTO_FAST_PAIRS
    t0 = time.perf_counter()
    idx, dist, r_union, det, dev = _greedy(
        x[union], k, int(np.searchsorted(union, start)), device=device, fast=merge_fast
    )
    merge_s = time.perf_counter() - t0
    idx = union[idx]
    radius = covering_radius(x, idx)
    details = {
        "shards": shards,
        "shard_by": shard_by,
        "per_shard": per_shard,
        "split": split_info,
        "centers_per_shard": ks,
        "union_rows": int(len(union)),
        "local_fast": fast,
        "seconds": {"split": round(split_s, 3), "shards": round(map_s, 3), "merge": round(merge_s, 3)},
        "merge": det,
        # k+1 rows of the union pairwise >= r_union apart, so OPT >= r_union / 2 and the
        # radius is at most this many times OPT, whatever the split and per_shard.
        "certified_ratio_to_opt": round(2.0 * radius / r_union, 4) if r_union > 0 else None,
    }
    return idx, dist, radius, details, dev


# ----------------------------------------------------------------------------- entry


def select_k_center(
    x: np.ndarray,
    k: int,
    *,
    method: str = "auto",
    start: int = 0,
    seed: int = 0,
    shards: int = 1,
    device: str = "auto",
    storage: str = "auto",
    map_shards=None,
    shard_by: str = "random",
    per_shard: str = "full",
) -> KCenterResult:
    """Greedy k-center selection of ``k`` rows of ``x``, with radius, time and memory.

    ``seed`` draws the shard split of ``sharded``; the start row is ``start``. Methods
    are described in the module docstring; ``shard_by`` (``random`` | ``kmeans``) and
    ``per_shard`` (``full`` | ``proportional``) shape ``sharded``'s split and the
    centers each shard keeps. ``map_shards(x, parts, k, start, device, fast)`` runs the
    shards of ``sharded`` (default: here, one after another; the pipeline and ``synth-empathy select`` pass the Ray version from
    :mod:`synth_empathy.stages.kcenter_shards`). ``storage`` is the dtype of the rows on
    a GPU (:mod:`synth_empathy.core.kcenter_device`); ``x`` may be a torch tensor there.
    """
    if method not in METHODS:
        raise SelectionError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(shards, bool) or int(shards) != shards or shards < 1:
        raise SelectionError(f"shards must be a whole number of at least 1, got {shards!r}")
    x = _check_matrix(x)
    n = x.shape[0]
    k = resolve_k(n, k, None)
    if method == "auto":
        used = "sharded" if shards > 1 else "fast" if n * k >= _AUTO_FAST_PAIRS else "exact"
    else:
        used = method
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if used == "sharded":
        if _tensor_device(x) is not None:  # shards travel through Ray's object store
            x = x.cpu().numpy()
        idx, dist, radius, details, dev = _sharded(x, k, start, seed, shards, device, map_shards, shard_by, per_shard)
    else:
        idx, dist, radius, details, dev = _greedy(x, k, start, device=device, fast=used == "fast", storage=storage)
    seconds = time.perf_counter() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024  # Linux: KiB
    return KCenterResult(
        indices=idx,
        distance_at_pick=dist,
        radius=float(radius),
        method=used,
        device=dev,
        seconds=seconds,
        peak_rss_bytes=int(grown),
        details=details,
    )

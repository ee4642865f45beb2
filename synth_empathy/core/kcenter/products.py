"""The matrix products of the lazy CPU greedy (module ``lazy``), and the ranking ``fast`` uses.

Exact distances are float32 products: numpy's BLAS (:class:`_Numpy`), or torch
(:class:`_Torch`) when ``fast`` runs torch products anyway (two thread pools would fight
over the cores). ``fast`` ranks each row's new centers in low precision to find the
nearest one, whose distance is then recomputed in float32; :func:`_ranking` picks the
precision for this CPU (:func:`hardware.kcenter_ranking`, or the environment variable
SYNTH_EMPATHY_KCENTER_RANKING):

- **bf16** (:class:`_BF16`) on a CPU with native bfloat16 (AVX512-BF16 or AMX); score
  error E <= 0.04 max|x|^2 (squared distance).
- **int8** (:class:`_Int8`) elsewhere on x86 with AVX2 (or VNNI): every row is quantised
  once with its own scale, ``x = s_x q_x + dx``, ``s_x = max_i |x_i| / L``, ``q_x`` in
  [-L, L], so ``|dx| <= sqrt(d) |x| / 2L``. L = 127 where ``torch._int_mm`` is exact at
  127; oneDNN's AVX2 kernel (no VNNI) saturates there, so L = 79 on AVX2-only CPUs
  (probed once per process, :func:`_int8_levels`). The ranked score ``|c|^2 - 2 s_x s_c
  <q_x, q_c>`` (exact int32 sums) differs from ``|c|^2 - 2 <x, c>`` by at most
  **E = 2 r (2 M + r)**, r the largest residual norm |dx| and M the largest row norm;
  measured on the input and reported as ``details["ranking_error_bound"]``.

Rates of these products against float32: benchmarks/README.md, "k-center selection"
(the int8 ranking for AVX2-only CPUs).
"""

from __future__ import annotations

import os
import warnings
from functools import cache

import numpy as np

from synth_empathy.core import hardware
from synth_empathy.core.kcenter.rows import _CHUNK
from synth_empathy.errors import SelectionError


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


def _bucket(n: int, least: int, step: int = 512) -> int:
    """The block size ``n`` is padded to: a power of two up to ``step`` (at least
    ``least``), a multiple of ``step`` above it (at most step - 1 padded rows there)."""
    if n > step:
        return -(-int(n) // step) * step
    return max(least, 1 << (int(n) - 1).bit_length())


# oneDNN compiles and caches a kernel for every distinct product shape, and the lazy
# greedy's ragged blocks (the rows that share a prefix of centers, from 1 to 4,096 of them;
# the centers since that prefix) made ~5,500 shapes at 1M rows: ~1.4 GB of compiled kernels
# in its primitive cache, kept after the selection (memray; benchmarks/README.md, "k-center
# selection: the driver's memory"). Blocks are padded to a few sizes instead (_bucket): rows
# to a power of two up to 256 then a multiple of 256 (most blocks have a few rows, so
# padding them to more would cost time), centers to 256, 512 or a multiple of 512.
_BF16_CENTERS_MIN = 256


class _BF16:
    """bfloat16 products through torch on a CPU with native bf16 (AVX512-BF16 or AMX),
    faster than the float32 BLAS products (benchmarks/README.md, "k-center selection"). Used only to find each
    row's nearest new center; the distance kept is recomputed in float32.

    Products run on a few fixed shapes (:func:`_bucket`): rows padded by repeating the
    first, centers read past ``e`` where the unfilled slots rank last (``|b|^2 = +inf``,
    ``b = 0``; centers are added in order, so the slots past the chosen ones are unfilled)."""

    name = "bf16"

    def __init__(self, xs: np.ndarray, xn: np.ndarray, cap: int):
        import torch

        self.t = t = torch
        with warnings.catch_warnings():  # read-only input: converted, never written
            warnings.simplefilter("ignore", UserWarning)
            self.ax = t.from_numpy(np.ascontiguousarray(xs)).to(t.bfloat16)
        self.ax_bits = self.ax.view(t.int16).numpy()  # same memory, for numpy gathers
        self.xn = xn
        self.nc = 0  # centers added so far
        slack = _bucket(2048, _BF16_CENTERS_MIN)  # a bucketed block never reads past the end
        self.ac2 = t.zeros((cap + slack, xs.shape[1]), dtype=t.bfloat16)
        self.acn = t.full((cap + slack,), float("inf"), dtype=t.bfloat16)

    def add(self, a: int, b: int, pos: np.ndarray):
        tp = self.t.from_numpy(pos)
        self.ac2[a:b] = -2.0 * self.ax[tp]  # exact in bf16: a power of two
        self.acn[a:b] = self.t.from_numpy(self.xn[pos])
        self.nc = max(self.nc, b)

    def rows(self, g: np.ndarray):
        """The rows ``g`` in bf16, padded to a bucket with copies of the first (their
        results are past ``len(g)``: callers keep the first ``len(g)``)."""
        m = _bucket(len(g), 1, step=256)
        if m > len(g):
            g = np.concatenate([g, np.full(m - len(g), g[0], dtype=g.dtype)])
        return self.t.from_numpy(self.ax_bits[g]).view(self.t.bfloat16)

    def min_arg(self, xr, c: int, e: int):
        """Per row: (smallest |b|^2 - 2ab over centers c:e, its column), |a|^2 left out;
        all bf16, the |b|^2 added inside the product so the big matrix is written once.
        The block is widened to its bucket only where that reaches unfilled slots alone."""
        w = _bucket(e - c, _BF16_CENTERS_MIN)
        f = c + w if e >= self.nc else e  # e < nc: real centers lie past e, stay exact
        v, j = self.t.addmm(self.acn[c:f][None, :], xr, self.ac2[c:f].T)[:, : e - c].min(dim=1)
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
    where bf16 is not native: faster per row x center score than float32 on AVX2 kernels,
    scaling included (benchmarks/kcenter_int8_bench.py and its section). Every row is quantised once with its own scale,
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

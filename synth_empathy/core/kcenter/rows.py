"""The rows the greedy runs over, and what every method shares; the bottom of the package.

Input checks (shape, dtype, NaN / infinity, with the row named), the collapse of exact
duplicate rows (the lowest index stands for its copies, so ties behave as in the plain
greedy) and :func:`with_copies`, which puts copies back after every distinct row; the
number of rows to keep (:func:`resolve_k`) and the result type (:class:`KCenterResult`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from synth_empathy.errors import SelectionError


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


def _tensor_device(x) -> str | None:
    """The device of a torch tensor input (without importing torch for numpy input)."""
    if type(x).__module__.startswith("torch") and hasattr(x, "device"):
        return str(x.device)
    return None


def _check_shape(shape: tuple) -> None:
    """Rows x dims, neither of them zero (an array's or a tensor's shape)."""
    if len(shape) != 2:
        raise SelectionError(f"embeddings must be a 2-D array (rows x dims), got shape {shape}")
    if shape[0] == 0:
        raise SelectionError("no rows to select from (the input is empty)")
    if shape[1] == 0:
        raise SelectionError("embeddings have zero dimensions")


def _check_matrix(x) -> np.ndarray:
    """Shape and dtype checks (values are checked chunk by chunk in :func:`_dedup`).

    A torch tensor (on a GPU, say) is checked the same way and returned as it is."""
    if _tensor_device(x) is not None:
        _check_shape(tuple(x.shape))
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
    _check_shape(x.shape)
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


def _prepare(x):
    """(first-occurrence indices, representative of each row, distinct rows as float32)."""
    x = _check_matrix(x)
    uniq, rep = _dedup(x)
    if len(uniq) == len(x) and x.dtype == np.float32 and x.flags.c_contiguous:
        return uniq, rep, x  # read only from here on: no second copy of a large input
    return uniq, rep, np.ascontiguousarray(x[uniq], dtype=np.float32)


def with_copies(idx: np.ndarray, dist: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Picks of the distinct rows, then, when k asks for more, the copies of chosen rows
    (all at distance 0) lowest index first, as the plain greedy would take them."""
    if len(idx) >= k:
        return idx, dist
    chosen = np.zeros(n, dtype=bool)
    chosen[idx] = True
    extra = np.flatnonzero(~chosen)[: k - len(idx)]
    return np.concatenate([idx, extra]), np.concatenate([dist, np.zeros(len(extra))])

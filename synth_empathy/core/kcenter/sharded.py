"""The ``sharded`` method: a two-round composable coreset over parts of the rows.

Malkomes, Kusner, Chen, Weinberger and Moseley (NeurIPS 2015): the rows are split into
``shards`` parts (``shard_by``: random, or k-means regions,
:mod:`synth_empathy.core.shard_split`), each part runs the greedy for ``min(k, part
size)`` centers, and the greedy runs again over the union of the local centers. Bound:
4 x OPT for any split. When ``k * shards >= N`` the union is the whole input and sharding
saves nothing. ``per_shard="proportional"`` keeps ``min(k, ceil(2 k |part| / N))``
centers per part instead: no a-priori bound, but every run reports
``certified_ratio_to_opt`` = 2 radius / r_U, r_U being the merge's radius over the union:
its k picks and the farthest union row are k+1 rows pairwise >= r_U apart, two of which
share an optimal center, so OPT >= r_U / 2.

The parts run here one after another (:func:`map_shards_here`), or as Ray tasks through
:func:`synth_empathy.stages.kcenter_shards.map_shards_on_ray` (which runs
:func:`shard_greedy`), so this package needs no Ray. Measured ratios: benchmarks/README.md,
"Sharded: random vs k-means shards".
"""

from __future__ import annotations

import math
import time

import numpy as np

from synth_empathy.core.kcenter.greedy import _AUTO_FAST_PAIRS, _greedy
from synth_empathy.core.kcenter.lazy import covering_radius
from synth_empathy.errors import SelectionError


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

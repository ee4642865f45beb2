"""The entry point, :func:`select_k_center`: the method and the run's cost.

It checks the method and the shard count, resolves ``auto`` (``sharded`` when
``shards > 1``; else ``fast`` from N k >= 5e9 row x center pairs, else ``exact``), runs
one greedy (module ``greedy``, which picks the device) or the sharded method, and
reports the picks with their covering radius, the time and the growth of the peak
resident set as a :class:`KCenterResult`.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from synth_empathy.core.kcenter.greedy import _AUTO_FAST_PAIRS, _greedy
from synth_empathy.core.kcenter.rows import KCenterResult, _check_matrix, _tensor_device, resolve_k
from synth_empathy.core.kcenter.sharded import _sharded
from synth_empathy.errors import SelectionError

METHODS = ("auto", "exact", "fast", "sharded")


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
    are described in the package docstring; ``shard_by`` (``random`` | ``kmeans``) and
    ``per_shard`` (``full`` | ``proportional``) shape ``sharded``'s split and the
    centers each shard keeps. ``map_shards(x, parts, k, start, device, fast)`` runs the
    shards of ``sharded`` (default: here, one after another; the pipeline and ``synth-empathy select`` pass the Ray version from
    :mod:`synth_empathy.stages.kcenter_shards`). ``storage`` is the dtype of the rows on
    a GPU (:mod:`synth_empathy.core.kcenter.device`); ``x`` may be a torch tensor there.
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

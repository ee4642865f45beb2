"""Method step 4 - diversity selection: greedy k-center over the kept rows.

The kept rows' ``embedding`` vectors (instruction + output, written by the quality
stage) are gathered, :func:`synth_empathy.core.kcenter.select_k_center` picks a subset by
farthest-first traversal, and the selected rows are written with their pick order.
The covering radius (how far the farthest kept row is from its nearest selected
row) goes into the report.

With ``diversity.near_duplicate_cosine`` set, rows within that cosine of an earlier kept
row (``sample_id`` order) are dropped first (:mod:`synth_empathy.core.near_duplicates`),
counted in the info under ``dropped.near_duplicate``; ``keep_ratio`` then applies to the
rows left, and a ``k`` above them is a :class:`~synth_empathy.errors.SelectionError`.

The selection is a function of the kept rows and the seed alone: the rows are put in
``sample_id`` order first (Parquet parts written by Ray Data come back in no fixed
order), and the greedy starts from a row drawn with ``numpy.random.default_rng(seed)``,
as ``synth-empathy select`` does.

in:  scored rows with ``kept`` and ``embedding``
out: selected rows (the ``SELECTED`` schema): ``+ pick_order, distance_at_pick``
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from synth_empathy import schemas
from synth_empathy.stages.contract import StageContract

CONTRACT = StageContract(
    name="selected",
    input="scored",
    requires=("sample_id", "kept", "embedding"),
    produces=schemas.SELECTED,
)


def embeddings_matrix(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """An (N, d) float32 matrix from a list<float32> column, without a Python loop."""
    col = table.column(column).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(col), -1)


def select(kept: pa.Table, cfg: Any, seed: int) -> tuple[pa.Table, dict[str, Any]]:
    """The selected rows of ``kept`` (in pick order) and the selection's figures."""
    from synth_empathy.cluster.kcenter_shards import map_shards_on_ray
    from synth_empathy.core.kcenter import select_k_center
    from synth_empathy.core.near_duplicates import drop_near_duplicates

    if kept.num_rows == 0:
        empty = kept.slice(0, 0)
        empty = empty.append_column("pick_order", pa.array([], type=pa.int64()))
        empty = empty.append_column("distance_at_pick", pa.array([], type=pa.float64()))
        return empty, {"selected": 0, "candidates": 0, "radius": None, "method": None}
    if "sample_id" in kept.column_names:
        kept = kept.sort_by("sample_id")
    x = embeddings_matrix(kept)
    n_kept = len(x)
    rows, near, k = drop_near_duplicates(x, cfg.near_duplicate_cosine, cfg.k, cfg.keep_ratio, device=cfg.device)
    if near is not None:
        kept, x = kept.take(pa.array(rows)), x[rows]
    start = int(np.random.default_rng(seed).integers(len(x)))
    result = select_k_center(
        x,
        k,
        method=cfg.method,
        start=start,
        seed=seed,
        shards=cfg.shards,
        device=cfg.device,
        storage=cfg.storage_dtype,
        map_shards=map_shards_on_ray,
        shard_by=cfg.shard_by,
        per_shard=cfg.per_shard,
    )
    order = np.asarray(result.indices, dtype=np.int64)
    # Distance of each pick from the centers chosen before it: how much new ground it covers.
    at_pick = getattr(result, "distance_at_pick", None)
    chosen = kept.take(pa.array(order))
    chosen = chosen.append_column("pick_order", pa.array(np.arange(len(order)), type=pa.int64()))
    chosen = chosen.append_column(
        "distance_at_pick",
        pa.array(
            np.asarray(at_pick, dtype=np.float64) if at_pick is not None else [None] * len(order), type=pa.float64()
        ),
    )
    info = {
        "selected": int(len(order)),
        "candidates": int(len(x)),
        "k": int(k),
        "radius": float(result.radius),
        "method": result.method,
        "device": result.device,
        "seconds": float(result.seconds),
        "seed": seed,
        "start_row": start,
        "near_duplicate_cosine": cfg.near_duplicate_cosine,
        "dropped": {"near_duplicate": near.dropped if near is not None else 0},
        "rows_before_near_duplicates": n_kept,
    }
    if result.method == "sharded":
        d = result.details
        info["sharded"] = {
            key: d[key] for key in ("shards", "shard_by", "per_shard", "union_rows", "certified_ratio_to_opt")
        }
        info["sharded"]["shard_sizes"] = d["split"]["sizes"]
    return chosen, info

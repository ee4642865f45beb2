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
``diversity.near_duplicate_index`` says exact or approximate (``auto``: approximate from
50,000 rows); the info's ``near_duplicates`` and a log line name the method used and,
if approximate, its exact audit of a sample of the kept rows.

The selection is a function of the kept rows and the seed alone: the rows are put in
``sample_id`` order first (Parquet parts written by Ray Data come back in no fixed
order), and the greedy starts from a row drawn with ``numpy.random.default_rng(seed)``,
as ``synth-empathy select`` does.

At scale (:func:`select_stage`) nothing but the k-center matrix is held whole: the ids
and embeddings of the kept rows are read by column projection into one (N, d) float32
matrix in ``sample_id`` order, and the selected rows are then written by streaming the
scored parts: each window of at most ``part_rows`` picks is one scan of the text columns
that keeps the rows whose ids it holds, sorted by pick order into one part. The stage's
parts, read in name order, are therefore the selection in pick order.
:func:`select` is the same selection on a table in memory.

in:  scored rows with ``kept`` and ``embedding`` (the k-center) and the other ``SELECTED``
     columns (carried)
out: selected rows (the ``SELECTED`` schema): ``+ pick_order, distance_at_pick``, in pick order
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth_empathy import schemas
from synth_empathy.core.arrow_matrix import list_matrix
from synth_empathy.errors import SelectionError
from synth_empathy.stages.contract import StageContract

MADE = ("pick_order", "distance_at_pick")  # the columns the stage adds; the rest come from scored
CARRIED = tuple(c for c in schemas.SELECTED.names if c not in MADE)
log = logging.getLogger(__name__)
CONTRACT = StageContract(
    name="selected",
    input="scored",
    # kept + embedding feed the k-center; the SELECTED columns are carried for the picks
    requires=("sample_id", "kept", "embedding") + tuple(c for c in CARRIED if c != "sample_id"),
    produces=schemas.SELECTED,
)
PART_ROWS = 65_536  # selected rows per written part: what one window of the write holds in memory
# Scan batches small and read ahead little: a batch of embeddings is 1.5 kB a row.
_SCAN = {"batch_size": 8192, "batch_readahead": 2, "fragment_readahead": 1}


@dataclass
class Picks:
    """What :func:`pick` chose, as rows of the matrix it was given."""

    order: np.ndarray  # int64 rows of the given matrix, in pick order
    distance_at_pick: np.ndarray  # float64 distance of each pick to the earlier ones (inf first)
    info: dict[str, Any]  # the selection's figures (the pipeline's selection.json)
    result: Any  # the k-center run itself (a KCenterResult over the rows left)


def pick(x: np.ndarray, cfg: Any, seed: int) -> Picks:
    """Greedy k-center on an (N, d) matrix with the ``diversity`` section ``cfg``.

    Drops near duplicates first (``cfg.near_duplicate_cosine``), resolves ``k`` or
    ``keep_ratio`` on the rows left, draws the start row with
    ``numpy.random.default_rng(seed)`` and runs :func:`select_k_center` with the section's
    method, shards, device and storage. The pipeline (in memory and streaming) and
    ``synth-empathy select`` all call this, so a step on the matrix goes here.
    """
    from synth_empathy.core.kcenter import select_k_center
    from synth_empathy.core.near_duplicates import drop_near_duplicates
    from synth_empathy.stages.kcenter_shards import map_shards_on_ray

    n_given = len(x)
    t0 = time.perf_counter()
    index = getattr(cfg, "near_duplicate_index", "auto")
    rows, near, k = drop_near_duplicates(
        x, cfg.near_duplicate_cosine, cfg.k, cfg.keep_ratio, device=cfg.device, index=index
    )
    near_seconds = time.perf_counter() - t0
    if near is not None:
        log_near_duplicates(near, n_given, near_seconds)
        x = x[rows]  # a copy of the rows left (only with near-duplicate removal on)
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
    rows = np.asarray(rows, dtype=np.int64)
    # rows of the matrix given, not of the one left
    order = rows[np.asarray(result.indices, dtype=np.int64)]
    info = {
        "selected": int(len(order)),
        "candidates": int(len(x)),
        "k": int(k),
        "radius": float(result.radius),
        "method": result.method,
        "device": result.device,
        "seconds": float(result.seconds),
        "seed": seed,
        "start_row": int(rows[start]),
        "near_duplicate_cosine": cfg.near_duplicate_cosine,
        "dropped": {"near_duplicate": near.dropped if near is not None else 0},
        "rows_before_near_duplicates": n_given,
    }
    if near is not None:
        info["near_duplicates"] = near_duplicate_info(near, index, near_seconds)
    if result.method == "sharded":
        d = result.details
        info["sharded"] = {
            key: d[key] for key in ("shards", "shard_by", "per_shard", "union_rows", "certified_ratio_to_opt")
        }
        info["sharded"]["shard_sizes"] = d["split"]["sizes"]
    # Distance of each pick from the centers chosen before it: how much new ground it covers.
    return Picks(order, np.asarray(result.distance_at_pick, dtype=np.float64), info, result)


def near_duplicate_info(near: Any, requested: str, seconds: float) -> dict[str, Any]:
    """What selection.json says about the near-duplicate step: the index asked for and
    used, and for an approximate index its audit and what can differ from exact."""
    info: dict[str, Any] = {"index_requested": requested, "method": near.method, "seconds": round(seconds, 3)}
    if near.approximate:
        info["audit"] = near.audit
        info["caveat"] = (
            "approximate: a row whose kept neighbours within the threshold the index did not find is kept "
            "(exact would drop it) and can change later decisions; audit = kept rows checked exactly "
            "against all earlier kept rows, missed = those that had one within the threshold"
        )
    return info


def log_near_duplicates(near: Any, n: int, seconds: float) -> None:
    """One log line for the near-duplicate step: the method, and the audit's misses if approximate."""
    line = f"[selected] near duplicates ({near.method}): {near.dropped} of {n} rows dropped in {seconds:.1f} s"
    if near.approximate and near.audit:
        a = near.audit
        line += (
            f"; approximate: {a['missed']} of {a['rows']} kept rows audited had an earlier kept row within "
            f"the threshold (about {a['estimated_missed_drops']} missed drops in all)"
        )
    log.info(line)


def _nothing(info_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"selected": 0, "candidates": 0, "radius": None, "method": None, **(info_extra or {})}


def attach_picks(rows: pa.Table, ids: pa.Array, first: int, at_pick: np.ndarray) -> pa.Table:
    """``rows`` (whose ``sample_id``s are all in ``ids``, the picks ``first..`` in pick
    order) in pick order, with ``pick_order`` and ``distance_at_pick``."""
    pos = pc.index_in(rows.column("sample_id"), value_set=ids).to_numpy(zero_copy_only=False)
    order = np.argsort(pos, kind="stable")
    rows, pos = rows.take(pa.array(order)), pos[order] + first
    return with_picks(rows, pos, at_pick[pos])


def with_picks(rows: pa.Table, pick_order: Any, distance_at_pick: Any) -> pa.Table:
    """``rows`` with the columns the stage makes (:data:`MADE`), typed as the schema says."""
    for name, values in zip(MADE, (pick_order, distance_at_pick)):
        rows = rows.append_column(name, pa.array(values, type=CONTRACT.produces.field(name).type))
    return rows


def select(kept: pa.Table, cfg: Any, seed: int) -> tuple[pa.Table, dict[str, Any]]:
    """The selected rows of ``kept`` (in pick order) and the selection's figures, in memory."""
    if kept.num_rows == 0:
        return with_picks(kept.slice(0, 0), [], []), _nothing()
    if "sample_id" in kept.column_names:
        kept = kept.sort_by("sample_id")
    p = pick(list_matrix(kept.column("embedding")), cfg, seed)
    return with_picks(kept.take(pa.array(p.order)), np.arange(len(p.order)), p.distance_at_pick), p.info


# -- the stage at scale: column projection in, streaming out -------------------------------


def kept_matrix(data: Any, where: str = "scored") -> tuple[pa.Array, np.ndarray]:
    """The kept rows' ids in ``sample_id`` order and their (N, d) float32 embeddings.

    ``data`` is a ``pyarrow.dataset.Dataset`` of the scored stage. Two projected scans:
    the ids first (to sort them), then the embeddings, each batch written straight into
    its rows of the matrix, which is the only copy held.
    """
    kept = pc.field("kept")
    scanned = data.to_table(columns=["sample_id"], filter=kept).column("sample_id").combine_chunks()
    if pc.count_distinct(scanned, mode="all").as_py() != len(scanned):
        raise SelectionError(f"{where}: a sample_id appears twice among the kept rows")
    order = pc.sort_indices(scanned).to_numpy()
    ids = scanned.take(pa.array(order))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))  # scan position -> row of the matrix
    x: np.ndarray | None = None
    first = ""  # the row whose width the others must have
    seen = 0
    for batch in data.to_batches(columns=["sample_id", "embedding"], filter=kept, **_SCAN):
        if batch.num_rows == 0:
            continue
        block = list_matrix(
            batch.column("embedding"),
            ids=batch.column("sample_id"),
            where=f"{where}: ",
            dim=None if x is None else x.shape[1],
            dim_row=first,
        )
        if x is None:
            x = np.empty((len(ids), block.shape[1]), dtype=np.float32)
            first = f"row {batch.column('sample_id')[0]}"
        # The scan repeats the first one's order; if it ever did not, look the ids up (slower).
        if batch.column("sample_id").equals(scanned.slice(seen, batch.num_rows)):
            rows = rank[seen : seen + batch.num_rows]
        else:
            rows = pc.index_in(batch.column("sample_id"), value_set=ids).to_numpy(zero_copy_only=False)
        seen += batch.num_rows
        x[rows] = block
    if x is None:
        x = np.zeros((0, 0), dtype=np.float32)
    return ids, x


def select_stage(store: Any, cfg: Any, seed: int, part_rows: int = PART_ROWS) -> dict[str, Any]:
    """Select from a run's finished ``scored`` stage and write ``selected``; returns the figures.

    The stage folder is cleared first, so an interrupted attempt is simply run again.
    """
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    CONTRACT.check(store.columns(CONTRACT.input), f"input table {CONTRACT.input!r} of {store.url}")
    data = pds.dataset(store.fresh(store.path(CONTRACT.input)), filesystem=store.arrow_fs, format="parquet")
    start = time.perf_counter()
    ids, x = kept_matrix(data, store.url + "/" + CONTRACT.input)
    log.info("[selected] read %d kept rows x %d dims in %.1f s", x.shape[0], x.shape[1], time.perf_counter() - start)
    folder = store.begin(CONTRACT.name)
    if len(ids) == 0:
        store.write_table(CONTRACT.name, CONTRACT.produces.empty_table(), CONTRACT.produces)
        return _nothing()
    p = pick(x, cfg, seed)
    log.info("[selected] k-center (%s) picked %d rows in %.1f s", p.info["method"], len(p.order), p.info["seconds"])
    del x  # the matrix is done with; the write holds one window of rows
    start = time.perf_counter()
    picked = ids.take(pa.array(p.order))
    for part, first in enumerate(range(0, len(picked), part_rows)):
        window = picked[first : first + part_rows]
        rows = data.to_table(columns=list(CARRIED), filter=pc.field("sample_id").isin(window), **_SCAN)
        if rows.num_rows != len(window):  # the scored stage changed under us
            raise SelectionError(f"{store.url}: found {rows.num_rows} of {len(window)} selected rows in 'scored'")
        rows = schemas.conform(attach_picks(rows, window, first, p.distance_at_pick), CONTRACT.produces)
        pq.write_table(rows, f"{folder}/part-{part:05d}.parquet", filesystem=store.arrow_fs)
    log.info("[selected] wrote %d rows in %d parts in %.1f s", len(picked), part + 1, time.perf_counter() - start)
    return p.info

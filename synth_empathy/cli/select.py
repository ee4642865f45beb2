"""Diversity selection over a Parquet dataset: greedy k-center, standalone or in the pipeline.

Reads a Parquet file or folder (local path or any fsspec URL such as ``s3://bucket/x``),
takes an embedding column (list or fixed-size list of numbers) or embeds a text column
with :func:`synth_empathy.models.embedder.encode`, keeps ``k`` rows or a ``ratio`` of them by
greedy k-center (:mod:`synth_empathy.core.kcenter`), and writes to ``output``:

* ``selected.parquet`` - the id column, ``pick_order`` (0 = the start row) and
  ``distance_at_pick`` (distance of the pick to the earlier picks; inf for the start row),
  one row per selected row, in pick order;
* ``selection_report.json`` - sizes, method, covering radius, time and memory, and the
  rows dropped as near duplicates (``diversity.near_duplicate_cosine``) before k-center,
  with the method that found them (``near_duplicates``: exact or an approximate index
  with its audit, ``diversity.near_duplicate_index``).

The report is written last and marks the output as complete: an output folder without it
is unfinished. Each file is written under a temporary name and renamed into place. The
config is checked when it loads, the input's columns before any model is loaded, and
everything before anything is written; bad input raises
:class:`~synth_empathy.core.kcenter.SelectionError` with one line saying what and where.

The selection is the pipeline's own (:func:`synth_empathy.stages.selection.pick`) with the
config's ``diversity`` section and ``seed``, which the flags set: near duplicates dropped
first, the greedy started from a row drawn with ``numpy.random.default_rng(seed)``, so a
run is reproducible from its seed and picks what step 4 of a run picks from the same matrix.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
import uuid

import numpy as np

from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input, load_with_aliases
from synth_empathy.core.arrow_matrix import list_matrix
from synth_empathy.core.kcenter import METHODS, SelectionError, resolve_k
from synth_empathy.stages.selection import pick, with_picks

SELECTED_FILE = "selected.parquet"
REPORT_FILE = "selection_report.json"


def _check_columns(embedding_column, text_column, id_column) -> None:
    if not (text_column or embedding_column):
        raise SelectionError("name an embedding column or a text column to embed")
    if not id_column:
        raise SelectionError("name the id column (e.g. sample_id)")


def _open_dataset(input: str, storage_options: dict | None):
    """A pyarrow dataset over a Parquet file or folder behind any fsspec URL."""
    import fsspec
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    try:
        fs, path = fsspec.core.url_to_fs(input, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise SelectionError(f"input {input}: cannot open ({e})") from None
    try:
        if not fs.exists(path):
            raise SelectionError(f"input {input}: no such file or folder")
        return ds.dataset(path, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs)))
    except SelectionError:
        raise
    except Exception as e:  # unreadable footer, permission, empty folder, ...
        raise SelectionError(f"input {input}: cannot read as Parquet ({type(e).__name__}: {e})") from None


def _read(dataset, columns: list[str], input: str):
    names = dataset.schema.names
    for c in columns:
        if c not in names:
            raise SelectionError(f"input {input}: no column {c!r} (columns: {', '.join(names)})")
    return dataset.to_table(columns=columns)


def _write_atomic(fs, path: str, write) -> None:
    """Write through ``write(file)`` to a temporary name, then rename into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def run_selection(
    input: str,
    output: str,
    cfg=None,
    *,
    embedding_column: str | None = "embedding",
    text_column: str | None = None,
    id_column: str = "sample_id",
    storage_options: dict | None = None,
) -> dict:
    """Select a diverse subset of ``input`` into ``output``; returns the report.

    ``cfg`` is a loaded config (:func:`synth_empathy.config.load_config`; default: the
    default preset): the selection is the pipeline's own (:func:`synth_empathy.stages.selection.pick`)
    with its ``diversity`` section and ``seed``; ``quality.embedder`` embeds ``text_column``
    when that is set (``embedding_column`` is then unused).
    """
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth_empathy.config import load_config

    t0 = time.perf_counter()
    cfg = load_config() if cfg is None else cfg
    d, seed, embedder = cfg.diversity, cfg.seed, cfg.quality.embedder
    _check_columns(embedding_column, text_column, id_column)
    if text_column:
        from synth_empathy.models.weights import ModelNotFoundError, check_model

        try:  # a plainly missing model fails here, before any data is read
            check_model(embedder)
        except ModelNotFoundError as e:
            raise SelectionError(f"embedder {embedder!r}: {e}") from None
    dataset = _open_dataset(input, storage_options)
    source = text_column or embedding_column
    table = _read(dataset, [id_column, source], input)
    n = table.num_rows
    if n == 0:
        raise SelectionError(f"input {input}: no rows to select from")
    resolve_k(n, d.k, d.keep_ratio)  # a k above the rows fails here, before the embedder loads
    ids = table.column(id_column)
    if text_column:
        col = table.column(text_column)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise SelectionError(f"column {text_column!r}: expected text, got {col.type}")
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise SelectionError(f"column {text_column!r}, row {i}: text is null")
        texts = col.to_pylist()
        del table, col
        from synth_empathy.models.embedder import encode
        from synth_empathy.models.weights import ModelNotFoundError

        t_embed = time.perf_counter()
        try:
            x = encode(texts, model=embedder)
        except (ModelNotFoundError, OSError) as e:
            raise SelectionError(f"embedder {embedder!r}: cannot load ({e})") from None
        embed_seconds = time.perf_counter() - t_embed
        del texts
    else:
        x = list_matrix(table.column(embedding_column), embedding_column)
        del table
        embed_seconds = 0.0
    p = pick(x, d, seed)  # before anything is written: a k above the rows left fails here
    info = p.info

    out_fs, out_path = fsspec.core.url_to_fs(output, **(storage_options or {}))
    out_path = out_path.rstrip("/")
    out_fs.makedirs(out_path, exist_ok=True)
    report_path = f"{out_path}/{REPORT_FILE}"
    if out_fs.exists(report_path):  # an older run's report must not vouch for new files
        out_fs.rm(report_path)
    chosen = with_picks(pa.table({id_column: ids.take(pa.array(p.order))}), np.arange(len(p.order)), p.distance_at_pick)
    _write_atomic(out_fs, f"{out_path}/{SELECTED_FILE}", lambda f: pq.write_table(chosen, f))

    report = {
        "input": input,
        "output": output,
        "source": {"text_column": text_column, "embedder": embedder}
        if text_column
        else {"embedding_column": embedding_column},
        "id_column": id_column,
        "rows": n,
        "dim": int(x.shape[1]),
        "k": info["k"],
        "ratio_requested": d.keep_ratio if d.k is None else None,
        "k_requested": d.k,
        "kept_fraction": info["k"] / n,
        "method_requested": d.method,
        "method": info["method"],
        "device": info["device"],
        "shards": d.shards,
        "shard_by": d.shard_by,
        "per_shard": d.per_shard,
        "near_duplicate_cosine": d.near_duplicate_cosine,
        "near_duplicates": info.get("near_duplicates"),
        "dropped": info["dropped"],
        "rows_after_near_duplicates": info["candidates"],
        "seed": seed,
        "start_row": info["start_row"],
        "covering_radius": info["radius"],
        "selection_seconds": info["seconds"],
        "embedding_seconds": embed_seconds,
        "total_seconds": time.perf_counter() - t0,
        "peak_rss_bytes": _peak_rss_bytes(),
        "selection_peak_rss_growth_bytes": p.result.peak_rss_bytes,
        "memory_note": "peak_rss_bytes is this process's lifetime peak resident set (getrusage "
        "ru_maxrss); selection_peak_rss_growth_bytes is how far the selection raised it. "
        "Ray workers of the sharded method are not counted.",
        "details": p.result.details,
        "files": {"selected": f"{output.rstrip('/')}/{SELECTED_FILE}"},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    data = json.dumps(_json_safe(report), indent=2).encode()
    _write_atomic(out_fs, report_path, lambda f: f.write(data))
    return report


def _json_safe(v):
    if isinstance(v, dict):
        return {str(a): _json_safe(b) for a, b in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(b) for b in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="synth-empathy select",
        description="Keep a diverse subset of a Parquet dataset by greedy k-center. The size, "
        "method, shards, seed and embedder come from the config (diversity.*, seed, "
        "quality.embedder); the flags below are aliases for those keys.",
    )
    p.add_argument("input", help="Parquet file or folder, local path or URL (s3://, gs://, ...)")
    p.add_argument("output", help="output folder, local path or URL")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--embedding-column", default="embedding", help="list-of-floats column (default: embedding)")
    src.add_argument("--text-column", help="text column to embed instead of reading embeddings")
    p.add_argument("--id-column", default="sample_id", help="row id column written out (default: sample_id)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--k", type=int, help="number of rows to keep (alias of diversity.k)")
    size.add_argument("--ratio", type=float, help="fraction of rows to keep, in (0, 1] (diversity.keep_ratio)")
    p.add_argument("--method", choices=METHODS, help="alias of diversity.method")
    p.add_argument("--shards", type=int, help="parts for --method sharded, Ray tasks (diversity.shards)")
    p.add_argument("--seed", type=int, help="picks the start row (alias of seed)")
    p.add_argument("--embedder", help="model for --text-column (alias of quality.embedder)")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option, repeatable (e.g. anon=true); s3 options also come from storage.*",
    )
    add_config_arguments(p)
    return p


# flag -> config key; --k and --ratio exclude each other, so each also clears the other key
ALIASES = {
    "k": "diversity.k",
    "ratio": "diversity.keep_ratio",
    "method": "diversity.method",
    "shards": "diversity.shards",
    "seed": "seed",
    "embedder": "quality.embedder",
}


def _storage_options(pairs: list[str]) -> dict:
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SelectionError(f"--storage-option wants KEY=VALUE, got {item!r}")
        low = value.lower()
        out[key] = True if low == "true" else False if low == "false" else value
    return out


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """``synth-empathy select``: exit 0 on success, 2 with one ``error:`` line on bad input."""
    from synth_empathy.storage.run_store import storage_options

    a = _parser().parse_args(argv)
    if a.k is not None:
        a.overrides = [*a.overrides, "diversity.keep_ratio=null"]
    elif a.ratio is not None:
        a.overrides = [*a.overrides, "diversity.k=null"]
    cfg = load_with_aliases(a, ALIASES)
    report = run_selection(
        a.input,
        a.output,
        cfg,
        embedding_column=None if a.text_column else a.embedding_column,
        text_column=a.text_column,
        id_column=a.id_column,
        storage_options={**storage_options(a.input, cfg.storage), **_storage_options(a.storage_option)},
    )
    print(
        f"selected {report['k']} of {report['rows']} rows, covering radius "
        f"{report['covering_radius']:.4f} ({report['method']}, {report['device']}, "
        f"{report['selection_seconds']:.1f} s) -> {report['files']['selected']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage bookkeeping, in one place: done markers, resume, salvage, verification, manifest.

The pipeline and every standalone command (``judge``, ``select``, ``train``...) run their
stages through a :class:`StageRunner`, so "nothing lost, nothing doubled" is one piece of
code, not a habit:

* a stage with its ``<stage>.done.json`` marker is read back, never recomputed;
* a keyed stage (:class:`~synth_empathy.stages.contract.StageContract` with a ``key``)
  that was interrupted keeps the parts that read back whole (:meth:`RunStore.resume`),
  and only rows whose ids those parts do not hold go through it again;
* the stage's ``requires`` are checked against its input's schema before anything
  starts, and the columns it carries through are derived from that schema;
* the marker is written only after every part reads back and no id appears twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synth_empathy.executor.progress import StageProgress
from synth_empathy.stages.contract import StageContract
from synth_empathy.storage.run_store import RunStore, Salvage, exclude_ids

log = logging.getLogger(__name__)

# transform(ds, carry) -> ds: the stage's Ray Data wrapper, given the columns it carries
Transform = Callable[[Any, tuple[str, ...]], Any]


class StageRunner:
    def __init__(
        self, store: RunStore, manifest: dict[str, Any] | None = None, progress_interval: float = 20.0
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.progress_interval = progress_interval  # seconds between progress lines of an LLM stage
        self.timings: dict[str, float] = {}

    # -- any stage ---------------------------------------------------------------------
    def run(self, name: str, build: Callable[[], dict[str, Any] | None], key: str | None = "sample_id") -> dict:
        """Run ``build`` (which writes the stage's table) unless the stage is done; mark it done.

        ``build`` may return figures to keep in the marker. Returns the marker's content.
        """
        store = self.store
        if store.is_done(name):
            log.info("[%s] finished in an earlier attempt; reading it back", name)
            info = {**store.marker(name), "done_earlier": True}
            self.timings[name] = info.get("seconds", 0.0)
            self._record(name, info)
            return info
        log.info("[%s] running", name)
        start = time.perf_counter()
        extra = build() or {}
        self.timings[name] = round(time.perf_counter() - start, 2)
        info = {"seconds": self.timings[name], **store.verify(name, key), **extra}  # raises on a doubled id
        store.finish(name, info)
        self._record(name, info)
        log.info("[%s] done in %.1f s", name, self.timings[name])
        return info

    def table(self, contract: StageContract, make: Callable[[], pa.Table]) -> dict:
        """A stage computed in memory in one piece: written whole or not at all."""
        return self.parts(contract, lambda: [make()])

    def parts(self, contract: StageContract, make: Callable[[], Iterable[pa.Table]]) -> dict:
        """A stage made in the driver a table at a time (the seeds), each table one part; an
        interrupted attempt is cleared and made again (no marker, no salvage)."""
        return self.run(
            contract.name, lambda: self.store.write_parts(contract.name, make(), contract.produces), key=contract.key
        )

    # -- keyed Ray stages ----------------------------------------------------------------
    def keyed(
        self,
        contract: StageContract,
        transform: Transform,
        *,
        source: Callable[[Salvage], Any] | None = None,
        columns: list[str] | None = None,
        where: Any = None,
        prepare: Callable[[Any], Any] | None = None,
        part_rows: int | Callable[[int], int] | None = None,
        engine_progress: Callable[[], Any] | None = None,
    ) -> dict:
        """A Ray Data stage keyed by ``contract.key``, resumable row by row.

        The input is ``contract.input``'s table (optionally filtered by the Ray Data
        expression ``where``, then ``prepare``: the stage's own step that makes its row ids,
        e.g. one row per seed and sample) less the rows a salvaged part already holds; or, for input
        from outside the run, ``source(salvage)`` with its ``columns``: a Ray Dataset of
        the rows still to do, or None when none is left (then no engine starts).
        ``part_rows`` cuts the input into blocks of at most that many rows, each of which
        becomes one part: the progress a crash keeps (LLM stages); a function of the rows
        to do gives it for this attempt (:func:`synth_empathy.storage.parts.part_rows`). ``engine_progress``
        reads a shared engine's counts for the progress line
        (:meth:`synth_empathy.engines.shared.SharedEngines.progress`).
        """
        store = self.store
        if store.is_done(contract.name):
            return self.run(contract.name, lambda: None, key=contract.key)
        if columns is None:
            columns = store.columns(contract.input)
        where_from = f"input table {contract.input!r}" if source is None else "its input"
        contract.check(columns, where_from)  # before any engine starts
        carry = contract.carried(columns)

        def build() -> dict[str, Any]:
            import ray

            salvage = store.resume(contract.name, contract.key)
            if salvage.rows_kept:
                log.info(
                    "[%s] resuming: %d rows in %d complete parts kept, %d unreadable parts removed",
                    contract.name,
                    salvage.rows_kept,
                    salvage.parts_kept,
                    salvage.parts_dropped,
                )
            if source is not None:
                ds = source(salvage)
            else:
                ds = store.read_dataset(contract.input)
                if where is not None:
                    ds = ds.filter(expr=where)
                if prepare is not None:
                    ds = prepare(ds)
                if salvage.rows_kept:
                    ds = ds.map_batches(exclude_ids, fn_args=([ray.put(salvage.ids)],), batch_format="pyarrow")
            if ds is not None:
                # ids made by `prepare` are not in the input table: count the prepared rows then
                counted = source is not None or (contract.key or "sample_id") not in columns
                total = self._rows_to_do(contract, salvage, ds if counted else None, where)
                rows = part_rows(total) if callable(part_rows) else part_rows
                if rows:
                    log.info("[%s] %d rows to do, in parts of %d rows", contract.name, total, rows)
                    ds = ds.repartition(target_num_rows_per_block=rows, strict=True)
                with (
                    StageProgress(store, contract.name, total, contract.tokens, self.progress_interval, engine_progress)
                    if (contract.tokens)
                    else nullcontext()
                ):
                    store.write_dataset(contract.name, transform(ds, carry), contract.produces, resume=True)
            if not store.parts(contract.name):  # nothing to do and nothing kept: still a table with its schema
                store.write_table(contract.name, contract.produces.empty_table(), contract.produces)
            return {"salvaged": salvage.summary()}

        return self.run(contract.name, build, key=contract.key)

    # -- bookkeeping ---------------------------------------------------------------------
    def _rows_to_do(self, contract: StageContract, salvage: Salvage, ds: Any, where: Any) -> int:
        """Rows this attempt has to run: from the input table's footers and key column (or
        the given dataset's count), less what the salvaged parts hold."""
        if ds is not None:
            return ds.count()
        key = contract.key or "sample_id"
        filt = where.to_pyarrow() if where is not None else None
        ids = self.store.read_table(contract.input, columns=[key], filter=filt).column(key)
        if not salvage.rows_kept:
            return len(ids)
        return len(ids) - int(pc.sum(pc.is_in(ids, value_set=salvage.ids)).as_py() or 0)

    def _record(self, name: str, info: dict[str, Any]) -> None:
        if self.manifest is not None:
            self.manifest.setdefault("stages", {})[name] = info
            self.store.write_json("manifest.json", self.manifest)

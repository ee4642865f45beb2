"""The run folder: one Parquet dataset per stage, and a marker that says it is done.

Layout under ``<output>/<run_id>/``::

    config.yaml                 the resolved configuration of the run (secrets redacted)
    manifest.json               config, package versions, code revision, counts, timings
    <stage>/                    the stage's Parquet parts
    <stage>.done.json           written only after every part of <stage>/ is complete
    report.json, report.md, plots/*.png, selected.alpaca.jsonl, selected.chat.jsonl

A stage without its ``.done.json`` marker is unfinished whatever files its folder holds,
and nothing reads it as input. When it runs again, a keyed stage (:meth:`RunStore.resume`)
keeps the parts that read back whole, deletes the rest (half-written files), and the
caller skips the ids those parts hold; an unkeyed stage is cleared and run again.
Before the marker is written every part must read back and no id may appear twice.
``output`` may be a local folder or any fsspec URL (``s3://bucket/prefix``) whose
package is installed; :func:`storage_options` turns the ``storage`` config into the
options s3fs takes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

from synth_empathy.errors import DuplicateRowsError, StorageError  # noqa: F401 (re-exported)
from synth_empathy.schemas import conform

S3_PROTOCOLS = ("s3", "s3a")
WRITE_CPUS = 0.25  # CPUs a task that writes a stage's part asks Ray for
# Rows per Parquet row group of a part Ray Data writes. Left to Ray, each block a task hands
# the writer is its own row group: the quality stage's batches of 32 rows made parts of
# thousands of 32-row groups, whose footers (~17 KB parsed per group) the driver read back
# whole in verify and selection - 450 MiB at 200k rows, growing with N. A group of 8,192
# rows of 384-dim embeddings is ~12 MiB decoded, what a selection scan batch holds anyway.
ROW_GROUP_ROWS = 8192


def storage_options(url: str, storage: Any) -> dict[str, Any]:
    """fsspec options for ``url`` from the ``storage`` config section.

    Only ``s3://`` URLs take them (s3fs keyword arguments); local paths and other
    protocols get ``{}`` and use their own package's defaults. Empty fields are left
    out, so boto's standard chain (env vars, AWS_PROFILE, instance role) still applies.
    """
    protocol = fsspec.core.split_protocol(str(url))[0]
    if storage is None or protocol not in S3_PROTOCOLS:
        return {}
    opts: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if storage.get("endpoint_url"):
        client["endpoint_url"] = storage.endpoint_url
    if storage.get("region"):
        client["region_name"] = storage.region
    if client:
        opts["client_kwargs"] = client
    if storage.get("profile"):
        opts["profile"] = storage.profile
    if storage.get("key"):
        opts["key"], opts["secret"] = storage.key, storage.secret
    if storage.get("anon"):
        opts["anon"] = True
    return opts


def _cause(e: BaseException) -> str:
    """The one-line reason of a storage failure, without the traceback noise."""
    text = " ".join(str(e).split()) or type(e).__name__
    code = None
    cause: BaseException | None = e
    while cause is not None and code is None:  # s3fs raises OSError from botocore's ClientError
        code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code")
        cause = cause.__cause__ or cause.__context__
    return f"{type(e).__name__} ({code}): {text[:300]}" if code else f"{type(e).__name__}: {text[:300]}"


_RAISE = object()  # read_json: no default given


@dataclass(frozen=True)
class Salvage:
    """What :meth:`RunStore.resume` kept of an unfinished keyed stage."""

    ids: pa.Array  # the ids the kept parts hold, sorted
    parts_kept: int
    parts_dropped: int

    @property
    def rows_kept(self) -> int:
        return len(self.ids)

    def summary(self) -> dict[str, int]:
        return {"parts_kept": self.parts_kept, "parts_dropped": self.parts_dropped, "rows_kept": self.rows_kept}


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class RunStore:
    def __init__(self, output: str, run_id: str, storage_options: dict[str, Any] | None = None):
        try:
            self.fs, base = fsspec.core.url_to_fs(output, **(storage_options or {}))
        except (ImportError, ValueError) as e:
            raise StorageError(f"output {output!r}: {_cause(e)}") from None
        self.root = base.rstrip("/") + "/" + run_id
        self.run_id = run_id
        self.url = output.rstrip("/") + "/" + run_id
        # Ray Data and pyarrow write through the same fsspec filesystem.
        self.arrow_fs = PyFileSystem(FSSpecHandler(self.fs))

    # -- checks ---------------------------------------------------------------------
    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def check_writable(self) -> None:
        """Write, read back and delete a probe object in the run folder, or fail with one line.

        On object stores nothing is created but the probe: s3fs's ``makedirs`` would
        create a missing bucket, and a missing bucket must be an error.
        """
        probe = f"{self.root}/.write-probe-{uuid.uuid4().hex[:8]}"
        where = self.url
        if not self.local:
            bucket = self.root.split("/", 1)[0]
            where = f"{self.url} (bucket {bucket!r}"
            endpoint = (getattr(self.fs, "client_kwargs", None) or {}).get("endpoint_url")
            where += f" at {endpoint})" if endpoint else ")"
        try:
            if self.local:
                self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            with self.fs.open(probe, "rb") as f:
                f.read()
            self.fs.rm(probe)
        except Exception as e:  # the filesystem's own error type varies by backend
            raise StorageError(f"output {where} is not writable: {_cause(e)}") from None

    # -- paths ------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _marker(self, stage: str) -> str:
        return self.path(f"{stage}.done.json")

    def fresh(self, path: str) -> str:
        """Forget cached listings under ``path``: Ray workers write through their own
        filesystem objects, and s3fs would otherwise answer from a stale listing."""
        self.fs.invalidate_cache(path)
        return path

    def is_done(self, stage: str) -> bool:
        return self.fs.exists(self.fresh(self._marker(stage)))

    def marker(self, stage: str) -> dict[str, Any]:
        with self.fs.open(self._marker(stage), "r") as f:
            return json.load(f)

    # -- writing ------------------------------------------------------------------------
    def begin(self, stage: str) -> str:
        """Clear what an unfinished attempt left and return the stage folder."""
        folder = self.path(stage)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)
        self.fs.makedirs(folder, exist_ok=True)
        return folder

    def parts(self, stage: str) -> list:
        """Paths of the files in a stage folder (Ray writes it flat)."""
        folder = self.fresh(self.path(stage))
        if not self.fs.exists(folder):
            return []
        return sorted(p for p in self.fs.find(folder) if not p.rstrip("/").endswith("/" + stage))

    def resume(self, stage: str, key: str = "sample_id") -> Salvage:
        """Salvage an unfinished keyed stage; return what its complete parts hold.

        A part counts only if its footer and its ``key`` column read back (a half-written
        Parquet file has no footer); every other file is deleted, and so is a part whose
        ids another kept part already holds, so what stays holds each id once. The caller
        then runs the stage on the rows whose ids are not in :attr:`Salvage.ids` and
        writes new parts next to the kept ones.
        """
        folder = self.path(stage)
        self.fs.makedirs(folder, exist_ok=True)
        kept, dropped, seen = 0, 0, set()
        for part in self.parts(stage):
            ids = None
            if part.endswith(".parquet"):
                try:
                    ids = pq.read_table(part, columns=[key], filesystem=self.arrow_fs).column(key).to_pylist()
                except Exception:  # truncated, empty, or not Parquet at all
                    ids = None
            if ids is None or len(set(ids)) != len(ids) or seen.intersection(ids):
                self.fs.rm(part)
                dropped += 1
                continue
            seen.update(ids)
            kept += 1
        return Salvage(pa.array(sorted(seen), type=pa.string()), parts_kept=kept, parts_dropped=dropped)

    def columns(self, stage: str) -> list[str]:
        """The column names of a finished stage, from its Parquet footers alone."""
        import pyarrow.dataset as pds

        return list(pds.dataset(self._require(stage), filesystem=self.arrow_fs, format="parquet").schema.names)

    def write_dataset(self, stage: str, ds, schema: pa.Schema, resume: bool = False) -> None:
        """Stream a Ray Dataset into the stage folder, every batch cast to the schema.

        ``resume=True`` keeps what :meth:`resume` salvaged there; otherwise the folder
        is cleared first. Ray Data writes one part per block as blocks stream out, so
        an interrupted stage leaves every finished block's part behind.
        """
        folder = self.path(stage) if resume else self.begin(stage)
        if resume:
            self.fs.makedirs(folder, exist_ok=True)
        # Writing a part is light (mostly I/O). At Ray Data's default of one CPU per task the
        # writes waited behind the reads and the engines on a small node, and a fast engine's
        # answers piled up unwritten: half of them lost at a kill (benchmarks/README.md,
        # "A million seeds through every stage").
        # Nor did Ray Data hold the engines back: it pushes back by object-store bytes, and
        # 266,000 short answers (~130 MB) were far under the budget. At most a few finished
        # blocks (parts) now wait between two operators (synth_empathy.storage.backpressure).
        from synth_empathy.storage.backpressure import bound_queued_blocks

        light = {"num_cpus": WRITE_CPUS}
        bound_queued_blocks(ds.map_batches(conform, fn_args=(schema,), batch_format="pyarrow", **light)).write_parquet(
            folder, filesystem=self.arrow_fs, ray_remote_args=light, row_group_size=ROW_GROUP_ROWS
        )

    def write_table(self, stage: str, table: pa.Table, schema: pa.Schema) -> None:
        self.write_parts(stage, [table], schema)

    def write_parts(self, stage: str, tables: Iterable[pa.Table], schema: pa.Schema) -> None:
        """Each table one part, as they come (a stage made in the driver a batch at a time)."""
        folder = self.begin(stage)
        for i, table in enumerate(tables):
            pq.write_table(conform(table, schema), f"{folder}/part-{i}.parquet", filesystem=self.arrow_fs)

    def verify(self, stage: str, key: str | None = "sample_id") -> dict[str, Any]:
        """Check that every part of a stage reads back and that ``key`` is unique.

        Returns ``{"rows", "parts"}``; raises :class:`DuplicateRowsError` on a doubled id
        (and whatever pyarrow raises on an unreadable part), so no marker is written.
        """
        import pyarrow.dataset as pds

        data = pds.dataset(self.fresh(self.path(stage)), filesystem=self.arrow_fs, format="parquet")
        info = {"rows": data.count_rows(), "parts": len(data.files)}
        if key and key in data.schema.names:
            ids = data.to_table(columns=[key]).column(key)
            unique = pc.count_distinct(ids, mode="all").as_py()
            if unique != len(ids):
                counts = pc.value_counts(ids)
                doubled = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:5]
                raise DuplicateRowsError(
                    f"stage {stage!r} of {self.url} holds {len(ids) - unique} doubled {key}s "
                    f"(e.g. {doubled}); not marking it done"
                )
        return info

    def finish(self, stage: str, info: dict[str, Any]) -> None:
        """Mark the stage done: from now on it is read, never recomputed."""
        self.write_json(f"{stage}.done.json", info)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        # Local files go to a temporary name first so a reader never sees half of one;
        # object stores publish a whole object on close anyway.
        target = self.path(name)
        if isinstance(self.fs, LocalFileSystem):
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, target)
        else:
            with self.fs.open(target, "wb") as f:
                f.write(data)

    # -- reading ------------------------------------------------------------------------
    def read_json(self, name: str, missing: Any = _RAISE) -> Any:
        """A JSON file of the run (``missing`` when given and the file does not exist)."""
        try:
            with self.fs.open(self.path(name), "r") as f:
                return json.load(f)
        except FileNotFoundError:
            if missing is _RAISE:
                raise
            return missing

    def _require(self, stage: str) -> str:
        if not self.is_done(stage):
            raise RuntimeError(f"stage {stage!r} of run {self.url} is not finished")
        return self.fresh(self.path(stage))

    def read_dataset(self, stage: str):
        import ray

        return ray.data.read_parquet(self._require(stage), filesystem=self.arrow_fs, file_extensions=["parquet"])

    def count_rows(self, stage: str) -> int:
        """Rows in a stage folder, from the Parquet footers alone."""
        import pyarrow.dataset as pds

        return pds.dataset(self.fresh(self.path(stage)), filesystem=self.arrow_fs, format="parquet").count_rows()

    def read_table(self, stage: str, columns=None, filter=None) -> pa.Table:
        return pq.read_table(self._require(stage), columns=columns, filters=filter, filesystem=self.arrow_fs)


def exclude_ids(batch: pa.Table, done: list, key: str = "sample_id") -> pa.Table:
    """Drop the rows whose ``key`` a salvaged part already holds (``done`` = [ObjectRef])."""
    import ray

    ref = done[0]
    ids = _DONE_CACHE.get(ref.hex())
    if ids is None:
        ids = _DONE_CACHE[ref.hex()] = ray.get(ref)
    return batch.filter(pc.invert(pc.is_in(batch.column(key), value_set=ids)))


_DONE_CACHE: dict[str, pa.Array] = {}

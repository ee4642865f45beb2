"""The run folder: one Parquet dataset per stage, and a marker that says it is done.

Layout under ``<output>/<run_id>/``::

    config.yaml                 the resolved configuration of the run
    <stage>/                    the stage's Parquet parts
    <stage>.done.json           written only after every part of <stage>/ is written
    report.json, report.md, plots/*.png, selected.alpaca.jsonl, selected.chat.jsonl

A stage without its ``.done.json`` marker is unfinished whatever files its folder holds:
it is cleared and run again, and nothing reads it as input. ``output`` may be a local
folder or any fsspec URL (``s3://bucket/prefix``) whose package is installed.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from synth_empathy.schemas import conform


class StorageError(RuntimeError):
    """The output location cannot be used; raised before any model loads."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class RunStore:
    def __init__(self, output: str, run_id: str, storage_options: Optional[Dict[str, Any]] = None):
        self.fs, base = fsspec.core.url_to_fs(output, **(storage_options or {}))
        self.root = base.rstrip("/") + "/" + run_id
        self.run_id = run_id
        self.url = output.rstrip("/") + "/" + run_id
        # Ray Data and pyarrow write through the same fsspec filesystem.
        self.arrow_fs = PyFileSystem(FSSpecHandler(self.fs))

    # -- checks ---------------------------------------------------------------------
    def check_writable(self) -> None:
        """Create the run folder and a probe file, or fail with one line."""
        probe = f"{self.root}/.write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except Exception as e:  # the filesystem's own error type varies by backend
            raise StorageError(f"output {self.url!r} is not writable: {type(e).__name__}: {e}") from None

    # -- paths ------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _marker(self, stage: str) -> str:
        return self.path(f"{stage}.done.json")

    def is_done(self, stage: str) -> bool:
        return self.fs.exists(self._marker(stage))

    def marker(self, stage: str) -> Dict[str, Any]:
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

    def write_dataset(self, stage: str, ds, schema: pa.Schema) -> None:
        """Stream a Ray Dataset into the stage folder, every batch cast to the schema."""
        folder = self.begin(stage)
        ds.map_batches(conform, fn_args=(schema,), batch_format="pyarrow").write_parquet(
            folder, filesystem=self.arrow_fs
        )

    def write_table(self, stage: str, table: pa.Table, schema: pa.Schema) -> None:
        folder = self.begin(stage)
        pq.write_table(conform(table, schema), f"{folder}/part-0.parquet", filesystem=self.arrow_fs)

    def finish(self, stage: str, info: Dict[str, Any]) -> None:
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
    def _require(self, stage: str) -> str:
        if not self.is_done(stage):
            raise RuntimeError(f"stage {stage!r} of run {self.url} is not finished")
        return self.path(stage)

    def read_dataset(self, stage: str):
        import ray

        return ray.data.read_parquet(self._require(stage), filesystem=self.arrow_fs, file_extensions=["parquet"])

    def count_rows(self, stage: str) -> int:
        """Rows in a stage folder, from the Parquet footers alone."""
        import pyarrow.dataset as pds

        return pds.dataset(self.path(stage), filesystem=self.arrow_fs, format="parquet").count_rows()

    def read_table(self, stage: str, columns=None, filter=None) -> pa.Table:
        return pq.read_table(self._require(stage), columns=columns, filters=filter, filesystem=self.arrow_fs)

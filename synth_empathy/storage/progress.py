"""Progress a person can read: rows done of total, generated tokens/s and an ETA.

An LLM stage writes one Parquet part per block of ``storage.part_rows`` rows as the
engine finishes them, so the stage folder itself says how far the stage is. A
:class:`StageProgress` thread reads the footers (and the stage's token column) of the
parts that appeared since the stage started and logs one line every ``interval``
seconds, the same on a laptop, in a Ray job's log and against object storage, where a
terminal progress bar would print nothing useful.
"""

from __future__ import annotations

import logging
import threading
import time

import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "ETA unknown"
    seconds = int(round(seconds))
    return f"ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"ETA {seconds}s"


def progress_line(stage: str, done: int, total: int, tokens: int, elapsed: float, rate_since: float) -> str:
    """``[stage] 32/98 rows (33%), 118 tok/s, ETA 1m40s, 55 s`` (the rate over ``rate_since`` s)."""
    pct = 100 * done / total if total else 100.0
    parts = [f"[{stage}] {done}/{total} rows ({pct:.0f}%)"]
    if tokens:
        parts.append(f"{tokens / max(rate_since, 1e-9):.0f} tok/s")
    if done == 0:
        parts.append(
            "waiting for the first part (engine starting or first rows)" if elapsed < 120 else "no part finished yet"
        )
    else:
        parts.append(eta_text((total - done) * elapsed / done if done < total else 0))
    parts.append(f"{elapsed:.0f} s")
    return ", ".join(parts)


class StageProgress:
    """Logs a stage's progress from the parts in its folder until stopped."""

    def __init__(self, store, stage: str, total: int, tokens_column: str | None, interval: float = 20.0) -> None:
        self.store, self.stage, self.total, self.tokens_column = store, stage, total, tokens_column
        self.interval = interval
        self._seen: dict[str, tuple[int, int]] = {}  # part path -> (rows, tokens)
        self._before = set(store.parts(stage))  # salvaged parts do not count as this attempt's work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress-{stage}", daemon=True)
        self._start = time.perf_counter()

    def __enter__(self) -> StageProgress:
        if self.total > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll(self) -> tuple[int, int]:
        """(rows, tokens) in the parts finished since the start, reading each new footer once."""
        for path in self.store.parts(self.stage):
            if path in self._before or path in self._seen or not path.endswith(".parquet"):
                continue
            try:  # a part still being written has no footer yet: next time
                with self.store.fs.open(path, "rb") as f:
                    meta = pq.ParquetFile(f).metadata
                    rows, tokens = meta.num_rows, 0
                    if self.tokens_column and self.tokens_column in meta.schema.names:
                        f.seek(0)
                        column = pq.read_table(f, columns=[self.tokens_column]).column(0)
                        tokens = int(sum(v for v in column.to_pylist() if v))
            except Exception:
                continue
            self._seen[path] = (rows, tokens)
        return sum(r for r, _ in self._seen.values()), sum(t for _, t in self._seen.values())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            done, tokens = self.poll()
            elapsed = time.perf_counter() - self._start
            log.info(progress_line(self.stage, min(done, self.total), self.total, tokens, elapsed, elapsed))

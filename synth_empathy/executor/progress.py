"""Progress a person can read: rows done of total, generated tokens/s and an ETA.

An LLM stage writes one Parquet part per block of ``storage.part_rows`` rows as the
engine finishes them, so the stage folder itself says how far the stage is. A
:class:`StageProgress` thread reads the footers (and the stage's token column) of the
parts that appeared since the stage started and logs one line every ``interval``
seconds, the same on a laptop, in a Ray job's log and against object storage, where a
terminal progress bar would print nothing useful.

A stage that sends to a shared engine (:mod:`synth_empathy.engines.shared`) gets
its rows back in batches that finish together near the stage's end (every row of a small
stage is in the engine at once), so its parts say nothing until then. There the line
comes from the engine instead: :class:`synth_empathy.engines.counters.EngineCounters`, kept in the engine's replica,
counts each stage's requests and tokens (the stage's name travels in every request under
:data:`STAGE_TAG`), and :func:`served_line` turns them into rows answered, tok/s and an
ETA.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

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


RATE_AFTER_S = 10.0  # seconds of a stage's requests before a rate over all of them is shown
ENGINE_SAMPLE_S = 5.0  # seconds between two reads of the engine's counts (the rate's window)


def engine_rate(previous: dict[str, Any] | None, snap: dict[str, Any]) -> float | None:
    """Generated tokens/s since the ``previous`` snapshot of the stage (the engine's rate
    now), or over the whole stage for its first line. None while the engine still reads
    the prompts (fewer tokens than requests in flight): the prefill at a generation's
    start would otherwise promise an ETA of hours."""
    tokens = snap["tokens"] + (snap["tokens_in_flight"] or 0)
    if snap["in_flight"] and snap["tokens_in_flight"] is not None and snap["tokens_in_flight"] < snap["in_flight"]:
        return None
    if previous is not None and snap["busy_s"] - previous["busy_s"] >= 1.0:
        before = previous["tokens"] + (previous["tokens_in_flight"] or 0)
        return max(tokens - before, 0) / (snap["busy_s"] - previous["busy_s"])
    return tokens / snap["busy_s"] if snap["busy_s"] >= RATE_AFTER_S else None


def served_line(
    stage: str, total: int, snap: dict[str, Any] | str | None, written: int, elapsed: float, rate: float | None = None
) -> str:
    """``[generations] 54/98 rows answered (55%), 16 written, 175 tok/s, ETA 40s, 100 s``.

    ``snap`` is :meth:`EngineCounters.snapshot` of the stage, ``"starting"`` while its
    engine starts, None before its first request; ``rate`` is :func:`engine_rate`. The
    ETA assumes every unanswered row runs to ``max_tokens`` at that rate (the tokens of
    answers still being generated counted): long for answers that stop early, short by
    the last batch's slower steps and the parts' writing.
    """
    if not isinstance(snap, dict):
        what = "engine starting" if snap == "starting" else "sending the first rows"
        return f"[{stage}] 0/{total} rows, {what}, {elapsed:.0f} s"
    done = min(snap["answered"] + snap["failed"], total)
    pct = 100 * done / total if total else 100.0
    head = f"[{stage}] {done}/{total} rows answered ({pct:.0f}%"
    head += f", {snap['failed']} failed)" if snap["failed"] else ")"
    parts = [head, f"{written} written"]
    if done >= total:
        parts.append("writing the last parts")
    elif rate is None:
        parts.append("reading the prompts" if snap["in_flight"] else eta_text(None))
    else:
        parts.append(f"{rate:.0f} tok/s")
        if rate > 0 and snap["max_tokens"]:
            left = max((total - done) * snap["max_tokens"] - (snap["tokens_in_flight"] or 0), 0)
            parts.append(eta_text(left / rate))
        else:
            parts.append(eta_text(None))
    parts.append(f"{elapsed:.0f} s")
    return ", ".join(parts)


class StageProgress:
    """Logs a stage's progress until stopped: from the parts in its folder, or, given
    ``engine`` (a callable returning the stage's :meth:`EngineCounters.snapshot` from its
    shared engine), from the engine."""

    def __init__(
        self,
        store,
        stage: str,
        total: int,
        tokens_column: str | None,
        interval: float = 20.0,
        engine: Callable[[], dict[str, Any] | str | None] | None = None,
    ) -> None:
        self.store, self.stage, self.total, self.tokens_column = store, stage, total, tokens_column
        self.interval, self.engine = interval, engine
        self._previous: dict[str, Any] | None = None  # the engine's last snapshot (the rate since)
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

    def sample(self) -> tuple[dict[str, Any] | str | None, float | None] | None:
        """The engine's snapshot of the stage and its rate since the previous sample; None
        where the engine does not answer (busy or gone: the parts still tell)."""
        try:
            snap = self.engine()
        except Exception as exc:
            log.debug("[%s] no progress from the engine: %s", self.stage, exc)
            return None
        rate = None
        if isinstance(snap, dict):
            rate = engine_rate(self._previous, snap)
            self._previous = snap
        return snap, rate

    def line(self) -> str:
        done, tokens = self.poll()
        elapsed = time.perf_counter() - self._start
        sampled = self.sample() if self.engine is not None else None
        if sampled is not None:
            snap, rate = sampled
            return served_line(self.stage, self.total, snap, min(done, self.total), elapsed, rate)
        return progress_line(self.stage, min(done, self.total), self.total, tokens, elapsed, elapsed)

    def _loop(self) -> None:
        # The engine is sampled every few seconds between lines, so that a line's rate is
        # the engine's over the last seconds, not a mean that still holds the prompts' prefill.
        poll = min(self.interval, ENGINE_SAMPLE_S) if self.engine is not None else self.interval
        last = time.perf_counter()
        while not self._stop.wait(poll):
            if time.perf_counter() - last >= self.interval - poll / 2:
                log.info(self.line())
                last = time.perf_counter()
            elif self.engine is not None:
                self.sample()

"""Progress lines from the parts a stage has written so far."""

import pyarrow as pa
import pyarrow.parquet as pq

from synth_empathy.engines.counters import EngineCounters
from synth_empathy.executor.progress import (
    StageProgress,
    engine_rate,
    eta_text,
    progress_line,
    served_line,
)
from synth_empathy.storage.run_store import RunStore


def test_line_shows_rows_rate_and_eta():
    assert progress_line("generations", 32, 96, 3200, 40.0, 40.0) == (
        "[generations] 32/96 rows (33%), 80 tok/s, ETA 1m20s, 40 s"
    )
    assert "waiting for the first part" in progress_line("judged", 0, 10, 0, 30.0, 30.0)
    assert eta_text(None) == "ETA unknown" and eta_text(7.4) == "ETA 7s"


def test_counts_only_new_readable_parts_with_their_tokens(tmp_path):
    store = RunStore(str(tmp_path), "r")
    folder = tmp_path / "r" / "discriminated"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"sample_id": ["a"], "disc_num_tokens": [5]}), folder / "old.parquet")  # salvaged
    progress = StageProgress(store, "discriminated", total=3, tokens_column="disc_num_tokens")
    pq.write_table(pa.table({"sample_id": ["b", "c"], "disc_num_tokens": [7, 11]}), folder / "new.parquet")
    (folder / "half.parquet").write_bytes(b"PAR1 not yet")  # still being written
    assert progress.poll() == (2, 18)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_engine_counts_each_stages_requests_and_tokens():
    clock = Clock()
    counts = EngineCounters(clock)
    assert counts.snapshot("generation", 0) is None  # before its first request
    for _ in range(3):
        counts.received("generation", 240)
    clock.now += 30
    counts.finished("generation", 200)
    counts.finished("generation", 0, failed=True)
    snap = counts.snapshot("generation", 150)
    assert (snap["received"], snap["answered"], snap["failed"], snap["in_flight"]) == (3, 1, 1, 1)
    assert (snap["tokens"], snap["tokens_in_flight"], snap["max_tokens"], snap["busy_s"]) == (200, 150, 240, 30)
    counts.finished("generation", 240)
    counts.received("discriminator", 64)
    # The engine's tokens in flight are the stage's only while it has requests in flight.
    assert counts.snapshot("generation", 40)["tokens_in_flight"] == 0
    assert counts.snapshot("discriminator", 40)["tokens_in_flight"] == 40
    assert counts.snapshot("discriminator", None)["tokens_in_flight"] is None  # unknown stays unknown


def test_a_served_stages_line_shows_rows_answered_rate_and_an_eta_bound():
    assert served_line("generations", 98, "starting", 0, 20) == "[generations] 0/98 rows, engine starting, 20 s"
    assert served_line("generations", 98, None, 0, 40) == "[generations] 0/98 rows, sending the first rows, 40 s"
    snap = dict(answered=40, failed=2, in_flight=56, tokens=8000, tokens_in_flight=4000, max_tokens=240, busy_s=60.0)
    # 56 rows left at most 240 tokens each, 4,000 of them done: 9,440 at 200 tok/s
    assert served_line("generations", 98, snap, 16, 90, rate=200.0) == (
        "[generations] 42/98 rows answered (43%, 2 failed), 16 written, 200 tok/s, ETA 47s, 90 s"
    )
    reading = dict(snap, answered=0, failed=0, in_flight=98, tokens=0, tokens_in_flight=40)
    assert served_line("generations", 98, reading, 0, 35) == (
        "[generations] 0/98 rows answered (0%), 0 written, reading the prompts, 35 s"
    )
    done = dict(snap, answered=98, failed=0, in_flight=0)
    assert "writing the last parts" in served_line("generations", 98, done, 64, 130)


def test_the_rate_is_the_engines_since_the_last_line_and_none_while_it_reads_prompts():
    first = dict(in_flight=98, tokens=0, tokens_in_flight=40, busy_s=12.0)
    assert engine_rate(None, first) is None  # 40 tokens for 98 requests: prefill
    second = dict(in_flight=98, tokens=0, tokens_in_flight=1240, busy_s=32.0)
    assert engine_rate(None, second) == 1240 / 32.0  # the first line: the stage's mean
    third = dict(in_flight=92, tokens=1500, tokens_in_flight=3740, busy_s=52.0)
    assert engine_rate(second, third) == 200.0  # (5,240 - 1,240) tokens in 20 s
    assert engine_rate(None, dict(first, tokens_in_flight=300, busy_s=4.0)) is None  # too short to tell
    unknown = dict(third, tokens_in_flight=None)  # a vLLM that keeps them elsewhere: finished answers only
    assert engine_rate(dict(second, tokens_in_flight=None), unknown) == 1500 / 20


def test_the_line_falls_back_to_the_parts_when_the_engine_does_not_answer(tmp_path):
    store = RunStore(str(tmp_path), "r")
    (tmp_path / "r" / "judged").mkdir(parents=True)

    def gone():
        raise TimeoutError("no answer in 10 s")

    line = StageProgress(store, "judged", total=4, tokens_column="judge_num_tokens", engine=gone).line()
    assert line.startswith("[judged] 0/4 rows (0%), waiting for the first part")


def test_a_line_rates_the_engine_over_the_last_sample(tmp_path):
    store = RunStore(str(tmp_path), "r")
    (tmp_path / "r" / "generations").mkdir(parents=True)
    base = dict(answered=0, failed=0, in_flight=98, tokens=0, max_tokens=240)
    snaps = iter([dict(base, tokens_in_flight=1000, busy_s=30.0), dict(base, tokens_in_flight=2000, busy_s=35.0)])
    progress = StageProgress(store, "generations", 98, "num_generated_tokens", engine=lambda: next(snaps))
    progress.sample()  # between two lines
    assert ", 200 tok/s, ETA 1m48s, " in progress.line()  # (98 x 240 - 2,000) / 200

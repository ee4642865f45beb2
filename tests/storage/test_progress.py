"""Progress lines from the parts a stage has written so far."""

import pyarrow as pa
import pyarrow.parquet as pq

from synth_empathy.storage.progress import EngineCounters, StageProgress, eta_text, progress_line, served_line
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
    assert counts.in_flight() == 1


def test_a_served_stages_line_shows_rows_answered_rate_and_an_eta_bound():
    assert served_line("generations", 98, "starting", 0, 20) == "[generations] 0/98 rows, engine starting, 20 s"
    assert served_line("generations", 98, None, 0, 40) == "[generations] 0/98 rows, sending the first rows, 40 s"
    snap = dict(answered=40, failed=2, tokens=8000, tokens_in_flight=4000, max_tokens=240, busy_s=60.0)
    # 12,000 tokens in 60 s; 56 rows left at most 240 tokens each, 4,000 of them done: 9,440 / 200
    assert served_line("generations", 98, snap, 16, 90) == (
        "[generations] 42/98 rows answered (43%, 2 failed), 16 written, 200 tok/s, ETA at most 47s, 90 s"
    )
    early = dict(snap, answered=0, failed=0, tokens=0, tokens_in_flight=30, busy_s=2.0)
    assert served_line("judged", 8, early, 0, 5) == "[judged] 0/8 rows answered (0%), 0 written, ETA unknown, 5 s"
    done = dict(snap, answered=98, failed=0)
    assert "writing the last parts" in served_line("generations", 98, done, 64, 130)


def test_the_line_falls_back_to_the_parts_when_the_engine_does_not_answer(tmp_path):
    store = RunStore(str(tmp_path), "r")
    (tmp_path / "r" / "judged").mkdir(parents=True)

    def gone():
        raise TimeoutError("no answer in 10 s")

    line = StageProgress(store, "judged", total=4, tokens_column="judge_num_tokens", engine=gone).line()
    assert line.startswith("[judged] 0/4 rows (0%), waiting for the first part")

"""Progress lines from the parts a stage has written so far."""

import pyarrow as pa
import pyarrow.parquet as pq

from synth_empathy.storage.progress import StageProgress, eta_text, progress_line
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

"""benchmarks/chaos.py's pure parts: when a kill fires (read from a run folder of real
Parquet parts) and the verdict. No Ray, no vLLM: the benchmark itself runs the pipeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def chaos():
    """The script as a module (it imports its sibling machine.py only in main())."""
    spec = importlib.util.spec_from_file_location("chaos_bench", BENCH / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def part(run: Path, stage: str, name: str, ids: list[str], **cols) -> Path:
    (run / stage).mkdir(parents=True, exist_ok=True)
    path = run / stage / name
    pq.write_table(pa.table({"sample_id": ids, **cols}), path)
    return path


def mark(run: Path, stage: str) -> None:
    (run / f"{stage}.done.json").write_text("{}")


def test_kill_moment_needs_new_whole_parts_and_no_marker(chaos, tmp_path):
    run = tmp_path / "chaos"
    part(run, "generations", "old.parquet", ["a", "b"])  # kept from an earlier attempt
    before = chaos.whole_parts(run, "generations")
    assert before == {"old.parquet"}
    assert not chaos.kill_moment(run, "generations", before, 1)  # only old parts: not this attempt's

    whole = part(run, "generations", "new1.parquet", ["c", "d"])
    (run / "generations" / "new2.parquet").write_bytes(whole.read_bytes()[:40])  # being written: no footer
    assert chaos.kill_moment(run, "generations", before, 1)
    assert not chaos.kill_moment(run, "generations", before, 2)  # the half-written part does not count

    part(run, "generations", "new3.parquet", ["e", "f"])
    assert chaos.kill_moment(run, "generations", before, 2)
    mark(run, "generations")
    assert not chaos.kill_moment(run, "generations", before, 1)  # done: too late
    assert not chaos.kill_moment(run, "samples", set(), 1)  # no folder yet


def test_expected_parts_and_wait_for(chaos, tmp_path):
    run = tmp_path / "chaos"
    (run).mkdir()
    (run / "config.yaml").write_text("storage:\n  part_rows: 2\ngeneration:\n  samples_per_seed: 1\n")
    assert chaos.expected_parts(run, "generations", set()) is None  # seeds not finished: unknown
    part(run, "seeds", "part-0.parquet", [f"s{i}" for i in range(7)])
    mark(run, "seeds")
    assert chaos.expected_parts(run, "generations", set()) == 4  # 7 rows in parts of 2
    part(run, "generations", "old.parquet", ["a", "b"])
    assert chaos.expected_parts(run, "generations", {"old.parquet"}) == 3  # 5 rows left
    assert chaos.expected_parts(run, "samples", set()) is None  # Ray decides its blocks

    part(run, "samples", "p.parquet", list("abcde"), drop_reason=[None, "x", None, None, "y"])
    mark(run, "samples")
    assert chaos.expected_parts(run, "discriminated", set()) == 2  # the 3 rows kept for it

    assert [chaos.wait_for_parts(u, 4) for u in (0.0, 0.34, 0.67, 0.999999)] == [1, 2, 3, 3]
    assert chaos.wait_for_parts(0.9, None) == chaos.wait_for_parts(0.9, 1) == chaos.wait_for_parts(0.9, 0) == 1
    # with kills still to land, a kill waits for at most its share of the parts
    assert [chaos.wait_for_parts(u, 8, kills_left=2) for u in (0.0, 0.5, 0.999)] == [1, 2, 3]
    assert {chaos.wait_for_parts(u / 10, 8, kills_left=5) for u in range(10)} == {1}


def test_draw_is_among_the_llm_stages_that_can_still_be_caught_half_written(chaos, tmp_path):
    run = tmp_path / "chaos"
    run.mkdir()
    (run / "config.yaml").write_text("storage:\n  part_rows: 2\ngeneration:\n  samples_per_seed: 1\n")
    part(run, "seeds", "part-0.parquet", [f"s{i}" for i in range(8)])
    mark(run, "seeds")
    assert chaos.unfinished(run) == ["generations", "discriminated", "judged"]  # samples, scored never
    assert chaos.candidates(run, {}) == ["generations", "discriminated"]  # the next two
    kept = {part(run, "generations", f"old{i}.parquet", [f"g{2 * i}", f"g{2 * i + 1}"]).name for i in range(3)}
    assert chaos.expected_parts(run, "generations", kept) == 1  # one part left: no "some, not all"
    assert chaos.candidates(run, {"generations": kept}) == ["discriminated", "judged"]

    mark(run, "generations")
    mark(run, "samples")
    assert chaos.next_unfinished(run, "generations") == "discriminated"  # where a missed draw goes
    mark(run, "discriminated")
    assert chaos.next_unfinished(run, "discriminated") == "judged"
    mark(run, "judged")
    assert chaos.next_unfinished(run, "discriminated") is None
    assert chaos.unfinished(run) == []


def test_fewer_kills_than_asked_is_never_ok(chaos):
    clean = dict(problems=[], changed=[], leftover={}, final_rc=0)
    assert chaos.verdict(3, 3, **clean) == {"ok": True, "inconclusive": False}
    short = chaos.verdict(3, 0, **clean)
    assert short == {"ok": False, "inconclusive": True}
    assert chaos.exit_status(short) == 2
    failed = chaos.verdict(3, 1, problems=["judged: 1 doubled ids"], changed=[], leftover={}, final_rc=0)
    assert failed == {"ok": False, "inconclusive": False}
    assert chaos.exit_status(failed) == 1
    assert not chaos.verdict(2, 2, problems=[], changed=["generations/x.parquet"], leftover={}, final_rc=0)["ok"]
    assert not chaos.verdict(2, 2, problems=[], changed=[], leftover={1: "raylet"}, final_rc=0)["ok"]
    assert not chaos.verdict(2, 2, problems=[], changed=[], leftover={}, final_rc=-9)["ok"]

"""A rehearsal end to end: the real pipeline command with stand-ins for every engine and
the embedder (:mod:`synth_empathy.core.standin`), so no model loads and the run takes
seconds beyond Ray's start. It checks the plumbing the stand-ins exist to exercise:
every stage runs and finishes, the counts fit together, the run folder says it was a
stand-in, and a resume that would mix stand-in and real rows stops before Ray starts."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from synth_empathy.core.standin import NOTICE

pytestmark = pytest.mark.e2e

SEEDS = 30
SAMPLES = 2
OVERRIDES = [
    f"seeds.limit={SEEDS}",
    f"generation.samples_per_seed={SAMPLES}",
    "generation.engine.model=standin",
    "generation.engine.replicas=2",  # a pool of two, as a GPU preset runs
    "generation.engine.batch_size=8",
    "discriminator.engine.model=standin",
    "judge.engine.model=standin:tokens_per_s=5000",  # paced: the sleep path runs
    "quality.embedder=standin:near_duplicates=0.05",
    "diversity.keep_ratio=0.5",
]
STAGES = [
    "seeds",
    "generations",
    "samples",
    "discriminated",
    "calibration_references",
    "calibration_answers",
    "calibration_scores",
    "scored",
    "selected",
    "judged",
]


def command(out, *overrides):
    return [sys.executable, "-m", "synth_empathy", "run", f"output={out}", "run_id=rehearsal", *overrides]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    done = subprocess.run(command(out, *OVERRIDES), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, out / "rehearsal", done


def test_every_stage_runs_through_the_stand_ins_and_the_counts_fit(run):
    _, run_dir, _ = run
    for stage in STAGES:
        assert (run_dir / f"{stage}.done.json").exists(), stage
    generations = pq.read_table(run_dir / "generations")
    assert generations.num_rows == SEEDS * SAMPLES
    assert set(generations.column("model").to_pylist()) == {"standin"}
    assert len(set(generations.column("sample_id").to_pylist())) == SEEDS * SAMPLES
    samples = pq.read_table(run_dir / "samples").to_pylist()
    # The stand-in's text is in the generator's layout: every generation parses.
    assert [r["drop_reason"] for r in samples] == [None] * len(samples) and len(samples) == SEEDS * SAMPLES
    discriminated = pq.read_table(run_dir / "discriminated").to_pylist()
    assert len(discriminated) == len(samples)
    assert all(r["disc_response"] and "\n" not in r["disc_response"] for r in discriminated)
    assert not any(r["disc_error"] for r in discriminated)
    counts = json.loads((run_dir / "report.json").read_text())["counts"]
    kept, selected = counts["kept"], counts["selected"]
    assert 0 < kept <= len(discriminated) and selected == pytest.approx(kept * 0.5, abs=1)
    judged = pq.read_table(run_dir / "judged").to_pylist()
    assert len(judged) == selected
    # expected ratings from the stand-in's first-token logprobs, as the judge reads a real engine's
    assert all(r["judge_reason"] is None and 1.0 <= r["empathy"] <= 3.0 for r in judged)


def test_the_run_folder_says_it_was_a_stand_in(run):
    _, run_dir, _ = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["standin"] == {
        "generation.engine.model": "standin",
        "discriminator.engine.model": "standin",
        "judge.engine.model": "standin:tokens_per_s=5000",
        "quality.embedder": "standin:near_duplicates=0.05",
    }
    assert NOTICE in (run_dir / "report.md").read_text()
    assert NOTICE in (run_dir / "README.md").read_text()


def test_a_resume_with_a_real_engine_fails_in_one_line_before_ray_starts(run):
    out, run_dir, _ = run
    real = [o for o in OVERRIDES if not o.startswith("generation.engine.model=")]  # the packaged model
    done = subprocess.run(command(out, *real), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "generation.engine.model" in errors[0] and "mix stand-in and real" in errors[0]
    assert "Traceback" not in done.stderr
    # It stopped in the preflight: no new attempt began (the manifest counts attempts).
    assert json.loads((run_dir / "manifest.json").read_text())["attempts"] == 1
    assert "run rehearsal ->" not in done.stderr

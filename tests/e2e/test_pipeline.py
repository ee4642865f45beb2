"""The real pipeline, end to end: real Ray, real vLLM engines, real small models.

A few seeds and short answers keep it to a few minutes on a 2-core CPU. What the 135M
models write decides how many rows survive each stage, so the tests check how the
stages fit together, not how many rows came through, and the settings let almost
every answer through: one complete round makes a sample (``turns.min_history=0``) and
the quality threshold is 0 (the untuned discriminator rarely agrees with the generator
above 60; the threshold itself is tested in test_stages.py with the real embedder). A
run that selects nothing exits 1 by design; the tests that need selected rows are then
skipped (:func:`needs_rows`), after checking that the model's text emptied it.
"""

import json
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from helpers import MODEL_TEXT_DROPS
from synth_empathy import schemas
from synth_empathy.stages import judge_validation

pytestmark = pytest.mark.e2e

OVERRIDES = [
    "seeds.limit=7",
    "generation.sampling.max_tokens=160",
    "discriminator.sampling.max_tokens=48",
    # One complete round makes a sample. Measured on a 2-core Zen 4 (8 answers to each
    # of these six seeds, cut to 160 tokens): 45 of 48 held one, 26 of 48 two.
    "turns.min_history=0",
    "quality.threshold=0",
    "diversity.keep_ratio=0.5",
    "ray.progress_interval_s=5",  # progress lines while the short stages run
    # The judge is validated in the run (50 human reference dialogues of the seed file, the
    # minimum for an interval: 600 one-token requests through the shared engine).
    "calibration.limit=50",
    "calibration.bootstrap=200",
]


# A seed whose generation prompt is longer than the engine's max_model_len (2048): the
# engine refuses that one request, and the row must say so rather than go missing.
TOO_LONG = {
    "dialogue_id": "too-long",
    "emotion": "sad",
    "situation": "A very long day.",
    "turns": ["I am " + "very " * 2500 + "tired.", "That sounds exhausting."],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from synth_empathy.stages.seed_sources import default_seed_path

    out = tmp_path_factory.mktemp("runs")
    seeds = out / "seeds.jsonl"  # the seed that is too long, then the packaged ones (limit 7: six of them)
    seeds.write_text(json.dumps(TOO_LONG) + "\n" + open(default_seed_path()).read())
    cmd = [
        sys.executable,
        "-m",
        "synth_empathy",
        "run",
        f"output={out}",
        "run_id=e2e",
        f"seeds.path={seeds}",
        *OVERRIDES,
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    run_dir = out / "e2e"
    assert (run_dir / "report.json").exists(), first.stderr[-4000:]  # it ran to the end
    # ... and exited 0, or 1 when it selected nothing (by design; see needs_rows)
    selected = json.loads((run_dir / "report.json").read_text())["counts"]["selected"]
    assert first.returncode == (0 if selected else 1), first.stderr[-4000:]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return run_dir, first, again


def read(run_dir, stage):
    return pq.read_table(run_dir / stage)


def needs_rows(run_dir):
    """Skip a test of what happens to selected rows when the run selected none.

    With these settings that takes the model: no complete round in any of the six
    answers, or every discriminator answer empty or pointing away from its target, or
    repeating the history. Then every row must say so, and no error may be among them.
    """
    if read(run_dir, "selected").num_rows:
        return
    samples = [r for r in read(run_dir, "samples").to_pylist() if not r["seed_id"].startswith("too-long")]
    reasons = {r["drop_reason"] for r in samples} - {None}
    assert reasons <= MODEL_TEXT_DROPS["samples"], reasons
    reasons = set(read(run_dir, "scored").column("drop_reason").to_pylist())
    assert reasons <= MODEL_TEXT_DROPS["scored"] | {"target_repeats_history", "answer_repeats_history"}, reasons
    pytest.skip("the models wrote nothing this run could select (every row dropped for its text)")


# A line of the job's own log (synth_empathy.logs.FORMAT).
PROJECT_LINE = re.compile(r"^\d\d:\d\d:\d\d synth-empathy ")

# The other lines a default run may print, each with the reason it may.
ALLOWED = {
    # Ray Core's C++ logger writes its ERROR lines to the driver's stderr as well as to
    # the session's python-core-driver-*.log, with no Python logger to turn down. Ray
    # Data raises this one as it starts the actor pool that sends a stage's rows to the
    # shared engine (ray-project/ray#53727); the run restarts no such actor.
    "ray core: actor arguments in the object store": re.compile(
        r"^\[[\d-]+ [\d:,]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: .* has constructor "
        r"arguments in the object store and max_restarts > 0"
    ),
    # The command's result: one JSON line on stdout (test_exports_and_report reads it).
    "the run's summary": re.compile(r'^\{"run": '),
    # Where the models' text left nothing to select, the command says so before exit 1.
    "nothing selected": re.compile(r"^error: the run finished with nothing selected "),
}


def foreign_lines(text):
    """The lines of ``text`` that are neither the job's own nor allowed."""
    lines = text.splitlines()
    return [line for line in lines if not PROJECT_LINE.match(line) and not any(p.match(line) for p in ALLOWED.values())]


def test_the_console_shows_the_jobs_own_lines_and_nothing_of_rays_but_the_allowed(run):
    # Ray Data's "Starting execution" / "Execution plan" pairs, Serve's and vLLM's lines,
    # the engine replica's JSON records and the batch timings of Ray Data LLM stay in the
    # Ray session's logs (ray.verbose_progress=true shows them); so do the two "Task
    # ServeController... killed by ray.kill" lines, which Serve's shutdown no longer causes.
    _, first, again = run
    for done in (first, again):
        assert not foreign_lines(done.stderr), foreign_lines(done.stderr)[:20]
        assert not foreign_lines(done.stdout), foreign_lines(done.stdout)[:20]
    assert "ServeController" not in first.stderr


def test_the_three_llm_stages_share_one_engine(run):
    # The default's generator, discriminator and judge are the same engine section: one
    # Ray Serve deployment serves all three (ray.engines=auto on a CPU), started once.
    run_dir, first, again = run
    needs_rows(run_dir)  # the judge gets no engine without rows to judge
    assert "engines: one engine for generation + discriminator + judge" in first.stderr
    assert first.stderr.count("[engine] starting one engine") == 1
    # ... in the background before the first stage, which then runs beside its start
    assert first.stderr.index("[engine] starting one engine") < first.stderr.index("[seeds] running")
    for stage in ("generation", "discriminator", "judge"):
        assert f"[{stage}] engine: shared" in first.stderr
    assert "[engine] starting" not in again.stderr  # nothing left to run: no engine starts


def test_the_shared_engines_stages_log_rows_answered_not_a_line_per_request(run):
    _, first, _ = run
    lines = re.findall(r"\[(generations|discriminated|judged)\] (\d+)/(\d+) rows answered", first.stderr)
    assert all(int(done) <= int(total) for _, done, total in lines), lines
    assert "CALL chat_dict" not in first.stderr  # Serve's access log is off for the engine
    # A line comes every ray.progress_interval_s (5 s here) while a stage runs: a stage
    # that ran for three intervals must have logged one. (On a fast CPU the generation of
    # these few seeds may end within the first interval, and then there is none to see.)
    # (The generation's time includes the wait for the engine, whose lines say "engine
    # starting" instead.)
    waited = re.findall(r"([\d.]+) s of it waited for by the stage", first.stderr)
    durations = dict(re.findall(r"\[(generations|discriminated|judged)\] done in ([\d.]+) s", first.stderr))
    answering = {
        stage: float(s) - (float(waited[0]) if stage == "generations" and waited else 0.0)
        for stage, s in durations.items()
    }
    if any(seconds > 15 for seconds in answering.values()):
        assert lines, answering


def test_a_request_the_engine_refuses_is_that_rows_error(run):
    run_dir, _, _ = run
    (gen,) = [r for r in read(run_dir, "generations").to_pylist() if r["seed_id"].startswith("too-long")]
    assert gen["error"] and "2048" in gen["error"] and not gen["raw_text"]
    (sample,) = [r for r in read(run_dir, "samples").to_pylist() if r["seed_id"].startswith("too-long")]
    assert sample["drop_reason"] == "generation_error"
    others = [r for r in read(run_dir, "generations").to_pylist() if not r["seed_id"].startswith("too-long")]
    assert all(r["error"] is None and r["raw_text"] for r in others)


def test_every_stage_writes_its_declared_schema(run):
    run_dir, _, _ = run
    for stage, schema in [
        ("seeds", schemas.SEEDS),
        ("generations", schemas.GENERATIONS),
        ("samples", schemas.SAMPLES),
        ("discriminated", schemas.DISCRIMINATED),
        ("scored", schemas.SCORED),
        ("selected", schemas.SELECTED),
        ("judged", schemas.JUDGED),
        ("judge_validation", judge_validation.SCHEMA),
    ]:
        assert (run_dir / f"{stage}.done.json").exists(), stage
        assert read(run_dir, stage).schema.equals(schema, check_metadata=False), stage


def test_ids_are_unique_and_nest_selected_in_kept_in_samples(run):
    run_dir, _, _ = run
    seeds = set(read(run_dir, "seeds").column("seed_id").to_pylist())
    gens = read(run_dir, "generations").column("sample_id").to_pylist()
    samples = read(run_dir, "samples")
    scored = read(run_dir, "scored")
    selected = read(run_dir, "selected").column("sample_id").to_pylist()
    assert len(seeds) == 7
    assert len(gens) == len(set(gens)) == 7  # one sample per seed by default
    assert set(read(run_dir, "generations").column("seed_id").to_pylist()) == seeds
    assert sorted(samples.column("sample_id").to_pylist()) == sorted(gens)  # nothing lost
    good = {r["sample_id"] for r in samples.to_pylist() if r["drop_reason"] is None}
    kept = {r["sample_id"] for r in scored.to_pylist() if r["kept"]}
    assert set(scored.column("sample_id").to_pylist()) == good
    assert len(selected) == len(set(selected))
    assert set(selected) <= kept <= good
    assert len(selected) == max(1, round(0.5 * len(kept))) or abs(len(selected) - 0.5 * len(kept)) <= 1


def test_scores_are_in_range_and_rows_are_aligned(run):
    run_dir, _, _ = run
    for row in read(run_dir, "scored").to_pylist():
        if row["quality_score"] is not None:
            assert -100.0 <= row["quality_score"] <= 100.0
        if row["kept"]:
            assert row["drop_reason"] is None and len(row["embedding"]) == 384
        assert row["instruction"].endswith("Listener:")
        assert row["history"][-1]["role"] == "user"
        assert row["instruction"].splitlines()[-2] == "Speaker: " + row["history"][-1]["content"]


def test_exports_and_report(run):
    run_dir, first, _ = run
    needs_rows(run_dir)
    n_selected = read(run_dir, "selected").num_rows
    alpaca = [json.loads(line) for line in (run_dir / "selected.alpaca.jsonl").read_text().splitlines()]
    assert len(alpaca) == n_selected
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in alpaca)
    chat = [json.loads(line) for line in (run_dir / "selected.chat.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["role"] == "assistant" for r in chat)
    report = json.loads((run_dir / "report.json").read_text())
    c = report["counts"]
    assert c["seeds"] == 7 and c["generations"] == 7 and c["selected"] == n_selected
    assert c["seeds"] >= 1 and c["generations"] >= c["parsed"] >= c["samples"] >= c["kept"] >= c["selected"]
    assert set(report["seconds"]) == {
        "calibration_references",
        "calibration_answers",
        "calibration_scores",
        "seeds",
        "generations",
        "samples",
        "discriminated",
        "scored",
        "selected",
        "judge_validation",
        "judged",
    }
    assert report["judge"]["rows"] == n_selected
    judged = read(run_dir, "judged")
    assert sorted(judged.column("sample_id").to_pylist()) == sorted(
        read(run_dir, "selected").column("sample_id").to_pylist()
    )
    assert_ratings(judged)
    div = report["diversity"]
    assert div["selected"]["n"] == div["random"]["n"] == n_selected
    assert 0 < div["selected"]["distinct_1"] <= 1
    assert report["tokens"]["generated"] > 0
    # One token per criterion and row: the judge's tokens are counted and rated per second.
    assert report["tokens"]["judge"] == sum(judged.column("judge_num_tokens").to_pylist()) <= 3 * n_selected
    assert report["throughput"]["judged"]["tokens_per_s"] > 0
    for plot in report["plots"]:
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Counts" in (run_dir / "report.md").read_text()
    # The CLI's last word is a one-line JSON summary (Ray may print worker lines on stdout too).
    summary = [line for line in first.stdout.splitlines() if line.startswith('{"run":')]
    assert json.loads(summary[-1])["counts"] == c


def test_calibration_answers_the_seed_dialogues_and_reports_at_the_set_threshold(run):
    """Step 3a' on the run's own seed file (calibration.limit dialogues of it; the one too long
    for the engine, where drawn, fails and is counted); T stays the number given (0)."""
    run_dir, _, _ = run
    result = json.loads((run_dir / "calibration.json").read_text())
    answers = read(run_dir, "calibration_answers")
    assert answers.num_rows == result["dialogues"] == 50  # calibration.limit
    assert set(result["dropped"]) <= {"discriminator_error", "empty_discriminator_answer"}
    assert result["scored"] == 50 - sum(result["dropped"].values())
    assert result["threshold"] == 0 and result["threshold_source"].startswith("set")
    for kind in ("other_dialogue", "same_emotion", "generic"):
        f = result["foils"][kind]
        assert 0 <= f["low"] <= f["auc"] <= f["high"] <= 1 and f["pairs"] > 0
    report = (run_dir / "report.md").read_text()
    assert "## Calibration against human replies" in report and "plots/quality_vs_human.png" in report
    assert (run_dir / "plots/quality_vs_human.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["calibration"]["threshold"] == 0
    assert (run_dir / "config.yaml").read_text().startswith("# quality.threshold = 0: set")
    assert "## The quality threshold, checked on human replies" in (run_dir / "README.md").read_text()


def assert_ratings(table):
    """Every rating an expected value in [1, 3], or null with the row's reason."""
    for row in table.to_pylist():
        for criterion in ("naturalness", "coherence", "empathy"):
            v = row[criterion]
            assert (v is not None and 1.0 <= v <= 3.0) or row["judge_reason"], row


def test_the_judge_is_validated_in_the_run_and_reported(run):
    """Plumbing only: what the 135M judge finds is the benchmark's business, not the test's."""
    run_dir, first, again = run
    result = json.loads((run_dir / judge_validation.RESULT_FILE).read_text())
    assert result["references"] == 50 and result["kinds"]["true"] == 50
    assert set(result["criteria"]) == {"naturalness", "coherence", "empathy"}
    for c, v in result["criteria"].items():
        assert set(v["auc"]) == {"other_dialogue", "cut_mid_sentence", "repeated_line"}
        for a in v["auc"].values():
            assert a["auc"] is None or 0.0 <= a["low"] <= a["auc"] <= a["high"] <= 1.0
        assert v["discriminative"] == (c not in result["not_discriminative"])
    rows = read(run_dir, "judge_validation")
    assert rows.num_rows == result["judged_rows"] and len(set(rows.column("sample_id").to_pylist())) == rows.num_rows
    assert_ratings(rows)
    report_md = (run_dir / "report.md").read_text()
    assert "## Judge" in report_md and "| criterion | other dialogue | cut mid sentence | repeated line |" in report_md
    if result["not_discriminative"]:
        assert "not discriminative" in first.stderr and "**Warning:**" in report_md
        assert "NOT a measure of quality" in report_md and "**Warning:**" in (run_dir / "README.md").read_text()
    # The second run reads the validation back: same verdict, no engine.
    assert "[judge_validation] finished in an earlier attempt" in again.stderr
    assert json.loads((run_dir / judge_validation.RESULT_FILE).read_text()) == result


def test_a_second_run_with_the_same_id_recomputes_nothing(run):
    _, first, again = run
    assert again.returncode == first.returncode, again.stderr[-3000:]
    stages = ["seeds", "generations", "samples", "discriminated", "scored", "selected", "judge_validation", "judged"]
    for stage in stages + ["calibration_references", "calibration_answers", "calibration_scores"]:
        assert f"[{stage}] finished in an earlier attempt" in again.stderr
    assert "vLLMEngineStageUDF" not in again.stderr


def judge_cmd(*args):
    return [sys.executable, "-m", "synth_empathy", "judge", *args]


def test_judge_command_rates_a_runs_export_and_resumes_by_id(run, tmp_path):
    """``synth-empathy judge`` over the run's chat export: first a seeded sample of one row,
    then (the finished marker removed, as after a crash) the whole file: only the rows
    the kept part does not hold are judged, and every row ends up rated once."""
    run_dir, _, _ = run
    needs_rows(run_dir)
    export = run_dir / "selected.chat.jsonl"
    n = len(export.read_text().splitlines())
    out = tmp_path / "judged-export"
    first = subprocess.run(
        judge_cmd(str(export), str(out), "--sample", "1"), capture_output=True, text=True, timeout=900
    )
    assert first.returncode == 0, first.stderr[-4000:]
    one = json.loads((out / "judge_report.json").read_text())
    assert one["rows_judged"] == 1 and one["format"] == "jsonl"
    assert one["this_call"]["rows"] == 1 and one["this_call"]["tokens_per_s"] > 0
    kept_id = pq.read_table(out / "judged").column("sample_id").to_pylist()
    (out / "judged.done.json").unlink()  # as if the job died before its marker

    again = subprocess.run(judge_cmd(str(export), str(out)), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    report = json.loads((out / "judge_report.json").read_text())
    assert report["resumed"]["rows_kept"] == 1 and report["this_call"]["rows"] == n - 1
    judged = pq.read_table(out / "judged")
    ids = judged.column("sample_id").to_pylist()
    assert sorted(ids) == [f"line-{i}" for i in range(1, n + 1)] and set(kept_id) <= set(ids)
    assert report["rows_judged"] == n
    assert_ratings(judged)
    assert judged.schema.names[:4] == ["sample_id", "instruction", "output", "history"]
    assert f"judged {report['judge']['parsed']} of {n} rows (mean ratings" in again.stdout


def test_the_run_folder_loads_as_a_hugging_face_dataset(run, tmp_path):
    import datasets

    run_dir, _, _ = run
    needs_rows(run_dir)
    # datasets caches a local folder by its name and file layout, not its contents: an
    # older run folder also called e2e would be read back from the shared cache.
    cache = str(tmp_path / "hf-cache")
    card = (run_dir / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: selected" in card and "task_categories" in card
    loaded = datasets.load_dataset(str(run_dir), "selected", split="train", cache_dir=cache)
    table = read(run_dir, "selected")
    assert sorted(loaded["sample_id"]) == sorted(table.column("sample_id").to_pylist())
    assert set(loaded.column_names) == set(table.column_names)
    scored = datasets.load_dataset(str(run_dir), "scored", split="train", cache_dir=cache)
    assert len(scored) == read(run_dir, "scored").num_rows

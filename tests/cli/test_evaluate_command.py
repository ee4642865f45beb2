"""synth-empathy evaluate: labels, the held-out rows, metrics with intervals, the paired
differences, bad input; and once with the real engine, two models side by side (e2e). A
trained model's folder answering is in tests/training/test_training.py
(test_ray_train_runs_the_same_loop_and_evaluate_answers_with_the_result)."""

import json
import os
import subprocess
import sys

import pytest

from synth_empathy.cli.evaluate import (
    METRICS,
    add_intervals,
    heldout_rows,
    main,
    metric_statistics,
    model_labels,
    score_answers,
    to_markdown,
)
from synth_empathy.config import load_config
from synth_empathy.core.heldout import is_heldout


def test_labels_are_named_or_derived_and_unique():
    assert model_labels(["packaged:smollm2", "tuned=/m/ed-disc/", "/x/ed-disc", "/y/ed-disc"]) == [
        ("smollm2", "packaged:smollm2"),
        ("tuned", "/m/ed-disc/"),
        ("ed-disc", "/x/ed-disc"),
        ("ed-disc-2", "/y/ed-disc"),
    ]


def test_heldout_rows_are_the_held_out_dialogues_as_discriminator_rows(tmp_path):
    from pathlib import Path

    valid = Path(__file__).resolve().parents[3] / "shared" / "data" / "ed" / "valid.csv"
    if not valid.exists():
        pytest.skip("the ED split in ../shared is not beside this checkout")
    cfg = load_config(overrides=[f"evaluate.data={valid}", "evaluate.heldout_only=true", "evaluate.limit=20"])
    rows, info = heldout_rows(cfg)
    assert rows.num_rows == 20 == info["answered"]
    for r in rows.to_pylist():
        assert r["history"][-1]["role"] == "user" and r["output"]
        context = "\n".join(("Speaker: " if t["role"] == "user" else "Listener: ") + t["content"] for t in r["history"])
        assert is_heldout(context, 0.1)
        assert r["instruction"].endswith("Listener:")


def test_metrics_of_perfect_and_empty_answers():
    refs = ["i am so sorry to hear that .", "that sounds wonderful , congratulations !"]
    perfect = score_answers(refs, refs, [1.0, 1.0])
    assert perfect["bleu_1"] == perfect["bleu_4"] == perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["embedding_similarity"] == 1.0
    empty = score_answers(["", ""], refs, [None, None])
    assert empty["bleu_1"] == empty["rouge_l"] == empty["distinct_1"] == empty["embedding_similarity"] == 0.0
    # an empty answer has no similarity: the mean is over the answers given
    assert score_answers(["", "x"], refs, [None, 0.5])["embedding_similarity"] == 0.5


REFS = [f"i am so sorry to hear about your {w} , that must be hard ." for w in ("dog", "cat", "job", "car")] * 10


def _report(models):
    """evaluation.json's model part and the intervals of ``{label: answers}``."""
    results, stats, ids = {}, {}, {}
    for label, answers in models.items():
        stats[label] = metric_statistics(answers, REFS, [0.5 + 0.01 * (i % 7) for i in range(len(REFS))])
        ids[label] = list(range(len(REFS)))
        results[label] = {"model": label, "rows": len(REFS), "errors": 0, "empty_answers": 0,
                          "mean_answer_tokens": 9.0, "metrics": {m: round(s.point(), 6) for m, s in stats[label].items()}}  # fmt: skip
    differences, width = add_intervals(results, stats, ids, 200, 0)
    report = {"answered": len(REFS), "data": "d", "heldout_fraction": None, "input_format": "chat", "embedder": "e",
              "models": results, "differences": differences,
              "intervals": {"level": 0.95, "resamples": 200, "seed": 0, "method": "m", "rouge_l": width}}  # fmt: skip
    return report


def test_every_metric_gets_an_interval_and_every_pair_a_paired_difference():
    base = ["i am sorry ." for _ in REFS]
    close = [r if i % 3 else "that must be hard ." for i, r in enumerate(REFS)]
    report = _report({"base": base, "close": close, "same": list(base)})
    for r in report["models"].values():
        assert set(r["intervals"]) == set(r["metrics"]) == set(METRICS)
        for m in METRICS:
            assert r["intervals"][m]["low"] <= r["metrics"][m] <= r["intervals"][m]["high"], (m, r)
    pairs = {(p["model"], p["baseline"]): p for p in report["differences"]}
    assert list(pairs) == [("close", "base"), ("same", "base"), ("same", "close")]
    gain = pairs["close", "base"]["metrics"]["rouge_l"]
    assert gain["significant"] and gain["low"] > 0
    assert not any(d["significant"] for d in pairs["same", "base"]["metrics"].values())  # the same answers
    width = report["intervals"]["rouge_l"]
    assert width["rows"] == len(REFS) and width["rows_for_0.01"] > 0
    json.dumps(report)  # what evaluation.json holds


def test_judge_means_are_the_summarys_with_intervals():
    import pyarrow as pa

    from synth_empathy.cli.evaluate import judge_statistics
    from synth_empathy.core.intervals import interval
    from synth_empathy.stages.judge import judge_summary

    judged = pa.table({"naturalness": [3, 2, None, 1], "coherence": [3, 3, 2, 1], "empathy": [2, 2, 3, 1],
                       "judge_reason": [None, None, "unparsable", None]})  # fmt: skip
    stats = judge_statistics(judged)
    summary = judge_summary(judged)["criteria"]
    for c in ("naturalness", "coherence", "empathy"):  # over the 3 parsed rows
        assert stats[f"judge_{c}"].point() == pytest.approx(summary[c]["mean"], abs=1e-4)
        assert interval(stats[f"judge_{c}"], 200).covers(stats[f"judge_{c}"].point())


def test_markdown_puts_models_side_by_side_with_intervals_and_differences():
    report = _report({"base": ["i am sorry ." for _ in REFS], "tuned": REFS})
    text = to_markdown(report)
    assert "| metric | base | tuned |" in text
    r = report["models"]["tuned"]
    assert f"| bleu_4 | {report['models']['base']['metrics']['bleu_4']:.4f} [" in text
    assert f"{r['metrics']['rouge_l']:.4f} [{r['intervals']['rouge_l']['low']:.4f}, " in text
    assert "## Paired differences" in text and "| metric | tuned - base |" in text
    d = report["differences"][0]["metrics"]["rouge_l"]
    assert f"| rouge_l | {d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] yes |" in text
    assert "would take about" in text


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "/no/such/model"], "/no/such/model"),
        (["evaluate.models=[]"], "evaluate.models is empty"),
        (["--data", "/no/such/file.csv"], "/no/such/file.csv"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, expected):
    assert main([str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and expected in err[0], err


@pytest.mark.e2e
def test_two_models_answer_with_intervals_and_their_paired_difference(tmp_path):
    """The real engine path, two models (SmolLM2 twice, under two labels): plumbing only,
    never the answers' text. Every metric's interval holds its value; the pair is listed."""
    out = tmp_path / "eval"
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "synth_empathy", "evaluate", str(out), "--model", "base=packaged:smollm2",
           "--model", "again=packaged:smollm2", "--limit", "8", "evaluate.sampling.max_tokens=16",
           "evaluate.bootstrap=200"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["models"]) == {"base", "again"}  # evaluation.json sorts keys; the pairs keep the order
    for r in report["models"].values():
        assert r["rows"] == 8 and set(r["intervals"]) == set(r["metrics"]) == set(METRICS)
        for m, v in r["metrics"].items():
            assert r["intervals"][m]["low"] <= v <= r["intervals"][m]["high"], (m, r)
    (pair,) = report["differences"]
    assert (pair["model"], pair["baseline"], pair["rows"]) == ("again", "base", 8)
    for d in pair["metrics"].values():
        assert d["low"] <= d["high"] and isinstance(d["significant"], bool)
    assert report["intervals"]["resamples"] == 200
    text = (out / "evaluation.md").read_text()
    assert "| metric | base | again |" in text and "| metric | again - base |" in text

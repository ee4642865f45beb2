"""synth-empathy evaluate without an engine: labels, the held-out rows, metrics, bad input.
The real engine answering (a trained model's folder) is in tests/training/test_training.py
(test_ray_train_runs_the_same_loop_and_evaluate_answers_with_the_result)."""

import pytest

from synth_empathy.cli.evaluate import heldout_rows, main, model_labels, score_answers, to_markdown
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
    empty = score_answers(["", ""], refs, [])
    assert empty["bleu_1"] == empty["rouge_l"] == empty["distinct_1"] == empty["embedding_similarity"] == 0.0


def test_markdown_puts_models_side_by_side():
    m = dict.fromkeys(
        ("bleu_1", "bleu_2", "bleu_4", "rouge_l", "distinct_1", "distinct_2", "embedding_similarity"), 0.5
    )
    r = {"model": "x", "rows": 2, "errors": 0, "empty_answers": 0, "mean_answer_tokens": 9.0, "metrics": m}
    report = {"answered": 2, "data": "d", "heldout_fraction": 0.1, "input_format": "chat", "embedder": "e",
              "models": {"base": r, "tuned": r}}  # fmt: skip
    text = to_markdown(report)
    assert "| metric | base | tuned |" in text and "| bleu_4 | 0.5000 | 0.5000 |" in text


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

"""The calibration stage without Ray: its references and foils, its scores with the real
embedder, T, and what it writes (synth_empathy.stages.calibration)."""

import json

import pyarrow as pa
import pytest

from synth_empathy import schemas
from synth_empathy.config import load_config
from synth_empathy.core.calibration import FOILS, MIN_REFERENCES
from synth_empathy.errors import CalibrationInputError
from synth_empathy.stages import calibration


def test_references_from_the_shipped_seeds_carry_three_foils():
    cfg = load_config("default")
    refs = calibration.reference_table(cfg)
    assert refs.schema.equals(schemas.CALIBRATION_REFERENCES)
    assert MIN_REFERENCES <= refs.num_rows <= cfg.calibration.limit
    rows = refs.to_pylist()
    assert len({r["sample_id"].split(":")[0] for r in rows}) == refs.num_rows  # one pair per dialogue
    for r in rows:
        assert r["history"][-1]["role"] == "user" and r["output"]
        assert r["foil_other_dialogue"] and r["foil_other_dialogue"] != r["output"]
        assert r["foil_generic"] in cfg.calibration.generic_replies


def write_pairs(path, n):
    path.write_text(
        "".join(json.dumps({"context": f"Speaker: opening {i}", "response": f"reply {i}"}) + "\n" for i in range(n))
    )
    return str(path)


def test_too_few_reference_dialogues_is_one_line_naming_the_minimum_and_the_option(tmp_path):
    cfg = load_config("default", [f"calibration.data={write_pairs(tmp_path / 'few.jsonl', 49)}"])
    with pytest.raises(CalibrationInputError) as e:
        calibration.reference_table(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "49 reference dialogues" in msg and "at least 50" in msg and "calibration.data" in msg
    cfg = load_config("default", [f"calibration.data={write_pairs(tmp_path / 'enough.jsonl', 50)}"])
    assert calibration.reference_table(cfg).num_rows == 50


def test_heldout_only_keeps_the_dialogues_training_never_sees():
    from synth_empathy.core.heldout import is_heldout

    cfg = load_config("default", ["calibration.heldout_only=true", "train.heldout_fraction=0.9"])
    refs = calibration.reference_table(cfg).to_pylist()
    assert refs and all(is_heldout(r["instruction"].rsplit("\n", 1)[0], 0.9) for r in refs)
    cfg = load_config("default", ["calibration.heldout_only=true"])  # 10 % of 76 dialogues: too few
    with pytest.raises(CalibrationInputError, match="held out at train.heldout_fraction=0.1"):
        calibration.reference_table(cfg)


def answered(refs: pa.Table, answer_of) -> pa.Table:
    """The references with a discriminator answer per row (``answer_of(row)``: text or an error)."""
    rows = []
    for r in refs.to_pylist():
        answer = answer_of(r)
        error = answer if isinstance(answer, Exception) else None
        rows.append(
            {
                **r,
                "disc_response": "" if error else answer,
                "disc_model": "m",
                "disc_num_tokens": 3,
                "disc_error": str(error) if error else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=schemas.CALIBRATION_ANSWERS)


def test_a_discriminator_that_answers_with_the_true_reply_separates_every_foil():
    cfg = load_config("default", ["calibration.bootstrap=200"])
    refs = calibration.reference_table(cfg)
    failing = set(refs.column("sample_id").to_pylist()[:3])
    table = answered(refs, lambda r: RuntimeError("engine refused") if r["sample_id"] in failing else r["output"])
    scores = calibration.score_references(table, cfg)
    assert scores.schema.equals(schemas.CALIBRATION_SCORES)
    assert scores.column("drop_reason").to_pylist().count("discriminator_error") == 3
    human = [v for v in scores.column("human_score").to_pylist() if v is not None]
    assert len(human) == refs.num_rows - 3 and min(human) > 99.9  # the answer is the reply itself
    result = calibration.summarize(scores, cfg)
    assert result["dropped"] == {"discriminator_error": 3} and result["scored"] == len(human)
    assert result["threshold"] <= sorted(human)[len(human) // 2]  # auto at share 0.5
    assert result["human"]["keep_rate"] >= cfg.calibration.share
    assert result["threshold_source"].startswith("auto: the score that 50% of")
    for kind in FOILS:
        f = result["foils"][kind]
        assert f["auc"] > 0.99 and f["discriminative"] and f["low"] <= f["auc"] <= f["high"]
    assert result["discriminative"] and result["warnings"] == []
    shares = result["by_share"]
    assert [r["share"] for r in shares] == list(calibration.SHARES)
    assert all(r["human"] >= r["share"] for r in shares)
    assert [r["threshold"] for r in shares] == sorted((r["threshold"] for r in shares), reverse=True)
    assert "| 0.5 |" in "\n".join(calibration.markdown_lines(result, shares=True))
    line = calibration.one_line(result)
    assert line.index("other_dialogue") < line.index("same_emotion") < line.index("generic")


def test_a_number_is_kept_as_t_and_a_coin_is_a_warning():
    cfg = load_config("default", ["quality.threshold=42", "calibration.bootstrap=200"])
    refs = calibration.reference_table(cfg)
    table = answered(refs, lambda r: "The weather report says rain tomorrow.")  # one answer for every history
    result = calibration.summarize(calibration.score_references(table, cfg), cfg)
    assert result["threshold"] == 42.0 and result["threshold_source"].startswith("set")
    generic = result["foils"]["generic"]
    # the same answer for all: the true replies and the other dialogues' replies are the same texts
    other = result["foils"]["other_dialogue"]
    assert other["low"] < 0.5 < other["high"] and not other["discriminative"]
    assert not result["discriminative"]
    assert any("other-dialogue foil" in w for w in result["warnings"]), result["warnings"]
    assert generic["pairs"] == refs.num_rows
    yaml_text = calibration.resolved_config_yaml(cfg, result)
    assert yaml_text.startswith("# quality.threshold = 42: set") and "\n  threshold: 42.0\n" in yaml_text
    assert set(calibration.manifest_entry(result)["auc"]) == set(FOILS)


def test_too_few_scored_references_is_an_error():
    cfg = load_config("default", ["calibration.bootstrap=200"])
    refs = calibration.reference_table(cfg)
    keep = set(refs.column("sample_id").to_pylist()[: MIN_REFERENCES - 1])
    table = answered(refs, lambda r: r["output"] if r["sample_id"] in keep else "")
    scores = calibration.score_references(table, cfg)
    with pytest.raises(CalibrationInputError, match=f"only {MIN_REFERENCES - 1} of .* could be scored"):
        calibration.summarize(scores, cfg)

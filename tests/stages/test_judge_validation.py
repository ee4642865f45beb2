"""The judge validation's stage parts without an engine: the reference set, its rows, the report section."""

import json

import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from synth_empathy.config import load_config
from synth_empathy.errors import JudgeValidationError
from synth_empathy.stages.judge_validation import (
    SCHEMA,
    load_references,
    markdown,
    validation_result,
    validation_table,
)


def test_the_shipped_seeds_give_the_reference_rows_and_their_degradations():
    cfg = load_config("default", ["calibration.limit=50"])
    refs = load_references(cfg)
    assert len(refs) == 50 and all(r["history"][-1]["role"] == "user" and r["output"] for r in refs)
    table = validation_table(refs, cfg.seed)
    assert table.schema.equals(SCHEMA)
    kinds = table.column("kind").to_pylist()
    assert kinds.count("true") == kinds.count("other_dialogue") == kinds.count("repeated_line") == 50
    assert 0 < kinds.count("cut_mid_sentence") <= 50  # a reply too short to cut has none


def test_too_few_reference_dialogues_is_one_line_naming_the_minimum_and_the_options(tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text(
        "".join(json.dumps({"context": f"I lost {i}.", "response": f"Sorry {i}."}) + "\n" for i in range(9))
    )
    cfg = load_config("default", [f"calibration.data={path}"])
    with pytest.raises(JudgeValidationError, match=r"9 reference dialogues, at least 50") as e:
        load_references(cfg)
    assert "calibration.limit" in str(e.value) and "calibration.data" in str(e.value) and "\n" not in str(e.value)


def _result(coherence_ok):
    cfg = OmegaConf.create({"calibration": {"bootstrap": 100}, "seed": 0, "judge": {"engine": {"model": "m"}}})
    refs = [
        {"output": f"Reply {i} has some more words here.", "history": [{"role": "user", "content": f"Line {i}."}]}
        for i in range(50)
    ]
    rated = validation_table(refs, 0).to_pylist()
    for r in rated:
        good = r["kind"] == "true"
        r.update(
            naturalness=2.0, empathy=3.0 if good else 1.0, coherence=(3.0 if good else 1.0) if coherence_ok else 2.5
        )
    return validation_result(pa.Table.from_pylist(rated, schema=SCHEMA), 50, cfg, "seeds.jsonl")


SUMMARY = {
    "rows": 4,
    "parsed": 4,
    "reasons": {},
    "criteria": {
        c: {"mean": 2.5, "sd": 0.1, "min": 2.0, "max": 3.0, "varies": True}
        for c in ("naturalness", "coherence", "empathy")
    },
}


def test_a_criterion_that_fails_is_a_warning_and_its_mean_is_not_shown_as_quality():
    result = _result(coherence_ok=False)
    assert result["not_discriminative"] == ["naturalness", "coherence"]  # naturalness: ratings do not vary
    text = "\n".join(markdown(result, SUMMARY))
    assert "| criterion | other dialogue | cut mid sentence | repeated line | discriminative |" in text
    assert "**Warning:** the judge is not discriminative on naturalness, coherence" in text
    passed, failed = text.split("NOT a measure of quality")
    assert "| empathy |" in passed.split("Mean ratings (criteria the judge passed)")[1]
    assert "| coherence | 2.50" in failed and "| naturalness | 2.50" in failed and "| empathy |" not in failed


def test_a_validated_judge_shows_its_means_and_an_unvalidated_one_says_so():
    result = _result(coherence_ok=True)
    assert result["not_discriminative"] == ["naturalness"]
    assert "| empathy | **1.00 [1.00, 1.00]** | 1.00 [1.00, 1.00] | **1.00 [1.00, 1.00]** | yes |" in "\n".join(
        markdown(result, SUMMARY)
    )
    unvalidated = "\n".join(markdown(None, SUMMARY))
    assert "not validated in this run" in unvalidated and "Warning" not in unvalidated
    assert markdown(None, None) == []

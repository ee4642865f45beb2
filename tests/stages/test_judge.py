"""The judge's prompt, parser, stage columns and summary (no engine: the e2e test runs one)."""

import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from synth_empathy.config import EngineConfig, JudgeConfig, SamplingConfig
from synth_empathy.schemas import JUDGED_COLUMNS
from synth_empathy.stages.judge import (
    ANSWER_PREFIX,
    CRITERIA,
    RUBRICS,
    Judge,
    judge_messages,
    judge_summary,
    parse_scores,
)

ROW = {
    "seed_id": "s1",
    "sample_id": "s1#g0",
    "instruction": "Speaker: I lost my job today.\nListener:",
    "output": "That sounds really hard. How are you holding up?",
    "history": [
        {"role": "user", "content": "My dog has been sick all week."},
        {"role": "assistant", "content": "I'm sorry, that must be worrying."},
        {"role": "user", "content": "The vet says he will be fine now."},
    ],
}


def test_prompt_holds_the_three_rubrics_the_dialogue_and_the_answer_prefix():
    msgs = judge_messages(ROW)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[-1]["content"] == ANSWER_PREFIX == "Naturalness:"
    user = msgs[1]["content"]
    for c in CRITERIA:
        assert RUBRICS[c] in user
    for needle in (
        "read like something a real person would say",
        "follow from the dialogue",
        "stay on its",
        "recognise the speaker's feelings",
        "Speaker: My dog has been sick all week.",
        "Listener: I'm sorry, that must be worrying.",
        "Speaker: The vet says he will be fine now.",
        ROW["output"],
        "three lines",
        "a colon and its rating as one digit (1, 2 or 3)",
    ):
        assert needle in user


def test_prompt_falls_back_to_the_instruction_without_turns():
    user = judge_messages({**ROW, "history": []})[1]["content"]
    assert "Speaker: I lost my job today." in user


def _stage():
    return Judge(
        OmegaConf.structured(EngineConfig), OmegaConf.structured(SamplingConfig), passthrough=("seed_id", "sample_id")
    )


def test_stage_messages_end_with_the_assistant_prefix_and_columns_match_the_schema():
    stage = _stage()
    pre = stage.preprocess(ROW)
    assert pre["messages"][-1] == {"role": "assistant", "content": ANSWER_PREFIX}
    ok = stage.postprocess({**pre, "generated_text": " 3\nCoherence: 2\nEmpathy: 3", "num_generated_tokens": 9})
    assert ok == {
        "seed_id": "s1",
        "sample_id": "s1#g0",
        "naturalness": 3,
        "coherence": 2,
        "empathy": 3,
        "judge_reason": None,
        "judge_model": "packaged:smollm2",
        "judge_num_tokens": 9,
        "judge_error": None,
    }
    bad = stage.postprocess({**pre, "generated_text": " very natural!", "num_generated_tokens": 4})
    assert (bad["naturalness"], bad["judge_reason"]) == (None, "judge_unparsable")
    err = stage.postprocess({**pre, "__inference_error__": "engine died", "generated_text": None})
    assert (err["empathy"], err["judge_reason"], err["judge_error"]) == (None, "judge_error", "engine died")
    names = [n for n, _ in JUDGED_COLUMNS]
    assert set(names) == set(ok) - {"seed_id", "sample_id"}
    pa.Table.from_pylist(
        [ok, bad, err], schema=pa.schema([("seed_id", pa.string()), ("sample_id", pa.string())] + JUDGED_COLUMNS)
    )


def test_config_defaults_are_greedy_and_short():
    cfg = OmegaConf.structured(JudgeConfig)
    assert cfg.enabled is True and cfg.sampling.temperature == 0.0 and cfg.sampling.max_tokens == 24
    assert cfg.engine.model == "packaged:smollm2"


def test_summary_counts_means_and_distributions():
    rows = [
        {"naturalness": 3, "coherence": 2, "empathy": 3, "judge_reason": None},
        {"naturalness": 1, "coherence": 2, "empathy": 3, "judge_reason": None},
        {"naturalness": None, "coherence": None, "empathy": None, "judge_reason": "judge_unparsable"},
        {"naturalness": None, "coherence": None, "empathy": None, "judge_reason": "judge_error"},
    ]
    s = judge_summary(pa.Table.from_pylist(rows, schema=pa.schema(JUDGED_COLUMNS[:3] + [JUDGED_COLUMNS[-1]])))
    assert (s["rows"], s["parsed"], s["unparsable"]) == (4, 2, 2)
    assert s["reasons"] == {"judge_error": 1, "judge_unparsable": 1}
    assert s["criteria"]["naturalness"] == {"mean": 2.0, "distribution": {"1": 1, "2": 0, "3": 1}}
    assert s["criteria"]["coherence"] == {"mean": 2.0, "distribution": {"1": 0, "2": 2, "3": 0}}
    assert s["criteria"]["empathy"] == {"mean": 3.0, "distribution": {"1": 0, "2": 0, "3": 2}}
    assert s["mean_of_means"] == pytest.approx(7 / 3, abs=1e-4)


def test_summary_of_an_empty_table():
    s = judge_summary(pa.schema(JUDGED_COLUMNS).empty_table())
    assert s["rows"] == 0 and s["criteria"]["empathy"]["mean"] is None and s["mean_of_means"] is None


def test_constrained_judge_asks_vllm_for_exactly_the_three_lines():
    import re

    from synth_empathy.stages.judge import ANSWER_PATTERN

    cfg = OmegaConf.structured(JudgeConfig)
    judge = Judge(cfg.engine, cfg.sampling, constrained=True)
    assert judge.sampling_params()["structured_outputs"] == {"regex": ANSWER_PATTERN}
    assert "structured_outputs" not in Judge(cfg.engine, cfg.sampling, constrained=False).sampling_params()
    # Whatever the constrained engine writes parses: every string the pattern admits.
    for n, c, e in [(1, 1, 1), (2, 3, 1), (3, 3, 3)]:
        answer = f" {n}\nCoherence: {c}\nEmpathy: {e}"
        assert re.fullmatch(ANSWER_PATTERN, answer)
        assert parse_scores(ANSWER_PREFIX + answer) == ({"naturalness": n, "coherence": c, "empathy": e}, None)

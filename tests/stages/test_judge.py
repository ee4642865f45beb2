"""The judge's prompts, requests, folding and summary (no engine: the e2e tests run one)."""

import math

import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from synth_empathy.config import EngineConfig, JudgeConfig
from synth_empathy.schemas import JUDGED_COLUMNS
from synth_empathy.stages.judge import (
    ANSWER_PREFIX,
    CRITERIA,
    RUBRICS,
    Judge,
    expand_criteria,
    fold_ratings,
    judge_messages,
    judge_summary,
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


def test_one_prompt_per_criterion_with_its_rubric_the_dialogue_and_the_answer_prefix():
    for criterion in CRITERIA:
        msgs = judge_messages(ROW, criterion)
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert msgs[-1]["content"] == ANSWER_PREFIX == "Rating: "
        user = msgs[1]["content"]
        assert RUBRICS[criterion] in user
        assert all(RUBRICS[c] not in user for c in CRITERIA if c != criterion)  # one criterion per request
        for needle in (
            "Speaker: My dog has been sick all week.",
            "Listener: I'm sorry, that must be worrying.",
            "Speaker: The vet says he will be fine now.",
            ROW["output"],
            "one digit: 1, 2 or 3",
        ):
            assert needle in user


def test_prompt_falls_back_to_the_instruction_without_turns():
    user = judge_messages({**ROW, "history": []}, "empathy")[1]["content"]
    assert "Speaker: I lost my job today." in user


def test_rows_expand_to_one_request_per_criterion():
    requests = expand_criteria(ROW)
    assert [r["criterion"] for r in requests] == list(CRITERIA)
    assert all(r["sample_id"] == ROW["sample_id"] and r["output"] == ROW["output"] for r in requests)


def _stage():
    return Judge(OmegaConf.structured(EngineConfig), OmegaConf.structured(JudgeConfig).sampling)


def vllm_logprobs(**probs):
    return [{i: {"logprob": math.log(p), "rank": i, "decoded_token": t} for i, (t, p) in enumerate(probs.items())}]


def test_stage_asks_for_one_token_with_its_logprobs_and_reads_the_expected_rating():
    stage = _stage()
    params = stage.sampling_params()
    assert (params["max_tokens"], params["logprobs"], params["temperature"]) == (1, 20, 0.0)
    pre = stage.preprocess({**ROW, "criterion": "coherence"})
    assert pre["messages"][-1] == {"role": "assistant", "content": ANSWER_PREFIX}
    assert pre["sampling_params"] == params
    ok = stage.postprocess(
        {**pre, "generated_text": " 3", "num_generated_tokens": 1, "logprobs": vllm_logprobs(**{" 3": 0.6, "1": 0.2})}
    )
    assert ok == {
        "sample_id": "s1#g0",
        "criterion": "coherence",
        "rating": pytest.approx(2.5),
        "judge_reason": None,
        "judge_model": "packaged:smollm2",
        "judge_num_tokens": 1,
        "judge_error": None,
    }
    prose = stage.postprocess({**pre, "generated_text": " Very", "logprobs": vllm_logprobs(**{" Very": 0.9})})
    assert (prose["rating"], prose["judge_reason"]) == (None, "judge_no_rating_token")
    err = stage.postprocess({**pre, "__inference_error__": "engine died", "generated_text": None})
    assert (err["rating"], err["judge_reason"], err["judge_error"]) == (None, "judge_error", "engine died")


def test_requests_fold_back_into_one_row_with_the_schemas_columns():
    requests = pa.Table.from_pylist(
        [
            {"sample_id": "a", "criterion": "naturalness", "rating": 2.5, "judge_reason": None, "judge_num_tokens": 1,
             "judge_error": None},
            {"sample_id": "a", "criterion": "empathy", "rating": None, "judge_reason": "judge_no_rating_token",
             "judge_num_tokens": 1},
            {"sample_id": "b", "criterion": "coherence", "rating": None, "judge_reason": "judge_error",
             "judge_num_tokens": 0, "judge_error": "boom"},
            {"sample_id": "a", "criterion": "coherence", "rating": 1.0, "judge_reason": None, "judge_num_tokens": 1},
        ]
    )  # fmt: skip
    folded = fold_ratings(requests)
    assert folded["a"]["naturalness"] == 2.5 and folded["a"]["coherence"] == 1.0 and folded["a"]["empathy"] is None
    assert (folded["a"]["judge_num_tokens"], folded["a"]["judge_reason"]) == (3, "judge_no_rating_token")
    assert (folded["b"]["judge_reason"], folded["b"]["judge_error"]) == ("judge_error", "boom")
    assert set(folded["a"]) == {n for n, _ in JUDGED_COLUMNS}
    pa.Table.from_pylist(list(folded.values()), schema=pa.schema(JUDGED_COLUMNS))


def test_config_defaults_are_greedy_and_one_token():
    cfg = OmegaConf.structured(JudgeConfig)
    assert cfg.enabled is True and cfg.sampling.temperature == 0.0 and cfg.sampling.max_tokens == 1
    assert cfg.engine.model == "packaged:smollm2" and cfg.validate is True


def test_summary_counts_means_spread_and_distributions():
    rows = [
        {"naturalness": 3.0, "coherence": 2.0, "empathy": 2.6, "judge_reason": None},
        {"naturalness": 1.0, "coherence": 2.0, "empathy": 2.4, "judge_reason": None},
        {"naturalness": 2.0, "coherence": None, "empathy": 2.0, "judge_reason": "judge_no_rating_token"},
        {"naturalness": None, "coherence": None, "empathy": None, "judge_reason": "judge_error"},
    ]
    s = judge_summary(pa.Table.from_pylist(rows, schema=pa.schema(JUDGED_COLUMNS[:3] + [JUDGED_COLUMNS[-1]])))
    assert (s["rows"], s["parsed"], s["unparsable"]) == (4, 2, 2)
    assert s["reasons"] == {"judge_error": 1, "judge_no_rating_token": 1}
    nat, coh, emp = (s["criteria"][c] for c in CRITERIA)
    assert (nat["mean"], nat["sd"], nat["min"], nat["max"], nat["varies"]) == (2.0, 1.0, 1.0, 3.0, True)
    assert nat["distribution"] == {"1": 1, "2": 0, "3": 1}
    assert (coh["varies"], coh["sd"]) == (False, 0.0)  # every rating the same
    assert emp["mean"] == 2.5 and emp["distribution"] == {"1": 0, "2": 1, "3": 1}  # 2.6 rounds to 3, 2.4 to 2
    assert s["mean_of_means"] == pytest.approx(6.5 / 3, abs=1e-4)


def test_summary_of_an_empty_table():
    s = judge_summary(pa.schema(JUDGED_COLUMNS).empty_table())
    assert s["rows"] == 0 and s["criteria"]["empathy"]["mean"] is None and s["mean_of_means"] is None


def test_a_shared_engines_progress_counts_judged_rows_not_requests():
    from synth_empathy.stages.judge import row_progress

    snap = {"answered": 7, "failed": 1, "tokens": 8}
    assert row_progress(lambda: snap)() == {"answered": 2, "failed": 1, "tokens": 8}
    assert row_progress(lambda: "starting")() == "starting" and row_progress(None) is None

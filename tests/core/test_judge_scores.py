"""The judge's rating: the expected value over the tokens 1, 2, 3, from any engine's logprobs."""

import math

import pytest

from synth_empathy.core.judge_scores import (
    NO_LOGPROBS,
    NO_RATING_TOKEN,
    expected_rating,
    first_token_alternatives,
    openai_alternatives,
)


def lp(p):
    return math.log(p)


def test_expected_value_over_the_three_rating_tokens_renormalised():
    # 1: 0.1, 2: 0.2, 3: 0.2 and other tokens 0.5: (0.1 + 0.4 + 0.6) / 0.5 = 2.2
    alts = [("1", lp(0.1)), ("2", lp(0.2)), ("3", lp(0.2)), ("Good", lp(0.5))]
    rating, reason = expected_rating(alts)
    assert rating == pytest.approx(2.2) and reason is None


def test_spaced_tokens_count_as_their_digit_and_add_up():
    # " 3" and "3" are different tokens of one rating.
    alts = [(" 3", lp(0.3)), ("3", lp(0.3)), ("\n1", lp(0.2)), (" 4", lp(0.2))]
    assert expected_rating(alts)[0] == pytest.approx((3 * 0.6 + 1 * 0.2) / 0.8)


def test_one_token_alone_gives_its_value_and_the_range_is_1_to_3():
    assert expected_rating([(" 1", lp(0.9))]) == (1.0, None)
    assert expected_rating([("3", 0.0)]) == (3.0, None)


@pytest.mark.parametrize(
    "alts, reason",
    [
        (None, NO_LOGPROBS),
        ([], NO_RATING_TOKEN),
        ([("4", lp(0.5)), ("0", lp(0.5)), ("12", lp(0.1)), ("2.5", lp(0.1))], NO_RATING_TOKEN),
        ([("2", float("nan"))], NO_RATING_TOKEN),
    ],
)
def test_no_rating_when_none_of_the_three_tokens_is_there(alts, reason):
    assert expected_rating(alts) == (None, reason)


def test_vllm_logprobs_as_ray_data_llm_returns_them():
    logprobs = [
        {
            17: {"logprob": lp(0.5), "rank": 1, "decoded_token": " 2"},
            18: {"logprob": lp(0.5), "rank": 2, "decoded_token": " 3"},
            99: {"logprob": lp(0.01), "rank": 3, "decoded_token": None},  # no text: skipped
        },
        {5: {"logprob": 0.0, "rank": 1, "decoded_token": "1"}},  # a second token is not the answer
    ]
    alts = first_token_alternatives(logprobs)
    assert alts == [(" 2", lp(0.5)), (" 3", lp(0.5))]
    assert expected_rating(alts)[0] == pytest.approx(2.5)
    for nothing in (None, [], "x", 3, [None]):
        assert first_token_alternatives(nothing) is None


def test_openai_style_choice_from_the_shared_engine():
    choice = {
        "message": {"content": "3"},
        "logprobs": {"content": [{"token": "3", "logprob": lp(0.8), "top_logprobs": [
            {"token": "3", "logprob": lp(0.8)}, {"token": "1", "logprob": lp(0.2)}]}]},
    }  # fmt: skip
    assert expected_rating(openai_alternatives(choice))[0] == pytest.approx(2.6)
    assert openai_alternatives({"message": {}}) is None and openai_alternatives(None) is None

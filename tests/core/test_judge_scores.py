"""The judge's answer parser: every format small and large models write, and never a crash."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth_empathy.core.judge_scores import CRITERIA, parse_scores

ALL3 = {"naturalness": 3, "coherence": 3, "empathy": 3}


@pytest.mark.parametrize(
    "text, scores",
    [
        ("Naturalness: 3\nCoherence: 2\nEmpathy: 1", {"naturalness": 3, "coherence": 2, "empathy": 1}),
        ("Naturalness: 3 Coherence: 3 Empathy: 3", ALL3),
        ("Naturalness:3\ncoherence:3\nEMPATHY:3", ALL3),
        ("**Naturalness:** 2\n**Coherence:** 3\n**Empathy:** 3", {"naturalness": 2, "coherence": 3, "empathy": 3}),
        ("Naturalness: three\nCoherence: two\nEmpathy: One", {"naturalness": 3, "coherence": 2, "empathy": 1}),
        ("Naturalness: 3/3\nCoherence: 2 / 3\nEmpathy: 3 out of 3", {"naturalness": 3, "coherence": 2, "empathy": 3}),
        ("Naturalness - 2\nCoherence = 2\nEmpathy: [3]", {"naturalness": 2, "coherence": 2, "empathy": 3}),
        (
            "Naturalness: 3 (sounds human)\nCoherence: 2 (a bit vague)\nEmpathy: 3.",
            {"naturalness": 3, "coherence": 2, "empathy": 3},
        ),
        ("Naturalness: 3.0\nCoherence: 2\nEmpathy: 1", {"naturalness": 3, "coherence": 2, "empathy": 1}),
        # A repeated block: the first rating of each criterion counts.
        (
            "Naturalness: 1\nCoherence: 1\nEmpathy: 1\nNaturalness: 3\nCoherence: 3\nEmpathy: 3",
            {"naturalness": 1, "coherence": 1, "empathy": 1},
        ),
        # An echoed scale is not a rating; the rating after it is.
        (
            "Naturalness (1-3): 2\nCoherence: 1, 2 or 3\nCoherence: 3\nEmpathy (one to three): 1",
            {"naturalness": 2, "coherence": 3, "empathy": 1},
        ),
        (
            "  Naturalness: 2\n\nCoherence: 3\nEmpathy: 2\nThe response is kind.",
            {"naturalness": 2, "coherence": 3, "empathy": 2},
        ),
    ],
)
def test_parses_the_formats_models_write(text, scores):
    assert parse_scores(text) == (scores, None)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "judge_empty"),
        ("   ", "judge_empty"),
        ("Naturalness:", "judge_empty"),
        ("Naturalness: 3\nCoherence: 2", "judge_unparsable"),
        ("Naturalness: <1, 2 or 3>\nCoherence: <1, 2 or 3>\nEmpathy: <1, 2 or 3>", "judge_unparsable"),
        ("Naturalness: 1, 2 or 3\nCoherence: 1-3\nEmpathy: 1 to 3", "judge_unparsable"),
        ("Naturalness: good\nCoherence: good\nEmpathy: good", "judge_unparsable"),
        ("I think the response is fine.", "judge_unparsable"),
        ("Naturalness: 4\nCoherence: 2\nEmpathy: 1", "judge_out_of_range"),
        ("Naturalness: 0\nCoherence: 2\nEmpathy: 1", "judge_out_of_range"),
        ("Naturalness: 2.5\nCoherence: 2\nEmpathy: 1", "judge_out_of_range"),
        ("Naturalness: 3/5\nCoherence: 2/5\nEmpathy: 1/5", "judge_out_of_range"),
        ("Naturalness: 10\nCoherence: 2\nEmpathy: 1", "judge_out_of_range"),
        (None, "judge_unparsable"),
        (42, "judge_unparsable"),
    ],
)
def test_failures_have_a_reason(text, reason):
    assert parse_scores(text) == (None, reason)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from(list("NaturlescohEmpy:0123 456789/.,-*\n")), max_size=80),
        st.builds(
            lambda a, b, c, junk: f"Naturalness: {a}\nCoherence: {b}\nEmpathy: {c}{junk}",
            st.text(max_size=6),
            st.text(max_size=6),
            st.text(max_size=6),
            st.text(max_size=20),
        ),
    )
)
def test_parser_never_raises_and_returns_valid_scores(text):
    scores, reason = parse_scores(text)
    if scores is None:
        assert reason in ("judge_empty", "judge_unparsable", "judge_out_of_range")
    else:
        assert reason is None and set(scores) == set(CRITERIA)
        assert all(type(v) is int and 1 <= v <= 3 for v in scores.values())


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_any_valid_triple_round_trips(a, b, c):
    assert parse_scores(f"Naturalness: {a}\nCoherence: {b}\nEmpathy: {c}") == (
        {"naturalness": a, "coherence": b, "empathy": c},
        None,
    )

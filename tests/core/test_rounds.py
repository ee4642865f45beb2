"""Parsing generated dialogue text into rounds, including what small models really write."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth_empathy.core.rounds import (
    MAX_RESPONSE_WORDS,
    REASON_EMPTY_OUTPUT,
    REASON_NO_COMPLETE_ROUND,
    REASON_NO_ROUNDS,
    ParseResult,
    Round,
    count_words,
    parse_rounds,
)

CANONICAL = """Round 1:
Context: I just found out I didn't get the job I interviewed for.
Response: I'm sorry, that's really disappointing. It's okay to feel let down after putting in so much effort.
Round 2:
Context: I keep wondering what I did wrong in the interview.
Response: It's natural to replay it, but one decision doesn't define your worth or ability.
Round 3:
Context: Maybe I should just stop applying for a while.
Response: Taking a short break to recharge is fine. What would help you feel ready again?
"""

EXPECTED = [
    Round(
        "I just found out I didn't get the job I interviewed for.",
        "I'm sorry, that's really disappointing. It's okay to feel let down after putting in so much effort.",
    ),
    Round(
        "I keep wondering what I did wrong in the interview.",
        "It's natural to replay it, but one decision doesn't define your worth or ability.",
    ),
    Round(
        "Maybe I should just stop applying for a while.",
        "Taking a short break to recharge is fine. What would help you feel ready again?",
    ),
]


def contexts(result: ParseResult) -> list[str]:
    return [r.context for r in result.rounds]


def responses(result: ParseResult) -> list[str]:
    return [r.response for r in result.rounds]


def test_canonical_layout() -> None:
    result = parse_rounds(CANONICAL)
    assert result.rounds == EXPECTED
    assert result.reason is None and result.ok
    assert result.incomplete_rounds == result.duplicate_rounds == result.overlong_responses == 0


def test_markdown_bold_and_headings_with_preamble_and_chatter() -> None:
    text = """Sure! Here are three rounds of empathetic conversation:

**Round 1**
**Context:** I just found out I didn't get the job I interviewed for.
**Response:** I'm sorry, that's really disappointing. It's okay to feel let down after putting in so much effort.

### Round 2
*Context*: I keep wondering what I did wrong in the interview.
*Response*: It's natural to replay it, but one decision doesn't define your worth or ability.

---
## Round 3 -
- **Context:** Maybe I should just stop applying for a while.
- **Response:** Taking a short break to recharge is fine. What would help you feel ready again?
I hope these rounds help you with your project! Let me know if you need more.
"""
    assert parse_rounds(text).rounds == EXPECTED


@pytest.mark.parametrize(
    "header",
    ["Round {n}:", "Round {n} -", "Round {n}.", "ROUND {n}", "**Round {n}:**", "{n}.", "{n})"],
)
def test_round_header_variants(header: str) -> None:
    blocks = []
    for n, r in enumerate(EXPECTED, start=1):
        blocks.append(f"{header.format(n=n)}\nContext: {r.context}\nResponse: {r.response}")
    assert parse_rounds("\n\n".join(blocks)).rounds == EXPECTED


def test_round_words_as_numbers() -> None:
    text = CANONICAL.replace("Round 1", "Round One").replace("Round 2", "Round Two")
    assert parse_rounds(text).rounds == EXPECTED


@pytest.mark.parametrize(
    ("ctx_label", "resp_label"),
    [
        ("Speaker", "Listener"),
        ("User", "Assistant"),
        ("Emotional context", "Empathetic response"),
        ("Speaker's emotional context", "Listener's response"),
        ("context", "response"),
        ("Context 1", "Response 1"),
        ("Speaker (sad)", "Listener (caring)"),
    ],
)
def test_label_variants(ctx_label: str, resp_label: str) -> None:
    text = "\n".join(f"{ctx_label}: {r.context}\n{resp_label}: {r.response}" for r in EXPECTED)
    assert parse_rounds(text).rounds == EXPECTED


def test_no_round_headers_alternating_lines() -> None:
    text = "\n".join(f"Context: {r.context}\nResponse: {r.response}" for r in EXPECTED)
    assert parse_rounds(text).rounds == EXPECTED


def test_both_labels_on_one_line() -> None:
    text = "\n".join(f"Round {i}: Context: {r.context} Response: {r.response}" for i, r in enumerate(EXPECTED, 1))
    assert parse_rounds(text).rounds == EXPECTED


def test_both_labels_on_one_line_with_dashes() -> None:
    text = "Round 1: Context - I feel sad. Response - I'm sorry you feel that way."
    assert parse_rounds(text).rounds == [Round("I feel sad.", "I'm sorry you feel that way.")]


def test_table_like_pipe_separator() -> None:
    text = "Context: I feel alone. | Response: You are not alone; I'm here with you."
    assert parse_rounds(text).rounds == [Round("I feel alone.", "You are not alone; I'm here with you.")]


def test_multiline_context_and_label_on_its_own_line() -> None:
    text = """Round 1:
Context:
My dog died last week.
I still set out his bowl every morning.
Response:
That habit shows how much you loved him. Grief takes time.
"""
    assert parse_rounds(text).rounds == [
        Round(
            "My dog died last week. I still set out his bowl every morning.",
            "That habit shows how much you loved him. Grief takes time.",
        )
    ]


def test_blank_line_ends_a_field_so_trailing_text_is_not_swallowed() -> None:
    text = (
        "Context: My exams start tomorrow.\nResponse: It's normal to feel nervous.\n\n"
        "That was a wonderful exercise in empathy."
    )
    assert responses(parse_rounds(text)) == ["It's normal to feel nervous."]


def test_chatter_right_after_last_response_is_not_swallowed() -> None:
    text = "Context: My exams start tomorrow.\nResponse: It's normal to feel nervous.\nI hope this helps!"
    assert responses(parse_rounds(text)) == ["It's normal to feel nervous."]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('"I miss my mom."', "I miss my mom."),
        ("“I miss my mom.”", "I miss my mom."),
        ("'I can't stop crying.'", "I can't stop crying."),
        ("\"'Nested quotes.'\"", "Nested quotes."),
        ('"Yes," she said, "I do."', '"Yes," she said, "I do."'),  # not wrapped
    ],
)
def test_wrapping_quotes_removed(raw: str, clean: str) -> None:
    result = parse_rounds(f"Context: {raw}\nResponse: {raw}")
    assert result.rounds == [Round(clean, clean)]


def test_word_count_note_and_emphasis_inside_text_are_cleaned() -> None:
    result = parse_rounds("Context: I *really* failed.\nResponse: That sounds painful. (3 words)")
    assert result.rounds == [Round("I really failed.", "That sounds painful.")]


def test_truncated_last_round_without_response_is_dropped_and_counted() -> None:
    text = CANONICAL + "Round 4:\nContext: And now my car broke down too, on top of"
    result = parse_rounds(text)
    assert result.rounds == EXPECTED
    assert result.incomplete_rounds == 1
    assert result.reason is None


def test_truncated_flag_drops_a_response_cut_mid_sentence() -> None:
    text = CANONICAL + "Round 4:\nContext: My car broke down.\nResponse: That is so frustra"
    assert len(parse_rounds(text).rounds) == 4  # the text alone cannot tell
    result = parse_rounds(text, truncated=True)
    assert result.rounds == EXPECTED
    assert result.incomplete_rounds == 1


def test_truncated_flag_keeps_a_finished_last_round() -> None:
    # The engine stopped inside a later header, after the last response was closed.
    text = CANONICAL + "\nRound"
    assert parse_rounds(text, truncated=True).rounds == EXPECTED


def test_duplicate_rounds_removed() -> None:
    text = CANONICAL + "Round 4:\nContext: " + EXPECTED[0].context + "\nResponse: " + (EXPECTED[0].response)
    result = parse_rounds(text)
    assert result.rounds == EXPECTED
    assert result.duplicate_rounds == 1


def test_same_context_with_other_response_is_not_a_duplicate() -> None:
    text = "Context: I'm tired.\nResponse: Rest helps.\nContext: I'm tired.\nResponse: Be kind to you."
    assert len(parse_rounds(text).rounds) == 2


def test_response_before_any_context_is_counted_not_used() -> None:
    text = "Response: Orphan reply.\nContext: I feel lost.\nResponse: Let's find a way together."
    result = parse_rounds(text)
    assert result.rounds == [Round("I feel lost.", "Let's find a way together.")]
    assert result.incomplete_rounds == 1


def test_context_twice_pairs_the_response_with_the_later_context() -> None:
    text = "Context: First.\nContext: Second.\nResponse: Reply to second."
    result = parse_rounds(text)
    assert result.rounds == [Round("Second.", "Reply to second.")]
    assert result.incomplete_rounds == 1


def test_echoed_template_placeholders_are_not_content() -> None:
    text = "Round 1:\nContext: <speaker's emotional context>\nResponse: <empathetic listener response, <= 30 words>"
    result = parse_rounds(text)
    assert result.rounds == []
    assert result.reason == REASON_NO_COMPLETE_ROUND


def test_overlong_response_is_kept_and_counted() -> None:
    long_reply = " ".join(["word"] * (MAX_RESPONSE_WORDS + 1))
    result = parse_rounds(f"Context: Sad.\nResponse: {long_reply}\nContext: Ok.\nResponse: Fine.")
    assert len(result.rounds) == 2
    assert result.overlong_responses == 1
    relaxed = parse_rounds(f"Context: Sad.\nResponse: {long_reply}", max_response_words=40)
    assert relaxed.overlong_responses == 0


def test_count_words() -> None:
    assert count_words("I'm so sorry - that's a 30-year-old wound.") == 7
    assert count_words("") == 0
    assert count_words("  🙂 — ! ") == 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", REASON_EMPTY_OUTPUT),
        ("   \n\t\n   ", REASON_EMPTY_OUTPUT),
        ("---\n***\n```", REASON_EMPTY_OUTPUT),
        ("I am a language model and I think empathy is important. It helps.", REASON_NO_ROUNDS),
        ("Round 1:\nRound 2:\n", REASON_NO_ROUNDS),
        ("Context:", REASON_NO_COMPLETE_ROUND),
        ("Response:", REASON_NO_COMPLETE_ROUND),
        ("Response: Only a reply.", REASON_NO_COMPLETE_ROUND),
        ("Context: Only a context, then the tokens ran out", REASON_NO_COMPLETE_ROUND),
    ],
)
def test_drop_reasons(text: str, reason: str) -> None:
    result = parse_rounds(text)
    assert result.rounds == []
    assert result.reason == reason
    assert not result.ok


def test_prose_mentioning_labels_mid_sentence_is_not_rounds() -> None:
    text = "the context: nothing here. my response: also nothing."
    assert parse_rounds(text).reason == REASON_NO_ROUNDS


def test_non_str_input_is_empty_output() -> None:
    assert parse_rounds(None).reason == REASON_EMPTY_OUTPUT  # type: ignore[arg-type]


def test_unicode_and_windows_newlines() -> None:
    text = "Context: Je suis triste 😢 — 我很难过\r\nResponse: « Je suis là pour toi. »\r\n"
    assert parse_rounds(text).rounds == [Round("Je suis triste 😢 — 我很难过", "Je suis là pour toi.")]


def test_huge_whitespace_is_fast_and_empty() -> None:
    assert parse_rounds(" " * 200_000 + "\n" * 50_000).reason == REASON_EMPTY_OUTPUT
    long_line = "Context:" + " " * 100_000 + "x" + " " * 100_000 + "Response:" + " " * 100_000 + "y"
    assert parse_rounds(long_line).rounds == [Round("x", "y")]


def test_round_as_dict() -> None:
    assert Round("a", "b").as_dict() == {"context": "a", "response": "b"}


# Text built from the tokens that steer the parser, so the property test reaches the
# interesting states (labels, headers, truncation) far more often than random unicode.
_TOKENS = st.sampled_from(
    [
        "Round 1:",
        "Round",
        "**",
        "Context:",
        "Response:",
        "Speaker:",
        "Listener:",
        "User:",
        "Assistant:",
        "1.",
        "2)",
        "\n",
        "\n\n",
        " ",
        "\r",
        "\u2028",
        '"',
        "“",
        "”",
        "'",
        "<",
        ">",
        "---",
        "```",
        "#",
        "- ",
        "(12 words)",
        "I hope this helps!",
        "sad",
        "Ok.",
        "|",
        ":",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    _check_invariants(parse_rounds(text))
    _check_invariants(parse_rounds(text, truncated=True))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=40).map("".join))
def test_never_raises_on_label_soup(text: str) -> None:
    _check_invariants(parse_rounds(text))
    _check_invariants(parse_rounds(text, truncated=True))


def _check_invariants(result: ParseResult) -> None:
    assert (result.reason is None) == bool(result.rounds)
    assert result.reason in (None, REASON_EMPTY_OUTPUT, REASON_NO_ROUNDS, REASON_NO_COMPLETE_ROUND)
    assert len(set(result.rounds)) == len(result.rounds)
    for r in result.rounds:
        assert r.context and r.response
        assert r.context == r.context.strip() and r.response == r.response.strip()
        assert "\n" not in r.context and "\n" not in r.response
    assert min(result.incomplete_rounds, result.duplicate_rounds, result.overlong_responses) >= 0


def test_a_second_dialogue_starting_again_at_round_one_is_ignored():
    # Seen in SmolLM2 output: three rounds, chatter, then "Round 1" of a new dialogue
    # which does not continue the first and must not be appended to it.
    text = (
        "Round 1:\nContext: I lost my way.\nResponse: I'm sorry to hear that.\n\n"
        "Round 2:\nContext: I feel lonely.\nResponse: I understand.\n\n"
        "Here's the new conversation.\n\n"
        "Round 1:\nContext: I'm trying to eat healthier.\nResponse: That is hard.\n"
    )
    result = parse_rounds(text)
    assert [r.context for r in result.rounds] == ["I lost my way.", "I feel lonely."]
    assert result.restarted


def test_rounds_numbered_upwards_are_not_a_restart():
    text = "Round 2:\nContext: a\nResponse: b\nRound 3:\nContext: c\nResponse: d\n"
    result = parse_rounds(text)
    assert len(result.rounds) == 2 and not result.restarted

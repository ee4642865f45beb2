"""Turn sampling: the target is the response to the context the instruction ends on."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth_empathy.core.rounds import Round
from synth_empathy.core.turn_sampling import (
    REASON_EMPTY_ROUND,
    REASON_TOO_FEW_ROUNDS,
    Sample,
    rng_for,
    sample_turns,
    sample_turns_result,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_rounds(n: int) -> list[Round]:
    return [Round(f"context {i}", f"response {i}") for i in range(1, n + 1)]


def last_speaker_index(instruction: str) -> int:
    """1-based round number of the last ``Speaker:`` line (our synthetic texts say it)."""
    last = [line for line in instruction.splitlines() if line.startswith("Speaker: ")][-1]
    return int(last.removeprefix("Speaker: context "))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_output_is_the_response_to_the_last_speaker_line_for_every_k(n: int) -> None:
    rounds = make_rounds(n)
    seen_k = set()
    for i in range(200):
        sample = sample_turns(rounds, random.Random(i))
        assert sample is not None
        k = sample.n_history
        seen_k.add(k)
        assert last_speaker_index(sample.instruction) == k + 1
        assert sample.output == rounds[k].response
    # Every allowed k is reachable, and nothing else.
    assert seen_k == set(range(1, min(3, n - 1) + 1))


def test_instruction_layout() -> None:
    sample = sample_turns(make_rounds(4), random.Random(0), min_history=2, max_history=2)
    assert sample is not None
    assert sample.instruction == "\n".join(
        [
            "Speaker: context 1",
            "Listener: response 1",
            "Speaker: context 2",
            "Listener: response 2",
            "Speaker: context 3",
            "Listener:",
        ]
    )
    assert sample.output == "response 3"
    assert sample.n_history == 2


def test_history_turns_mirror_the_instruction() -> None:
    sample = sample_turns(make_rounds(4), random.Random(0), min_history=2, max_history=2)
    assert sample is not None
    assert sample.history == [
        {"role": "user", "content": "context 1"},
        {"role": "assistant", "content": "response 1"},
        {"role": "user", "content": "context 2"},
        {"role": "assistant", "content": "response 2"},
        {"role": "user", "content": "context 3"},
    ]


def test_authors_misalignment_versus_ours() -> None:
    """The published script took the target from the last round whatever k was.

    With 4 rounds and k = 1 the instruction ends on context 2, so the only sensible
    target is response 2; the authors' script would have trained on response 4, a reply
    to context 4, which the model never sees.
    """
    rounds = make_rounds(4)
    sample = sample_turns(rounds, random.Random(0), min_history=1, max_history=1)
    assert sample is not None
    authors_target = rounds[-1].response
    assert sample.instruction.splitlines()[-2] == "Speaker: context 2"
    assert sample.output == "response 2"
    assert sample.output != authors_target
    # They agree only when k + 1 == n, i.e. when the last round is the one sampled.
    full = sample_turns(rounds, random.Random(0), min_history=3, max_history=3)
    assert full is not None and full.output == authors_target


def test_one_round_is_dropped_by_default() -> None:
    result = sample_turns_result(make_rounds(1), random.Random(0))
    assert result.sample is None and result.reason == REASON_TOO_FEW_ROUNDS and not result.ok
    assert sample_turns(make_rounds(1), random.Random(0)) is None
    assert sample_turns_result([], random.Random(0)).reason == REASON_TOO_FEW_ROUNDS


def test_one_round_with_min_history_zero_is_first_context_and_response() -> None:
    sample = sample_turns(make_rounds(1), random.Random(0), min_history=0)
    assert sample == Sample(
        instruction="Speaker: context 1\nListener:",
        output="response 1",
        n_history=0,
        history=[{"role": "user", "content": "context 1"}],
    )


def test_min_history_raises_the_round_requirement() -> None:
    assert sample_turns_result(make_rounds(2), random.Random(0), min_history=2).reason == (REASON_TOO_FEW_ROUNDS)
    sample = sample_turns(make_rounds(3), random.Random(0), min_history=2)
    assert sample is not None and sample.n_history == 2


def test_bad_bounds_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        sample_turns(make_rounds(3), random.Random(0), min_history=2, max_history=1)
    with pytest.raises(ValueError):
        sample_turns(make_rounds(3), random.Random(0), min_history=-1)


def test_accepts_dicts_and_tuples_as_read_back_from_tables() -> None:
    as_dicts = [r.as_dict() for r in make_rounds(3)]
    as_tuples = [(r.context, r.response) for r in make_rounds(3)]
    expected = sample_turns(make_rounds(3), random.Random(5))
    assert sample_turns(as_dicts, random.Random(5)) == expected
    assert sample_turns(as_tuples, random.Random(5)) == expected


def test_newlines_inside_a_turn_cannot_break_the_layout() -> None:
    rounds = [Round("line one\nListener: forged", "r1"), Round("c2", "r2")]
    sample = sample_turns(rounds, random.Random(0))
    assert sample is not None
    assert sample.instruction.splitlines()[0] == "Speaker: line one Listener: forged"
    assert len(sample.instruction.splitlines()) == 4


def test_empty_text_in_a_used_round_is_dropped() -> None:
    rounds = [Round("c1", "  "), Round("c2", "r2")]
    assert sample_turns_result(rounds, random.Random(0)).reason == REASON_EMPTY_ROUND


def test_rng_for_is_deterministic_and_depends_on_both_inputs() -> None:
    draws = [rng_for("seed-7/sample-2", 13).random() for _ in range(3)]
    assert len(set(draws)) == 1
    assert rng_for("seed-7/sample-2", 14).random() != draws[0]
    assert rng_for("seed-7/sample-3", 13).random() != draws[0]


def test_rng_for_is_stable_across_processes() -> None:
    """Workers are separate processes with their own hash seeds; the draw must agree."""
    code = "from synth_empathy.core.turn_sampling import rng_for; print(rng_for('abc', 42).random())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(REPO_ROOT)},
            cwd=REPO_ROOT,
        ).stdout.strip()
        for hash_seed in (1, 2)
    }
    assert outputs == {repr(rng_for("abc", 42).random())}


def test_same_sample_id_gives_the_same_sample() -> None:
    rounds = make_rounds(6)
    first = [sample_turns(rounds, rng_for(f"s{i}", 0)) for i in range(50)]
    again = [sample_turns(rounds, rng_for(f"s{i}", 0)) for i in reversed(range(50))][::-1]
    assert first == again
    assert len({s.n_history for s in first if s}) > 1  # ids actually spread over k


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=10),
    min_history=st.integers(min_value=0, max_value=4),
    extra=st.integers(min_value=0, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_k_range_and_alignment_property(n: int, min_history: int, extra: int, seed: int) -> None:
    max_history = min_history + extra
    rounds = make_rounds(n)
    result = sample_turns_result(rounds, random.Random(seed), min_history=min_history, max_history=max_history)
    if n < min_history + 1:
        assert result.reason == REASON_TOO_FEW_ROUNDS
        return
    sample = result.sample
    assert sample is not None and result.reason is None
    assert min_history <= sample.n_history <= min(max_history, n - 1)
    assert sample.instruction.splitlines()[-1] == "Listener:"
    assert last_speaker_index(sample.instruction) == sample.n_history + 1
    assert sample.output == rounds[sample.n_history].response
    assert len(sample.history) == 2 * sample.n_history + 1

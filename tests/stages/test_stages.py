"""The pure cores of the pipeline's own stages (no Ray, no engine)."""

import numpy as np
import pyarrow as pa
import pytest

from synth_empathy import schemas
from synth_empathy.stages.discriminator import discriminator_messages
from synth_empathy.stages.generation import ANSWER_PREFIX, expand_seeds, generation_messages, seed_rounds
from synth_empathy.stages.quality import quality_scores, score_batch
from synth_empathy.stages.turns import sample_row


def test_seed_rounds_pair_speaker_and_listener_lines():
    ctx = "Speaker: I lost my keys.\nListener: Oh no!\nSpeaker: And I was late."
    assert seed_rounds(ctx, "That sounds stressful.") == [
        ("I lost my keys.", "Oh no!"),
        ("And I was late.", "That sounds stressful."),
    ]


def test_generation_prompt_shows_the_seed_and_starts_the_answer():
    msgs = generation_messages({"context": "Speaker: I passed!", "response": "Congratulations!", "emotion": "proud"})
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert "empathetic psychologist" in msgs[0]["content"]
    assert "Context: I passed!\nResponse: Congratulations!" in msgs[1]["content"]
    assert "at least 3 rounds" in msgs[1]["content"] and "30 words" in msgs[1]["content"]
    assert msgs[2]["content"] == ANSWER_PREFIX


def test_expand_seeds_gives_stable_unique_sample_ids():
    batch = {"seed_id": ["a", "b"], "emotion": ["sad", "proud"], "context": ["x", "y"], "response": ["r", "s"]}
    out = expand_seeds(batch, 3)
    assert out["sample_id"] == ["a#g0", "a#g1", "a#g2", "b#g0", "b#g1", "b#g2"]
    assert out["seed_id"] == ["a"] * 3 + ["b"] * 3


def generation(raw, **kw):
    row = {
        "seed_id": "s",
        "sample_id": "s#g0",
        "emotion": "sad",
        "raw_text": raw,
        "num_generated_tokens": 50,
        "error": None,
    }
    row.update(kw)
    return sample_row(row, seed=0, min_history=1, max_history=3, max_tokens=300)


THREE_ROUNDS = (
    "Round 1:\nContext: My dog is sick.\nResponse: I'm sorry, that's scary.\n"
    "Round 2:\nContext: The vet says surgery.\nResponse: That's a lot to take in.\n"
    "Round 3:\nContext: It went well!\nResponse: What a relief!\n"
)


def test_sample_row_aligns_the_target_with_the_last_speaker_line():
    row = generation(THREE_ROUNDS)
    assert row["drop_reason"] is None and row["n_rounds"] == 3
    k = row["n_history"]
    assert 1 <= k <= 2
    lines = row["instruction"].splitlines()
    assert lines[-1] == "Listener:" and len(lines) == 2 * k + 2
    responses = {
        "My dog is sick.": "I'm sorry, that's scary.",
        "The vet says surgery.": "That's a lot to take in.",
        "It went well!": "What a relief!",
    }
    assert row["output"] == responses[lines[-2][len("Speaker: ") :]]
    # And the row fits the declared stage schema.
    schemas.conform(pa.Table.from_pylist([row]), schemas.SAMPLES)


@pytest.mark.parametrize(
    "raw, kw, reason",
    [
        ("", {}, "empty_output"),
        ("I am a model and I like cats.", {}, "no_rounds"),
        ("Round 1:\nContext: only one\nResponse: round\n", {}, "too_few_rounds"),
        (THREE_ROUNDS, {"error": "engine died"}, "generation_error"),
    ],
)
def test_dropped_generations_keep_a_row_with_the_reason(raw, kw, reason):
    row = generation(raw, **kw)
    assert row["drop_reason"] == reason and row["sample_id"] == "s#g0"
    schemas.conform(pa.Table.from_pylist([row]), schemas.SAMPLES)


def test_discriminator_sees_the_history_as_chat_or_as_the_instruction():
    row = {"instruction": "Speaker: hi\nListener:", "history": [{"role": "user", "content": "hi"}]}
    chat = discriminator_messages(row, "you are a helpful assistant", "chat")
    assert chat == [{"role": "system", "content": "you are a helpful assistant"}, {"role": "user", "content": "hi"}]
    plain = discriminator_messages(row, "sys", "instruction")
    assert plain[-1] == {"role": "user", "content": "Speaker: hi\nListener:"}


def test_quality_score_is_100_times_cosine():
    a = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    b = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert np.allclose(quality_scores(a, b), [100.0, 60.0, 0.0], atol=1e-4)


def test_score_batch_with_the_real_embedder_applies_the_threshold():
    rows = {
        "sample_id": ["a", "b", "c", "d"],
        "instruction": ["Speaker: my cat died\nListener:"] * 4,
        "output": ["I'm so sorry about your cat.", "I'm so sorry about your cat.", "x", "y"],
        "disc_response": ["I'm so sorry about your cat.", "The stock market closed higher today.", "", "z"],
        "disc_error": [None, None, None, "engine error"],
        "history": [[{"role": "user", "content": "my cat died"}]] * 4,
    }
    out = score_batch(pa.table(rows), "packaged:all-minilm-l6-v2", threshold=60)
    scores = out.column("quality_score").to_pylist()
    assert scores[0] == pytest.approx(100.0, abs=0.01)
    assert 0 <= scores[1] < 60
    assert scores[2] is None and scores[3] is None
    assert out.column("kept").to_pylist() == [True, False, False, False]
    assert out.column("drop_reason").to_pylist() == [
        None,
        "below_quality_threshold",
        "empty_discriminator_answer",
        "discriminator_error",
    ]
    emb = out.column("embedding").to_pylist()
    assert len(emb[0]) == 384 and emb[1] is None
    assert abs(np.linalg.norm(emb[0]) - 1) < 1e-4


def test_agreement_by_copying_the_history_is_dropped_with_a_reason():
    """The degenerate top scorer: the target repeats round 1's response, the
    discriminator copies the same line, the cosine of identical strings is 1."""
    history = [
        {"role": "user", "content": "My cat died last night."},
        {"role": "assistant", "content": "I'm so sorry. Was she with you for long?"},
        {"role": "user", "content": "Fifteen years. The house feels empty."},
    ]
    rows = {
        "sample_id": ["copy", "answer-copies", "near-copy", "fine"],
        "instruction": ["..."] * 4,
        "output": [
            "I'm so sorry. Was she with you for long?",  # the target repeats a history line
            "Fifteen years is a lifetime together; missing her makes sense.",
            "i'm SO sorry - was she with you for long",  # the same line, other case/punctuation
            "Fifteen years is a lifetime together; missing her makes sense.",
        ],
        "disc_response": [
            "I'm so sorry. Was she with you for long?",
            "I'm so sorry. Was she with you for long?",  # the answer copies the history
            "I'm so sorry. Was she with you for long?",
            "Fifteen years together is a lifetime; it makes sense that you miss her.",
        ],
        "disc_error": [None] * 4,
        "history": [history] * 4,
    }
    out = score_batch(pa.table(rows), "packaged:all-minilm-l6-v2", threshold=0)
    assert out.column("drop_reason").to_pylist() == [
        "target_repeats_history",
        "answer_repeats_history",
        "target_repeats_history",
        None,
    ]
    assert out.column("kept").to_pylist() == [False, False, False, True]
    assert out.column("quality_score").to_pylist()[0] == pytest.approx(100.0, abs=0.01)  # the score stays
    off = score_batch(pa.table(rows), "packaged:all-minilm-l6-v2", threshold=0, drop_repeats=False)
    assert off.column("kept").to_pylist() == [True] * 4

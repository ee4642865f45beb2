"""Repeats of the history: exact after normalising, or by embedding similarity."""

import numpy as np

from synth_empathy.core.repetition import max_similarity, normalise, repeats_exactly, repetition_reason

HISTORY = ["My dog is sick.", "Oh no, I'm sorry. What happened?", "He ate something bad."]


def test_normalise_ignores_case_spacing_and_punctuation():
    assert normalise("  Oh NO,  I'm sorry!! ") == normalise("oh no i m sorry") == "oh no i m sorry"


def test_exact_repeat_after_normalising_and_never_for_empty_text():
    assert repeats_exactly("oh no - i'm SORRY. what happened", HISTORY)
    assert not repeats_exactly("I'm sorry to hear that.", HISTORY)
    assert not repeats_exactly("", HISTORY) and not repeats_exactly("!!", ["?"])


def test_reason_checks_the_target_first_then_the_answer():
    assert repetition_reason(HISTORY[1], HISTORY[1], HISTORY) == "target_repeats_history"
    assert repetition_reason("That must be scary.", HISTORY[2], HISTORY) == "answer_repeats_history"
    assert repetition_reason("That must be scary.", "Poor thing.", HISTORY) is None


def test_similarity_threshold_applies_only_when_given():
    kw = dict(target_similarity=0.97, answer_similarity=0.2)
    assert repetition_reason("new words", "other words", HISTORY, threshold=0.95, **kw) == "target_repeats_history"
    assert repetition_reason("new words", "other words", HISTORY, threshold=0.98, **kw) is None
    assert repetition_reason("new words", "other words", HISTORY, threshold=None, **kw) is None


def test_max_similarity_of_unit_vectors():
    h = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    assert max_similarity(np.array([0.6, 0.8], dtype=np.float32), h) == np.float32(1.0)
    assert max_similarity(np.array([1.0, 0.0], dtype=np.float32), h[:0]) == -1.0

"""Agreement that means nothing: a target or an answer that repeats the history.

The quality score rewards agreement between the generated target and the
discriminator's answer. When the generator repeats an earlier response as the target
and the discriminator copies the same line from the history, the two agree perfectly
(the cosine of two identical strings is 1) and the row scores 100 while saying nothing
new. These functions find such rows: an exact repeat after normalising case,
whitespace and punctuation, or (given embeddings) a cosine at or above a threshold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: what 'the same line' means."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", str(text or "").lower())).strip()


def repeats_exactly(text: str, history: Sequence[str]) -> bool:
    """True when ``text`` is, once normalised, one of the history lines (empty text never is)."""
    t = normalise(text)
    return bool(t) and any(t == normalise(line) for line in history)


def max_similarity(vector: np.ndarray, history_vectors: np.ndarray) -> float:
    """Largest cosine between one unit vector and the unit vectors of a history (-1 if none)."""
    if len(history_vectors) == 0:
        return -1.0
    return float(np.max(history_vectors @ vector))


def repetition_reason(
    target: str,
    answer: str,
    history: Sequence[str],
    *,
    target_similarity: float | None = None,
    answer_similarity: float | None = None,
    threshold: float | None = None,
) -> str | None:
    """``target_repeats_history``, ``answer_repeats_history`` or None.

    The similarities are the largest cosines of the target's and the answer's embedding
    with the history lines' (:func:`max_similarity`); with ``threshold`` None only exact
    repeats count. The target is checked first: a copied target makes the row useless
    whatever the discriminator said.
    """
    near = threshold is not None
    if repeats_exactly(target, history) or (near and target_similarity is not None and target_similarity >= threshold):
        return "target_repeats_history"
    if repeats_exactly(answer, history) or (near and answer_similarity is not None and answer_similarity >= threshold):
        return "answer_repeats_history"
    return None

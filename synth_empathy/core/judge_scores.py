"""A judge's rating from the probabilities of the tokens ``1``, ``2`` and ``3``. Pure; never raises.

The judge is asked one criterion per request and answers with a single token. Its rating
is not that token but the expected value over the three rating tokens, as G-Eval does:

    rating = sum(r * p(r)) / sum(p(r))   for r in 1, 2, 3

over the top log-probabilities the engine returns for the answer's first token (a token's
text counts with its spaces stripped, and tokens with the same stripped text add up). A
rating is a float in [1, 3]; a model that always writes the same digit still gets ratings
that move with its confidence, and one that copies the order of a scale has no list of
three lines to copy. When none of the three tokens is among the returned alternatives
there is no rating, and the reason says so.

Pure (no engine, no Ray), so it is tested on its own; the judge stage is
:mod:`synth_empathy.stages.judge`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

CRITERIA: tuple[str, ...] = ("naturalness", "coherence", "empathy")

#: The start of every answer, written for the model as an assistant message that the chat
#: template continues: the next token is then a rating far more often than prose. The
#: trailing space belongs to it: SmolLM2's tokenizer writes "Rating: 2" as ':', ' ', '2',
#: so after "Rating:" the likeliest token was the space and no digit was among the top 20.
ANSWER_PREFIX = "Rating: "

#: The alternatives asked for with each answer token (vLLM's default cap, max_logprobs, is 20).
TOP_LOGPROBS = 20

RATINGS: tuple[int, ...] = (1, 2, 3)

# Why a criterion has no rating (the row's judge_reason; counted in reports).
NO_LOGPROBS = "judge_no_logprobs"  # the engine returned no alternatives for the answer token
NO_RATING_TOKEN = "judge_no_rating_token"  # none of 1, 2, 3 among the returned alternatives
ENGINE_ERROR = "judge_error"  # the engine failed on the request


def first_token_alternatives(logprobs: Any) -> list[tuple[str, float]] | None:
    """``[(token text, logprob), ...]`` of the answer's first token, from vLLM's
    ``logprobs`` as Ray Data LLM returns it (a list per generated token of
    ``{token_id: {"logprob", "rank", "decoded_token"}}``); None when there is none."""
    if logprobs is None or isinstance(logprobs, (str, bytes)):
        return None
    try:
        first = next(iter(logprobs), None)
    except TypeError:
        return None
    if not isinstance(first, Mapping):
        return None
    out = []
    for info in first.values():
        if isinstance(info, Mapping) and info.get("decoded_token") is not None and info.get("logprob") is not None:
            out.append((str(info["decoded_token"]), float(info["logprob"])))
    return out


def openai_alternatives(choice: Mapping[str, Any] | None) -> list[tuple[str, float]] | None:
    """The same list from an OpenAI-style chat choice (``logprobs.content[0].top_logprobs``)."""
    content = ((choice or {}).get("logprobs") or {}).get("content") or []
    if not content:
        return None
    top = content[0].get("top_logprobs") or []
    return [(str(t["token"]), float(t["logprob"])) for t in top if t.get("token") is not None]


def expected_rating(alternatives: Iterable[tuple[str, float]] | None) -> tuple[float | None, str | None]:
    """``(rating in [1, 3], None)`` from a token's alternatives, or ``(None, reason)``."""
    if alternatives is None:
        return None, NO_LOGPROBS
    mass = dict.fromkeys(RATINGS, 0.0)
    for token, logprob in alternatives:
        text = str(token).strip()
        if text in ("1", "2", "3") and logprob is not None and not math.isnan(logprob):
            mass[int(text)] += math.exp(logprob)
    total = sum(mass.values())
    if not total > 0:
        return None, NO_RATING_TOKEN
    rating = sum(r * p for r, p in mass.items()) / total
    return min(3.0, max(1.0, rating)), None

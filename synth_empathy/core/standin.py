"""Stand-ins for the models: a benchmark and test instrument, never a default.

A rehearsal runs every stage of the pipeline - Ray Data, actor pools, batching, Parquet
parts, resume, selection - at a scale no CPU can run real models at. The stand-ins
replace only the model math, and every run folder that used one says so (manifest,
report, dataset card: :data:`NOTICE`). They are chosen by name, with any preset:

* ``engine.model=standin`` (or ``standin:tokens_per_s=200``; a bare ``standin:`` would
  read as a YAML mapping on the command line): each request gets text
  shaped like the real stage's answer - rounds in the generator's layout, one listener
  line for the discriminator, a digit 1-3 with first-token logprobs for the judge - drawn from a hash of the
  request, so equal requests get equal answers on any worker and any attempt.
  ``tokens_per_s`` paces each replica (a whitespace-separated word counts as a token),
  so that a slow engine's back-pressure reaches the stages around it. ``count_dir``
  (an absolute folder) makes each replica append the size of every batch it answered
  to ``<count_dir>/<stage>/<pid>.txt``: how a rehearsal counts the work a kill cost.
* ``quality.embedder=standin`` (or ``standin:dim=384,near_duplicates=0.05,groups=16``):
  deterministic unit vectors, see :class:`StandinEmbedder`.

This module holds the pure parts (spec parsing, the answers, the vectors); the engine's
actor is :mod:`synth_empathy.stages.standin_engine`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from synth_empathy.errors import ConfigError

PREFIX = "standin"

#: The one line a run folder made with a stand-in carries (report, card).
NOTICE = "stand-in engine: a benchmark instrument, not model output"

# key -> (parse, test, wording) per kind of spec
_INT = int
_ENGINE_KEYS = {
    "tokens_per_s": (float, lambda v: v > 0, "> 0"),
    # a rehearsal's count of answered rows (benchmarks/million_run.py: work a kill cost)
    "count_dir": (str, lambda v: v.startswith("/"), "an absolute folder"),
}
_EMBEDDER_KEYS = {
    "dim": (_INT, lambda v: v >= 8, ">= 8"),
    "near_duplicates": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "groups": (_INT, lambda v: v >= 1, ">= 1"),
}
ENGINE_DEFAULTS: dict[str, Any] = {"tokens_per_s": None, "count_dir": None}
EMBEDDER_DEFAULTS: dict[str, Any] = {"dim": 384, "near_duplicates": 0.05, "groups": 16}


def is_standin(spec: Any) -> bool:
    """Whether a configured model names a stand-in (``standin`` or ``standin:...``)."""
    s = str(spec or "")
    return s == PREFIX or s.startswith(PREFIX + ":")


def parse_spec(spec: str, kind: str = "engine", where: str = "engine.model") -> dict[str, Any]:
    """The options of a stand-in spec (``kind`` engine or embedder), defaults filled in;
    a bad spec is a :class:`ConfigError` naming ``where``."""
    keys, out = (_ENGINE_KEYS, dict(ENGINE_DEFAULTS)) if kind == "engine" else (_EMBEDDER_KEYS, dict(EMBEDDER_DEFAULTS))
    body = str(spec)[len(PREFIX) :].lstrip(":").strip()
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in keys:
            raise ConfigError(
                f"{where}: bad stand-in option {item!r} in {spec!r}; known: "
                + ", ".join(f"{k}=<{'folder' if keys[k][0] is str else 'number'}>" for k in keys)
            )
        parse, test, wording = keys[key]
        try:
            number = parse(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: {key} must be a number {wording} in {spec!r}, got {value.strip()!r}") from None
        if not test(number):
            raise ConfigError(f"{where}: {key} must be {wording} in {spec!r}, got {value.strip()}")
        out[key] = number
    return out


# --------------------------------------------------------------------------- the answers


def request_rng(request: Any) -> random.Random:
    """A generator seeded by the request itself (any JSON-able value): the same request
    gives the same answer in every process, unlike Python's salted ``hash``."""
    data = json.dumps(request, sort_keys=True, default=str).encode("utf-8", "surrogatepass")
    return random.Random(int.from_bytes(hashlib.sha256(data).digest()[:8], "big"))


_FEELINGS = ("worried", "excited", "lonely", "proud", "nervous", "grateful", "upset", "hopeful", "tired", "angry")
_EVENTS = (
    "my sister moved to another city",
    "I finally finished the marathon",
    "my dog has been sick all week",
    "I got the job I applied for",
    "my best friend forgot my birthday",
    "the exam results come out tomorrow",
    "we lost the game in the last minute",
    "my grandmother is coming to visit",
    "the landlord raised the rent again",
    "I passed my driving test",
    "my old laptop broke before the deadline",
    "our team won the regional final",
)
_FOLLOW = (
    "I keep thinking about it at night.",
    "I do not know who to talk to about it.",
    "It has been on my mind all day.",
    "I told my family but they did not really listen.",
    "Part of me still cannot believe it.",
)
_OPENERS = (
    "That sounds really hard",
    "I am so happy for you",
    "I can hear how much this means to you",
    "It makes sense that you feel that way",
    "That must have been a lot to carry",
    "What a moment to go through",
)
_QUESTIONS = (
    "how are you holding up?",
    "what would help you most right now?",
    "have you been able to rest at all?",
    "who else knows how you feel?",
    "what was the best part of it?",
    "do you want to talk more about it?",
)


def _words(text: str) -> int:
    return len(text.split())


def _cut(text: str, max_tokens: int | None) -> tuple[str, int]:
    """The text cut to ``max_tokens`` words, as an engine stops at its token limit."""
    if max_tokens is not None:
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        if len(ends) > max_tokens:
            text = text[: ends[max_tokens - 1]]
    return text, _words(text)


def _context(rng: random.Random, emotion: str) -> str:
    return f"I feel {emotion} because {rng.choice(_EVENTS)}. {rng.choice(_FOLLOW)}"


def _reply(rng: random.Random) -> str:
    return f"{rng.choice(_OPENERS)}, {rng.choice(_QUESTIONS)}"


def _user_text(messages: Sequence[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")


def _prefix(messages: Sequence[dict[str, Any]]) -> str:
    """The answer's start, written for the model (an assistant message last), or ''."""
    last = messages[-1] if messages else {}
    return str(last.get("content") or "") if last.get("role") == "assistant" else ""


def rounds_answer(messages: Sequence[dict[str, Any]], request: Any, max_tokens: int | None = None) -> tuple[str, int]:
    """The generator's answer: as many ``Round / Context / Response`` rounds as the prompt
    asks for ("at least N rounds"), sometimes one more, about the emotion it names; the
    continuation of an answer prefix (``Round 1:\\nContext:``) when the request has one."""
    rng = request_rng(request)
    user = _user_text(messages)
    asked = re.search(r"at least (\d+) rounds", user)
    n = (int(asked.group(1)) if asked else 3) + rng.randint(0, 1)
    feels = re.search(r"who feels (.+?) and an", user)
    emotion = feels.group(1).strip() if feels else rng.choice(_FEELINGS)
    body = "\n".join(f"Round {i}:\nContext: {_context(rng, emotion)}\nResponse: {_reply(rng)}" for i in range(1, n + 1))
    prefix = _prefix(messages)
    if prefix and body.startswith(prefix):
        body = body[len(prefix) :]
    return _cut(body, max_tokens)


def listener_answer(messages: Sequence[dict[str, Any]], request: Any, max_tokens: int | None = None) -> tuple[str, int]:
    """The discriminator's answer: one listener line."""
    return _cut(_reply(request_rng(request)), max_tokens)


def ratings_answer(messages: Sequence[dict[str, Any]], request: Any, max_tokens: int | None = None) -> tuple[str, int]:
    """The judge's answer: one digit 1-3 (the judge asks one criterion per request and reads
    the rating from the first token's logprobs, :func:`rating_logprobs`; the digit is the
    likeliest of them)."""
    weights = _rating_weights(request)
    return str(1 + max(range(3), key=weights.__getitem__)), 1


def _rating_weights(request: Any) -> list[float]:
    rng = request_rng(request)
    return [rng.random() + 0.05 for _ in range(3)]


def rating_logprobs(request: Any) -> list[dict[str, dict[str, Any]]]:
    """The first token's alternatives for the judge's answer, shaped as Ray Data LLM returns
    vLLM's ``logprobs`` (a list per generated token of ``{token: {logprob, rank, decoded_token}}``):
    the three digits with deterministic probabilities, so the expected rating varies by request."""
    weights = _rating_weights(request)
    total = sum(weights)
    order = sorted(range(3), key=lambda i: -weights[i])
    return [
        {
            str(i + 1): {
                "logprob": math.log(weights[i] / total),
                "rank": order.index(i) + 1,
                "decoded_token": str(i + 1),
            }
            for i in range(3)
        }
    ]


#: LLM stage name -> its answer; any other stage (the discriminator, the calibration's
#: answers, an evaluated model) answers as a listener.
ANSWERS = {"generation": rounds_answer, "judge": ratings_answer}


def answer(stage: str, messages: Sequence[dict[str, Any]], request: Any, max_tokens: int | None = None):
    """``(text, tokens)`` of the stand-in for ``stage``'s request."""
    return ANSWERS.get(stage, listener_answer)(messages, request, max_tokens)


# --------------------------------------------------------------------------- the embedder

_WORD = re.compile(r"[a-z0-9']+")
# A near-duplicate's offset from its group's anchor: cosine 1/sqrt(1 + s^2) to the anchor,
# about 1/(1 + s^2) = 0.978 between two members, above the default repeat and
# near-duplicate cosines (0.95).
_SPREAD = 0.15


def _seed(*parts: Any) -> int:
    data = "\x00".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class StandinEmbedder:
    """Deterministic unit vectors with a controlled share of near-duplicates.

    A text's vector is the normalised sum of one fixed random vector per word (lower
    case, letters, digits and apostrophes), so texts that share words have a positive
    cosine and the quality score ranges like a real embedder's rather than sitting at 0;
    equal texts get equal vectors; a text without words gets its own random direction.

    ``near_duplicates`` = q: a text is, with probability q decided by the hash of the
    text alone, a near-duplicate instead: its vector is one of ``groups`` fixed anchor
    directions (chosen by the hash) plus a small offset, cosine about 0.98 to the other
    members of its group. Among N distinct texts about q x N are then near-duplicates of
    another row (cosine >= 0.95), once q x N is several times ``groups``; the others are
    near-duplicates only where their words make them so.

    The same interface as the part of sentence-transformers that
    :func:`synth_empathy.models.embedder.encode` uses.
    """

    def __init__(self, dim: int = 384, near_duplicates: float = 0.05, groups: int = 16):
        self.dim, self.share, self.groups = int(dim), float(near_duplicates), int(groups)
        self._words: dict[str, np.ndarray] = {}
        self._anchors = [_unit(self._random("anchor", j)) for j in range(self.groups)]

    @classmethod
    def from_spec(cls, spec: str) -> StandinEmbedder:
        return cls(**parse_spec(spec, "embedder", "quality.embedder"))

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def _random(self, *key: Any) -> np.ndarray:
        return np.random.default_rng(_seed(self.dim, *key)).standard_normal(self.dim)

    def _word(self, word: str) -> np.ndarray:
        v = self._words.get(word)
        if v is None:
            if len(self._words) > 200_000:  # a bound on memory for a long rehearsal
                self._words.clear()
            v = self._words[word] = self._random("word", word)
        return v

    def vector(self, text: str) -> np.ndarray:
        h = _seed("text", text)
        if (h % 1_000_000) < self.share * 1_000_000:
            offset = _unit(self._random("offset", text)) * _SPREAD
            return _unit(self._anchors[(h // 1_000_000) % self.groups] + offset)
        words = _WORD.findall(str(text).lower())
        if not words:
            return _unit(self._random("empty", text))
        return _unit(np.sum([self._word(w) for w in words], axis=0))

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        """(N, dim) float32 unit vectors (sentence-transformers' keyword arguments are
        accepted and need nothing: the vectors are always normalised)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)


# --------------------------------------------------------------------------- where used

#: Config keys naming a model of the pipeline, by the run folder's tables they make.
MODEL_KEYS = ("generation.engine.model", "discriminator.engine.model", "judge.engine.model", "quality.embedder")


def _select(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node is None:
            return None
    return node


def used(cfg: Any) -> dict[str, str]:
    """The pipeline's model keys that name a stand-in, with their specs ({} for none);
    ``cfg`` is a loaded config or the plain dict of a config.yaml. A disabled judge counts
    as unused."""
    judge = _select(cfg, "judge.enabled")
    keys = [k for k in MODEL_KEYS if not (k.startswith("judge.") and judge is False)]
    return {k: str(_select(cfg, k)) for k in keys if is_standin(_select(cfg, k))}


def notice(cfg: Any) -> str | None:
    """The line a report or card carries when the run used a stand-in, else None."""
    keys = used(cfg)
    return f"{NOTICE} ({', '.join(keys)})" if keys else None

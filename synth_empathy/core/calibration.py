"""Calibrating an instrument against human replies: references, foils, AUC with its interval,
and the threshold that a share of human replies reaches. Pure; no Ray, no model.

The quality score (method step 3b) and the judge's ratings (step 6) are instruments. Each is
checked the same way: on *reference* dialogues, written by people, the instrument scores the
true listener reply and a *foil* (a reply that should score lower). An instrument that works
scores the true reply higher; how often it does is the **AUC**, the probability that a
random true reply outscores a random foil (Mann-Whitney; ties count one half). 0.5 is a coin.

* :func:`reference_rows` - one (history, reply) pair per reference dialogue: dialogues are
  told apart by their opening turn (:func:`synth_empathy.core.heldout.split_key`, which also
  joins the copies ED keeps of a conversation), each gives the pair a hash of ``seed`` picks,
  and ``limit`` dialogues are taken in hash order (a fixed pseudo-random subset, not the
  first ones of a file sorted by emotion).
* :func:`foil_replies` - per reference, the reply of **another dialogue**, of another dialogue
  **of the same emotion** (a harder foil: same topic family), and a **generic** reply that
  fits any dialogue. The other dialogue is the next one in a seeded shuffle (a cyclic shift,
  so no reference gets its own reply); a reference alone in its emotion gets no
  same-emotion foil.
* :func:`auc_interval` - the AUC and its percentile-bootstrap 95 % interval, resampling the
  *dialogues* (a resampled dialogue brings its true score and its foil score together).
* :func:`threshold_for_share` - the highest T that at least ``share`` of the human replies
  reach (score >= T).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synth_empathy.core.heldout import split_key

#: Fewer reference dialogues than this give no useful interval (the AUC's 95 % interval at
#: n = 50 is about +-0.1 wide for an AUC near 0.8).
MIN_REFERENCES = 50

#: The foil kinds, in report order.
FOILS: tuple[str, ...] = ("other_dialogue", "same_emotion", "generic")

#: Listener replies that fit any dialogue: the generic foil (``calibration.generic_replies``).
GENERIC_REPLIES: tuple[str, ...] = (
    "I see. How do you feel about that?",
    "That's interesting. Tell me more about it.",
    "I understand how you feel.",
    "Thanks for sharing that with me.",
    "Oh really? What happened next?",
    "That makes sense. I hope everything works out for you.",
)

#: The percentiles of the human replies' scores that reports print.
PERCENTILES: tuple[int, ...] = (5, 10, 25, 50, 75, 90, 95)


def _hash(*parts: Any) -> int:
    text = "\x00".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def reference_rows(pairs: Iterable[Mapping[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """One seed pair per dialogue (``seed_id, context, response, emotion``), at most ``limit``
    dialogues, in the order of a seeded hash of the dialogue's key; each row gets ``dialogue``."""
    by_dialogue: dict[str, list[Mapping[str, Any]]] = {}
    for p in pairs:
        by_dialogue.setdefault(split_key(str(p["context"])), []).append(p)
    chosen = []
    for key, group in by_dialogue.items():
        pick = min(group, key=lambda p: _hash(seed, "pair", p["seed_id"]))
        chosen.append((_hash(seed, "dialogue", key), key, pick))
    chosen.sort(key=lambda x: (x[0], x[1]))
    if limit is not None:
        chosen = chosen[:limit]
    return [{**dict(p), "dialogue": key} for _, key, p in chosen]


def _next_in_shuffle(indices: Sequence[int], seed: int, salt: str) -> dict[int, int]:
    """Each index mapped to the next one in a seeded shuffle (no index to itself when > 1)."""
    if len(indices) < 2:
        return {}
    order = sorted(indices, key=lambda i: _hash(seed, salt, i))
    return {order[j]: order[(j + 1) % len(order)] for j in range(len(order))}


def foil_replies(
    replies: Sequence[str], emotions: Sequence[str], seed: int, generic: Sequence[str] = GENERIC_REPLIES
) -> dict[str, list[str | None]]:
    """``{foil kind: one reply per reference, None where that kind has none}``."""
    n = len(replies)
    other = _next_in_shuffle(range(n), seed, "other")
    same: dict[int, int] = {}
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(emotions):
        if e:
            groups.setdefault(e, []).append(i)
    for e, members in groups.items():
        same.update(_next_in_shuffle(members, seed, f"emotion:{e}"))
    return {
        "other_dialogue": [replies[other[i]] if i in other else None for i in range(n)],
        "same_emotion": [replies[same[i]] if i in same else None for i in range(n)],
        "generic": [generic[_hash(seed, "generic", i) % len(generic)] if generic else None for i in range(n)],
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank."""
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - (counts - 1) / 2.0)[inverse]).astype(np.float64)


def auc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """P(a positive outscores a negative), ties one half; NaN when either side is empty."""
    p, q = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if p.size == 0 or q.size == 0:
        return float("nan")
    ranks = _ranks(np.concatenate([p, q]))
    u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2.0
    return float(u / (p.size * q.size))


@dataclass(frozen=True)
class AUC:
    """An AUC over ``n`` dialogues (``pairs`` of them with a foil) and its bootstrap interval."""

    point: float
    low: float
    high: float
    n: int
    pairs: int

    @property
    def discriminative(self) -> bool:
        """The interval lies above 0.5: the instrument tells the true reply from the foil."""
        return self.low > 0.5

    def as_dict(self) -> dict[str, Any]:
        return {
            "auc": round(self.point, 4),
            "low": math.floor(self.low * 1e4) / 1e4,  # outward: the rounded interval still holds it
            "high": math.ceil(self.high * 1e4) / 1e4,
            "dialogues": self.n,
            "pairs": self.pairs,
            "discriminative": self.discriminative,
        }


def _with_nan(scores: Sequence[float | None]) -> np.ndarray:
    """Scores as float64, a missing one (None) as NaN."""
    return np.array([np.nan if v is None else float(v) for v in scores], dtype=np.float64)


def auc_interval(
    positive: Sequence[float | None],
    negative: Sequence[float | None],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> AUC:
    """The AUC of true-reply scores against foil scores, item i of each from dialogue i, with
    the percentile-bootstrap interval over the dialogues. A None on either side leaves that
    score out (a dialogue without a foil still brings its true reply)."""
    if len(positive) != len(negative):
        raise ValueError(f"{len(positive)} true scores against {len(negative)} foil scores")
    p, q = _with_nan(positive), _with_nan(negative)
    has_p, has_q = ~np.isnan(p), ~np.isnan(q)
    point = auc(p[has_p], q[has_q])
    n = len(p)
    if n == 0 or math.isnan(point):
        return AUC(point, float("nan"), float("nan"), n, int((has_p & has_q).sum()))
    rng = np.random.default_rng(seed)
    reps = np.empty(resamples, dtype=np.float64)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        reps[r] = auc(p[idx][has_p[idx]], q[idx][has_q[idx]])
    reps = reps[~np.isnan(reps)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail]) if reps.size else (float("nan"),) * 2
    return AUC(point, float(low), float(high), n, int((has_p & has_q).sum()))


def auc_difference(
    a: tuple[Sequence[float | None], Sequence[float | None]],
    b: tuple[Sequence[float | None], Sequence[float | None]],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> AUC:
    """AUC of instrument ``a`` minus that of ``b``, each a ``(true scores, foil scores)`` pair
    over the same dialogues in the same order; the interval resamples the dialogues once for
    both (paired), so a dialogue's own difficulty cancels. ``discriminative`` here means the
    interval lies above 0 is not implied: read ``low``/``high`` against 0."""
    arrays = []
    for true, foil in (a[0], a[1]), (b[0], b[1]):
        if len(true) != len(a[0]) or len(foil) != len(a[0]):
            raise ValueError("both instruments must score the same dialogues")
        arrays.append((_with_nan(true), _with_nan(foil)))

    def diff(idx: np.ndarray) -> float:
        (pa_, qa), (pb, qb) = arrays
        pa_, qa, pb, qb = pa_[idx], qa[idx], pb[idx], qb[idx]
        return auc(pa_[~np.isnan(pa_)], qa[~np.isnan(qa)]) - auc(pb[~np.isnan(pb)], qb[~np.isnan(qb)])

    n = len(a[0])
    point = diff(np.arange(n))
    rng = np.random.default_rng(seed)
    reps = np.array([diff(rng.integers(0, n, n)) for _ in range(resamples)]) if n else np.array([])
    reps = reps[~np.isnan(reps)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail]) if reps.size else (float("nan"),) * 2
    both = np.ones(n, dtype=bool)
    for p, q in arrays:
        both &= ~np.isnan(p) & ~np.isnan(q)
    return AUC(point, float(low), float(high), n, int(both.sum()))


def threshold_for_share(scores: Sequence[float], share: float) -> float:
    """The highest T such that at least ``share`` of ``scores`` are >= T."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if s.size == 0:
        raise ValueError("no scores to set a threshold from")
    return float(s[math.ceil(share * s.size) - 1])


def keep_rate(scores: Sequence[float | None], threshold: float) -> float | None:
    """The share of (non-None) scores >= threshold; None when there are none."""
    vals = [float(v) for v in scores if v is not None]
    return sum(v >= threshold for v in vals) / len(vals) if vals else None


def percentiles(scores: Sequence[float], at: Sequence[int] = PERCENTILES) -> dict[str, float]:
    """``{"p5": ..., "p50": ...}`` of the scores (linear interpolation)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return {}
    return {f"p{q}": round(float(v), 2) for q, v in zip(at, np.percentile(s, list(at)))}

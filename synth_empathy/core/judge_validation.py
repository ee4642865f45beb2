"""Validating the judge on human replies: degraded replies, the rows to judge, and the verdict. Pure.

The judge (method step 6) is an instrument like the quality score, checked the same way
(:mod:`synth_empathy.core.calibration`): on reference dialogues written by people it rates
the true listener reply and **degraded** replies that a working judge rates lower:

* ``other_dialogue`` - another reference dialogue's reply (fluent, but not an answer to this one);
* ``cut_mid_sentence`` - the true reply cut at about half its words, final punctuation
  removed (a reply of fewer than :data:`MIN_WORDS_TO_CUT` words gets none);
* ``repeated_line`` - the speaker's last line of the history repeated back.

Per criterion and degradation the AUC (the probability that the true reply outrates the
degraded one, ties one half) and its bootstrap 95 % interval over the dialogues.

**The rule.** Not every degradation hurts every criterion: another dialogue's reply can be
perfectly natural. A criterion is tested on the degradations it should notice
(:data:`EXPECTED`): naturalness on the cut and the repeated line, coherence on all three,
empathy on the other dialogue's reply and the repeated line. A criterion is
**discriminative** when its ratings vary (not all equal) and, for every degradation it
should notice, the AUC interval lies above 0.5. Otherwise its ratings are not evidence of
the data's quality, and reports say so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from synth_empathy.core.calibration import MIN_REFERENCES, auc_interval, foil_replies
from synth_empathy.core.judge_scores import CRITERIA

#: The degraded replies, in report order.
DEGRADATIONS: tuple[str, ...] = ("other_dialogue", "cut_mid_sentence", "repeated_line")

#: What the true reply is called among the judged rows' kinds.
TRUE = "true"

#: The degradations each criterion should rate lower than the true reply (the rule above).
EXPECTED: dict[str, tuple[str, ...]] = {
    "naturalness": ("cut_mid_sentence", "repeated_line"),
    "coherence": ("other_dialogue", "cut_mid_sentence", "repeated_line"),
    "empathy": ("other_dialogue", "repeated_line"),
}

#: Replies shorter than this keep too little when halved to read as cut rather than short.
MIN_WORDS_TO_CUT = 4

__all__ = ["MIN_REFERENCES"]  # re-exported: the validation's minimum is the calibration's

_TRAILING = re.compile(r"[\s.,;:!?\u2026\"')\]-]+$")


def cut_mid_sentence(reply: str | None) -> str | None:
    """The first half of the reply's words (rounded down, at least two), without final
    punctuation; None for a reply of fewer than :data:`MIN_WORDS_TO_CUT` words."""
    words = str(reply or "").split()
    if len(words) < MIN_WORDS_TO_CUT:
        return None
    cut = _TRAILING.sub("", " ".join(words[: max(2, len(words) // 2)]))
    return cut or None


def repeated_line(history: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The speaker's (user's) last line of the history, as it was; None when there is none."""
    for turn in reversed(list(history or [])):
        if str(turn.get("role", "")).lower() in ("user", "speaker"):
            text = " ".join(str(turn.get("content") or "").split())
            return text or None
    return None


def degraded_replies(references: Sequence[Mapping[str, Any]], seed: int) -> dict[str, list[str | None]]:
    """``{degradation: one reply per reference, None where it has none}``. A reference is a
    judge row (``output`` = the true reply, ``history``) with its ``emotion``."""
    replies = [str(r["output"]) for r in references]
    foils = foil_replies(replies, [str(r.get("emotion") or "") for r in references], seed, generic=())
    return {
        "other_dialogue": foils["other_dialogue"],
        "cut_mid_sentence": [cut_mid_sentence(r) for r in replies],
        "repeated_line": [repeated_line(r.get("history")) for r in references],
    }


def reference_id(i: int) -> str:
    return f"ref-{i:05d}"


def validation_rows(references: Sequence[Mapping[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The rows the judge rates: per reference its true reply and each degraded one it has,
    ``sample_id`` = ``<reference>/<kind>``, with ``reference`` and ``kind`` columns."""
    degraded = degraded_replies(references, seed)
    rows = []
    for i, ref in enumerate(references):
        kinds = [(TRUE, ref["output"])] + [(d, degraded[d][i]) for d in DEGRADATIONS]
        for kind, reply in kinds:
            if reply is None:
                continue
            rows.append(
                {
                    "sample_id": f"{reference_id(i)}/{kind}",
                    "reference": reference_id(i),
                    "kind": kind,
                    "instruction": ref.get("instruction"),
                    "history": ref.get("history"),
                    "output": reply,
                }
            )
    return rows


def _auc_dict(a: Any) -> dict[str, Any]:
    """:meth:`AUC.as_dict`, or nulls when no pair had both ratings (no AUC to give)."""
    if math.isnan(a.point) or math.isnan(a.low):
        return {"auc": None, "low": None, "high": None, "dialogues": a.n, "pairs": a.pairs, "discriminative": False}
    return a.as_dict()


def verdict(
    ratings: Sequence[Mapping[str, Any]],
    references: int,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Per criterion: the AUC of the true replies' ratings against each degradation's, the
    rule's outcome and why. ``ratings`` are the judged validation rows (``reference``,
    ``kind`` and the criteria's ratings, None where not rated)."""
    by_ref: dict[str, dict[str, Mapping[str, Any]]] = {}
    for r in ratings:
        by_ref.setdefault(r["reference"], {})[r["kind"]] = r
    ids = [reference_id(i) for i in range(references)]
    out: dict[str, Any] = {}
    for c in CRITERIA:
        true = [(by_ref.get(i, {}).get(TRUE) or {}).get(c) for i in ids]
        aucs = {}
        for d in DEGRADATIONS:
            bad = [(by_ref.get(i, {}).get(d) or {}).get(c) for i in ids]
            aucs[d] = _auc_dict(auc_interval(true, bad, resamples=resamples, seed=seed))
        values = [r.get(c) for r in ratings if r.get(c) is not None]
        varies = len(set(values)) > 1
        failing = [d for d in EXPECTED[c] if not aucs[d]["discriminative"]]
        reasons = ([] if varies else ["its ratings do not vary"]) + (
            [f"AUC interval not above 0.5 against {', '.join(d.replace('_', ' ') for d in failing)}"] if failing else []
        )
        out[c] = {
            "auc": aucs,
            "expected": list(EXPECTED[c]),
            "rated": len(values),
            "varies": varies,
            "discriminative": varies and not failing,
            "why_not": "; ".join(reasons) or None,
        }
    return out


def not_discriminative(criteria: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The criteria of a :func:`verdict` that are not discriminative, in criterion order."""
    return [c for c in CRITERIA if c in criteria and not criteria[c]["discriminative"]]

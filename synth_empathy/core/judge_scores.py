"""Reading a judge's answer: three ratings 1-3, or a reason why not. Never raises.

Pure text handling (no engine, no Ray), so it is tested on its own; the judge stage is
:mod:`synth_empathy.stages.judge`.
"""

from __future__ import annotations

import re
from typing import Any

CRITERIA: tuple[str, ...] = ("naturalness", "coherence", "empathy")

# The start of the answer, written for the model (see the module docstring).
ANSWER_PREFIX = "Naturalness:"
# What may follow the prefix when the answer is constrained: exactly the three ratings.
ANSWER_PATTERN = r" [1-3]\nCoherence: [1-3]\nEmpathy: [1-3]"


_LABELS = {
    "naturalness": r"natural(?:ness)?",
    "coherence": r"coheren(?:ce|t)",
    "empathy": r"empath(?:y|etic|ic)",
}
_WORDS = {"one": 1, "two": 2, "three": 3, "zero": 0, "four": 4, "five": 5}
# A label, then (on the same line) separators or markdown, then the rating.
_VALUE = (
    r"(?:\s*\([^)\n]{0,24}\))?"  # an echoed scale: 'Naturalness (1-3): 2'
    r"[\s*_:=\-\u2013\u2014>\[\](]*"  # ': ', ' - ', '**: ', ' = ', '[', ...
    r"(?P<value>\d+(?:\.\d+)?|" + "|".join(_WORDS) + r")"
    r"(?!\s*(?:[-\u2013,]|or\b|to\b)\s*(?:\d|one|two|three))"  # a scale '1-3', '1, 2 or 3': no rating
    r"(?:\s*(?:/|out\s+of|of)\s*(?P<scale>\d+))?"
)
_PATTERNS = {c: re.compile(r"\b" + label + r"\b" + _VALUE, re.IGNORECASE) for c, label in _LABELS.items()}


def _rating(match: re.Match[str]) -> int | None:
    """The rating a match holds, or None when it is not a whole number 1-3 on a 1-3 scale."""
    value, scale = match.group("value").lower(), match.group("scale")
    if scale is not None and scale != "3":
        return None
    if value in _WORDS:
        n = _WORDS[value]
    elif value.isdigit():
        n = int(value)
    else:  # 2.5, 3.0 ...
        try:
            f = float(value)
        except ValueError:
            return None
        if not f.is_integer():
            return None
        n = int(f)
    return n if 1 <= n <= 3 else None


def parse_scores(text: Any) -> tuple[dict[str, int] | None, str | None]:
    """``({criterion: 1..3}, None)`` from a judge answer, or ``(None, reason)``.

    ``text`` is the whole answer, :data:`ANSWER_PREFIX` included. The first rating
    after each criterion's name counts (small models sometimes repeat the block).
    Never raises: anything that is not a string counts as ``judge_unparsable``.
    """
    try:
        if not isinstance(text, str):
            return None, "judge_unparsable"
        body = text.strip()
        if not body or body.lower().rstrip(":").strip() == ANSWER_PREFIX.lower().rstrip(":"):
            return None, "judge_empty"
        scores: dict[str, int] = {}
        out_of_range = False
        for criterion, pattern in _PATTERNS.items():
            match = pattern.search(body)
            if match is None:
                continue
            n = _rating(match)
            if n is None:
                out_of_range = True
            else:
                scores[criterion] = n
        if len(scores) == len(CRITERIA):
            return scores, None
        return None, "judge_out_of_range" if out_of_range else "judge_unparsable"
    except Exception:  # pragma: no cover - the promise is: never raise
        return None, "judge_unparsable"


# --------------------------------------------------------------------------- the stage

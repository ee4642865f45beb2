"""Reference-based metrics of answers: BLEU-1/2/4 and ROUGE-L (Distinct-n is in
:mod:`synth_empathy.core.diversity_metrics`). Pure Python, hand-checkable.

Tokens are :func:`tokens`: lower case, words and punctuation apart (``"sad."`` is
``sad``, ``.``), the same for every metric of an evaluation, Distinct-n included. BLEU-N is corpus BLEU as in
Papineni et al. (2002): clipped n-gram counts summed over the corpus, the geometric mean
of the precisions of orders 1..N with equal weights, times the brevity penalty
``exp(1 - r/c)`` when the candidates are shorter than the references (``c < r``). A
corpus with no matching n-gram of some order scores 0 (no smoothing). ROUGE-L is the
mean over pairs of the LCS F-measure with beta = 1.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: Any) -> list[str]:
    return _TOKEN.findall(str(text or "").lower())


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(candidates: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU-``max_order`` in [0, 1], one reference per candidate."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    matches, totals = [0] * max_order, [0] * max_order
    cand_len = ref_len = 0
    for cand, ref in zip(candidates, references):
        c, r = tokens(cand), tokens(ref)
        cand_len, ref_len = cand_len + len(c), ref_len + len(r)
        for n in range(1, max_order + 1):
            cn, rn = _ngrams(c, n), _ngrams(r, n)
            matches[n - 1] += sum(min(k, rn[g]) for g, k in cn.items())
            totals[n - 1] += max(len(c) - n + 1, 0)
    if cand_len == 0 or min(totals) == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity = 1.0 if cand_len >= ref_len else math.exp(1 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) x len(b)), one row of memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of one pair in [0, 1]."""
    c, r = tokens(candidate), tokens(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(candidates: Sequence[str], references: Sequence[str]) -> float:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return 0.0
    return sum(rouge_l(c, r) for c, r in zip(candidates, references)) / len(candidates)

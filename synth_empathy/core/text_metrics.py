"""Reference-based metrics of answers: BLEU-1/2/4 and ROUGE-L (Distinct-n is in
:mod:`synth_empathy.core.diversity_metrics`). Hand-checkable, and cross-checked in
tests/core/test_text_metrics.py against sacreBLEU and rouge-score.

Tokens are :func:`tokens`: lower case, words and punctuation apart (``"sad."`` is
``sad``, ``.``; ``"I'm"`` is ``i``, ``'``, ``m``), the same for every metric of an evaluation,
Distinct-n included. ED's replies come tokenised with spaces (``i 'm sorry .``) and a model
writes ``I'm sorry.``: these tokens make the two meet.

BLEU-N is corpus BLEU as in Papineni et al. (2002): clipped n-gram counts summed over the
corpus, the geometric mean of the precisions of orders 1..N with equal weights, times the
brevity penalty ``exp(1 - r/c)`` when the candidates are shorter than the references
(``c < r``). A corpus with no matching n-gram of some order scores 0 (no smoothing). It
equals sacreBLEU's corpus BLEU (x 1/100) on the texts joined from :func:`tokens`, signature
``nrefs:1|case:mixed|eff:no|tok:none|smooth:none`` (the tokens are already lower case);
sacreBLEU's default ``13a`` tokens keep ``i'm`` whole where ED has ``i 'm``, so its
published-style figure on the raw texts differs by about a hundredth.
:func:`bleu_statistics` gives one pair's sufficient statistics, so a bootstrap
(:mod:`synth_empathy.core.intervals`) recomputes the corpus BLEU of each resample.

ROUGE-L is the mean over pairs of the LCS F-measure with beta = 1: rouge-score's
``rougeL`` F-measure (no stemmer) when given :func:`tokens` as its tokenizer. Its default
tokenizer drops punctuation and non-ASCII letters, which moves the mean by a few
hundredths (lower on the test's pairs).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: Any) -> list[str]:
    return _TOKEN.findall(str(text or "").lower())


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


MAX_ORDER = 4  # the highest BLEU order whose statistics :func:`bleu_statistics` keeps


def bleu_statistics(candidate: str, reference: str, max_order: int = MAX_ORDER) -> list[int]:
    """One pair's BLEU sufficient statistics: ``[m_1..m_N, t_1..t_N, c, r]``, the clipped
    n-gram matches and the candidate's n-grams of each order 1..N, the candidate's and the
    reference's lengths. Corpus BLEU of any order <= N is a function of their sums
    (:func:`bleu_from_sums`), so a bootstrap resamples these rows instead of the texts."""
    c, r = tokens(candidate), tokens(reference)
    matches, totals = [], []
    for n in range(1, max_order + 1):
        cn, rn = _ngrams(c, n), _ngrams(r, n)
        matches.append(sum(min(k, rn[g]) for g, k in cn.items()))
        totals.append(max(len(c) - n + 1, 0))
    return [*matches, *totals, len(c), len(r)]


def bleu_from_sums(sums: Any, order: int, max_order: int = MAX_ORDER) -> np.ndarray:
    """Corpus BLEU-``order`` of summed :func:`bleu_statistics` rows: ``sums`` is one row
    ``(2 N + 2,)`` or many ``(m, 2 N + 2)``; returns one value per row."""
    s = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    matches, totals = s[:, :order], s[:, max_order : max_order + order]
    cand_len, ref_len = s[:, 2 * max_order], s[:, 2 * max_order + 1]
    ok = (cand_len > 0) & (totals.min(axis=1) > 0) & (matches.min(axis=1) > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_precision = np.log(np.where(ok[:, None], matches / np.where(totals > 0, totals, 1), 1.0)).mean(axis=1)
        brevity = np.where(cand_len >= ref_len, 1.0, np.exp(1 - ref_len / np.where(cand_len > 0, cand_len, 1)))
    return np.where(ok, brevity * np.exp(log_precision), 0.0)


def corpus_bleu(candidates: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU-``max_order`` in [0, 1], one reference per candidate."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return 0.0
    sums = np.sum([bleu_statistics(c, r, max_order) for c, r in zip(candidates, references)], axis=0)
    return float(bleu_from_sums(sums, max_order, max_order)[0])


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

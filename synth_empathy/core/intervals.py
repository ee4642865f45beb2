"""Intervals that tell a gain from noise: 95 % intervals over items (dialogues) for the
evaluation's corpus-level metrics, and the paired difference of two models on the same items.

A metric is a :class:`Statistic` of per-item rows, two kinds:

* :class:`SummedStatistic` - a function of per-item columns summed over the items: corpus
  BLEU (clipped n-gram matches, n-gram counts and lengths per item:
  :func:`~synth_empathy.core.text_metrics.bleu_statistics`; BLEU is recomputed from the
  resampled sums, it is not a mean of per-item scores), a mean (value and weight per item:
  ROUGE-L, the embedding cosine, a judge rating over the rows it could parse). Its interval
  is the **percentile bootstrap**: ``resamples`` draws of n items with replacement (a
  ``numpy.random.default_rng(seed)`` stream, so a seed gives the same draws), each a row of
  counts, the metric recomputed from ``counts @ columns``; the interval is the 2.5 and 97.5
  percentiles of the replicates. Cost: ``resamples x n`` random draws and a
  ``(resamples x n) @ (n x k)`` product, in chunks of at most ~4 M counts (32 MB); 1000
  resamples of 10 000 items took 0.06 s for one metric, 0.3 s for 14 (one 2-core machine).
* :class:`DistinctStatistic` - Distinct-n, the distinct n-grams of the whole set over all its
  n-grams. The bootstrap is **wrong** for it: a resample repeats ~37 % of the items, and a
  repeated item's n-grams are all repeats, so every replicate falls far below the set's own
  value (on 200 ED listener replies, distinct-2 0.73 gave bootstrap replicates around 0.49,
  an "interval" that excludes the point). It gets the **delete-one jackknife** instead: the
  value without item i is ``(D - u_i) / (T - t_i)`` (``u_i`` the n-gram types only item i has,
  ``t_i`` its n-grams), exact and O(all n-grams); the standard error
  ``sqrt((n-1)/n * sum((v_i - mean)^2))`` and the normal interval ``point +- 1.96 se``,
  clipped to [0, 1]. On a set of 200 ED replies its se (0.0069 for distinct-1, 0.013 for
  distinct-2) was within 20 % of the spread that 300 draws of 200 replies really had
  (0.0073, 0.011); the jackknife variance errs on the wide side in general (Efron and
  Stein, 1981). Cost: one pass over the n-grams (0.1 s for 10 000 answers).

Paired difference (:func:`paired_difference`): two models answered the same items, so each
replicate resamples the item indices **once** for both models (one count stream, the same
seed) and the difference of their replicates gives the interval (for Distinct-n the
jackknife of the per-item difference, each item left out of both). The dialogues' own
difficulty cancels, so the interval is narrower than one that resamples each model on its
own when their per-item scores correlate. "Significant" means the interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

CHUNK_COUNTS = 4_000_000  # resample counts held at once (int64: 32 MB)


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Difference(Interval):
    """``point`` = model minus baseline; ``significant`` when [low, high] excludes 0."""

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


class Statistic:
    """A metric of ``n`` items; :meth:`subset` keeps some items (in the order given)."""

    method = ""
    n = 0

    def point(self) -> float:
        raise NotImplementedError

    def subset(self, index: Sequence[int]) -> Statistic:
        raise NotImplementedError


class SummedStatistic(Statistic):
    """``combine(columns summed over the items)``: ``columns`` is ``(n, k)``, ``combine``
    maps ``(m, k)`` sums to ``(m,)`` values."""

    method = "percentile bootstrap over items"

    def __init__(self, columns: Any, combine: Callable[[np.ndarray], np.ndarray]):
        self.columns = np.asarray(columns, dtype=np.float64).reshape(len(columns), -1)
        self.combine = combine
        self.n = len(self.columns)

    def point(self) -> float:
        return float(self.combine(self.columns.sum(axis=0)[None, :])[0])

    def replicates(self, counts: np.ndarray) -> np.ndarray:
        """The metric of each resample: ``counts`` is ``(m, n)``, how often each item was drawn."""
        return self.combine(counts @ self.columns)

    def subset(self, index: Sequence[int]) -> SummedStatistic:
        return SummedStatistic(self.columns[np.asarray(index, dtype=np.int64)], self.combine)


def _ratio(sums: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sums[:, 1] > 0, sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], 1), 0.0)


def mean_statistic(values: Sequence[float | None]) -> SummedStatistic:
    """The mean of the items' values; an item without a value (``None`` or NaN) is left out
    of the mean, and a set with no value has mean 0."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    has = ~np.isnan(v)
    return SummedStatistic(np.column_stack([np.where(has, v, 0.0), has.astype(np.float64)]), _ratio)


def bleu_statistics(
    candidates: Sequence[str], references: Sequence[str], orders: Sequence[int] = (1, 2, 4)
) -> dict[int, SummedStatistic]:
    """Corpus BLEU of each order (:func:`~synth_empathy.core.text_metrics.corpus_bleu`) as
    per-item sums, the pairs' statistics counted once for all orders."""
    from synth_empathy.core.text_metrics import MAX_ORDER, bleu_from_sums
    from synth_empathy.core.text_metrics import bleu_statistics as pair_statistics

    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    rows = [pair_statistics(c, r, MAX_ORDER) for c, r in zip(candidates, references)]
    columns = np.array(rows, dtype=np.float64).reshape(len(rows), 2 * MAX_ORDER + 2)
    return {
        order: SummedStatistic(columns, lambda sums, order=order: bleu_from_sums(sums, order, MAX_ORDER))
        for order in orders
    }


def bleu_statistic(candidates: Sequence[str], references: Sequence[str], order: int) -> SummedStatistic:
    """Corpus BLEU-``order`` as per-item sums (one order of :func:`bleu_statistics`)."""
    return bleu_statistics(candidates, references, (order,))[order]


class DistinctStatistic(Statistic):
    """Distinct-n of a set of texts (:func:`~synth_empathy.core.diversity_metrics.distinct_n`,
    with the same tokenizer); its interval is the delete-one jackknife (module docstring)."""

    method = "delete-one jackknife, normal interval"

    def __init__(self, texts: Iterable[Any], n: int, tokenize: Callable[[Any], list[str]]):
        self.order, self.tokenize = n, tokenize
        self.items: list[list[tuple[str, ...]]] = []
        for text in texts:
            t = tokenize(text)
            self.items.append([tuple(t[i : i + n]) for i in range(len(t) - n + 1)])
        self.n = len(self.items)

    def subset(self, index: Sequence[int]) -> DistinctStatistic:
        out = DistinctStatistic([], self.order, self.tokenize)
        out.items = [self.items[i] for i in index]
        out.n = len(out.items)
        return out

    def point(self) -> float:
        total = sum(len(g) for g in self.items)
        return len({g for item in self.items for g in item}) / total if total else 0.0

    def leave_one_out(self) -> np.ndarray:
        """The value without each item in turn, ``(n,)``."""
        owners: dict[tuple[str, ...], int] = {}  # n-gram type -> the one item that has it, or -1
        for i, item in enumerate(self.items):
            for g in item:
                owners[g] = i if owners.get(g, i) == i else -1
        only = np.zeros(self.n)
        for owner in owners.values():
            if owner >= 0:
                only[owner] += 1
        sizes = np.array([len(g) for g in self.items], dtype=np.float64)
        distinct, total = len(owners), sizes.sum()
        left = total - sizes
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(left > 0, (distinct - only) / np.where(left > 0, left, 1), 0.0)


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def _jackknife(point: float, leave_one_out: np.ndarray, level: float, clip: tuple[float, float] | None) -> Interval:
    n = len(leave_one_out)
    se = float(np.sqrt((n - 1) / n * np.sum((leave_one_out - leave_one_out.mean()) ** 2))) if n > 1 else 0.0
    low, high = point - _z(level) * se, point + _z(level) * se
    if clip:
        low, high = max(low, clip[0]), min(high, clip[1])
    return Interval(point, low, high)


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``resamples`` rows of how often each of ``n`` items is drawn (n draws with
    replacement), in ``(m, n)`` chunks; the same ``(n, resamples, seed)`` gives the same rows."""
    rng = np.random.default_rng(seed)
    step = max(1, min(resamples, CHUNK_COUNTS // max(n, 1)))
    for start in range(0, resamples, step):
        m = min(step, resamples - start)
        draws = rng.integers(0, n, size=(m, n)) + (np.arange(m) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)


def bootstrap_replicates(stats: Sequence[SummedStatistic], resamples: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Each statistic's ``(resamples,)`` replicates, all from the **same** resampled items
    (one count stream): replicate r of every statistic saw the same draw of items."""
    n = {s.n for s in stats}
    if len(n) > 1:
        raise ValueError(f"statistics over different numbers of items: {sorted(n)}")
    if not stats or not next(iter(n)):
        return [np.zeros(0) for _ in stats]
    parts: list[list[np.ndarray]] = [[] for _ in stats]
    for counts in resample_counts(next(iter(n)), resamples, seed):
        for out, s in zip(parts, stats):
            out.append(s.replicates(counts))
    return [np.concatenate(p) for p in parts]


def percentile_interval(point: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    if not len(replicates):
        return Interval(point, point, point)
    low, high = np.quantile(replicates, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(point, float(low), float(high))


def interval(stat: Statistic, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """``(point, low, high)``: the metric and its ``level`` interval over items."""
    if isinstance(stat, DistinctStatistic):
        return _jackknife(stat.point(), stat.leave_one_out(), level, (0.0, 1.0))
    if isinstance(stat, SummedStatistic):
        return percentile_interval(stat.point(), bootstrap_replicates([stat], resamples, seed)[0], level)
    raise TypeError(f"no interval for {type(stat).__name__}")


def paired_difference(
    stat: Statistic, baseline: Statistic, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Difference:
    """``stat - baseline`` for two models scored on the same items (item i of one is item i
    of the other), each replicate resampling the items once for both."""
    if stat.n != baseline.n or type(stat) is not type(baseline):
        raise ValueError(f"a paired difference needs the same items: {stat.n} and {baseline.n}")
    point = stat.point() - baseline.point()
    if isinstance(stat, DistinctStatistic):
        i = _jackknife(point, stat.leave_one_out() - baseline.leave_one_out(), level, None)
        return Difference(i.point, i.low, i.high)
    a, b = bootstrap_replicates([stat, baseline], resamples, seed)  # type: ignore[list-item]
    i = percentile_interval(point, a - b, level)
    return Difference(i.point, i.low, i.high)


def compare(
    stats: dict[str, dict[str, Statistic]], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[dict[str, dict[str, Interval]], list[tuple[str, str, dict[str, Difference]]]]:
    """Every model's interval of every metric, and for every pair of models (each later one
    against each earlier one: ``(model, baseline, {metric: Difference})``) the paired
    differences. All models must be scored on the same items in the same order; every
    bootstrap draws from one stream, so each model's replicates are computed once and a
    pair's difference is the difference of the two (the paired bootstrap)."""
    labels = list(stats)
    reps: dict[tuple[str, str], np.ndarray] = {}
    summed = [(lb, m, s) for lb in labels for m, s in stats[lb].items() if isinstance(s, SummedStatistic)]
    if summed:
        for (lb, m, _), r in zip(summed, bootstrap_replicates([s for *_, s in summed], resamples, seed)):
            reps[lb, m] = r
    points = {(lb, m): s.point() for lb in labels for m, s in stats[lb].items()}
    intervals = {
        lb: {
            m: percentile_interval(points[lb, m], reps[lb, m], level)
            if (lb, m) in reps
            else interval(s, resamples, seed, level)
            for m, s in stats[lb].items()
        }
        for lb in labels
    }
    pairs = []
    for j, model in enumerate(labels):
        for base in labels[:j]:
            diffs = {}
            for m, s in stats[model].items():
                if m not in stats[base]:
                    continue
                if (model, m) in reps:
                    i = percentile_interval(points[model, m] - points[base, m], reps[model, m] - reps[base, m], level)
                    diffs[m] = Difference(i.point, i.low, i.high)
                else:
                    diffs[m] = paired_difference(s, stats[base][m], resamples, seed, level)
            pairs.append((model, base, diffs))
    return intervals, pairs

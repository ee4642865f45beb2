"""Diversity metrics for the report: is the selected set more varied than chance?

Two views of a set of answers:

* **distinct-n** (Li et al., 2016) on the text: the number of distinct n-grams divided
  by the number of all n-grams, over the whole set. Tokens are the lowercased text
  split on whitespace (no punctuation handling: ``"sad."`` and ``"sad"`` differ);
  n-grams never cross from one text into the next. The value grows as a set repeats
  itself less, but it also falls as a set grows, so only sets of equal size compare.
* **mean pairwise distance** on the embeddings: the mean Euclidean distance between
  two different rows' vectors (for unit vectors ``sqrt(2 - 2 cos)``, 0..2).
* **nearest-neighbour distance** on the embeddings: each row's Euclidean distance to the
  nearest *other* row of the same set, mean and median. The mean pairwise distance
  hardly moves when a set repeats itself (one more copy of a row adds one pair in
  ~N); the nearest-neighbour distance drops to 0 for every copy, so it shows the
  coverage k-center optimises. Exact per row; above ``max_queries`` rows, the rows
  asked about are a seeded sample (each still against the whole set), so the cost is
  at most ``max_queries`` x N dot products.

:func:`diversity_report` puts the selected set beside random subsets of the same size
drawn (seeded) from the same kept rows, the baseline k-center selection has to beat.
On a large run the report gives it bounded samples (:func:`bounded_sample`): a uniform
random sample of the kept rows and a smaller one of the selected rows; a random subset
of a uniform sample of the kept rows is a uniform random subset of them, so the
comparison at equal size stays fair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np


def _tokens(text: Any) -> list[str]:
    return str(text or "").lower().split()


def distinct_n(texts: Iterable[Any], n: int, tokenize: Callable[[Any], list[str]] | None = None) -> float:
    """Distinct n-grams / all n-grams over ``texts`` (0.0 when there are no n-grams);
    ``tokenize`` defaults to the lower-cased whitespace split described above."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen = set()
    total = 0
    for text in texts:
        tokens = (tokenize or _tokens)(text)
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def _as_matrix(vectors: Any) -> np.ndarray:
    if vectors is None:
        return np.zeros((0, 0), dtype=np.float64)
    if not isinstance(vectors, np.ndarray):
        vectors = [np.asarray(v, dtype=np.float64) for v in vectors]
        return np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float64)
    x = np.asarray(vectors, dtype=np.float64)
    return x.reshape(len(x), -1) if x.size else np.zeros((len(x), 0), dtype=np.float64)


def mean_pairwise_distance(vectors: Any, max_pairs: int = 200_000, seed: int = 0) -> float:
    """Mean Euclidean distance over pairs of different rows of ``vectors`` (N x d).

    Exact - every unordered pair once - when N(N-1)/2 <= ``max_pairs``; otherwise an
    unbiased estimate from ``max_pairs`` pairs (i, j), i != j, drawn uniformly with
    replacement by a generator seeded with ``seed`` (standard error about
    std(distance) / sqrt(max_pairs)). Fewer than two rows: 0.0.
    Computed in float64; any vectors work, the pipeline's are unit vectors.
    """
    x = _as_matrix(vectors)
    n = x.shape[0]
    if n < 2:
        return 0.0
    sq = np.einsum("ij,ij->i", x, x)
    if n * (n - 1) // 2 <= max_pairs:
        total = 0.0
        step = max(1, 4_000_000 // max(n, 1))  # rows per block: bounded memory
        for start in range(0, n - 1, step):
            block = x[start : start + step]
            d2 = sq[start : start + step, None] + sq[None, :] - 2.0 * block @ x.T
            dist = np.sqrt(np.maximum(d2, 0.0))
            rows = np.arange(start, start + len(block))[:, None]
            total += float(dist[np.arange(n)[None, :] > rows].sum())  # upper triangle only
        return total / (n * (n - 1) / 2)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j = j + (j >= i)  # uniform over the other n-1 rows
    total = 0.0
    for lo in range(0, max_pairs, 16_384):  # pairs per block: two (block, d) copies, not (max_pairs, d)
        a, b = i[lo : lo + 16_384], j[lo : lo + 16_384]
        d2 = sq[a] + sq[b] - 2.0 * np.einsum("ij,ij->i", x[a], x[b])
        total += float(np.sqrt(np.maximum(d2, 0.0)).sum())
    return total / max_pairs


def bounded_sample(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Ascending row indices: all of ``0..n-1`` when ``n <= max_rows``, else ``max_rows`` of
    them drawn without replacement by ``numpy.random.default_rng(seed)``."""
    if n <= max_rows:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)).astype(np.int64)


_NN_COLS = 16384  # set rows per product: a 2048 x 16384 float32 block is 128 MiB
_NN_ROWS = 2048


def nearest_neighbour_distances(vectors: Any, max_queries: int = 2000, seed: int = 0) -> np.ndarray:
    """Euclidean distance of each asked row to the nearest other row of ``vectors``.

    Every row is asked when N <= ``max_queries``; else ``max_queries`` rows drawn without
    replacement by ``numpy.random.default_rng(seed)`` (ascending), each against all N.
    The neighbour is found with float32 blocked BLAS products (|q|^2 + |x|^2 - 2 q.x), its
    distance then recomputed directly (float64 sum). Fewer than two rows: empty.
    """
    x = np.ascontiguousarray(_as_matrix(vectors), dtype=np.float32)
    n = x.shape[0]
    if n < 2:
        return np.zeros(0, dtype=np.float64)
    ask = (
        np.arange(n) if n <= max_queries else np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    )
    sq = np.einsum("ij,ij->i", x, x)
    best = np.full(len(ask), np.inf, dtype=np.float32)
    arg = np.zeros(len(ask), dtype=np.int64)
    for r in range(0, len(ask), _NN_ROWS):
        qi = ask[r : r + _NN_ROWS]
        q2 = -2.0 * x[qi]
        b, a = best[r : r + _NN_ROWS], arg[r : r + _NN_ROWS]  # views
        for c in range(0, n, _NN_COLS):
            g = q2 @ x[c : c + _NN_COLS].T
            g += sq[None, c : c + _NN_COLS]
            own = (qi >= c) & (qi < c + _NN_COLS)  # a row is not its own neighbour
            g[np.flatnonzero(own), qi[own] - c] = np.inf
            j = g.argmin(axis=1)
            v = g[np.arange(len(qi)), j]
            better = v < b
            b[better], a[better] = v[better], j[better] + c
    # The product form loses digits near 0 (|q|^2 + |x|^2 - 2 q.x): the distance to the
    # neighbour found is recomputed directly, so a copy is at exactly 0.
    diff = x[ask] - x[arg]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))


def set_metrics(
    outputs: Sequence[Any], vectors: Any, max_pairs: int = 200_000, seed: int = 0, max_queries: int = 2000
) -> dict[str, Any]:
    """distinct-1, distinct-2, mean pairwise distance and nearest-neighbour distance
    (mean, median) of one set."""
    nn = nearest_neighbour_distances(vectors, max_queries, seed)
    return {
        "n": len(outputs),
        "distinct_1": round(distinct_n(outputs, 1), 6),
        "distinct_2": round(distinct_n(outputs, 2), 6),
        "mean_pairwise_distance": round(mean_pairwise_distance(vectors, max_pairs, seed), 6),
        "nn_distance_mean": round(float(nn.mean()), 6) if nn.size else 0.0,
        "nn_distance_median": round(float(np.median(nn)), 6) if nn.size else 0.0,
        "nn_rows_asked": int(nn.size),  # below n: a seeded sample of the rows was asked
    }


def diversity_report(
    selected_outputs: Sequence[Any],
    selected_vectors: Any,
    kept_outputs: Sequence[Any],
    kept_vectors: Any,
    seed: int = 0,
    repeats: int = 5,
    max_pairs: int = 200_000,
    max_queries: int = 2000,
) -> dict[str, Any]:
    """The selected set against random subsets of the same size from the kept rows.

    ``kept_*`` are all rows that passed the quality threshold (the candidates k-center
    chose from); ``selected_*`` the rows it chose. ``repeats`` random subsets are drawn
    without replacement by ``numpy.random.default_rng(seed)``; the report gives their
    mean (and standard deviation) per metric, and ``selected_minus_random`` the
    difference of the selected set's value and that mean (> 0: more diverse than chance).
    With every kept row selected the two sets are the same and the differences are 0.
    """
    kept_x = _as_matrix(kept_vectors)
    n_kept, k = len(kept_outputs), len(selected_outputs)
    if kept_x.shape[0] != n_kept:
        raise ValueError(f"{n_kept} kept outputs but {kept_x.shape[0]} kept vectors")
    if k > n_kept:
        raise ValueError(f"{k} selected rows but only {n_kept} kept rows to choose from")
    selected = set_metrics(selected_outputs, selected_vectors, max_pairs, seed, max_queries)
    rng = np.random.default_rng(seed)
    draws: list[dict[str, Any]] = []
    for r in range(max(1, repeats)):
        idx = np.sort(rng.choice(n_kept, size=k, replace=False))
        draws.append(
            set_metrics([kept_outputs[i] for i in idx], kept_x[idx] if k else None, max_pairs, seed + r, max_queries)
        )
    keys = ("distinct_1", "distinct_2", "mean_pairwise_distance", "nn_distance_mean", "nn_distance_median")
    random_mean = {key: round(float(np.mean([d[key] for d in draws])), 6) for key in keys}
    random_std = {key: round(float(np.std([d[key] for d in draws])), 6) for key in keys}
    return {
        "selected": selected,
        "random": {"n": k, "repeats": len(draws), **random_mean, "std": random_std},
        "kept": set_metrics(kept_outputs, kept_x, max_pairs, seed, max_queries),
        "selected_minus_random": {key: round(selected[key] - random_mean[key], 6) for key in keys},
        "seed": seed,
        "method": {
            "distinct_n": "distinct n-grams / all n-grams, lowercased whitespace tokens, per-text n-grams",
            "mean_pairwise_distance": f"Euclidean, exact up to {max_pairs} pairs, else {max_pairs} sampled pairs",
            "nn_distance": f"Euclidean distance to the nearest other row of the same set; every row up to "
            f"{max_queries} rows, else {max_queries} seeded sampled rows, each against the whole set",
        },
    }

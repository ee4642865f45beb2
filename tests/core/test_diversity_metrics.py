"""Diversity metrics on examples small enough to check by hand."""

import math

import numpy as np
import pytest

from synth_empathy.core.diversity_metrics import (
    distinct_n,
    diversity_report,
    mean_pairwise_distance,
    nearest_neighbour_distances,
    set_metrics,
)


def test_distinct_n_by_hand():
    texts = ["I am sad", "i am happy"]
    # unigrams: i am sad i am happy -> 6 total, {i, am, sad, happy} distinct
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (i am) (am sad) (i am) (am happy) -> 4 total, 3 distinct; none cross texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)
    assert distinct_n(texts, 4) == 0.0  # no 4-grams at all


def test_distinct_n_tokenisation_and_edge_cases():
    assert distinct_n(["Sad  SAD\tsad"], 1) == pytest.approx(1 / 3)  # lowercased, any whitespace
    assert distinct_n(["sad.", "sad"], 1) == 1.0  # punctuation is part of the token
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", None], 2) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_mean_pairwise_distance_exact_by_hand():
    # Three unit vectors: e1, e2, -e1. Pairs: |e1-e2| = sqrt2, |e1+e1| = 2, |e2+e1| = sqrt2.
    x = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    assert mean_pairwise_distance(x) == pytest.approx((2 * math.sqrt(2) + 2) / 3)
    assert mean_pairwise_distance(x.tolist()) == pytest.approx((2 * math.sqrt(2) + 2) / 3)
    assert mean_pairwise_distance(np.ones((4, 3)) / math.sqrt(3)) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_distance(x[:1]) == 0.0
    assert mean_pairwise_distance(np.zeros((0, 2))) == 0.0


def test_mean_pairwise_distance_exact_matches_brute_force_across_blocks():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 5))
    brute = np.mean([np.linalg.norm(x[i] - x[j]) for i in range(300) for j in range(i + 1, 300)])
    assert mean_pairwise_distance(x) == pytest.approx(brute, rel=1e-9)


def test_mean_pairwise_distance_sampled_is_close_and_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = mean_pairwise_distance(x)
    sampled = mean_pairwise_distance(x, max_pairs=20_000, seed=7)
    assert sampled == mean_pairwise_distance(x, max_pairs=20_000, seed=7)
    assert sampled != exact and sampled == pytest.approx(exact, abs=0.01)


def test_diversity_report_compares_with_random_subsets_of_the_same_size():
    # Kept: two clusters of near-duplicates plus their texts; selected: one from each cluster.
    kept_vectors = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    kept_outputs = ["so sorry", "so sorry", "so sorry", "that is great news"]
    rep = diversity_report(
        ["so sorry", "that is great news"], kept_vectors[[0, 3]], kept_outputs, kept_vectors, seed=0, repeats=20
    )
    assert rep["selected"] == {
        "n": 2,
        "distinct_1": 1.0,
        "distinct_2": 1.0,
        "mean_pairwise_distance": pytest.approx(math.sqrt(2), abs=1e-6),
        "nn_distance_mean": pytest.approx(math.sqrt(2), abs=1e-6),
        "nn_distance_median": pytest.approx(math.sqrt(2), abs=1e-6),
        "nn_rows_asked": 2,
    }
    # A random pair is the distinct pair with probability 1/2: distance sqrt2 or 0.
    assert rep["random"]["n"] == 2 and rep["random"]["repeats"] == 20
    assert 0 < rep["random"]["mean_pairwise_distance"] < math.sqrt(2)
    assert rep["selected_minus_random"]["mean_pairwise_distance"] > 0
    assert rep["selected_minus_random"]["distinct_1"] > 0
    assert rep["kept"]["n"] == 4
    assert rep == diversity_report(
        ["so sorry", "that is great news"], kept_vectors[[0, 3]], kept_outputs, kept_vectors, seed=0, repeats=20
    )


def test_diversity_report_everything_selected_is_no_better_than_random():
    v = np.eye(3, dtype=np.float32)
    out = ["a b", "c d", "e f"]
    rep = diversity_report(out, v, out, v, seed=1)
    assert set(rep["selected_minus_random"]) == {
        "distinct_1",
        "distinct_2",
        "mean_pairwise_distance",
        "nn_distance_mean",
        "nn_distance_median",
    }
    assert all(v == 0.0 for v in rep["selected_minus_random"].values())


def test_nearest_neighbour_distances_match_brute_force(monkeypatch):
    import synth_empathy.core.diversity_metrics as D

    monkeypatch.setattr(D, "_NN_ROWS", 16)  # several row and column blocks on 300 rows
    monkeypatch.setattr(D, "_NN_COLS", 37)
    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    x[7] = x[5]  # a copy: both at distance 0
    full = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    ref = full.min(axis=1)
    got = nearest_neighbour_distances(x)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert got[5] == got[7] == 0.0
    # Above max_queries: a seeded sample of rows, each still against the whole set.
    ask = np.sort(np.random.default_rng(3).choice(300, 50, replace=False))
    np.testing.assert_allclose(nearest_neighbour_distances(x, max_queries=50, seed=3), ref[ask], atol=1e-5)
    assert nearest_neighbour_distances(x[:1]).size == 0


def test_nn_distance_sees_copies_that_the_mean_pairwise_distance_misses():
    r = np.random.default_rng(1)
    spread = r.normal(size=(40, 16))
    copies = np.concatenate([spread[:20], spread[:20]])  # each row twice
    a, b = set_metrics([""] * 40, spread), set_metrics([""] * 40, copies)
    assert b["mean_pairwise_distance"] > 0.9 * a["mean_pairwise_distance"]
    assert b["nn_distance_mean"] == 0.0 < a["nn_distance_mean"]


def test_diversity_report_rejects_mismatched_inputs():
    v = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError):
        diversity_report(["a"], v[:1], ["a", "b", "c"], v)
    with pytest.raises(ValueError):
        diversity_report(["a", "b", "c"], np.eye(3), ["a", "b"], v)

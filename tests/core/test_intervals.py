"""Intervals over items: the bootstrap recomputes the corpus statistic, covers the point,
shrinks with n, tells a known difference from none, and pairs narrow it; Distinct-n's
jackknife against the spread that repeated draws really have."""

import numpy as np
import pytest
from core.test_text_metrics import REPLIES

from synth_empathy.core import intervals as iv
from synth_empathy.core.diversity_metrics import distinct_n
from synth_empathy.core.text_metrics import corpus_bleu, tokens

CANDS = [
    "i am so sorry to hear that . did you call the police ?",
    "that sounds wonderful , congratulations on the new job !",
    "oh no , i hope your dog gets better soon .",
    "what happened ? are you okay ?",
    "i would be scared too .",
    "that is great news , you must be proud .",
]
REFS = REPLIES[:6]  # ED-style listener replies (the text metrics' own test pairs)


def _width(i):
    return i.high - i.low


def test_bleu_replicates_recompute_the_corpus_statistic_not_a_mean():
    stat = iv.bleu_statistic(CANDS, REFS, 2)
    assert stat.point() == pytest.approx(corpus_bleu(CANDS, REFS, 2))
    counts = np.array([[2, 0, 1, 0, 3, 0], [0, 1, 1, 1, 1, 2]], dtype=np.float64)
    for row, value in zip(counts, stat.replicates(counts)):
        drawn = [i for i, k in enumerate(row) for _ in range(int(k))]
        assert value == pytest.approx(corpus_bleu([CANDS[i] for i in drawn], [REFS[i] for i in drawn], 2))


def test_resample_counts_are_seeded_draws_of_n_whatever_the_chunk(monkeypatch):
    whole = np.concatenate(list(iv.resample_counts(7, 50, seed=3)))
    assert whole.shape == (50, 7) and (whole.sum(axis=1) == 7).all()
    monkeypatch.setattr(iv, "CHUNK_COUNTS", 20)  # two resamples per chunk
    assert (np.concatenate(list(iv.resample_counts(7, 50, seed=3))) == whole).all()
    assert not (np.concatenate(list(iv.resample_counts(7, 50, seed=4))) == whole).all()


@pytest.mark.parametrize("kind", ["mean", "bleu", "distinct"])
def test_interval_covers_the_point_and_is_seeded(kind):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    cands = [" ".join(rng.choice(words, size=12)) for _ in range(80)]
    refs = [" ".join(rng.choice(words, size=12)) for _ in range(80)]
    stat = {
        "mean": iv.mean_statistic(rng.uniform(size=80)),
        "bleu": iv.bleu_statistic(cands, refs, 1),
        "distinct": iv.DistinctStatistic(cands, 2, tokens),
    }[kind]
    i = iv.interval(stat, resamples=500, seed=1)
    assert i.low < i.point < i.high and i.covers(stat.point())
    assert iv.interval(stat, resamples=500, seed=1) == i


def test_interval_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = iv.interval(iv.mean_statistic(rng.uniform(size=100)), seed=0)
    large = iv.interval(iv.mean_statistic(rng.uniform(size=1600)), seed=0)
    # sd / sqrt(n): 16 times the items, a quarter of the width
    assert _width(large) == pytest.approx(_width(small) / 4, rel=0.25)
    # the width is the normal one: 2 * 1.96 * sd / sqrt(n), sd of U(0, 1) = 0.2887
    assert _width(large) == pytest.approx(2 * 1.96 * 0.2887 / 40, rel=0.15)


def test_a_mean_leaves_out_items_without_a_value():
    stat = iv.mean_statistic([1.0, None, 0.0, float("nan")])
    assert stat.point() == 0.5
    assert iv.mean_statistic([None, None]).point() == 0.0


def _two_models(shift, n=300, seed=0):
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.0, 0.6, size=n)  # what the dialogue does to any model
    base = np.clip(difficulty + rng.normal(0, 0.05, size=n), 0, 1)
    other = np.clip(difficulty + shift + rng.normal(0, 0.05, size=n), 0, 1)
    return iv.mean_statistic(other), iv.mean_statistic(base)


def test_a_known_difference_is_significant_and_a_null_one_is_not():
    gain = iv.paired_difference(*_two_models(0.02), seed=5)
    assert gain.significant and gain.low > 0 and gain.covers(gain.point)
    for seed in range(5):
        null = iv.paired_difference(*_two_models(0.0, seed=seed), seed=seed)
        assert not null.significant, (seed, null)


def test_the_paired_interval_is_narrower_than_the_unpaired_one_when_items_correlate():
    a, b = _two_models(0.02)
    paired = iv.paired_difference(a, b, seed=0)
    ra, rb = iv.bootstrap_replicates([a], seed=1)[0], iv.bootstrap_replicates([b], seed=2)[0]
    unpaired = iv.percentile_interval(a.point() - b.point(), ra - rb)
    assert _width(paired) < _width(unpaired) / 3
    assert unpaired.covers(0.0)  # the same gain, lost in the dialogues' spread


def test_distinct_leave_one_out_is_exact():
    texts = ["so sad .", "so glad .", "that is so sad", "", "glad glad glad"]
    stat = iv.DistinctStatistic(texts, 1, tokens)
    assert stat.point() == pytest.approx(distinct_n(texts, 1, tokens))
    for i, v in enumerate(stat.leave_one_out()):
        assert v == pytest.approx(distinct_n(texts[:i] + texts[i + 1 :], 1, tokens))
    sub = stat.subset([0, 2])
    assert sub.n == 2 and sub.point() == pytest.approx(distinct_n([texts[0], texts[2]], 1, tokens))


def test_distinct_jackknife_matches_the_spread_of_real_draws_where_the_bootstrap_cannot():
    """A population of Zipf-worded answers; sets of 100 drawn from it again and again give
    Distinct-2's true spread. One set's jackknife se is near it, and its interval covers the
    mean of the draws; the bootstrap's replicates all sit below the set's own value."""
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(400)])
    p = 1 / np.arange(1, 401)
    p /= p.sum()
    population = [" ".join(rng.choice(vocab, size=rng.integers(4, 16), p=p)) for _ in range(5000)]
    draws = [[population[i] for i in rng.choice(5000, 100, replace=False)] for _ in range(200)]
    values = np.array([distinct_n(d, 2, tokens) for d in draws])
    truth, sd = values.mean(), values.std()
    ses, covered = [], 0
    for d in draws[:40]:
        i = iv.interval(iv.DistinctStatistic(d, 2, tokens))
        ses.append(_width(i) / 2 / 1.96)
        covered += i.covers(truth)
    assert np.mean(ses) == pytest.approx(sd, rel=0.35)
    assert covered >= 34  # of 40, nominally 38
    # what the bootstrap would do: every replicate repeats items, so Distinct-n drops
    one = draws[0]
    boot = [distinct_n([one[k] for k in rng.integers(0, 100, 100)], 2, tokens) for _ in range(50)]
    assert max(boot) < distinct_n(one, 2, tokens)


def test_compare_lists_every_pair_with_the_paired_bootstrap():
    a, b = _two_models(0.02)
    c = iv.mean_statistic(np.zeros(a.n))
    d = iv.DistinctStatistic(CANDS * 50, 1, tokens)
    stats = {"base": {"m": b, "d": d}, "tuned": {"m": a, "d": d}, "zero": {"m": c, "d": d}}
    intervals, pairs = iv.compare(stats, resamples=400, seed=7)
    assert [(m, base) for m, base, _ in pairs] == [("tuned", "base"), ("zero", "base"), ("zero", "tuned")]
    assert intervals["tuned"]["m"] == iv.interval(a, 400, 7)
    assert dict(((m, base), diffs["m"]) for m, base, diffs in pairs)[("tuned", "base")] == iv.paired_difference(
        a, b, 400, 7
    )
    for _, _, diffs in pairs:
        assert diffs["d"].point == 0 and not diffs["d"].significant  # the same texts
    with pytest.raises(ValueError):
        iv.paired_difference(a, a.subset(range(10)))

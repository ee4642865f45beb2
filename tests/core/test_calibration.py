"""The calibration arithmetic: AUC against a brute-force count, its interval, the foils and the
threshold at a share (synth_empathy.core.calibration)."""

import math

import numpy as np
import pytest

from synth_empathy.core import calibration as cal


def brute_auc(p, q):
    wins = sum((a > b) + 0.5 * (a == b) for a in p for b in q)
    return wins / (len(p) * len(q))


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_share_of_pairs_the_true_reply_wins(seed):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 10, 30).astype(float)  # small integers: many ties
    q = rng.integers(0, 8, 25).astype(float)
    assert cal.auc(p, q) == pytest.approx(brute_auc(p, q))


def test_auc_ends_and_empty_sides():
    assert cal.auc([2, 3], [0, 1]) == 1.0
    assert cal.auc([0, 1], [2, 3]) == 0.0
    assert cal.auc([1, 1], [1, 1]) == 0.5
    assert math.isnan(cal.auc([], [1.0]))


def test_interval_holds_the_point_and_narrows_with_more_dialogues():
    rng = np.random.default_rng(0)

    def sample(n):
        true = rng.normal(1.0, 1.0, n)
        foil = rng.normal(0.0, 1.0, n)
        return cal.auc_interval(list(true), list(foil), resamples=400, seed=1)

    small, large = sample(60), sample(2000)
    for a in (small, large):
        assert a.low <= a.point <= a.high
    assert (large.high - large.low) < (small.high - small.low) / 3
    # a shift of one sd separates with AUC Phi(1/sqrt(2)) = 0.760
    assert large.low < 0.760 < large.high
    assert large.discriminative


def test_a_coin_is_not_discriminative_and_missing_foils_are_left_out():
    rng = np.random.default_rng(3)
    true = list(rng.normal(0, 1, 200))
    foil = [None if i % 4 == 0 else float(v) for i, v in enumerate(rng.normal(0, 1, 200))]
    a = cal.auc_interval(true, foil, resamples=300, seed=0)
    assert a.low < 0.5 < a.high and not a.discriminative
    assert a.n == 200 and a.pairs == 150
    assert a.as_dict()["discriminative"] is False
    same = cal.auc_interval(true, foil, resamples=300, seed=0)
    assert (same.low, same.high) == (a.low, a.high)  # a seed gives the same draws


def test_reference_rows_take_one_pair_per_dialogue():
    pairs = []
    for d in range(30):
        opening = f"Speaker: opening {d}"
        pairs.append({"seed_id": f"d{d}:2", "context": opening, "response": f"r{d}a", "emotion": "x"})
        pairs.append({"seed_id": f"d{d}:4", "context": f"{opening}\nListener: hi\nSpeaker: more", "response": f"r{d}b"})
        pairs.append({"seed_id": f"copy{d}:2", "context": opening.upper(), "response": f"r{d}a", "emotion": "x"})
    rows = cal.reference_rows(pairs, limit=None, seed=0)
    assert len(rows) == 30 and len({r["dialogue"] for r in rows}) == 30
    first = cal.reference_rows(pairs, limit=10, seed=0)
    assert [r["seed_id"] for r in first] == [r["seed_id"] for r in rows[:10]]
    other = cal.reference_rows(pairs, limit=10, seed=1)
    assert {r["dialogue"] for r in other} != {r["dialogue"] for r in first}  # the seed draws another subset


def test_foils_never_give_a_reference_its_own_reply():
    replies = [f"reply {i}" for i in range(40)]
    emotions = ["sad" if i % 3 == 0 else "happy" if i % 3 == 1 else "" for i in range(39)] + ["lonely"]
    foils = cal.foil_replies(replies, emotions, seed=7)
    assert set(foils) == set(cal.FOILS)
    for i, r in enumerate(replies):
        assert foils["other_dialogue"][i] not in (None, r)
        same = foils["same_emotion"][i]
        if emotions[i] in ("sad", "happy"):
            j = replies.index(same)
            assert j != i and emotions[j] == emotions[i]
        else:  # no emotion, or alone in it
            assert same is None
        assert foils["generic"][i] in cal.GENERIC_REPLIES
    assert len(set(foils["other_dialogue"])) == 40  # a shift of a shuffle: each reply used once


def test_threshold_for_share():
    scores = list(range(1, 101))  # 1..100
    assert cal.threshold_for_share(scores, 0.5) == 51  # 50 of the 100 reach 51
    assert cal.keep_rate(scores, cal.threshold_for_share(scores, 0.5)) == 0.5
    assert cal.threshold_for_share(scores, 0.01) == 100
    assert cal.keep_rate(scores, cal.threshold_for_share(scores, 0.333)) >= 0.333
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="share"):
            cal.threshold_for_share(scores, bad)
    assert cal.percentiles(scores)["p50"] == 50.5


def test_paired_difference_of_two_instruments_on_the_same_dialogues():
    rng = np.random.default_rng(5)
    n = 400
    true = rng.normal(0, 1, n)
    foil = rng.normal(0, 1, n)
    strong = (list(true + 1.0), list(foil))  # separates: AUC ~0.76
    weak = (list(true + 0.2), list(foil))  # barely: AUC ~0.56
    d = cal.auc_difference(strong, weak, resamples=300, seed=0)
    assert d.point == pytest.approx(cal.auc(*strong) - cal.auc(*weak))
    assert d.low > 0 and d.low <= d.point <= d.high and d.pairs == n
    same = cal.auc_difference(strong, strong, resamples=100, seed=0)
    assert same.point == same.low == same.high == 0.0
    with pytest.raises(ValueError, match="same dialogues"):
        cal.auc_difference(strong, (list(true[:10]), list(foil[:10])))

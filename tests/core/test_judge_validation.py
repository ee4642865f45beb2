"""The judge's validation, pure parts: degraded replies, the rows to judge, the rule."""

import pytest

from synth_empathy.core.judge_validation import (
    DEGRADATIONS,
    EXPECTED,
    cut_mid_sentence,
    degraded_replies,
    not_discriminative,
    repeated_line,
    validation_rows,
    verdict,
)


@pytest.mark.parametrize(
    "reply, cut",
    [
        ("That is so sad, I am sorry to hear it.", "That is so sad, I"),  # 10 words -> 5
        ("It was a long day, really.", "It was a"),
        ("Oh no! What happened to him then?", "Oh no! What"),
        ("Wow, that is great.", "Wow, that"),
        ("Oh, no, that is bad.", "Oh, no"),  # the cut-off comma goes too
        ("I see, okay.", None),  # too short to read as cut
        ("", None),
        (None, None),
    ],
)
def test_cut_mid_sentence_keeps_about_half_the_words_without_final_punctuation(reply, cut):
    assert cut_mid_sentence(reply) == cut


def test_repeated_line_is_the_speakers_last_line():
    history = [
        {"role": "user", "content": "I failed my exam."},
        {"role": "assistant", "content": "Oh no."},
        {"role": "user", "content": "  I studied   so hard. "},
    ]
    assert repeated_line(history) == "I studied so hard."
    assert repeated_line(history[:2]) == "I failed my exam."
    assert repeated_line([]) is None and repeated_line(None) is None


def refs(n):
    return [
        {
            "output": f"Reply number {i} is a sentence of some words.",
            "history": [{"role": "user", "content": f"Speaker line {i}."}],
            "instruction": f"Speaker: Speaker line {i}.\nListener:",
            "emotion": "sad" if i % 2 else "proud",
        }
        for i in range(n)
    ]


def test_degradations_one_per_reference_and_never_the_own_reply():
    r = refs(6)
    d = degraded_replies(r, seed=0)
    assert set(d) == set(DEGRADATIONS)
    assert all(len(v) == 6 for v in d.values())
    assert all(other != own["output"] for other, own in zip(d["other_dialogue"], r))
    assert sorted(d["other_dialogue"]) == sorted(x["output"] for x in r)  # a permutation of the replies
    assert d["repeated_line"][2] == "Speaker line 2."
    assert d["cut_mid_sentence"][0] == "Reply number 0 is"
    assert degraded_replies(r, seed=0) == d  # seeded


def test_validation_rows_have_unique_ids_and_every_kind():
    rows = validation_rows(refs(3), seed=1)
    assert len(rows) == 3 * 4 and len({r["sample_id"] for r in rows}) == 12
    assert {r["kind"] for r in rows} == {"true", *DEGRADATIONS}
    true0 = next(r for r in rows if r["sample_id"] == "ref-00000/true")
    assert true0["output"] == refs(3)[0]["output"] and true0["history"] == refs(3)[0]["history"]


def rated(n, true, degraded):
    """Validation rows rated: every criterion `true` for true replies, `degraded(kind, i)` else."""
    rows = []
    for i in range(n):
        ref = f"ref-{i:05d}"
        rows.append({"reference": ref, "kind": "true", **dict.fromkeys(EXPECTED, true)})
        for d in DEGRADATIONS:
            rows.append({"reference": ref, "kind": d, **dict.fromkeys(EXPECTED, degraded(d, i))})
    return rows


def test_a_judge_that_rates_human_replies_higher_is_discriminative():
    v = verdict(rated(60, 2.9, lambda d, i: 1.2 + (i % 5) / 10), 60, resamples=200, seed=0)
    assert not_discriminative(v) == []
    assert v["coherence"]["auc"]["other_dialogue"]["auc"] == 1.0
    assert v["coherence"]["discriminative"] and v["empathy"]["why_not"] is None


def test_ratings_that_do_not_vary_are_not_discriminative():
    v = verdict(rated(60, 2.0, lambda d, i: 2.0), 60, resamples=200, seed=0)
    assert not_discriminative(v) == ["naturalness", "coherence", "empathy"]
    assert v["empathy"]["auc"]["other_dialogue"]["auc"] == 0.5
    assert "do not vary" in v["empathy"]["why_not"]


def test_a_coin_on_one_expected_degradation_fails_the_criterion():
    # Every degradation is caught except the other dialogue's reply, rated like the true one
    # half the time: empathy and coherence must read it, naturalness need not.
    def degraded(d, i):
        return (2.9 if i % 2 else 2.8) if d == "other_dialogue" else 1.1

    v = verdict(rated(80, 2.85, degraded), 80, resamples=200, seed=0)
    assert not_discriminative(v) == ["coherence", "empathy"]
    assert v["coherence"]["why_not"] == "AUC interval not above 0.5 against other dialogue"
    assert v["naturalness"]["discriminative"]


def test_missing_ratings_leave_pairs_out():
    rows = rated(60, 3.0, lambda d, i: 1.0)
    for r in rows[:8]:
        r["coherence"] = None
    v = verdict(rows, 60, resamples=100, seed=0)
    assert v["coherence"]["auc"]["other_dialogue"]["pairs"] == 58 and v["coherence"]["rated"] == len(rows) - 8


def test_no_ratings_at_all_is_no_auc_and_not_discriminative():
    rows = rated(50, None, lambda d, i: None)
    v = verdict(rows, 50, resamples=100, seed=0)
    assert v["coherence"]["auc"]["other_dialogue"]["auc"] is None and not_discriminative(v) == list(EXPECTED)

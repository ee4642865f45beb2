"""The stand-ins' answers and vectors (pure; no Ray): shaped like the real stage's
output, deterministic per request, and the embedder's near-duplicate share as documented."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from synth_empathy.config import ConfigError, load_config
from synth_empathy.core import standin
from synth_empathy.core.discriminator_input import discriminator_messages
from synth_empathy.core.judge_scores import CRITERIA, expected_rating, first_token_alternatives
from synth_empathy.core.rounds import parse_rounds
from synth_empathy.engines.shared import sharing_plan
from synth_empathy.stages import generation, judge

SEED = {
    "seed_id": "s1",
    "context": "I lost my keys today.",
    "response": "Oh no, that is annoying.",
    "emotion": "annoyed",
}
HISTORY = [{"role": "user", "content": "My dog is sick."}, {"role": "assistant", "content": "Oh no."}]
SAMPLE = {"sample_id": "s1#g0", "instruction": "Speaker: My dog is sick.\nListener:", "history": HISTORY[:1]}


@pytest.mark.parametrize("min_rounds", [1, 3, 5])
def test_generator_text_parses_into_the_rounds_the_prompt_asked_for(min_rounds):
    messages = generation.generation_messages(SEED, min_rounds)
    for i in range(20):
        request = {"messages": messages, "sample_id": f"s1#g{i}"}
        text, tokens = standin.rounds_answer(messages, request, max_tokens=10_000)
        # The stage adds the answer prefix the request wrote for the model, as with vLLM.
        parsed = parse_rounds(generation.ANSWER_PREFIX + text)
        assert parsed.ok and parsed.incomplete_rounds == 0
        assert min_rounds <= len(parsed.rounds) <= min_rounds + 1
        assert all("annoyed" in r.context for r in parsed.rounds)  # the prompt's emotion
        assert tokens == len(text.split())


def test_a_generation_is_cut_at_max_tokens():
    messages = generation.generation_messages(SEED, 3)
    text, tokens = standin.rounds_answer(messages, {"m": messages}, max_tokens=12)
    assert tokens == 12 and len(text.split()) == 12


def test_answers_are_deterministic_per_request_and_differ_between_requests():
    messages = generation.generation_messages(SEED, 3)
    a = [standin.answer("generation", messages, {"messages": messages, "sample_id": f"s1#g{i}"}) for i in range(8)]
    b = [standin.answer("generation", messages, {"messages": messages, "sample_id": f"s1#g{i}"}) for i in range(8)]
    assert a == b
    assert len({t for t, _ in a}) > 1  # the samples of one seed are not all the same text


def test_discriminator_reply_is_one_listener_line():
    for fmt in ("chat", "instruction"):
        messages = discriminator_messages(SAMPLE, "you are a helpful assistant", fmt)
        text, tokens = standin.answer("discriminator", messages, {"m": messages, "fmt": fmt}, max_tokens=64)
        assert text.strip() and "\n" not in text and tokens == len(text.split())
        assert not text.lower().startswith(("speaker", "listener", "round"))
    assert standin.answer("calibration", messages, {"x": 1}) == standin.listener_answer(messages, {"x": 1})


def test_judge_answer_is_a_digit_with_logprobs_that_give_a_varying_expected_rating():
    row = {"output": "That sounds hard.", "history": HISTORY[:1]}
    messages = judge.judge_messages(row, CRITERIA[0])
    ratings = set()
    for i in range(30):
        request = {"messages": messages, "i": i}
        text, tokens = standin.answer("judge", messages, request)
        assert text in {"1", "2", "3"} and tokens == 1
        rating, reason = expected_rating(first_token_alternatives(standin.rating_logprobs(request)))
        assert reason is None and 1.0 <= rating <= 3.0
        assert standin.rating_logprobs(request) == standin.rating_logprobs(dict(request))  # deterministic
        ratings.add(round(rating, 3))
    assert len(ratings) > 20


def test_specs_parse_with_defaults():
    assert standin.parse_spec("standin:") == {"tokens_per_s": None, "count_dir": None}
    assert standin.parse_spec("standin") == {"tokens_per_s": None, "count_dir": None}
    assert standin.parse_spec("standin:count_dir=/tmp/c")["count_dir"] == "/tmp/c"
    with pytest.raises(ConfigError, match="count_dir must be an absolute folder"):
        standin.parse_spec("standin:count_dir=relative")
    assert standin.parse_spec("standin:tokens_per_s=250")["tokens_per_s"] == 250.0
    assert standin.parse_spec("standin:near_duplicates=0.2, dim=32", "embedder") == {
        "dim": 32,
        "near_duplicates": 0.2,
        "groups": 16,
    }
    assert not standin.is_standin("standinx") and not standin.is_standin("packaged:smollm2")


@pytest.mark.parametrize(
    "override, where",
    [
        ("generation.engine.model=standin:tokens_per_s=0", "generation.engine.model"),
        ("judge.engine.model=standin:speed=3", "judge.engine.model"),
        ("quality.embedder=standin:near_duplicates=1.5", "quality.embedder"),
        ("quality.embedder=standin:dim=abc", "quality.embedder"),
        ("quality.embedder=standin:tokens_per_s=3", "quality.embedder"),
    ],
)
def test_bad_specs_fail_at_config_load_in_one_line(override, where):
    with pytest.raises(ConfigError) as e:
        load_config("default", [override])
    assert where in str(e.value) and "\n" not in str(e.value)


def test_standins_load_with_any_preset_and_are_never_shared():
    over = [f"{s}.engine.model=standin" for s in ("generation", "discriminator", "judge")]
    for preset in ("default", "paper"):
        cfg = load_config(preset, over + ["quality.embedder=standin", "ray.engines=shared"])
        assert sharing_plan(cfg) == {}  # three equal engine sections, still one pool per stage
        assert set(standin.used(cfg)) == set(standin.MODEL_KEYS)
        assert standin.notice(cfg).startswith(standin.NOTICE)
    real = load_config("default")
    assert standin.used(real) == {} and standin.notice(real) is None
    # the plain dict of a config.yaml reads the same; a disabled judge's model does not count
    plain = OmegaConf.to_container(load_config("default", ["judge.engine.model=standin", "judge.enabled=false"]))
    assert standin.used(plain) == {}


def _neighbours(vectors, cosine):
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    return (sims >= cosine).any(axis=1)


def test_embedder_vectors_are_deterministic_unit_and_follow_shared_words():
    emb = standin.StandinEmbedder(dim=64, near_duplicates=0)
    texts = ["I am so sorry about your dog", "I am so sorry about your cat", "the train left at noon", ""]
    a, b = emb.encode(texts), standin.StandinEmbedder(dim=64, near_duplicates=0).encode(texts)
    assert a.shape == (4, 64) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert a[0] @ a[1] > 0.6 > a[0] @ a[2]  # shared words, a similar vector
    assert emb.encode([]).shape == (0, 64)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3])
def test_embedder_near_duplicate_share(share):
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{n}" for n in rng.integers(0, 10**9, 8)) for _ in range(3000)]
    vectors = standin.StandinEmbedder(dim=128, near_duplicates=share, groups=8).encode(texts)
    found = _neighbours(vectors, 0.95).mean()
    # binomial: 3000 rows at 0.3 have a standard deviation of 0.0084
    assert abs(found - share) < 0.03, found

"""The CPU top-p cut (synth_empathy.engines.cpu_top_p) against vLLM's own function, and
the plugin that puts it into vLLM's CPU sampler."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from synth_empathy.engines.cpu_top_p import ENV, register, top_p_filter

sampler = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")


def vllm_cut(logits, p):
    return sampler.apply_top_k_top_p_pytorch(logits, None, p)


def lm_like_logits(rows: int, vocab: int, scale: float, seed: int) -> torch.Tensor:
    """Logits after temperature 0.8: larger scale, sharper rows (a smaller nucleus)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=g) * scale + torch.randn(rows, 1, generator=g)) / 0.8


@pytest.mark.parametrize("scale", [0.5, 2.0, 3.0, 6.0])  # nucleus of ~7,000, ~900, ~90, ~6 tokens
def test_keeps_exactly_the_tokens_and_logits_vllm_keeps(scale):
    logits = lm_like_logits(24, 8192, scale, seed=int(scale * 10))
    # a shared engine's batch mixes stages: the generator's 0.9, the discriminator's 1.0, others
    p = torch.tensor([0.9, 1.0, 0.5, 0.99, 0.1, 0.95] * 4)
    want = vllm_cut(logits.clone(), p.clone())
    got = top_p_filter(logits.clone(), p.clone(), fallback=vllm_cut, candidates=(16, 256))
    kept = torch.isfinite(want)
    assert torch.equal(kept, torch.isfinite(got))
    assert torch.equal(want[kept], got[kept])
    assert kept.sum(dim=1).min() >= 1  # the top token always stays


def test_rows_wider_than_every_candidate_count_go_to_the_fallback():
    logits = lm_like_logits(6, 4096, 0.3, seed=1)  # nearly flat: thousands of tokens per nucleus
    p = torch.full((6,), 0.9)
    seen = []

    def fallback(lg, pp):
        seen.append(lg.shape[0])
        return vllm_cut(lg, pp)

    got = top_p_filter(logits.clone(), p, fallback=fallback, candidates=(16, 64))
    assert seen == [6]
    assert torch.equal(torch.isfinite(got), torch.isfinite(vllm_cut(logits.clone(), p)))
    with pytest.raises(ValueError, match="6 rows have a nucleus wider than 64 tokens"):
        top_p_filter(logits.clone(), p, candidates=(16, 64))


def test_p_of_one_leaves_the_row_alone_and_filters_in_place():
    logits = lm_like_logits(3, 1024, 4.0, seed=2)
    before = logits.clone()
    out = top_p_filter(logits, torch.tensor([1.0, 0.9, 1.0]), fallback=vllm_cut, candidates=(16, 256))
    assert out is logits
    assert torch.equal(out[0], before[0]) and torch.equal(out[2], before[2])
    assert torch.isinf(out[1]).any()


PROBE = textwrap.dedent(
    """
    import torch
    from vllm.plugins import load_general_plugins
    from vllm.v1.sample.ops import topk_topp_sampler as s
    from synth_empathy.engines import cpu_top_p
    original = s.apply_top_k_top_p
    load_general_plugins()  # as vLLM does in its engine and worker processes
    calls = []
    cut = cpu_top_p.top_p_filter
    cpu_top_p.top_p_filter = lambda *a, **k: calls.append(1) or cut(*a, **k)
    # the sampler reaches the installed function through its module, as forward_cpu does
    logits, p = torch.randn(4, 512) * 4, torch.full((4,), 0.5)
    tokens, _ = s.TopKTopPSampler().forward_native(logits.clone(), {}, None, p)
    want = original(logits.clone(), None, p)
    in_nucleus = all(bool(torch.isfinite(want[i, t])) for i, t in enumerate(tokens.tolist()))
    print(len(calls), in_nucleus)
    """
)


def test_vllm_loads_the_plugin_where_the_engine_env_asks():
    child_env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    child_env[ENV] = "fast"
    out = subprocess.run([sys.executable, "-c", PROBE], env=child_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["1", "True"]


def test_without_the_env_the_plugin_leaves_vllm_alone(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = sampler.apply_top_k_top_p
    register()
    assert sampler.apply_top_k_top_p is before

"""Nucleus (top-p) filtering for vLLM's CPU sampler without sorting the vocabulary.

vLLM's CPU sampler applies top-p by sorting every sequence's whole vocabulary at every
step (``apply_top_k_top_p_pytorch``). With SmolLM2's 49,152 tokens and ~100 sequences
in a step, that sort was about 40 % of the default run's generation (benchmarks/README.md,
"Top-p in vLLM's CPU sampler").

:func:`top_p_filter` gives the same tokens the same logits: it takes the few highest
logits first (``torch.topk``, no full sort), and where their probability mass already
reaches ``p`` the nucleus lies inside them and is cut there exactly as vLLM cuts it;
the rows whose nucleus is wider (flat distributions) go through vLLM's own function.
Rows with ``p >= 1`` are left alone, as vLLM leaves them in effect (it masks only
tokens whose probability is exactly 0).

It reaches the engine as a vLLM general plugin (entry point ``vllm.general_plugins``,
loaded by vLLM in every engine and worker process): :func:`register` replaces the CPU
sampler's function only where the engine's environment asks for it
(``SYNTH_EMPATHY_CPU_TOP_P=fast``, set by :func:`synth_empathy.core.hardware.resolve_engine`
for CPU engines with ``engine.fast_top_p``), so other vLLM users of the same Python
environment are untouched.
"""

from __future__ import annotations

import logging
import os

from synth_empathy.core.hardware import CPU_TOP_P_ENV as ENV

# vLLM prints its own "vllm.*" loggers in the engine processes, where this runs.
log = logging.getLogger("vllm.plugins.synth_empathy_cpu_top_p")

# Candidate counts tried in turn: at the method's temperature 0.8 / top-p 0.9 a
# nucleus is mostly a handful of tokens; the second size catches the flatter rows
# before the full sort.
CANDIDATES = (64, 1024)


def top_p_filter(logits, p, fallback=None, candidates=CANDIDATES):
    """Mask (to -inf) every logit outside its row's nucleus of mass ``p``; in place.

    ``logits``: (rows, vocab) float tensor, temperature already applied; ``p``: (rows,)
    tensor. The kept set is vLLM's: a token is kept when the probability mass of the
    tokens ranked above it is below ``p`` (the top token always). ``fallback(logits,
    p)`` filters the rows whose nucleus is wider than the largest candidate count
    (vLLM's sorting function in the engine).
    """
    import torch

    rows, vocab = logits.shape
    todo = torch.nonzero(p < 1.0).flatten()  # p >= 1: nothing to cut
    if todo.numel() == 0:
        return logits
    every = todo.numel() == rows  # the usual step: no row copies, the cut made in place
    sub = logits if every else logits[todo]
    lse = torch.logsumexp(sub.float(), dim=-1, keepdim=True)
    for k in candidates:
        if todo.numel() == 0 or k >= vocab:
            break
        vals, idx = sub.topk(k, dim=-1)  # descending
        probs = (vals.float() - lse).exp()
        cum = probs.cumsum(dim=-1)
        pt = p[todo].to(cum.dtype)
        covered = cum[:, -1] >= pt  # the token ranked k+1 is already outside
        keep = (cum - probs) < pt.unsqueeze(1)
        keep[:, 0] = True
        kept = vals.masked_fill(~keep, float("-inf"))
        if every and bool(covered.all()):
            return logits.fill_(float("-inf")).scatter_(1, idx, kept)
        every = False
        if covered.any():
            c = torch.nonzero(covered).flatten()
            out = torch.full((c.numel(), vocab), float("-inf"), dtype=logits.dtype)
            logits[todo[c]] = out.scatter_(1, idx[c], kept[c])
        left = torch.nonzero(~covered).flatten()
        todo, lse = todo[left], lse[left]
        sub = logits[todo]
    if todo.numel():
        if fallback is None:
            raise ValueError(f"{todo.numel()} rows have a nucleus wider than {candidates[-1]} tokens and no fallback")
        logits[todo] = fallback(logits[todo], p[todo])
    return logits


def register() -> None:
    """vLLM general plugin: install :func:`top_p_filter` in the CPU sampler when asked.

    Never fails the engine: if this vLLM's sampler does not look as expected, it logs
    why and leaves vLLM's own function in place."""
    if os.environ.get(ENV) != "fast":
        return
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        from vllm.v1.sample.ops import topk_topp_sampler as sampler

        original = sampler.apply_top_k_top_p
    except Exception as exc:  # another vLLM layout: its own sampler stays
        log.warning("synth-empathy: fast CPU top-p not installed (%s: %s)", type(exc).__name__, exc)
        return
    if getattr(original, "_synth_empathy", False):
        return  # vLLM loads plugins once per process, but may call this again

    def apply_top_k_top_p(logits, k, p):
        if p is None or k is not None:  # top-k alone needs no sort; top-k with top-p: vLLM's
            return original(logits, k, p)
        return top_p_filter(logits, p, fallback=lambda lg, pp: original(lg, None, pp))

    apply_top_k_top_p._synth_empathy = True
    sampler.apply_top_k_top_p = apply_top_k_top_p
    log.info("synth-empathy: CPU top-p cut from the top-k candidates (%s=fast)", ENV)

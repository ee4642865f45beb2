"""The stand-in engine inside an LLM stage: the processor's shape, no model.

A rehearsal (:mod:`synth_empathy.core.standin`) must exercise what a real run does
around its engines. ``ray.data.llm``'s vLLM processor is, in Ray Data terms, a map that
builds each request (the stage's ``preprocess``), a fixed pool of ``replicas`` engine
actors fed ``batch_size`` rows at a time, and a map that reads the answers (the stage's
``postprocess``). :func:`standin_processor` builds that same chain with the same
preprocess, postprocess, pool size and batch size, and puts :class:`StandinEngine` where
the vLLM actor would be. The stage's parts, resume and counts are then the same code as
with vLLM; what differs is only what answers (and the chat template and tokenizer
stages, which a stand-in has no use for). It never imports vLLM, so it runs where vLLM
is absent.

Why this rather than a fake model inside vLLM: vLLM would still load weights, a
tokenizer and its engine process on a CPU, the costs a rehearsal has to leave out.

A stand-in replica asks Ray for ``helper_cpus`` CPUs and no GPU (it computes nothing
and paces itself), so a GPU preset such as ``paper`` can be rehearsed on a CPU machine
with its own replica counts. Stand-in engines are never shared through Ray Serve
(:func:`synth_empathy.engines.shared.sharing_plan` leaves them out): each stage runs
its own pool, the path GPU engines take by default.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pyarrow as pa

from synth_empathy.core import standin

log = logging.getLogger(__name__)


class StandinEngine:
    """Ray Data actor in place of a vLLM engine replica: a batch of requests in, the same
    rows with ``generated_text`` and ``num_generated_tokens`` out."""

    def __init__(self, stage: str, spec: str) -> None:
        self.stage = stage
        options = standin.parse_spec(spec, "engine", f"{stage} engine.model")
        self.tokens_per_s = options["tokens_per_s"]
        self.counts = None
        if options["count_dir"]:
            folder = os.path.join(options["count_dir"], stage)
            os.makedirs(folder, exist_ok=True)
            self.counts = os.path.join(folder, f"{os.getpid()}.txt")

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        texts, tokens = [], []
        for row in batch.to_pylist():
            params = row.get("sampling_params") or {}
            text, n = standin.answer(self.stage, row["messages"], row, params.get("max_tokens"))
            texts.append(text)
            tokens.append(n)
        if self.tokens_per_s:
            # One batch at a time per replica: the replica's rate is the batch's tokens over
            # the time it takes, as an engine at that rate would take it.
            left = sum(tokens) / self.tokens_per_s - (time.perf_counter() - start)
            if left > 0:
                time.sleep(left)
        if self.counts:  # after the answers, before Ray Data has them: what a kill can lose
            with open(self.counts, "a") as f:
                f.write(f"{len(texts)}\n")
        batch = batch.append_column("generated_text", pa.array(texts, pa.string()))
        if self.stage == "judge":  # the judge reads its rating from the first token's logprobs
            batch = batch.append_column("logprobs", pa.array([standin.rating_logprobs(r) for r in batch.to_pylist()]))
        return batch.append_column("num_generated_tokens", pa.array(tokens, pa.int64()))


def standin_processor(stage: Any, ds):
    """``stage`` (an :class:`~synth_empathy.stages.llm.LLMStage`) applied to ``ds`` with
    :class:`StandinEngine` in place of its vLLM engine (see the module docstring)."""
    from ray.data import ActorPoolStrategy

    from synth_empathy.stages.llm import light_tasks

    e = stage.engine
    log.info("[%s] engine: %s (%s)", stage.name, e.model, standin.NOTICE)
    requests = ds.map(stage.preprocess, **light_tasks(e))
    answered = requests.map_batches(
        StandinEngine,
        fn_constructor_kwargs=dict(stage=stage.name, spec=e.model),
        batch_size=e.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=e.replicas),
        num_cpus=e.helper_cpus,
    )
    return answered.map(stage.postprocess, **light_tasks(e))

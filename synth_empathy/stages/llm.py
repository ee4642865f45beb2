"""The shared shape of the LLM stages: a ``ray.data.llm`` vLLM processor per stage.

A stage subclass declares what it sends (:meth:`LLMStage.messages`), which input
columns it carries through (``passthrough``) and what it adds
(:meth:`LLMStage.output_columns`). Everything about engines - replicas, GPUs, tensor
parallelism, batching, retries - comes from :class:`synth_empathy.config.EngineConfig`
and is handed to Ray Data LLM, which runs each engine in an actor of a pool. When several
stages share one engine (:mod:`synth_empathy.engines.shared`), the stage sends the
same messages and sampling settings as OpenAI-style chat requests to that engine's Ray
Serve deployment instead, and reads back the same columns.

A stand-in engine (``engine.model=standin:...``, a rehearsal instrument) takes the
processor's place with the same preprocess, postprocess, pool and batches
(:mod:`synth_empathy.stages.standin_engine`).

Rows whose request fails inside the engine are not lost: they come out with an
error message (``should_continue_on_error``; ``ray.data.llm`` passes them past the
postprocess, so a map after the processor gives them the stage's columns) and later
stages count them as dropped with the reason ``<stage>_error``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from synth_empathy.core import hardware
from synth_empathy.core.judge_scores import openai_alternatives
from synth_empathy.core.standin import is_standin
from synth_empathy.engines.counters import STAGE_TAG
from synth_empathy.engines.options import engine_env, engine_kwargs, placement, resolved
from synth_empathy.models.weights import resolve_model

log = logging.getLogger(__name__)

# The response's own columns (id, model, usage, ...) land in the same row as the input's,
# so the columns a stage carries through travel under this prefix on the served path.
_CARRY = "carry__"

# Where the served path hands a stage the answer's first-token alternatives, already read
# from the OpenAI-style response (``[(token text, logprob), ...]``); vLLM's processor
# gives its own ``logprobs`` column instead.
ALTERNATIVES = "first_token_alternatives"


class LLMStage:
    """Base of the generation and discriminator stages."""

    name: str = "llm"
    passthrough: tuple[str, ...] = ()
    # Where the engine's bookkeeping lands; stages name them apart so that the
    # discriminator's columns do not overwrite the generator's.
    model_column: str = "model"
    tokens_column: str = "num_generated_tokens"
    error_column: str = "error"

    def __init__(self, engine: Any, sampling: Any) -> None:
        self.engine = engine
        self.sampling = sampling

    # -- what a subclass says -------------------------------------------------------
    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        raise NotImplementedError

    def output_columns(self, row: dict[str, Any], text: str) -> dict[str, Any]:
        raise NotImplementedError

    # -- the processor ------------------------------------------------------------------
    def sampling_params(self) -> dict[str, Any]:
        s = self.sampling
        return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}

    def processor_config(self, model_path: str | None = None):
        from ray.data.llm import (
            ChatTemplateStageConfig,
            DetokenizeStageConfig,
            TokenizerStageConfig,
            vLLMEngineProcessorConfig,
        )

        e = self.engine
        # The text stages around the engine are light; at Ray Data's default of one CPU
        # each they alone would fill a small machine and leave the engine unscheduled.
        light = dict(num_cpus=e.helper_cpus, concurrency=e.replicas)
        env = engine_env(e)
        log.info("[%s] engine: %s", self.name, hardware.describe(resolved(e)))
        # vLLM tokenizes a prompt and detokenizes its answer itself; Ray Data's separate
        # stages for them pay off where they keep that CPU work off a GPU engine's actor.
        # On a CPU engine they are two more actor pools competing with it for the cores.
        apart = bool(e.gpus_per_replica)
        return vLLMEngineProcessorConfig(
            chat_template_stage=ChatTemplateStageConfig(**light),
            tokenize_stage=TokenizerStageConfig(enabled=apart, **light),
            detokenize_stage=DetokenizeStageConfig(enabled=apart, **light),
            model_source=model_path or resolve_model(e.model),
            engine_kwargs=engine_kwargs(e),
            batch_size=e.batch_size,
            max_concurrent_batches=batches_in_flight(e),
            concurrency=e.replicas,
            accelerator_type=e.accelerator_type if e.gpus_per_replica else None,
            placement_group_config=placement(e),
            should_continue_on_error=True,
            # Engine metrics go through ray.serve's Prometheus wrapper; without
            # ray[serve] installed the engine actor dies on start-up.
            log_engine_metrics=_serve_usable(),
            # vLLM reads its CPU binding from the environment when the engine starts.
            runtime_env={"env_vars": env} if env else None,
        )

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: row[k] for k in self.passthrough}
        out["messages"] = self.messages(row)
        out["sampling_params"] = self.sampling_params()
        return out

    def postprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        error = row.get("__inference_error__") or None
        out = {k: row[k] for k in self.passthrough}
        out.update(self.output_columns(row, "" if error else (row.get("generated_text") or "")))
        out[self.model_column] = self.engine.model
        out[self.tokens_column] = int(row.get("num_generated_tokens") or 0)
        out[self.error_column] = short_error(str(error)) if error else None
        return out

    def __call__(self, ds, model_path: str | None = None, served: Any = None):
        """Apply the stage to a Ray Dataset (lazily, like any Ray Data transform): through
        its own vLLM processor, or through ``served`` (a
        :class:`~synth_empathy.engines.shared.ServedEngine`) when it shares one."""
        if is_standin(self.engine.model):
            from synth_empathy.stages.standin_engine import standin_processor

            return standin_processor(self, ds)  # it fails no request: no error rows to finish
        if served is not None:
            out, finish = self.served_processor(served)(ds), self.served_postprocess
        else:
            out, finish = self.vllm_processor(model_path)(ds), self.postprocess
        # ray.data.llm hands a failed row (a prompt over max_model_len, a request that
        # timed out) past postprocess, in the shape the engine got it: its columns and
        # its error would be lost. It gets them here, as postprocess would have given them.
        return out.map(lambda row: finish(row) if row.get("__inference_error__") else row, **light_tasks(self.engine))

    def vllm_processor(self, model_path: str | None = None):
        """The stage's own ``ray.data.llm`` processor: requests built, sent to the engine
        pool, answers read (:meth:`processor_config`)."""
        from ray.data.llm import build_processor

        return build_processor(
            self.processor_config(model_path),
            preprocess=self.preprocess,
            postprocess=self.postprocess,
            preprocess_map_kwargs=light_tasks(self.engine),
            postprocess_map_kwargs=light_tasks(self.engine),
        )

    # -- the same stage against a shared engine (a Ray Serve deployment) ------------------
    def served_processor(self, served: Any):
        from ray.data.llm import ServeDeploymentProcessorConfig, build_processor

        e = self.engine
        log.info("[%s] engine: shared, Ray Serve deployment %s", self.name, served.deployment)
        # No dtype_mapping: the requests go as plain dicts to EngineServer.chat_dict, so
        # the senders never import vLLM (synth_empathy.engines.server says why).
        config = ServeDeploymentProcessorConfig(
            deployment_name=served.deployment,
            app_name=served.app,
            concurrency=e.replicas,
            batch_size=e.batch_size,
            should_continue_on_error=True,
        )
        processor = build_processor(
            config,
            preprocess=lambda row: self.served_request(row, served.model_id),
            postprocess=self.served_postprocess,
            preprocess_map_kwargs=light_tasks(e),
            postprocess_map_kwargs=light_tasks(e),
        )
        for stage in processor.stages.values():
            stage.map_batches_kwargs.update(served_sender_kwargs(e))
        return processor

    def served_request(self, row: dict[str, Any], model_id: str) -> dict[str, Any]:
        messages = self.messages(row)
        # As ray.data.llm's chat template stage does: an assistant message last is
        # continued (the generator's and judge's answer prefixes), else a turn is opened.
        cont = messages[-1]["role"] == "assistant"
        params = self.sampling_params()
        if params.get("logprobs"):
            # vLLM's SamplingParams takes a count; the chat API a flag and the count apart.
            params["top_logprobs"], params["logprobs"] = params["logprobs"], True
        out: dict[str, Any] = {_CARRY + k: row[k] for k in self.passthrough}
        out["messages"] = messages
        out["method"] = SERVED_METHOD
        out["request_kwargs"] = {
            "model": model_id,
            "messages": messages,
            "stream": False,
            "add_generation_prompt": not cont,
            "continue_final_message": cont,
            **params,
            STAGE_TAG: self.name,  # the engine counts the stage's requests (progress lines)
        }
        return out

    def served_postprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        """The response row -> the same row :meth:`postprocess` makes from vLLM's."""
        choices = row.get("choices") or []
        text = ((choices[0].get("message") or {}).get("content") or "") if choices else ""
        usage = row.get("usage") or {}
        flat = {k: row[_CARRY + k] for k in self.passthrough}
        if choices and choices[0].get("logprobs"):
            flat[ALTERNATIVES] = openai_alternatives(choices[0])
        flat.update(
            messages=row["messages"],
            generated_text=text,
            num_generated_tokens=usage.get("completion_tokens") or 0,
            __inference_error__=row.get("__inference_error__") or None,
        )
        return self.postprocess(flat)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_error(error: str, limit: int = 500) -> str:
    """One line of at most ``limit`` characters for a row's error column. An error raised
    in a Ray actor arrives as the actor's traceback; its last line says what failed (a
    prompt over max_model_len, ...), its first which exception type travelled."""
    lines = [line.strip() for line in _ANSI.sub("", error).splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0] if len(lines) == 1 else f"{lines[0].split(':', 1)[0]}: {lines[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def light_tasks(engine: Any) -> dict[str, Any]:
    """Ray Data arguments of the row-by-row maps around an engine (building requests,
    reading answers): ``helper_cpus`` each, and at most two tasks per replica at once.
    Without the cap, fractional CPUs let Ray Data run a dozen such tasks together, each in
    a worker process of its own that Ray starts for it (~1.5 CPU-seconds each) - on a
    2-core machine the CPU the engine loses (benchmarks/README.md, "At 1,024 rows, both
    engine modes"). Two per replica keep up with any engine: a row costs microseconds here."""
    from ray.data import TaskPoolStrategy

    return {"num_cpus": engine.helper_cpus, "compute": TaskPoolStrategy(size=2 * engine.replicas)}


def served_sender_kwargs(engine: Any) -> dict[str, Any]:
    """Ray Data arguments of the actors that send a stage's rows to a shared engine.

    A sender awaits its batch's slowest answer before it yields the batch; one batch at
    a time per sender sent the default run's generations as two waves, the engine half
    idle during the second. Several batches in flight per sender (as the vLLM processor
    keeps ``max_concurrent_batches`` of them, :func:`batches_in_flight`) put every row
    of a small stage into vLLM's scheduler at once, which batches them itself.
    """
    from ray.data import ActorPoolStrategy

    n = batches_in_flight(engine)
    return {
        # The senders only await responses; at Ray Data's default of one CPU each they
        # would hold as many CPUs as the engine and starve a small machine's readers.
        "num_cpus": engine.helper_cpus,
        "max_concurrency": n,
        "compute": ActorPoolStrategy(size=engine.replicas, max_tasks_in_flight_per_actor=n),
    }


# The shared engine's method that takes a chat request as a dict
# (synth_empathy.engines.server.EngineServer.chat_dict).
SERVED_METHOD = "chat_dict"

# vLLM's own limit on the sequences an engine runs at once when max_num_seqs is unset and
# the engine is not its offline ``LLM`` class (vllm SchedulerConfig.DEFAULT_MAX_NUM_SEQS):
# what the processor's and the Serve deployment's engines get.
VLLM_ENGINE_MAX_NUM_SEQS = 128
# Ray Data LLM's default of batches in flight at an engine (max_concurrent_batches).
RAY_BATCHES_IN_FLIGHT = 8


def batches_in_flight(engine: Any) -> int:
    """Batches kept at each engine replica at once: enough rows to fill every sequence slot
    of its scheduler (``max_num_seqs``), at least Ray Data LLM's 8. With fewer the engine
    decodes smaller batches than it can: a stage at 16-row batches kept 128 rows in flight,
    so an engine told ``max_num_seqs=256`` ran half full."""
    seqs = engine.max_num_seqs or VLLM_ENGINE_MAX_NUM_SEQS
    return max(RAY_BATCHES_IN_FLIGHT, -(-seqs // engine.batch_size))


def _serve_usable() -> bool:
    try:
        import ray.serve  # noqa: F401
    except Exception:
        return False
    return True

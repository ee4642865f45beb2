"""The shared engine's Ray Serve deployment: Ray Serve LLM's ``LLMServer`` (vLLM's
OpenAI-style server) with one more method, :meth:`EngineServer.chat_dict`, that takes
a chat request as a plain dict, and a shorter start on the CPU backend.

Ray Data's senders would otherwise build every request as vLLM's ``ChatCompletionRequest``
and receive vLLM's ``ChatCompletionResponse``, and either class loads most of vLLM,
torch and transformers into the sender: seconds of a core in every sender process, one
per LLM stage, which a small machine feels (benchmarks/README.md, "Figures behind the code"). The engine's replica has all of it
loaded already, so requests and answers cross as dicts.
This module is imported only in the replica (through
:class:`synth_empathy.engines.shared.EngineReplica`; on GPU also by the driver,
which builds that deployment with Ray Serve LLM's builder), never by a sender.

Two steps of Ray Serve LLM's engine start do nothing for a one-worker CPU engine on
local weights, and each costs a new process that imports torch, on the stage's critical
path:

* the per-node "download" task, which for weights that are neither in a cloud bucket
  nor mirrored returns the path it was given (:class:`LocalWeights` skips it);
* vLLM's separate worker process: Serve LLM runs every CPU engine with the
  multiprocess executor, where vLLM itself (and ``ray.data.llm``'s processor) runs a
  one-worker engine inside its engine-core process (:class:`OneProcessCpuEngine`).
  Generation throughput is the same either way (benchmarks/README.md, "Figures behind the code").

And one more waits for something the engine does not need: Ray's usage telemetry, pushed
through a detached actor that the replica creates and waits for (a new worker process,
after the engine is up and before the replica counts as started).
:meth:`EngineServer._start_engine` pushes it in the background instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.common.utils.cloud_utils import is_remote_path
from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
from ray.llm._internal.serve.observability.usage_telemetry.usage import push_telemetry_report_for_all_models
from ray.serve.llm import LLMConfig, LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from synth_empathy.engines.counters import STAGE_TAG, EngineCounters


def fetches_nothing(model_source: str, mirrored: bool) -> bool:
    """Whether Ray Serve LLM's per-node download task would return ``model_source``
    unchanged: no mirror configured and not a cloud-bucket path (a local folder or a
    hub id, which vLLM loads itself)."""
    return not mirrored and not is_remote_path(model_source)


class LocalWeights(CallbackBase):
    """Ray Serve LLM start-up callback: skip the per-node download task when it would
    fetch nothing (:func:`fetches_nothing`); weights in a bucket still go through it."""

    async def on_before_node_init(self) -> None:
        engine = self.llm_config.get_engine_config()
        if fetches_nothing(engine.actual_hf_model_id, engine.mirror_config is not None):
            self.ctx.run_init_node = False


def one_process(parallel_config: Any, on_cpu: bool) -> bool:
    """Run the engine's only worker inside the engine-core process (vLLM's ``uni``
    executor) instead of a process of its own: on CPU, with one worker."""
    if not on_cpu or parallel_config.world_size != 1:
        return False
    parallel_config.distributed_executor_backend = "uni"
    return True


class OneProcessCpuEngine(VLLMEngine):
    """Ray Serve LLM's vLLM engine with :func:`one_process` applied before it starts."""

    def _start_async_llm_engine(self, vllm_engine_args, vllm_engine_config, placement_group):
        from vllm.platforms import current_platform
        from vllm.utils.ompmultiprocessing import OMPProcessManager

        start = super()._start_async_llm_engine
        if not one_process(vllm_engine_config.parallel_config, current_platform.is_cpu()):
            return start(vllm_engine_args, vllm_engine_config, placement_group)
        vllm_engine_args.distributed_executor_backend = "uni"
        # The multiprocess executor gives its worker process the OpenMP threads and core
        # binding of VLLM_CPU_OMP_THREADS_BIND through the environment; the engine-core
        # process, spawned here, now computes, so it gets them instead (without them it
        # inherits the replica's OMP_NUM_THREADS=1, and decodes at about 0.6 of the rate).
        with OMPProcessManager(vllm_engine_config).configure_omp_envs(rank=0, local_rank=0):
            return start(vllm_engine_args, vllm_engine_config, placement_group)


class EngineServer(LLMServer):
    _default_engine_cls = OneProcessCpuEngine

    async def _start_engine(self):
        """:meth:`LLMServer._start_engine` with its telemetry report sent in the background,
        while the engine starts: the replica serves once the engine is up, not once Ray's
        usage telemetry actor has started (module docstring), and that actor's new worker
        process (~2 CPU-s of imports) is not started while the engine serves, where a small
        machine's engine would lose those seconds (benchmarks/README.md, "At 1,024 rows,
        both engine modes")."""
        asyncio.get_running_loop().run_in_executor(None, push_telemetry_report_for_all_models, [self._llm_config])
        await self.engine.start()

    @property
    def counters(self) -> EngineCounters:
        """Requests and tokens per stage, for the driver's progress line."""
        if getattr(self, "_counters", None) is None:
            self._counters = EngineCounters()
        return self._counters

    async def chat_dict(self, request: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """:meth:`LLMServer.chat` of ``ChatCompletionRequest(**request)``, each answer
        as a dict (what the sender makes of a pydantic answer anyway). A request that
        does not validate raises pydantic's ValidationError, which Ray Data's sender
        records as that row's error (``should_continue_on_error``). The request is
        counted for its stage (``STAGE_TAG``, removed here)."""
        request = dict(request)
        stage = str(request.pop(STAGE_TAG, None) or "")
        self.counters.received(stage, request.get("max_tokens") or request.get("max_completion_tokens"))
        tokens, failed = 0, True
        try:
            stream = await self.chat(ChatCompletionRequest(**request))
            async for item in stream:
                error = getattr(item, "error", None)
                if error is not None and hasattr(error, "message"):
                    # vLLM answers a request it refuses (a prompt over max_model_len, ...)
                    # with an ErrorResponse; raised, it becomes that row's error column
                    # instead of an answer with no text and no error.
                    raise ValueError(f"{getattr(error, 'type', None) or 'engine error'}: {error.message}")
                out = item.model_dump() if isinstance(item, BaseModel) else item
                usage = out.get("usage") if isinstance(out, dict) else None
                tokens += int((usage or {}).get("completion_tokens") or 0)
                yield out
            failed = False
        finally:
            self.counters.finished(stage, tokens, failed=failed)

    def tokens_in_flight(self) -> int | None:
        """Tokens generated so far for the requests still in the engine, read from
        vLLM's output processor (its per-request detokenizer); None where a vLLM version
        keeps them elsewhere (then the rate counts finished answers only).
        ``tests/engines/test_shared_engine.py`` checks the path on the installed vLLM."""
        try:
            states = self.engine._engine_client.output_processor.request_states
            return sum(state.detokenizer.num_output_tokens() for state in list(states.values()))
        except Exception:
            return None

    async def progress(self, stage: str) -> dict[str, Any] | None:
        """The stage's :meth:`EngineCounters.snapshot` (the driver's progress line)."""
        return self.counters.snapshot(stage, self.tokens_in_flight())


async def start_server(llm_config: dict[str, Any]) -> EngineServer:
    """An :class:`EngineServer` of ``llm_config`` (``LLMConfig``'s fields), its engine
    started: what Ray Serve does with the deployment class, done inside
    :class:`synth_empathy.engines.shared.EngineReplica`."""
    server = EngineServer.sync_init(LLMConfig(**llm_config))
    await server.start()
    return server

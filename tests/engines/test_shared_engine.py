"""Which LLM stages share one engine, and the request/response shapes on the shared path
(pure functions: no Ray, no engine; the shared engine itself runs in tests/e2e)."""

from __future__ import annotations

import math

import pytest

from synth_empathy.config import load_config
from synth_empathy.engines import shared as shared_engine
from synth_empathy.errors import ConfigError
from synth_empathy.stages.generation import ANSWER_PREFIX, Generation
from synth_empathy.stages.judge import Judge


def plan(*overrides, preset="default"):
    return sorted(sorted(s) for s in shared_engine.sharing_plan(load_config(preset, list(overrides))).values())


def served_request_object(request_kwargs):
    """The request as the shared engine's replica builds it from a sender's dict."""
    from synth_empathy.engines.counters import STAGE_TAG
    from synth_empathy.engines.server import ChatCompletionRequest

    kwargs = {k: v for k, v in request_kwargs.items() if k != STAGE_TAG}  # counted, then removed
    return ChatCompletionRequest(request_id="0", idx_in_batch=0, **kwargs)


def test_senders_call_a_method_of_the_engine_server_that_takes_a_dict():
    import inspect

    from synth_empathy.engines.server import EngineServer
    from synth_empathy.stages.llm import SERVED_METHOD

    assert inspect.isasyncgenfunction(getattr(EngineServer, SERVED_METHOD))


def test_the_default_shares_one_engine_among_its_three_llm_stages():
    assert plan() == [["discriminator", "generation", "judge"]]
    assert plan("judge.enabled=false") == [["discriminator", "generation"]]
    assert plan("ray.engines=per-stage") == []


def test_different_engine_sections_do_not_share():
    # Sampling differs freely (it travels with each request); engine settings do not.
    assert plan("generation.sampling.max_tokens=7") == [["discriminator", "generation", "judge"]]
    assert plan("judge.engine.max_model_len=1024") == [["discriminator", "generation"]]
    assert plan("judge.engine.max_model_len=1024", "discriminator.engine.dtype=float32") == []


def test_auto_leaves_gpu_engines_to_their_own_processors():
    gpu = [f"{s}.engine.gpus_per_replica=1" for s in ("generation", "discriminator", "judge")]
    assert plan(*gpu) == []
    assert plan(*gpu, "ray.engines=shared") == [["discriminator", "generation", "judge"]]


def test_only_an_engine_that_generation_or_the_discriminator_will_use_starts_early():
    shared = {"k1": ["generation", "discriminator", "judge"]}
    assert shared_engine.early_starts(shared, ["generation", "discriminator"]) == ["k1"]
    assert shared_engine.early_starts(shared, ["discriminator"]) == ["k1"]  # resumed after generation
    # Only the judge left: it starts no engine when the selection is empty, known later.
    assert shared_engine.early_starts(shared, []) == []
    assert shared_engine.early_starts({"k2": ["discriminator", "judge"]}, ["generation"]) == []


def test_a_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="ray.engines must be"):
        load_config("default", ["ray.engines=sometimes"])


def test_a_served_request_continues_the_answer_prefix_and_carries_the_sampling():
    cfg = load_config()
    g = cfg.generation
    stage = Generation(g.engine, g.sampling, g.min_rounds, ("seed_id", "sample_id", "emotion"))
    row = {"seed_id": "s1", "sample_id": "s1-0", "emotion": "sad", "context": "I lost my dog.", "response": "Oh no."}
    req = stage.served_request(row, "engine-x")
    kw = req["request_kwargs"]
    assert (req["method"], kw["model"]) == ("chat_dict", "engine-x") and "dtype" not in req
    # What the engine's replica makes of it (EngineServer.chat_dict), the sender's two keys added
    request = served_request_object(kw)
    assert request.continue_final_message and request.max_tokens == 240
    assert kw["messages"][-1] == {"role": "assistant", "content": ANSWER_PREFIX}
    assert kw["continue_final_message"] and not kw["add_generation_prompt"]
    assert (kw["temperature"], kw["top_p"], kw["max_tokens"]) == (0.8, 0.9, 240)
    assert kw["synth_empathy_stage"] == "generation"  # the engine counts it for the progress line
    # Carried columns travel under a prefix: the response's own "id"/"model" cannot clobber them.
    assert req["carry__sample_id"] == "s1-0" and "sample_id" not in req

    response = dict(req, id="chatcmpl-1", model="engine-x", __inference_error__="")
    response["choices"] = [{"index": 0, "message": {"role": "assistant", "content": " I lost my dog..."}}]
    response["usage"] = {"completion_tokens": 12}
    out = stage.served_postprocess(response)
    assert out["raw_text"] == ANSWER_PREFIX + " I lost my dog..."
    assert (out["seed_id"], out["sample_id"], out["emotion"]) == ("s1", "s1-0", "sad")
    assert (out["num_generated_tokens"], out["error"], out["model"]) == (12, None, g.engine.model)


def test_a_served_failure_becomes_the_stages_error_column():
    cfg = load_config()
    j = cfg.judge
    stage = Judge(j.engine, j.sampling)
    row = {
        "sample_id": "s-0",
        "criterion": "empathy",
        "history": [{"role": "user", "content": "I failed."}],
        "output": "Sorry.",
    }
    req = stage.served_request(row, "engine-x")
    # vLLM's logprobs count becomes the chat API's flag and top_logprobs.
    kw = req["request_kwargs"]
    assert (kw["logprobs"], kw["top_logprobs"], kw["max_tokens"]) == (True, 20, 1)
    request = served_request_object(kw)
    assert (request.logprobs, request.top_logprobs, request.max_tokens) == (True, 20, 1)
    answered = dict(req, __inference_error__="", usage={"completion_tokens": 1})
    answered["choices"] = [{"message": {"content": "2"}, "logprobs": {"content": [{"token": "2", "logprob": -0.1,
        "top_logprobs": [{"token": "2", "logprob": math.log(0.5)}, {"token": " 3", "logprob": math.log(0.5)}]}]}}]  # fmt: skip
    out = stage.served_postprocess(answered)
    assert (out["sample_id"], out["criterion"], out["rating"], out["judge_reason"]) == ("s-0", "empathy", 2.5, None)
    failed = dict(req, __inference_error__="RayTaskError: engine died")
    out = stage.served_postprocess(failed)
    assert out["judge_reason"] == "judge_error" and out["judge_error"].startswith("RayTaskError")
    assert out["judge_num_tokens"] == 0 and out["sample_id"] == "s-0"


def test_every_row_of_a_small_stage_is_in_flight_at_once():
    # One batch at a time per sender sent the default run's 98 generations as two waves
    # (the second waited for the first's slowest answer); senders now keep several.
    cfg = load_config("default", ["generation.engine.replicas=2"])
    e = cfg.generation.engine
    stage = Generation(e, cfg.generation.sampling)
    served = shared_engine.ServedEngine(app="app", deployment="engine-x", model_id="engine-x")
    (sender,) = stage.served_processor(served).stages.values()
    kw = sender.map_batches_kwargs
    pool = kw["compute"]
    in_flight = pool.max_size * pool.max_tasks_in_flight_per_actor * e.batch_size
    assert kw["max_concurrency"] == pool.max_tasks_in_flight_per_actor > 1
    assert pool.min_size == pool.max_size == 2 and kw["num_cpus"] == e.helper_cpus
    assert in_flight >= 98 * 2  # two replicas: the default run's rows twice over


def test_the_download_task_is_skipped_only_where_it_would_fetch_nothing():
    from synth_empathy.engines.server import fetches_nothing

    assert fetches_nothing("/root/.cache/synth-empathy/smollm2-135m-instruct", mirrored=False)
    assert fetches_nothing("HuggingFaceTB/SmolLM2-135M-Instruct", mirrored=False)  # vLLM fetches it
    assert not fetches_nothing("s3://bucket/models/smollm2", mirrored=False)
    assert not fetches_nothing("gs://bucket/models/smollm2", mirrored=False)
    assert not fetches_nothing("HuggingFaceTB/SmolLM2-135M-Instruct", mirrored=True)


def test_a_one_worker_cpu_engine_runs_in_one_process_and_nothing_else_changes():
    from types import SimpleNamespace

    from synth_empathy.engines.server import one_process

    cpu = SimpleNamespace(world_size=1, distributed_executor_backend="mp")
    assert one_process(cpu, on_cpu=True) and cpu.distributed_executor_backend == "uni"
    gpu = SimpleNamespace(world_size=1, distributed_executor_backend="ray")
    assert not one_process(gpu, on_cpu=False) and gpu.distributed_executor_backend == "ray"
    two = SimpleNamespace(world_size=2, distributed_executor_backend="mp")
    assert not one_process(two, on_cpu=True) and two.distributed_executor_backend == "mp"


def test_the_deployment_uses_the_start_up_hooks():
    # Ray Serve LLM is pinned; these are the names its engine start looks up.
    from ray.llm._internal.common.utils.import_utils import load_class
    from ray.llm._internal.serve.core.server.llm_server import LLMServer
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.serve.llm import LLMConfig

    from synth_empathy.engines.server import EngineServer, LocalWeights, OneProcessCpuEngine

    assert callable(VLLMEngine._start_async_llm_engine) and callable(LLMServer._start_engine)
    # The engine class LLMServer.start builds (an instance without its async __init__)
    assert object.__new__(EngineServer)._get_default_engine_class() is OneProcessCpuEngine
    cfg = load_config()
    config = LLMConfig(**shared_engine.llm_config("k", cfg.generation.engine, "/models/smollm2"))
    assert load_class(config.callback_config.callback_class) is LocalWeights


def test_the_cpu_deployment_is_what_ray_serve_llm_would_build_but_for_its_class():
    # The shared CPU engine is deployed without the driver importing ray.serve.llm, its
    # options computed in shared_engine; they must stay what Ray Serve LLM's builder
    # makes of the same LLMConfig (a Ray upgrade that changes them fails here).
    import inspect

    from synth_empathy.engines.server import EngineServer
    from synth_empathy.stages.llm import SERVED_METHOD

    llm = shared_engine.serve_llm()
    for overrides in ([], ["generation.engine.cpus_per_replica=2", "generation.engine.replicas=2"]):
        e = load_config("default", overrides).generation.engine
        config = shared_engine.llm_config("k", e, "/models/smollm2")
        ours = shared_engine.build_deployment("k", e, "/models/smollm2")._bound_deployment
        theirs = llm.build_llm_deployment(
            llm.LLMConfig(**config), override_serve_options={"name": "engine-k"}, deployment_cls=EngineServer
        )._bound_deployment
        assert ours.name == theirs.name == "engine-k"
        assert ours._deployment_config == theirs._deployment_config
        assert ours.ray_actor_options == theirs.ray_actor_options
        assert ours._replica_config.placement_group_bundles == theirs._replica_config.placement_group_bundles
        assert ours._replica_config.placement_group_strategy == theirs._replica_config.placement_group_strategy
        assert ours.func_or_class is shared_engine.EngineReplica and ours.init_kwargs == {"llm_config": config}
    # The senders' method, the health check and the engine's shutdown reach the server.
    for method in (SERVED_METHOD, "check_health", "__del__"):
        assert method in vars(shared_engine.EngineReplica) and hasattr(EngineServer, method)
    assert inspect.isasyncgenfunction(getattr(shared_engine.EngineReplica, SERVED_METHOD))


def test_a_gpu_engine_keeps_ray_serve_llms_builder():
    from synth_empathy.engines.server import EngineServer

    e = load_config("default", ["generation.engine.gpus_per_replica=1"]).generation.engine
    deployment = shared_engine.build_deployment("k", e, "/models/m")._bound_deployment
    assert deployment.func_or_class is EngineServer
    assert deployment._replica_config.placement_group_bundles[0]["GPU"] == 1


def test_checking_for_ray_serve_does_not_import_vllm():
    import subprocess
    import sys

    code = (
        "import sys; from synth_empathy.engines.shared import serve_missing; "
        "assert serve_missing() is None; print('vllm' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_engine_core_process_gets_the_workers_openmp_threads(monkeypatch):
    # OneProcessCpuEngine spawns vLLM's engine-core process inside this context; without
    # it the process inherited the replica's OMP_NUM_THREADS=1 and generated at 60 % of
    # the speed. A vLLM that binds threads another way would fail here, not silently.
    import os
    from types import SimpleNamespace

    from vllm.utils.ompmultiprocessing import OMPProcessManager

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    parallel = SimpleNamespace(local_world_size=1, data_parallel_rank_local=0, _api_process_count=1)
    config = SimpleNamespace(parallel_config=parallel, kv_transfer_config=None)
    with OMPProcessManager(config).configure_omp_envs(rank=0, local_rank=0):
        assert os.environ["OMP_NUM_THREADS"] == "2"
        assert "0" in os.environ.get("OMP_PLACES", os.environ.get("GOMP_CPU_AFFINITY", ""))
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_a_failed_start_names_the_replicas_exception_not_serves_summary():
    deployment_message = (
        "The deployment failed to start 3 times in a row. This may be due to a problem with its "
        "constructor or initial health check failing. See controller logs for details. Error:\n"
        "Traceback (most recent call last):\n"
        '  File "/x/vllm_engine.py", line 300, in _get_vllm_engine_config\n'
        "    raise RuntimeError(f'Failed to create vLLM engine config: {e}') from None\n"
        "RuntimeError: Failed to create vLLM engine config: 1 validation error for ModelConfig\n"
        "  Value error, User-specified max_model_len (100000) is greater than the derived max_model_len\n"
    )
    summary = "Failed to update the deployments ['engine-k']."
    reason = shared_engine.start_failure(summary, deployment_message)
    assert reason.startswith("RuntimeError: Failed to create vLLM engine config")
    assert "max_model_len (100000)" in reason and "\n" not in reason
    # Without a traceback: the deployment's last line, else Serve's summary.
    assert shared_engine.start_failure(summary, "Replica died: out of memory") == "Replica died: out of memory"
    assert shared_engine.start_failure(summary, "") == summary
    assert shared_engine.start_failure("", "") == "no reason given"


def test_the_engine_reads_its_tokens_in_flight_where_the_installed_vllm_keeps_them():
    # EngineServer.tokens_in_flight reads engine._engine_client.output_processor
    # .request_states[*].detokenizer.num_output_tokens(); vLLM calls these internal.
    import inspect

    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer
    from vllm.v1.engine.output_processor import OutputProcessor, RequestState

    from synth_empathy.engines.server import EngineServer

    assert "self._engine_client = self._start_async_llm_engine(" in inspect.getsource(VLLMEngine)
    assert "self.output_processor = OutputProcessor(" in inspect.getsource(AsyncLLM)
    assert OutputProcessor(None, log_stats=False).request_states == {}
    assert "self.detokenizer = detokenizer" in inspect.getsource(RequestState.__init__)
    detok = IncrementalDetokenizer()
    detok.update([5, 6, 7], stop_terminated=False)
    assert detok.num_output_tokens() == 3

    server = object.__new__(EngineServer)  # without its async __init__ (no engine)
    assert server.tokens_in_flight() is None  # no engine yet: unknown, not zero


def test_a_stages_progress_reads_its_shared_engine_only_once_it_serves():
    engines = shared_engine.SharedEngines(load_config())
    read = engines.progress("generation")
    assert read() == "starting"  # nothing launched: the line says the engine is starting
    assert engines.progress("seeds") is None
    per_stage = shared_engine.SharedEngines(load_config("default", ["ray.engines=per-stage"]))
    assert per_stage.progress("generation") is None  # its own engine: the parts tell
    cfg = load_config("default", [f"{s}.engine.replicas=2" for s in ("generation", "discriminator", "judge")])
    assert shared_engine.SharedEngines(cfg).progress("generation") is None  # a call reaches one replica

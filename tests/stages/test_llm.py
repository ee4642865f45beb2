"""vLLM engine arguments and environment from the config (synth_empathy.stages.llm), no engine."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from synth_empathy.config import EngineConfig, load_config, resolve_hardware
from synth_empathy.core import hardware as H
from synth_empathy.engines import options
from synth_empathy.stages import llm

AVX2 = H.Hardware(cpu_model="AMD EPYC 7B13", cpu_flags=frozenset({"avx2"}))
# cpu_threads_bind=auto: one local replica computes on every core of this machine
ALL_CORES = "0" if H.local_cores() == 1 else f"0-{H.local_cores() - 1}"
ZEN4 = H.Hardware(cpu_model="AMD EPYC 9B14", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
# engine.fast_top_p (default on): the engine's vLLM plugin cuts top-p without a vocabulary sort
FAST_TOP_P = {H.CPU_TOP_P_ENV: "fast"}


@pytest.mark.parametrize("hw, dtype, share", [(AVX2, "float32", 0.3), (ZEN4, "bfloat16", 0.15)])
def test_engine_kwargs_use_the_loaded_choice(hw, dtype, share):
    cfg = load_config("default", ["generation.engine.max_num_seqs=8", "generation.engine.extra.swap_space=1"])
    resolve_hardware(cfg, hw)
    kw = options.engine_kwargs(cfg.generation.engine)
    assert kw["dtype"] == dtype and kw["gpu_memory_utilization"] == share
    assert kw["max_num_seqs"] == 8 and kw["swap_space"] == 1 and kw["enforce_eager"] is True
    assert kw["block_size"] == H.CPU_KV_BLOCK == 32  # kv_block_size=auto on the CPU backend
    assert options.engine_env(cfg.generation.engine) == {"VLLM_CPU_OMP_THREADS_BIND": ALL_CORES, **FAST_TOP_P}


def test_explicit_values_pass_through():
    cfg = load_config(
        "default",
        [
            "generation.engine.dtype=half",
            "generation.engine.memory_utilization=0.25",
            "generation.engine.cpu_threads_bind=0-1",
        ],
    )
    resolve_hardware(cfg, AVX2)
    kw = options.engine_kwargs(cfg.generation.engine)
    assert (kw["dtype"], kw["gpu_memory_utilization"]) == ("float16", 0.25)
    cfg = load_config("default", ["generation.engine.kv_block_size=64"])
    assert options.engine_kwargs(cfg.generation.engine)["block_size"] == 64
    cfg = load_config("default", ["generation.engine.extra.block_size=96"])  # extra has the last word
    assert options.engine_kwargs(cfg.generation.engine)["block_size"] == 96
    assert options.engine_env(cfg.generation.engine) == {"VLLM_CPU_OMP_THREADS_BIND": "0-1", **FAST_TOP_P}
    # vllm: vLLM's own binding, no binding set; without fast_top_p nothing at all.
    cfg = load_config("default", ["generation.engine.cpu_threads_bind=vllm"])
    assert options.engine_env(cfg.generation.engine) == FAST_TOP_P
    cfg = load_config("default", ["generation.engine.cpu_threads_bind=vllm", "generation.engine.fast_top_p=false"])
    assert options.engine_env(cfg.generation.engine) == {}
    # auto follows the replica's reservation (clamped to the cores of a local machine).
    cfg = load_config("default", ["generation.engine.cpus_per_replica=2"])
    bind = options.engine_env(cfg.generation.engine)["VLLM_CPU_OMP_THREADS_BIND"]
    assert bind == ("0-1" if H.local_cores() >= 2 else "0")


def test_gpu_engines_get_no_cpu_binding():
    cfg = load_config("single-gpu")
    resolve_hardware(cfg, AVX2)  # a CPU-only driver: vLLM decides the dtype on the GPU node
    e = cfg.generation.engine
    assert options.engine_kwargs(e)["dtype"] == "auto" and options.engine_env(e) == {}
    assert "block_size" not in options.engine_kwargs(e)  # vLLM's own on a GPU
    assert options.engine_kwargs(e)["gpu_memory_utilization"] == e.memory_utilization


def test_an_unloaded_engine_config_is_resolved_on_the_spot(monkeypatch):
    monkeypatch.setattr(H, "detect", lambda with_cuda=False: AVX2)
    e = OmegaConf.structured(EngineConfig)
    assert options.engine_kwargs(e)["dtype"] == "float32"
    assert options.engine_kwargs(EngineConfig())["gpu_memory_utilization"] == 0.3
    monkeypatch.setattr(H, "detect", lambda with_cuda=False: ZEN4)
    assert options.engine_kwargs(e)["dtype"] == "bfloat16"
    # a config.yaml resolved before kv_block_size existed: vLLM's own block size
    old = OmegaConf.structured(EngineConfig(resolved={"dtype": "float32", "memory_utilization": 0.3}))
    assert "block_size" not in options.engine_kwargs(old)


def test_processor_config_carries_the_env_to_the_engine_actor(caplog):
    cfg = load_config("default")
    resolve_hardware(cfg, ZEN4)
    stage = llm.LLMStage(cfg.generation.engine, cfg.generation.sampling)
    with caplog.at_level(logging.INFO, logger="synth_empathy"):
        pc = stage.processor_config(model_path="/nonexistent/model")
    assert "[llm] engine: dtype bfloat16 (cpu has avx512_bf16); memory_utilization 0.15" in caplog.text
    assert pc.runtime_env == {"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": ALL_CORES, **FAST_TOP_P}}
    assert pc.engine_kwargs["dtype"] == "bfloat16"
    cfg = load_config("default", ["generation.engine.cpu_threads_bind=vllm", "generation.engine.fast_top_p=false"])
    assert llm.LLMStage(cfg.generation.engine, cfg.generation.sampling).processor_config("/m").runtime_env is None


def test_cpu_engines_tokenize_in_vllm_and_gpu_engines_in_ray_data():
    # A CPU engine's actor tokenizes and detokenizes itself (two actor pools fewer on a
    # small machine); a GPU engine keeps Ray Data's stages so that work stays off its actor.
    for preset, apart in (("default", False), ("single-gpu", True)):
        cfg = load_config(preset)
        resolve_hardware(cfg, AVX2)
        pc = llm.LLMStage(cfg.generation.engine, cfg.generation.sampling).processor_config("/m")
        assert pc.chat_template_stage.enabled
        assert (pc.tokenize_stage.enabled, pc.detokenize_stage.enabled) == (apart, apart)


def test_enough_batches_in_flight_to_fill_the_engines_sequence_slots():
    # Rows in flight per replica (batch x batches) reach the engine's max_num_seqs, or
    # vLLM's own 128 when it is unset; never under Ray Data LLM's 8 batches.
    cases = [(16, None, 8), (16, 256, 16), (64, None, 8), (64, 256, 8), (100, 1000, 10), (3, 128, 43)]
    for batch, seqs, want in cases:
        cfg = load_config("default", [f"generation.engine.batch_size={batch}"])
        cfg.generation.engine.max_num_seqs = seqs
        resolve_hardware(cfg, ZEN4)
        e = cfg.generation.engine
        assert llm.batches_in_flight(e) == want
        assert llm.batches_in_flight(e) * batch >= (seqs or llm.VLLM_ENGINE_MAX_NUM_SEQS)
        stage = llm.LLMStage(e, cfg.generation.sampling)
        assert stage.processor_config("/m").max_concurrent_batches == want
        kw = llm.served_sender_kwargs(e)
        assert kw["max_concurrency"] == want and kw["compute"].max_tasks_in_flight_per_actor == want


def test_the_maps_around_an_engine_run_few_tasks_at_once():
    # Fractional CPUs alone let Ray Data run a dozen of these light maps at once, each in a
    # worker process Ray starts for it: CPU a small machine's engine loses. Two per replica.
    from types import SimpleNamespace

    for replicas in (1, 3):
        cfg = load_config("default", [f"generation.engine.replicas={replicas}"])
        resolve_hardware(cfg, ZEN4)
        stage = llm.LLMStage(cfg.generation.engine, cfg.generation.sampling)
        from ray.data import TaskPoolStrategy

        want = {"num_cpus": cfg.generation.engine.helper_cpus, "compute": TaskPoolStrategy(size=2 * replicas)}
        for proc in (
            stage.vllm_processor("/m"),
            stage.served_processor(SimpleNamespace(deployment="d", app="a", model_id="m")),
        ):
            assert proc.preprocess_map_kwargs == want and proc.postprocess_map_kwargs == want


def test_an_actors_traceback_becomes_one_line_saying_what_failed():
    error = (
        "RayTaskError(ValueError): \x1b[36mray::ServeReplica:app:engine.handle_request()\x1b[39m (pid=1, ip=x)\n"
        '  File "/x/engine_server.py", line 40, in chat_dict\n'
        "    raise ValueError(...)\n"
        "ValueError: BadRequestError: This model's maximum context length is 2048 tokens.\n"
    )
    assert llm.short_error(error) == (
        "RayTaskError(ValueError): ValueError: BadRequestError: This model's maximum context length is 2048 tokens."
    )
    assert llm.short_error("TimeoutError: request timed out") == "TimeoutError: request timed out"
    assert len(llm.short_error("x" * 2000)) == 500


def test_a_failed_generation_has_no_text():
    from synth_empathy.stages.generation import Generation

    cfg = load_config()
    g = Generation(cfg.generation.engine, cfg.generation.sampling, passthrough=("sample_id",))
    row = {"sample_id": "s", "messages": [], "__inference_error__": "ValueError: too long", "generated_text": None}
    out = g.postprocess(row)
    assert (out["raw_text"], out["error"], out["num_generated_tokens"]) == ("", "ValueError: too long", 0)

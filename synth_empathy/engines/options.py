"""The engine's options as vLLM and Ray Data LLM take them, from an ``EngineConfig``.

One place that turns a config section into vLLM engine arguments, the engine actor's
environment and its placement-group bundles: the per-stage ``ray.data.llm`` processor
(:mod:`synth_empathy.stages.llm`) and the shared Serve deployment
(:mod:`synth_empathy.engines.shared`) both start their engines from these.
"""

from __future__ import annotations

from typing import Any

from synth_empathy.core import hardware


def resolved(engine: Any) -> dict[str, Any]:
    """What the engine runs with on this machine (dtype, memory share, env): filled in by
    :func:`synth_empathy.config.load_config`, else decided here the same way."""
    r = engine.get("resolved") if hasattr(engine, "get") else getattr(engine, "resolved", None)
    if r:
        return dict(r)
    r = hardware.resolve_engine(engine)
    if r.get("warning"):
        hardware.warn_once(r["warning"])
    return r


def engine_kwargs(engine: Any) -> dict[str, Any]:
    """vLLM engine arguments from an EngineConfig (``auto`` dtype and memory share resolved)."""
    r = resolved(engine)
    kwargs: dict[str, Any] = {
        "dtype": r["dtype"],
        "max_model_len": engine.max_model_len,
        "gpu_memory_utilization": r["memory_utilization"],
        "enforce_eager": engine.enforce_eager,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
    }
    if engine.max_num_seqs:
        kwargs["max_num_seqs"] = engine.max_num_seqs
    if r.get("block_size"):  # absent in a config.yaml resolved before the option existed
        kwargs["block_size"] = r["block_size"]
    kwargs.update(dict(engine.extra or {}))
    return kwargs


def engine_env(engine: Any) -> dict[str, str]:
    """Environment variables of the engine's actor (and so of vLLM's worker, which
    inherits them): the CPU thread binding of ``engine.cpu_threads_bind``."""
    return {k: str(v) for k, v in (resolved(engine).get("env") or {}).items()}


def placement(engine: Any) -> dict[str, Any]:
    """One placement-group bundle per engine worker (tp x pp of them per replica).

    With GPUs each worker holds one GPU; on the CPU backend the single worker holds
    ``cpus_per_replica`` CPUs, leaving the rest of a small machine to Ray Data's own
    pre- and post-processing tasks.
    """
    if engine.gpus_per_replica:
        return {"bundle_per_worker": {"GPU": 1, "CPU": 1}, "strategy": "PACK"}
    return {"bundle_per_worker": {"CPU": engine.cpus_per_replica}}

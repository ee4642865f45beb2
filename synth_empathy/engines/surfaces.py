"""Every private name of Ray and vLLM that the package uses: Ray Serve LLM's and vLLM's in
:mod:`synth_empathy.engines`, and the few of Ray core (quiet logs, the autoscaler's node
types), Ray Data (the parts' backpressure) and Ray Train elsewhere.

Private names move between releases without notice. Each one used here is listed with
the module that uses it and why, and :func:`missing` says whether the installed Ray and
vLLM still have it: ``tests/engines/test_surfaces.py`` fails, naming the surface, after
an upgrade that removed one. A surface is checked by import and attribute lookup; where
the name is an instance attribute set in a constructor, by a line of the class's source.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Surface:
    target: str  # "module:Attr.path"
    used_in: str  # the module of this package that depends on it
    why: str
    source_has: str = ""  # a line the target's source must hold (instance attributes)
    as_written: str = ""  # the name as the using module writes it (default: the target's last name)

    @property
    def name_in_code(self) -> str:
        return self.as_written or self.target.replace(":", ".").rsplit(".", 1)[-1]


SURFACES: tuple[Surface, ...] = (
    Surface(
        "ray.llm._internal.common.callbacks.base:CallbackBase",
        "engines.server",
        "LocalWeights, a start-up callback that skips the per-node download task for local weights",
    ),
    Surface(
        "ray.llm._internal.common.callbacks.base:CallbackCtx",
        "engines.server",
        "the callback turns the download task off through its context (ctx.run_init_node)",
        source_has="run_init_node",
        as_written="run_init_node",
    ),
    Surface(
        "ray.llm._internal.common.utils.cloud_utils:is_remote_path",
        "engines.server",
        "decides whether the download task would fetch anything",
    ),
    Surface(
        "ray.llm._internal.serve.engines.vllm.vllm_engine:VLLMEngine._start_async_llm_engine",
        "engines.server",
        "OneProcessCpuEngine runs a one-worker CPU engine inside the engine-core process",
    ),
    Surface(
        "ray.llm._internal.serve.engines.vllm.vllm_engine:VLLMEngine",
        "engines.server",
        "tokens_in_flight reads the engine's client (engine._engine_client)",
        source_has="self._engine_client",
        as_written="_engine_client",
    ),
    Surface(
        "ray.llm._internal.serve.observability.usage_telemetry.usage:push_telemetry_report_for_all_models",
        "engines.server",
        "the replica sends Ray's usage telemetry in the background instead of waiting for its actor",
    ),
    Surface(
        "ray.serve.llm:LLMServer._start_engine",
        "engines.server",
        "EngineServer overrides it to start serving once the engine is up",
    ),
    Surface(
        "ray.serve.llm:LLMServer._default_engine_cls",
        "engines.server",
        "EngineServer's engine class (OneProcessCpuEngine)",
    ),
    Surface(
        "ray.llm._internal.serve:_worker_process_setup_hook",
        "engines.shared",
        "the CPU deployment's options name this hook by path, as Ray Serve LLM's builder does",
    ),
    Surface(
        "vllm.utils.ompmultiprocessing:OMPProcessManager.configure_omp_envs",
        "engines.server",
        "gives the engine-core process the OpenMP threads and core binding of its worker",
    ),
    Surface(
        "vllm.v1.engine.async_llm:AsyncLLM",
        "engines.server",
        "tokens_in_flight reads the output processor of the engine client",
        source_has="self.output_processor = OutputProcessor(",
        as_written="output_processor",
    ),
    Surface(
        "vllm.v1.engine.output_processor:OutputProcessor",
        "engines.server",
        "tokens_in_flight walks its request_states",
        source_has="self.request_states",
        as_written="request_states",
    ),
    Surface(
        "vllm.v1.engine.detokenizer:IncrementalDetokenizer.num_output_tokens",
        "engines.server",
        "tokens generated so far for a request still in the engine",
    ),
    Surface(
        "vllm.v1.sample.ops.topk_topp_sampler:apply_top_k_top_p",
        "engines.cpu_top_p",
        "replaced by a top-p cut without a vocabulary sort in CPU engines that ask for it",
    ),
    # Ray core's, for quiet logs (not engines, listed here so that one test checks them all)
    Surface(
        "ray._private.worker:_global_node",
        "logs",
        "the session folder of the local Ray this driver started, where the driver log goes",
    ),
    Surface(
        "ray._private.log:PlainRayHandler",
        "logs",
        "Ray's console handler in a worker writes through its plain_handler, which takes the job's format",
        source_has="self.plain_handler",
        as_written="plain_handler",
    ),
    Surface(
        "ray.train.v2._internal.execution.controller.placement_group_cleaner:PlacementGroupCleaner",
        "logs",
        "its logger's name and its warning, let through once instead of once a second",
        source_has="Failed to query Ray Train Controller actor state",
        as_written="placement_group_cleaner",
    ),
    # Ray core's and the autoscaler's, for the GPU check against what the cluster can scale to
    Surface(
        "ray._private.state:state.get_cluster_config",
        "cluster.submit",
        "the autoscaler's node types where a platform publishes Ray's cluster config to the GCS",
    ),
    Surface(
        "ray._private.ray_constants:DEBUG_AUTOSCALING_STATUS",
        "cluster.submit",
        "the GCS key of the autoscaler's status, which holds its monitor's pid",
    ),
    Surface(
        "ray.experimental.internal_kv:_internal_kv_get",
        "cluster.submit",
        "reads that status from the GCS",
    ),
    Surface(
        "ray.experimental.internal_kv:_internal_kv_initialized",
        "cluster.submit",
        "whether this process is connected to a GCS to read it from",
    ),
    Surface(
        "ray.autoscaler._private.kuberay.autoscaling_config:AutoscalingConfigProducer",
        "cluster.submit",
        "a RayCluster turned into node types as KubeRay's autoscaler sidecar does",
    ),
    # Ray Data's, for a bound on the answers that wait unwritten
    Surface(
        "ray.data._internal.execution.backpressure_policy:BackpressurePolicy",
        "storage.backpressure",
        "QueuedBlocksPolicy's base class; its topology (self._topology) gives each operator's queues",
        source_has="self._topology",
    ),
    Surface(
        "ray.data._internal.execution.backpressure_policy:ENABLED_BACKPRESSURE_POLICIES",
        "storage.backpressure",
        "Ray Data's own policies, kept beside the added one",
    ),
    Surface(
        "ray.data._internal.execution.backpressure_policy:ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY",
        "storage.backpressure",
        "the dataset context's key that lists the policies",
    ),
    Surface(
        "ray.data._internal.execution.operators.map_operator:MapOperator",
        "storage.backpressure",
        "only a map operator feeding map operators is held",
    ),
    Surface(
        "ray.data._internal.execution.interfaces.physical_operator:PhysicalOperator.output_dependencies",
        "storage.backpressure",
        "the operators after the one asked about",
    ),
    Surface(
        "ray.data._internal.execution.streaming_executor_state:OpState.total_enqueued_output_blocks",
        "storage.backpressure",
        "the finished blocks waiting for the next operator: the count the policy bounds",
    ),
    # Ray Train's, for a training run that survives a slow state API
    Surface(
        "ray.train.v2.api.data_parallel_trainer:DataParallelTrainer._create_default_callbacks",
        "training.ray_train",
        "the trainer's default callbacks, less the placement-group cleaner that kills live runs on a state-API miss",
    ),
    Surface(
        "ray.train.v2._internal.callbacks.placement_group_callback:PlacementGroupCleanerCallback",
        "training.ray_train",
        "the callback left out, named by its class",
    ),
)


def missing(surface: Surface) -> str | None:
    """Why the installed packages lack ``surface`` (None: they have it)."""
    module_name, _, path = surface.target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an import-time error of the module
        return f"{module_name} does not import ({type(exc).__name__}: {exc})"
    for name in path.split("."):
        if not hasattr(obj, name):
            return f"{surface.target}: no attribute {name!r}"
        obj = getattr(obj, name)
    if surface.source_has:
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError) as exc:
            return f"{surface.target}: source unreadable ({exc})"
        if surface.source_has not in source:
            return f"{surface.target}: its source no longer has {surface.source_has!r}"
    return None

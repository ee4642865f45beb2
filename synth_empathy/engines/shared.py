"""One engine for the LLM stages that run the same model with the same settings.

The embedded default runs SmolLM2 as generator, discriminator and judge. With a
``ray.data.llm`` vLLM processor per stage, each stage starts its own engine (on a small
CPU a start is a large share of a few-minute run, three times over). Here stages whose
``engine`` sections are equal send their requests to one Ray Serve LLM deployment
instead, deleted when the run ends; Ray Data's ``ServeDeploymentProcessorConfig`` is
the processor on that side (:meth:`synth_empathy.stages.llm.LLMStage.served_processor`).
The engine begins to start before the first stage (:meth:`SharedEngines.start_early`),
so it boots while the seeds are read, and the first stage that sends to it waits until
it serves.

``ray.engines`` decides: ``per-stage`` never shares; ``shared`` shares wherever two or
more enabled stages have equal engine sections; ``auto`` does so only for CPU engines. On GPUs
the start is seconds of an hours-long run and the processor path feeds the engine
straight from Ray Data, so ``auto`` leaves it there. A stand-in engine (a rehearsal's,
:mod:`synth_empathy.stages.standin_engine`) is never shared: it has no start to save.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from synth_empathy.core import hardware
from synth_empathy.core.standin import is_standin
from synth_empathy.errors import ConfigError, EngineStartError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedEngine:
    """Where a stage sends its requests: a running Serve deployment of its engine."""

    app: str
    deployment: str
    model_id: str


def engine_key(engine: Any) -> str:
    """Equal engine sections (model, resources, dtype, ...) give equal keys."""
    data = OmegaConf.to_container(engine, resolve=True) if OmegaConf.is_config(engine) else dict(engine)
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def llm_sections(cfg: DictConfig) -> dict[str, Any]:
    """The pipeline's LLM stages that will run, by name, with their engine sections."""
    sections = {"generation": cfg.generation.engine, "discriminator": cfg.discriminator.engine}
    if cfg.judge.enabled:
        sections["judge"] = cfg.judge.engine
    return sections


def sharing_plan(cfg: DictConfig) -> dict[str, list[str]]:
    """Engine key -> the stages that share it (only groups of two or more that the mode
    allows). A pure function of the config, so the decision is testable without Ray."""
    mode = cfg.ray.engines  # auto | shared | per-stage, checked when the config loads
    if mode == "per-stage":
        return {}
    groups: dict[str, list[str]] = {}
    engines: dict[str, Any] = {}
    for stage, engine in llm_sections(cfg).items():
        if is_standin(engine.model):
            continue
        key = engine_key(engine)
        groups.setdefault(key, []).append(stage)
        engines[key] = engine
    return {
        key: stages
        for key, stages in groups.items()
        if len(stages) > 1 and (mode == "shared" or not engines[key].gpus_per_replica)
    }


def early_starts(plan: dict[str, list[str]], pending: list[str]) -> list[str]:
    """The engine keys worth starting before the stages run: those that a pending stage
    other than the judge will send to. The judge alone does not count: it starts no
    engine when the selection is empty, which is known only when it gets there."""
    return [key for key, stages in plan.items() if any(s in pending and s != "judge" for s in stages)]


def resident_engine_cpus(cfg: DictConfig) -> int:
    """Logical CPUs the shared CPU engines hold for the whole run (0 without sharing)."""
    sections = llm_sections(cfg)
    cpus = 0.0
    for stages in sharing_plan(cfg).values():
        e = sections[stages[0]]
        if not e.gpus_per_replica:
            cpus += e.cpus_per_replica * e.replicas
    return math.ceil(cpus)


def serve_llm():
    """``ray.serve.llm`` and its OpenAI request models, imported without letting them
    take over the process's log: on import they replace the root logger's handlers
    with Ray's JSON formatter, which would turn this job's one-line progress into JSON."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        import ray.serve.llm
        import ray.serve.llm.openai_api_models
    finally:
        root.handlers[:], root.level = handlers, level
    return ray.serve.llm


def serve_missing() -> str | None:
    """Why Ray Serve cannot be used here (None: it can). Checked without importing
    ``ray.serve.llm`` (it loads vLLM, torch and transformers): the replica
    imports it, and a failure there is the engine's start error."""
    try:
        import ray.serve  # noqa: F401  (its own dependencies: fastapi, starlette, ...)
    except Exception as exc:  # an import error of any of its dependencies
        return f"{type(exc).__name__}: {exc}"
    for module in ("vllm", "ray.serve.llm"):
        if importlib.util.find_spec(module) is None:
            return f"ModuleNotFoundError: no module named {module!r}"
    return None


def check(cfg: DictConfig) -> None:
    """Preflight: a bad mode, or ``shared`` where Ray Serve cannot run, is a config error
    before Ray starts."""
    if sharing_plan(cfg) and cfg.ray.engines == "shared" and (why := serve_missing()):
        raise ConfigError(f"ray.engines=shared needs ray[serve] ({why}); install it or set ray.engines=per-stage")


class SharedEngines:
    """The run's shared engines: started on first use, deleted by :meth:`close`."""

    def __init__(self, cfg: DictConfig, ray_ends_with_us: bool = False):
        """``ray_ends_with_us``: the Ray this process runs on is a local one it started,
        which ends with the process (:meth:`close` then leaves Serve to end with it)."""
        check(cfg)  # preflight raised it already when the pipeline runs
        self.ray_ends_with_us = ray_ends_with_us
        self.plan = sharing_plan(cfg)
        if self.plan and (why := serve_missing()):  # auto without Ray Serve: as before sharing
            log.warning("[engine] one engine per stage: Ray Serve is not usable here (%s)", why)
            self.plan = {}
        self.stage_key = {s: key for key, stages in self.plan.items() for s in stages}
        self.sections = llm_sections(cfg)
        self.started: dict[str, ServedEngine] = {}
        self.ready: set[str] = set()
        self.since: dict[str, float] = {}

    def __enter__(self) -> SharedEngines:
        log.info("engines: %s", self.describe())
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        if not self.plan:
            return "one engine per LLM stage"
        return "; ".join(f"one engine for {' + '.join(stages)}" for stages in self.plan.values())

    def start_early(self, pending: list[str], model_path) -> None:
        """Begin starting, without waiting, the engines that the ``pending`` LLM stages
        will share (``model_path(engine section)`` gives each its weights). The start
        keeps mostly one core busy; the stages before the first LLM
        stage (the seeds) run beside it instead of before it."""
        for key in early_starts(self.plan, pending):
            if key not in self.started:
                engine = self.sections[self.plan[key][0]]
                self._launch(key, engine, model_path(engine))

    def for_stage(self, stage: str, engine: Any, model_path: str) -> ServedEngine | None:
        """The running deployment ``stage`` sends to (started now if nothing started it
        yet; waited for if it is still starting), or None: the stage starts its own
        engine through a vLLM processor."""
        key = self.stage_key.get(stage)
        if key is None:
            return None
        if key not in self.started:
            self._launch(key, engine, model_path)
        if key not in self.ready:
            wait_running(self.started[key], self.since[key])
            self.ready.add(key)
        return self.started[key]

    def progress(self, stage: str) -> Callable[[], dict[str, Any] | str | None] | None:
        """What the stage's progress line reads from its shared engine: a callable that
        returns ``"starting"`` until the engine serves, then the engine's counts for the
        stage (:class:`synth_empathy.engines.counters.EngineCounters`). None for a stage
        without a shared engine, or one of several replicas (a call reaches only one)."""
        key = self.stage_key.get(stage)
        if key is None or self.sections[stage].replicas != 1:
            return None
        handle = None

        def read():
            nonlocal handle
            if key not in self.ready:
                return "starting"
            if handle is None:
                from ray import serve

                served = self.started[key]
                handle = serve.get_deployment_handle(served.deployment, served.app)
            return handle.progress.remote(stage).result(timeout_s=10)

        return read

    def _launch(self, key: str, engine: Any, model_path: str) -> None:
        self.since[key] = time.perf_counter()
        self.started[key] = launch_deployment(key, engine, model_path, self.plan[key])

    def close(self) -> None:
        """Delete the deployments (and, on a cluster, Serve): the engine's memory and
        cores go back before the process ends or the next run starts.

        On a local Ray that this process started, Serve's controller ends with that Ray
        when the process does: ``serve.shutdown()`` would kill it while the driver
        still waits on two of its calls, and Ray prints a "Task
        ServeController... failed ... killed by `ray.kill`" line for each, which read
        like errors at the end of a good run."""
        if not self.started:
            return
        from ray import serve

        try:
            for served in self.started.values():
                serve.delete(served.app)
            if not self.ray_ends_with_us:
                serve.shutdown()
        except Exception as exc:  # the run's results are written; a failed teardown is only logged
            log.warning("[engine] could not stop the shared engine: %s", exc)
        self.started.clear()


# Ray Serve LLM's start-up callback for local weights (engine_server says why), by import
# path: the driver does not import the replica's heavy module.
LOCAL_WEIGHTS = "synth_empathy.engines.server.LocalWeights"


def llm_config(key: str, engine: Any, model_path: str) -> dict[str, Any]:
    """The fields of the engine's Ray Serve ``LLMConfig``, as plain data: the same engine
    arguments, resources and thread binding as the per-stage vLLM processor
    (:mod:`synth_empathy.stages.llm`)."""
    from synth_empathy.engines.options import engine_env, engine_kwargs

    workers = engine.tensor_parallel_size * engine.pipeline_parallel_size
    if engine.gpus_per_replica:
        bundles, accelerator = [{"GPU": 1, "CPU": 1}] * workers, {"kind": "gpu"}
    else:
        bundles, accelerator = [{"CPU": engine.cpus_per_replica}], {"kind": "cpu"}
    env = engine_env(engine)
    return dict(
        model_loading_config={"model_id": f"engine-{key}", "model_source": model_path},
        engine_kwargs=engine_kwargs(engine),
        accelerator_type=engine.accelerator_type if engine.gpus_per_replica else None,
        accelerator_config=accelerator,
        placement_group_config={"bundles": bundles, "strategy": "PACK"},
        deployment_config={
            "name": f"engine-{key}",
            "num_replicas": engine.replicas,
            # Every row Ray Data has in flight waits inside vLLM's scheduler, not in Serve.
            "max_ongoing_requests": 4096,
            # The replica actor's own CPU would be added to the first bundle (2 CPUs held
            # for a 1-CPU engine); the bundles above already hold what the engine computes on.
            "ray_actor_options": {"num_cpus": 0},
            # Stopping the replica at the end of a run waited a whole loop of Serve's
            # graceful shutdown for requests that had all been answered.
            "graceful_shutdown_wait_loop_s": 0.2,
            # Serve logs a line per request ("CALL chat_dict OK 12207.7ms"), which the
            # driver's log repeats: one per row, burying the progress lines.
            "logging_config": {"enable_access_log": False},
        },
        runtime_env={"env_vars": env} if env else None,
        log_engine_metrics=False,
        # Local weights: no per-node download task (engine_server says why).
        callback_config={"callback_class": LOCAL_WEIGHTS},
    )


def cpu_deployment_options(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Serve options of a CPU engine's deployment: what Ray Serve LLM's
    ``build_llm_deployment`` makes of ``config`` (placement group of the engine's
    bundles, its defaults for health checks, the job's runtime environment with the
    engine's variables and its worker set-up hook), computed without importing it.
    ``tests/engines/test_shared_engine.py`` compares the two, so a Ray upgrade that
    changes them fails there."""
    import ray

    deployment = copy.deepcopy(config["deployment_config"])
    actor = deployment.pop("ray_actor_options", {})
    pg = config["placement_group_config"]
    first, *rest = [dict(b) for b in pg["bundles"]]
    # The replica actor's own resources are merged into the first bundle.
    first["CPU"] = float(first.get("CPU", 0) + actor.get("num_cpus", 1))
    first["GPU"] = first.get("GPU", 0) + actor.get("num_gpus", 0)
    actor["runtime_env"] = {
        **ray.get_runtime_context().runtime_env,
        "worker_process_setup_hook": "ray.llm._internal.serve._worker_process_setup_hook",
        **actor.get("runtime_env", {}),
        **(config["runtime_env"] or {}),
    }
    return {
        "health_check_period_s": 10,
        "health_check_timeout_s": 10,
        **deployment,
        "ray_actor_options": actor,
        "placement_group_bundles": [first, *rest],
        "placement_group_strategy": pg["strategy"],
    }


class EngineReplica:
    """The shared CPU engine's Ray Serve deployment class: a thin front of
    :class:`synth_empathy.engines.server.EngineServer` that imports it inside the
    replica. Deploying ``EngineServer`` itself (Ray Serve LLM's ``build_llm_deployment``)
    makes the driver import ``ray.serve.llm`` first, seconds of a core before the
    replica could even be created (benchmarks/README.md, "Figures behind the code"); the replica imports it anyway."""

    async def __init__(self, llm_config: dict[str, Any]):
        from synth_empathy.engines.server import start_server

        self.server = await start_server(llm_config)

    async def chat_dict(self, request: dict[str, Any]):
        """:meth:`EngineServer.chat_dict` (the method the senders call)."""
        async for item in self.server.chat_dict(request):
            yield item

    async def progress(self, stage: str):
        """:meth:`EngineServer.progress` (the driver's progress line asks)."""
        return await self.server.progress(stage)

    async def check_health(self) -> None:
        await self.server.check_health()

    async def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            await server.__del__()  # stops the engine (and its engine-core process)


def build_deployment(key: str, engine: Any, model_path: str):
    """The engine's Serve application: on CPU an :class:`EngineReplica` with options
    computed here; on GPU Ray Serve LLM's own builder (its bundles carry the accelerator
    type; the import is seconds of an hours-long run)."""
    from ray import serve

    config = llm_config(key, engine, model_path)
    if not engine.gpus_per_replica:
        return serve.deployment(EngineReplica, **cpu_deployment_options(config)).bind(llm_config=config)
    llm = serve_llm()  # first: it keeps ray.serve.llm's import from taking over the log
    from synth_empathy.engines.server import EngineServer

    return llm.build_llm_deployment(
        llm.LLMConfig(**config),
        override_serve_options={"name": config["deployment_config"]["name"]},
        deployment_cls=EngineServer,
    )


def launch_deployment(key: str, engine: Any, model_path: str, stages: list[str]) -> ServedEngine:
    """Deploy the engine and return at once; :func:`wait_running` waits for it."""
    from ray import serve

    from synth_empathy.engines.options import resolved

    name = f"engine-{key}"
    app_name = f"synth-empathy-{name}"
    log.info(
        "[engine] starting one engine for %s (Ray Serve deployment %s): %s",
        ", ".join(stages),
        name,
        hardware.describe(resolved(engine)),
    )
    app = build_deployment(key, engine, model_path)
    serve.start(http_options={"location": "NoServer"})  # requests come through handles, no HTTP proxy
    serve.run_many(
        [serve.RunTarget(target=app, name=app_name, route_prefix=None)],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    return ServedEngine(app=app_name, deployment=name, model_id=name)


def wait_running(served: ServedEngine, since: float, poll_s: float = 0.5, note_every_s: float = 30.0) -> None:
    """Wait until ``served``'s application serves; a failed start raises
    :class:`EngineStartError` with Ray Serve's reason. A line every ``note_every_s``
    says it is still starting (a first start may convert weights or compile)."""
    from ray import serve

    waited = time.perf_counter()
    noted = waited
    while True:
        app = serve.status().applications.get(served.app)
        # ApplicationStatus is a str enum: equal to its name, but str() adds the class
        status = getattr(app.status, "value", app.status) if app else "NOT_STARTED"
        if status == "RUNNING":
            break
        if status in ("DEPLOY_FAILED", "UNHEALTHY", "DELETING"):
            deployment = app.deployments.get(served.deployment) if app else None
            reason = start_failure(app.message if app else "", deployment.message if deployment else "")
            raise EngineStartError(
                f"the shared engine {served.deployment} did not start ({status}): {reason} "
                "(the replica's log under /tmp/ray/session_latest/logs/serve)"
            )
        now = time.perf_counter()
        if now - noted >= note_every_s:
            log.info("[engine] %s still starting (%.0f s)", served.deployment, now - since)
            noted = now
        time.sleep(poll_s)
    now = time.perf_counter()
    log.info(
        "[engine] %s ready in %.1f s (%.1f s of it waited for by the stage)",
        served.deployment,
        now - since,
        now - waited,
    )


def start_failure(app_message: str, deployment_message: str) -> str:
    """The line that says why the engine did not start. The application's message is
    Serve's summary ("Failed to update the deployments [...]"); the deployment's ends with
    the replica's traceback, whose last exception line names the cause (a vLLM config
    error, out of memory, a missing model)."""
    lines = [line.strip() for line in (deployment_message or "").splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    if errors:
        # The last raised exception; its message may go on over the following lines.
        i = max(k for k, line in enumerate(lines) if line == errors[-1])
        return " ".join(lines[i : i + 3])[:600]
    summary = [line.strip() for line in (app_message or "").splitlines() if line.strip()]
    return (lines or summary or ["no reason given"])[-1][:600]

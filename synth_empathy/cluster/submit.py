"""Submit a job in ``jobs/`` to a Ray cluster and follow it to the end.

    synth-empathy submit --address http://head:8265 --job run -- --preset paper seeds.path=s3://...
    synth-empathy submit --address http://head:8265 --job select -- s3://b/scored/ s3://b/sel/ --ratio 0.9

The job runs as ``python jobs/<job>.py <args>`` on the cluster, with this checkout as
its working directory (the ``synth_empathy/`` package travels inside it and Ray puts
the working directory on the job's ``PYTHONPATH``), so the cluster runs the code that
is here, whatever version its image has installed.

The command (``synth_empathy.cli.submit``) parses its flags and calls :func:`submit`.
Exit codes: 0 the job SUCCEEDED (or was submitted, with ``--no-follow``), 1 it FAILED
or was STOPPED (also on ``--timeout``, which stops it), 2 bad input: an unreachable
address, a bad config, or a preset that asks for GPUs the cluster does not have -
each reported in one ``error:`` line before anything is submitted.

:func:`check_resources` is also what the pipeline calls inside the job, once Ray is up
(:func:`check_cluster`), so a run that cannot place its engines fails early and clearly
instead of waiting forever for GPUs.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from synth_empathy.core.standin import is_standin
from synth_empathy.errors import ClusterError  # noqa: F401 (re-exported)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

JOBS: dict[str, str] = {
    "run": "jobs/run_pipeline.py",
    "select": "jobs/select_diverse.py",
    "judge": "jobs/judge.py",
    "train": "jobs/train.py",
    "evaluate": "jobs/evaluate.py",
}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

# Never shipped with the working directory (Ray also skips what .gitignore lists).
EXCLUDES = [
    ".venv/",
    "venv/",
    ".git/",
    "runs/",
    "benchmarks/out/",
    "*.pyc",
    "__pycache__/",
    ".pytest_cache/",
    ".hypothesis/",
    "build/",
    "*.egg-info/",
]


# --------------------------------------------------------------------------- resources


def _gpu_needs(cfg: Any, sections: Sequence[str] | None = None) -> list[tuple]:
    """(stage, GPUs one replica needs on one node, accelerator type or None).

    ``sections`` limits the check to the config sections a job uses (``synth-empathy
    judge`` runs only the judge); None means the whole pipeline. A stand-in (a rehearsal's,
    :mod:`synth_empathy.core.standin`) needs no GPU whatever its section asks for.
    """
    needs = []
    for name in cfg:  # every section with an engine: generation, discriminator, judge, ...
        if sections is not None and name not in sections:
            continue
        section = cfg[name]
        e = section.get("engine") if hasattr(section, "get") else None
        if e is not None and e.get("gpus_per_replica") and not is_standin(e.get("model")):
            if name == "judge" and not section.get("enabled", True):
                continue
            needs.append((f"{name}.engine", float(e.gpus_per_replica), e.get("accelerator_type")))
    if (
        cfg.quality.gpus_per_replica
        and not is_standin(cfg.quality.embedder)
        and (sections is None or "quality" in sections)
    ):
        needs.append(("quality", float(cfg.quality.gpus_per_replica), None))
    return needs


def check_resources(
    cfg: Any,
    cluster_resources: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
    sections: Sequence[str] | None = None,
) -> None:
    """Raise :class:`ClusterError` if the cluster cannot hold one replica of some stage.

    ``cluster_resources`` is ``ray.cluster_resources()`` (totals over the nodes);
    ``nodes``, when given, is each alive node's resource dict, and then one replica's
    GPUs (``gpus_per_replica``, which covers tensor x pipeline parallelism) must fit
    on a single node, as vLLM's tensor parallel workers are packed on one machine.
    Only one replica has to fit: the stages run one after another and further
    replicas wait for (or make an autoscaler add) nodes. A cluster that scales its
    GPU group from zero shows no GPUs until a job asks for them; keep one GPU node up
    (``minReplicas: 1``, as in ``cluster/``) so that this check sees the GPU shape.
    """
    total_gpus = float(cluster_resources.get("GPU", 0) or 0)
    largest = max((float(n.get("GPU", 0) or 0) for n in nodes), default=0.0) if nodes else total_gpus
    for stage, need, accel in _gpu_needs(cfg, sections):
        if total_gpus == 0:
            raise ClusterError(
                f"{stage}.gpus_per_replica={need:g} but the cluster has no GPUs; use a GPU "
                f"cluster or a CPU config (gpus_per_replica=0)"
            )
        if need > largest:
            where = "its largest node has" if nodes else "it has"
            raise ClusterError(
                f"{stage}.gpus_per_replica={need:g} does not fit the cluster: {where} "
                f"{largest:g} GPUs; lower tensor_parallel_size or add bigger GPU nodes"
            )
        if accel and f"accelerator_type:{accel}" not in cluster_resources:
            have = sorted(k.split(":", 1)[1] for k in cluster_resources if k.startswith("accelerator_type:"))
            raise ClusterError(
                f"{stage}.accelerator_type={accel!r} is not on the cluster (it has: {', '.join(have) or 'none'})"
            )


def check_cluster(cfg: Any, sections: Sequence[str] | None = None) -> None:
    """:func:`check_resources` against the Ray cluster this process is connected to."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    check_resources(cfg, ray.cluster_resources(), nodes, sections)


# --------------------------------------------------------------------------- client


def dashboard_url(address: str) -> str:
    """``host:port`` or ``http(s)://host:port`` -> the Jobs API base URL."""
    address = address.strip().rstrip("/")
    if not address:
        raise ClusterError("no Ray address: pass --address http://<head>:8265 or set RAY_ADDRESS")
    if address.startswith("ray://"):
        raise ClusterError(
            f"{address} is a Ray Client address; job submission uses the dashboard, e.g. http://<head>:8265"
        )
    if "://" not in address:
        address = "http://" + address
    return address


def connect(address: str, connect_timeout: float = 5.0):
    """A ``JobSubmissionClient`` for ``address``; :class:`ClusterError` if unreachable."""
    import requests

    url = dashboard_url(address)
    try:
        # The SDK's own version check has no timeout; probe first with a short one.
        requests.get(url + "/api/version", timeout=(connect_timeout, 2 * connect_timeout))
    except requests.exceptions.RequestException as e:
        reason = type(e).__name__
        raise ClusterError(
            f"cannot reach the Ray dashboard at {url} ({reason}); is the cluster up "
            f"and the address its dashboard (port 8265)?"
        ) from None
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError (version)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"cannot use the Jobs API at {url}: {first}") from None


def node_resources(address: str) -> list[dict[str, float]]:
    """Each alive node's total resources, read through the dashboard's state API."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=dashboard_url(address), filters=[("state", "=", "ALIVE")], timeout=30)
    return [dict(n.resources_total or {}) for n in nodes]


def build_runtime_env(working_dir: str = ".", runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    # pipeline.init_ray passes its own runtime_env to ray.init inside the job; Ray refuses
    # to merge it with the job's (any key in both) unless told to let the driver's win.
    env: dict[str, Any] = {
        "working_dir": working_dir,
        "excludes": list(EXCLUDES),
        "env_vars": {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"},
    }
    for key, value in (runtime_env or {}).items():
        if key == "env_vars":
            env["env_vars"] = {**env["env_vars"], **value}
        elif key == "excludes":
            env["excludes"] = env["excludes"] + list(value)
        else:
            env[key] = value
    return env


def entrypoint(job: str, args: Sequence[str]) -> str:
    """``python -P jobs/<job>.py <args>``.

    ``-P`` (Python >= 3.11) keeps ``jobs/`` off ``sys.path``, so a job file can never
    shadow a library module (a ``jobs/select.py`` once hid the standard ``select``
    module). The package comes from the working directory, which Ray puts on
    ``PYTHONPATH``.
    """
    if job not in JOBS:
        raise ClusterError(f"unknown job {job!r}; known jobs: {', '.join(JOBS)}")
    return shlex.join(["python", "-P", JOBS[job], *args])


async def _tail(client, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _follow(client, job_id: str, deadline: float | None, out) -> bool:
    """Print the job's logs as they come; False if the deadline passed first."""
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        asyncio.run(asyncio.wait_for(_tail(client, job_id, out), timeout=remaining))
    except asyncio.TimeoutError:
        return False
    except Exception as e:  # the log stream broke; keep polling the status instead
        print(f"[submit] log stream ended early ({type(e).__name__}: {e}); polling status", file=sys.stderr)
    return True


def submit(
    address: str,
    entrypoint_args: Sequence[str],
    *,
    working_dir: str = ".",
    follow: bool = True,
    timeout: float | None = None,
    runtime_env: dict[str, Any] | None = None,
    job: str = "run",
    out=None,
) -> str:
    """Submit ``python jobs/<job>.py <entrypoint_args>``; return the job's final status.

    With ``follow`` the job's logs are printed as they come and the call returns once
    the job ends: ``SUCCEEDED``, ``FAILED`` or ``STOPPED``. A job still running after
    ``timeout`` seconds is stopped (and ``STOPPED`` returned, or whatever it ended as).
    Without ``follow`` it returns the status right after submission (``PENDING``).
    """
    out = out or sys.stdout
    command = entrypoint(job, entrypoint_args)
    if not os.path.isdir(working_dir) or not os.path.isfile(os.path.join(working_dir, JOBS[job])):
        raise ClusterError(f"working_dir {working_dir!r} has no {JOBS[job]}; run from the repository root")
    client = connect(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    job_id = client.submit_job(entrypoint=command, runtime_env=build_runtime_env(working_dir, runtime_env))
    print(f"[submit] {job_id}: {command}", file=sys.stderr)
    if not follow:
        return str(client.get_job_status(job_id).value)
    in_time = _follow(client, job_id, deadline, out)
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            break
        if not in_time or (deadline is not None and time.monotonic() > deadline):
            print(f"[submit] {job_id}: timed out after {timeout:g} s; stopping it", file=sys.stderr)
            client.stop_job(job_id)
            in_time, deadline = True, time.monotonic() + 60  # let it reach STOPPED
        time.sleep(1.0)
    info = client.get_job_info(job_id)
    tail = f": {info.message}" if status != "SUCCEEDED" and info.message else ""
    print(f"[submit] {job_id}: {status}{tail}", file=sys.stderr)
    return status

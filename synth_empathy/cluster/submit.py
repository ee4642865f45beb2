"""Submit a job in ``jobs/`` to a Ray cluster and follow it to the end.

    synth-empathy submit --address http://head:8265 --job run -- --preset paper seeds.path=s3://...
    synth-empathy submit --address http://head:8265 --job select -- s3://b/scored/ s3://b/sel/ --ratio 0.9

The job runs as ``python jobs/<job>.py <args>`` on the cluster, with this checkout as
its working directory (the ``synth_empathy/`` package travels inside it and Ray puts
the working directory on the job's ``PYTHONPATH``), so the cluster runs the code that
is here, whatever version its image has installed.

The command (``synth_empathy.cli.submit``) parses its flags and calls :func:`submit`;
it prints the job id alone on stdout as soon as the job exists (the logs go to stderr),
so ``JOB=$(synth-empathy submit --no-follow ...)`` works. Exit codes: 0 the job
SUCCEEDED (or was submitted, with ``--no-follow``), 1 it FAILED or was STOPPED (also on
``--timeout``, which stops it), 2 bad input: an unreachable address, a cluster that
wants a token we do not have, a bad config, a preset that asks for GPUs the cluster
cannot have, ``--timeout`` with ``--no-follow`` - each reported in one ``error:`` line
before anything is submitted; 3 contact lost while following (a dropped port-forward,
a head that stopped answering): the job may still be running, and only the cluster
can say how it ends.

Token auth: the client sends ``Authorization: Bearer <token>`` with the token it finds
in ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``.

:func:`check_resources` is also what the pipeline calls inside the job, once Ray is up
(:func:`check_cluster`), so a run that cannot place its engines fails early and clearly
instead of waiting forever for GPUs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from synth_empathy.core.standin import is_standin
from synth_empathy.errors import ClusterError  # noqa: F401 (re-exported)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_LOST = 0, 1, 2, 3
LOST = "LOST_CONTACT"  # submit()'s answer when the cluster stopped answering; the job may run on
# How long the Jobs API may stay silent before a follower gives up (a head restarting, a
# port-forward re-established take less), and how often the status is asked for.
LOST_AFTER_S, POLL_S = 120.0, 1.0

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
    node_types: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Raise :class:`ClusterError` if the cluster cannot hold one replica of some stage,
    neither on a node it has nor on one its autoscaler can add.

    ``cluster_resources`` is ``ray.cluster_resources()`` (totals over the nodes);
    ``nodes``, when given, is each alive node's resource dict, and then one replica's
    GPUs (``gpus_per_replica``, which covers tensor x pipeline parallelism) and its
    ``accelerator_type`` must be on a single node, as vLLM's tensor parallel workers
    are packed on one machine. ``node_types`` are the autoscaler's node types (Ray's
    cluster config: ``{"name", "resources", "max_count"}``, :func:`autoscaler_node_types`):
    a type that may start at least one node counts as a node the cluster can have, so a
    GPU group that scales from zero passes. Only one replica has to fit: the stages run
    one after another and further replicas wait for (or make an autoscaler add) nodes.
    """
    types = [t for t in node_types or [] if t.get("max_count", 0) != 0]
    scalable = [dict(t["resources"]) for t in types]
    candidates = [dict(n) for n in nodes] + scalable if nodes is not None else None
    total_gpus = float(cluster_resources.get("GPU", 0) or 0) + sum(float(t.get("GPU", 0) or 0) for t in scalable)
    up = max((float(n.get("GPU", 0) or 0) for n in nodes), default=0.0) if nodes else total_gpus
    biggest = max(types, key=lambda t: float(t["resources"].get("GPU", 0) or 0), default=None)
    addable = float(biggest["resources"].get("GPU", 0) or 0) if biggest else 0.0
    largest = max(up, addable) if candidates is not None else total_gpus
    for stage, need, accel in _gpu_needs(cfg, sections):
        if total_gpus == 0:
            tail = " and its autoscaler adds none" if node_types else ""
            raise ClusterError(
                f"{stage}.gpus_per_replica={need:g} but the cluster has no GPUs{tail}; use a GPU "
                f"cluster or a CPU config (gpus_per_replica=0)"
            )
        if need > largest:
            if candidates is None:
                where = f"it has {largest:g} GPUs"
            else:
                where = f"its largest node has {up:g} GPUs"
                if biggest is not None:
                    where += f" and the largest node type its autoscaler can add, {biggest['name']}, has {addable:g}"
                elif node_types:
                    where += " and its autoscaler adds none"
            raise ClusterError(
                f"{stage}.gpus_per_replica={need:g} does not fit the cluster: {where}; "
                f"lower tensor_parallel_size or add bigger GPU nodes"
            )
        if not accel:
            continue
        key = f"accelerator_type:{accel}"
        pool = candidates if candidates is not None else [cluster_resources]
        if not any(key in n and float(n.get("GPU", 0) or 0) >= need for n in pool):
            have = sorted({k.split(":", 1)[1] for n in pool for k in n if k.startswith("accelerator_type:")})
            raise ClusterError(
                f"{stage}.accelerator_type={accel!r} is not on the cluster (it has: {', '.join(have) or 'none'})"
                + (" on a node with enough GPUs" if any(key in n for n in pool) else "")
            )


def autoscaler_node_types() -> list[dict[str, Any]] | None:
    """The autoscaler's node types as the job's driver can read them, or None:

    1. Ray's cluster config in the GCS (``ray._private.state.state.get_cluster_config()``,
       what Ray Data's own autoscaling reads). Ray 2.60's autoscalers never write it
       (``report_cluster_config`` has no caller; ray-project/ray#63012): it is there only
       where a platform publishes it.
    2. The config file of the cluster's running autoscaler: Ray's monitor on the head node
       puts its pid in the status it publishes to the GCS (``__autoscaling_status``), and
       its command line names the file (``--autoscaling-config``): the launcher's
       ``~/ray_bootstrap_config.yaml``, or whatever ``ray start --head
       --autoscaling-config=...`` was given. Readable where the driver runs on the head
       node, as a job's driver does.
    3. ``~/ray_bootstrap_config.yaml`` on this machine (a launcher cluster's head).
    4. On KubeRay (``RAY_CLUSTER_NAME``, which the operator sets in every Ray container,
       and the pod's service account): the RayCluster read from the Kubernetes API and
       turned into node types by Ray's own ``AutoscalingConfigProducer``, as the
       autoscaler sidecar does, with the head pod's service account (the one KubeRay
       grants the autoscaler's RBAC to).
    """
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a private API: its absence is "unknown", never an error
        config = None
    if config is not None and config.node_group_configs:
        return [
            {"name": g.name, "resources": dict(g.resources), "max_count": int(g.max_count)}
            for g in config.node_group_configs
        ]
    for path in (running_autoscaler_config(), os.path.expanduser("~/ray_bootstrap_config.yaml")):
        if path and os.path.isfile(path):
            import yaml

            with open(path) as f:  # YAML, or the JSON that ray start's callers also write
                return launcher_node_types(yaml.safe_load(f) or {})
    return kuberay_autoscaler_node_types()


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def kuberay_autoscaler_node_types() -> list[dict[str, Any]] | None:
    """The node types KubeRay's autoscaler sees, read as it reads them; None outside a
    KubeRay pod or where the RayCluster cannot be read (no RBAC, no token mounted)."""
    name = os.environ.get("RAY_CLUSTER_NAME")
    if not name or not os.path.isfile(SERVICE_ACCOUNT_NAMESPACE):
        return None
    try:
        from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            config = AutoscalingConfigProducer(name, f.read().strip())()
    except Exception as e:  # a private API, an API server that refuses us: "unknown"
        print(f"[synth-empathy] cannot read RayCluster {name} ({type(e).__name__}); checking the nodes that are up")
        return None
    return launcher_node_types(config)


def running_autoscaler_config() -> str | None:
    """The ``--autoscaling-config`` file of the autoscaler of the cluster this process is
    connected to, or None (no autoscaler, one in another container or on another
    machine, a pid that is no longer Ray's monitor)."""
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        if not _internal_kv_initialized():
            return None
        status = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or b"{}")
        pid = int(status["monitor_pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except Exception:
        return None
    if not any(a.endswith(os.path.join("autoscaler", "_private", "monitor.py")) for a in argv):
        return None  # the pid is not (or no longer) the autoscaler's monitor
    for i, a in enumerate(argv):
        if a.startswith("--autoscaling-config="):
            path = a.split("=", 1)[1]
        elif a == "--autoscaling-config" and i + 1 < len(argv):
            path = argv[i + 1]
        else:
            continue
        return os.path.join(cwd, os.path.expanduser(path))  # join keeps an absolute path as it is
    return None


def launcher_node_types(launcher: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``available_node_types`` of a Ray cluster launcher config, as node types. A type
    without ``max_workers`` may start as many as the cluster's ``max_workers`` (Ray's
    default), and no type more than that."""
    head = launcher.get("head_node_type")
    cluster_max = int(launcher.get("max_workers", 2))
    return [
        {
            "name": name,
            "resources": dict(t.get("resources") or {}),
            "max_count": min(int(t.get("max_workers", cluster_max)), cluster_max),
        }
        for name, t in (launcher.get("available_node_types") or {}).items()
        if name != head
    ]


def kuberay_node_types(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A RayCluster's (or a RayJob's cluster's) worker groups as its autoscaler sees them:
    GPUs from ``num-gpus``, the resources ``rayStartParams`` declares, ``maxReplicas``."""
    spec = doc["spec"] if doc.get("kind") == "RayCluster" else doc["spec"]["rayClusterSpec"]
    types = []
    for g in spec.get("workerGroupSpecs") or []:
        params = g.get("rayStartParams") or {}
        res: dict[str, float] = {"GPU": float(params.get("num-gpus", 0))}
        raw = params.get("resources")
        if raw:  # KubeRay passes it to ray start --resources as written, quotes included
            res.update(json.loads(json.loads(raw) if raw.startswith('"') else raw))
        types.append({"name": g["groupName"], "resources": res, "max_count": int(g.get("maxReplicas", 0))})
    return types


def cluster_file_node_types(path: str) -> list[dict[str, Any]]:
    """Node types from a cluster definition: a launcher YAML or a KubeRay manifest."""
    import yaml

    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
    except (OSError, yaml.YAMLError) as e:
        raise ClusterError(f"cannot read --cluster-file {path}: {type(e).__name__}") from None
    for doc in docs:
        if "available_node_types" in doc:
            return launcher_node_types(doc)
        if doc.get("kind") in ("RayCluster", "RayJob"):
            return kuberay_node_types(doc)
    raise ClusterError(f"--cluster-file {path} is neither a cluster launcher config nor a RayCluster/RayJob")


def check_cluster(cfg: Any, sections: Sequence[str] | None = None) -> None:
    """:func:`check_resources` against the Ray cluster this process is connected to and
    the node types its autoscaler can add."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    check_resources(cfg, ray.cluster_resources(), nodes, sections, autoscaler_node_types())


# --------------------------------------------------------------------------- client


def auth_token() -> tuple[str | None, str]:
    """The cluster's token as a client finds it, and where it was found: ``RAY_AUTH_TOKEN``,
    else the file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token`` (the order
    Ray's own token loader uses)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError:
        return None, path
    return (token or None), path


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer <token>`` when a token is found. Sent explicitly rather
    than through ``RAY_AUTH_MODE=token``: Ray's SDK adds the header only when that
    variable is set in the client's environment, which a user easily forgets."""
    token, _ = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


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
    """A ``JobSubmissionClient`` for ``address`` carrying the token (:func:`auth_token`);
    :class:`ClusterError` if the dashboard is unreachable or refuses us."""
    import requests

    url = dashboard_url(address)
    headers = auth_headers()
    try:
        # The SDK's own version check has no timeout; probe first with a short one. The
        # job list needs the token where auth is on (the version endpoint may not).
        r = requests.get(url + "/api/jobs/", headers=headers, timeout=(connect_timeout, 2 * connect_timeout))
    except requests.exceptions.RequestException as e:
        reason = type(e).__name__
        raise ClusterError(
            f"cannot reach the Ray dashboard at {url} ({reason}); is the cluster up "
            f"and the address its dashboard (port 8265)?"
        ) from None
    if r.status_code in (401, 403):
        token, where = auth_token()
        if token is None:
            raise ClusterError(
                f"the cluster at {url} requires a token and none was found: set RAY_AUTH_TOKEN or "
                f"write the cluster's token to {where} (cluster/README.md, 'Token auth')"
            )
        raise ClusterError(f"the cluster at {url} refused the token from {where} (HTTP {r.status_code})")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url, headers=headers or None)
    except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError (version)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"cannot use the Jobs API at {url}: {first}") from None


def cluster_ray_version(address: str) -> str | None:
    """The Ray version the cluster's dashboard reports, or None if it does not say."""
    import requests

    try:
        r = requests.get(dashboard_url(address) + "/api/version", headers=auth_headers(), timeout=10)
        return r.json().get("ray_version") if r.ok else None
    except (requests.exceptions.RequestException, ValueError, AttributeError):
        return None


def node_resources(address: str) -> list[dict[str, float]]:
    """Each alive node's total resources, read through the dashboard's state API."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(
        address=dashboard_url(address), headers={"Content-Type": "application/json", **auth_headers()}
    )
    nodes = client.list(
        StateResource.NODES,
        options=ListApiOptions(filters=[("state", "=", "ALIVE")], timeout=30),
        raise_on_missing_output=False,
    )
    return [dict(n.resources_total or {}) for n in nodes]


def pip_requirements(working_dir: str = ".", extras: Sequence[str] = ("gpu", "models")) -> list[str]:
    """``pyproject.toml``'s dependencies and ``extras``, as a ``runtime_env`` pip list: the
    path for clusters that keep their own image (stock Ray 2.60 GPU images) instead of
    cluster/Dockerfile's. Every node installs them once per distinct list."""
    import tomllib

    path = os.path.join(working_dir, "pyproject.toml")
    try:
        with open(path, "rb") as f:
            project = tomllib.load(f)["project"]
    except OSError:
        raise ClusterError(f"--pip needs {path}; run from the repository root") from None
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for e in extras for r in optional.get(e, []))]


def build_runtime_env(
    working_dir: str = ".", runtime_env: dict[str, Any] | None = None, pip: bool = False
) -> dict[str, Any]:
    # pipeline.init_ray passes its own runtime_env to ray.init inside the job; Ray refuses
    # to merge it with the job's (any key in both) unless told to let the driver's win.
    env: dict[str, Any] = {
        "working_dir": working_dir,
        "excludes": list(EXCLUDES),
        "env_vars": {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"},
    }
    if pip:
        env["pip"] = pip_requirements(working_dir)
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


class _Contact:
    """Calls to the Jobs API that may go unanswered for a while (a head restarting, a
    port-forward re-established) before contact counts as lost."""

    def __init__(self, lost_after: float):
        self.lost_after = lost_after
        self.silent_since: float | None = None
        self.last_error = ""

    def ask(self, call, *args):
        """``call(*args)``, or None while the cluster does not answer; raises
        :class:`_Lost` once it has not answered for ``lost_after`` seconds."""
        try:
            value = call(*args)
        except (OSError, RuntimeError) as e:  # requests' errors are OSErrors; the SDK raises RuntimeError on 5xx
            now = time.monotonic()
            self.silent_since = self.silent_since or now
            self.last_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if now - self.silent_since >= self.lost_after:
                raise _Lost(self.last_error) from None
            return None
        self.silent_since = None
        return value


class _Lost(Exception):
    pass


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
    on_submitted: Callable[[str], None] | None = None,
    pip: bool = False,
    lost_after: float | None = None,
    poll_s: float | None = None,
) -> str:
    """Submit ``python jobs/<job>.py <entrypoint_args>``; return the job's final status.

    ``on_submitted`` is called with the job id as soon as the job exists. ``pip``: the
    job installs pyproject.toml's dependencies and GPU extra (:func:`pip_requirements`). With ``follow``
    the job's logs are written to ``out`` as they come and the call returns once the
    job ends: ``SUCCEEDED``, ``FAILED`` or ``STOPPED``; or :data:`LOST` when the cluster
    stopped answering for ``lost_after`` seconds (the job may run on). A job still
    running after ``timeout`` seconds is stopped (and ``STOPPED`` returned, or whatever
    it ended as). Without ``follow`` it returns the status right after submission; a
    ``timeout`` is then refused, as nothing would be left to stop the job.
    ``lost_after`` and ``poll_s`` default to :data:`LOST_AFTER_S` and :data:`POLL_S`.
    """
    out = out or sys.stdout
    lost_after = LOST_AFTER_S if lost_after is None else lost_after
    poll_s = POLL_S if poll_s is None else poll_s
    if timeout is not None and not follow:
        raise ClusterError(
            "--timeout needs the job followed (it is stopped from here); drop --no-follow, "
            "or stop it later with `ray job stop <id>` (a RayJob: activeDeadlineSeconds)"
        )
    command = entrypoint(job, entrypoint_args)
    if not os.path.isdir(working_dir) or not os.path.isfile(os.path.join(working_dir, JOBS[job])):
        raise ClusterError(f"working_dir {working_dir!r} has no {JOBS[job]}; run from the repository root")
    client = connect(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    job_id = client.submit_job(entrypoint=command, runtime_env=build_runtime_env(working_dir, runtime_env, pip))
    if on_submitted is not None:
        on_submitted(job_id)
    print(f"[submit] {job_id}: {command}", file=sys.stderr)
    contact = _Contact(lost_after)
    try:
        if not follow:
            status = None
            while status is None:
                status = contact.ask(client.get_job_status, job_id)
            return str(status.value)
        in_time = _follow(client, job_id, deadline, out)
        stopping = announced = False
        while True:
            status = contact.ask(client.get_job_status, job_id)
            if status is not None and str(status.value) in TERMINAL:
                status = str(status.value)
                break
            late = not in_time or (deadline is not None and time.monotonic() > deadline)
            if late and not stopping:
                if not announced:
                    print(f"[submit] {job_id}: timed out after {timeout:g} s; stopping it", file=sys.stderr)
                    announced = True
                stopping = contact.ask(client.stop_job, job_id) is not None  # then wait for STOPPED
            time.sleep(poll_s)
        info = contact.ask(client.get_job_info, job_id)
    except _Lost as e:
        print(
            f"[submit] {job_id}: lost contact with the cluster for {lost_after:g} s ({e}); the job may still be "
            f"running: `ray job status {job_id}` once the dashboard answers again",
            file=sys.stderr,
        )
        return LOST
    tail = f": {info.message}" if info is not None and status != "SUCCEEDED" and info.message else ""
    print(f"[submit] {job_id}: {status}{tail}", file=sys.stderr)
    return status

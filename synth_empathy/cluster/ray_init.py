"""Where a job runs: join the configured Ray cluster or start a local one, then check it
can hold the configured engines before any model loads."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from synth_empathy.cluster.image import check_image
from synth_empathy.cluster.submit import check_cluster
from synth_empathy.engines.shared import resident_engine_cpus
from synth_empathy.logs import open_driver_log, quiet_ray_console, quiet_ray_warnings

_started_here = False


def init_ray(cfg: DictConfig, sections: tuple | None = None, worker_output: bool = False) -> None:
    """Join the configured cluster (or start a local Ray) and check it can hold the
    engines of ``sections`` (None: every stage of the pipeline).

    A local Ray keeps its output off the console unless ``ray.verbose_progress``: the
    workers' (vLLM, Serve, Ray Data's tasks) stays in their files in the Ray session's
    log folder, and Ray's driver-side lines go to ``synth-empathy-driver.log`` there
    (:mod:`synth_empathy.logs`); the console shows the job's own lines and Ray's
    warnings and errors. ``worker_output``: the workers' output is shown all the same
    (``train``: its step lines are logged in Ray Train's workers)."""
    if worker_output:
        keep_step_lines(os.environ)
    import ray

    global _started_here
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address:  # a cluster (or a Ray job): its own runtime environment stays in charge
        check_image()  # the image's Ray and vLLM are the ones this code pins, or one line now
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": a new Ray here even on a node that runs a cluster (plain
        # ray.init() would join that one, and refuse num_cpus).
        # A shared engine stays up through the stages between its users (scoring,
        # selection), so its CPUs come on top of what those stages need.
        verbose = bool(cfg.ray.verbose_progress)
        env = {
            "TOKENIZERS_PARALLELISM": "false",
            **footer_reader_env(cfg.ray.footer_readers, os.cpu_count() or 1),
        }
        os.environ.update(env)  # the driver lists files too
        runtime_env = {"env_vars": {**env, **worker_quiet_env(verbose, os.environ)}}
        if worker_output and not verbose:
            runtime_env["worker_process_setup_hook"] = "synth_empathy.logs.quiet_ray_worker"
        if not verbose:
            quiet_ray_console()
        ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus or max(4, os.cpu_count() or 1) + resident_engine_cpus(cfg),
            include_dashboard=False,
            log_to_driver=verbose or worker_output,
            runtime_env=runtime_env,
        )
        _started_here = True
        open_driver_log()
    quiet_ray_data_progress(cfg)
    quiet_ray_warnings()
    check_cluster(cfg, sections)  # a GPU preset on a cluster without GPUs fails here, not after hours


# Ray's driver drops a worker line whose words without digits match a line another process
# printed in the last 5 s ("[repeated Nx across cluster]"). Every step line is the same
# words, so once Ray Train restarts a worker group (new pids), the new group's progress
# would show only as those counts until the run ends. Lines matching this are never dropped.
KEEP_LINES = r"synth-empathy \[train\]"


def keep_step_lines(environ) -> None:
    """Exempt the job's ``[train]`` lines from Ray's log deduplication. Ray reads the
    setting once, when ``ray`` is first imported, so this runs before that import; a
    setting of the user's own stays."""
    environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", KEEP_LINES)


def started_here() -> bool:
    """Whether this process started the Ray it is connected to (a local Ray, which ends
    with the process), as opposed to joining a cluster."""
    return _started_here


def worker_quiet_env(verbose: bool, environ) -> dict[str, str]:
    """Hugging Face's progress bars ("Loading weights", "Writing model shards") are
    carriage-return lines in a log; the workers do not draw them unless
    ``ray.verbose_progress`` (or ``HF_HUB_DISABLE_PROGRESS_BARS`` is set)."""
    return {} if verbose or "HF_HUB_DISABLE_PROGRESS_BARS" in environ else {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def footer_reader_env(readers: int | None, cores: int) -> dict[str, str]:
    """Ray Data lists a Parquet folder by reading every file's footer on a pool of actors
    (32 by default), each a new worker process, started again for every read, which on a
    small machine costs far more than the read (``benchmarks/parquet_read_bench.py`` and
    its section in benchmarks/README.md). A local Ray gets one reader per 8 cores unless
    ``ray.footer_readers`` says otherwise."""
    n = readers if readers is not None else max(1, min(32, cores // 8))
    return {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": str(n)}


def quiet_ray_data_progress(cfg: DictConfig) -> None:
    """Ray Data's progress bars in a terminal; in a log (a job, CI, a file) its multi-line
    per-operator dump every 10 s buries everything else, so it is off there unless
    ``ray.verbose_progress``. The stage runner logs one line per update instead."""
    import sys

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = bool(cfg.ray.verbose_progress or sys.stdout.isatty())

"""Where a job runs: join the configured Ray cluster or start a local one, then check it
can hold the configured engines before any model loads."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from synth_empathy.cluster.submit import check_cluster
from synth_empathy.engines.shared import resident_engine_cpus


def init_ray(cfg: DictConfig, sections: tuple | None = None) -> None:
    """Join the configured cluster (or start a local Ray) and check it can hold the
    engines of ``sections`` (None: every stage of the pipeline)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address:  # a cluster (or a Ray job): its own runtime environment stays in charge
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": a new Ray here even on a node that runs a cluster (plain
        # ray.init() would join that one, and refuse num_cpus).
        # A shared engine stays up through the stages between its users (scoring,
        # selection), so its CPUs come on top of what those stages need.
        env = {
            "TOKENIZERS_PARALLELISM": "false",
            **footer_reader_env(cfg.ray.footer_readers, os.cpu_count() or 1),
            **engine_log_env(cfg.ray.verbose_progress, os.environ),
        }
        os.environ.update(env)  # the driver lists files too
        ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus or max(4, os.cpu_count() or 1) + resident_engine_cpus(cfg),
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": env},
        )
    quiet_ray_data_progress(cfg)
    check_cluster(cfg, sections)  # a GPU preset on a cluster without GPUs fails here, not after hours


def footer_reader_env(readers: int | None, cores: int) -> dict[str, str]:
    """Ray Data lists a Parquet folder by reading every file's footer on a pool of actors
    (32 by default), each a new worker process, started again for every read: on 2 cores
    a read of a 98-row stage took 6-9 s that way and 1.6 s with one reader
    (``benchmarks/parquet_read_bench.py``). A local Ray gets one reader per 8 cores unless
    ``ray.footer_readers`` says otherwise."""
    n = readers if readers is not None else max(1, min(32, cores // 8))
    return {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": str(n)}


def engine_log_env(verbose: bool, environ) -> dict[str, str]:
    """vLLM logs ~35 INFO lines as an engine starts (its config, KV cache size, thread
    binding, ...), which the driver's log repeats between the progress lines; they are
    not logged unless ``ray.verbose_progress`` (or ``VLLM_LOGGING_LEVEL`` is set). Its
    warnings and errors still are, and the run's own ``[engine]`` line names the dtype,
    memory share and binding."""
    return {} if verbose or "VLLM_LOGGING_LEVEL" in environ else {"VLLM_LOGGING_LEVEL": "WARNING"}


def quiet_ray_data_progress(cfg: DictConfig) -> None:
    """Ray Data's progress bars in a terminal; in a log (a job, CI, a file) its multi-line
    per-operator dump every 10 s buries everything else, so it is off there unless
    ``ray.verbose_progress``. The stage runner logs one line per update instead."""
    import sys

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = bool(cfg.ray.verbose_progress or sys.stdout.isatty())

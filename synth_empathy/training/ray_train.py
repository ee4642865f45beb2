"""Ray Train around the training loop: data-parallel workers from ``train.num_workers``.

:func:`fit` runs :func:`synth_empathy.training.loop.train_loop` in every worker of a
``ray.train.torch.TorchTrainer`` (``ScalingConfig(num_workers, use_gpu,
resources_per_worker)``). Ray Train starts the workers and sets up
``torch.distributed`` between them (gloo on CPUs, NCCL on GPUs); the loop sees an
initialised process group and wraps the model in ``DistributedDataParallel``, or shards
it with FSDP2 (``train.strategy: fsdp``).

Storage, no shared filesystem assumed: ``RunConfig(storage_path=train.output, name="ray_train")``,
on the local disk or object storage (an ``s3://`` output goes through an fsspec filesystem built
from the same ``storage.*`` options as the pipeline, as ``storage_filesystem``). Every checkpoint
is a ``ray.train.report(metrics, checkpoint=...)`` that Ray Train copies there
(``<output>/ray_train/step-NNNNNNN``); the loop resumes from ``ray.train.get_checkpoint()``, which
after a worker's death (``FailureConfig(max_failures=train.max_failures)``: the group restarts)
and in a new run on the same storage is the latest one. Rank 0 writes the model, report and
plot into ``train.output`` itself (uploaded for a URL); the driver reads the report from there.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from synth_empathy.errors import ClusterError

log = logging.getLogger(__name__)


def _worker(config: dict[str, Any]) -> None:
    import torch

    from synth_empathy.logs import setup_worker_logging
    from synth_empathy.training.loop import train_loop

    setup_worker_logging()  # the loop's step lines, in the worker's log and the job's format

    threads = config.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    train_loop(
        config["settings"],
        config["examples"],
        config["output"],
        config.get("extra_report"),
        eval_examples=config.get("eval_examples"),
        ray_train=True,
        storage_options=config.get("storage_options"),
    )


def _trainer_class():
    """``TorchTrainer`` without Ray Train's placement-group cleaner.

    The cleaner, a detached actor, polls the state API for the controller and removes the run's
    placement group once it reads the controller as dead - and in Ray 2.60 it reads a state-API
    miss (a slow GCS on a loaded node) as death: the placement group of a live run is removed
    and its workers killed mid-step (seen twice on a 2-core machine under load; the same flaw is
    noted in the review of ray-project/ray#65447). Without it the placement group is released as
    before the cleaner existed: when the controller ends, or with the job's driver.
    """
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if type(c).__name__ != CLEANER]

    return Trainer


CLEANER = "PlacementGroupCleanerCallback"


def check_resources(use_gpu: bool, num_workers: int, cpus_per_worker: float) -> None:
    """Workers asking for more CPUs or GPUs than the whole cluster has fail here, in one line,
    not after waiting forever for a placement group."""
    import ray

    from synth_empathy.cluster.ray_init import started_here

    have = ray.cluster_resources()
    gpus = float(have.get("GPU", 0) or 0)
    if use_gpu and gpus < num_workers:
        raise ClusterError(
            f"train.use_gpu=true with train.num_workers={num_workers} but the cluster has {gpus:g} GPUs; "
            f"lower num_workers, add GPU nodes, or set train.use_gpu=false"
        )
    cpus = float(have.get("CPU", 0) or 0)
    if num_workers * cpus_per_worker > cpus:
        raise ClusterError(
            f"train.num_workers={num_workers} x train.cpus_per_worker={cpus_per_worker:g} = "
            f"{num_workers * cpus_per_worker:g} CPUs but the cluster has {cpus:g}; lower one of them"
            + (" or raise ray.num_cpus (a local Ray)" if started_here() else "")
        )


def storage(output: str, storage_options: dict | None) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` of ``RunConfig`` for ``train.output``: a local
    folder as it is, a URL through its fsspec filesystem (with the ``storage.*`` options) as
    a pyarrow filesystem and the path without its protocol."""
    import fsspec

    from synth_empathy.training.loop import is_remote

    if not is_remote(output):
        return os.path.abspath(os.path.expanduser(fsspec.core.split_protocol(output)[1])), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    return root.rstrip("/"), PyFileSystem(FSSpecHandler(fs))


def fit(
    settings: dict[str, Any],
    examples: list[dict[str, list[int]]],
    output: str,
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    max_failures: int = 0,
    eval_examples: list[dict[str, list[int]]] | None = None,
    storage_options: dict | None = None,
    extra_report: dict | None = None,
    verbose: bool = False,
) -> Any:
    """Train under Ray Train (Ray must be initialised); the report is in ``output``. Returns
    Ray Train's ``Result`` (its ``checkpoint``: the latest).

    Ray Train's own INFO lines (resources requested, worker group started, process
    group set up) go to its log files in the Ray session (``logs/train``), not to the
    console, unless ``verbose`` (``ray.verbose_progress``); its warnings still do."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from synth_empathy.training.loop import RAY_RUN

    check_resources(use_gpu, num_workers, cpus_per_worker)
    storage_path, filesystem = storage(output, storage_options)
    keep_best = bool(settings.get("keep_best"))
    trainer = _trainer_class()(
        _worker,
        train_loop_config={
            "settings": settings,
            "examples": examples,
            "eval_examples": eval_examples,
            "output": output,
            "storage_options": storage_options,
            "extra_report": extra_report,
            "threads": None if use_gpu else max(1, int(cpus_per_worker)),
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=RAY_RUN,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=settings["keep_checkpoints"],
                # kept by validation loss (Ray Train always keeps the latest one too)
                checkpoint_score_attribute="eval_loss" if keep_best else None,
                checkpoint_score_order="min",
            ),
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
    log.info("[train] Ray Train: %d worker(s), use_gpu=%s, max_failures=%d", num_workers, use_gpu, max_failures)
    return trainer.fit()

"""Ray Train around the training loop: data-parallel workers from ``train.num_workers``.

:func:`fit` runs :func:`synth_empathy.training.loop.train_loop` in every worker of a
``ray.train.torch.TorchTrainer`` (``ScalingConfig(num_workers, use_gpu,
resources_per_worker)``). Ray Train starts the workers and sets up
``torch.distributed`` between them (gloo on CPUs, NCCL on GPUs); the loop sees an
initialised process group and wraps the model in ``DistributedDataParallel``. The
tokenised examples travel with the worker function's config; the checkpoints, the model
and the report are written by rank 0 into the output folder, which every worker must
be able to reach (one machine, or a shared filesystem on a cluster). Ray Train's own run
folder (``<output>/ray_train``) only holds its bookkeeping.
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
    train_loop(config["settings"], config["examples"], config["output_dir"], config.get("extra_report"))


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


def check_gpus(use_gpu: bool, num_workers: int) -> None:
    """A GPU run on a cluster with too few GPUs fails here, not after waiting forever."""
    if not use_gpu:
        return
    import ray

    have = float(ray.cluster_resources().get("GPU", 0) or 0)
    if have < num_workers:
        raise ClusterError(
            f"train.use_gpu=true with train.num_workers={num_workers} but the cluster has {have:g} GPUs; "
            f"lower num_workers, add GPU nodes, or set train.use_gpu=false"
        )


def fit(
    settings: dict[str, Any],
    examples: list[dict[str, list[int]]],
    output_dir: str,
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    extra_report: dict | None = None,
    verbose: bool = False,
) -> None:
    """Train under Ray Train (Ray must be initialised); the report is in ``output_dir``.

    Ray Train's own INFO lines (resources requested, worker group started, process
    group set up) go to its log files in the Ray session (``logs/train``), not to the
    console, unless ``verbose`` (``ray.verbose_progress``); its warnings still do."""
    from ray.train import LoggingConfig, RunConfig, ScalingConfig

    check_gpus(use_gpu, num_workers)
    output_dir = os.path.abspath(output_dir)
    trainer = _trainer_class()(
        _worker,
        train_loop_config={
            "settings": settings,
            "examples": examples,
            "output_dir": output_dir,
            "extra_report": extra_report,
            "threads": None if use_gpu else max(1, int(cpus_per_worker)),
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name="ray_train",
            storage_path=output_dir,
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
    log.info("[train] Ray Train: %d worker(s), use_gpu=%s", num_workers, use_gpu)
    trainer.fit()

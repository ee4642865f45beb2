"""The shards of the sharded k-center as Ray tasks, one per shard and one GPU each where
the selection runs on CUDA. The algorithm itself is :mod:`synth_empathy.core.kcenter`."""

from __future__ import annotations

import numpy as np

from synth_empathy.core.kcenter.sharded import per_part, shard_greedy


def _gpus_per_task(device: str) -> int:
    """1 for ``cuda``, and for ``auto`` when the Ray cluster has GPUs (each shard then
    sees its own GPU as ``cuda``); else 0."""
    if device.startswith("cuda"):
        return 1
    if device == "auto":
        import ray

        return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return 0


def map_shards_on_ray(x, parts, k, start: int, device: str, fast: bool) -> list:
    """``map_shards`` for :func:`~synth_empathy.core.kcenter.select_k_center`: the matrix
    goes to the object store once, every shard is a task reading it from there.
    ``k``: centers per shard, one number or one per part."""
    import ray

    xref = ray.put(np.ascontiguousarray(x))  # first: starts a local Ray if none is up
    task = ray.remote(num_cpus=1, num_gpus=_gpus_per_task(device))(shard_greedy)
    return ray.get([task.remote(xref, p, kp, start, device, fast) for p, kp in zip(parts, per_part(k, parts))])

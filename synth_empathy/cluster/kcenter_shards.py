"""The shards of the sharded k-center as Ray tasks, one per shard (a GPU each where the
selection runs on CUDA). The algorithm itself is :mod:`synth_empathy.core.kcenter`."""

from __future__ import annotations

import numpy as np

from synth_empathy.core.kcenter import shard_greedy


def map_shards_on_ray(x, parts, k: int, start: int, device: str, fast: bool) -> list:
    """``map_shards`` for :func:`~synth_empathy.core.kcenter.select_k_center`: the matrix
    goes to the object store once, every shard is a task reading it from there."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0)(shard_greedy)
    xref = ray.put(np.ascontiguousarray(x))
    return ray.get([task.remote(xref, p, k, start, device, fast) for p in parts])

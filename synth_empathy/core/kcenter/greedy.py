"""One greedy run: its checks, and where it runs.

:func:`_greedy` checks the matrix, ``k`` and the start row, then runs the lazy greedy on
the CPU (module ``lazy``) or the device-resident one on a torch device (module
``device``: ``device="cuda"``, ``torch-cpu``, or ``auto`` when torch sees a GPU); both
return the same five things. The sharded method and the entry point run every greedy
through here. Also :func:`greedy_k_center`, the exact greedy by its plain name, and the
size from which ``auto`` takes ``fast``.
"""

from __future__ import annotations

import numpy as np

from synth_empathy.core.kcenter.device import greedy as device_greedy
from synth_empathy.core.kcenter.lazy import greedy as lazy_greedy
from synth_empathy.core.kcenter.rows import _check_matrix, _tensor_device, resolve_k
from synth_empathy.errors import SelectionError

# From this many row x center pairs (N k) on, ``auto`` takes ``fast``: below it the bf16
# pass's fixed costs ate its gain on the benchmark machine (100k rows, keep 10 %).
_AUTO_FAST_PAIRS = 5 * 10**9


def _on_device(x, device: str) -> str | None:
    """The torch device name when the greedy runs device-resident
    (:mod:`synth_empathy.core.kcenter.device`), None for the numpy path.

    ``auto`` is CUDA when torch sees a GPU (or the input is already a CUDA tensor);
    ``torch-cpu`` runs the device code on the CPU, so CI tests the GPU's code path."""
    tensor_dev = _tensor_device(x)
    if device == "cpu":
        if tensor_dev is not None and tensor_dev != "cpu":
            raise SelectionError(f"device 'cpu' asked for, but the embeddings are on {tensor_dev}")
        return None
    if device == "auto":
        if tensor_dev is not None and tensor_dev != "cpu":
            return tensor_dev
        try:
            import torch
        except ImportError:  # no torch, no GPU to use
            return None
        return "cuda" if torch.cuda.is_available() else None
    if device == "torch-cpu" or device == "cuda" or device.startswith("cuda:"):
        if device != "torch-cpu":
            try:
                import torch
            except ImportError:
                raise SelectionError(f"device {device!r} needs torch with CUDA") from None
            if not torch.cuda.is_available():
                raise SelectionError(f"device {device!r} asked for, but no GPU is visible")
        return device
    raise SelectionError(f"device must be auto, cpu or cuda, got {device!r}")


def _greedy(
    x, k: int, start: int, *, device: str = "cpu", fast: bool = False, pool_size: int = 2048, storage: str = "auto"
):
    """Farthest-first; returns (indices, distance_at_pick, radius, details, device)."""
    x = _check_matrix(x)
    n = x.shape[0]
    k = resolve_k(n, k, None)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < n:
        raise SelectionError(f"start must be a row index in [0, {n}), got {start!r}")
    start = int(start)
    on = _on_device(x, device)
    if on is not None:
        return device_greedy(x, k, start, device=on, fast=fast, storage=storage)
    return lazy_greedy(x, k, start, fast=fast, pool_size=pool_size)


def greedy_k_center(x: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Exact farthest-first traversal from row ``start``: int64 row indices in pick order.

    Ties go to the lowest row index. Same picks as the plain O(N k d) form.
    """
    return _greedy(x, k, start, device="cpu")[0]

"""How the sharded k-center splits rows into shards: at random, or by k-means (locality).

* ``random`` - a seeded permutation cut into equal parts; every shard is a thinned copy
  of the whole space.
* ``kmeans`` - k-means with one centroid per shard, trained (seeded) on a bounded
  sample of the rows, then every row goes to its nearest centroid; each shard is a
  region of the space. On a GPU ``faiss.Kmeans`` (when ``faiss.get_num_gpus()`` sees
  one), else a plain numpy Lloyd iteration: on the CPU it matched FAISS's objective and
  time at this sample size (benchmarks/README.md). k-means regions are often lopsided, and the
  largest shard sets the wall time of the map, so rows over a cap of ``balance`` x the
  mean shard size move to their next-nearest centroid with room (the rows closest to
  a centroid stay).

The composable-coreset bound of the sharded method (4 x OPT with ``k`` centers per
shard) holds for any split; the split only changes how fast it runs and how many rows
the merge sees. Pure: no Ray, no I/O.
"""

from __future__ import annotations

import numpy as np

from synth_empathy.errors import SelectionError

SPLITS = ("random", "kmeans")
TRAIN_ROWS_PER_SHARD = 1024  # k-means sample: enough for stable centroids, bounded cost
TRAIN_ROWS_MAX = 65536
_BLOCK = 65536


def random_split(n: int, shards: int, seed: int) -> list[np.ndarray]:
    """``shards`` sorted index arrays of sizes differing by at most one."""
    return [np.sort(p) for p in np.array_split(np.random.default_rng(seed).permutation(n), shards)]


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _sq_to_centroids(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(len(x), len(c)) squared distances, float32, by one BLAS product per block."""
    cn = np.einsum("ij,ij->i", c, c)
    out = np.empty((len(x), len(c)), dtype=np.float32)
    for i in range(0, len(x), _BLOCK):
        b = np.asarray(x[i : i + _BLOCK], dtype=np.float32)
        g = b @ (-2.0 * c).T
        g += cn[None, :]
        g += np.einsum("ij,ij->i", b, b)[:, None]
        out[i : i + _BLOCK] = np.maximum(g, 0.0)
    return out


def _lloyd(sample: np.ndarray, m: int, seed: int, niter: int) -> np.ndarray:
    """Plain k-means (numpy): seeded distinct-row start, ``niter`` Lloyd steps; an empty
    cluster takes the row farthest from its centroid."""
    r = np.random.default_rng(seed)
    c = sample[r.choice(len(sample), size=m, replace=False)].copy()
    for _ in range(niter):
        d2 = _sq_to_centroids(sample, c)
        lab = d2.argmin(axis=1)
        counts = np.bincount(lab, minlength=m)
        onehot = np.zeros((m, len(sample)), dtype=np.float32)
        onehot[lab, np.arange(len(sample))] = 1.0
        # Cluster sums as one BLAS product, written (sample^T onehot^T)^T: the plain
        # onehot @ sample (a few rows out) and np.add.at were both many times slower.
        sums = (sample.T @ onehot.T).T
        full = counts > 0
        c[full] = sums[full] / counts[full, None]
        if not full.all():
            far = np.argsort(-d2[np.arange(len(sample)), lab], kind="stable")
            c[~full] = sample[far[: int((~full).sum())]]
    return c


def kmeans_centroids(x: np.ndarray, m: int, seed: int, niter: int = 20, backend: str = "auto"):
    """(m, d) float32 centroids from a seeded sample of at most
    ``min(TRAIN_ROWS_MAX, TRAIN_ROWS_PER_SHARD * m)`` rows; returns (centroids, backend used)."""
    n = len(x)
    size = min(n, TRAIN_ROWS_MAX, max(TRAIN_ROWS_PER_SHARD * m, m))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    sample = np.ascontiguousarray(x[rows], dtype=np.float32)
    # FAISS only where it earns its place: on a GPU. On the CPU the numpy Lloyd step is
    # as fast or faster at this sample size (benchmarks/README.md), one dependency less.
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise SelectionError("k-means with backend faiss needs the faiss package (pip install faiss-cpu)")
    gpu = faiss is not None and faiss.get_num_gpus() > 0
    if faiss is None or (backend == "auto" and not gpu):
        return _lloyd(sample, m, seed, niter), "numpy"
    km = faiss.Kmeans(
        sample.shape[1],
        m,
        niter=niter,
        seed=int(seed) % 2**31,
        gpu=gpu,
        max_points_per_centroid=size,  # the sample is already bounded: no second subsample
        min_points_per_centroid=1,
    )
    km.train(sample)
    return np.asarray(km.centroids, dtype=np.float32).reshape(m, -1), "faiss-gpu" if gpu else "faiss"


def balanced_assign(d2: np.ndarray, cap: int) -> np.ndarray:
    """Nearest centroid per row, but no centroid takes more than ``cap`` rows: a full
    centroid keeps the rows closest to it and passes the others on to their next choice.
    Deterministic (ties to the lower row index); needs ``cap * m >= n``."""
    n, m = d2.shape
    if cap * m < n:
        raise SelectionError(f"cannot place {n} rows in {m} shards of at most {cap}")
    pref = np.argsort(d2, axis=1, kind="stable")  # each row's centroids, nearest first
    lab = np.full(n, -1, dtype=np.int64)
    room = np.full(m, cap, dtype=np.int64)
    rank = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        want = pref[todo, rank[todo]]
        nxt = []
        for c in np.unique(want):
            rows = todo[want == c]
            if rows.size > room[c]:
                rows = rows[np.lexsort((rows, d2[rows, c]))]  # closest first
                nxt.append(rows[room[c] :])
                rows = rows[: room[c]]
            lab[rows] = c
            room[c] -= rows.size
        todo = np.sort(np.concatenate(nxt)) if nxt else np.zeros(0, dtype=np.int64)
        rank[todo] += 1
    return lab


def kmeans_split(
    x: np.ndarray, shards: int, seed: int, balance: float | None = 1.5, backend: str = "auto"
) -> tuple[list[np.ndarray], dict]:
    """``shards`` non-empty sorted index arrays, one k-means region each, and what was done.

    ``balance``: no shard holds more than ``ceil(balance * n / shards)`` rows (None: plain
    nearest-centroid regions, however lopsided). A region left empty (duplicate
    centroids) takes rows from the largest one, so every shard has rows.
    """
    n = len(x)
    if shards <= 1:
        return [np.arange(n)], {"split": "kmeans", "sizes": [n]}
    c, used = kmeans_centroids(x, shards, seed, backend=backend)
    d2 = _sq_to_centroids(x, c)
    plain = d2.argmin(axis=1)
    raw = np.bincount(plain, minlength=shards)
    lab = plain
    if balance is not None:
        lab = balanced_assign(d2, max(int(np.ceil(balance * n / shards)), -(-n // shards)))
    parts = [np.flatnonzero(lab == s) for s in range(shards)]
    for s in range(shards):  # empty regions: split the largest shard's far half off
        if parts[s].size == 0:
            big = max(range(shards), key=lambda i: (parts[i].size, -i))
            far = parts[big][np.argsort(-d2[parts[big], big], kind="stable")]
            half = far.size // 2
            parts[s], parts[big] = np.sort(far[:half]), np.sort(far[half:])
    sizes = [int(p.size) for p in parts]
    info = {"split": "kmeans", "kmeans": used, "sizes": sizes, "sizes_before_balance": raw.tolist()}
    return parts, info


def split(
    x: np.ndarray, shards: int, seed: int, how: str = "random", kmeans_backend: str = "auto"
) -> tuple[list[np.ndarray], dict]:
    """Shard index arrays for the sharded k-center, by ``how`` (``random`` or ``kmeans``);
    ``kmeans_backend`` ``numpy`` keeps k-means off a GPU."""
    if how not in SPLITS:
        raise SelectionError(f"shard_by must be one of {', '.join(SPLITS)}, got {how!r}")
    if how == "kmeans":
        return kmeans_split(x, shards, seed, backend=kmeans_backend)
    parts = random_split(len(x), shards, seed)
    return parts, {"split": "random", "sizes": [int(p.size) for p in parts]}

"""Near-duplicate removal before selection (semantic dedup, as SemDeDup does).

Rows are taken in order (the pipeline's order is ``sample_id``): a row is kept unless its
cosine similarity to an earlier *kept* row is at least ``threshold``. A row dropped for
being close to row 3 therefore cannot drop anything itself, and the result depends only
on the rows and their order. Each dropped row records the lowest-indexed kept row it
was close to.

Exact: every row is compared with every earlier kept row, N^2/2 dot products at most
(O(N^2 d)), in blocks of rows against blocks of columns so memory stays bounded; the
products are plain BLAS (numpy), FAISS's flat inner-product range search, or torch (IEEE
float32, the same algorithm), whichever ``backend`` says. ``auto`` is torch when
``device`` is a GPU (``auto`` = CUDA when torch sees one), else numpy, measured faster
than FAISS on the CPU (benchmarks/README.md, k-center section). Pure: no Ray, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth_empathy.errors import SelectionError

BACKENDS = ("auto", "numpy", "faiss", "torch")
_ROWS = 4096  # rows per block: the block x block in-block product is 64 MiB
_COLS = 16384  # earlier rows per product: a 4096 x 16384 float32 block is 256 MiB
_EPS = 1e-6  # float32 rounding: a copy of a row must reach threshold 1.0


@dataclass
class NearDuplicates:
    """``keep``: ascending indices of the rows kept; ``dup_of[i]``: for a dropped row, the
    lowest-indexed earlier kept row within the threshold, -1 for a kept row."""

    keep: np.ndarray
    dup_of: np.ndarray
    threshold: float

    @property
    def dropped(self) -> int:
        return int(len(self.dup_of) - len(self.keep))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, 1e-12))  # a zero row stays zero: cosine 0


def check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if isinstance(threshold, bool) or not (0.0 < t <= 1.0):  # also false for NaN
        raise SelectionError(f"near_duplicate_cosine must be in (0, 1], got {threshold!r}")
    return t


def _first_hits_numpy(xu, kept_mask, s, b, t):
    """For block rows b (a slice s:e of xu), the lowest earlier kept row (< s) with
    cosine >= t, or -1."""
    first = np.full(len(b), -1, dtype=np.int64)
    for c in range(0, s, _COLS):
        ce = min(s, c + _COLS)
        cols = np.flatnonzero(kept_mask[c:ce])
        if cols.size == 0:
            continue
        # only rows still without a hit need the columns (hits come from lower columns first)
        open_ = np.flatnonzero(first < 0)
        if open_.size == 0:
            break
        sims = b[open_] @ xu[c + cols].T if cols.size < ce - c else b[open_] @ xu[c:ce].T
        hit = sims >= t
        any_ = hit.any(axis=1)
        first[open_[any_]] = c + cols[hit[any_].argmax(axis=1)]
    return first


class _FaissKept:
    """The kept rows so far in a FAISS flat inner-product index, added block by block."""

    def __init__(self, d: int):
        import faiss

        self.index = faiss.IndexFlatIP(d)
        self.ids: list[np.ndarray] = []  # index position -> row index

    def first_hits(self, b, t):
        first = np.full(len(b), -1, dtype=np.int64)
        if self.index.ntotal == 0:
            return first
        lims, _, labels = self.index.range_search(b, t - 1e-7)  # range search keeps IP > radius
        ids = np.concatenate(self.ids)
        for i in np.flatnonzero(np.diff(lims)):
            first[i] = ids[labels[lims[i] : lims[i + 1]]].min()
        return first

    def add(self, rows, xu):
        if len(rows):
            self.index.add(xu[rows])
            self.ids.append(rows)


def _torch_device(backend: str, device: str):
    """The torch device for ``backend``, or None for numpy / FAISS."""
    if backend in ("numpy", "faiss"):
        return None
    if backend == "auto":
        if device in ("cpu", "torch-cpu"):
            return None
        try:
            import torch
        except ImportError:
            return None
        if device == "auto" and not torch.cuda.is_available():
            return None
        device = "cuda" if device == "auto" else device
    from synth_empathy.core.kcenter.device import resolve_device

    return resolve_device("torch-cpu" if device in ("cpu", "auto") else device)


def _near_duplicates_torch(xu: np.ndarray, te: float, dev) -> tuple[np.ndarray, np.ndarray]:
    """The numpy loop's twin on a torch device: (dup_of, kept mask), the same rows kept."""
    import torch

    from synth_empathy.core.kcenter.device import _fp32_products

    rows, cols_per = (_ROWS, _COLS) if dev.type == "cpu" else (4 * _ROWS, 2 * _COLS)  # fewer syncs
    n = len(xu)
    xt = torch.from_numpy(xu).to(dev)
    kept = torch.zeros(n, dtype=torch.bool, device=dev)
    dup_of = np.full(n, -1, dtype=np.int64)
    with _fp32_products(tf32=False):
        for s in range(0, n, rows):
            e = min(n, s + rows)
            b = xt[s:e]
            first = torch.full((e - s,), -1, dtype=torch.int64, device=dev)
            for c in range(0, s, cols_per):
                ce = min(s, c + cols_per)
                cols = torch.nonzero(kept[c:ce]).squeeze(1)
                open_ = torch.nonzero(first < 0).squeeze(1)
                if cols.numel() == 0 or open_.numel() == 0:
                    continue
                hit = (b[open_] @ xt[c + cols].T) >= te
                any_ = hit.any(dim=1)
                # argmax returns the first maximum: the lowest kept column within the threshold
                first[open_[any_]] = c + cols[hit[any_].to(torch.uint8).argmax(dim=1)]
            first = first.cpu().numpy()
            dup_of[s:e] = first
            alive = np.flatnonzero(first < 0)
            at = torch.from_numpy(alive).to(dev)
            near = torch.triu((b[at] @ b[at].T) >= te, diagonal=1)
            has = torch.nonzero(near.any(dim=1)).squeeze(1)
            dead = np.zeros(len(alive), dtype=bool)
            if has.numel():
                sub = near[has].cpu().numpy()  # only rows with an in-block neighbour travel
                for r, i in enumerate(has.cpu().numpy()):
                    if not dead[i]:
                        js = np.flatnonzero(sub[r] & ~dead)
                        dead[js] = True
                        dup_of[s + alive[js]] = s + alive[i]
            kept[torch.from_numpy(s + alive[~dead]).to(dev)] = True
    return dup_of, kept.cpu().numpy()


def near_duplicates(x, threshold: float, backend: str = "auto", device: str = "cpu") -> NearDuplicates:
    """Keep each row unless its cosine to an earlier kept row is >= ``threshold`` (exact).

    ``device`` (``cpu``, ``auto``, ``cuda[:i]``, ``torch-cpu``) decides ``auto``: torch on a
    GPU, where the N^2/2 products take seconds rather than minutes, else numpy."""
    t = check_threshold(threshold)
    if backend not in BACKENDS:
        raise SelectionError(f"near-duplicate backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    x = np.asarray(x)
    if x.ndim != 2:
        raise SelectionError(f"embeddings must be a 2-D array (rows x dims), got shape {x.shape}")
    n = len(x)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1)) if np.issubdtype(x.dtype, np.floating) else []
    if len(bad):  # NaN compares false and would be kept silently; name the row here
        raise SelectionError(f"row {int(bad[0])}: embedding has NaN or infinite values")
    xu = _unit(x)
    te = np.float32(t - _EPS)
    dev = _torch_device(backend, device)
    if dev is not None:
        dup_of, kept_mask = _near_duplicates_torch(xu, float(te), dev)
        return NearDuplicates(keep=np.flatnonzero(kept_mask), dup_of=dup_of, threshold=t)
    dup_of = np.full(n, -1, dtype=np.int64)
    kept_mask = np.zeros(n, dtype=bool)
    fx = _FaissKept(x.shape[1]) if backend == "faiss" else None
    for s in range(0, n, _ROWS):
        e = min(n, s + _ROWS)
        b = xu[s:e]
        first = fx.first_hits(b, float(te)) if fx else _first_hits_numpy(xu, kept_mask, s, b, te)
        dup_of[s:e] = first
        alive = np.flatnonzero(first < 0)  # not close to any earlier block's kept row
        # Inside the block, in order: a kept row drops its later neighbours.
        sims = b[alive] @ b[alive].T
        near = np.triu(sims >= te, k=1)
        dead = np.zeros(len(alive), dtype=bool)
        for i in np.flatnonzero(near.any(axis=1)):  # ascending: the lowest keeper first
            if not dead[i]:
                js = np.flatnonzero(near[i] & ~dead)
                dead[js] = True
                dup_of[s + alive[js]] = s + alive[i]
        kept = s + alive[~dead]
        kept_mask[kept] = True
        if fx:
            fx.add(kept, xu)
    return NearDuplicates(keep=np.flatnonzero(kept_mask), dup_of=dup_of, threshold=t)


def drop_near_duplicates(x, threshold, k: int | None = None, ratio: float | None = None, device: str = "cpu"):
    """The selection's step before k-center: (rows kept, the result, k for those rows).

    ``threshold`` None: nothing dropped. ``k`` larger than the rows left raises a one-line
    :class:`SelectionError`; ``ratio`` applies to the rows left."""
    from synth_empathy.core.kcenter import resolve_k

    n = len(x)
    if threshold is None:
        return np.arange(n), None, resolve_k(n, k, ratio)
    nd = near_duplicates(x, threshold, device=device)
    left = len(nd.keep)
    try:
        too_many = k is not None and not isinstance(k, bool) and int(k) == k and int(k) > left
    except (TypeError, ValueError):
        too_many = False  # resolve_k names what is wrong with k
    if too_many:
        raise SelectionError(
            f"k={int(k)} is larger than the {left} rows left after near-duplicate removal "
            f"({nd.dropped} of {n} rows within cosine {nd.threshold:g} of an earlier kept row)"
        )
    return nd.keep, nd, resolve_k(left, k, ratio)

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
than FAISS on the CPU (benchmarks/README.md, k-center section).

Approximate (``index`` ``ivf`` or ``hnsw``; ``auto`` chooses it from :data:`AUTO_ROWS` rows
up): the same loop, block by block in row order with the same exact pass inside each
block, but "is an earlier kept row within the threshold?" is asked of a FAISS index of
the kept rows (an inverted file, ``IndexIVFFlat``, or a graph, ``IndexHNSWFlat``, both
inner product on the unit rows, the kept rows added after each block) for each row's
:data:`_K` nearest kept rows. The index stores the rows uncompressed, so every cosine it
returns is exact: a row dropped always has a kept row within the threshold. What can
differ from exact:

* a row whose kept neighbours within the threshold all lie outside what the index
  searched (IVF cells not probed, HNSW graph paths not taken) is *kept* (a missed drop);
  being kept, it can then drop a later row that exact keeps, or stand where exact's
  keeper would have dropped it (the order rule cascades from a miss);
* ``dup_of`` is the lowest-indexed kept row among the :data:`_K` nearest the index
  found within the threshold, not necessarily the lowest of all;
* HNSW inserts a block's kept rows on several threads, so its graph, and which rows
  it misses, can differ from run to run; IVF (seeded k-means on a seeded sample of all
  rows) gives the same result for the same rows on the same machine.

With every such neighbour found the result is identical to exact. How many are missed
is measured (:func:`compare` against exact, benchmarks/near_duplicates_bench.py: recall
of exact's dropped rows at 100k rows), and each approximate run audits itself
(:func:`audit`: a seeded sample of its kept rows checked exactly against all earlier kept
rows; a kept row with one within the threshold is a missed drop). On a machine where
``faiss.get_num_gpus()`` sees a GPU the IVF index runs there (``GpuIndexIVFFlat``,
untested here); HNSW stays on the CPU. Pure: no Ray, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth_empathy.errors import SelectionError

BACKENDS = ("auto", "numpy", "faiss", "torch")
INDEXES = ("auto", "exact", "ivf", "hnsw")
#: ``index=auto`` is approximate (IVF) from this many rows. Below it exact takes seconds and is
#: exact; at 11k rows IVF took 0.9-1.6x exact's time, at 100k 0.3-0.5x with every pair found,
#: at 1M about 1/15 of its CPU time (benchmarks/README.md, "Near duplicates at 1M rows").
AUTO_ROWS = 50_000
#: ... and from this many where exact runs on a GPU through torch: an estimate, not measured
#: (N^2/2 float32 products, 4e14 multiply-adds at 1M, seconds on a GPU that does tens of TFLOP/s).
AUTO_ROWS_GPU = 2_000_000
#: Parameters of each approximate index, with their defaults (``auto``: from the rows).
INDEX_PARAMS: dict[str, dict[str, object]] = {
    "ivf": {"nlist": "auto", "nprobe": 16},
    "hnsw": {"m": 32, "ef_search": 64, "ef_construction": 64},
}
_APPROX_ROWS = 1024  # rows per block with an approximate index: the exact in-block pass costs N x this
_K = 8  # nearest kept rows asked per row by an approximate index
_AUDIT = 1000  # kept rows an approximate run checks exactly
_OPTION = "diversity.near_duplicate_index"
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
    method: str = "exact"  # exact/<backend>, or the approximate index with its parameters
    audit: dict | None = None  # approximate only, from drop_near_duplicates: see audit()

    @property
    def approximate(self) -> bool:
        return not self.method.startswith("exact")

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


def parse_index(spec) -> tuple[str, dict]:
    """``auto``, ``exact``, ``ivf[:nlist=N,nprobe=N]`` or ``hnsw[:m=N,ef_search=N,ef_construction=N]``
    as (name, parameters with their defaults); anything else a one-line
    :class:`SelectionError` naming :data:`_OPTION`."""
    forms = "auto, exact, ivf[:nlist=N,nprobe=N] or hnsw[:m=N,ef_search=N,ef_construction=N]"
    if not isinstance(spec, str):
        raise SelectionError(f"{_OPTION} must be {forms}, got {spec!r}")
    name, _, rest = spec.strip().lower().partition(":")
    if name not in INDEXES:
        raise SelectionError(f"{_OPTION} must be {forms}, got {spec!r}")
    if rest and name not in INDEX_PARAMS:
        raise SelectionError(f"{_OPTION}: {name} takes no parameters, got {spec!r}")
    params = dict(INDEX_PARAMS.get(name, {}))
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, eq, value = (p.strip() for p in item.partition("="))
        if key not in params or not eq:
            raise SelectionError(f"{_OPTION}: {name} takes {', '.join(f'{k}=N' for k in params)}, got {item!r}")
        if key == "nlist" and value == "auto":
            params[key] = value
            continue
        least = 2 if key == "m" else 1
        try:
            v = int(value)
        except ValueError:
            v = 0
        if not value.isdigit() or v < least or v > 1_000_000:
            raise SelectionError(f"{_OPTION}: {key} must be a whole number in [{least}, 1000000], got {value!r}")
        params[key] = v
    return name, params


def _auto_nlist(n: int) -> int:
    """IVF cells for n rows: about 2 sqrt(n) (2,000 at 1M: each row scans nprobe/nlist of the
    kept rows, and finds its cells among nlist centroids), at most n/40 (the k-means sample
    is 40 rows a cell)."""
    return int(max(1, min(round(2 * np.sqrt(n)), n // 40)))


class _IndexKept:
    """The kept rows so far in an approximate FAISS index (uncompressed, inner product):
    the :class:`_FaissKept` interface, each row asking for its :data:`_K` nearest kept rows."""

    def __init__(self, name: str, params: dict, xu: np.ndarray):
        import faiss

        n, d = xu.shape
        self.gpu = None
        if name == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, params["m"], faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = params["ef_construction"]
            self.index.hnsw.efSearch = params["ef_search"]
            self.params = dict(params)
        else:
            nlist = _auto_nlist(n) if params["nlist"] == "auto" else min(params["nlist"], n)
            nprobe = min(params["nprobe"], nlist)
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = 1234  # FAISS's default, written down: the cells depend on the rows only
            train = min(n, 40 * nlist)  # a seeded sample of all rows, not only the first
            pick = np.sort(np.random.default_rng(0).choice(n, train, replace=False)) if train < n else slice(None)
            self.index.train(xu[pick])
            self.index.nprobe = nprobe
            self.quantizer = quantizer  # the IVF index does not own it
            self.params = {"nlist": nlist, "nprobe": nprobe}
            if faiss.get_num_gpus() > 0:  # pragma: no cover - no GPU FAISS here
                self.gpu = faiss.StandardGpuResources()
                self.index = faiss.index_cpu_to_gpu(self.gpu, 0, self.index)
        self.name = name
        self.rows = np.empty(n, dtype=np.int64)  # index position -> row index

    @property
    def method(self) -> str:
        where = "gpu" if self.gpu is not None else "cpu"
        return f"{self.name}({','.join(f'{k}={v}' for k, v in self.params.items())},k={_K},{where})"

    def first_hits(self, b, t):
        first = np.full(len(b), -1, dtype=np.int64)
        total = self.index.ntotal
        if total == 0:
            return first
        sims, pos = self.index.search(b, min(_K, total))
        hit = (sims >= t) & (pos >= 0)
        rows = np.where(hit, self.rows[np.maximum(pos, 0)], np.iinfo(np.int64).max).min(axis=1)
        found = hit.any(axis=1)
        first[found] = rows[found]
        return first

    def add(self, rows, xu):
        if len(rows):
            total = self.index.ntotal
            self.index.add(xu[rows])
            self.rows[total : total + len(rows)] = rows


def resolve_index(index, n: int, on_gpu: bool = False) -> tuple[str, dict]:
    """The index ``index`` names for n rows: ``auto`` is exact below :data:`AUTO_ROWS` rows
    (below :data:`AUTO_ROWS_GPU` where exact runs on a GPU through torch), else IVF."""
    name, params = parse_index(index)
    if name == "auto":
        if n < (AUTO_ROWS_GPU if on_gpu else AUTO_ROWS):
            return "exact", {}
        return "ivf", dict(INDEX_PARAMS["ivf"])
    return name, params


def audit(x, nd: NearDuplicates, rows: int = _AUDIT, seed: int = 0) -> dict:
    """Check a seeded sample of ``rows`` kept rows exactly: does an earlier kept row lie
    within the threshold? Each one that does is a drop the run missed (exact on the
    same kept set would have dropped it). Costs ``rows`` x kept dot products."""
    xu = _unit(x)
    keep = nd.keep
    m = min(rows, len(keep))
    if m == 0:
        return {"rows": 0, "missed": 0, "missed_share": 0.0, "estimated_missed_drops": 0}
    ask = np.sort(np.random.default_rng(seed).choice(len(keep), m, replace=False))
    te = np.float32(nd.threshold - _EPS)
    missed = np.zeros(m, dtype=bool)
    q = xu[keep[ask]]
    for c in range(0, len(keep), _COLS):
        cols = keep[c : c + _COLS]
        hit = (q @ xu[cols].T) >= te
        hit &= cols[None, :] < keep[ask][:, None]  # earlier kept rows only
        missed |= hit.any(axis=1)
    k = int(missed.sum())
    return {
        "rows": m,
        "missed": k,
        "missed_share": k / m,
        "estimated_missed_drops": int(round(k / m * len(keep))),
    }


def compare(exact: NearDuplicates, approx: NearDuplicates) -> dict:
    """How an approximate result agrees with exact on the same rows: ``recall`` = share of
    exact's dropped rows that approx also dropped (1.0 when exact dropped none),
    ``precision`` = share of approx's dropped rows that exact dropped too, ``agreement`` =
    share of all rows with the same keep/drop decision, ``same_dup_of`` = share of the rows
    both dropped recorded against the same kept row."""
    n = len(exact.dup_of)
    if len(approx.dup_of) != n:
        raise ValueError(f"results of different row counts: {n} and {len(approx.dup_of)}")
    de, da = exact.dup_of >= 0, approx.dup_of >= 0
    both = de & da
    return {
        "rows": n,
        "exact_dropped": int(de.sum()),
        "approx_dropped": int(da.sum()),
        "both_dropped": int(both.sum()),
        "recall": float(both.sum() / de.sum()) if de.any() else 1.0,
        "precision": float(both.sum() / da.sum()) if da.any() else 1.0,
        "agreement": float((de == da).mean()) if n else 1.0,
        "same_dup_of": float((exact.dup_of[both] == approx.dup_of[both]).mean()) if both.any() else 1.0,
        "same_keep": bool(np.array_equal(exact.keep, approx.keep)),
    }


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


def near_duplicates(
    x, threshold: float, backend: str = "auto", device: str = "cpu", index: str = "auto"
) -> NearDuplicates:
    """Keep each row unless its cosine to an earlier kept row is >= ``threshold``.

    ``index`` (:func:`parse_index`): ``exact``, ``ivf`` or ``hnsw`` (approximate, see the
    module), ``auto`` = exact below :data:`AUTO_ROWS` rows, else ``ivf``. Exact:
    ``device`` (``cpu``, ``auto``, ``cuda[:i]``, ``torch-cpu``) decides ``backend`` ``auto``:
    torch on a GPU, where the N^2/2 products take seconds rather than minutes, else numpy."""
    t = check_threshold(threshold)
    if backend not in BACKENDS:
        raise SelectionError(f"near-duplicate backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    parse_index(index)  # a bad name fails before the rows are looked at
    x = np.asarray(x)
    if x.ndim != 2:
        raise SelectionError(f"embeddings must be a 2-D array (rows x dims), got shape {x.shape}")
    n = len(x)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1)) if np.issubdtype(x.dtype, np.floating) else []
    if len(bad):  # NaN compares false and would be kept silently; name the row here
        raise SelectionError(f"row {int(bad[0])}: embedding has NaN or infinite values")
    dev = _torch_device(backend, device)
    name, params = resolve_index(index, n, on_gpu=dev is not None and dev.type == "cuda")
    xu = _unit(x)
    te = np.float32(t - _EPS)
    if name == "exact" and dev is not None:
        dup_of, kept_mask = _near_duplicates_torch(xu, float(te), dev)
        return NearDuplicates(np.flatnonzero(kept_mask), dup_of, t, f"exact/torch-{dev.type}")
    dup_of = np.full(n, -1, dtype=np.int64)
    kept_mask = np.zeros(n, dtype=bool)
    if name != "exact":
        fx = _IndexKept(name, params, xu) if n else None
        method = fx.method if fx else name
    else:
        fx = _FaissKept(x.shape[1]) if backend == "faiss" else None
        method = f"exact/{'faiss' if fx else 'numpy'}"
    step = _ROWS if name == "exact" else _APPROX_ROWS
    for s in range(0, n, step):
        e = min(n, s + step)
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
    return NearDuplicates(np.flatnonzero(kept_mask), dup_of, t, method)


def drop_near_duplicates(
    x, threshold, k: int | None = None, ratio: float | None = None, device: str = "cpu", index: str = "auto"
):
    """The selection's step before k-center: (rows kept, the result, k for those rows).

    ``threshold`` None: nothing dropped. ``k`` larger than the rows left raises a one-line
    :class:`SelectionError`; ``ratio`` applies to the rows left. An approximate ``index``
    result carries its :func:`audit` (missed drops in a sample of the kept rows)."""
    from synth_empathy.core.kcenter import resolve_k

    n = len(x)
    if threshold is None:
        return np.arange(n), None, resolve_k(n, k, ratio)
    nd = near_duplicates(x, threshold, device=device, index=index)
    if nd.approximate:
        nd.audit = audit(x, nd)
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

"""FAISS against plain BLAS (numpy) for the three selection steps that may use it:

0. k-means centroids for the k-means shard split (``synth_empathy.core.shard_split``):
   numpy Lloyd vs ``faiss.Kmeans``, same seeded sample, 20 iterations; objective
   (sum of squared distances of all rows to their nearest centroid) beside the time;
1. near-duplicate removal (``synth_empathy.core.near_duplicates``, exact): backend
   ``numpy`` (blocked products against the earlier kept rows) vs ``faiss``
   (``IndexFlatIP.range_search`` over the kept rows, added block by block); both must
   keep the same rows;
2. the nearest-neighbour diversity metric (``nearest_neighbour_distances``): numpy
   blocked products vs ``IndexFlatL2.search(k=2)``, same asked rows.

Data: ``clustered_unit_vectors`` (benchmarks/kcenter_bench.py) with a share of rows
replaced by near copies of other rows (cosine about 0.98), shuffled: a corpus that
repeats itself. One process, methods alternated, median of ``--repeats``.

    PYTHONPATH=. .venv/bin/python benchmarks/faiss_bench.py            # 100k x 384
    PYTHONPATH=. .venv/bin/python benchmarks/faiss_bench.py --rows 20000
    PYTHONPATH=. python benchmarks/faiss_bench.py --device cuda     # + torch on the GPU

Results go to benchmarks/out/faiss.jsonl and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from kcenter_bench import OUT, clustered_unit_vectors
from machine import cpu_name


def repeating_corpus(n: int, copies: float = 0.2, d: int = 384, seed: int = 0) -> np.ndarray:
    """``n`` unit rows, ``copies`` of them near copies (cosine ~0.98) of other rows."""
    r = np.random.default_rng(seed)
    m = int(n * (1 - copies))
    x = np.empty((n, d), dtype=np.float32)
    x[:m] = clustered_unit_vectors(m, d, seed)
    src = r.integers(0, m, n - m)
    noisy = x[src] + np.float32(0.2 / np.sqrt(d)) * r.standard_normal((n - m, d), dtype=np.float32)
    x[m:] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return x[r.permutation(n)]


def faiss_nn(x: np.ndarray, ask: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    dist, ids = index.search(x[ask], 2)
    own = ids[:, 0] == ask  # with exact copies the row itself may come second
    d2 = np.where(own, dist[:, 1], dist[:, 0])
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float64)


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None) -> int:
    from synth_empathy.core.diversity_metrics import nearest_neighbour_distances
    from synth_empathy.core.near_duplicates import near_duplicates

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--device", help="also time near-duplicate removal through torch here (cuda, torch-cpu)")
    a = p.parse_args(argv)
    x = repeating_corpus(a.rows)
    row = {"date": dt.date.today().isoformat(), "cpu": cpu_name(), "rows": a.rows, "d": x.shape[1]}
    row.update(threshold=a.threshold, load=[os.getloadavg()[0]])
    from synth_empathy.core.shard_split import _sq_to_centroids, kmeans_centroids

    km = {}
    for m in (4, 8):
        for backend in ("numpy", "faiss"):
            sec, (c, _) = timed(lambda b=backend, m=m: kmeans_centroids(x, m, seed=0, backend=b), max(2, a.repeats))
            km[f"{m}/{backend}"] = {"seconds": sec, "objective": float(_sq_to_centroids(x, c).min(axis=1).sum())}
    row["kmeans"] = km
    dedup = {}
    for backend in ("numpy", "faiss"):
        sec, res = timed(lambda b=backend: near_duplicates(x, a.threshold, backend=b, index="exact"), a.repeats)
        dedup[backend] = {"seconds": sec, "kept": len(res.keep), "keep": res.keep}
    if a.device:
        sec, res = timed(lambda: near_duplicates(x, a.threshold, "torch", a.device, index="exact"), a.repeats)
        dedup["torch"] = {"seconds": sec, "kept": len(res.keep), "keep": res.keep, "device": a.device}
        assert np.array_equal(dedup["numpy"]["keep"], res.keep), "torch and numpy disagree"
    assert np.array_equal(dedup["numpy"]["keep"], dedup["faiss"]["keep"]), "backends disagree"
    row["near_duplicates"] = {b: {k: v[k] for k in v if k != "keep"} for b, v in dedup.items()}
    nn = {}
    for m in sorted({min(10_000, a.rows), min(90_000, a.rows)}):
        s = x[:m]
        ask = np.sort(np.random.default_rng(0).choice(m, a.queries, replace=False))
        t_np, v_np = timed(lambda s=s: nearest_neighbour_distances(s, a.queries, seed=0), a.repeats)
        t_fa, v_fa = timed(lambda s=s, ask=ask: faiss_nn(s, ask), a.repeats)
        nn[m] = {"numpy": t_np, "faiss": t_fa, "max_abs_diff": float(np.abs(v_np - v_fa).max())}
    row["nn_metric"] = nn
    row["load"].append(os.getloadavg()[0])
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "faiss.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    nd = row["near_duplicates"]
    print(f"{row['cpu']}; load {row['load'][0]:.1f}-{row['load'][1]:.1f}")
    print("| step | rows | numpy s | FAISS s | FAISS / numpy | note |\n| --- | ---: | ---: | ---: | ---: | --- |")
    for m in (4, 8):
        n_, f_ = km[f"{m}/numpy"], km[f"{m}/faiss"]
        print(
            f"| k-means, {m} centroids, sample {min(a.rows, 1024 * m):,} rows, 20 iterations | {a.rows:,} "
            f"| {n_['seconds']:.2f} | {f_['seconds']:.2f} | {f_['seconds'] / n_['seconds']:.2f} "
            f"| objective numpy / FAISS {n_['objective'] / f_['objective']:.4f} |"
        )
    print(
        f"| near-duplicate removal, cosine >= {a.threshold:g} | {a.rows:,} | {nd['numpy']['seconds']:.1f} "
        f"| {nd['faiss']['seconds']:.1f} | {nd['faiss']['seconds'] / nd['numpy']['seconds']:.2f} "
        f"| {a.rows - nd['numpy']['kept']:,} dropped, same rows kept |"
    )
    if "torch" in nd:
        print(
            f"| near-duplicate removal through torch on {a.device} | {a.rows:,} | {nd['numpy']['seconds']:.1f} "
            f"| torch {nd['torch']['seconds']:.2f} | {nd['torch']['seconds'] / nd['numpy']['seconds']:.3f} "
            "| same rows kept as numpy |"
        )
    for m, v in nn.items():
        print(
            f"| NN distance, {a.queries:,} asked rows vs the set | {m:,} | {v['numpy']:.2f} | {v['faiss']:.2f} "
            f"| {v['faiss'] / v['numpy']:.2f} | max difference {v['max_abs_diff']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

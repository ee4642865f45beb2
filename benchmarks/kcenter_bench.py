"""Benchmark of greedy k-center selection (synth_empathy.core.kcenter) against the plain form.

Every case runs in its own process (so peak memory is per case); inside it, in this order:

1. the plain baseline, numpy, one matrix-vector product per step (the fast plain form);
2. ``exact`` (lazy exact greedy; its radius is the exact-greedy reference);
3. ``fast`` (bf16 ranking where the CPU has it, else int8 on AVX2; float32 distances);
4. optionally ``sharded`` on a local Ray (2 CPUs);
5. the plain baseline in its published form, torch ``pairwise_distance`` per step.

A baseline whose full run would take minutes is timed on a prefix of its steps and
extrapolated linearly (its cost per step is constant); the prefix picks are checked
against the exact method's. Peak memory is the largest resident set (VmRSS, sampled every
20 ms) while a method runs, including the input matrix the process already holds.

    python benchmarks/kcenter_bench.py                  # every case, one after the other
    python benchmarks/kcenter_bench.py --case syn-100k-90
    python benchmarks/kcenter_bench.py --quick          # small sizes, a smoke test
    python benchmarks/kcenter_bench.py --device cuda    # the GPU cases (kcenter_gpu_bench.py)
    python benchmarks/kcenter_bench.py --splits syn-100k-10   # sharded: random vs k-means split

Results go to benchmarks/out/kcenter.jsonl and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from machine import cpu_name

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
ED_VALID = HERE.parent / ".." / "shared" / "data" / "ed" / "valid.csv"

# name: (data, rows, keep ratio, repeats, numpy-baseline prefix steps, torch prefix steps, sharded shards)
CASES = {
    "ed-10": ("ed", None, 0.10, 3, None, 200, 0),
    "ed-90": ("ed", None, 0.90, 3, 3000, 100, 0),
    "syn-100k-10": ("syn", 100_000, 0.10, 3, 2000, 100, 4),
    "syn-100k-90": ("syn", 100_000, 0.90, 1, 2000, 100, 0),
    "syn-1m-10": ("syn", 1_000_000, 0.10, 1, 200, 10, 0),
}
QUICK = {
    "quick-syn-10": ("syn", 20_000, 0.10, 1, 300, 30, 2),
    "quick-syn-90": ("syn", 20_000, 0.90, 1, 300, 30, 0),
}


def clustered_unit_vectors(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    """n unit vectors around n/100 random centers, each cluster with its own spread
    (0.3-0.8 of a unit, isotropic), generated in chunks to keep memory at one copy."""
    r = np.random.default_rng(seed)
    clusters = max(10, n // 100)
    centers = r.standard_normal((clusters, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    spread = r.uniform(0.3, 0.8, clusters).astype(np.float32) / np.float32(math.sqrt(d))
    x = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 65536):
        m = min(n, i + 65536) - i
        lab = r.integers(0, clusters, m)
        c = centers[lab] + spread[lab, None] * r.standard_normal((m, d), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        x[i : i + m] = c
    return x


def ed_embeddings() -> np.ndarray:
    """MiniLM embeddings of the distinct utterances of ED valid.csv (cached)."""
    cache = OUT / "ed_valid_distinct_minilm.npy"
    if cache.exists():
        return np.load(cache)
    import pandas as pd

    from synth_empathy.models.embedder import encode

    texts = pd.read_csv(ED_VALID)["text"].astype(str).drop_duplicates().tolist()
    x = encode(texts)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x


class PeakRSS:
    """Largest VmRSS seen (every 20 ms) while the block runs."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def plain_numpy(x: np.ndarray, steps: int, start: int = 0):
    """The plain form: after each pick, distances from it to all rows, one mat-vec."""
    xn = np.einsum("ij,ij->i", x, x)
    m = np.full(len(x), np.inf, dtype=np.float32)
    c, picks = start, [start]
    for _ in range(steps - 1):
        d2 = xn - 2.0 * (x @ x[c])
        d2 += xn[c]
        np.minimum(m, d2, out=m)
        m[c] = -1.0
        c = int(np.argmax(m))
        picks.append(c)
    return np.array(picks)


def plain_torch(x: np.ndarray, steps: int, start: int = 0):
    """The published form: torch pairwise_distance from the newest center, per step."""
    import torch

    xt = torch.from_numpy(x)
    m = torch.full((len(x),), float("inf"))
    c, picks = start, [start]
    for _ in range(steps - 1):
        d = torch.nn.functional.pairwise_distance(xt, xt[c : c + 1])
        m = torch.minimum(m, d)
        m[c] = -1.0
        c = int(torch.argmax(m))
        picks.append(c)
    return np.array(picks)


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


LAST_CPU: list[float] = []  # CPU seconds (all threads) of the last timed() call, per repeat


def timed(fn, repeats: int):
    """Median wall seconds over ``repeats`` runs, and the last result."""
    times, out = [], None
    LAST_CPU.clear()
    for _ in range(repeats):
        t, c = time.perf_counter(), _cpu()
        out = fn()
        times.append(time.perf_counter() - t)
        LAST_CPU.append(_cpu() - c)
    return statistics.median(times), out


def load() -> float:
    return os.getloadavg()[0]


def run_case(name: str, spec) -> dict:
    from synth_empathy.core import kcenter as K
    from synth_empathy.stages.kcenter_shards import map_shards_on_ray

    data, n, keep, repeats, np_steps, torch_steps, shards = spec
    x = ed_embeddings() if data == "ed" else clustered_unit_vectors(n)
    n, d = x.shape
    k = K.resolve_k(n, None, keep)
    row = {
        "case": name,
        "data": data,
        "n": n,
        "d": d,
        "keep": keep,
        "k": k,
        "repeats": repeats,
        "date": dt.date.today().isoformat(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
    }

    def baseline(fn, steps, key):
        full = steps is None or steps >= k
        s = k if full else steps
        load0 = load()
        with PeakRSS() as mem:
            sec, picks = timed(lambda: fn(x, s, 0), 1 if not full else repeats)
        scale = 1.0 if full else k / s
        row[key] = {
            "seconds": sec * scale,
            "measured_steps": s,
            "measured_seconds": sec,
            "cpu_seconds": statistics.median(LAST_CPU) * scale,
            "extrapolated": not full,
            "peak_rss": mem.peak,
            "load": [load0, load()],
        }
        return picks

    base_picks = baseline(plain_numpy, np_steps, "plain_numpy")
    time.sleep(1)
    for method in ["exact", "fast"] + (["sharded"] if shards else []):
        if method == "sharded":
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        load0 = load()
        with PeakRSS() as mem:
            sec, res = timed(
                lambda method=method: K.select_k_center(
                    x, k, method=method, start=0, shards=max(1, shards), map_shards=map_shards_on_ray
                ),
                repeats if method != "sharded" else 1,
            )
        row[method] = {
            "seconds": sec,
            "cpu_seconds": statistics.median(LAST_CPU),
            "radius": res.radius,
            "peak_rss": mem.peak,
            "details": res.details,
            "device": res.device,
            "load": [load0, load()],
        }
        if method == "exact":
            m = len(base_picks)
            row["baseline_prefix_agrees"] = float(np.mean(base_picks == res.indices[:m]))
        if method == "sharded":
            ray.shutdown()
        time.sleep(1)
    if torch_steps:
        baseline(plain_torch, torch_steps, "plain_torch")
    return row


def run_splits(name: str, spec, shard_counts=(4, 8), repeats: int = 1) -> dict:
    """``sharded`` with random and k-means shards, ``full`` and ``proportional`` centers per
    shard, as Ray tasks on a local Ray (2 CPUs, start-up not timed); ``exact`` is the
    reference for the radius and the time, in the same process. With ``repeats`` > 1 the
    configurations run round-robin that many times and the median time is kept (the
    picks do not change between repeats)."""
    import ray

    from synth_empathy.core import kcenter as K
    from synth_empathy.stages.kcenter_shards import map_shards_on_ray

    data, n, keep = spec[:3]
    x = ed_embeddings() if data == "ed" else clustered_unit_vectors(n)
    n, d = x.shape
    k = K.resolve_k(n, None, keep)
    row = {"case": name, "data": data, "n": n, "d": d, "keep": keep, "k": k, "date": dt.date.today().isoformat()}
    row.update(cpu=cpu_name(), cores=os.cpu_count(), load=[load()])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    configs = [(s, b, p) for s in shard_counts for b in ("random", "kmeans") for p in ("full", "proportional")]
    times: dict = {}
    for _ in range(repeats):
        exact = K.select_k_center(x, k, method="exact", start=0)
        times.setdefault("exact", []).append(exact.seconds)
        for shards, by, per in configs:
            r = K.select_k_center(
                x, k, method="sharded", start=0, shards=shards, shard_by=by, per_shard=per,
                map_shards=map_shards_on_ray,
            )  # fmt: skip
            times.setdefault((shards, by, per), []).append((r.seconds, r.details["seconds"], r))
    row["exact"] = {"seconds": statistics.median(times["exact"]), "radius": exact.radius, "all_seconds": times["exact"]}
    runs = []
    for shards, by, per in configs:
        got = sorted(times[(shards, by, per)], key=lambda t: t[0])
        sec, parts, r = got[len(got) // 2]  # the median run, with its own parts
        runs.append(
            {
                "shards": shards,
                "shard_by": by,
                "per_shard": per,
                "seconds": sec,
                "all_seconds": [t[0] for t in times[(shards, by, per)]],
                "radius": r.radius,
                "union_rows": r.details["union_rows"],
                "sizes": r.details["split"]["sizes"],
                "parts_seconds": parts,
                "certified_ratio_to_opt": r.details["certified_ratio_to_opt"],
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    ray.shutdown()
    row["sharded"] = runs
    row["load"].append(load())
    return row


def split_table(rows: list[dict]) -> str:
    """Markdown: one line per sharded run; time and radius as ratios to ``exact``."""
    lines = [
        "| data | N | keep | shards | split | per shard | largest / smallest shard | union rows "
        "| split s | shards s | merge s | wall s | x exact time | radius / exact | certified <= x OPT |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        data = "ED valid, MiniLM" if r["data"] == "ed" else "clustered synthetic"
        ex = r["exact"]
        lines.append(
            f"| {data} | {r['n']:,} | {r['keep']:.0%} | - | exact | - | | | | | | {ex['seconds']:.2f} | 1.00 | 1.0000 | |"
        )
        for e in r["sharded"]:
            p = e["parts_seconds"]
            lines.append(
                f"| {data} | {r['n']:,} | {r['keep']:.0%} | {e['shards']} | {e['shard_by']} | {e['per_shard']} "
                f"| {max(e['sizes']):,} / {min(e['sizes']):,} | {e['union_rows']:,} | {p['split']:.2f} "
                f"| {p['shards']:.2f} | {p['merge']:.2f} | {e['seconds']:.2f} | {e['seconds'] / ex['seconds']:.2f} "
                f"| {e['radius'] / ex['radius']:.4f} | {e['certified_ratio_to_opt']} |"
            )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """Markdown: one line per method; ratios against the baselines of the same run."""
    lines = [
        "| data | N | keep | method | wall s | CPU s | x plain numpy | x plain torch "
        "| covering radius | radius / exact | peak RSS GiB | load |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    gib = 2.0**30
    for r in rows:
        data = "ED valid, MiniLM" if r["data"] == "ed" else "clustered synthetic"
        lead = f"| {data} | {r['n']:,} | {r['keep']:.0%} |"
        base = r["plain_numpy"]["seconds"]
        tb = r.get("plain_torch", {}).get("seconds")
        entries = [
            ("plain numpy, mat-vec per step", r["plain_numpy"]),
            ("plain torch pairwise_distance", r.get("plain_torch")),
            *[(m, r.get(m)) for m in ("exact", "fast", "sharded")],
        ]
        for name, e in entries:
            if not e:
                continue
            star = (
                f" (x{e['seconds'] / e['measured_seconds']:.0f} of {e['measured_steps']:,} steps)"
                if e.get("extrapolated")
                else ""
            )
            rad = f"{e['radius']:.4f} | {e['radius'] / r['exact']['radius']:.4f}" if "radius" in e else " | "
            xt = f"{tb / e['seconds']:.1f}" if tb else ""
            lines.append(
                f"{lead} {name} | {e['seconds']:.1f}{star} | {e['cpu_seconds']:.0f} | "
                f"{base / e['seconds']:.1f} | {xt} | {rad} | {e['peak_rss'] / gib:.2f} | "
                f"{e['load'][0]:.1f}-{e['load'][1]:.1f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", help=f"one of {', '.join([*CASES, *QUICK])}")
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--table", action="store_true", help="print the table of benchmarks/out/kcenter.jsonl")
    p.add_argument("--splits", metavar="CASE", help="sharded only: random vs k-means split, 4 and 8 shards")
    p.add_argument("--repeats", type=int, default=1, help="with --splits: runs per configuration (median)")
    p.add_argument("--device", default="cpu", help="cpu (these cases) or cuda (kcenter_gpu_bench.py's cases)")
    a, rest = p.parse_known_args(argv)
    if a.device != "cpu":
        import kcenter_gpu_bench

        return kcenter_gpu_bench.main(["--device", a.device, *[f for c in a.case or () for f in ("--case", c)], *rest])
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    results = OUT / "kcenter.jsonl"
    if a.splits:
        row = run_splits(a.splits, {**CASES, **QUICK}[a.splits], repeats=a.repeats)
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / "kcenter_splits.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(split_table([row]))
        return 0
    if a.table:
        print(table([json.loads(s) for s in results.read_text().splitlines() if s.strip()]))
        return 0
    every = {**CASES, **QUICK}
    names = a.case or list(QUICK if a.quick else CASES)
    if a.case and len(a.case) == 1:  # the worker: one case in this process
        row = run_case(a.case[0], every[a.case[0]])
        OUT.mkdir(parents=True, exist_ok=True)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]))
        return 0
    rows = []
    for name in names:  # one process per case: clean peak memory, no state carried over
        before = results.read_text().splitlines() if results.exists() else []
        subprocess.run([sys.executable, __file__, "--case", name], check=True)
        rows.append(json.loads(results.read_text().splitlines()[len(before)]))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

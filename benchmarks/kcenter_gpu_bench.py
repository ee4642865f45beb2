"""Greedy k-center on one GPU: the device-resident engine against the plain GPU greedy.

Run as ``python benchmarks/kcenter_bench.py --device cuda`` (or this file directly). Every
case runs in its own process with its own time limit; the results so far are written to
``<out>/kcenter_gpu.json`` after every method of every case, so a case stopped by its
limit (or a machine taken back) still leaves what it measured. Inside a case:

1. the plain GPU greedy (one ``X @ x_c`` per pick, ``torch.minimum``, ``int(argmax)``),
   timed over its first ``plain_steps`` picks and extrapolated linearly to k (its cost
   per pick is constant: one pass over all rows), or run in full when that is short;
2. ``select_k_center(method=...)`` for each method of the case, the data already on the
   GPU; ``exact``'s first picks are compared with the plain prefix (first difference:
   float32 near-ties), every approximate radius with ``exact``'s where both ran.

The data: clustered unit vectors made on the GPU (n/100 clusters, spread 0.3-0.8 of a
unit), the same recipe as ``clustered_unit_vectors`` in kcenter_bench.py, drawn with
torch's generator (so not the same numbers). Needs torch and numpy only (no Ray).

    python benchmarks/kcenter_gpu_bench.py --out $OUT                 # every case, ~8 min
    python benchmarks/kcenter_gpu_bench.py --device torch-cpu --scale tiny   # a CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# name: (rows, dim, keep, methods, plain prefix steps (None = all), time limit in seconds)
CASES = {
    "g-100k-10": (100_000, 384, 0.10, ("exact", "fast"), None, 60),
    "g-1m-10": (1_000_000, 384, 0.10, ("exact", "fast"), 3000, 75),
    "g-1m-90": (1_000_000, 384, 0.90, ("fast", "exact"), 3000, 120),
    "g-1m-3584-90": (1_000_000, 3584, 0.90, ("fast",), 300, 150),
    "g-10m-10": (10_000_000, 384, 0.10, ("fast",), 200, 150),
    "g-1m-3584-90-exact": (1_000_000, 3584, 0.90, ("exact",), 0, 200),
    "g-10m-10-exact": (10_000_000, 384, 0.10, ("exact",), 0, 330),
}
# The same cases at sizes a 2-core CPU runs in seconds (checks the script, not the GPU).
TINY = {f"{k}": (max(2000, v[0] // 500), min(v[1], 64), v[2], v[3], v[4] and 50, 120) for k, v in CASES.items()}


def clustered(n: int, d: int, dev, seed: int = 0):
    import torch

    g = torch.Generator(device=dev).manual_seed(seed)
    clusters = max(10, n // 100)
    centers = torch.randn((clusters, d), generator=g, device=dev)
    centers /= centers.norm(dim=1, keepdim=True)
    spread = (0.3 + 0.5 * torch.rand(clusters, generator=g, device=dev)) / math.sqrt(d)
    x = torch.empty((n, d), device=dev)
    step = 1 << 18
    for i in range(0, n, step):
        m = min(n, i + step) - i
        lab = torch.randint(0, clusters, (m,), generator=g, device=dev)
        c = centers[lab] + spread[lab, None] * torch.randn((m, d), generator=g, device=dev)
        x[i : i + m] = c / c.norm(dim=1, keepdim=True)
    return x


def sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def plain_gpu(x, steps: int, start: int = 0):
    """The plain greedy on the device: one pass over all rows per pick, argmax read back."""
    import torch

    xn = (x * x).sum(1)
    md = torch.full((x.shape[0],), math.inf, device=x.device)
    picks, c = [start], start
    for _ in range(steps - 1):
        d2 = (xn + xn[c] - 2.0 * (x @ x[c])).clamp_(min=0.0)
        torch.minimum(md, d2, out=md)
        md[c] = -1.0
        c = int(torch.argmax(md))
        picks.append(c)
    torch.minimum(md, (xn + xn[c] - 2.0 * (x @ x[c])).clamp_(min=0.0), out=md)  # the last pick's rows
    md[c] = -1.0
    return picks, float(md.max().clamp(min=0).sqrt())


def run_case(name: str, spec, device: str, out: Path) -> None:
    import numpy as np
    import torch

    from synth_empathy.core.kcenter import select_k_center
    from synth_empathy.core.kcenter.device import _fp32_products

    n, d, keep, methods, plain_steps, _ = spec
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    k = max(1, math.ceil(keep * n - 1e-9))
    row = {"case": name, "rows": n, "dim": d, "k": k, "keep": keep, "device": device}
    if dev.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(dev)
    row["torch"] = torch.__version__
    path = out / f"case-{name}.json"

    def save():
        path.write_text(json.dumps(row, indent=1))

    t = time.perf_counter()
    x = clustered(n, d, dev)
    sync(dev)
    row["data_seconds"] = round(time.perf_counter() - t, 2)
    save()
    if plain_steps != 0:
        steps = k if plain_steps is None else min(k, plain_steps)
        with _fp32_products(False):  # the plain form in IEEE float32
            plain_gpu(x, min(steps, 20))  # warm-up
            sync(dev)
            t = time.perf_counter()
            plain, plain_radius = plain_gpu(x, steps)
            sync(dev)
        s = time.perf_counter() - t
        row["plain_steps"] = steps
        row["plain_ms_per_pick"] = round(1000 * s / steps, 4)
        row["plain_seconds"] = round(s * k / steps, 2)
        row["plain_extrapolated"] = steps < k
        if steps == k:
            row["plain_radius"] = plain_radius
        save()
    for method in methods:
        torch.cuda.empty_cache() if dev.type == "cuda" else None
        sync(dev)
        t = time.perf_counter()
        r = select_k_center(x, k, method=method, device=device)
        sync(dev)
        s = time.perf_counter() - t
        m = {"seconds": round(s, 3), "radius": r.radius, "details": r.details}
        if "plain_seconds" in row:
            m["speedup_vs_plain"] = round(row["plain_seconds"] / s, 1)
        if method == "exact" and plain_steps != 0:
            a = np.asarray(plain)
            b = r.indices[: len(a)]
            m["first_diff_vs_plain"] = None if np.array_equal(a, b) else int(np.argmax(a != b))
            m["same_prefix_share"] = round(float(np.mean(a == b)), 4)
        if dev.type == "cuda":
            m["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(dev)
        row[method] = m
        if "exact" in row and "fast" in row:
            row["fast_radius_over_exact"] = round(row["fast"]["radius"] / row["exact"]["radius"], 6)
        save()
        print(name, method, m["seconds"], "s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, or torch-cpu for a smoke test")
    p.add_argument("--scale", choices=["full", "tiny"], default="full")
    p.add_argument("--case", action="append", help="run only these cases (default: all, in order)")
    p.add_argument("--budget", type=float, default=540, help="seconds for all cases together")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "out"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cases = TINY if a.scale == "tiny" else CASES
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.worker:
        run_case(a.worker, cases[a.worker], a.device, out)
        return 0
    from machine import cpu_name

    deadline = time.monotonic() + a.budget
    results = {"host_cpu": cpu_name(), "cases": []}
    for name in a.case or list(cases):
        limit = cases[name][-1]
        left = deadline - time.monotonic()
        entry = {"case": name, "limit_s": limit}
        if left < min(limit, 30):
            entry["status"] = f"skipped: {left:.0f} s of the budget left"
        else:
            t = time.monotonic()
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--device",
                a.device,
                "--scale",
                a.scale,
                "--out",
                str(out),
            ]
            try:
                rc = subprocess.run(cmd, timeout=min(limit, left)).returncode
                entry["status"] = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                entry["status"] = f"stopped at its limit ({min(limit, left):.0f} s)"
            entry["wall_s"] = round(time.monotonic() - t, 1)
            f = out / f"case-{name}.json"
            if f.exists():
                entry.update(json.loads(f.read_text()))
        results["cases"].append(entry)
        (out / "kcenter_gpu.json").write_text(json.dumps(results, indent=1))
        print(json.dumps({k: v for k, v in entry.items() if k != "details"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

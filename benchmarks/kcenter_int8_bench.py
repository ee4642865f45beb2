"""int8 vs float32 (vs bf16) ranking in the CPU k-center, natively and on AVX2 kernels.

The k-center ``fast`` path ranks each refresh's new centers in low precision: bf16 where
the CPU has it natively, else int8 (:mod:`synth_empathy.core.kcenter.products`). This
script checks the int8 choice for AVX2-only CPUs on whatever machine it runs on, by
capping the kernels each library may pick (it emulates the instruction set, not another
CPU's caches, memory or clock):

* oneDNN (``torch._int_mm``): ``ONEDNN_MAX_CPU_ISA=AVX2`` (and ``DNNL_MAX_CPU_ISA``);
* OpenBLAS (numpy's float32 products): ``OPENBLAS_CORETYPE=Haswell``;
* MKL (torch's float32 products): ``MKL_ENABLE_INSTRUCTIONS=AVX2``;
* torch's own vector kernels: ``ATEN_CPU_CAPABILITY=avx2``.

Each ISA runs in its own process (the variables are read at library load), one after the
other, so ratios within one ISA are same-run. Two parts:

1. ``products``: cost per row x center score at the refresh's block shapes, the way the
   engine computes it (float32: product + |c|^2 + min; int8: product, scaling, argmin).
2. ``case``: N x 384 clustered unit vectors (kcenter_bench's recipe), plain numpy greedy
   on its first ``--plain-steps`` picks (extrapolated linearly, as kcenter_bench does),
   ``exact``, and ``fast`` with the ranking forced to int8 (and bf16 natively where the
   CPU has it).

    python benchmarks/kcenter_int8_bench.py                      # both parts, native + avx2
    python benchmarks/kcenter_int8_bench.py --part products --isa avx2

Records go to benchmarks/out/kcenter_int8.jsonl (one line per ISA and part).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
AVX2_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}
SHAPES = [(4096, 2048), (4096, 512), (1024, 2048), (512, 256)]  # (rows, new centers)


def best_of(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def one_shape(m: int, c: int, d: int, r: np.random.Generator) -> dict:
    """Cost of each way to rank ``c`` centers for ``m`` rows, best of 5."""
    import torch

    from synth_empathy.core import hardware
    from synth_empathy.core.kcenter.products import _BF16, _Int8, _Numpy, _Torch

    x = r.standard_normal((m + c, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xn = np.einsum("ij,ij->i", x, x)
    a, an, b2, bn = x[:m], xn[:m], -2.0 * x[m:], xn[m:]
    be_np, be_t = _Numpy(), _Torch("cpu")
    ta, tan, tb2, tbn = (torch.from_numpy(np.ascontiguousarray(v)) for v in (a, an, b2, bn))
    i8 = _Int8(x, xn, c)
    i8.add(0, c, np.arange(m, m + c))
    rows = i8.rows(np.arange(m))
    fns = {
        "float32 numpy (OpenBLAS)": lambda: be_np.min_sqdist(a, an, b2, bn),
        "float32 torch (MKL)": lambda: be_t.min_sqdist(ta, tan, tb2, tbn),
        "int8 product only": lambda: torch._int_mm(rows[0], i8.cq[:c].T),  # one block, no scaling
        "int8 ranking (engine)": lambda: i8.min_arg(rows, 0, c),
    }
    if hardware.bf16_native():  # emulated (slow) under the AVX2 cap, shown for scale
        bf = _BF16(x, xn, c)
        bf.add(0, c, np.arange(m, m + c))
        brows = bf.rows(np.arange(m))
        fns["bf16 ranking (engine)"] = lambda: bf.min_arg(brows, 0, c)
    res = {}
    for name, fn in fns.items():
        s = best_of(fn)
        res[name] = {"ns_per_score": round(s / (m * c) * 1e9, 3), "gop_s": round(2 * d * m * c / s / 1e9, 1)}
    return res


def products(d: int = 384) -> dict:
    r = np.random.default_rng(0)
    out = {}
    for m, c in SHAPES:
        out[f"{m}x{c}"] = res = one_shape(m, c, d, r)
        print(f"{m} rows x {c} centers, ns per score:", {k: v["ns_per_score"] for k, v in res.items()}, flush=True)
    return out


def case(n: int, keep: float, plain_steps: int, isa: str) -> dict:
    sys.path.insert(0, str(HERE))
    from kcenter_bench import clustered_unit_vectors, plain_numpy

    from synth_empathy.core import hardware
    from synth_empathy.core import kcenter as K

    x = clustered_unit_vectors(n)
    k = K.resolve_k(n, None, keep)
    out = {"n": n, "d": x.shape[1], "k": k}
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    base = plain_numpy(x, plain_steps)
    sec = time.perf_counter() - t
    out["plain_numpy"] = {
        "seconds": sec * k / plain_steps,
        "measured_steps": plain_steps,
        "measured_seconds": sec,
        "load": [load0, os.getloadavg()[0]],
    }
    print(f"plain numpy: {sec:.1f} s for {plain_steps} picks -> {sec * k / plain_steps:.0f} s", flush=True)
    # bf16 under the AVX2 cap is emulated (~25 ns per score, 5x float32): not run there.
    rankings = ["int8"] + (["bfloat16"] if hardware.bf16_native() and isa == "native" else [])
    for label, method, rk in [("exact", "exact", None)] + [(f"fast-{r}", "fast", r) for r in rankings]:
        if rk:
            os.environ["SYNTH_EMPATHY_KCENTER_RANKING"] = rk
        load0 = os.getloadavg()[0]
        res = K.select_k_center(x, k, method=method)
        out[label] = {
            "seconds": res.seconds,
            "radius": res.radius,
            "details": res.details,
            "load": [load0, os.getloadavg()[0]],
        }
        if method == "exact":
            out["plain_prefix_agrees"] = float(np.mean(base == res.indices[:plain_steps]))
        print(f"{label}: {res.seconds:.1f} s, radius {res.radius:.5f}", flush=True)
    for label in [lbl for lbl in out if lbl.startswith("fast")]:
        out[label]["radius_ratio_to_exact"] = out[label]["radius"] / out["exact"]["radius"]
        out[label]["speedup_vs_plain"] = out["plain_numpy"]["seconds"] / out[label]["seconds"]
    out["exact"]["speedup_vs_plain"] = out["plain_numpy"]["seconds"] / out["exact"]["seconds"]
    return out


def child(args) -> int:
    from machine import cpu_name

    row = {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_name(),
        "isa": args.isa,
        "env": {k: os.environ[k] for k in AVX2_ENV if k in os.environ},
        "part": args.part,
        "load_start": os.getloadavg()[0],
    }
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    row["torch"] = torch.__version__
    row["result"] = products() if args.part == "products" else case(args.n, args.keep, args.plain_steps, args.isa)
    row["load_end"] = os.getloadavg()[0]
    OUT.mkdir(exist_ok=True)
    with open(OUT / "kcenter_int8.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["products", "case", "both"], default="both")
    p.add_argument("--isa", choices=["native", "avx2", "both"], default="both")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--keep", type=float, default=0.9)
    p.add_argument("--plain-steps", type=int, default=2000)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.child:
        return child(args)
    for isa in ["native", "avx2"] if args.isa == "both" else [args.isa]:
        for part in ["products", "case"] if args.part == "both" else [args.part]:
            env = {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
            env.pop("SYNTH_EMPATHY_KCENTER_RANKING", None)
            if isa == "avx2":
                env.update(AVX2_ENV)
            print(f"== {isa} {part}", flush=True)
            cmd = [sys.executable, __file__, "--child", "--isa", isa, "--part", part, "--n", str(args.n)]
            cmd += ["--keep", str(args.keep), "--plain-steps", str(args.plain_steps)]
            rc = subprocess.call(cmd, env=env)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())

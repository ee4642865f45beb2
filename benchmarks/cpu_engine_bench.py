"""vLLM's CPU backend: dtype x compute-thread binding, plain ``vllm.LLM.chat``.

Each configuration runs in its own child process (vLLM reads its CPU binding from the
environment when the engine starts, and spawns workers, hence the ``__main__`` guard):
the packaged SmolLM2-135M, ``enforce_eager=True``, ``max_model_len=2048``, 32 prompts x
64 new tokens (``ignore_eos``), greedy; the first ``chat`` call warms the engine, the
second is timed. Configurations are interleaved round by round, so a burst of load from
other processes hits all of them alike; ``os.getloadavg()`` is recorded next to every
figure. Records (one JSON object a line) go to ``--out``, with the CPU model and its bf16
flags read from /proc/cpuinfo.

    PYTHONPATH=. .venv/bin/python benchmarks/cpu_engine_bench.py --rounds 2

Binding configurations (environment of the engine process):

* ``vllm-auto`` - nothing set: vLLM holds one core back for its scheduler process and
  binds the compute threads to the rest (on 2 cores: core 0 only).
* ``bind-0-1`` - ``VLLM_CPU_OMP_THREADS_BIND=0-1``: compute threads on both cores.
* ``reserve-0`` - ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``: vLLM's own core choice with no core
  held back (what ``engine.cpu_threads_bind=auto`` sets).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BINDS = {
    "vllm-auto": {},
    "bind-0-1": {"VLLM_CPU_OMP_THREADS_BIND": "0-1"},
    "reserve-0": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
}
DTYPES = ("float32", "bfloat16")


def cpu_facts() -> dict:
    model, flags = "", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    return {
        "cpu_model": model,
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "cpus": os.cpu_count(),
        # set by benchmarks/avx2_emulation.py: the kernels were capped at AVX2, not the CPU
        "kernels": "capped at AVX2" if os.environ.get("SYNTH_EMPATHY_AVX2_EMULATION") == "1" else "native",
    }


def child(dtype: str, prompts: int, tokens: int, memory: float) -> dict:
    from vllm import LLM, SamplingParams

    from synth_empathy.models.weights import resolve_model

    t0 = time.perf_counter()
    llm = LLM(
        model=str(resolve_model("packaged:smollm2")),
        dtype=dtype,
        enforce_eager=True,
        max_model_len=2048,
        gpu_memory_utilization=memory,
    )
    start_s = time.perf_counter() - t0
    messages = [
        [{"role": "user", "content": f"Tell me a short story about a friend who lost thing number {i}."}]
        for i in range(prompts)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    out = {"start_s": round(start_s, 2)}
    for call in (1, 2):
        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        res = llm.chat(messages, params, use_tqdm=False)
        secs = time.perf_counter() - t
        n = sum(len(r.outputs[0].token_ids) for r in res)
        out[f"call{call}"] = {
            "seconds": round(secs, 3),
            "tokens": n,
            "tok_s": round(n / secs, 1),
            "load1_before": round(load_before, 2),
            "load1_after": round(os.getloadavg()[0], 2),
        }
    out["omp_env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GOMP_CPU_AFFINITY", "OMP_PLACES")}
    return out


def summary(path: str) -> str:
    """A markdown table of the records: every second-call figure with its load, and the median."""
    import statistics

    recs = [json.loads(line) for line in open(path)]
    rows = ["| dtype | binding | 2nd call tok/s (1-min load before) | median tok/s | engine start s |"]
    rows.append("| --- | --- | --- | ---: | ---: |")
    for dtype in DTYPES:
        for bind in BINDS:
            rs = [r for r in recs if r["dtype"] == dtype and r["bind"] == bind and "call2" in r]
            if not rs:
                continue
            figs = ", ".join(f"{r['call2']['tok_s']} ({r['call2']['load1_before']})" for r in rs)
            med = statistics.median(r["call2"]["tok_s"] for r in rs)
            start = statistics.median(r["start_s"] for r in rs)
            rows.append(f"| {dtype} | {bind} | {figs} | **{med:.1f}** | {start:.0f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--memory", type=float, default=0.3, help="gpu_memory_utilization (float32 needs ~0.3)")
    ap.add_argument("--binds", default=",".join(BINDS))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--out", default="benchmarks/out/cpu_engine.jsonl")
    ap.add_argument("--summary", action="store_true", help="print a markdown table of --out and stop")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.summary:
        print(summary(args.out))
        return
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.prompts, args.tokens, args.memory)), flush=True)
        return
    facts = cpu_facts()
    print(json.dumps(facts), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for rnd in range(args.rounds):
        for bind in args.binds.split(","):
            for dtype in args.dtypes.split(","):
                env = {**os.environ, **BINDS[bind]}
                cmd = [sys.executable, __file__, "--child", dtype, "--prompts", str(args.prompts)]
                cmd += ["--tokens", str(args.tokens), "--memory", str(args.memory)]
                load = os.getloadavg()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                rec = {
                    "round": rnd,
                    "bind": bind,
                    "env": BINDS[bind],
                    "dtype": dtype,
                    "prompts": args.prompts,
                    "max_tokens": args.tokens,
                    "loadavg_before": [round(x, 2) for x in load],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **facts,
                }
                if lines:
                    rec.update(json.loads(lines[-1][len("RESULT ") :]))
                else:
                    rec["error"] = (p.stderr or p.stdout)[-2000:]
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                shown = rec.get("call2", {}).get("tok_s", "ERROR")
                print(f"round {rnd} {bind:10s} {dtype:9s} {shown} tok/s  load {rec['loadavg_before'][0]}", flush=True)


if __name__ == "__main__":
    main()

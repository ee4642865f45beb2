"""Top-p in vLLM's CPU sampler: its vocabulary sort vs ``engine.fast_top_p``, plain ``vllm.LLM.chat``.

The default run's generation work, outside Ray: the generation prompts of the shipped
seeds (``synth_empathy.stages.generation.generation_messages``, 98 of them), the
packaged SmolLM2-135M, ``max_tokens=300``, temperature 0.8, and three samplers:

* ``vllm-sort`` - ``top_p=0.9`` (the method's), vLLM's own top-p (sorts every
  sequence's 49,152 logits each step);
* ``fast`` - ``top_p=0.9`` with ``SYNTH_EMPATHY_CPU_TOP_P=fast`` in the engine's
  environment (synth_empathy.engines.cpu_top_p, loaded by vLLM as a plugin);
* ``no-top-p`` - ``top_p=1.0``: no cut at all, the floor both can reach.

Each sampler in its own child process (vLLM loads plugins once per process), the
compute threads on every core (``VLLM_CPU_OMP_THREADS_BIND``, as ``cpu_threads_bind=auto``
sets for one local replica), samplers interleaved round by round. A small warm-up call
first, then one timed call; tokens/s counts the tokens generated (answers stop at EOS,
so counts differ a little between calls). Records (JSON lines) carry the CPU and its
flags and the load average.

    PYTHONPATH=. .venv/bin/python benchmarks/cpu_top_p_bench.py --dtype float32 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine import cpu_name, record, run_child

SAMPLERS = {
    "vllm-sort": (0.9, {}),
    "fast": (0.9, {"SYNTH_EMPATHY_CPU_TOP_P": "fast"}),
    "no-top-p": (1.0, {}),
}


def child(dtype: str, top_p: float, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from synth_empathy.models.weights import resolve_model
    from synth_empathy.stages.generation import generation_messages
    from synth_empathy.stages.seed_sources import default_seed_path, read_seeds

    seeds = read_seeds(default_seed_path()).to_arrow().to_pylist()  # as the default run reads them
    prompts = [generation_messages(s) for s in seeds]
    start = time.perf_counter()
    llm = LLM(
        resolve_model("packaged:smollm2"),
        dtype=dtype,
        max_model_len=2048,
        gpu_memory_utilization=0.3 if dtype == "float32" else 0.15,
        enforce_eager=True,
    )
    started = time.perf_counter() - start
    chat = dict(continue_final_message=True, add_generation_prompt=False, use_tqdm=False)
    llm.chat(prompts[:8], SamplingParams(temperature=0.8, top_p=top_p, max_tokens=16), **chat)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    out = llm.chat(prompts, SamplingParams(temperature=0.8, top_p=top_p, max_tokens=max_tokens), **chat)
    seconds = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in out)
    return {
        "prompts": len(prompts),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "engine_start_s": round(started, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "cpu_top_p.jsonl"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        dtype, top_p, max_tokens = args.child
        print("RESULT " + json.dumps(child(dtype, float(top_p), int(max_tokens))))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    bind = {"VLLM_CPU_OMP_THREADS_BIND": "0" if cores == 1 else f"0-{cores - 1}"}
    for r in range(args.rounds):
        for name in args.samplers.split(","):
            top_p, env = SAMPLERS[name]
            child_env = {k: v for k, v in os.environ.items() if k != "SYNTH_EMPATHY_CPU_TOP_P"}
            child_env.update(bind, **env)
            result = run_child(
                [sys.executable, __file__, "--child", args.dtype, str(top_p), str(args.max_tokens)], child_env
            )
            if result is None:
                return 1
            record(out, {"sampler": name, "dtype": args.dtype, "round": r, "cpu": cpu_name(), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""KV-cache block size on vLLM's CPU backend (``engine.kv_block_size``), plain ``vllm.LLM.chat``.

The default run's generation work outside Ray: the generation prompts of the shipped
seeds (98, 149-224 tokens each; they share their first 60-90 tokens when the emotion is
the same, 30 tokens otherwise), the packaged SmolLM2-135M, temperature 0.8, top-p 0.9
with ``engine.fast_top_p``, the compute threads on every core. vLLM reuses a cached
prefix in whole blocks, so the block size decides how much of that shared start is
computed once. Per block size, in its own child process (the block size is fixed at
engine start), block sizes interleaved round by round:

* ``prefill`` - one call with ``max_tokens=1`` (the prompts' forward pass, reuse included);
* ``decode`` - a call with ``max_tokens=161`` (``ignore_eos``) minus the prefill call:
  160 steps of the 98 sequences, where a smaller block could cost attention time.

The prefix cache is emptied before every call, so each call reuses only what it computed
itself. Records (JSON lines) carry the CPU and its flags and the load average.

    PYTHONPATH=. .venv/bin/python benchmarks/cpu_kv_block_bench.py --dtype float32 --rounds 2
    PYTHONPATH=. .venv/bin/python benchmarks/avx2_emulation.py .venv/bin/python benchmarks/cpu_kv_block_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine import cpu_name, record, run_child

DECODE_STEPS = 160


def child(dtype: str, block_size: int) -> dict:
    from vllm import LLM, SamplingParams

    from synth_empathy.models.weights import resolve_model
    from synth_empathy.stages.generation import generation_messages
    from synth_empathy.stages.seed_sources import default_seed_path, read_seeds

    seeds = read_seeds(default_seed_path()).to_arrow().to_pylist()  # as the default run reads them
    prompts = [generation_messages(s) for s in seeds]
    llm = LLM(
        resolve_model("packaged:smollm2"),
        dtype=dtype,
        max_model_len=2048,
        gpu_memory_utilization=0.3 if dtype == "float32" else 0.15,
        enforce_eager=True,
        block_size=block_size,
    )
    chat = dict(continue_final_message=True, add_generation_prompt=False, use_tqdm=False)

    def call(max_tokens: int) -> tuple[float, int]:
        llm.reset_prefix_cache()
        sp = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=max_tokens, ignore_eos=True)
        t = time.perf_counter()
        out = llm.chat(prompts, sp, **chat)
        return time.perf_counter() - t, sum(o.num_cached_tokens or 0 for o in out)

    call(2)  # warm-up
    load = os.getloadavg()[0]
    prefill, cached = call(1)
    both, _ = call(DECODE_STEPS + 1)
    decode = both - prefill
    return {
        "prompts": len(prompts),
        "cached_prompt_tokens": cached,
        "prefill_s": round(prefill, 2),
        "decode_s": round(decode, 2),
        "decode_tokens_per_s": round(len(prompts) * DECODE_STEPS / decode, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--blocks", default="128,32", help="block sizes (multiples of 32)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "cpu_kv_block.jsonl"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0" if cores == 1 else f"0-{cores - 1}"}
    env.update(SYNTH_EMPATHY_CPU_TOP_P="fast", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    for r in range(args.rounds):
        for block in (int(b) for b in args.blocks.split(",")):
            result = run_child([sys.executable, __file__, "--child", args.dtype, str(block)], env)
            if result is None:
                return 1
            record(out, {"block_size": block, "dtype": args.dtype, "round": r, "cpu": cpu_name(), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())

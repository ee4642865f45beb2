"""sentence-transformers (the packaged all-MiniLM-L6-v2) in float32 vs bfloat16 on this CPU.

Same texts, same batch size, torch threads = the CPUs given; the two dtypes alternate
round by round in one process; each figure comes with ``os.getloadavg()``. Also reports
how far the bf16 cosine scores (x100, as the quality stage scores) move from float32.

    PYTHONPATH=. .venv/bin/python benchmarks/embed_dtype_bench.py --texts 600 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="benchmarks/out/embed_dtype.jsonl")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from synth_empathy.core.hardware import detect
    from synth_empathy.models.weights import resolve_model

    torch.set_num_threads(args.threads)
    hw = detect()
    path = str(resolve_model("packaged:all-minilm-l6-v2"))
    models = {
        "float32": SentenceTransformer(path, device="cpu"),
        "bfloat16": SentenceTransformer(path, device="cpu", model_kwargs={"torch_dtype": torch.bfloat16}),
    }
    texts = [
        f"I have been feeling {w} since my friend number {i} moved away, and I do not know what to do about it."
        for i, w in zip(range(args.texts), ["lonely", "sad", "lost", "anxious", "hopeful"] * args.texts)
    ]
    vecs = {}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    for rnd in range(args.rounds):
        for name, m in models.items():
            load = os.getloadavg()[0]
            t = time.perf_counter()
            v = m.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            secs = time.perf_counter() - t
            vecs[name] = np.asarray(v, dtype=np.float32)
            rec = {
                "round": rnd,
                "dtype": name,
                "texts": len(texts),
                "threads": args.threads,
                "seconds": round(secs, 3),
                "texts_s": round(len(texts) / secs, 1),
                "load1_before": round(load, 2),
                "load1_after": round(os.getloadavg()[0], 2),
                "cpu_model": hw.cpu_model,
                "cpu_bf16": hw.cpu_bf16_flag,
            }
            print(json.dumps(rec), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    # Scores as the quality stage computes them: 100 x cosine of pairs of texts.
    a, b = vecs["float32"], vecs["bfloat16"]
    s32 = 100 * (a[:-1] * a[1:]).sum(1)
    s16 = 100 * (b[:-1] * b[1:]).sum(1)
    print(
        json.dumps(
            {"max_score_diff": float(np.abs(s32 - s16).max()), "mean_score_diff": float(np.abs(s32 - s16).mean())}
        )
    )


if __name__ == "__main__":
    main()

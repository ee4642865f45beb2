"""Training tokens/s per worker on this CPU: one Ray Train worker against two (DDP over gloo).

    .venv/bin/python benchmarks/train_workers_bench.py [--steps 8] [--out /tmp/train_workers]
    .venv/bin/python benchmarks/train_workers_bench.py --strategies [--steps 4]

Both runs train the packaged SmolLM2-135M (full fine-tuning, float32) on the shipped seed
dialogues with the same global batch (8 pairs a step: 1 worker x 8, or 2 workers x 4) and
the same CPUs in all (1 worker x 2 threads, or 2 workers x 1 thread), under `synth-empathy
train` with Ray Train. Prints the CPU (model name and SIMD flags from /proc/cpuinfo), the
load average around each run (other jobs on the machine share its cores) and, per run,
tokens/s in all and per worker from the training report (optimizer steps only; model load
and Ray start excluded).

``--strategies``: two workers under ``train.strategy=ddp`` against ``fsdp`` (same pairs, same
batch), with each worker's peak memory from the report (process max RSS on a CPU): FSDP keeps
half the gradients and AdamW state per worker on two.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags {' '.join(shown)}"


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--steps", type=int, default=8)
    a.add_argument("--out", default="/tmp/train_workers")
    a.add_argument("--strategies", action="store_true", help="2 workers: ddp against fsdp, with peak memory")
    args = a.parse_args()
    print(cpu())
    rows = []
    runs = (("ddp", 2, 4, 1), ("fsdp", 2, 4, 1)) if args.strategies else (("ddp", 1, 8, 2), ("ddp", 2, 4, 1))
    for strategy, workers, batch, cpus in runs:
        out = Path(args.out) / f"{strategy}-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()[0]
        cmd = [sys.executable, "-m", "synth_empathy", "train", f"train.output={out}", f"train.num_workers={workers}",
               f"train.batch_size={batch}", f"train.cpus_per_worker={cpus}", f"train.max_steps={args.steps}",
               "train.save_steps=0", "train.eval_steps=0", "train.dtype=float32", "train.limit=64",
               f"train.strategy={strategy}"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        r = json.loads((out / "train_report.json").read_text())
        rows.append((workers, r["tokens"], r["train_seconds"], r["tokens_per_s"], r["tokens_per_s_per_worker"], load))
        print(f"strategy={strategy} workers={workers} tokens={r['tokens']} train_s={r['train_seconds']} "
              f"tokens/s={r['tokens_per_s']} per worker={r['tokens_per_s_per_worker']} "
              f"peak GiB per worker={r.get('peak_memory_gib_per_worker')} loss {r['loss_first']} -> {r['loss_last']} "
              f"load_before={load:.2f} load_after={os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"second / first run, tokens/s in all: {rows[1][3] / rows[0][3]:.2f}")


if __name__ == "__main__":
    main()

"""The machine a benchmark ran on, read from the machine itself (never typed by hand).

Every benchmark row names the CPU model and the flags that change its numbers: AVX-512
and native bf16 (``avx512_bf16``, ``amx_bf16``) decide whether bf16 is fast or emulated.
"""

from __future__ import annotations

import os
import platform
import sys

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_info() -> dict[str, object]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def cpu_name() -> str:
    """``AMD EPYC 9R14, 2 cores, avx2 avx512f avx512_bf16`` (the flags that matter here)."""
    info = cpu_info()
    name = f"{info['model']}, {info['cores']} cores, {' '.join(info['flags']) or 'no avx2'}"
    if os.environ.get("SYNTH_EMPATHY_AVX2_EMULATION") == "1":  # set by benchmarks/avx2_emulation.py
        name += ", kernels capped at AVX2 (emulated)"
    return name


def run_child(args: list[str], env: dict[str, str]) -> dict | None:
    """Run one benchmark configuration in its own process (vLLM fixes its settings at
    engine start) and return what it printed as ``RESULT <json>``; None (its stderr's
    tail printed) if it failed."""
    import json
    import subprocess

    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def record(out, rec: dict) -> None:
    """Print one record and append it to the JSON-lines file ``out``."""
    import json

    print(json.dumps(rec), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")

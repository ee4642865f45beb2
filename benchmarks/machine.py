"""The machine a benchmark ran on, read from the machine itself (never typed by hand).

Every benchmark row names the CPU model and the flags that change its numbers: AVX-512
and native bf16 (``avx512_bf16``, ``amx_bf16``) decide whether bf16 is fast or emulated.
"""

from __future__ import annotations

import os
import platform

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

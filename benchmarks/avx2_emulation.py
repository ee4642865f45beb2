"""Run a command as if this CPU had AVX2 only: the instruction set, not the machine.

    python benchmarks/avx2_emulation.py .venv/bin/python benchmarks/embedded_run.py
    python benchmarks/avx2_emulation.py .venv/bin/python -m pytest -q tests/e2e

Every library in the stack that picks its kernels at run time is capped at AVX2 (FMA, no
AVX-512, no VNNI, no native bf16), as on the AVX2-only AMD EPYC (Zen 3) these sessions
sometimes get:

* oneDNN (torch's ``linear`` and ``_int_mm``): ``ONEDNN_MAX_CPU_ISA=AVX2``;
* MKL (torch's float32 products): ``MKL_ENABLE_INSTRUCTIONS=AVX2``;
* OpenBLAS (numpy's products): ``OPENBLAS_CORETYPE=Haswell``;
* torch's own vector kernels: ``ATEN_CPU_CAPABILITY=avx2``;
* numpy's own SIMD loops: ``NPY_DISABLE_CPU_FEATURES`` (its AVX-512 targets);
* vLLM and synth_empathy, which ask the CPU itself: ``avx2_site/sitecustomize.py`` shows
  them a CPU without AVX-512 flags (vLLM then loads its ``_C_AVX2`` kernels, ``dtype=auto``
  resolves to float32).

It cannot give this CPU another clock, cache or memory system: calibrate against a figure
measured on a real AVX2 machine (``cpu_engine_bench.py`` has one) before reading an
emulated wall time as that machine's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent / "avx2_site"
FLAG = "SYNTH_EMPATHY_AVX2_EMULATION"
KERNEL_CAPS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX "
    "AVX512_CNL AVX512_ICL AVX512_SPR",
}


def emulated() -> bool:
    """Whether this process runs under the emulation (benchmarks name it in their rows)."""
    return os.environ.get(FLAG) == "1"


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's) with the caps and the start-up patches added."""
    env = dict(os.environ if base is None else base)
    env.update(KERNEL_CAPS)
    env[FLAG] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH", "")) if p)
    return env


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    return subprocess.call(argv, env=environment())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

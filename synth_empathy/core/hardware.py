"""Which dtype and engine settings this machine runs fast: the one place that decides.

bfloat16 halves memory traffic, but only some CPUs compute it natively (x86 flags
``avx512_bf16`` or ``amx_bf16``); elsewhere it is emulated and several times slower than
float32 (benchmarks/README.md, "Figures behind the code"). :func:`choose_dtype`
turns a requested dtype (``auto`` or an explicit one) into the dtype to run and the
reason, from facts about the machine (:class:`Hardware`) that tests can inject; the vLLM
engine arguments (:mod:`synth_empathy.stages.llm`), the config loader (which records the
choice in config.yaml and manifest.json) and the k-center ``fast`` path all ask it. The
KV-cache share (:func:`memory_share`) and the CPU engine's thread binding
(:func:`cpu_threads_env`) are decided here too.

No Ray here, and torch only when the CUDA facts are asked for.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

from synth_empathy.errors import ConfigError

log = logging.getLogger(__name__)

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# vLLM's dtype names; the aliases map to the names this package records.
DTYPES = {
    "auto": "auto",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "float32": "float32",
    "float": "float32",
}
EMULATED_COST = "3.6x slower than float32 in vLLM on an AVX2 EPYC (18 vs 64 generated tokens/s)"
# KV-cache share of the NUMA node's RAM on the CPU backend, by dtype: the float32 engine
# (twice the weights and activations to profile) did not start at 0.15 on a 24 GiB
# machine ("requested memory for kv (-0.21/1.53 GiB)"), 0.3 worked.
CPU_MEMORY_SHARE = {"bfloat16": 0.15, "float16": 0.15, "float32": 0.3}
GPU_MEMORY_SHARE = 0.9  # vLLM's own default: the GPU belongs to the engine


@dataclass(frozen=True)
class Hardware:
    """The facts a dtype choice depends on (all injectable for tests)."""

    cpu_model: str = ""
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    cuda: bool | None = None  # None: not probed (no torch, or no GPU engine asked)
    cuda_bf16: bool = False
    cuda_name: str = ""

    @property
    def cpu_bf16_flag(self) -> str | None:
        """The native-bf16 flag this CPU has, if any."""
        return next((f for f in BF16_FLAGS if f in self.cpu_flags), None)

    def describe(self) -> dict:
        return {
            "cpu_model": self.cpu_model,
            "cpu_bf16": self.cpu_bf16_flag or "none (" + "/".join(BF16_FLAGS) + " absent)",
            "cpu_avx512f": "avx512f" in self.cpu_flags,
            "cuda": self.cuda,
            "cuda_name": self.cuda_name or None,
            "cuda_bf16": self.cuda_bf16 if self.cuda else None,
        }


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # what runs: bfloat16 | float16 | float32, or auto (vLLM decides on its GPU)
    reason: str
    warning: str | None = None  # set when an explicit choice is known to be slow here


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU listed; empty when the file is not there."""
    model, flags = "", frozenset()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86 / aarch64
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cuda_facts() -> tuple[bool | None, bool, str]:
    """(GPU visible, it computes bf16, its name) through torch; (None, False, "") without torch."""
    try:
        import torch
    except ImportError:
        return None, False, ""
    try:
        if not torch.cuda.is_available():
            return False, False, ""
        return True, bool(torch.cuda.is_bf16_supported()), torch.cuda.get_device_name(0)
    except Exception:  # a broken driver is no GPU for this decision
        return False, False, ""


@lru_cache(maxsize=2)
def detect(with_cuda: bool = False) -> Hardware:
    """This machine's facts (cached); CUDA only when asked, as it imports torch."""
    model, flags = read_cpuinfo()
    cuda, bf16, name = cuda_facts() if with_cuda else (None, False, "")
    return Hardware(cpu_model=model, cpu_flags=flags, cuda=cuda, cuda_bf16=bf16, cuda_name=name)


def canonical_dtype(requested: str, where: str = "dtype") -> str:
    """The package's name for a dtype vLLM accepts; a ConfigError (one line) otherwise."""
    name = str(requested).strip().lower()
    if name not in DTYPES:
        raise ConfigError(
            f"{where} must be one of {', '.join(DTYPES)} (half = float16, float = float32), got {requested!r}"
        )
    return DTYPES[name]


def choose_dtype(requested: str, device: str, hw: Hardware, where: str = "dtype") -> DtypeChoice:
    """The dtype to run on ``device`` ("cpu" or "cuda") and why.

    ``auto``: on a CPU, bfloat16 where a native-bf16 flag is present, else float32; on a
    GPU this process sees, bfloat16 where it computes bf16, else float16; on a GPU this
    process cannot see (the engines run on other nodes), ``auto`` is left to vLLM on the
    engine's node. An explicit dtype is kept; bfloat16 on a CPU without native bf16 comes
    with a warning that says what it costs.
    """
    dtype = canonical_dtype(requested, where)
    native = hw.cpu_bf16_flag
    if dtype != "auto":
        warning = None
        if dtype == "bfloat16" and device == "cpu" and not native:
            warning = (
                f"bf16 is emulated on this CPU ({hw.cpu_model or 'unknown model'}, no "
                f"{' or '.join(BF16_FLAGS)}): {EMULATED_COST}; dtype=auto picks float32 here"
            )
        return DtypeChoice(dtype, "set in the config", warning)
    if device == "cpu":
        if native:
            return DtypeChoice("bfloat16", f"cpu has {native}")
        return DtypeChoice("float32", f"cpu has no {' or '.join(BF16_FLAGS)}: bf16 would be emulated")
    if hw.cuda:
        if hw.cuda_bf16:
            return DtypeChoice("bfloat16", f"GPU {hw.cuda_name} computes bf16")
        return DtypeChoice("float16", f"GPU {hw.cuda_name} has no bf16 (compute capability < 8.0)")
    return DtypeChoice("auto", "no GPU visible to this process: vLLM picks on the engine's GPU node")


def bf16_native(hw: Hardware | None = None) -> bool:
    """Whether this CPU computes bf16 natively."""
    return choose_dtype("auto", "cpu", hw or detect()).dtype == "bfloat16"


# x86 flags with which an int8 x int8 -> int32 product (oneDNN through torch._int_mm)
# beats the float32 BLAS: AVX2's vpmaddubsw/vpmaddwd pair, or VNNI (AVX-512 or AVX).
INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni")


def kcenter_ranking(hw: Hardware | None = None) -> str | None:
    """Low precision in which the k-center ``fast`` path ranks centers on this CPU:
    ``bfloat16`` where it is native, else ``int8`` on x86 with AVX2 or VNNI, else None
    (``fast`` is then the exact float32 path). Whether torch can run it is the caller's
    check (:mod:`synth_empathy.core.kcenter`)."""
    hw = hw or detect()
    if bf16_native(hw):
        return "bfloat16"
    if any(f in hw.cpu_flags for f in INT8_FLAGS):
        return "int8"
    return None


def memory_share(requested: float | str, device: str, dtype: str) -> tuple[float, str]:
    """vLLM's ``gpu_memory_utilization`` and why: a number is kept; ``auto`` is
    :data:`CPU_MEMORY_SHARE` of the chosen dtype on the CPU backend (float32 when vLLM
    decides) and :data:`GPU_MEMORY_SHARE` on a GPU."""
    if not isinstance(requested, str):
        return float(requested), "set in the config"
    if device != "cpu":
        return GPU_MEMORY_SHARE, "auto: vLLM's default on a GPU"
    share = CPU_MEMORY_SHARE.get(dtype, CPU_MEMORY_SHARE["float32"])
    return share, f"auto: {share} of the node's RAM for {dtype} on the CPU backend"


# Why 32 on the CPU: the CPU attention backend takes multiples of 32, and prompts reuse a
# cached prefix in whole blocks; the default run's generation prompts of one emotion share ~88 tokens.
CPU_KV_BLOCK = 32


def kv_block_size(requested: int | str, device: str) -> tuple[int | None, str]:
    """vLLM's ``block_size`` and why: a number is kept; ``auto`` is :data:`CPU_KV_BLOCK`
    on the CPU backend and vLLM's own choice (None) on a GPU."""
    if not isinstance(requested, str):
        return int(requested), "set in the config"
    if device != "cpu":
        return None, "auto: vLLM's default on a GPU"
    return CPU_KV_BLOCK, f"auto: {CPU_KV_BLOCK} on the CPU backend (vLLM's 128 reuses almost no shared prompt prefix)"


def cpu_threads_env(
    bind: str, cpus: float = 1.0, ranks: int = 1, max_cores: int | None = None, replicas: int = 1
) -> tuple[dict[str, str], str]:
    """Environment for a CPU engine's worker from ``engine.cpu_threads_bind``, and why.

    vLLM binds its compute threads once at engine start; left alone it holds one
    core back for its scheduler process and binds the rest of the node. ``auto``: a
    single replica on this machine (``max_cores`` known: a local Ray) computes on every
    core, ``0..max_cores-1``: faster in plain vLLM and in the default run, with Ray's own
    processes on the same cores (benchmarks/README.md, "vLLM on the CPU: dtype x
    compute-thread binding").
    Elsewhere (several replicas here, or engines on a cluster's nodes) it binds as many
    cores as the replica reserves in Ray (``cpus``, at least 1), so replicas do not share
    cores. A machine shared with other heavy jobs is the exception: there one core was
    faster (compute threads on every core stall whenever another process takes one);
    set ``cpu_threads_bind=0`` there. ``vllm`` keeps vLLM's own binding; anything else is
    passed as ``VLLM_CPU_OMP_THREADS_BIND`` (``0-1``, ``0-3|4-7`` for two ranks, ``nobind``).
    """
    if bind == "vllm":
        return {}, "vllm: vLLM's own binding (one core held back for its scheduler)"
    if bind != "auto":
        return {"VLLM_CPU_OMP_THREADS_BIND": bind}, "set in the config"
    if ranks > 1:
        return {}, "auto with several CPU ranks: vLLM's own binding (one NUMA node a rank)"
    if max_cores and replicas == 1:
        c, why = max_cores, f"auto: all {max_cores} core(s) of this machine (one replica here)"
    else:
        c = max(1, int(cpus))
        if max_cores:
            c = min(c, max_cores)
        why = f"auto: {c} core(s), as many as the replica reserves"
    ids = "0" if c == 1 else f"0-{c - 1}"
    return {"VLLM_CPU_OMP_THREADS_BIND": ids}, why


_CPU_IDS = r"\d+(-\d+)?(,\d+(-\d+)?)*"


def local_cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_threads_bind(bind: str, where: str = "cpu_threads_bind") -> None:
    """A one-line ConfigError unless ``bind`` is a value :func:`cpu_threads_env` takes."""
    if bind in ("auto", "vllm", "nobind") or re.fullmatch(rf"{_CPU_IDS}(\|{_CPU_IDS})*", bind):
        return
    raise ConfigError(f"{where} must be auto, vllm, nobind or CPU ids like 0-1 or 0-3|4-7, got {bind!r}")


def describe(resolved: dict) -> str:
    """One log line of :func:`resolve_engine`'s answer."""
    env = " ".join(f"{k}={v}" for k, v in (resolved.get("env") or {}).items()) or "none"
    line = (
        f"dtype {resolved['dtype']} ({resolved['dtype_reason']}); memory_utilization "
        f"{resolved['memory_utilization']} ({resolved['memory_reason']}); engine env {env}"
    )
    return line + (f" ({resolved['threads_reason']})" if resolved.get("threads_reason") else "")


# In a CPU engine's environment: synth_empathy.engines.cpu_top_p (a vLLM plugin) cuts top-p there.
CPU_TOP_P_ENV = "SYNTH_EMPATHY_CPU_TOP_P"

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def resolve_engine(engine, where: str = "engine", hw: Hardware | None = None, max_cores: int | None = None) -> dict:
    """What an EngineConfig runs with here: dtype, memory share, CPU thread env, and why.

    Pure apart from :func:`detect` (pass ``hw`` to test); warnings are returned under
    ``warning``, not logged. ``max_cores``: the cores of the machine the engine runs on,
    when known (a local Ray), to keep ``auto`` from binding cores that are not there.
    """
    device = "cuda" if engine.gpus_per_replica else "cpu"
    if hw is None:
        hw = detect(with_cuda=device == "cuda")
    choice = choose_dtype(engine.dtype, device, hw, f"{where}.dtype")
    mem, mem_reason = memory_share(engine.memory_utilization, device, choice.dtype)
    out = {
        "device": device,
        "dtype": choice.dtype,
        "dtype_reason": choice.reason,
        "memory_utilization": mem,
        "memory_reason": mem_reason,
    }
    out["block_size"], out["block_size_reason"] = kv_block_size(getattr(engine, "kv_block_size", "auto"), device)
    if device == "cpu":
        ranks = engine.tensor_parallel_size * engine.pipeline_parallel_size
        out["env"], out["threads_reason"] = cpu_threads_env(
            engine.cpu_threads_bind, engine.cpus_per_replica, ranks, max_cores, engine.replicas
        )
        if getattr(engine, "fast_top_p", True):
            out["env"][CPU_TOP_P_ENV] = "fast"  # read by synth_empathy.engines.cpu_top_p in the engine
    else:
        out["env"] = {}
    if choice.warning:
        out["warning"] = choice.warning
    return out

"""dtype / memory / thread-binding choices (synth_empathy.core.hardware) on injected machines.

Two CPU kinds seen on this project's machines: AVX2 only (AMD EPYC Zen 3: bf16 emulated)
and AVX-512 with avx512_bf16 (Zen 4); none of these tests reads the host's CPU.
"""

from __future__ import annotations

import logging

import pytest

from synth_empathy.config import ConfigError, load_config, resolve_hardware
from synth_empathy.core import hardware as H

AVX2 = H.Hardware(cpu_model="AMD EPYC 7B13", cpu_flags=frozenset({"sse4_2", "avx", "avx2", "fma"}))
ZEN4 = H.Hardware(cpu_model="AMD EPYC 9B14", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
SPR = H.Hardware(cpu_model="Intel Xeon 8480", cpu_flags=frozenset({"avx512f", "amx_bf16", "amx_tile"}))
A100 = H.Hardware(cpu_flags=AVX2.cpu_flags, cuda=True, cuda_bf16=True, cuda_name="NVIDIA A100")
T4 = H.Hardware(cpu_flags=AVX2.cpu_flags, cuda=True, cuda_bf16=False, cuda_name="Tesla T4")


def test_auto_on_cpus():
    assert H.choose_dtype("auto", "cpu", ZEN4) == H.DtypeChoice("bfloat16", "cpu has avx512_bf16")
    assert H.choose_dtype("auto", "cpu", SPR) == H.DtypeChoice("bfloat16", "cpu has amx_bf16")
    c = H.choose_dtype("auto", "cpu", AVX2)
    assert c.dtype == "float32" and "no avx512_bf16 or amx_bf16" in c.reason and c.warning is None
    assert H.bf16_native(ZEN4) and H.bf16_native(SPR) and not H.bf16_native(AVX2)


def test_auto_on_gpus():
    assert H.choose_dtype("auto", "cuda", A100).dtype == "bfloat16"
    assert H.choose_dtype("auto", "cuda", T4) == H.DtypeChoice(
        "float16", "GPU Tesla T4 has no bf16 (compute capability < 8.0)"
    )
    # The engines' GPUs are on other nodes: vLLM decides there.
    assert H.choose_dtype("auto", "cuda", AVX2).dtype == "auto"


def test_explicit_bf16_on_an_avx2_cpu_warns_with_the_cost():
    c = H.choose_dtype("bfloat16", "cpu", AVX2)
    assert c.dtype == "bfloat16" and c.reason == "set in the config"
    assert "bf16 is emulated on this CPU (AMD EPYC 7B13" in c.warning and "3.6x slower than float32" in c.warning
    assert H.choose_dtype("bfloat16", "cpu", ZEN4).warning is None
    assert H.choose_dtype("bfloat16", "cuda", T4).warning is None  # not a CPU engine
    assert H.choose_dtype("float32", "cpu", AVX2).warning is None


@pytest.mark.parametrize("alias, name", [("half", "float16"), ("float", "float32"), ("BFloat16", "bfloat16")])
def test_vllm_aliases(alias, name):
    assert H.choose_dtype(alias, "cpu", AVX2).dtype == name


def test_unknown_dtype_is_one_line():
    with pytest.raises(ConfigError) as e:
        H.canonical_dtype("float64x", "generation.engine.dtype")
    assert str(e.value).startswith("generation.engine.dtype must be one of auto, bfloat16, float16")
    assert "'float64x'" in str(e.value) and "\n" not in str(e.value)


def test_memory_share_follows_the_dtype_unless_given():
    assert H.memory_share("auto", "cpu", "float32")[0] == 0.3
    assert H.memory_share("auto", "cpu", "bfloat16")[0] == 0.15
    assert H.memory_share("auto", "cuda", "auto")[0] == 0.9
    assert H.memory_share(0.2, "cpu", "float32") == (0.2, "set in the config")


def test_thread_binding_env():
    # auto: as many cores as the replica reserves, from core 0; clamped to a local machine.
    assert H.cpu_threads_env("auto", 1.0)[0] == {"VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert H.cpu_threads_env("auto", 0.5)[0] == {"VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert H.cpu_threads_env("auto", 2.0)[0] == {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    assert H.cpu_threads_env("auto", 8.0, max_cores=2, replicas=2)[0] == {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    # One replica on this machine computes on all of it; several keep to their reservation.
    assert H.cpu_threads_env("auto", 1.0, max_cores=2) == (
        {"VLLM_CPU_OMP_THREADS_BIND": "0-1"},
        "auto: all 2 core(s) of this machine (one replica here)",
    )
    assert H.cpu_threads_env("auto", 1.0, max_cores=8, replicas=4)[0] == {"VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert H.cpu_threads_env("auto", 2.0, ranks=2)[0] == {}  # tp x pp ranks: vLLM's own per-rank lists
    assert H.cpu_threads_env("vllm", 2.0)[0] == {}
    assert H.cpu_threads_env("0-3|4-7", 1.0) == ({"VLLM_CPU_OMP_THREADS_BIND": "0-3|4-7"}, "set in the config")
    assert H.cpu_threads_env("nobind")[0] == {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    for ok in ("auto", "vllm", "nobind", "0", "0-1", "0,2-3", "0-3|4-7"):
        H.check_threads_bind(ok)
    for bad in ("", "all", "0-", "0-1|", "1;2"):
        with pytest.raises(ConfigError, match="must be auto, vllm, nobind or CPU ids"):
            H.check_threads_bind(bad)


def test_read_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    cpu = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
    f.write_text("processor\t: 0\n" + cpu + "processor\t: 1\n" + cpu)
    model, flags = H.read_cpuinfo(str(f))
    assert model == "AMD EPYC 9B14" and {"avx512_bf16", "avx2"} <= flags
    assert H.read_cpuinfo(str(tmp_path / "none")) == ("", frozenset())


def test_config_load_records_the_choice_on_both_machines():
    cfg = load_config("default", ["generation.engine.memory_utilization=0.2"])
    resolve_hardware(cfg, AVX2)
    g, d = cfg.generation.engine.resolved, cfg.discriminator.engine.resolved
    assert (g.dtype, g.memory_utilization, g.memory_reason) == ("float32", 0.2, "set in the config")
    assert (d.dtype, d.memory_utilization) == ("float32", 0.3)
    cores = H.local_cores()
    assert "no avx512_bf16" in d.dtype_reason
    assert d.env == {"VLLM_CPU_OMP_THREADS_BIND": "0" if cores == 1 else f"0-{cores - 1}", H.CPU_TOP_P_ENV: "fast"}
    assert d.threads_reason == f"auto: all {cores} core(s) of this machine (one replica here)"
    assert cfg.generation.engine.dtype == "auto"  # what was asked stays
    resolve_hardware(cfg, ZEN4)
    d = cfg.discriminator.engine.resolved
    assert (d.dtype, d.dtype_reason, d.memory_utilization) == ("bfloat16", "cpu has avx512_bf16", 0.15)


def test_emulated_bf16_warns_once(caplog):
    overrides = ["generation.engine.dtype=bfloat16", "discriminator.engine.dtype=bfloat16"]
    cfg = load_config("default", overrides)
    # load_config resolved for this machine: on an AVX2-only one it has warned already
    H._warned.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="synth_empathy"):
        resolve_hardware(cfg, AVX2)
        resolve_hardware(cfg, AVX2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "3.6x slower than float32" in warnings[0]
    assert "generation.engine, discriminator.engine set dtype=bfloat16" in warnings[0]
    assert H.describe(cfg.generation.engine.resolved).startswith(
        "dtype bfloat16 (set in the config); memory_utilization 0.15 ("
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synth_empathy"):
        resolve_hardware(cfg, ZEN4)
    assert not caplog.records

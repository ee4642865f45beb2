"""Loaded at start-up by every Python process that ``benchmarks/avx2_emulation.py`` runs.

Libraries that pick their code path from what the CPU reports (not from an environment
variable) are shown a CPU without AVX-512 and without native bf16, as an AVX2-only machine
(Zen 3) reports it:

* ``torch.cpu.get_capabilities()``: vLLM loads ``_C_AVX2`` instead of its AVX-512 build
  and picks its AVX2 paths from it;
* ``synth_empathy.core.hardware.read_cpuinfo``: ``dtype=auto`` resolves to float32 and
  k-center ``fast`` ranks in int8, as they would on that machine.

Each module is patched right after it is first imported, so nothing is imported early.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

HIDDEN = ("avx512", "amx", "avx_vnni")  # feature names that an AVX2-only CPU lacks


def _hidden(name: str) -> bool:
    return name.lower().replace("-", "_").startswith(HIDDEN)


def _patch_torch_cpu(module) -> None:
    real = module.get_capabilities

    def get_capabilities():
        from types import MappingProxyType

        return MappingProxyType({k: (False if _hidden(k) else v) for k, v in real().items()})

    module.get_capabilities = get_capabilities


def _patch_hardware(module) -> None:
    real = module.read_cpuinfo

    def read_cpuinfo(path: str = "/proc/cpuinfo"):
        model, flags = real(path)
        if path != "/proc/cpuinfo":  # a test's own file: its flags are the point
            return model, flags
        return model, frozenset(f for f in flags if not _hidden(f))

    module.read_cpuinfo = read_cpuinfo


PATCHES = {"torch.cpu": _patch_torch_cpu, "synth_empathy.core.hardware": _patch_hardware}


class _PatchAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)  # find the real spec without finding ourselves
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._real = getattr(self, "_real", {})
        self._real[name] = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._real[spec.name].create_module(spec)

    def exec_module(self, module):
        self._real[module.__name__].exec_module(module)
        PATCHES[module.__name__](module)


if os.environ.get("SYNTH_EMPATHY_AVX2_EMULATION") == "1":
    sys.meta_path.insert(0, _PatchAfterImport())

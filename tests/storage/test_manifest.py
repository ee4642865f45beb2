"""The run manifest records what the engines resolved to and on which machine (no Ray)."""

from __future__ import annotations

import json

from synth_empathy.config import load_config
from synth_empathy.storage.manifest import new_manifest
from synth_empathy.storage.run_store import RunStore


def test_manifest_holds_the_resolved_dtype_its_reason_and_the_cpu(tmp_path):
    cfg = load_config("default", ["generation.engine.dtype=float32"])
    store = RunStore(str(tmp_path), "r1", {})
    store.check_writable()  # creates the run folder, as pipeline.preflight does
    new_manifest(store, cfg)
    m = json.loads((tmp_path / "r1" / "manifest.json").read_text())
    g = m["config"]["generation"]["engine"]
    assert g["dtype"] == "float32" and g["resolved"]["dtype"] == "float32"
    assert g["resolved"]["dtype_reason"] == "set in the config"
    assert g["resolved"]["memory_utilization"] == 0.3
    d = m["config"]["discriminator"]["engine"]["resolved"]
    assert d["dtype"] in ("bfloat16", "float32") and d["dtype_reason"].startswith("cpu has")
    assert set(m["hardware"]) >= {"cpu_model", "cpu_bf16", "cuda"}

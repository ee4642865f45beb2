"""The ``guarded`` fixture: a fresh working folder with tripwires on everything heavy."""

from __future__ import annotations

import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


class Ran(AssertionError):
    """Something ran that bad input must stop first."""


def _tripwire(what):
    def fired(*a, **kw):
        raise Ran(f"{what} ran on bad input")

    return fired


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """A fresh working folder (no ../shared beside it) and tripwires on everything heavy."""
    import synth_empathy.cluster.ray_init as ray_init
    import synth_empathy.cluster.submit as submit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTH_EMPATHY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ray_init, "init_ray", _tripwire("init_ray"))
    monkeypatch.setattr(submit, "connect", _tripwire("submit's cluster connection"))
    # the training stack as the train command imports it, after its checks
    fake_run = types.ModuleType("synth_empathy.training.run")
    fake_run.run_training = _tripwire("training")
    fake_run.counts_line = str
    monkeypatch.setitem(sys.modules, "synth_empathy.training.run", fake_run)
    (tmp_path / "in.jsonl").write_text(json.dumps({"instruction": "Speaker: hi\nListener:", "output": "hello"}) + "\n")
    # five seed pairs: a reference set far under the judge validation's minimum
    pairs = [{"context": f"I lost thing number {i}.", "response": f"Oh no, sorry about {i}."} for i in range(5)]
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    table = pa.table({"sample_id": ["a", "b"], "embedding": pa.array([[0.0, 1.0], [1.0, 0.0]], pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "in.parquet")
    return tmp_path

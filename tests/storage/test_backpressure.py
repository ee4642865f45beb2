"""What may wait unwritten behind a fast engine (synth_empathy.storage.backpressure).

A small Ray run in a subprocess, shaped like an LLM stage: rows cut into parts, a pool of
two "engine" actors that answer at once, and writes that take a while per part (a sleep
in the map before the write, as a stage's postprocess is). Each engine batch notes how
many rows the engines have answered and how many parts are on disk. Without the bound
the engines ran 450 of 600 rows ahead of the parts on disk; with it the lead stays within
the parts in flight, counted from the run's own settings (120 rows here; it was 60).
No timing is asserted: only counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, sys, time
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

import synth_empathy.storage.backpressure as bp
from synth_empathy.storage.run_store import WRITE_CPUS, RunStore

out, parts, rows, replicas, cpus = sys.argv[1], *map(int, sys.argv[2:6])
ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
schema = pa.schema([("sample_id", pa.string())])


class Engine:
    def __init__(self, folder, log):
        self.folder, self.log = folder, log

    def __call__(self, batch):
        written = sum(1 for f in os.listdir(self.folder) if f.endswith(".parquet"))
        with open(self.log, "a") as f:
            f.write(f"{batch.num_rows} {written}\n")
        return batch


def slow_write(batch):  # the part's postprocess, fused into the task that writes it
    time.sleep(0.8)
    return batch


def run(name):
    store = RunStore(out, name)
    folder, log = store.path("stage"), os.path.join(out, name + ".log")
    os.makedirs(folder, exist_ok=True)
    ds = ray.data.from_items([{"sample_id": f"s{i}"} for i in range(parts * rows)])
    ds = ds.repartition(target_num_rows_per_block=rows, strict=True)
    ds = ds.map_batches(Engine, fn_constructor_args=(folder, log), batch_size=rows // 2, batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=replicas), num_cpus=WRITE_CPUS)
    ds = ds.map_batches(slow_write, batch_size=None, batch_format="pyarrow", num_cpus=WRITE_CPUS)
    store.write_dataset("stage", ds, schema, resume=True)
    answered = lead = 0
    for line in open(log):
        n, written = map(int, line.split())
        answered += n
        lead = max(lead, answered - written * rows)
    return {"answered": answered, "written": store.count_rows("stage"), "lead": lead}


unbounded = bp.bound_queued_blocks
bp.bound_queued_blocks = lambda ds: ds  # Ray Data's own policies only
free = run("free")
bp.bound_queued_blocks = unbounded
print(json.dumps({"free": free, "bounded": run("bounded")}))
"""


def test_a_fast_engine_runs_at_most_the_parts_in_flight_ahead_of_the_writes(tmp_path):
    from ray.data.context import DataContext

    from synth_empathy.storage.backpressure import QUEUED_BLOCKS
    from synth_empathy.storage.run_store import WRITE_CPUS

    parts, rows, replicas, cpus = 60, 10, 2, 2
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(parts), str(rows), str(replicas), str(cpus)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for run in got.values():
        assert run["answered"] == run["written"] == parts * rows  # every row once, whatever held it back
    # The parts in flight: queued or running at an engine actor, waiting, being written.
    at_engines = replicas * (DataContext.get_current().max_tasks_in_flight_per_actor or 2)
    writing = int((cpus - replicas * WRITE_CPUS) / WRITE_CPUS)
    in_flight = (at_engines + QUEUED_BLOCKS + writing) * rows
    assert got["bounded"]["lead"] <= in_flight, got
    # The set-up can fail: without the bound the engines ran far ahead of the writes.
    assert got["free"]["lead"] > in_flight, got

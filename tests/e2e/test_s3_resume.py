"""The real pipeline on a loopback S3 API, hurt twice: nothing lost, nothing doubled.

The driver is killed with SIGKILL (its whole process group, local Ray included) in the
middle of generation, then the run is resumed with the same id, and during the resumed
run's discriminator stage the vLLM engine actor's process is killed. The run must end
complete, every id once, and the generations finished before the first kill must not be
generated again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pyarrow.parquet as pq
import pytest

from helpers import BUCKET, s3fs_client
from synth_empathy.config import all_keys

N_SEEDS = 8
OVERRIDES = [
    f"seeds.limit={N_SEEDS}",
    "generation.sampling.max_tokens=160",
    "discriminator.sampling.max_tokens=48",
    # What the model writes must not empty the run: one complete round makes a sample
    # (two rounds at 160 tokens: 39 of the first 8 seeds' 64 answers on a 2-core Zen 4,
    # one: 60 of 64), and the discriminator then has rows to be killed in.
    "turns.min_history=0",
    "quality.threshold=0",
    "calibration.enabled=false",  # calibration is tested in test_pipeline.py; an engine pass less
    "diversity.keep_ratio=0.5",
    # Generations one at a time, a part each, so that they finish one after another and
    # the kill below lands after the first part and before the last even on a fast CPU
    # (with batches of 2, all four parts of the stage once came within one poll);
    # discriminator batches of 2, so that its engine is busy for a while to be killed in.
    "storage.part_rows=1",
    "generation.engine.batch_size=1",
    "discriminator.engine.batch_size=2",
    "generation.engine.max_num_seqs=1",
    "discriminator.engine.max_num_seqs=2",
    # each stage its own engine through a ray.data.llm processor: the engine actor killed
    # below is that processor's (the shared Serve engine is the default run's, test_pipeline)
    "ray.engines=per-stage",
]
if "judge.enabled" in {k for k, _, _ in all_keys()}:
    OVERRIDES.append("judge.enabled=false")  # the judge is tested elsewhere; one engine less here


def _tagged_pids(tag: str):
    """Our processes: those whose environment carries this test's tag (driver, raylet,
    GCS, workers, vLLM engine cores all inherit it). Never anybody else's."""
    me = os.getpid()
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"SE_STORAGE_TEST_TAG={tag}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def _kill_tagged(tag: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = _tagged_pids(tag)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"processes of this test still alive: {_tagged_pids(tag)}")


def _readable_parts(fs, folder):
    """{part path: ids} of the parts of a stage folder that read back whole right now."""
    parts = {}
    if not fs.exists(folder):
        return parts
    for path in fs.find(folder):
        if not path.endswith(".parquet"):
            continue
        try:
            with fs.open(path, "rb") as f:
                parts[path] = pq.read_table(f, columns=["sample_id"]).column("sample_id").to_pylist()
        except Exception:
            continue
    return parts


def _start(cmd, env, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log


@pytest.fixture(scope="module")
def hurt_run(s3, aws_env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    tag = uuid.uuid4().hex
    # A short Ray temp dir of our own (Unix socket paths are short) and a tag in the
    # environment of every process this run starts, so cleanup touches only ours.
    ray_tmp = tempfile.mkdtemp(prefix="se-ray-", dir="/tmp")
    env = {**os.environ, "SE_STORAGE_TEST_TAG": tag, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    output = f"s3://{BUCKET}/runs"
    cmd = [
        sys.executable,
        "-m",
        "synth_empathy",
        "run",
        f"output={output}",
        "run_id=hurt",
        f"storage.endpoint_url={s3}",
        *OVERRIDES,
    ]
    fs = s3fs_client(s3)
    gen_folder = f"{BUCKET}/runs/hurt/generations"
    info = {"tag": tag, "logs": logs}
    try:
        # Attempt 1: SIGKILL the driver's whole process group once some generation parts
        # are written and before the stage is done.
        t0 = time.time()
        proc, log = _start(cmd, env, logs / "attempt1.log")
        at_kill = {}
        while time.time() - t0 < 900:
            if proc.poll() is not None:
                break
            fs.invalidate_cache()
            at_kill = _readable_parts(fs, gen_folder)
            if at_kill and not fs.exists(f"{BUCKET}/runs/hurt/generations.done.json"):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (
            "attempt 1 ended before it could be killed:\n" + (logs / "attempt1.log").read_text()[-3000:]
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
        info["kill1_s"] = round(time.time() - t0, 1)
        fs.invalidate_cache()
        at_kill = _readable_parts(fs, gen_folder)  # what was complete when it died
        info["at_kill"] = at_kill
        info["stray_after_killpg"] = sorted(_tagged_pids(tag).values())
        _kill_tagged(tag)  # no raylet, GCS or worker of attempt 1 survives into attempt 2
        assert not fs.exists(f"{BUCKET}/runs/hurt/generations.done.json")

        # Attempt 2: same run id. While its discriminator runs, SIGKILL the engine actor.
        t1 = time.time()
        proc, log = _start(cmd, env, logs / "attempt2.log")
        killed_engine = None
        generator_engines = set()  # engine actors of the generation stage: not the target
        engines_after_kill = set()  # engine actors alive after the kill: the replacement among them
        while proc.poll() is None and time.time() - t1 < 900:
            fs.invalidate_cache()
            engines = {p: c for p, c in _tagged_pids(tag).items() if "vLLMEngineStageUDF" in c}
            if killed_engine is not None:
                engines_after_kill.update(engines)
            if not fs.exists(f"{BUCKET}/runs/hurt/samples.done.json"):
                generator_engines.update(engines)
            elif killed_engine is None and not fs.exists(f"{BUCKET}/runs/hurt/discriminated.done.json"):
                # the discriminator's engine actor while it executes a batch (Ray titles
                # an actor process "<class>.submit" while a task of it runs)
                targets = sorted(p for p in set(engines) - generator_engines if ".submit" in engines[p])
                if targets:
                    os.kill(targets[0], signal.SIGKILL)
                    killed_engine = (targets[0], engines[targets[0]])
            time.sleep(0.5)
        rc = proc.wait(timeout=60)
        log.close()
        info.update(
            rc2=rc,
            attempt2_s=round(time.time() - t1, 1),
            killed_engine=killed_engine,
            generator_engines=generator_engines,
            engines_after_kill=engines_after_kill,
            log2=(logs / "attempt2.log").read_text(),
        )
        fs.invalidate_cache()
        # A run that selects nothing exits 1 by design (then only the model's text did it:
        # the tests below check each id's way through the stages, whatever the counts).
        report = f"{BUCKET}/runs/hurt/report.json"
        info["rc_ok"] = 1 if fs.exists(report) and not json.loads(fs.cat(report))["counts"]["selected"] else 0
        yield fs, info
    finally:
        _kill_tagged(tag)
        subprocess.run(["rm", "-rf", ray_tmp])


def _table(fs, stage):
    import pyarrow.dataset as pds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return pds.dataset(
        f"{BUCKET}/runs/hurt/{stage}", filesystem=PyFileSystem(FSSpecHandler(fs)), format="parquet"
    ).to_table()


@pytest.mark.e2e
def test_resumed_run_on_s3_is_complete_and_reads_back(hurt_run):
    fs, info = hurt_run
    assert info["rc2"] == info["rc_ok"], info["log2"][-4000:]
    for stage in ("seeds", "generations", "samples", "discriminated", "scored", "selected"):
        assert fs.exists(f"{BUCKET}/runs/hurt/{stage}.done.json"), stage
    seeds = set(_table(fs, "seeds").column("seed_id").to_pylist())
    gens = _table(fs, "generations").column("sample_id").to_pylist()
    assert len(seeds) == N_SEEDS and len(gens) == len(set(gens)) == N_SEEDS  # nothing lost, nothing doubled
    samples = _table(fs, "samples")
    assert sorted(samples.column("sample_id").to_pylist()) == sorted(gens)
    good = {r["sample_id"] for r in samples.to_pylist() if r["drop_reason"] is None}
    disc = _table(fs, "discriminated").column("sample_id").to_pylist()
    assert len(disc) == len(set(disc)) and set(disc) == good
    scored = _table(fs, "scored").column("sample_id").to_pylist()
    assert sorted(scored) == sorted(disc)
    selected = _table(fs, "selected").column("sample_id").to_pylist()
    assert len(selected) == len(set(selected)) and set(selected) <= good
    with fs.open(f"{BUCKET}/runs/hurt/selected.alpaca.jsonl") as f:
        assert len(f.read().decode().splitlines()) == len(selected)
    manifest = json.loads(fs.cat(f"{BUCKET}/runs/hurt/manifest.json"))
    assert manifest["attempts"] == 2 and manifest["finished"]
    assert manifest["counts"]["selected"] == len(selected)
    assert manifest["versions"]["ray"] and manifest["versions"]["pyarrow"]
    assert "code_revision" in manifest
    assert fs.exists(f"{BUCKET}/runs/hurt/config.yaml") and fs.exists(f"{BUCKET}/runs/hurt/report.json")


@pytest.mark.e2e
def test_killed_driver_leaves_finished_generations_that_are_not_redone(hurt_run):
    fs, info = hurt_run
    assert info["rc2"] == info["rc_ok"], info["log2"][-4000:]
    at_kill = info["at_kill"]
    done_before = {i for ids in at_kill.values() for i in ids}
    assert 0 < len(done_before) < N_SEEDS, at_kill
    parts_now = _readable_parts(fs, f"{BUCKET}/runs/hurt/generations")
    assert set(at_kill) <= set(parts_now)  # the parts finished before the kill were kept
    new = {i for p, ids in parts_now.items() if p not in at_kill for i in ids}
    assert new and not (new & done_before)  # and their rows were not generated again
    assert new | done_before == set(_table(fs, "generations").column("sample_id").to_pylist())
    assert f"[generations] resuming: {len(done_before)} rows" in info["log2"]
    marker = json.loads(fs.cat(f"{BUCKET}/runs/hurt/generations.done.json"))
    assert marker["salvaged"]["rows_kept"] == len(done_before)


@pytest.mark.e2e
def test_killed_engine_actor_is_replaced_without_losing_or_doubling_rows(hurt_run):
    fs, info = hurt_run
    good = {r["sample_id"] for r in _table(fs, "samples").to_pylist() if r["drop_reason"] is None}
    if not good:
        pytest.skip("the generator wrote no usable dialogue: the discriminator had no rows, no engine to kill")
    assert info["killed_engine"], "no engine actor was found to kill:\n" + info["log2"][-3000:]
    assert info["rc2"] == info["rc_ok"], info["log2"][-4000:]
    # Ray Data started a replacement: an engine actor process of this run, seen after the
    # kill, that is neither the killed one nor the generator's. (Read from the processes,
    # not the log: a local run keeps the workers' lines in Ray's session logs.)
    pids = info["engines_after_kill"]
    assert pids - {info["killed_engine"][0]} - info["generator_engines"], (pids, info["killed_engine"])
    disc = _table(fs, "discriminated")
    ids = disc.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) == good

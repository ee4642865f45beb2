"""Object storage, checkpoints and resume: nothing lost, nothing doubled.

The fast tests check the pieces on a local folder (salvaging a stage folder that holds
a truncated part, the id filter, the doubled-id check, secret redaction, storage
options) and the preflight errors against a real S3 API: moto's server on 127.0.0.1.

The e2e test runs the real pipeline once against that S3 API and hurts it twice:
the driver is killed with SIGKILL (its whole process group, local Ray included) in the
middle of generation, then the run is resumed with the same id, and during the resumed
run's discriminator stage the vLLM engine actor's process is killed. The run must end
complete, every id once, and the generations finished before the first kill must not be
generated again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from synth_empathy.config import all_keys, load_config, redact, redacted_yaml

from synth_empathy.store import DuplicateRowsError, RunStore, StorageError, exclude_ids, storage_options

BUCKET = "synth-runs"


# ----------------------------------------------------------------------------- fixtures

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def aws_env():
    """Dummy credentials for the test process only (moto accepts any by default)."""
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in list(keys) + ["AWS_PROFILE"]}
    os.environ.update(keys)
    os.environ.pop("AWS_PROFILE", None)
    yield keys
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def s3(aws_env):
    """A real S3 API on loopback with one bucket; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _s3fs(endpoint):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


# ----------------------------------------------------------------------- storage options

def test_storage_options_only_for_s3_and_only_what_is_set():
    cfg = load_config(overrides=["storage.endpoint_url=http://h:9000", "storage.region=eu-west-1",
                                 "storage.key=AK", "storage.secret=SK"])
    assert storage_options("s3://b/p", cfg.storage) == {
        "client_kwargs": {"endpoint_url": "http://h:9000", "region_name": "eu-west-1"},
        "key": "AK", "secret": "SK"}
    assert storage_options("/tmp/x", cfg.storage) == {}
    assert storage_options("s3://b", load_config().storage) == {}  # the AWS chain decides
    assert storage_options("s3://b", load_config(overrides=["storage.profile=p"]).storage) == {"profile": "p"}


def test_half_given_credentials_are_a_config_error():
    from synth_empathy.config import ConfigError

    with pytest.raises(ConfigError, match="storage.key and storage.secret"):
        load_config(overrides=["storage.key=AK"])


def test_secrets_are_redacted_everywhere_they_are_written(tmp_path):
    cfg = load_config(overrides=["storage.key=AKIAXXXX", "storage.secret=s3cr3t",
                                 "generation.engine.extra.hf_token=hf_abc"])
    text = redacted_yaml(cfg)
    assert "AKIAXXXX" not in text and "s3cr3t" not in text and "hf_abc" not in text
    plain = redact(cfg)
    assert plain["storage"]["key"] == plain["storage"]["secret"] == "***"
    assert plain["generation"]["sampling"]["max_tokens"] == 300  # not a secret
    assert plain["storage"]["endpoint_url"] == ""
    out = subprocess.run([sys.executable, "-m", "synth_empathy", "config", "storage.key=AKIAXXXX",
                          "storage.secret=s3cr3t"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "s3cr3t" not in out.stdout and "AKIAXXXX" not in out.stdout
    assert OmegaConf.create(out.stdout).storage.secret == "***"


# --------------------------------------------------------------------- salvage and filter

def _part(path, ids):
    pq.write_table(pa.table({"sample_id": ids, "x": list(range(len(ids)))}), path)


def test_resume_keeps_complete_parts_and_drops_half_written_ones(tmp_path):
    store = RunStore(str(tmp_path), "r")
    folder = tmp_path / "r" / "generations"
    folder.mkdir(parents=True)
    _part(folder / "a.parquet", ["s1", "s2"])
    _part(folder / "b.parquet", ["s3"])
    whole = (folder / "b.parquet").read_bytes()
    (folder / "c.parquet").write_bytes(whole[: len(whole) // 2])  # killed mid-write: no footer
    (folder / "d.parquet").write_bytes(b"")
    _part(folder / "e.parquet", ["s3", "s4"])  # overlaps b: dropped, s4 is redone
    ids = store.resume("generations")
    assert ids.to_pylist() == ["s1", "s2", "s3"]
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet", "b.parquet"]
    assert store.salvaged == {"parts_kept": 2, "parts_dropped": 3, "rows_kept": 3}
    assert not store.is_done("generations")  # salvaging never marks a stage done
    with pytest.raises(RuntimeError, match="not finished"):
        store.read_table("generations")


def test_verify_refuses_doubled_ids_and_finish_marks_done(tmp_path):
    store = RunStore(str(tmp_path), "r")
    folder = tmp_path / "r" / "scored"
    folder.mkdir(parents=True)
    _part(folder / "a.parquet", ["s1", "s2"])
    assert store.verify("scored") == {"rows": 2, "parts": 1}
    _part(folder / "b.parquet", ["s2"])
    with pytest.raises(DuplicateRowsError, match="1 doubled sample_id"):
        store.verify("scored")


def test_resume_of_an_untouched_stage_is_empty(tmp_path):
    store = RunStore(str(tmp_path), "r")
    assert len(store.resume("samples")) == 0
    assert (tmp_path / "r" / "samples").is_dir()


def test_exclude_ids_filters_an_arrow_batch():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        ref = ray.put(pa.array(["s2", "s9"]))
        batch = pa.table({"sample_id": ["s1", "s2", "s3"], "v": [1, 2, 3]})
        assert exclude_ids(batch, [ref]).column("sample_id").to_pylist() == ["s1", "s3"]
        ds = ray.data.from_arrow(batch).map_batches(exclude_ids, fn_args=([ref],), batch_format="pyarrow")
        assert sorted(r["sample_id"] for r in ds.take_all()) == ["s1", "s3"]
    finally:
        ray.shutdown()


# ------------------------------------------------------------------ S3 preflight errors

def _run_cli(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "synth_empathy", "run", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _nothing_started(stderr):
    """One error line, and no sign of Ray or of a model (botocore's INFO lines may precede it)."""
    lines = stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not any(w in stderr.lower() for w in ("ray", "vllm", "traceback", "no-such-model")), stderr


def test_s3_store_round_trip_through_the_run_store(s3):
    cfg = load_config(overrides=[f"storage.endpoint_url={s3}"])
    store = RunStore(f"s3://{BUCKET}/unit", "r1", storage_options(f"s3://{BUCKET}/unit", cfg.storage))
    store.check_writable()
    store.write_table("t", pa.table({"sample_id": ["a", "b"]}), pa.schema([("sample_id", pa.string())]))
    assert store.verify("t") == {"rows": 2, "parts": 1}
    store.finish("t", {"rows": 2})
    assert store.read_table("t").column("sample_id").to_pylist() == ["a", "b"]
    assert _s3fs(s3).exists(f"{BUCKET}/unit/r1/t.done.json")


def test_missing_bucket_is_one_line_before_any_model_loads(s3, tmp_path):
    out = _run_cli(f"output=s3://no-such-bucket-{uuid.uuid4().hex[:6]}/runs", f"storage.endpoint_url={s3}",
                   "generation.engine.model=packaged:no-such-model")
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: output s3://no-such-bucket-") and "NoSuchBucket" in line and "does not exist" in line, line
    _nothing_started(out.stderr)
    assert not _s3fs(s3).exists("no-such-bucket")  # and the check did not create it


def test_bad_credentials_are_one_line_before_any_model_loads(aws_env, tmp_path):
    """A second moto server that checks signatures (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                               "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        out = _run_cli(f"output=s3://{BUCKET}/runs", f"storage.endpoint_url=http://127.0.0.1:{port}",
                       "storage.key=AKIAWRONG", "storage.secret=wrong-secret",
                       "generation.engine.model=packaged:no-such-model")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: output s3://{BUCKET}/runs/") and "InvalidAccessKeyId" in line, line
    assert "wrong-secret" not in out.stderr
    _nothing_started(out.stderr)


# ---------------------------------------------------- the real pipeline, killed and resumed

# Enough seeds that the parts cannot all finish between two polls of the bucket, even on a
# loaded machine (with 6 rows, CI once found all three parts written at the first poll).
N_SEEDS = 12
OVERRIDES = [
    f"seeds.limit={N_SEEDS}",
    "generation.sampling.max_tokens=160",
    "discriminator.sampling.max_tokens=48",
    "quality.threshold=0",
    "diversity.keep_ratio=0.5",
    # parts of 2 rows, so that a kill leaves finished parts behind to resume from
    "storage.part_rows=2",
    "generation.engine.batch_size=2",
    "discriminator.engine.batch_size=2",
    # one batch at a time in the engine, so parts finish one after another (with more
    # sequences at once all batches finish together and a kill finds 0 or all rows)
    "generation.engine.max_num_seqs=2",
    "discriminator.engine.max_num_seqs=2",
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
    cmd = [sys.executable, "-m", "synth_empathy", "run", f"output={output}", "run_id=hurt",
           f"storage.endpoint_url={s3}", *OVERRIDES]
    fs = _s3fs(s3)
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
            time.sleep(0.5)
        assert proc.poll() is None, "attempt 1 ended before it could be killed:\n" + (logs / "attempt1.log").read_text()[-3000:]
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
        while proc.poll() is None and time.time() - t1 < 900:
            fs.invalidate_cache()
            engines = {p: c for p, c in _tagged_pids(tag).items() if "vLLMEngineStageUDF" in c}
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
        info.update(rc2=rc, attempt2_s=round(time.time() - t1, 1), killed_engine=killed_engine,
                    generator_engines=generator_engines,
                    log2=(logs / "attempt2.log").read_text())
        fs.invalidate_cache()
        yield fs, info
    finally:
        _kill_tagged(tag)
        subprocess.run(["rm", "-rf", ray_tmp])


def _table(fs, stage):
    import pyarrow.dataset as pds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return pds.dataset(f"{BUCKET}/runs/hurt/{stage}", filesystem=PyFileSystem(FSSpecHandler(fs)),
                       format="parquet").to_table()


@pytest.mark.e2e
def test_resumed_run_on_s3_is_complete_and_reads_back(hurt_run):
    fs, info = hurt_run
    assert info["rc2"] == 0, info["log2"][-4000:]
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
    assert len(selected) == len(set(selected)) > 0 and set(selected) <= good
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
    assert info["rc2"] == 0, info["log2"][-4000:]
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
    assert info["killed_engine"], "no engine actor was found to kill:\n" + info["log2"][-3000:]
    assert info["rc2"] == 0, info["log2"][-4000:]
    # Ray Data started a replacement: an engine actor of this run that is neither the
    # killed one nor the generator's logged after the kill.
    import re

    pids = set(map(int, re.findall(r"vLLMEngineStageUDF\)\) pid=(\d+)", info["log2"])))
    assert pids - {info["killed_engine"][0]} - info["generator_engines"], (pids, info["killed_engine"])
    disc = _table(fs, "discriminated")
    ids = disc.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids))
    good = {r["sample_id"] for r in _table(fs, "samples").to_pylist() if r["drop_reason"] is None}
    assert set(ids) == good

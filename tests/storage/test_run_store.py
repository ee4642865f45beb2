"""Object storage, checkpoints and resume: the pieces.

On a local folder: salvaging a stage folder that holds a truncated part, the id filter,
the doubled-id check, secret redaction, storage options. Against a real S3 API (moto's
server on 127.0.0.1): the run store's round trip and the preflight errors. The real
pipeline hurt and resumed on that S3 API is in tests/e2e/test_s3_resume.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from helpers import BUCKET, free_port, s3fs_client
from synth_empathy.config import load_config, redact, redacted_yaml
from synth_empathy.storage.run_store import DuplicateRowsError, RunStore, exclude_ids, storage_options


def test_storage_options_only_for_s3_and_only_what_is_set():
    cfg = load_config(
        overrides=[
            "storage.endpoint_url=http://h:9000",
            "storage.region=eu-west-1",
            "storage.key=AK",
            "storage.secret=SK",
        ]
    )
    assert storage_options("s3://b/p", cfg.storage) == {
        "client_kwargs": {"endpoint_url": "http://h:9000", "region_name": "eu-west-1"},
        "key": "AK",
        "secret": "SK",
    }
    assert storage_options("/tmp/x", cfg.storage) == {}
    assert storage_options("s3://b", load_config().storage) == {}  # the AWS chain decides
    assert storage_options("s3://b", load_config(overrides=["storage.profile=p"]).storage) == {"profile": "p"}


def test_half_given_credentials_are_a_config_error():
    from synth_empathy.config import ConfigError

    with pytest.raises(ConfigError, match="storage.key and storage.secret"):
        load_config(overrides=["storage.key=AK"])


def test_secrets_are_redacted_everywhere_they_are_written(tmp_path):
    cfg = load_config(
        overrides=["storage.key=AKIAXXXX", "storage.secret=s3cr3t", "generation.engine.extra.hf_token=hf_abc"]
    )
    text = redacted_yaml(cfg)
    assert "AKIAXXXX" not in text and "s3cr3t" not in text and "hf_abc" not in text
    plain = redact(cfg)
    assert plain["storage"]["key"] == plain["storage"]["secret"] == "***"
    assert plain["generation"]["sampling"]["max_tokens"] == 240  # not a secret
    assert plain["storage"]["endpoint_url"] == ""
    out = subprocess.run(
        [sys.executable, "-m", "synth_empathy", "config", "storage.key=AKIAXXXX", "storage.secret=s3cr3t"],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    salvage = store.resume("generations")
    assert salvage.ids.to_pylist() == ["s1", "s2", "s3"]
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet", "b.parquet"]
    assert salvage.summary() == {"parts_kept": 2, "parts_dropped": 3, "rows_kept": 3}
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
    assert store.resume("samples").rows_kept == 0
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


def test_parts_written_through_ray_have_row_groups_of_many_blocks(tmp_path):
    """A task hands the writer many small blocks (the quality stage's batches of 32 rows):
    they go into row groups of up to ROW_GROUP_ROWS rows, not one group each, whose
    footers the driver would read back by the thousand (verify, selection)."""
    import ray

    from synth_empathy.storage.run_store import ROW_GROUP_ROWS

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        store = RunStore(str(tmp_path), "r")
        rows = ROW_GROUP_ROWS + 1000
        ds = ray.data.from_items([{"sample_id": f"s{i:05d}"} for i in range(rows)], override_num_blocks=1)
        ds = ds.map_batches(lambda b: b, batch_size=32, batch_format="pyarrow")  # a block per 32 rows
        store.write_dataset("stage", ds, pa.schema([("sample_id", pa.string())]))
    finally:
        ray.shutdown()
    metas = [pq.ParquetFile(p).metadata for p in store.parts("stage")]
    assert sum(m.num_rows for m in metas) == rows
    for m in metas:
        assert m.num_row_groups == -(-m.num_rows // ROW_GROUP_ROWS), [m.row_group(i).num_rows for i in range(3)]


# ------------------------------------------------------------------ S3 preflight errors


def _run_cli(*args, env=None, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "synth_empathy", "run", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


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
    assert s3fs_client(s3).exists(f"{BUCKET}/unit/r1/t.done.json")


def test_missing_bucket_is_one_line_before_any_model_loads(s3, tmp_path):
    out = _run_cli(
        f"output=s3://no-such-bucket-{uuid.uuid4().hex[:6]}/runs",
        f"storage.endpoint_url={s3}",
        "generation.engine.model=packaged:no-such-model",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: output s3://no-such-bucket-") and "NoSuchBucket" in line and "does not exist" in line
    ), line
    _nothing_started(out.stderr)
    assert not s3fs_client(s3).exists("no-such-bucket")  # and the check did not create it


def test_bad_credentials_are_one_line_before_any_model_loads(aws_env, tmp_path):
    """A second moto server that checks signatures (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        out = _run_cli(
            f"output=s3://{BUCKET}/runs",
            f"storage.endpoint_url=http://127.0.0.1:{port}",
            "storage.key=AKIAWRONG",
            "storage.secret=wrong-secret",
            "generation.engine.model=packaged:no-such-model",
        )
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

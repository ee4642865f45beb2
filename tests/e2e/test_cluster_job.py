"""Submitting the pipeline to a real two-node Ray cluster through the Jobs API.

The test starts a head and one worker node on loopback with the ``ray`` CLI (each in a
temp dir and on free ports, so it never meets another Ray on this machine), submits
``jobs/run_pipeline.py`` with :func:`synth_empathy.cluster.submit.submit` and checks the
run folder. The cluster is torn down whatever happens. The teardown ends exactly the
processes this test started (the ``ray start`` process groups and their descendants)
rather than ``ray stop --force``, which would kill every Ray on the machine, other
people's runs included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import MODEL_TEXT_DROPS, PIPELINE_STAGES, free_ports
from loopback_ray import stop_groups
from synth_empathy.cli.submit import main
from synth_empathy.cluster.submit import submit

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEYS = {stage: "seed_id" if stage == "seeds" else "sample_id" for stage in PIPELINE_STAGES}


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head and one worker node on loopback, 2 CPUs each; yields the dashboard URL."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    tmp = tempfile.mkdtemp(prefix="se-ray-", dir="/tmp")  # Unix socket paths stay < 108 chars
    # distinct ports: free_port() twice can return one port twice, which ray start refuses
    port, dash, client, *agents = free_ports(9)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Ray 2.60 turns on token auth for new clusters when ~/.ray/auth_token exists;
        # a loopback test cluster has no use for it and the test shares no token.
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("RAY_ADDRESS", None)
    common = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--object-store-memory=1000000000",
        "--disable-usage-stats",
    ]

    def node_ports(node: int) -> list:
        agent, metrics, runtime_env = agents[3 * node : 3 * node + 3]
        return [
            f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
        ]

    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--temp-dir={tmp}",
        f"--ray-client-server-port={client}",
        *common,
        *node_ports(0),
    ]
    # Each node its own temp dir: nodes on one machine would otherwise share the folder
    # where runtime envs unpack the job's working_dir, and one node's agent deletes it
    # under the other's processes when its own references end.
    worker = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", f"--temp-dir={tmp}/w", *common, *node_ports(1)]
    groups: set = set()
    old = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE",)}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process talks to the cluster too
    try:
        for cmd in (head, worker):
            proc = subprocess.Popen(
                cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            groups.add(proc.pid)
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-3000:]}"
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 120  # both nodes registered, the jobs API answering
        while True:
            try:
                from synth_empathy.cluster.submit import node_resources

                if len(node_resources(url)) == 2:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "the two-node cluster did not come up in 120 s"
            time.sleep(2)
        yield url
    finally:
        stop_groups(groups)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.e2e
def test_pipeline_job_on_a_two_node_cluster(ray_cluster, tmp_path, capsys):
    out = tmp_path / "runs"
    args = [
        "seeds.limit=4",
        "generation.samples_per_seed=2",
        "generation.sampling.max_tokens=120",
        "discriminator.sampling.max_tokens=48",
        # Let every parsed dialogue through: one complete round makes a sample, every
        # scored row with a non-negative score is kept, every kept row is selected. At
        # 120 tokens the second round's response is mostly cut off: on a 2-core Zen 4,
        # 1 in 8 answers to these 4 seeds held two complete rounds, 26 in 32 held one.
        "turns.min_history=0",
        "quality.threshold=0",
        "calibration.enabled=false",  # calibration is tested in test_pipeline.py; an engine pass less
        "quality.drop_repeats=false",
        "diversity.keep_ratio=1",
        f"output={out}",
        "run_id=cluster",
        # The judge is one more engine pass; this test is about running on a cluster.
        "judge.enabled=false",
    ]
    status = submit(
        ray_cluster,
        args,
        working_dir=str(REPO),
        timeout=450,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}},
    )
    captured = capsys.readouterr()
    logs = captured.out
    run = out / "cluster"
    # The job ran the pipeline to its end: every stage finished, the report and the
    # manifest written (a job that crashed would have left no report).
    for stage in PIPELINE_STAGES:
        assert (run / f"{stage}.done.json").exists(), f"{stage} not finished ({status}):\n{logs[-4000:]}"
    assert not (run / "judged.done.json").exists()
    report = json.loads((run / "report.json").read_text())
    counts = report["counts"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["finished"] and manifest["counts"] == counts
    # The job ran the entry point from the shipped working directory, and its logs came back.
    summary = [line for line in logs.splitlines() if line.startswith('{"run":')]
    assert summary and json.loads(summary[-1])["counts"] == counts, logs[-4000:]

    # What the model wrote decides how many rows survive each stage, not whether the
    # stages fit together: ids are unique and each stage holds exactly the rows of its input that
    # it should.
    ids = {stage: pq.read_table(run / stage).column(KEYS[stage]).to_pylist() for stage in PIPELINE_STAGES}
    for stage, values in ids.items():
        assert len(values) == len(set(values)), f"{stage}: an id twice"
    assert len(ids["seeds"]) == counts["seeds"] == 4
    assert sorted(ids["generations"]) == sorted(f"{s}#g{i}" for s in ids["seeds"] for i in range(2))
    samples = pq.read_table(run / "samples").to_pylist()
    assert sorted(ids["samples"]) == sorted(ids["generations"])  # one row per generation, dropped or not
    good = {r["sample_id"] for r in samples if r["drop_reason"] is None}
    scored = pq.read_table(run / "scored").to_pylist()
    kept = {r["sample_id"] for r in scored if r["kept"]}
    assert set(ids["discriminated"]) == set(ids["scored"]) == good
    assert set(ids["selected"]) == kept  # keep_ratio=1: the selection is every kept row
    assert counts["generations"] == 8 and counts["samples"] == len(good) and counts["kept"] == len(kept)
    assert counts["selected"] == len(ids["selected"])

    # The exports hold the selection, in both formats.
    alpaca = [json.loads(line) for line in (run / "selected.alpaca.jsonl").read_text().splitlines()]
    chat = [json.loads(line) for line in (run / "selected.chat.jsonl").read_text().splitlines()]
    assert len(alpaca) == len(chat) == counts["selected"]
    assert all(set(r) == {"instruction", "input", "output"} for r in alpaca)
    assert all(r["messages"][-1]["role"] == "assistant" for r in chat)
    assert set(json.loads((run / "dataset_info.json").read_text())) == {"synth_empathy_alpaca", "synth_empathy_chat"}

    # A run that selects nothing exits 1 by design, so its job FAILS. These settings
    # make that very unlikely (every one of the 8 generations would have to hold no
    # complete round, or every row get an empty or opposite discriminator answer), and
    # when it happens it must be for that reason alone, every row dropped for what the
    # model wrote, rather than for an error.
    if counts["selected"]:
        assert status == "SUCCEEDED", logs[-4000:]
    else:
        assert status == "FAILED" and "exit code 1" in captured.err, captured.err[-2000:]
        assert {r["drop_reason"] for r in samples} - {None} <= MODEL_TEXT_DROPS["samples"], samples
        assert {r["drop_reason"] for r in scored} <= MODEL_TEXT_DROPS["scored"], scored


@pytest.mark.e2e
def test_gpu_preset_is_refused_before_submitting(ray_cluster, capsys):
    code = main(["--address", ray_cluster, "--job", "run", "--", "--preset", "paper"])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no GPUs" in err and len(err.strip().splitlines()) == 1, err

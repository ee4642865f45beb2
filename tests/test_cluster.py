"""Submitting the pipeline to a real two-node Ray cluster through the Jobs API.

The e2e test starts a head and one worker node on loopback with the ``ray`` CLI (each
in a temp dir and on free ports, so it never meets another Ray on this machine),
submits ``jobs/run_pipeline.py`` with :func:`synth_empathy.submit.submit` and checks the
run folder. The cluster is torn down whatever happens. The teardown ends exactly the
processes this test started (the ``ray start`` process groups and their descendants)
rather than ``ray stop --force``, which would kill every Ray on the machine, other
people's runs included.

The bad-input tests need no cluster: an unreachable address must fail in one line
within seconds, and :func:`check_resources` is a pure function of a config and a
resources dict.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth_empathy.config import ConfigError, load_config
from synth_empathy.submit import ClusterError, check_resources, main, submit

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- bad input

def test_unreachable_address_fails_fast_with_one_line(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = main(["--address", f"http://127.0.0.1:{port}", "--", "seeds.limit=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert time.monotonic() - start < 15
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Ray dashboard"), err


@pytest.mark.parametrize("address", ["", "ray://127.0.0.1:10001"])
def test_missing_or_client_address_is_bad_input(address, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["--address", address]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_unreachable_address_raises_cluster_error_from_submit():
    with pytest.raises(ClusterError, match="cannot reach"):
        submit("127.0.0.1:1", ["seeds.limit=1"], working_dir=str(REPO))


def test_cluster_error_is_bad_input_for_the_cli():
    assert issubclass(ClusterError, ConfigError) and issubclass(ClusterError, ValueError)


CPU_CLUSTER = {"CPU": 4.0, "memory": 8e9, "node:127.0.0.1": 2.0}
GPU_NODE = {"CPU": 48.0, "GPU": 4.0, "accelerator_type:A10G": 1.0}


def test_cpu_default_fits_a_cpu_cluster():
    check_resources(load_config("default"), CPU_CLUSTER, [CPU_CLUSTER])


@pytest.mark.parametrize("preset", ["paper", "single-gpu"])
def test_gpu_preset_on_a_cluster_without_gpus_is_refused(preset):
    with pytest.raises(ClusterError, match="has no GPUs") as e:
        check_resources(load_config(preset), CPU_CLUSTER)
    assert "\n" not in str(e.value)


def test_replica_must_fit_on_one_node():
    cfg = load_config("paper")  # generator: 4 GPUs per replica (TP=4)
    two_gpu_nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}]
    with pytest.raises(ClusterError, match=r"generation\.engine\.gpus_per_replica=4 .* largest node has 2 GPUs"):
        check_resources(cfg, {"CPU": 16.0, "GPU": 4.0}, two_gpu_nodes)
    check_resources(cfg, {"CPU": 96.0, "GPU": 8.0}, [GPU_NODE, GPU_NODE])
    # A 70B generator at TP=8 needs an 8-GPU node.
    big = load_config("paper", ["generation.engine.gpus_per_replica=8", "generation.engine.tensor_parallel_size=8"])
    with pytest.raises(ClusterError, match="largest node has 4 GPUs"):
        check_resources(big, {"GPU": 8.0}, [GPU_NODE, GPU_NODE])


def test_accelerator_type_must_exist():
    cfg = load_config("single-gpu", ["generation.engine.accelerator_type=H100"])
    with pytest.raises(ClusterError, match="accelerator_type='H100' is not on the cluster .*A10G"):
        check_resources(cfg, GPU_NODE, [GPU_NODE])
    check_resources(load_config("single-gpu", ["generation.engine.accelerator_type=A10G"]), GPU_NODE, [GPU_NODE])


# --------------------------------------------------------------------------- real cluster

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(roots: set) -> set:
    """Processes in the given process groups, and everything below them."""
    procs = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
                rest = stat[stat.rindex(")") + 2:].split()
                procs[int(p)] = (int(rest[1]), int(rest[2]))  # ppid, pgid
            except (OSError, ValueError):
                pass
    chosen = {p for p, (_, pgid) in procs.items() if pgid in roots}
    grew = True
    while grew:
        grew = False
        for p, (ppid, _) in procs.items():
            if ppid in chosen and p not in chosen:
                chosen.add(p)
                grew = True
    return chosen


def _stop(groups: set) -> None:
    """End this test's Ray processes: SIGTERM, a grace period, then SIGKILL."""
    pids = _descendants(groups)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        for pid in pids | _descendants(groups):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head and one worker node on loopback, 2 CPUs each; yields the dashboard URL."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    tmp = tempfile.mkdtemp(prefix="se-ray-", dir="/tmp")  # Unix socket paths stay < 108 chars
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           # Ray 2.60 turns on token auth for new clusters when ~/.ray/auth_token exists;
           # a loopback test cluster has no use for it and the test shares no token.
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=1000000000",
              "--disable-usage-stats"]

    def node_ports() -> list:
        return [f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}"]

    head = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={tmp}",
            f"--ray-client-server-port={_free_port()}", *common, *node_ports()]
    # Each node its own temp dir: nodes on one machine would otherwise share the folder
    # where runtime envs unpack the job's working_dir, and one node's agent deletes it
    # under the other's processes when its own references end.
    worker = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", f"--temp-dir={tmp}/w",
              *common, *node_ports()]
    groups: set = set()
    old = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE",)}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process talks to the cluster too
    try:
        for cmd in (head, worker):
            proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            groups.add(proc.pid)
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-3000:]}"
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 120  # both nodes registered, the jobs API answering
        while True:
            try:
                from synth_empathy.submit import node_resources

                if len(node_resources(url)) == 2:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "the two-node cluster did not come up in 120 s"
            time.sleep(2)
        yield url
    finally:
        _stop(groups)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.e2e
def test_pipeline_job_on_a_two_node_cluster(ray_cluster, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["seeds.limit=4", "generation.sampling.max_tokens=120", "discriminator.sampling.max_tokens=48",
            "quality.threshold=0", f"output={out}", "run_id=cluster",
            # The judge is one more engine pass; this test is about running on a cluster.
            "judge.enabled=false"]
    status = submit(ray_cluster, args, working_dir=str(REPO), timeout=450,
                    runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                              "RAY_AUTH_MODE": "disabled"}})
    logs = capsys.readouterr().out
    assert status == "SUCCEEDED", logs[-4000:]
    run = out / "cluster"
    assert (run / "selected.done.json").exists()
    selected = pq.read_table(run / "selected")
    assert selected.num_rows > 0
    report = json.loads((run / "report.json").read_text())
    counts = report["counts"]
    assert counts["seeds"] == 4 and counts["generations"] == 4
    assert counts["selected"] == selected.num_rows > 0
    assert counts["kept"] >= counts["selected"]
    # The job ran the entry point from the shipped working directory.
    assert '"counts"' in logs


@pytest.mark.e2e
def test_gpu_preset_is_refused_before_submitting(ray_cluster, capsys):
    code = main(["--address", ray_cluster, "--job", "run", "--", "--preset", "paper"])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no GPUs" in err and len(err.strip().splitlines()) == 1, err

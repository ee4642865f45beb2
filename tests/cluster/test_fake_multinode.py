"""The GPU check against a running autoscaler: a Ray head on loopback started with Ray's
``fake_multinode`` provider, whose node types declare GPUs and accelerator types (none
real). The head has no GPU; the autoscaler can add one node of each GPU type.

What this shows: the job reads the autoscaler's node types from the running cluster
(Ray 2.60's autoscaler leaves the GCS cluster config empty, so they come from the config
file its monitor runs with), accepts a preset the cluster can scale to, and the
autoscaler then adds a node for a replica of that shape; a run whose replica exceeds
every node type fails in the job with one line naming its GPUs and the largest node
type, before any run folder exists.

``ray.cluster_utils.AutoscalingCluster`` is not used: in Ray 2.60's wheel it reads
``fake_multi_node/example.yaml``, which the wheel does not ship, and its ``start()`` runs
``ray stop --force``, which would end every Ray on this machine. The head here is the
same ``ray start --head --autoscaling-config=... `` with ``RAY_FAKE_CLUSTER=1`` that it
runs, on a temp dir and ports of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loopback_ray import start_head
from synth_empathy.cli.submit import main

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fake-multinode-test-token"
NODE_TYPES = {
    "gpu-2x-a100-80g": {
        "resources": {"CPU": 2, "GPU": 2, "accelerator_type:A100": 1, "accelerator_type:A100-80G": 1},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 1,
    },
    "gpu-1x-a10g": {
        "resources": {"CPU": 1, "GPU": 1, "accelerator_type:A10G": 1},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 1,
    },
}
# The single-gpu preset with its generator at tensor parallel 2 on 80 GB A100s.
FITS = [
    "--preset",
    "single-gpu",
    "generation.engine.gpus_per_replica=2",
    "generation.engine.tensor_parallel_size=2",
    "generation.engine.accelerator_type=A100-80G",
]


def autoscaling_config(gcs: str) -> dict:
    """What ``AutoscalingCluster`` generates (Ray's fake_multinode example config), with
    the GCS address of this head instead of the default port 6379."""
    return {
        "cluster_name": "fake-multinode",
        "max_workers": 2,
        "idle_timeout_minutes": 1,
        "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "gcs_address": gcs},
        "auth": {"ssh_user": "ray"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            **NODE_TYPES,
        },
    }


@pytest.fixture(scope="module")
def cluster():
    from helpers import free_port

    port = free_port()
    config = Path(f"/tmp/se-fake-multinode-{os.getpid()}-{port}.json")
    config.write_text(json.dumps(autoscaling_config(f"127.0.0.1:{port}")))
    head = start_head(
        num_cpus=1,
        env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
        args=[f"--autoscaling-config={config}"],
        token=TOKEN,
        port=port,
    )
    try:
        yield head
    finally:
        head.stop()
        config.unlink(missing_ok=True)


def _driver(cluster, code: str) -> dict:
    """Run ``code`` as a driver of the cluster on its head node (where a job's driver
    runs); it prints one JSON line."""
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_job_reads_the_autoscalers_node_types_and_the_autoscaler_adds_the_node(cluster):
    got = _driver(
        cluster,
        f"""
        import json, ray
        from ray._private.state import state
        from ray.util.placement_group import placement_group, remove_placement_group
        from synth_empathy.cluster import submit as cs
        from synth_empathy.config import load_config

        ray.init(log_to_driver=False)
        cfg = load_config("single-gpu", {FITS[2:]!r})
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        try:  # the nodes that are up alone: no GPU anywhere
            cs.check_resources(cfg, ray.cluster_resources(), nodes)
            up_only = "accepted"
        except cs.ClusterError as e:
            up_only = str(e)
        cs.check_cluster(cfg)  # what init_ray runs in the job: raises if refused
        # One generator replica as the engine asks for it: 2 GPUs on one node, the card.
        pg = placement_group([{{"GPU": 1, "CPU": 1, "accelerator_type:A100-80G": 0.001}}, {{"GPU": 1, "CPU": 1}}],
                             strategy="STRICT_PACK")
        ray.get(pg.ready(), timeout=120)
        added = [n["Resources"].get("GPU") for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
        remove_placement_group(pg)
        print(json.dumps({{
            "gcs_cluster_config": state.get_cluster_config() is not None,
            "config_file": cs.running_autoscaler_config(),
            "types": cs.autoscaler_node_types(),
            "up_only": up_only,
            "added": added,
        }}))
        """,
    )
    assert got["gcs_cluster_config"] is False  # Ray 2.60's autoscaler does not publish it
    assert got["config_file"] and got["config_file"].startswith("/tmp/se-fake-multinode-")
    assert {t["name"]: t for t in got["types"]} == {
        name: {"name": name, "resources": t["resources"], "max_count": 1} for name, t in NODE_TYPES.items()
    }
    assert "the cluster has no GPUs" in got["up_only"]  # what the check said before it knew the autoscaler
    assert got["added"] == [2.0]  # the autoscaler added one gpu-2x-a100-80g node for the replica


def test_a_run_whose_replica_exceeds_every_node_type_fails_in_the_job_before_any_folder(cluster, tmp_path, capsys):
    """Submitted as a real job through ``synth-empathy submit`` (the client's own copy of
    the check is skipped: it sees only the nodes that are up); the job's check refuses."""
    out = tmp_path / "runs"
    args = ["--preset", "single-gpu", "generation.engine.gpus_per_replica=4"]
    args += ["generation.engine.tensor_parallel_size=4", f"output={out}", "run_id=r"]
    os.environ.update(RAY_AUTH_TOKEN=TOKEN)
    try:
        code = main(["--address", cluster.url, "--working-dir", str(REPO), "--skip-resource-check", "--", *args])
    finally:
        os.environ.pop("RAY_AUTH_TOKEN", None)
    assert code == 1
    err = capsys.readouterr().err
    # The job's log as it is followed, then again in the FAILED status message: one line.
    errors = {line for line in err.splitlines() if line.startswith("error:")}
    assert errors == {
        "error: generation.engine.gpus_per_replica=4 does not fit the cluster: its largest node has 0 GPUs and "
        "the largest node type its autoscaler can add, gpu-2x-a100-80g, has 2; lower tensor_parallel_size or add "
        "bigger GPU nodes"
    }, err[-3000:]
    assert not (out / "r").exists()  # no run folder; the output root itself may exist, empty
    assert not out.exists() or list(out.iterdir()) == []

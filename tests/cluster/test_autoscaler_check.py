"""The resource check accepts what the cluster can scale to: the autoscaler's node types
(Ray's cluster config) count as nodes the cluster can have, so a GPU group that scales
from zero no longer fails a job before the autoscaler adds the nodes it needs; a stage
that no node type can hold is still one line, before any engine starts.

These run the check as a function over node types as Ray's cluster config gives them
(and as the launcher's config lists them); test_fake_multinode.py runs it in a job on a
live autoscaler (Ray's ``fake_multinode`` provider).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synth_empathy.cluster import submit as cs
from synth_empathy.cluster.submit import ClusterError, check_resources, launcher_node_types
from synth_empathy.config import load_config

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
HEAD_ONLY = {"CPU": 8.0, "memory": 32e9}
A100_80G = ["generation.engine.accelerator_type=A100-80G"]


def kuberay_node_types(path: Path) -> list[dict]:
    return cs.cluster_file_node_types(str(path))


def test_paper_passes_on_a_cluster_whose_gpu_nodes_are_all_scaled_down():
    with pytest.raises(ClusterError, match="has no GPUs"):  # what the check used to say
        check_resources(load_config("paper", A100_80G), HEAD_ONLY, [HEAD_ONLY])
    check_resources(load_config("paper", A100_80G), HEAD_ONLY, [HEAD_ONLY], node_types=launcher_node_types(LAUNCHER))


@pytest.mark.parametrize("manifest", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_groups_can_hold_the_paper_preset_on_80_gb_cards(manifest):
    types = kuberay_node_types(REPO / "cluster" / "kuberay" / manifest)
    check_resources(load_config("paper", A100_80G), HEAD_ONLY, [HEAD_ONLY], node_types=types)


def test_a_preset_whose_replica_exceeds_every_node_type_is_one_line():
    cfg = load_config("paper", ["generation.engine.gpus_per_replica=16", "generation.engine.tensor_parallel_size=16"])
    with pytest.raises(ClusterError) as e:
        check_resources(cfg, HEAD_ONLY, [HEAD_ONLY], node_types=launcher_node_types(LAUNCHER))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("generation.engine.gpus_per_replica=16 does not fit the cluster")
    assert "largest node has 0 GPUs and the largest node type its autoscaler can add, gpu_8x_a100_40g, has 8" in msg


def test_node_types_that_may_start_no_node_do_not_count():
    types = [{"name": "gpu", "resources": {"GPU": 8.0}, "max_count": 0}]
    with pytest.raises(ClusterError, match="has no GPUs and its autoscaler adds none"):
        check_resources(load_config("single-gpu"), HEAD_ONLY, [HEAD_ONLY], node_types=types)
    unlimited = [{"name": "gpu", "resources": {"GPU": 1.0}, "max_count": -1}]
    check_resources(load_config("single-gpu"), HEAD_ONLY, [HEAD_ONLY], node_types=unlimited)


def test_the_accelerator_type_must_be_on_a_node_type_with_enough_gpus():
    only_a10g = [t for t in launcher_node_types(LAUNCHER) if "accelerator_type:A10G" in t["resources"]]
    with pytest.raises(ClusterError, match=r"accelerator_type='A100-80G' is not on the cluster \(it has: A10G\)"):
        check_resources(load_config("paper", A100_80G), HEAD_ONLY, [HEAD_ONLY], node_types=only_a10g)
    # A10G nodes exist, but with 4 GPUs: a TP=8 replica pinned to A10G fits none of them.
    big = load_config(
        "paper",
        [
            "generation.engine.gpus_per_replica=8",
            "generation.engine.tensor_parallel_size=8",
            "generation.engine.accelerator_type=A10G",
        ],
    )
    with pytest.raises(ClusterError, match="on a node with enough GPUs"):
        check_resources(big, HEAD_ONLY, [HEAD_ONLY], node_types=launcher_node_types(LAUNCHER))


def test_node_types_are_read_from_rays_cluster_config(monkeypatch):
    from ray._private import state
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    g = config.node_group_configs.add()
    g.name, g.max_count, g.min_count = "gpu-8x80g", 4, 0
    g.resources.update({"GPU": 8, "CPU": 90, "accelerator_type:A100-80G": 1})
    monkeypatch.setattr(state.state, "get_cluster_config", lambda: config)
    types = cs.autoscaler_node_types()
    assert types == [
        {"name": "gpu-8x80g", "resources": {"GPU": 8, "CPU": 90, "accelerator_type:A100-80G": 1}, "max_count": 4}
    ]
    check_resources(load_config("paper", A100_80G), HEAD_ONLY, [HEAD_ONLY], node_types=types)


def test_node_types_fall_back_to_the_launchers_bootstrap_config_on_the_head(monkeypatch, tmp_path):
    from ray._private import state

    monkeypatch.setattr(state.state, "get_cluster_config", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cs.autoscaler_node_types() is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(LAUNCHER))
    types = cs.autoscaler_node_types()
    assert {t["name"] for t in types} == set(LAUNCHER["available_node_types"]) - {LAUNCHER["head_node_type"]}


def test_cluster_file_must_be_a_cluster_definition(tmp_path):
    (tmp_path / "x.yaml").write_text("a: 1\n")
    with pytest.raises(ClusterError, match="neither a cluster launcher config nor a RayCluster"):
        cs.cluster_file_node_types(str(tmp_path / "x.yaml"))
    with pytest.raises(ClusterError, match="cannot read --cluster-file"):
        cs.cluster_file_node_types(str(tmp_path / "missing.yaml"))
    assert cs.cluster_file_node_types(str(REPO / "cluster" / "aws-gpu.yaml")) == launcher_node_types(LAUNCHER)


def test_submit_precheck_counts_the_cluster_files_node_types(monkeypatch, capsys):
    """The client's copy of the check: alive nodes from the dashboard (here the head
    alone), node types from --cluster-file; the paper preset's /models folder is not
    looked for on this machine."""
    from synth_empathy.cli import submit as cli

    monkeypatch.setattr(cs, "node_resources", lambda address: [HEAD_ONLY])
    args = ["--preset", "paper", *A100_80G]
    with pytest.raises(ClusterError, match="pass --cluster-file"):
        cli._precheck_run("http://x:8265", args)
    cli._precheck_run("http://x:8265", args, str(REPO / "cluster" / "kuberay" / "raycluster.yaml"))
    cli._precheck_run("http://x:8265", args, str(REPO / "cluster" / "aws-gpu.yaml"))
    assert not Path(load_config("paper").discriminator.engine.model).exists()  # and it was not needed


def test_a_launcher_node_type_without_max_workers_may_start_the_clusters_max():
    """Ray's launcher: a type's max_workers defaults to the cluster's, which also caps it."""
    launcher = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {},
            "g": {"resources": {"GPU": 1}},
            "big": {"resources": {"GPU": 8}, "max_workers": 10},
        },
    }
    assert {t["name"]: t["max_count"] for t in launcher_node_types(launcher)} == {"g": 3, "big": 3}
    assert all(t["max_count"] == 0 for t in launcher_node_types({**launcher, "max_workers": 0}))


def test_on_kuberay_the_job_reads_the_raycluster_as_rays_autoscaler_does(monkeypatch, tmp_path):
    """The Kubernetes API is stubbed at the one call Ray's AutoscalingConfigProducer makes
    (fetching the RayCluster); the translation into node types is Ray's own, run on the
    RayCluster of cluster/kuberay/raycluster.yaml."""
    from ray._private import state
    from ray.autoscaler._private.kuberay import autoscaling_config as kuberay

    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    doc["metadata"].setdefault("namespace", "ml")
    fetched = []

    def fetch(self):
        fetched.append(self._ray_cr_path)
        return doc

    monkeypatch.setattr(state.state, "get_cluster_config", lambda: None)
    monkeypatch.setattr(cs, "running_autoscaler_config", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(kuberay.AutoscalingConfigProducer, "_fetch_ray_cr_from_k8s_with_retries", fetch)
    monkeypatch.setattr(kuberay.node_provider, "KubernetesHttpApiClient", lambda namespace: None)
    (tmp_path / "namespace").write_text("ml\n")
    monkeypatch.setattr(cs, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "namespace"))
    assert cs.autoscaler_node_types() is None  # not in a KubeRay pod: no RAY_CLUSTER_NAME
    monkeypatch.setenv("RAY_CLUSTER_NAME", doc["metadata"]["name"])
    types = cs.autoscaler_node_types()
    assert fetched == [f"rayclusters/{doc['metadata']['name']}"]
    ours = {t["name"]: t for t in kuberay_node_types(REPO / "cluster" / "kuberay" / "raycluster.yaml")}
    for t in types:  # Ray's reading of the manifest agrees with the client's (--cluster-file)
        assert t["max_count"] == ours[t["name"]]["max_count"]
        assert t["resources"].get("GPU", 0) == ours[t["name"]]["resources"]["GPU"]
    check_resources(load_config("paper", A100_80G), HEAD_ONLY, [HEAD_ONLY], node_types=types)

"""Cluster checks that need no cluster: an unreachable address fails in one line within
seconds, and :func:`check_resources` is a pure function of a config and a resources dict.
Submitting to a real two-node cluster is in tests/e2e/test_cluster_job.py.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from synth_empathy.cli.submit import main
from synth_empathy.cluster.submit import ClusterError, check_resources, submit
from synth_empathy.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
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

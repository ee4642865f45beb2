"""The cluster definitions in cluster/ agree with the code they run.

They cannot be applied here (no Kubernetes, no AWS), so these tests read them and
check what the jobs rely on: the entry point and preset exist and its overrides load,
GPU workers ask for GPUs on the instance type they select, the rayVersion is the Ray
installed here (the Jobs API and ray.data.llm change between releases), autoscaling
bounds make sense, the paper preset's largest replica fits one node, every accelerator
type a config asks for is declared by a group, token auth is on everywhere, and the
secrets, the model volume and the S3 identity reach every pod. The image itself:
test_image.py; the KubeRay CRD schemas: test_crd_schemas.py.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from synth_empathy.cluster.submit import check_resources
from synth_empathy.config import DECLARED_ONLY_ACCELERATORS, check_accelerator_type, load_config, preset_names

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
def test_kuberay_ray_version_matches_installed_ray(name, spec):
    assert spec["rayVersion"] == ray.__version__


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


def test_rayjob_runtime_env_ships_code_and_takes_dependencies_from_the_image():
    env = yaml.safe_load(load(RAYJOB)["spec"]["runtimeEnvYAML"])
    assert env["working_dir"]
    assert "pip" not in env  # the image has them at pyproject.toml's pins (test_image.py)


def test_launcher_gpu_node_types_fit_the_paper_preset():
    cfg = load(LAUNCHER)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not any("pip install" in cmd for cmd in cfg.get("setup_commands") or [])  # the image has it all
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


# --------------------------------------------------------------------------- accelerators


def declared_resources(group: dict) -> dict:
    """The custom resources a KubeRay group's ``rayStartParams.resources`` declares
    (KubeRay passes the string to ``ray start --resources``, quotes included)."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_gpu_groups_select_their_instance_type_and_declare_variants_ray_names(name, spec):
    for g in spec["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        if "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]:
            continue
        assert pod["nodeSelector"]["node.kubernetes.io/instance-type"], g["groupName"]
        for key in declared_resources(g):
            assert key.startswith("accelerator_type:"), key
            check_accelerator_type(key.split(":", 1)[1], f"{g['groupName']} resources")  # a name Ray knows


def test_rayjob_accelerator_type_is_declared_by_a_gpu_group():
    spec = load(RAYJOB)["spec"]
    accel = entrypoint_config(spec["entrypoint"]).generation.engine.accelerator_type
    assert accel == "A100-80G"  # Ray never sets it: a group must declare it, or the job waits for ever
    groups = [
        g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if f"accelerator_type:{accel}" in declared_resources(g)
    ]
    assert groups and all(g["template"]["spec"]["nodeSelector"] for g in groups)


def test_launcher_gpu_types_carry_the_label_ray_sets_and_the_declared_variant():
    types = load(LAUNCHER)["available_node_types"]
    for name, t in types.items():
        accels = [k.split(":", 1)[1] for k in t["resources"] if k.startswith("accelerator_type:")]
        for a in accels:
            check_accelerator_type(a, name)
        if any(a in DECLARED_ONLY_ACCELERATORS for a in accels):
            assert "A100" in accels, f"{name}: its resources replace what Ray detects; keep Ray's own label"


# --------------------------------------------------------------------------- auth, secrets, storage


def pods(spec: dict) -> list:
    return [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]


def prerequisites() -> dict:
    return {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "prerequisites.yaml").read_text())}


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_token_auth_is_on(name, spec):
    auth = spec["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    for pod in pods(spec):
        for c in pod["containers"]:
            names = {e["name"]: e for e in c.get("env", [])}
            assert names.get("RAY_AUTH_MODE", {}).get("value", "token") == "token"  # never turned off
        assert all(p.get("containerPort") != 10001 for c in pod["containers"] for p in c.get("ports", []))


@pytest.mark.parametrize("name,spec", cluster_specs(), ids=["raycluster", "rayjob"])
def test_every_pod_has_the_hf_token_the_model_volume_and_the_s3_identity(name, spec):
    pre = prerequisites()
    claim = pre["PersistentVolumeClaim"]["metadata"]["name"]
    assert pre["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod at once
    assert "eks.amazonaws.com/role-arn" in pre["ServiceAccount"]["metadata"]["annotations"]
    paper_disc = load_config("paper").discriminator.engine.model
    for pod in pods(spec):
        assert pod["serviceAccountName"] == pre["ServiceAccount"]["metadata"]["name"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            env = {e["name"]: e for e in c["env"]}
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "HF_TOKEN"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            on_claim = [
                p for p, v in mounts.items() if volumes[v].get("persistentVolumeClaim", {}).get("claimName") == claim
            ]
            assert on_claim, "no model volume"
            assert any(env["HF_HOME"]["value"].startswith(p + "/") for p in on_claim)  # the cache outlives the pod
            # The paper preset's discriminator folder is on the volume, on every node (the driver checks it).
            assert any(paper_disc.startswith(p + "/") for p in on_claim)


def test_launcher_auth_token_identity_cache_and_what_it_syncs():
    cfg = load(LAUNCHER)
    opts = " ".join(cfg["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in opts
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # Ray's default token path
    assert not any(src in (".", "./") for src in cfg["file_mounts"].values())  # never the whole checkout
    assert {".venv", "runs", ".git"} <= set(cfg["rsync_exclude"])
    for name, t in cfg["available_node_types"].items():
        assert t["node_config"]["IamInstanceProfile"]["Arn"], name  # workers reach S3 too
    assert "HF_HOME=/models/hf" in opts and "/mnt/models:/models" in opts
    assert load_config("paper").discriminator.engine.model.startswith("/models/")

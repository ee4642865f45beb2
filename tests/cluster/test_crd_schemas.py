"""Every KubeRay manifest in cluster/kuberay/ validates against the CRD that the KubeRay
operator installs: the ``openAPIV3Schema`` of ``ray.io/v1`` RayCluster and RayJob,
read from ``../shared/data/kuberay/`` beside the checkout (test data, not copied here).

The API server prunes fields a schema does not name instead of rejecting them, which
would let a misspelt field (``authOption``) pass silently; kubectl's strict field
validation rejects them, and so does this test: every object schema that lists its
properties and does not preserve unknown fields is closed (``additionalProperties:
false``) before validating.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / ".." / "shared" / "data" / "kuberay"
MANIFESTS = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}

pytestmark = pytest.mark.skipif(not CRDS.is_dir(), reason="../shared/data/kuberay is not beside this checkout")


def strict(schema):
    """A copy of ``schema`` where objects with listed properties accept no others."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


_validators: dict = {}


def validator(kind: str, version: str = "v1"):
    if kind not in _validators:
        crd = yaml.safe_load((CRDS / FILES[kind]).read_text())
        assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == "ray.io"
        (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        _validators[kind] = jsonschema.Draft7Validator(strict(v["schema"]["openAPIV3Schema"]))
    return _validators[kind]


def ray_documents():
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("ray.io/"):
                docs.append(pytest.param(doc, id=f"{path.name}:{doc['kind']}"))
    return docs


def errors(doc) -> list[str]:
    found = validator(doc["kind"], doc["apiVersion"].split("/", 1)[1]).iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def test_every_kuberay_manifest_is_a_ray_resource_or_a_prerequisite():
    kinds = {d["kind"] for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d}
    assert {"RayCluster", "RayJob"} <= kinds
    assert kinds - {"RayCluster", "RayJob"} <= {"ServiceAccount", "PersistentVolumeClaim"}  # core kinds


@pytest.mark.parametrize("doc", ray_documents())
def test_manifest_validates_against_its_crd(doc):
    assert errors(doc) == []


@pytest.mark.parametrize(
    "break_it,expected",
    [
        (lambda d: d["spec"].__setitem__("authOption", {"mode": "token"}), "authOption"),
        (lambda d: d["spec"]["authOptions"].__setitem__("mode", "on"), "'on' is not one of"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("maxReplicas", "4"), "'4' is not of type 'integer'"),
        (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"), "'name' is a required"),
    ],
    ids=["unknown-field", "bad-enum", "wrong-type", "missing-required"],
)
def test_the_validation_catches_broken_manifests(break_it, expected):
    doc = copy.deepcopy(yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text()))
    break_it(doc)
    assert any(expected in e for e in errors(doc)), errors(doc)

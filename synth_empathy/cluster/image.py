"""Does the environment a job runs in hold the versions the code was written for?

A cluster's image (cluster/Dockerfile) is built from one version of ``pyproject.toml``;
the code a job runs travels separately, as its working directory. When they drift (an
old image, a cluster that keeps its own image), the job would fail hours later on an
API that moved (the Jobs API and ``ray.data.llm`` between Ray releases, vLLM's engine
arguments between vLLM releases). :func:`check_image` compares every exact pin (``==``)
of the code's ``pyproject.toml`` - its dependencies and the accelerator extras - with
what is installed, before Ray is joined, and names the first mismatch in one line.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from pathlib import Path

from synth_empathy.errors import ClusterError

# Extras whose exact pins must hold where they are installed; the CPU and GPU ones
# exclude each other (both provide the vllm module), so an absent package is skipped.
EXTRAS = ("gpu", "cpu", "models")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class ImageMismatchError(ClusterError):
    """The installed packages differ from the exact pins of the code's pyproject.toml."""


def exact_pins(requirements: Iterable[str]) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name[extras]==version`` requirement."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in requirements:
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def project_pins(pyproject: Path | None = None) -> dict[str, str]:
    """The exact pins of ``pyproject.toml`` (beside the package: a checkout or a job's
    working directory), else of the installed distribution's metadata."""
    path = pyproject or PYPROJECT
    try:
        import tomllib  # Python >= 3.11, as the cluster images are
    except ImportError:
        tomllib = None
    if tomllib is not None and path.is_file():
        project = tomllib.loads(path.read_text())["project"]
        extras = project.get("optional-dependencies", {})
        return exact_pins([*project["dependencies"], *(r for e in EXTRAS for r in extras.get(e, []))])
    requires = importlib.metadata.requires("synth-empathy") or []
    return exact_pins(r.split(";")[0] for r in requires)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatches(pins: dict[str, str], installed: Callable[[str], str | None] = _installed) -> list[str]:
    """One phrase per pinned package installed at another version (``ray`` must be
    installed at all: a job without it cannot have started)."""
    out = []
    for name, version in sorted(pins.items()):
        have = installed(name)
        if have is None and name == "ray":
            out.append(f"ray is not installed but pyproject.toml pins ray=={version}")
        elif have is not None and have != version:
            out.append(f"{name} {have} is installed but pyproject.toml pins {name}=={version}")
    return out


def check_image(pyproject: Path | None = None, installed: Callable[[str], str | None] = _installed) -> None:
    """Raise :class:`ImageMismatchError` naming the first mismatch (and how many more)."""
    found = mismatches(project_pins(pyproject), installed)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ImageMismatchError(
            f"{found[0]}{more}: rebuild the cluster's image from cluster/Dockerfile, or submit with --pip "
            "on a cluster that keeps its own image"
        )


# --------------------------------------------------------------------------- before submitting

# Images whose tag says which Ray they run (rayproject/ray:2.60.0-py311-gpu), and the
# image cluster/Dockerfile builds, tagged with the package version it was built from.
_RAY_IMAGES = ("rayproject/ray:", "rayproject/ray-ml:", "rayproject/ray-llm:")
_OWN_IMAGE = "/synth-empathy:"


def _walk(node, key_path=()):
    """Every (key path, value) in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*key_path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*key_path, str(i)))
    else:
        yield key_path, node


def cluster_file_mismatches(docs: Iterable, pyproject: Path | None = None) -> list[str]:
    """Where a cluster definition (a KubeRay RayCluster or RayJob, a cluster launcher
    YAML; ``docs`` its parsed documents) names versions other than the package's: an
    image of the package tagged with another version (built from another pyproject.toml),
    a stock Ray image or ``rayVersion`` of another Ray, a RayJob ``runtimeEnvYAML`` pip
    pin that differs from pyproject.toml's."""
    import tomllib
    import yaml

    path = pyproject or PYPROJECT
    pins = project_pins(path)
    version = tomllib.loads(path.read_text())["project"]["version"] if path.is_file() else None
    ray_pin = pins.get("ray")
    out = []
    for doc in docs:
        for keys, value in _walk(doc):
            if not isinstance(value, str) or not keys:
                continue
            key, where = keys[-1], ".".join(keys)
            if key in ("image", "head_image", "worker_image"):
                image = value.strip()
                if _OWN_IMAGE in image and version and image.rsplit(":", 1)[1] != version:
                    out.append(
                        f"{where}: {image} is the image of synth-empathy {image.rsplit(':', 1)[1]} but "
                        f"pyproject.toml is version {version} (its pins may differ)"
                    )
                for prefix in _RAY_IMAGES:
                    if image.startswith(prefix) and ray_pin:
                        tag = image[len(prefix) :].split("-", 1)[0]
                        if tag != ray_pin:
                            out.append(f"{where}: {image} runs ray {tag} but pyproject.toml pins ray=={ray_pin}")
            elif key == "rayVersion" and ray_pin and value.strip() != ray_pin:
                out.append(f"{where}: rayVersion {value.strip()} but pyproject.toml pins ray=={ray_pin}")
            elif key == "runtimeEnvYAML":
                pip = (yaml.safe_load(value) or {}).get("pip") or []
                pip = pip.get("packages", []) if isinstance(pip, dict) else pip
                for name, have in sorted(exact_pins(r for r in pip if isinstance(r, str)).items()):
                    if name in pins and pins[name] != have:
                        out.append(f"{where}: pip pins {name}=={have} but pyproject.toml pins {name}=={pins[name]}")
    return out


def check_cluster_file(path: str, pyproject: Path | None = None) -> None:
    """Raise :class:`ImageMismatchError` naming ``path``, the first differing pin (and
    how many more) of :func:`cluster_file_mismatches`."""
    import yaml

    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
    except (OSError, yaml.YAMLError) as e:
        raise ClusterError(f"cannot read --cluster-file {path}: {type(e).__name__}") from None
    found = cluster_file_mismatches(docs, pyproject)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ImageMismatchError(
            f"{path}: {found[0]}{more}; rebuild the image from cluster/Dockerfile at this version and name it "
            "there, or submit from the checkout the cluster was built from"
        )


def check_cluster_ray(ray_version: str | None, pyproject: Path | None = None) -> None:
    """The Ray a running cluster reports (the dashboard's ``/api/version``) against the pin."""
    pin = project_pins(pyproject).get("ray")
    if ray_version and pin and ray_version != pin:
        raise ImageMismatchError(
            f"the cluster runs ray {ray_version} but pyproject.toml pins ray=={pin}: the Jobs API and "
            "ray.data.llm differ between releases; use a cluster on the image built from cluster/Dockerfile"
        )

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

"""The private Ray and vLLM names the package uses: all still there, all listed, and Ray
Serve LLM's and vLLM's used nowhere but in synth_empathy/engines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from synth_empathy.engines.surfaces import SURFACES, Surface, missing

PACKAGE = Path(__file__).resolve().parents[2] / "synth_empathy"


@pytest.mark.parametrize("surface", SURFACES, ids=[s.target for s in SURFACES])
def test_the_installed_ray_and_vllm_still_have_the_surface(surface):
    assert missing(surface) is None, f"{missing(surface)} - used in {surface.used_in} for: {surface.why}"


def test_a_surface_that_is_gone_is_named():
    gone = Surface("vllm.v1.engine.async_llm:AsyncLLM.no_such_thing", "engines.server", "test")
    assert missing(gone) == "vllm.v1.engine.async_llm:AsyncLLM.no_such_thing: no attribute 'no_such_thing'"
    assert "does not import" in missing(Surface("ray.llm._internal.no_such_module:X", "engines.server", "test"))
    moved = Surface("vllm.v1.engine.async_llm:AsyncLLM", "engines.server", "test", source_has="self.no_such_line")
    assert "no longer has 'self.no_such_line'" in missing(moved)


@pytest.mark.parametrize("surface", SURFACES, ids=[s.target for s in SURFACES])
def test_every_listed_surface_is_used_where_the_list_says(surface):
    source = (PACKAGE / (surface.used_in.replace(".", "/") + ".py")).read_text()
    assert surface.name_in_code in source


def _imports(path: Path) -> set[str]:
    """What ``path`` imports: each ``import a.b`` as ``a.b``, each ``from a.b import c`` as
    ``a.b.c`` (relative imports left out)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_module_outside_the_engines_package_imports_ray_llm_internals_or_vllm():
    outside = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith(("ray.llm._internal", "vllm")))
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] != "engines"
    }
    assert {k: v for k, v in outside.items() if v} == {}


def _private(name: str) -> bool:
    return name.startswith(("ray.", "vllm.")) and any(part.startswith("_") for part in name.split("."))


def test_every_private_import_of_the_package_is_a_listed_surface():
    listed = [s.target.replace(":", ".") for s in SURFACES]
    unlisted = {
        str(p.relative_to(PACKAGE)): sorted(
            n for n in _imports(p) if _private(n) and not any(t == n or t.startswith(n + ".") for t in listed)
        )
        for p in PACKAGE.rglob("*.py")
    }
    assert {k: v for k, v in unlisted.items() if v} == {}

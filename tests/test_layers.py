"""The package's layers import downward only, in the order the README's "Where things are"
lists them: a module never imports one of a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "synth_empathy"

# Top to bottom. A layer may import its own modules and any layer below it.
LAYERS = [
    "__main__",
    "cli",
    "pipeline",
    "training",
    "executor",
    "report",
    "stages",
    "cluster",
    "storage",
    "engines",
    "models",
    "config",
    "core",
    "schemas",
    "errors",
    "logs",
    "__init__",
]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "synth_empathy" and len(parts) > 1 and parts[1] in LAYERS else None


def test_every_top_level_module_has_a_layer():
    names = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert names <= set(LAYERS), sorted(names - set(LAYERS))


def test_no_module_imports_a_layer_above_its_own():
    upward = set()
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module in _imports(path):
            layer = _layer_of(module)
            if layer and LAYERS.index(layer) < LAYERS.index(own):
                upward.add(f"{path.relative_to(PACKAGE)} -> {module}")
    assert not upward, sorted(upward)

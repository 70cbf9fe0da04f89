"""The package's layering holds: each layer imports only from the layers before it, and no modules
import each other in a cycle. Every import counts, also those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency. The order is docs/architecture.md's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bnexp"
# bottom to top; ``bnexp`` itself (__init__, __main__, cli) is the top
LAYERS = ("core", "config", "store", "nn", "data", "engine", "tracking", "launch", "views", "commands")
TOP = len(LAYERS)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every ``bnexp`` module this module imports (absolute or relative, anywhere in the file)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # ``from bnexp.x import module``
    return {name for name in found if name == "bnexp" or name.startswith("bnexp.")}


def graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (names that are not modules, e.g. functions, dropped)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    edges = {}
    for module, path in files.items():
        targets = imports_of(ast.parse(path.read_text()), module, path.name == "__init__.py")
        edges[module] = {t for t in targets if t in files and t != module and t != root.name}
    return edges


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def violations(root: Path) -> list[str]:
    """Upward imports and cycles, one line each."""
    edges = graph(root)
    problems = [f"{m} (layer {LAYERS[layer(m)] if layer(m) < TOP else 'top'}) imports {t} "
                f"(layer {LAYERS[layer(t)] if layer(t) < TOP else 'top'}), a layer above it"
                for m, targets in sorted(edges.items()) for t in sorted(targets) if layer(t) > layer(m)]
    # cycles: depth-first search over the whole graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return problems


def test_every_module_belongs_to_a_layer():
    # the entry points sit on top: the CLI and the Python API for notebooks (bnexp.api)
    stray = [m for m in graph(PACKAGE) if layer(m) == TOP and m not in ("bnexp", "bnexp.__main__", "bnexp.cli", "bnexp.api")]
    assert not stray, f"modules outside the layers (put each in one of {LAYERS}): {stray}"


def test_no_upward_import_and_no_cycle():
    assert violations(PACKAGE) == []


def write(root: Path, files: dict[str, str]) -> Path:
    package = root / "bnexp"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    return package


@pytest.mark.parametrize("files, expected", [
    ({"core/errors.py": "def f():\n    from bnexp.store.files import x\n", "store/files.py": "x = 1\n"},
     "bnexp.core.errors (layer core) imports bnexp.store.files (layer store), a layer above it"),
    ({"engine/loop.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bnexp.tracking import probes\n",
      "tracking/probes.py": ""},
     "bnexp.engine.loop (layer engine) imports bnexp.tracking.probes (layer tracking), a layer above it"),
    ({"store/run.py": "from .catalog import x\n", "store/catalog.py": "from bnexp.store import run\nx = 1\n"},
     "import cycle: bnexp.store.catalog -> bnexp.store.run -> bnexp.store.catalog"),
    ({"views/report.py": "import bnexp.cli\n", "cli.py": ""},
     "bnexp.views.report (layer views) imports bnexp.cli (layer top), a layer above it"),
])
def test_the_test_finds_a_wrong_way_import(tmp_path, files, expected):
    """The checker itself: a lazy upward import, one under TYPE_CHECKING, a relative-import cycle
    within a layer and an import of the CLI from below are each found."""
    assert expected in violations(write(tmp_path, files))


def test_the_test_passes_a_downward_import(tmp_path):
    package = write(tmp_path, {"views/report.py": "from bnexp.store.files import x\nimport bnexp.core.errors\n",
                               "store/files.py": "from bnexp.core import errors\nx = 1\n", "core/errors.py": ""})
    assert violations(package) == []
    assert graph(package)["bnexp.store.files"] == {"bnexp.core", "bnexp.core.errors"}

"""Imports in the serving package run one way: no circle, and nothing imports the factory."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mnistops

pytestmark = pytest.mark.unit
PACKAGE = Path(mnistops.__file__).parent
ENTRY_POINT = "mnistops.serve.server"
"""The process runner: the one module that calls create_app."""


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistops"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mnistops"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for target in graph[node]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_no_module_of_the_package_is_in_an_import_circle() -> None:
    graph = _graph()
    for module in sorted(graph):
        assert _cycle_from(module, graph) is None, _cycle_from(module, graph)


def test_only_the_process_entry_point_imports_the_app_factory() -> None:
    importers = {name for name, targets in _graph().items() if "mnistops.serve.app" in targets}
    assert importers == {ENTRY_POINT}

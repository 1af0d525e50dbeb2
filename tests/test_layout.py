"""The house's rules, read from the code with ``ast`` (README "Where things are").

- No import circles among the product's modules, counting imports inside
  functions and under ``TYPE_CHECKING`` too (they only hide a circle).
- No module imports another module's private (``_name``) definitions.
- No product module is longer than 500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "routing", "refdb", "attachments", "schemas")
MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def imports(path: Path, name: str, modules: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """Each product module ``path`` imports (anywhere in the file), with the names it takes from it."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    yield submodule, []
                elif base in modules:
                    yield base, [alias.name]


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".") if is_package else name.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def graph(root: Path) -> dict[str, set[str]]:
    modules = product_modules(root)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in imports(path, name, modules):
            if target != name and not name.startswith(target + "."):  # a package's own __init__ is not a cycle
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    assert cycles(graph(ROOT)) == []


def test_the_cycle_finder_sees_a_circle_hidden_in_a_function(tmp_path: Path) -> None:
    package = tmp_path / "gateway"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def x() -> None:\n    from gateway import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    assert cycles(graph(tmp_path)) == [["gateway.a", "gateway.b"]]


def test_no_private_names_across_modules() -> None:
    modules = product_modules(ROOT)
    private = [f"{name} takes {taken} from {target}"
               for name, path in modules.items()
               for target, names in imports(path, name, modules)
               for taken in names if taken.startswith("_") and not taken.startswith("__")]
    assert private == []


@pytest.mark.parametrize("name", sorted(product_modules(ROOT)))
def test_no_module_over_500_lines(name: str) -> None:
    lines = len(product_modules(ROOT)[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"

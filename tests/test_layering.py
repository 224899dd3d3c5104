"""The import rules of DESIGN.md, checked with ``ast`` so the layers cannot quietly tangle.

1. ``minireactor`` imports only the standard library and never ``proxy``.
2. The pure layers (``proxy/http11``, ``proxy/target.py``, ``proxy/cache``, the blocklist's
   rules) import no ``socket``, ``selectors``, ``ssl``, ``threading``, ``watchdog`` or
   ``minireactor``.
6. Every module opens with a docstring ("theory of operation"), and the import graph has no
   cycle, so every module can be read after the ones it imports.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("minireactor", "proxy")
PURE = (
    "proxy/http11/",
    "proxy/target.py",
    "proxy/cache/",
    "proxy/blocklist/rules.py",
    "proxy/blocklist/__init__.py",
)
FORBIDDEN_IN_PURE = {"socket", "selectors", "ssl", "threading", "watchdog", "minireactor"}


def module_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


FILES = module_files()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p) for p in FILES}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module *path* imports (relative imports resolved).

    ``from package import name`` imports the submodule ``package.name`` when there is one,
    and otherwise the package itself (a name defined or re-exported there).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                assert node.module is not None
                module = node.module
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.add(submodule if submodule in MODULES else module)
    return found


IDS = [rel(p) for p in FILES]


def test_the_walk_finds_the_packages():
    names = set(IDS)
    assert "minireactor/loop.py" in names
    assert "proxy/session/client.py" in names
    assert any(name.startswith("proxy/http11/") for name in names)


def test_resolves_relative_imports():
    imports = imported_modules(REPO / "proxy/cache/__init__.py")
    assert all(not name.startswith(".") for name in imports)
    assert any(name.startswith("proxy.cache.") for name in imports)


@pytest.mark.parametrize("path", [p for p in FILES if rel(p).startswith("minireactor/")], ids=rel)
def test_minireactor_imports_only_the_standard_library(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top == "minireactor":
            continue
        assert top != "proxy", f"{rel(path)} imports {name}"
        assert top in sys.stdlib_module_names or top == "__future__", f"{rel(path)} imports {name}"


@pytest.mark.parametrize("path", [p for p in FILES if rel(p).startswith(PURE)], ids=rel)
def test_pure_layers_import_no_io(path):
    bad = {name for name in imported_modules(path) if name.split(".")[0] in FORBIDDEN_IN_PURE}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_module_imports_cleanly(path):
    importlib.import_module(module_name(path))


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_module_opens_with_a_docstring(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring and docstring.strip(), f"{rel(path)} has no module docstring"
    first = tree.body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, type-only imports (``TYPE_CHECKING``) included."""
    names = {module_name(p) for p in FILES}
    return {module_name(p): imported_modules(p) & names for p in FILES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of *graph*: its strongly connected components with more than one
    module, or a module importing itself (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_type_only_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_back_into_one_that_imports_it() -> None:
    """The import graph of minireactor and proxy is acyclic, type-only imports included."""
    assert cycles(import_graph()) == []


def test_steps_do_not_import_the_session() -> None:
    """The steps report through interfaces; only the server imports the session module."""
    importers = {
        name for name, imports in import_graph().items() if "proxy.session.client" in imports
    }
    assert importers == {"proxy.app"}

"""The import rules of DESIGN.md, checked with ``ast`` so the layers cannot quietly tangle.

1. ``minireactor`` imports only the standard library and never ``proxy``.
2. The pure layers (``proxy/http11``, ``proxy/target.py``, ``proxy/cache``, the blocklist's
   rules) import no ``socket``, ``selectors``, ``ssl``, ``threading``, ``watchdog`` or
   ``minireactor``.
6. Small modules, each opening with a docstring ("theory of operation").
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
MAX_LINES = 400
SOFT_LINES = 300


def module_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module *path* imports (relative imports resolved)."""
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
                if node.module is None:
                    found.update(f"{prefix}.{alias.name}" for alias in node.names)
                found.add(module)
            else:
                assert node.module is not None
                found.add(node.module)
    return found


FILES = module_files()
IDS = [rel(p) for p in FILES]


def test_the_walk_finds_the_packages():
    names = set(IDS)
    assert "minireactor/loop.py" in names
    assert "proxy/session.py" in names
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


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_module_size(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{rel(path)} has {lines} lines (limit {MAX_LINES})"


def test_report_modules_over_the_soft_limit(record_property):
    """Not a failure: lists modules past about 300 lines, for whoever splits them next."""
    over = {
        rel(p): n
        for p in FILES
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > SOFT_LINES
    }
    record_property("over_300_lines", over)
    print(f"modules over {SOFT_LINES} lines: {over}")

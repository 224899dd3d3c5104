"""The cache package is documented, small and free of I/O (DESIGN.md rules 2 and 6)."""

import ast
import importlib
import inspect
import pathlib
import pkgutil

import pytest

import proxy.cache

PACKAGE_DIR = pathlib.Path(proxy.cache.__file__).parent
MODULES = ["proxy.cache"] + [
    f"proxy.cache.{info.name}" for info in pkgutil.iter_modules([str(PACKAGE_DIR)])
]
FORBIDDEN = {"socket", "selectors", "ssl", "threading", "watchdog", "minireactor"}
SPHINX_ROLES = ("class", "meth", "func", "mod", "data", "attr", "exc")


def public_objects(module):
    """Yield (qualified name, object) for the module and its public classes and functions."""
    yield module.__name__, module
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for member_name, member in vars(obj).items():
                if member_name.startswith("_"):
                    continue
                if isinstance(member, (classmethod, staticmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    yield f"{module.__name__}.{name}.{member_name}", member


def rest_problems(text: str) -> list[str]:
    """Parse *text* as reST (Sphinx roles stubbed) and return the warnings docutils reports."""
    import io

    from docutils.core import publish_doctree
    from docutils.parsers.rst import roles

    for role in SPHINX_ROLES:
        roles.register_generic_role(role, __import__("docutils").nodes.literal)
    stream = io.StringIO()
    publish_doctree(
        text, settings_overrides={"warning_stream": stream, "report_level": 2, "halt_level": 5}
    )
    return [line for line in stream.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize("module_name", MODULES)
def test_public_api_has_valid_rest_docstrings(module_name):
    """Every public module, class and function has a docstring that parses as reST."""
    module = importlib.import_module(module_name)
    for qualname, obj in public_objects(module):
        doc = inspect.getdoc(obj)
        assert doc, f"{qualname} has no docstring"
        assert rest_problems(doc) == [], qualname


@pytest.mark.parametrize("module_name", MODULES)
def test_module_opens_with_theory_of_operation_citing_rfc(module_name):
    """DESIGN rule 6: each module opens with a theory of operation citing RFC 9111."""
    doc = importlib.import_module(module_name).__doc__
    assert "Theory of operation" in doc
    assert "RFC 9111" in doc or "section" in doc


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_io_imports(path):
    """DESIGN rule 2: the cache is pure; no socket/selectors/ssl/threading/watchdog/minireactor.

    Of the proxy it may use only itself and the pure HTTP layer. (No line cap: a module is as
    long as its idea needs.)
    """
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
            if name.startswith("proxy."):
                assert name.startswith(("proxy.cache", "proxy.http11")), name


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    """The ``>>>`` examples in the docstrings are true."""
    import doctest

    result = doctest.testmod(importlib.import_module(module_name))
    assert result.failed == 0

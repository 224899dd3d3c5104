"""Every public module, class, function and method has a docstring (Sphinx autodoc shows them).

Public means a name not starting with ``_``, defined in the module being walked (re-exports are
checked where they are defined). Methods are the ones a class defines itself, properties
included; inherited ones are checked on their own class.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

PACKAGES = ("minireactor", "proxy")


def all_modules() -> list[ModuleType]:
    modules = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            modules.append(importlib.import_module(info.name))
    return modules


def public(name: str) -> bool:
    return not name.startswith("_")


def has_doc(obj: object) -> bool:
    doc = inspect.getdoc(obj)
    return bool(doc and doc.strip())


def missing_docstrings(module: ModuleType) -> list[str]:
    missing = []
    if not has_doc(module):
        missing.append(module.__name__)
    for name, obj in vars(module).items():
        if not public(name) or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
        elif inspect.isclass(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
            missing.extend(missing_in_class(module.__name__, obj))
    return missing


def missing_in_class(module_name: str, cls: type) -> list[str]:
    missing = []
    for name, member in vars(cls).items():
        if not public(name):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            member = member.fget
        # A subclass overriding a documented method inherits its documentation.
        if inspect.isfunction(member) and not has_doc_in_mro(cls, name, member):
            missing.append(f"{module_name}.{cls.__qualname__}.{name}")
    return missing


def has_doc_in_mro(cls: type, name: str, member: object) -> bool:
    if (getattr(member, "__doc__", None) or "").strip():
        return True
    for base in cls.__mro__[1:]:
        inherited = base.__dict__.get(name)
        if inherited is not None and (getattr(inherited, "__doc__", None) or "").strip():
            return True
    return False


MODULES = all_modules()


def test_the_walk_finds_the_packages():
    names = {module.__name__ for module in MODULES}
    assert {
        "minireactor.loop",
        "proxy.session.client",
        "proxy.http11.parser",
        "proxy.cache",
    } <= names


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_public_names_have_docstrings(module):
    assert missing_docstrings(module) == []


def test_the_checker_notices_a_missing_docstring():
    fake = ModuleType("fake", "A module.")

    def documented() -> None:
        """Yes."""

    def undocumented() -> None:
        pass

    class Thing:
        """A class."""

        def method(self) -> None:
            pass

    Thing.__qualname__ = "Thing"
    for obj in (documented, undocumented, Thing):
        obj.__module__ = "fake"
        setattr(fake, obj.__name__, obj)
    assert missing_docstrings(fake) == ["fake.undocumented", "fake.Thing.method"]

"""Rules for the package itself: docstrings, no I/O imports, small modules, its buffer."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

import proxy.http11
from proxy.http11.receivebuffer import ReceiveBuffer

PACKAGE = pathlib.Path(proxy.http11.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
FORBIDDEN = {"socket", "selectors", "ssl", "threading", "watchdog", "minireactor", "asyncio"}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_imports_no_io(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
            assert not name.startswith("proxy.") or name.startswith("proxy.http11"), name


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_module_explains_itself(path):
    # No line cap: a module is as long as its idea needs; it must say what that idea is.
    module = importlib.import_module(
        f"proxy.http11.{path.stem}" if path.stem != "__init__" else "proxy.http11"
    )
    assert module.__doc__ and len(module.__doc__.split()) > 20, "needs a theory of operation"


def _public_objects():
    for path in MODULES:
        name = "proxy.http11" if path.stem == "__init__" else f"proxy.http11.{path.stem}"
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("_") or getattr(value, "__module__", None) != name:
                continue
            if inspect.isclass(value) or inspect.isfunction(value):
                yield f"{name}.{attr}", value
                if inspect.isclass(value):
                    for member, item in vars(value).items():
                        if not member.startswith("_") and (
                            inspect.isfunction(item) or isinstance(item, property)
                        ):
                            yield f"{name}.{attr}.{member}", item


@pytest.mark.parametrize(("name", "value"), list(_public_objects()), ids=lambda x: str(x))
def test_public_api_has_docstrings(name, value):
    assert inspect.getdoc(value), f"{name} has no docstring"


def test_all_is_complete():
    for name in proxy.http11.__all__:
        assert hasattr(proxy.http11, name), name
    assert {
        "RequestParser",
        "ResponseParser",
        "ProtocolError",
        "BodyWriter",
        "NEED_DATA",
        "PAUSED",
        "keep_alive",
        "reason_phrase",
    } <= set(proxy.http11.__all__)


def test_protocol_error_carries_a_status():
    error = proxy.http11.ProtocolError("bad")
    assert (error.message, error.status, str(error)) == ("bad", 400, "bad")
    assert proxy.http11.ProtocolError("bad gateway", 502).status == 502


def test_buffer_fifo_and_compaction():
    buf = ReceiveBuffer()
    buf.append(b"hello ")
    buf.append(b"world\n")
    assert len(buf) == 12 and buf.find_line_end() == 11
    assert buf.take(6) == b"hello " and buf.peek(3) == b"wor" and buf.byte_at(0) == ord("w")
    model = bytearray(b"world\n")
    for i in range(1000):
        piece = bytes([i % 256]) * 7
        buf.append(piece)
        model += piece
        size = i % 11
        assert buf.take(size) == bytes(model[:size])
        del model[:size]
    assert len(buf) == len(model)
    assert buf.take_all() == bytes(model)
    assert len(buf) == 0 and buf.take(5) == b""


def test_take_view_hands_out_views_of_bytes_fed_whole_and_copies_of_joined_bytes():
    buf = ReceiveBuffer()
    fed = b"HEAD\r\n\r\nbody bytes"
    buf.append(fed)
    buf.skip(8)
    view = buf.take_view(4)
    assert isinstance(view, memoryview) and view.obj is fed and view == b"body"
    assert buf.take_view(100) == b" bytes" and len(buf) == 0
    buf.append(b"one ")
    buf.append(b"two")  # joined into a bytearray the buffer owns and reuses: copied out
    part = buf.take_view(4)
    assert type(part) is bytes and part == b"one "
    buf.append(b" three")  # growing after a take must work: no view of the bytearray is alive
    assert buf.take_all() == b"two three"
    whole = b"whole"
    buf.append(whole)
    assert buf.take_view(5) is whole


def test_buffer_zero_copy_and_line_search_memory():
    buf = ReceiveBuffer()
    block = b"a" * 1000
    buf.append(block)
    assert buf.take(5000) is block
    buf.append(b"abc")
    assert buf.find_line_end() == -1
    buf.append(b"de\r\nfg")
    assert buf.find_line_end() == 6
    buf.skip(7)
    assert buf.find_line_end() == -1
    buf.append(b"\n")
    assert buf.find_line_end() == 2

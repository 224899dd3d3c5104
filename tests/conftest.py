"""Fixtures shared by the end-to-end tests (see tests/support.py)."""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Callable, Iterator

import pytest
from support import OriginServer, RunningProxy

from minireactor import Reactor
from proxy.config import Config

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_program(name: str) -> str:
    """Path of *name*; skip locally when it is missing, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required under CI=true but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    """A fresh reactor, closed after the test."""
    r = Reactor()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    server = OriginServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def tls_origin(ca) -> Iterator[OriginServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost", "origin.test").configure_cert(context)
    server = OriginServer(tls=context).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client_tls_context(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def make_proxy(tmp_path) -> Iterator[Callable[..., RunningProxy]]:
    """Start proxies with Config overrides; all are stopped at the end of the test."""
    started: list[RunningProxy] = []

    def make(hosts: dict[str, str] | None = None, **overrides: object) -> RunningProxy:
        blacklist = tmp_path / "blacklist.txt"
        if not blacklist.exists():
            blacklist.write_text("")
        settings: dict[str, object] = {
            "port": 0,
            "blacklist": str(blacklist),
            "watch_blacklist": False,
            "connect_ports": frozenset(range(1, 65536)),
        }
        settings.update(overrides)
        proxy = RunningProxy(Config(**settings), hosts)  # type: ignore[arg-type]
        started.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in started:
            proxy.stop()


@pytest.fixture
def proxy(make_proxy) -> RunningProxy:
    """A proxy with default settings (cache on, every CONNECT port allowed for tests)."""
    return make_proxy()

"""What a config reload (SIGHUP) promises to change live really changes, over loopback.

The reload is handed to the running proxy as the reloader would hand it (``apply_reload`` on
the loop thread), so each test checks the running proxy's behaviour, not the file's parsing
(tests/test_configfile.py does that).
"""

from __future__ import annotations

import logging
import socket
import time

from support import RunningProxy
from test_e2e_tunnel import ESTABLISHED, TcpServer

from proxy.configfile import Reload


def reload_with(proxy: RunningProxy, **changes: object) -> None:
    server = proxy.server

    def apply() -> None:
        fresh = server.config.replace(**changes)
        server.apply_reload(Reload(fresh, tuple(changes), (), None))

    proxy.call(apply)


def open_tunnel(proxy: RunningProxy, port: int) -> socket.socket:
    sock = proxy.connect(timeout=20)
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        data = sock.recv(1)
        assert data, head
        head += data
    assert head == ESTABLISHED
    return sock


def test_a_reloaded_idle_timeout_reaches_tunnels_already_open(make_proxy) -> None:
    def silent(conn: socket.socket) -> None:
        while conn.recv(65536):
            pass

    origin = TcpServer(silent)
    try:
        proxy = make_proxy(idle_timeout=300.0)
        with open_tunnel(proxy, origin.port) as sock:
            reload_with(proxy, idle_timeout=0.4)
            started = time.monotonic()
            assert sock.recv(1) == b""  # closed by the proxy's sweep, not after 300 s
            assert time.monotonic() - started < 15
    finally:
        origin.stop()


def test_a_reloaded_longer_idle_timeout_does_not_cut_a_tunnel_early(make_proxy) -> None:
    def echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)

    origin = TcpServer(echo)
    try:
        proxy = make_proxy(idle_timeout=0.8)
        with open_tunnel(proxy, origin.port) as sock:
            reload_with(proxy, idle_timeout=300.0)
            # Quiet for more than the old timeout and its last sweep: still open.
            sock.settimeout(1.5)
            try:
                assert sock.recv(1) != b""
            except TimeoutError:
                pass
            sock.settimeout(20)
            sock.sendall(b"still here")
            assert sock.recv(64) == b"still here"
    finally:
        origin.stop()


def test_the_pool_and_the_cache_wait_follow_a_reload(make_proxy) -> None:
    proxy = make_proxy()
    reload_with(proxy, upstream_idle_timeout=7.0, collapse_wait=1.5)
    assert proxy.call(lambda: proxy.server.pool.idle_timeout) == 7.0
    assert proxy.server.cache_step is not None
    assert proxy.call(lambda: proxy.server.cache_step.collapse_wait) == 1.5


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def test_trace_turned_on_and_off_by_a_reload(make_proxy) -> None:
    root, trace_log = logging.getLogger(), logging.getLogger("minireactor.trace")
    root_level, trace_level = root.level, trace_log.level
    records = Records()
    trace_log.addHandler(records)
    trace_log.setLevel(logging.DEBUG)  # so only the hook decides whether events are made
    try:
        proxy = make_proxy()
        proxy.call(lambda: None)
        assert records.count == 0
        reload_with(proxy, trace=True)
        proxy.call(lambda: None)  # a tick, and a callback, with the hook installed
        proxy.call(lambda: None)
        assert records.count > 0
        reload_with(proxy, trace=False)
        proxy.call(lambda: None)  # past the end of the tick that ran the reload
        seen = records.count
        for _ in range(3):
            proxy.call(lambda: None)
        assert records.count == seen
    finally:
        trace_log.removeHandler(records)
        trace_log.setLevel(trace_level)
        root.setLevel(root_level)


def test_allow_is_parsed_once_and_follows_a_reload(make_proxy) -> None:
    proxy = make_proxy(allow=("10.0.0.0/8",))

    def status() -> bytes:
        with proxy.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            start = b""
            while len(start) < 12 and (data := sock.recv(64)):
                start += data
            return start

    assert status().startswith(b"HTTP/1.1 403")
    parsed = proxy.call(lambda: proxy.server._allowed)
    assert status().startswith(b"HTTP/1.1 403")
    assert proxy.call(lambda: proxy.server._allowed) is parsed  # not parsed per connection
    reload_with(proxy, allow=("10.0.0.0/8", "127.0.0.0/8"))
    assert status().startswith(b"HTTP/1.1 200")


def test_a_slow_auth_file_read_from_an_older_reload_is_ignored(make_proxy, tmp_path, monkeypatch):
    """Reload to A, then to B; A's read finishing last must not win over B's."""
    import threading

    from proxy import app
    from proxy.auth import make_entry

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(make_entry("alice", "pw", iterations=1000) + "\n")
    second.write_text(make_entry("bob", "pw", iterations=1000) + "\n")
    release_first = threading.Event()
    loaded: dict[str, object] = {}
    real_load = app.load_auth_file

    def load(path: str) -> object:
        if path == str(first):
            assert release_first.wait(20)
        loaded[path] = result = real_load(path)
        return result

    proxy = make_proxy()
    monkeypatch.setattr(app, "load_auth_file", load)
    reload_with(proxy, auth_file=str(first))
    reload_with(proxy, auth_file=str(second))
    deadline = time.monotonic() + 20
    while proxy.call(lambda: proxy.server.auth) is None and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the proxy's state: B's read is on a helper thread
    assert proxy.call(lambda: proxy.server.auth) is loaded[str(second)]
    release_first.set()
    for thread in threading.enumerate():
        if thread.name == "proxy-auth-reload":
            thread.join(20)  # A's read has handed its result to the loop
    assert str(first) in loaded
    proxy.call(lambda: None)  # queued after A's result, so that has run
    assert proxy.call(lambda: proxy.server.auth) is loaded[str(second)]

"""Hardening: access control, authentication, connection caps, fd exhaustion and slowloris.

The first half drives an in-process proxy (``make_proxy``). The second half runs ``python -m
proxy`` in a subprocess, because what it checks belongs to a whole process: running out of file
descriptors (``RLIMIT_NOFILE`` lowered in the child), CPU time spent while exhausted, and the
resident memory held by hundreds of slowloris connections.
"""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import require_program
from support import read_response
from test_robustness import WAIT, good_request, raw_origin, read_all, silent, status_of, wait_for

from proxy import auth
from proxy.http11 import Headers

__all__ = ["raw_origin"]  # re-exported fixture


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _ask(proxy, wire: bytes) -> tuple[int, dict[str, str], bytes]:
    with proxy.connect() as sock:
        sock.settimeout(WAIT)
        sock.sendall(wire)
        return read_response(sock)


def _get(port: int, path: str = "/hello", extra: str = "") -> bytes:
    url = f"http://origin.test:{port}{path}"
    return f"GET {url} HTTP/1.1\r\nHost: origin.test:{port}\r\n{extra}\r\n".encode()


# -- client networks (--allow) ----------------------------------------------------------------


def test_client_outside_allowed_networks_gets_403(make_proxy, origin):
    proxy = make_proxy(allow=("10.0.0.0/8",))
    with proxy.connect() as sock:
        sock.sendall(_get(origin.port))
        data, how = read_all(sock)
    assert status_of(data) == 403 and how in ("eof", "reset")
    assert sum(origin.hits.values()) == 0


def test_client_inside_allowed_networks_is_served(make_proxy, origin):
    proxy = make_proxy(allow=("10.0.0.0/8", "127.0.0.0/8"))
    good_request(proxy, origin)


# -- proxy authentication (--auth-file) --------------------------------------------------------


@pytest.fixture
def auth_proxy(make_proxy, tmp_path):
    path = tmp_path / "users.txt"
    path.write_text(
        "# users of the test proxy\n"
        + auth.make_entry("alice", "s3cret", iterations=1000)
        + "\n"
        + auth.make_entry("bob", "hunter2", iterations=1000)
        + "\n"
    )
    return make_proxy(auth_file=str(path))


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param("", id="missing"),
        pytest.param(f"Proxy-Authorization: {_basic('alice', 'wrong')}\r\n", id="wrong-password"),
        pytest.param(f"Proxy-Authorization: {_basic('mallory', 's3cret')}\r\n", id="unknown-user"),
        pytest.param(f"Proxy-Authorization: {_basic('bob', 's3cret')}\r\n", id="other-users-pw"),
        pytest.param("Proxy-Authorization: Basic !!!\r\n", id="not-base64"),
        pytest.param("Proxy-Authorization: Bearer abc\r\n", id="other-scheme"),
        pytest.param(f"Authorization: {_basic('alice', 's3cret')}\r\n", id="origin-header"),
    ],
)
def test_request_without_valid_credentials_gets_407(auth_proxy, origin, credentials):
    status, headers, _body = _ask(auth_proxy, _get(origin.port, extra=credentials))
    assert status == 407
    assert headers["proxy-authenticate"] == 'Basic realm="minireactor proxy"'
    assert sum(origin.hits.values()) == 0


def test_valid_credentials_pass_and_are_not_forwarded(auth_proxy, origin):
    extra = f"Proxy-Authorization: {_basic('alice', 's3cret')}\r\n"
    status, _headers, body = _ask(auth_proxy, _get(origin.port, "/headers", extra))
    assert status == 200
    seen = Headers(json.loads(body)["headers"])
    assert "proxy-authorization" not in seen


def test_407_then_credentials_on_the_same_connection(auth_proxy, origin):
    with auth_proxy.connect() as sock:
        sock.settimeout(WAIT)
        sock.sendall(_get(origin.port))
        assert read_response(sock)[0] == 407
        sock.sendall(
            _get(origin.port, extra=f"Proxy-Authorization: {_basic('bob', 'hunter2')}\r\n")
        )
        assert read_response(sock)[::2] == (200, b"hello from the origin\n")


def test_connect_needs_credentials_too(auth_proxy, raw_origin):
    target = raw_origin(silent)
    line = f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
    with auth_proxy.connect() as sock:
        sock.sendall((line + "\r\n").encode())
        data, _how = read_all(sock)
    assert status_of(data) == 407
    assert b'proxy-authenticate: basic realm="minireactor proxy"' in data.lower()
    assert target.connections == 0
    with auth_proxy.connect() as sock:
        sock.settimeout(WAIT)
        sock.sendall(f"{line}Proxy-Authorization: {_basic('alice', 's3cret')}\r\n\r\n".encode())
        assert status_of(sock.recv(4096)) == 200


def test_own_pages_need_credentials(auth_proxy):
    """Asked directly (origin-form), the pages answer 401 and take Authorization, as a
    browser or a Prometheus scrape with basic_auth sends it."""
    status, headers, _body = _ask(
        auth_proxy, b"GET /stats.json HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    assert status == 401 and headers["www-authenticate"].startswith("Basic ")
    credentials = _basic("alice", "s3cret")
    wire = f"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: {credentials}\r\n\r\n"
    assert _ask(auth_proxy, wire.encode())[0] == 200


def test_curl_authenticates(auth_proxy, origin):
    curl = require_program("curl")
    url = f"http://origin.test:{origin.port}/hello"
    base = [curl, "-s", "--max-time", "10", "-x", auth_proxy.url, "-o", "/dev/null"]
    codes = []
    for extra in ([], ["--proxy-user", "alice:wrong"], ["--proxy-user", "alice:s3cret"]):
        result = subprocess.run(
            [*base, "-w", "%{http_code}", *extra, url], capture_output=True, text=True, timeout=30
        )
        codes.append(result.stdout)
    assert codes == ["407", "407", "200"]


def test_cli_auth_file_flag(tmp_path):
    from proxy.__main__ import build_parser, config_from_args

    good = tmp_path / "users.txt"
    good.write_text(auth.make_entry("alice", "pw", iterations=1000) + "\n")
    args = build_parser().parse_args(["--auth-file", str(good)])
    assert config_from_args(args).auth_file == str(good)
    bad = tmp_path / "bad.txt"
    bad.write_text("alice:plaintext\n")
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--auth-file", str(bad)])
    assert exc.value.code == 2


# -- the Authenticator on its own ------------------------------------------------------------


def test_make_entry_round_trips():
    line = auth.make_entry("alice", "pässword", iterations=1000)
    assert re.fullmatch(r"alice:pbkdf2_sha256\$1000\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", line)
    checker = auth.Authenticator(auth.parse_entries(line))
    authorization = "Basic " + base64.b64encode("alice:pässword".encode()).decode()
    assert checker.user_for(Headers([("Proxy-Authorization", authorization)])) == "alice"
    assert checker.refusal(Headers([("Proxy-Authorization", authorization)])) is None
    status, _detail, extra = checker.refusal(Headers())
    assert status == 407 and extra.get("proxy-authenticate") == auth.CHALLENGE


def test_salts_differ():
    first, second = (auth.make_entry("a", "pw", iterations=1000) for _ in range(2))
    assert first != second


@pytest.mark.parametrize(
    "text",
    [
        "alice",
        ":pbkdf2_sha256$1000$AAAA$AAAA",
        "alice:md5$1000$AAAA$AAAA",
        "alice:pbkdf2_sha256$ten$AAAA$AAAA",
        "alice:pbkdf2_sha256$10$AAAA$AAAA",
        "alice:pbkdf2_sha256$1000$!!!!$AAAA",
        "alice:pbkdf2_sha256$1000$AAAA",
        "# only a comment",
    ],
)
def test_malformed_auth_file_is_refused(text):
    with pytest.raises(auth.AuthFileError):
        auth.parse_entries(text)


def test_duplicate_user_is_refused():
    line = auth.make_entry("alice", "pw", iterations=1000)
    with pytest.raises(auth.AuthFileError, match="line 2"):
        auth.parse_entries(f"{line}\n{line}\n")


def test_verdicts_are_cached_so_the_hash_runs_once():
    checker = auth.Authenticator(auth.parse_entries(auth.make_entry("a", "pw", iterations=1000)))
    good = Headers([("Proxy-Authorization", _basic("a", "pw"))])
    bad = Headers([("Proxy-Authorization", _basic("a", "nope"))])
    for _ in range(5):
        assert checker.user_for(good) == "a"
        assert checker.user_for(bad) is None
    assert checker.hashes == 2


def test_hashing_budget_bounds_the_time_spent_on_wrong_passwords():
    now = [0.0]
    entries = auth.parse_entries(auth.make_entry("a", "pw", iterations=20_000))
    checker = auth.Authenticator(entries, budget=0.000001, clock=lambda: now[0])
    attempts = [Headers([("Proxy-Authorization", _basic("a", f"guess{i}"))]) for i in range(10)]
    for headers in attempts:
        assert checker.user_for(headers) is None
    assert checker.hashes == 1 and checker.throttled == 9
    now[0] += 100_000.0  # the debt drains at the budget's rate (1 microsecond per second)
    assert checker.user_for(Headers([("Proxy-Authorization", _basic("a", "pw"))])) == "a"
    assert checker.hashes == 2


def test_auth_cli_hashes_a_password_from_stdin():
    result = subprocess.run(
        [sys.executable, "-m", "proxy.auth", "hash", "carol"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    checker = auth.Authenticator(auth.parse_entries(result.stdout))
    assert checker.user_for(Headers([("Proxy-Authorization", _basic("carol", "correct horse"))]))


# -- policy: CONNECT ports, loops, Max-Forwards, private targets ----------------------------


def test_connect_to_a_port_not_allowed_gets_403(make_proxy, raw_origin):
    target = raw_origin(silent)
    proxy = make_proxy(connect_ports=frozenset({443}))
    with proxy.connect() as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data, _how = read_all(sock)
    assert status_of(data) == 403 and b"443" in data
    assert target.connections == 0


def test_request_to_our_own_address_is_answered_locally(make_proxy):
    proxy = make_proxy()
    status, _headers, body = _ask(
        proxy, f"GET {proxy.url}/stats.json HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode()
    )
    assert status == 200 and json.loads(body)["requests"]["total"] >= 0
    status, _headers, _body = _ask(
        proxy, f"CONNECT {proxy.host}:{proxy.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert status == 405  # never a tunnel into ourselves


def test_loop_through_a_name_for_ourselves_gets_508(make_proxy, origin):
    proxy = make_proxy()
    # origin.test resolves to 127.0.0.1: at the proxy's port, the proxy forwards to itself once
    # (in origin-form, carrying our Via) and the inner hop must see the loop.
    status, headers, _body = _ask(proxy, _get(proxy.port, "/loop"))
    assert status == 508
    assert headers["via"].endswith("minireactor")
    good_request(proxy, origin)


def test_loop_through_a_name_for_ourselves_stops_after_one_hop(make_proxy, origin):
    proxy = make_proxy()
    status, _headers, _body = _ask(proxy, _get(proxy.port, "/loop"))
    assert status in (404, 508)  # answered, never forwarded round and round
    assert proxy.call(lambda: proxy.server.stats.snapshot()["requests"]["total"]) <= 2
    good_request(proxy, origin)


def test_via_with_our_pseudonym_gets_508(make_proxy, origin):
    proxy = make_proxy()
    status, _headers, _body = _ask(proxy, _get(origin.port, extra="Via: 1.1 minireactor\r\n"))
    assert status == 508
    assert sum(origin.hits.values()) == 0


def test_options_max_forwards_zero_is_answered_by_the_proxy(make_proxy, origin):
    proxy = make_proxy()
    wire = _get(origin.port, "/headers", "Max-Forwards: 0\r\n").replace(b"GET", b"OPTIONS", 1)
    status, headers, _body = _ask(proxy, wire)
    assert status == 200 and "OPTIONS" in headers["allow"]
    assert sum(origin.hits.values()) == 0


def test_trace_max_forwards_zero_echoes_the_head(make_proxy, origin):
    proxy = make_proxy()
    extra = f"Max-Forwards: 0\r\nX-Probe: 42\r\nProxy-Authorization: {_basic('a', 'b')}\r\n"
    wire = _get(origin.port, "/x", extra).replace(b"GET", b"TRACE", 1)
    status, headers, body = _ask(proxy, wire)
    assert status == 200 and headers["content-type"] == "message/http"
    assert body.startswith(f"TRACE http://origin.test:{origin.port}/x HTTP/1.1\r\n".encode())
    assert b"X-Probe: 42\r\n" in body and b"Proxy-Authorization" not in body
    assert sum(origin.hits.values()) == 0


def test_max_forwards_is_decremented_when_forwarded(make_proxy, origin):
    proxy = make_proxy()
    wire = _get(origin.port, "/headers", "Max-Forwards: 3\r\n").replace(b"GET", b"OPTIONS", 1)
    status, _headers, body = _ask(proxy, wire)
    assert status == 200
    assert Headers(json.loads(body)["headers"]).get("max-forwards") == "2"


@pytest.mark.parametrize("host", ["internal.test", "127.0.0.1"])
def test_deny_private_refuses_internal_targets(make_proxy, origin, host):
    proxy = make_proxy(deny_private=True, hosts={"internal.test": "127.0.0.1"})
    wire = f"GET http://{host}:{origin.port}/hello HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    status, _headers, body = _ask(proxy, wire)
    assert status == 403 and b"internal address" in body
    with proxy.connect() as sock:
        sock.sendall(f"CONNECT {host}:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status_of(read_all(sock)[0]) == 403
    assert sum(origin.hits.values()) == 0


# -- connection cap (--max-conns) -------------------------------------------------------------


def test_max_conns_keeps_newcomers_in_the_backlog_and_serves_the_others(make_proxy, origin):
    proxy = make_proxy(max_conns=3)
    listener = proxy.server.server
    first = [proxy.connect() for _ in range(3)]
    late = None
    try:
        assert wait_for(lambda: proxy.call(lambda: listener.paused))
        late = proxy.connect()  # the kernel completes the handshake; the proxy does not accept
        late.sendall(_get(origin.port))
        for sock in first:  # the connections already in are served, repeatedly
            for _ in range(2):
                sock.sendall(_get(origin.port))
                assert read_response(sock)[0] == 200
        assert proxy.call(lambda: listener.accepted) == 3
        first.pop().close()
        late.settimeout(WAIT)
        assert read_response(late)[::2] == (200, b"hello from the origin\n")
        assert proxy.call(lambda: listener.accepted) == 4
    finally:
        for sock in [*first, late]:
            if sock is not None:
                sock.close()


# -- whole-process tests: a real `python -m proxy` in a subprocess ----------------------------


class ProxyProcess:
    """``python -m proxy`` on port 0 in a child process (optionally with fewer descriptors)."""

    def __init__(self, tmp: Path, *args: str, nofile: int | None = None) -> None:
        blacklist = tmp / "blacklist.txt"
        blacklist.write_text("")

        def limit() -> None:
            if nofile is not None:
                # The hard limit too: the proxy raises its soft limit to the hard one at start-up.
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--port", "0", "--blacklist", str(blacklist), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert wait_for(lambda: any("listening on" in line for line in self.lines), 30), self.lines
        match = re.search(r"listening on http://([\d.]+):(\d+)", "".join(self.lines))
        assert match is not None
        self.host, self.port = match.group(1), int(match.group(2))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=WAIT)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture
def proxy_process(tmp_path):
    started: list[ProxyProcess] = []

    def start(*args: str, nofile: int | None = None) -> ProxyProcess:
        process = ProxyProcess(tmp_path, *args, nofile=nofile)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def _proxied_hello(process: ProxyProcess, origin) -> int:
    with process.connect() as sock:
        sock.sendall(
            f"GET http://127.0.0.1:{origin.port}/hello HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        return read_response(sock)[0]


def _exhaust(proxy: ProxyProcess) -> list[socket.socket]:
    """Open clients until the proxy runs out of descriptors (it logs once per episode)."""
    clients: list[socket.socket] = []
    try:
        for _ in range(120):
            clients.append(proxy.connect())
            if any("accept failed" in line for line in proxy.lines):
                break
        assert wait_for(lambda: any("accept failed" in line for line in proxy.lines))
    except BaseException:
        for sock in clients:
            sock.close()
        raise
    return clients


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_fd_exhaustion_is_survived_without_spinning(proxy_process, origin):
    # A cap far above what 48 descriptors hold: the proxy must meet EMFILE, not its own cap.
    proxy = proxy_process("--log-level", "WARNING", "--max-conns", "1000", nofile=48)
    # Warm up: the first status page and forwarded request fill the caches they use.
    with proxy.connect() as sock:
        sock.sendall(b"GET /stats.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(sock)[0] == 200
    assert _proxied_hello(proxy, origin) == 200
    clients = _exhaust(proxy)
    try:
        # While exhausted, the proxy must back off, not spin on a listener that stays readable.
        before = proxy.cpu_seconds()
        window = time.monotonic()
        time.sleep(1.5)  # measuring a rate over a window, not synchronising
        spent = proxy.cpu_seconds() - before
        assert spent < 0.5 * (time.monotonic() - window), f"{spent:.2f} s of CPU while exhausted"
        # An accepted client is still served (its own pages need no new descriptor)...
        clients[0].sendall(b"GET /stats.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(clients[0])[0] == 200
        # ...and a forwarded request succeeds (an idle pooled connection) or fails cleanly.
        clients[1].sendall(
            f"GET http://127.0.0.1:{origin.port}/hello HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert read_response(clients[1])[0] in (200, 502)
    finally:
        for sock in clients:
            sock.close()
    # Descriptors free up: the proxy serves new clients and origins again.
    assert wait_for(lambda: _try(lambda: _proxied_hello(proxy, origin)) == 200, 20)
    assert proxy.proc.poll() is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_first_status_page_while_exhausted(proxy_process):
    # A cap far above what 48 descriptors hold: the proxy must meet EMFILE, not its own cap.
    proxy = proxy_process("--log-level", "WARNING", "--max-conns", "1000", nofile=48)
    clients = _exhaust(proxy)
    try:
        clients[0].sendall(b"GET /stats.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(clients[0])[0] == 200
    finally:
        for sock in clients:
            sock.close()


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_slowloris_memory_stays_bounded(proxy_process, origin):
    connections, seconds = 200, 5.0
    proxy = proxy_process("--log-level", "WARNING", "--head-timeout", "30")
    assert _proxied_hello(proxy, origin) == 200
    rss_before = proxy.rss_kib()
    head = f"GET http://127.0.0.1:{origin.port}/hello HTTP/1.1\r\nX-Pad: ".encode()
    socks = [proxy.connect() for _ in range(connections)]
    try:
        started, sent, latencies = time.monotonic(), 0, []
        while time.monotonic() - started < seconds:
            for sock in socks:
                sock.send(head[sent % len(head) : sent % len(head) + 1])
            sent += 1
            tick = time.monotonic()
            assert _proxied_hello(proxy, origin) == 200
            latencies.append(time.monotonic() - tick)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # the slowloris pace
        growth_mib = (proxy.rss_kib() - rss_before) / 1024
        assert growth_mib < 50, f"RSS grew by {growth_mib:.1f} MiB"
        assert max(latencies) < WAIT
    finally:
        for sock in socks:
            sock.close()
    assert _proxied_hello(proxy, origin) == 200

"""End to end: plain HTTP forwarded through the running proxy, by real clients and raw sockets.

Every test talks to a real :class:`~proxy.app.ProxyServer` on its own reactor thread and to a
real origin on loopback (tests/support.py); names such as ``origin.test`` exist only in the
proxy's StaticResolver table, so no test asks a name server anything.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_program
from support import TEST_HOSTS, OriginServer, read_response, recv_until_closed

from minireactor import Reactor, StaticResolver
from minireactor.timers import Handle
from proxy.app import ProxyServer
from proxy.config import Config

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def absolute(origin: OriginServer, path: str, host: str = "origin.test") -> str:
    return f"http://{host}:{origin.port}{path}"


def send_raw(proxy, data: bytes) -> socket.socket:
    sock = proxy.connect()
    sock.sendall(data)
    return sock


def get_head(
    origin: OriginServer, path: str, version: str = "HTTP/1.1", host: str = "origin.test"
) -> bytes:
    url = absolute(origin, path, host)
    return f"GET {url} {version}\r\nHost: {host}:{origin.port}\r\n\r\n".encode()


class Responses:
    """Reads consecutive responses from one socket, keeping bytes that belong to the next one.

    (``support.read_response`` drops whatever follows the body it reads, so it cannot read
    pipelined answers that arrive in one segment.)
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed with {self.buf[:200]!r} buffered")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """One response: (status, lower-cased fields, body)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if head_only or status in (204, 304):
            return status, fields, b""
        if fields.get("transfer-encoding", "").lower().endswith("chunked"):
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._take(size)
                self._take(2)
            while self._line():
                pass
            return status, fields, body
        return status, fields, self._take(int(fields.get("content-length", "0")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- real clients ------------------------------------------------------------------------------


def test_curl_get_through_the_proxy(proxy, origin):
    curl = require_program("curl")
    out = subprocess.run(
        [curl, "-sS", "--max-time", "20", "-x", proxy.url, absolute(origin, "/hello"), "-i"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/1.1 200")
    assert out.stdout.endswith(b"hello from the origin\n")
    assert re.search(rb"(?im)^via: .*minireactor", out.stdout)
    assert origin.hits["/hello"] == 1


def test_urllib_with_proxy_handler(proxy, origin):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    with opener.open(absolute(origin, "/hello"), timeout=20) as response:
        assert response.status == 200
        assert response.read() == b"hello from the origin\n"
    assert origin.requests[-1][2]["Host"] == f"origin.test:{origin.port}"


def test_http_client_absolute_form(proxy, origin):
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=20)
    try:
        conn.request("GET", absolute(origin, "/hello"))
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"hello from the origin\n"
    finally:
        conn.close()
    method, path, _ = origin.requests[-1]
    assert (method, path) == ("GET", "/hello")


# -- bodies ------------------------------------------------------------------------------------


def _blocks(total: int, seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB, not all one byte
    left = total
    while left > 0:
        piece = block[: min(left, len(block))]
        left -= len(piece)
        yield piece


def _sha_of_blocks(total: int, seed: bytes) -> str:
    digest = hashlib.sha256()
    for piece in _blocks(total, seed):
        digest.update(piece)
    return digest.hexdigest()


def test_large_post_body_streams_both_ways(proxy, origin):
    size = 20 * MiB
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
    try:
        conn.request(
            "POST",
            absolute(origin, "/echo"),
            body=_blocks(size, b"post"),
            headers={"Content-Length": str(size)},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("X-Received-Bytes") == str(size)
        digest = hashlib.sha256()
        received = 0
        while chunk := response.read(MiB):
            digest.update(chunk)
            received += len(chunk)
    finally:
        conn.close()
    assert received == size
    assert digest.hexdigest() == _sha_of_blocks(size, b"post")


def test_chunked_request_body(proxy, origin):
    pieces = [b"first piece ", b"second piece ", b"x" * 100_000]
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=20)
    try:
        conn.request("POST", absolute(origin, "/echo"), body=iter(pieces), encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"".join(pieces)
    finally:
        conn.close()
    assert origin.requests[-1][2].get("Transfer-Encoding") == "chunked"


def test_chunked_response_is_reframed_for_the_client(proxy, origin):
    with send_raw(proxy, get_head(origin, "/chunked?pieces=4")) as sock:
        status, headers, body = read_response(sock)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert body == b"".join(f"piece {i}\n".encode() for i in range(4))


def test_until_close_response_becomes_chunked_and_the_client_connection_survives(proxy, origin):
    with send_raw(proxy, get_head(origin, "/until-close")) as sock:
        status, headers, body = read_response(sock)
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert headers.get("connection", "").lower() != "close"
        assert body == b"the body ends when the connection does\n"
        sock.sendall(get_head(origin, "/hello"))
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"hello from the origin\n")


def test_http10_client_gets_identity_body_and_close(proxy, origin):
    with send_raw(proxy, get_head(origin, "/chunked?pieces=3", version="HTTP/1.0")) as sock:
        raw = recv_until_closed(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert not re.search(rb"(?im)^transfer-encoding:", head)
    assert re.search(rb"(?im)^connection: *close", head)
    assert body == b"piece 0\npiece 1\npiece 2\n"


# -- connection reuse --------------------------------------------------------------------------


def test_keep_alive_reuses_client_and_origin_connections(proxy, origin):
    requests = 20
    with proxy.connect() as sock:
        for i in range(requests):
            sock.sendall(get_head(origin, f"/hello?n={i}"))
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"hello from the origin\n")
            assert headers.get("connection", "").lower() != "close"
    assert origin.hits["/hello"] == requests
    reuses = proxy.call(lambda: proxy.server.pool.reuses)
    origin_connections = requests - reuses
    # One origin connection serves them all; allow a spare for a race with the origin.
    assert origin_connections <= 2, f"{origin_connections} origin connections for {requests}"


def test_pipelined_requests_are_answered_in_order(proxy, origin):
    batch = (
        get_head(origin, "/hello")
        + get_head(origin, "/chunked?pieces=2")
        + get_head(origin, "/big?size=70000")
    )
    with send_raw(proxy, batch) as sock:
        responses = Responses(sock)
        first, second, third = responses.read(), responses.read(), responses.read()
    assert first[0] == second[0] == third[0] == 200
    assert first[2] == b"hello from the origin\n"
    assert second[2] == b"piece 0\npiece 1\n"
    assert third[2] == b"x" * 70000
    assert [path for _, path, _ in origin.requests] == [
        "/hello",
        "/chunked?pieces=2",
        "/big?size=70000",
    ]


def test_many_pipelined_requests_beyond_the_pipeline_buffer(proxy, origin):
    # 40 requests of ~8 KiB each: more than the session holds (PIPELINE_BUFFER_LIMIT), so the
    # proxy must stop reading the client and start again, not lose or reorder requests.
    pad = "X-Pad: " + "p" * 8000 + "\r\n"
    count = 40
    batch = b"".join(
        f"GET {absolute(origin, f'/hello?i={i}')} HTTP/1.1\r\nHost: x\r\n{pad}\r\n".encode()
        for i in range(count)
    )
    with proxy.connect() as sock:
        sender = threading.Thread(target=sock.sendall, args=(batch,))
        sender.start()
        try:
            responses = Responses(sock)
            for i in range(count):
                status, _, body = responses.read()
                assert (status, body) == (200, b"hello from the origin\n"), i
        finally:
            sender.join(20)
    assert [path for _, path, _ in origin.requests] == [f"/hello?i={i}" for i in range(count)]


def test_pipelined_post_body_then_get(proxy, origin):
    body = b"z" * 50_000
    post = (
        f"POST {absolute(origin, '/echo')} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with send_raw(proxy, post + body + get_head(origin, "/hello")) as sock:
        responses = Responses(sock)
        assert responses.read()[2] == body
        assert responses.read()[2] == b"hello from the origin\n"


def test_http10_keep_alive_client_keeps_its_connection(proxy, origin):
    head = f"GET {absolute(origin, '/hello')} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with proxy.connect() as sock:
        responses = Responses(sock)
        for _ in range(3):
            sock.sendall(head.encode())
            status, fields, body = responses.read()
            assert (status, body) == (200, b"hello from the origin\n")
            assert fields["connection"].lower() == "keep-alive"


def test_head_and_304_responses_have_no_body_and_keep_the_connection(proxy, origin):
    path = "/cacheable?cc=no-store&etag=%22v1%22"
    with proxy.connect() as sock:
        responses = Responses(sock)
        sock.sendall(f"HEAD {absolute(origin, '/hello')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, fields, _ = responses.read(head_only=True)
        assert (status, fields["content-length"]) == (200, "22")
        conditional = 'If-None-Match: "v1"\r\nHost: x\r\n'
        sock.sendall(f"GET {absolute(origin, path)} HTTP/1.1\r\n{conditional}\r\n".encode())
        assert responses.read()[0] == 304
        sock.sendall(get_head(origin, "/hello"))
        assert responses.read()[2] == b"hello from the origin\n"
        assert responses.buf == b""


def test_expect_100_continue(proxy, origin):
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=20)
    try:
        conn.request("POST", absolute(origin, "/echo"), b"abc", {"Expect": "100-continue"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"abc")
        conn.request("GET", absolute(origin, "/hello"))
        assert conn.getresponse().read() == b"hello from the origin\n"
    finally:
        conn.close()


# -- the head on its way through ---------------------------------------------------------------


def test_hop_by_hop_fields_removed_via_added_host_rewritten(proxy, origin):
    extra = (
        "Connection: keep-alive, X-Hop\r\n"
        "X-Hop: secret\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
        "X-End-To-End: kept\r\n"
    )
    url = absolute(origin, "/headers")
    head = f"GET {url} HTTP/1.1\r\nHost: wrong.example\r\n{extra}\r\n".encode()
    with send_raw(proxy, head) as sock:
        status, _, body = read_response(sock)
    assert status == 200
    seen = json.loads(body)
    fields = {name.lower(): value for name, value in seen["headers"]}
    assert seen["request_line"] == "GET /headers HTTP/1.1"
    for gone in ("x-hop", "proxy-connection", "keep-alive", "proxy-authorization"):
        assert gone not in fields, f"{gone} reached the origin"
    assert "x-hop" not in fields.get("connection", "").lower()
    assert fields["x-end-to-end"] == "kept"
    assert "minireactor" in fields["via"]
    assert fields["host"] == f"origin.test:{origin.port}"


# -- errors ------------------------------------------------------------------------------------


def _error(proxy, head: bytes) -> tuple[int, dict[str, str], bytes]:
    with send_raw(proxy, head) as sock:
        return read_response(sock)


def test_unresolvable_host_is_502_naming_the_cause(proxy):
    status, headers, body = _error(proxy, b"GET http://nowhere.test/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 502
    assert headers["content-type"].startswith("text/html")
    assert b"nowhere.test" in body
    assert b"resolve" in body


def test_refused_port_is_502(proxy):
    port = free_port()
    head = f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    status, _, body = _error(proxy, head)
    assert status == 502
    assert f"127.0.0.1:{port}".encode() in body


def test_origin_closing_before_a_response_is_502(proxy, origin):
    status, _, body = _error(proxy, get_head(origin, "/drop"))
    assert status == 502
    assert b"before sending a response" in body


@pytest.fixture
def full_listener() -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full and never drained: a SYN to it gets no answer."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(3):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(address)
        _, writable, _ = select.select([], fillers[:1], [], 5)
        assert writable
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_connect_deadline_is_504(make_proxy, full_listener):
    proxy = make_proxy(connect_timeout=0.5)
    host, port = full_listener
    started = time.monotonic()
    status, _, body = _error(
        proxy, f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert status == 504
    assert b"deadline" in body
    assert time.monotonic() - started < 8


class SilentResolver(StaticResolver):
    """A name server that never answers: look-ups hang until the connect deadline."""

    def resolve(self, host, port, callback):  # noqa: ANN001, ANN201 - test double
        self.lookups.append(host)
        return Handle(callback, ())


def test_resolver_that_never_answers_is_504(tmp_path):
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("")
    reactor = Reactor()
    resolver = SilentResolver(reactor, TEST_HOSTS)
    config = Config(port=0, blacklist=str(blacklist), watch_blacklist=False, connect_timeout=0.5)
    server = ProxyServer(config, reactor=reactor, resolver=resolver).start_in_thread()
    try:
        host, port = server.address
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            status, _, body = read_response(sock)
        assert status == 504
        assert b"origin.test:80" in body
        assert resolver.lookups == ["origin.test"]
    finally:
        server.stop_from_thread()
        reactor.close()


def test_malformed_request_is_400_and_closes(proxy):
    with send_raw(proxy, b"THIS IS NOT HTTP\r\n\r\n") as sock:
        raw = recv_until_closed(sock)  # returns only once the proxy closes
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert re.search(rb"(?im)^connection: *close", raw)


# -- the proxy's own pages ---------------------------------------------------------------------


def test_origin_form_gets_the_dashboard_and_stats(proxy):
    own = f"Host: {proxy.host}:{proxy.port}\r\n".encode()
    with proxy.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + own + b"\r\n")
        status, headers, body = read_response(sock)
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b"<html" in body
        sock.sendall(b"GET /stats.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 200
    doc = json.loads(body)
    assert isinstance(doc["connections"]["by_state"], dict)
    assert isinstance(doc["requests"]["total"], int)  # own pages are kept out of it


# -- bounded memory ----------------------------------------------------------------------------


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """Read the child's stderr until a line containing *needle* (bounded by *timeout*)."""
    lines: list[str] = []
    found = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))
            if needle in lines[-1]:
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    assert found.wait(timeout), f"no {needle!r} on stderr within {timeout} s: {lines}"
    matches = [line for line in lines if needle in line]
    assert matches, f"the proxy exited early: {''.join(lines)}"
    return matches[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_200_mib_download_keeps_proxy_memory_bounded(origin, tmp_path):
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--port", str(port), "--blacklist", str(blacklist)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_line(proc, "listening on", 20)
        size = 200 * MiB
        numeric = "127.0.0.1"  # the child resolves names for real: no test names there
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            # Warm up (imports, first buffers) before the baseline is taken.
            sock.sendall(get_head(origin, "/big?size=1048576", host=numeric))
            assert len(read_response(sock)[2]) == MiB
            baseline = peak = _rss(proc.pid)
            sock.sendall(get_head(origin, f"/big?size={size}", host=numeric))
            received = 0
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            received = len(rest)
            deadline = time.monotonic() + 25
            reads = 0
            while received < size:
                assert time.monotonic() < deadline, f"only {received} bytes in time"
                data = sock.recv(16384)
                assert data, "the proxy closed early"
                received += len(data)
                reads += 1
                if reads % 64 == 0:  # every MiB
                    peak = max(peak, _rss(proc.pid))
                    time.sleep(0.002)  # a slowish reader: the proxy must push back
        peak = max(peak, _rss(proc.pid))
        assert received == size
        growth = peak - baseline
        assert growth < 64 * MiB, f"proxy RSS grew by {growth / MiB:.1f} MiB"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class ForgetfulOrigin:
    """An origin whose first connection dies on its second request, unanswered.

    It answers the first request with keep-alive, then reads the next request on the same
    connection and closes without a word: the race of a server timing out an idle connection
    just as a proxy reuses it. Later connections answer every request.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.paths: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                first = self.connections == 1
            threading.Thread(target=self._talk, args=(conn, first), daemon=True).start()

    def _talk(self, conn: socket.socket, first: bool) -> None:
        buf = b""
        answered = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                with self._lock:
                    self.paths.append(path)
                if first and answered == 1:
                    return  # gone without answering
                body = f"served {path}".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                answered += 1

    def close(self) -> None:
        self.listener.close()


def test_a_reused_connection_that_dies_unanswered_is_retried_once(proxy):
    origin = ForgetfulOrigin()
    try:
        base = f"http://127.0.0.1:{origin.port}"
        with proxy.connect() as sock:
            replies = Responses(sock)
            sock.sendall(f"GET {base}/one HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert replies.read()[2] == b"served /one"
            # The second request goes over the pooled connection, which dies; a third is
            # pipelined behind it and must survive the retry untouched.
            sock.sendall(
                f"GET {base}/two HTTP/1.1\r\nHost: x\r\n\r\n"
                f"GET {base}/three HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert replies.read()[2] == b"served /two"
            assert replies.read()[2] == b"served /three"
        assert origin.paths.count("/two") == 2  # the lost attempt, then the retry
        assert origin.connections >= 2
    finally:
        origin.close()

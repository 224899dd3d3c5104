"""Loopback test servers shared by the end-to-end tests: origins, a TLS origin, the proxy.

Everything binds 127.0.0.1 port 0 and is stopped by the fixture that started it.
"""

from __future__ import annotations

import collections
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from minireactor import Reactor, StaticResolver
from proxy.app import ProxyServer
from proxy.config import Config

# Names the tests may use: they exist only in this table, never in DNS.
TEST_HOSTS = {"origin.test": "127.0.0.1", "www.origin.test": "127.0.0.1", "other.test": "127.0.0.1"}

Route = Callable[["OriginHandler"], None]


class OriginHandler(http.server.BaseHTTPRequestHandler):
    """A keep-alive HTTP/1.1 origin whose answers are chosen by path."""

    protocol_version = "HTTP/1.1"
    # http.server writes head and body separately; without NODELAY every keep-alive request
    # waits ~40 ms for Nagle and delayed ACKs, which is the origin's slowness, not the proxy's.
    disable_nagle_algorithm = True
    server: OriginServer

    def log_message(self, *args: object) -> None:
        pass

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.server.record(self)
        route = self.server.routes.get(parts.path) or ROUTES.get(parts.path)
        if route is None:
            self.reply(404, b"no such page\n")
            return
        route(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _dispatch

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def reply(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)


def _hello(h: OriginHandler) -> None:
    h.reply(200, b"hello from the origin\n")


def _echo(h: OriginHandler) -> None:
    body = h.read_body()
    h.reply(200, body, {"X-Received-Bytes": str(len(body))}, "application/octet-stream")


def _headers(h: OriginHandler) -> None:
    h.read_body()
    data = {"request_line": h.requestline, "headers": list(h.headers.items())}
    h.reply(200, json.dumps(data).encode(), content_type="application/json")


def _big(h: OriginHandler) -> None:
    size = int(h.query.get("size", "1048576"))
    h.send_response(200)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", str(size))
    h.end_headers()
    block = b"x" * 65536
    left = size
    while left > 0:
        n = min(left, len(block))
        h.wfile.write(block[:n])
        left -= n


def _chunked(h: OriginHandler) -> None:
    pieces = int(h.query.get("pieces", "5"))
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for i in range(pieces):
        data = f"piece {i}\n".encode()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.write(b"0\r\n\r\n")


def _until_close(h: OriginHandler) -> None:
    h.close_connection = True
    h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    h.wfile.write(b"the body ends when the connection does\n")


def _drop(h: OriginHandler) -> None:
    h.close_connection = True  # close without a response


def _slow(h: OriginHandler) -> None:
    time.sleep(float(h.query.get("delay", "1")))
    _cacheable(h)


def _cacheable(h: OriginHandler) -> None:
    headers = {"Cache-Control": h.query.get("cc", "max-age=60")}
    for name in ("ETag", "Last-Modified", "Vary", "Expires"):
        if name.lower() in h.query:
            headers[name] = h.query[name.lower()]
    etag = headers.get("ETag")
    if etag and h.headers.get("If-None-Match") == etag:
        h.reply(304, b"", headers)
        return
    hits = h.server.hits[urlsplit(h.path).path]
    body = f"representation #{hits} of {h.path}\n".encode()
    if "Vary" in headers:
        body += f"for {headers['Vary']}: {h.headers.get(headers['Vary'], '')}\n".encode()
    h.reply(200, body, headers)


ROUTES: dict[str, Route] = {
    "/": _hello,
    "/hello": _hello,
    "/echo": _echo,
    "/headers": _headers,
    "/big": _big,
    "/chunked": _chunked,
    "/until-close": _until_close,
    "/drop": _drop,
    "/slow": _slow,
    "/cacheable": _cacheable,
}


class OriginServer(http.server.ThreadingHTTPServer):
    """A threaded origin that counts requests per path and keeps the last heads it saw."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), OriginHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.routes: dict[str, Route] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def record(self, handler: OriginHandler) -> None:
        with self._lock:
            self.hits[urlsplit(handler.path).path] += 1
            self.requests.append((handler.command, handler.path, dict(handler.headers.items())))

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> OriginServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)


class RunningProxy:
    """The real proxy, on its own reactor thread, resolving names from :data:`TEST_HOSTS`."""

    def __init__(self, config: Config, hosts: dict[str, str] | None = None) -> None:
        self.reactor = Reactor()
        self.resolver = StaticResolver(self.reactor, {**TEST_HOSTS, **(hosts or {})})
        self.server = ProxyServer(config, reactor=self.reactor, resolver=self.resolver)
        self.server.start_in_thread()
        self.host, self.port = self.server.address
        self.url = f"http://{self.host}:{self.port}"

    def call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        """Run *fn* on the reactor thread and return its result (to read state safely)."""
        done = threading.Event()
        box: list[object] = []

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        self.reactor.call_soon_threadsafe(run)
        assert done.wait(timeout), "the reactor did not answer"
        return box[0] if box else None

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return sock

    def stop(self) -> None:
        self.server.stop_from_thread()
        self.reactor.close()


def recv_until_closed(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    """Read until the peer closes (or resets), at most *limit* bytes."""
    chunks = []
    total = 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length or chunked response from a raw socket (test helper).

    Bytes after the body are discarded, so it cannot read pipelined answers that arrive
    together; tests of pipelining use their own reader.
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a full head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").endswith("chunked"):
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n\r\n" not in b"\r\n" + rest:
                    rest += sock.recv(65536)
                break
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            body += rest[:size]
            rest = rest[size + 2 :]
        return status, headers, body
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return status, headers, rest[:length]


def _big_cacheable(h: OriginHandler) -> None:
    # A cacheable body of any size, to test the object-size limit and eviction.
    size = int(h.query.get("size", "65536"))
    h.reply(200, b"c" * size, {"Cache-Control": "max-age=60"}, "application/octet-stream")


ROUTES["/big-cacheable"] = _big_cacheable

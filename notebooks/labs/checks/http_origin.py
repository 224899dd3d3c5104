"""The driver's HTTP origin: a threaded ``http.server`` that records every request.

Theory of operation
-------------------
:class:`HttpOrigin` listens on ``127.0.0.1`` with port 0 and serves each connection in a thread
of the driver's process, so the proxy under test, a separate process, reaches it over real
loopback TCP. Its handler records each request as it arrived (:class:`Recorded`), which is how
a check sees the request *the proxy* sent: the origin-form target, the ``Host``, the fields that
should have been removed, the validators of a revalidation. A request carrying
``X-Lab-Check: MARKER`` is found again with :meth:`HttpOrigin.find`.

The answers come from :data:`ROUTES`, filled by :mod:`checks.routes`: an exact path, or the
first path segment (``/c/``). With ``tls`` the same server speaks HTTPS, the handshake done in
the connection's own thread so that a client stuck in it holds up nobody else.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PATTERN = bytes(range(256)) * 4096
HELLO = b"hello from the origin\n"
CHUNKS = [b"chunk one\n", b"chunk two, a little longer\n", b"x" * 3000 + b"\n", b"the end\n"]
CLOSE_BODY = b"this body ends when the connection does\n" * 200
#: How long any origin waits on a socket before giving up on it.
SOCKET_TIMEOUT = 15.0


def big_body(size: int, seed: int) -> bytes:
    """The deterministic body of ``/big?size=N&seed=S``."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    """Hex SHA-256 of *data*, for comparing bodies in messages."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Recorded:
    """One request as an origin received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def get_all(self, name: str) -> list[str]:
        """Every value of the fields called *name* (case-insensitive)."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        """The first value of *name*, or None."""
        values = self.get_all(name)
        return values[0] if values else None

    def tokens(self, name: str) -> list[str]:
        """The comma-separated items of every *name* field, stripped and lower-cased."""
        return [
            item.strip().lower()
            for value in self.get_all(name)
            for item in value.split(",")
            if item.strip()
        ]


@dataclass
class Resource:
    """The state of one ``/c/`` resource."""

    version: int = 1
    modified: float = 0.0
    full: int = 0  # 200 answers
    conditional: int = 0  # requests carrying a validator
    not_modified: int = 0  # 304 answers


@dataclass
class Firehose:
    """What a firehose origin sent on its latest connection, and a switch to stop it."""

    sent: int = 0
    connections: int = 0
    #: Set by a check when it is done, so that a proxy without backpressure stops growing.
    halt: threading.Event = field(default_factory=threading.Event)


class OriginHandler(http.server.BaseHTTPRequestHandler):
    """Records every request, then answers it from :data:`ROUTES`."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    server: HttpOrigin

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Stay quiet: the driver prints its own report."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        """Any method: see :meth:`dispatch`."""
        self.dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def dispatch(self) -> None:
        """Record the request, then answer it by its route."""
        body = self.read_body()
        recorded = Recorded(
            self.command, self.path, self.request_version, list(self.headers.items()), body
        )
        self.server.record(recorded)
        path = urlsplit(self.path).path
        route = ROUTES.get(path) or ROUTES.get(path[: path.find("/", 1) + 1])
        if route is None:
            self.reply(404, b"no such route on the lab origin: " + self.path.encode("latin-1"))
            return
        route(self, recorded)

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked (a proxy may send either)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            pieces: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return b"".join(pieces)
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        """Send a response with a Content-Length (no body for HEAD)."""
        self.send_response(status)
        for name, value in headers or [("Cache-Control", "no-store")]:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


Route = Callable[[OriginHandler, Recorded], None]

#: Path (or first segment, such as ``/c/``) -> the function that answers it.
ROUTES: dict[str, Route] = {}


def send_forever(sock: socket.socket, counter: Firehose, stopping: threading.Event) -> None:
    """Send :data:`PATTERN` until the peer goes, the check or the run ends, or a minute passes."""
    counter.sent = 0
    counter.connections += 1
    deadline = time.monotonic() + 60
    try:
        while not (stopping.is_set() or counter.halt.is_set()) and time.monotonic() < deadline:
            sock.sendall(PATTERN)
            counter.sent += len(PATTERN)
    except OSError:
        pass  # the proxy closed or reset: the end of the test


class HttpOrigin(http.server.ThreadingHTTPServer):
    """The routed HTTP origin (with *tls*, the HTTPS one), recording every request."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), OriginHandler)
        self.tls = tls
        self.lock = threading.Lock()
        self.log: list[Recorded] = []
        self.resources: dict[str, Resource] = {}
        self.firehose = Firehose()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True, name="origin")

    @property
    def port(self) -> int:
        """The port the kernel picked."""
        return int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection, first doing the TLS handshake (in this connection's thread)."""
        request.settimeout(SOCKET_TIMEOUT)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            return  # a failed handshake is the client's business (curl reports it)
        try:
            super().finish_request(secure, client_address)
        finally:
            secure.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke mid-request is normal here: say nothing."""

    def record(self, recorded: Recorded) -> None:
        """Keep a received request."""
        with self.lock:
            self.log.append(recorded)

    def find(self, marker: str) -> Recorded | None:
        """The latest request carrying ``X-Lab-Check: marker``."""
        with self.lock:
            for recorded in reversed(self.log):
                if recorded.get("x-lab-check") == marker:
                    return recorded
        return None

    def resource(self, target: str) -> Resource:
        """The counters of ``/c/`` resource *target* (zeros if never asked for)."""
        with self.lock:
            return Resource(**vars(self.resources.get(target, Resource())))

    def requests_for(self, target: str) -> list[Recorded]:
        """Every request received for *target* (path and query), oldest first."""
        with self.lock:
            return [recorded for recorded in self.log if recorded.target == target]

    def bump(self, target: str) -> None:
        """Change resource *target*: a new body, a new ETag, a new Last-Modified."""
        with self.lock:
            resource = self.resources.setdefault(target, Resource())
            resource.version += 1
            resource.modified = float(int(time.time()))

    def start(self) -> HttpOrigin:
        """Serve in a daemon thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close; connections still waiting (``/silent``) are released."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self.thread.join(5)

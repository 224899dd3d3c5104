"""The clients a check uses: a raw HTTP/1.1 connection, curl, and /proc readings of the proxy.

Theory of operation
-------------------
Checks talk to the proxy the way real clients do. :func:`curl` runs the real curl (HTTP through
the proxy, HTTPS through ``CONNECT``, ``--proxytunnel``). :class:`HttpClient` is a raw socket
for what curl will not do on purpose: malformed requests, pipelining, half-close, HTTP/1.0,
reading one byte at a time. It parses what comes back with the project's own strict sans-IO
:class:`~proxy.http11.ResponseParser`, so a response that is not valid HTTP/1.1 fails the
check with the parser's reason.

Every socket has a timeout and every wait a deadline, so a proxy that hangs turns into a FAIL
with a reason ("no complete response within 5 s"), never a hung driver.

The proxy's memory (``VmRSS``) and open descriptors are read from ``/proc/PID``, which is what
the backpressure and leak checks measure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count

from checks import CheckFailed, Context
from proxy.http11 import (
    NEED_DATA,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    ProtocolError,
    Response,
    ResponseParser,
)

#: How long a check waits for an answer the proxy should give at once.
WAIT = 5.0
_names = count()


@dataclass(frozen=True)
class Reply:
    """A response as the client received it."""

    status: int
    reason: str
    version: str
    headers: Headers
    body: bytes

    def describe(self) -> str:
        """``501 Not Implemented (not implemented yet: ...)``: status, and text of an error body."""
        text = f"{self.status} {self.reason}".strip()
        if self.status >= 400 and self.body:
            snippet = self.body.decode("utf-8", "replace")
            if "<p>" in snippet:  # the lab's error pages: show the explanation only
                snippet = snippet.split("<p>", 1)[1].split("</p>", 1)[0]
            text += f" ({' '.join(snippet.split())[:160]})"
        return text


def describe(data: bytes, method: str = "CONNECT") -> str:
    """What raw bytes received from the proxy say, as :meth:`Reply.describe` puts it."""
    if not data:
        return "nothing (the proxy closed the connection)"
    parser = ResponseParser()
    parser.expect(method)
    parser.feed(data)
    parser.feed_eof()
    head: Response | None = None
    body = bytearray()
    try:
        while not isinstance(event := parser.next_event(), EndOfMessage):
            if isinstance(event, Response):
                head = event
            elif isinstance(event, Data):
                body += event.data
            elif event is NEED_DATA or isinstance(event, ConnectionClosed):
                break
    except ProtocolError:
        head = None
    if head is None:
        return repr(" ".join(data.decode("latin-1").split())[:120])
    return Reply(head.status, head.reason, head.version, head.headers, bytes(body)).describe()


def expect_status(reply: Reply, status: int, what: str) -> None:
    """Fail unless *reply* has *status*."""
    if reply.status != status:
        raise CheckFailed(f"{what}: expected {status}, got {reply.describe()}")


class HttpClient:
    """One raw TCP connection to the proxy, speaking HTTP/1.1 by hand."""

    def __init__(self, ctx: Context, timeout: float = WAIT) -> None:
        self.timeout = timeout
        try:
            self.sock = socket.create_connection(ctx.proxy, timeout=timeout)
        except OSError as error:
            raise CheckFailed(f"cannot connect to the proxy at {ctx.proxy}: {error}") from error
        self.parser = ResponseParser()
        self.eof = False

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        """Send *data* as is."""
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise CheckFailed(f"sending to the proxy failed: {error}") from error

    def shutdown_write(self) -> None:
        """Half-close: tell the proxy we have finished sending."""
        self.sock.shutdown(socket.SHUT_WR)

    def _receive(self, what: str) -> bytes:
        try:
            return self.sock.recv(65536)
        except TimeoutError as error:
            raise CheckFailed(f"{what}: no complete response within {self.timeout:g} s") from error
        except ConnectionResetError as error:
            raise CheckFailed(f"{what}: the proxy reset the connection") from error

    def read_reply(self, what: str, method: str = "GET") -> Reply:
        """Read one whole response to a *method* request (interim 1xx responses are skipped)."""
        self.parser.expect(method)
        head: Response | None = None
        body = bytearray()
        while True:
            try:
                event = self.parser.next_event()
            except ProtocolError as error:
                raise CheckFailed(f"{what}: the response is not valid HTTP/1.1: {error}") from error
            if event is NEED_DATA:
                data = self._receive(what)
                if data:
                    self.parser.feed(data)
                else:
                    self.eof = True
                    self.parser.feed_eof()
            elif isinstance(event, ConnectionClosed):
                raise CheckFailed(f"{what}: the proxy closed the connection without answering")
            elif isinstance(event, Response):
                if event.status < 200:
                    self.parser.expect(method)
                    continue
                head = event
            elif isinstance(event, Data):
                body += event.data
            elif isinstance(event, EndOfMessage):
                assert head is not None
                return Reply(head.status, head.reason, head.version, head.headers, bytes(body))
            else:
                raise CheckFailed(f"{what}: unexpected {event!r} from the proxy")

    def expect_closed(self, what: str, timeout: float = WAIT) -> None:
        """Fail unless the proxy closes the connection (EOF or reset) within *timeout*."""
        if self.eof:
            return
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError as error:
            raise CheckFailed(f"{what}: the proxy kept the connection open") from error
        except ConnectionResetError:
            return
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            raise CheckFailed(f"{what}: unexpected bytes after the response: {data[:60]!r}")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def get(url: str, marker: str = "", version: str = "HTTP/1.1", extra: str = "") -> bytes:
    """An absolute-form GET for the proxy, with ``Host`` and an optional ``X-Lab-Check``."""
    authority = url.split("://", 1)[1].split("/", 1)[0]
    lines = [f"GET {url} {version}", f"Host: {authority}"]
    if marker:
        lines.append(f"X-Lab-Check: {marker}")
    head = "\r\n".join(lines) + "\r\n" + extra
    return (head + "\r\n").encode("latin-1")


def ask(ctx: Context, request: bytes, what: str, method: str = "GET") -> Reply:
    """Send *request* on a new connection and read one reply."""
    with HttpClient(ctx) as client:
        client.send(request)
        return client.read_reply(what, method)


@dataclass(frozen=True)
class CurlResult:
    """What curl got: the final status, its header fields, the body, and curl's complaints."""

    status: int
    headers: Headers
    body: bytes
    stderr: str

    def reply(self) -> Reply:
        """As a :class:`Reply`, for :func:`expect_status`."""
        return Reply(self.status, "", "", self.headers, self.body)


def _last_head(text: str) -> Headers:
    """The header fields of the last response head in curl's ``-D`` output."""
    blocks = [block for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    heads = [block for block in blocks if block.lstrip().startswith("HTTP/")]
    if not heads:
        return Headers()
    lines = heads[-1].strip().split("\n")[1:]
    return Headers(
        (name.strip(), value.strip())
        for name, sep, value in (line.partition(":") for line in lines)
        if sep
    )


def curl(ctx: Context, url: str, *options: str, timeout: float = 10.0) -> CurlResult:
    """Run curl through the proxy for *url*; fail the check if curl itself fails."""
    number = next(_names)
    headers_file = ctx.workdir / f"curl-{number}.head"
    body_file = ctx.workdir / f"curl-{number}.body"
    command = [
        ctx.curl,
        "-q",  # ignore ~/.curlrc: the same curl for everyone
        "--silent",
        "--show-error",
        "--max-time",
        f"{timeout:g}",
        "--proxy",
        ctx.proxy_url,
        "--dump-header",
        str(headers_file),
        "--output",
        str(body_file),
        "--write-out",
        "%{http_code}",
        *options,
        url,
    ]
    environment = {
        key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")
    }
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=timeout + 5, env=environment, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise CheckFailed(f"curl {url} did not finish within {timeout + 5:g} s") from error
    stderr = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        shown = " ".join([*options, url])
        raise CheckFailed(f"curl {shown} failed (exit {done.returncode}): {stderr}")
    head_text = headers_file.read_text("latin-1") if headers_file.exists() else ""
    body = body_file.read_bytes() if body_file.exists() else b""
    status_text = done.stdout.decode("ascii", "replace").strip()
    status = int(status_text) if status_text.isdigit() else 0
    return CurlResult(status, _last_head(head_text), body, stderr)


def open_tunnel(
    ctx: Context, authority: str, early: bytes = b"", rcvbuf: int | None = None
) -> tuple[socket.socket, str, bytes]:
    """``CONNECT authority``: return the socket, the status line and bytes already past the head.

    With *rcvbuf*, the socket's receive buffer is set small before connecting (a slow reader
    whose kernel holds little).
    """
    sock = socket.socket()
    sock.settimeout(WAIT)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        sock.connect(ctx.proxy)
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
        sock.sendall(request + early)
        received = bytearray()
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            if len(received) > 65536:
                break
    except TimeoutError as error:
        sock.close()
        raise CheckFailed(f"CONNECT {authority}: no answer within {WAIT:g} s") from error
    except OSError as error:
        sock.close()
        raise CheckFailed(f"CONNECT {authority}: {error}") from error
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if status_line.split(" ")[1:2] != ["200"]:
        sock.close()
        raise CheckFailed(f"CONNECT {authority}: expected 200, got {describe(bytes(received))}")
    return sock, head.decode("latin-1"), rest


def read_until_eof(sock: socket.socket, what: str, limit: int = 64 << 20) -> bytes:
    """Everything until EOF, within the socket's timeout per read."""
    received = bytearray()
    try:
        while len(received) < limit:
            data = sock.recv(1 << 20)
            if not data:
                return bytes(received)
            received += data
    except TimeoutError as error:
        raise CheckFailed(
            f"{what}: no EOF within {sock.gettimeout():g} s (received {len(received)} bytes: "
            f"{bytes(received[:60])!r})"
        ) from error
    raise CheckFailed(f"{what}: more than {limit} bytes without EOF")


def rss(pid: int) -> int:
    """The resident memory of process *pid*, in bytes (``VmRSS`` in ``/proc/PID/status``)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError as error:
        raise CheckFailed(f"cannot read the proxy's memory use: {error}") from error
    raise CheckFailed("no VmRSS line in /proc/PID/status")


def open_descriptors(pid: int) -> int:
    """How many descriptors process *pid* has open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError as error:
        raise CheckFailed(f"cannot list the proxy's descriptors: {error}") from error


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll *predicate* until it is true or *timeout* passes.

    For what no event announces (the proxy's descriptor count); every other wait is on a
    socket or a condition.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)

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


class ListSink:
    """An access-log destination that keeps the lines in memory, for tests to read."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.lines.extend(data.decode().splitlines())

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)


class RunningProxy:
    """The real proxy, on its own reactor thread, resolving names from :data:`TEST_HOSTS`.

    Its access log goes to :attr:`access` (a :class:`ListSink`), not to the test's stderr.
    """

    def __init__(self, config: Config, hosts: dict[str, str] | None = None) -> None:
        self.reactor = Reactor()
        self.resolver = StaticResolver(self.reactor, {**TEST_HOSTS, **(hosts or {})})
        self.access = ListSink()
        self.server = ProxyServer(
            config, reactor=self.reactor, resolver=self.resolver, access_sink=self.access
        )
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


# -- a fake world for the session state machine: no socket, no thread, virtual time ---------------
#
# The session is written against small interfaces (proxy.session.context): a scheduler, a
# network, a host, transports. These fakes implement them so a test (or notebook 07) can drive
# the real ClientSession and its real steps (policy, cache step, dialer, exchange, tunnel) one
# move at a time: play the client with FakeClient.send, play the origin with FakeTransport.feed
# on the connection FakeNetwork made, and move time with FakeClock.advance.


class FakeClock:
    """A Scheduler with virtual time: callbacks run only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        from minireactor.timers import TimerHeap

        self.now = start
        self.wall = 1_700_000_000.0  # the cache's wall clock, moved in step
        self.ready: collections.deque = collections.deque()
        self.timers = TimerHeap()

    def time(self) -> float:
        return self.now

    def wall_time(self) -> float:
        return self.wall + (self.now - 1000.0)

    def call_soon(self, callback: Callable[..., object], *args: object):  # noqa: ANN201
        from minireactor import Handle

        handle = Handle(callback, args)
        self.ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: object):  # noqa: ANN201
        return self.timers.push(self.now + delay, callback, args)

    def call_at(self, when: float, callback: Callable[..., object], *args: object):  # noqa: ANN201
        return self.timers.push(when, callback, args)

    def run(self, limit: int = 10_000) -> int:
        """Run ready callbacks (and the ones they schedule) until none is left; return how many."""
        ran = 0
        while self.ready:
            handle = self.ready.popleft()
            if not handle.cancelled:
                handle.run()
                ran += 1
            if ran > limit:
                raise RuntimeError("callbacks keep scheduling callbacks: a loop?")
        return ran

    def advance(self, seconds: float) -> None:
        """Move time forward by *seconds*, running every timer that comes due on the way."""
        target = self.now + seconds
        self.run()
        while True:
            when = self.timers.next_deadline()
            if when is None or when > target:
                break
            self.now = max(self.now, when)
            for timer in self.timers.pop_due(self.now):
                if not timer.cancelled:
                    timer.run()
            self.run()
        self.now = target
        self.run()


class FakeTransport:
    """Stands in for minireactor.Transport: records what the protocol writes and asks for.

    The test plays the peer with feed(), feed_eof() and lose(). Like the real transport it
    reports connection_made and connection_lost on a later tick (clock.run()).
    """

    def __init__(self, clock: FakeClock, protocol: object, peer: tuple[str, int]) -> None:
        self.clock = clock
        self.protocol = protocol
        self.peer = peer
        self.sent = bytearray()
        self.calls: list[str] = []  # the control calls, in order
        self.reading = True
        self.closing = False
        self.closed = False
        self.eof_sent = False
        # A slow reader: with a window, writes past it since the last drain() call the
        # protocol's pause_writing, as a real transport does past its high-water mark.
        self.window: int | None = None
        self.undrained = 0
        self.writing_paused = False
        self.lost_with: BaseException | None = None
        # Set by a test: the next write fails as a real send() to a reset peer does, and
        # connection_lost is scheduled for the protocol of that moment.
        self.fail_next_write: BaseException | None = None
        clock.call_soon(self._made)

    def _made(self) -> None:
        if not self.closed:
            self.protocol.connection_made(self)  # type: ignore[attr-defined]

    # what the protocol calls
    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": self.peer}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return self.undrained

    @property
    def is_closing(self) -> bool:
        return self.closing or self.closed

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.calls.append("resume_reading")
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.is_closing or self.eof_sent:
            return
        if self.fail_next_write is not None:
            failure, self.fail_next_write = self.fail_next_write, None
            self.closing = True
            self._lose(failure)
            return
        self.sent += data
        if self.window is not None:
            self.undrained += len(data)
            if self.undrained > self.window and not self.writing_paused:
                self.writing_paused = True
                self.protocol.pause_writing()  # type: ignore[attr-defined]

    def drain(self) -> None:
        """The slow reader catches up: everything written so far has left."""
        self.undrained = 0
        if self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()  # type: ignore[attr-defined]
        self.clock.run()

    def cork(self) -> None:
        pass  # the real one gathers writes into one send; here every write is recorded anyway

    def uncork(self) -> None:
        pass

    def write_eof(self) -> None:
        self.calls.append("write_eof")
        self.eof_sent = True

    def close(self) -> None:
        if not self.is_closing:
            self.calls.append("close")
        self.closing = True
        self._lose(None)

    def abort(self, exc: BaseException | None = None) -> None:
        self.calls.append("abort")
        self.closing = True
        self._lose(exc if exc is not None else ConnectionAbortedError("aborted"))

    def _lose(self, exc: BaseException | None) -> None:
        if not self.closed:
            self.closed = True
            self.lost_with = exc
            self.clock.call_soon(self.protocol.connection_lost, exc)  # type: ignore[attr-defined]

    # what the test calls, as the peer
    def feed(self, data: bytes) -> None:
        """The peer sends *data*."""
        assert not self.closed, "feeding a closed connection"
        self.protocol.data_received(data)  # type: ignore[attr-defined]
        self.clock.run()

    def feed_eof(self) -> None:
        """The peer half-closes."""
        if not self.protocol.eof_received():  # type: ignore[attr-defined]
            self.close()
        self.clock.run()

    def lose(self, exc: BaseException | None = None) -> None:
        """The connection breaks (a reset, when *exc* is given)."""
        self.closing = True
        self._lose(exc)
        self.clock.run()

    def take(self) -> bytes:
        """What was written since the last take()."""
        data = bytes(self.sent)
        self.sent.clear()
        return data

    def status_line(self) -> str:
        """The first line written since the last take(): take() between two responses."""
        return bytes(self.sent).split(b"\r\n", 1)[0].decode("latin-1")


class FakeNetwork:
    """Names from a table, and origins that accept, refuse or never answer, by address."""

    def __init__(self, clock: FakeClock, hosts: dict[str, str] | None = None) -> None:
        self.clock = clock
        self.hosts = {"origin.test": "127.0.0.1", **(hosts or {})}
        self.refusing: set[tuple[str, int]] = set()
        self.silent: set[tuple[str, int]] = set()  # connect never completes
        self.slow_names: set[str] = set()  # resolve never completes
        self.connections: list[FakeTransport] = []  # every origin connection made, in order
        self.dialed: list[tuple[str, int]] = []

    def resolve(self, host: str, port: int, callback: Callable[..., None]):  # noqa: ANN201
        if host in self.slow_names:
            from minireactor import Handle

            return Handle(callback, ())  # a look-up that never answers
        ip = self.hosts.get(host, host if host.replace(".", "").isdigit() else None)
        if ip is None:
            error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return self.clock.call_soon(callback, None, error)
        return self.clock.call_soon(callback, [(socket.AF_INET, (ip, port))], None)

    def connect(self, addresses: list, callback: Callable[..., None], timeout: float):  # noqa: ANN201
        address = addresses[0][1][:2]
        self.dialed.append(address)
        if address in self.silent:
            from minireactor import Handle

            return Handle(callback, ())
        if address in self.refusing:
            return self.clock.call_soon(
                callback, None, ConnectionRefusedError(111, "Connection refused")
            )

        def attach(protocol: object) -> FakeTransport:
            transport = FakeTransport(self.clock, protocol, address)
            self.connections.append(transport)
            return transport

        return self.clock.call_soon(callback, attach, None)


class FakeDisk:
    """The cache's disk tier, in memory: answers a look-up only when the test says so."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.entries: dict[str, object] = {}
        self.pending: list[tuple[object, str, Callable[..., None]]] = []

    def select(self, url: str, request_headers: object, callback: Callable[..., None]):  # noqa: ANN201
        from minireactor import Handle

        handle = Handle(callback, ())
        self.pending.append((handle, url, callback))
        return handle

    def answer(self) -> None:
        """Deliver every look-up asked so far (what it holds, or None)."""
        pending, self.pending = self.pending, []
        for handle, url, callback in pending:
            if not handle.cancelled:
                entry = self.entries.get(url)
                callback(entry, "" if entry is not None else "uri-miss")
        self.clock.run()

    def put(self, entry, callback=None) -> bool:  # noqa: ANN001
        self.entries[entry.url] = entry
        return True

    def update(self, entry) -> None:  # noqa: ANN001
        self.entries[entry.url] = entry

    def remove(self, entry) -> None:  # noqa: ANN001
        self.entries.pop(entry.url, None)

    def invalidate(self, url: str, response_headers: object, callback=None) -> None:  # noqa: ANN001
        self.entries.pop(url, None)


class FakeHost:
    """The server as a session sees it."""

    def __init__(self) -> None:
        self.shutting_down = False
        self.closed: list[object] = []

    def session_closed(self, session: object) -> None:
        self.closed.append(session)


class FakeClient:
    """One client connection to a session: send bytes, read what it answered, see its moves."""

    def __init__(self, world: FakeWorld, port: int) -> None:
        from proxy.session.client import ClientSession

        self.world = world
        self.session = ClientSession(world.context)
        self.moves: list[tuple[object, object, object]] = []
        self.session.machine.watch(lambda old, trigger, new: self.moves.append((old, trigger, new)))
        self.transport = FakeTransport(world.clock, self.session, ("127.0.0.1", port))
        world.clock.run()

    @property
    def state(self):  # noqa: ANN201
        return self.session.state

    def send(self, data: bytes | str) -> None:
        self.transport.feed(data.encode("latin-1") if isinstance(data, str) else data)

    def triggers(self) -> list[str]:
        return [trigger.name for _, trigger, _ in self.moves]

    def path(self) -> list[str]:
        """The states visited, starting where the first recorded move started."""
        if not self.moves:
            return [self.state.name]
        return [self.moves[0][0].name] + [new.name for _, _, new in self.moves]


class FakeWorld:
    """A proxy's sessions with everything real but the I/O: build clients and origins on it."""

    def __init__(
        self,
        blocklist: str = "",
        hosts: dict[str, str] | None = None,
        disk: FakeDisk | bool = False,
        **config: object,
    ) -> None:
        from proxy.blocklist import parse
        from proxy.config import Config
        from proxy.http11 import Limits
        from proxy.policy import PolicyStep
        from proxy.session.cachestep import CacheStep
        from proxy.session.client import SessionContext, TunnelKit
        from proxy.session.local import LocalPages
        from proxy.stats import Stats
        from proxy.tunnel import IdleSweep
        from proxy.upstream import UpstreamPool

        settings: dict[str, object] = {"port": 0, "watch_blacklist": False, **config}
        self.config = config_ = Config(**settings)  # type: ignore[arg-type]
        self.clock = clock = FakeClock()
        self.network = FakeNetwork(clock, hosts)
        self.host = FakeHost()
        self.blocklist = parse(blocklist)
        self.stats = Stats(clock=clock.wall_time)
        self.pool = UpstreamPool(
            clock, config_.upstream_idle_timeout, config_.max_idle_upstreams_per_host
        )
        # A disk tier: a new one, or one another world filled (a restarted proxy).
        self.disk = disk if isinstance(disk, FakeDisk) else FakeDisk(clock) if disk else None
        if self.disk is not None:
            self.disk.clock = clock
        self.cache = (
            CacheStep(clock, config_, clock=clock.wall_time, disk=self.disk)
            if config_.cache_enabled
            else None
        )
        own = {("127.0.0.1", 4095)}
        self.context = SessionContext(
            scheduler=clock,
            config=config_,
            limits=Limits(),
            network=self.network,
            host=self.host,
            policy=PolicyStep(
                config_,
                blocklist=self,
                is_own_address=lambda host, port: (host, port) in own,
                own_names=lambda: {"127.0.0.1", "localhost"},
            ),
            pool=self.pool,
            stats=self.stats,
            tunnels=TunnelKit(IdleSweep(clock, config_.idle_timeout), None),
            local=LocalPages(self.stats.snapshot, lambda: own),
            cache=self.cache,
        )
        self._ports = iter(range(50000, 60000))

    def client(self) -> FakeClient:
        """A new client connection, its session waiting for a request."""
        return FakeClient(self, next(self._ports))

    def origin(self, index: int = -1) -> FakeTransport:
        """An origin connection the proxy opened (the latest by default)."""
        return self.network.connections[index]

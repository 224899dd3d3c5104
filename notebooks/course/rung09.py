"""Checkers for rung 9, CONNECT tunnels.

Theory of operation
-------------------
``09-predict-log`` starts the real proxy with an access-log sink that keeps the lines, a plain
origin and a TLS origin (its certificate from a throw-away ``trustme`` CA), sends the three
requests of the question, and reads their lines: the prediction is compared with what the proxy
wrote, never with a stored answer.

``09-relay`` joins two real loopback TCP connections with the student's tunnel on a fresh
reactor, and plays both far ends from the reactor's own thread (readers and timers), except a
feeder thread where a fast sender is needed. Three stories: bytes both ways and a half-close
(the far end answers only after the client's FIN, then ends its own side); a fast download to
a client that reads 32 KiB every 2 ms, where the client side's buffer is sampled every tick and
must stay near its high-water mark; and a client that resets mid-stream, which must close the
far side too. Every descriptor must be unwatched at the end.

``09-idle-sweep`` runs the student's sweep on a :class:`~course.harness.VirtualClock` with
hundreds of fake tunnels whose byte counters the check moves at chosen virtual times: each idle
tunnel must be closed between ``idle_timeout`` and ``1.5 * idle_timeout`` after its last byte
(or after it was added), busy ones never, with at most one timer pending at any moment and
none once no tunnel is watched.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from typing import Any

from minireactor import Reactor
from minireactor.transport import READ_SIZE

from .checks import Answer, Wrong, exercise
from .harness import (
    HOST,
    Background,
    KeepLines,
    QuietHandler,
    ThreadedOrigin,
    VirtualClock,
    loop_errors,
    running_proxy,
)

KiB = 1024
SECRET = "hunter2"
PATH = f"/account?token={SECRET}"
CASES = ("plain GET", "TLS in a tunnel", "plain HTTP in a tunnel")


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return bytes(data)


def _connect_tunnel(proxy: tuple[str, int], port: int) -> socket.socket:
    sock = socket.create_connection(proxy, timeout=5)
    target = f"origin.test:{port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing of the tunnel may be read here
        if not chunk:
            break
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        sock.close()
        raise RuntimeError(f"the proxy refused the tunnel: {head[:40]!r}")
    return sock


def _log_lines() -> dict[str, list[str]]:
    """The three requests of the question, made through the real proxy: each one's log fields."""
    import trustme

    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("origin.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    request = f"GET {PATH} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n".encode()
    sink = KeepLines()
    with (
        ThreadedOrigin(QuietHandler) as plain,
        ThreadedOrigin(QuietHandler, wrap=server_context) as tls,
        running_proxy(
            {"origin.test": HOST}, access_sink=sink, connect_ports=frozenset({plain, tls})
        ) as server,
    ):
        proxy = server.address
        with socket.create_connection(proxy, timeout=5) as sock:
            sock.sendall(
                f"GET http://origin.test:{plain}{PATH} HTTP/1.1\r\nHost: origin.test\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            _read_all(sock)
        with (
            _connect_tunnel(proxy, tls) as raw,
            client_context.wrap_socket(raw, server_hostname="origin.test") as sock,
        ):
            sock.sendall(request)
            _read_all(sock)
        with _connect_tunnel(proxy, plain) as sock:
            sock.sendall(request)
            _read_all(sock)
        needles = {
            "plain GET": f" http://origin.test:{plain}/",
            "TLS in a tunnel": f" origin.test:{tls} ",
            "plain HTTP in a tunnel": f" origin.test:{plain} ",
        }
        found = {}
        for case, needle in needles.items():
            line = sink.wait_for(needle)
            if line is None:
                raise RuntimeError(f"the proxy wrote no access-log line for the {case}")
            found[case] = line.split()
    return found


@exercise("09-predict-log", "Predict what the access log shows of three requests", kind="predict")
def predict_log(answer: Answer) -> str:
    predicted = answer.value("predicted")
    if not isinstance(predicted, dict) or set(predicted) != set(CASES):
        raise Wrong(f"`predicted` should be a dict with the keys {list(CASES)}")
    for case, value in predicted.items():
        if not (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], bool)
        ):
            raise Wrong(f"predicted[{case!r}] should be a pair (method, True or False)")
    truth = {case: (fields[5], SECRET in " ".join(fields)) for case, fields in _log_lines().items()}
    for case in CASES:
        method, shows = predicted[case]
        real_method, real_shows = truth[case]
        if method.upper() != real_method:
            raise Wrong(
                f"the method field of the {case}'s line is not {method!r}",
                "a request that opens a tunnel is logged as the request the proxy saw",
            )
        if shows != real_shows:
            raise Wrong(
                f"for the {case}, the token does {'' if real_shows else 'not '}appear in the log",
                "the proxy logs what it parsed: after `200 Connection established` it stops "
                "parsing, whatever the bytes are, encrypted or not",
            )
    return (
        "right: a proxied GET is logged with its whole URL, query and all; a tunnel only as "
        "CONNECT host:port, even when what went through it was plain HTTP"
    )


def _tcp_pair(buffer: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(outside, inside): a connected loopback pair; *buffer* sizes the kernel buffers."""
    with socket.socket() as listener:
        if buffer is not None:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        listener.bind((HOST, 0))
        listener.listen(1)
        outside = socket.create_connection(listener.getsockname(), timeout=10)
        inside, _ = listener.accept()
    if buffer is not None:
        outside.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return outside, inside


class _Tunnelled:
    """A client, the tunnel's two sockets, and a far end, on one reactor."""

    def __init__(self, make: Any, reactor: Reactor, high_water: int, buffer: int | None) -> None:
        self.reactor = reactor
        self.client, left = _tcp_pair(buffer)
        right, self.far = _tcp_pair(buffer)
        self.inside = (left, right)
        made = make(reactor, left, right, high_water)
        if not (isinstance(made, tuple) and len(made) == 2):
            raise Wrong("tunnel() should return its two transports: (left, right)")
        self.left, self.right = made
        self.client.setblocking(False)
        self.far.setblocking(False)

    def close(self) -> None:
        for sock in (self.client, self.far):
            with contextlib.suppress(OSError):
                self.reactor.remove_reader(sock.fileno())
            sock.close()
        for transport in (self.left, self.right):
            with contextlib.suppress(Exception):
                transport.abort()
        self.reactor.run_once(timeout=0)
        for sock in self.inside:
            sock.close()


def _reader(reactor: Reactor, sock: socket.socket, into: bytearray, ended: list[bool]) -> None:
    def readable() -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if data:
            into.extend(data)
            return
        ended.append(True)
        reactor.remove_reader(sock.fileno())

    reactor.add_reader(sock.fileno(), readable)


def _all_closed(reactor: Reactor, story: _Tunnelled, what: str) -> None:
    reactor.run_until(lambda: reactor.registered_fds == 0, timeout=3.0)
    if not (story.left.is_closing and story.right.is_closing):
        raise Wrong(
            f"{what}, a side of the tunnel was left open",
            "once both directions have ended (or one side is lost), close both transports",
        )
    if reactor.registered_fds:
        raise Wrong(f"{what}, {reactor.registered_fds} descriptor(s) were still watched")


def _half_close_story(make: Any, reactor: Reactor) -> None:
    story = _Tunnelled(make, reactor, 64 * KiB, None)
    try:
        question = b"hello through the tunnel"
        at_far, at_client = bytearray(), bytearray()
        far_ended: list[bool] = []
        client_ended: list[bool] = []
        story.far.send(b"banner: the far end speaks first\n")

        def far_readable() -> None:
            try:
                data = story.far.recv(65536)
            except BlockingIOError:
                return
            except ConnectionError:
                data = b""
            if data:
                at_far.extend(data)
                return
            far_ended.append(True)  # the question is complete: answer it, then end our side
            reactor.remove_reader(story.far.fileno())
            with contextlib.suppress(OSError):  # a tunnel that closed too early: judged below
                story.far.send(b"you said: " + bytes(at_far).upper())
                story.far.shutdown(socket.SHUT_WR)

        reactor.add_reader(story.far.fileno(), far_readable)
        _reader(reactor, story.client, at_client, client_ended)
        story.client.send(question)
        story.client.shutdown(socket.SHUT_WR)  # "I have finished sending", not "goodbye"
        reactor.run_until(lambda: bool(client_ended), timeout=5.0)
        expected = b"banner: the far end speaks first\nyou said: " + question.upper()
        if not far_ended:
            raise Wrong(
                "the client's end-of-stream never reached the far end, which waits for it",
                "eof_received(): pass it on with write_eof() on the other side's transport",
            )
        if bytes(at_far) != question:
            raise Wrong(f"the far end received {bytes(at_far)!r} instead of {question!r}")
        if bytes(at_client) != expected:
            raise Wrong(
                f"the client received {bytes(at_client)!r} instead of {expected!r}",
                "a half-closed side must keep its connection open (eof_received returns True) "
                "so that the other direction still flows",
            )
        if not client_ended:
            raise Wrong("the far end ended its side, but the client never saw end-of-stream")
        _all_closed(reactor, story, "after both ends had half-closed")
    finally:
        story.close()


DOWNLOAD = bytes(range(256)) * (16 * KiB)  # 4 MiB
HIGH = 128 * KiB


def _backpressure_story(make: Any, reactor: Reactor) -> int:
    story = _Tunnelled(make, reactor, HIGH, 64 * KiB)
    story.far.setblocking(True)

    def feed() -> None:
        with contextlib.suppress(OSError):
            story.far.sendall(DOWNLOAD)
            story.far.shutdown(socket.SHUT_WR)

    sender = Background(feed, name="checker-far-end")
    samples: list[int] = []

    def sample(kind: str, _info: dict[str, Any]) -> None:
        if kind == "tick":
            samples.append(story.left.get_write_buffer_size())

    received = bytearray()
    state = {"eof": False}

    def slow_read() -> None:
        try:
            data = story.client.recv(32 * KiB)
        except BlockingIOError:
            data = None
        except ConnectionError:
            data = b""
        if data == b"":
            state["eof"] = True
            return
        if data:
            received.extend(data)
        reactor.call_later(0.002, slow_read)

    try:
        reactor.set_trace(sample)
        sender.start()
        reactor.call_soon(slow_read)
        reactor.run_until(lambda: state["eof"], timeout=15.0)
        reactor.set_trace(None)
        peak = max(samples, default=0)
        if peak > HIGH + READ_SIZE + 64 * KiB:
            raise Wrong(
                f"the client side's transport held up to {peak // KiB} KiB (high water "
                f"{HIGH // KiB} KiB): the far end was read as fast as it sent",
                "each side's pause_writing() must pause reading on the *other* side, and its "
                "resume_writing() resume it",
            )
        if bytes(received) != DOWNLOAD:
            raise Wrong(
                f"the client received {len(received) // KiB} KiB of 4096, or not in order",
                "after a pause, reading must resume when the full side drains",
            )
        if not state["eof"]:
            raise Wrong("the far end's end-of-stream never reached the slow client")
        story.client.close()  # the client ends too: the tunnel must close both sides
        _all_closed(reactor, story, "after a download and both ends")
    finally:
        reactor.set_trace(None)
        story.close()
        if sender.thread.ident is not None:
            sender.thread.join(timeout=5)
    return peak


def _reset_story(make: Any, reactor: Reactor) -> None:
    story = _Tunnelled(make, reactor, 64 * KiB, None)
    try:
        at_far, far_ended = bytearray(), list[bool]()
        _reader(reactor, story.far, at_far, far_ended)
        story.client.send(b"half a request")
        reactor.run_until(lambda: len(at_far) == 14, timeout=3.0)
        story.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        story.client.close()  # linger 0: a reset, not a FIN
        story.client = socket.socket()  # close() above must not close anything twice
        reactor.run_until(lambda: bool(far_ended), timeout=3.0)
        if not far_ended:
            raise Wrong(
                "the client's connection was reset, and the far side of the tunnel stayed open",
                "connection_lost(exc) on one side: abort (or close) the other side's transport",
            )
        _all_closed(reactor, story, "after the client's reset")
    finally:
        story.close()


@exercise("09-relay", "A tunnel: both ways, half-close, crossed backpressure", kind="implement")
def relay(answer: Answer) -> str:
    make = answer.function("tunnel")
    answer.function("TunnelSide")
    reactor = Reactor()
    try:
        with loop_errors():
            _half_close_story(make, reactor)
            peak = _backpressure_story(make, reactor)
            _reset_story(make, reactor)
    finally:
        reactor.close()
    return (
        "bytes crossed both ways, a half-close passed through while the answer came back, "
        f"4 MiB reached a slow client with at most {peak // KiB} KiB held (high water "
        f"{HIGH // KiB} KiB), and a reset closed the far side: nothing was left watched"
    )


class _FakeTunnel:
    """What the sweep sees of a tunnel: a byte counter, close(), and who watches it."""

    def __init__(self, clock: VirtualClock, name: int) -> None:
        self.clock = clock
        self.name = name
        self.moved = 0
        self.closed_at: float | None = None
        self.sweep: Any = None

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = self.clock.time()
        # As the real Tunnel does once both sides are gone: it stops being watched.
        self.sweep.discard(self)


@exercise("09-idle-sweep", "One timer to close every idle tunnel", kind="design", core=False)
def idle_sweep(answer: Answer) -> str:
    sweep_class = answer.function("IdleSweep")
    idle = 8.0
    clock = VirtualClock()
    sweep = sweep_class(clock, idle)
    if clock.pending:
        raise Wrong("the sweep scheduled a timer before any tunnel was added")
    rng = random.Random(9)
    tunnels = [_FakeTunnel(clock, n) for n in range(300)]
    busy = tunnels[:50]  # a byte at least every idle / 2: never closed
    last_byte: dict[int, float] = {}
    added: dict[int, float] = {}
    step = idle / 40
    peak_timers = 0
    for tick in range(int(12 * idle / step)):
        now = clock.time()
        for tunnel in tunnels:
            if tunnel.sweep is None and tick < 200 and rng.random() < 0.02:  # scattered times
                tunnel.sweep = sweep
                added[tunnel.name] = now
                last_byte[tunnel.name] = now
                sweep.add(tunnel)
            elif tunnel.sweep is not None and tunnel.closed_at is None:
                quiet = now - last_byte[tunnel.name]
                talks = tunnel in busy and quiet >= idle / 2
                if talks or (tick < 150 and tunnel not in busy and rng.random() < 0.01):
                    tunnel.moved += rng.randint(1, 4096)
                    last_byte[tunnel.name] = now
        clock.advance(step)
        peak_timers = max(peak_timers, clock.pending)
        if clock.pending > 1:
            raise Wrong(
                f"{clock.pending} timers were pending at once for {len(added)} tunnels",
                "one timer for the whole sweep, re-armed when it fires: no timer per tunnel",
            )
    for tunnel in busy:
        if tunnel.closed_at is not None:
            raise Wrong(
                f"a tunnel moving a byte every {idle / 2:g} s was closed (idle_timeout {idle:g} s)",
                "compare each tunnel's byte counter with the value seen at the previous sweep",
            )
    closed = 0
    for tunnel in tunnels[50:]:
        if tunnel.sweep is None:
            continue
        quiet_since = last_byte[tunnel.name]
        if tunnel.closed_at is None:
            raise Wrong(
                f"a tunnel idle since t={quiet_since - 1000:g} s was still open at "
                f"t={clock.time() - 1000:g} s (idle_timeout {idle:g} s)"
            )
        waited = tunnel.closed_at - quiet_since
        if waited < idle:
            raise Wrong(
                f"a tunnel was closed {waited:g} s after its last byte (or after it was "
                f"added), before idle_timeout ({idle:g} s)",
                "a tunnel added just before a sweep has not been idle for a whole period yet",
            )
        if waited > 1.5 * idle:
            raise Wrong(
                f"a tunnel was closed only {waited:g} s after its last byte: more than "
                f"1.5 x idle_timeout ({idle:g} s)",
                "sweep several times per idle_timeout and count the quiet sweeps in a row",
            )
        closed += 1
    for tunnel in busy:
        sweep.discard(tunnel)
    clock.advance(2 * idle)
    if clock.pending:
        raise Wrong(
            "no tunnel is watched any more, and a timer is still pending",
            "stop the timer when the last tunnel is discarded; start it again in add()",
        )
    return (
        f"{closed} idle tunnels closed between {idle:g} and {1.5 * idle:g} s after their last "
        f"byte, 50 busy ones kept, never more than {peak_timers} timer pending, none at the end"
    )

"""Tunnels over os.splice (and the recv/send fallback): bytes exact, bounded, nothing leaked.

Each test joins two loopback TCP connections with a :class:`~proxy.tunnel.Tunnel` driven by a
reactor in the test's thread; the far ends (a client and an origin) are blocking sockets used
from helper threads. Every wait is on an event or a predicate with a deadline.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from minireactor import Protocol, Reactor, Transport, splice
from minireactor.splice import PipePool
from proxy.tunnel import IdleSweep, Tunnel

needs_splice = pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice is Linux-only")
MODES = [pytest.param("splice", marks=needs_splice), "plain"]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection (port 0)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname(), timeout=20)
        far, _ = listener.accept()
    far.settimeout(20)
    return near, far


class Owner:
    """Records the tunnel's one report."""

    def __init__(self) -> None:
        self.closed: list[BaseException | None] = []

    def tunnel_closed(self, tunnel: Tunnel, exc: BaseException | None) -> None:
        self.closed.append(exc)


class Rig:
    """client <-> [proxy side | Tunnel | proxy side] <-> origin, on one reactor."""

    def __init__(self, reactor: Reactor, pool: PipePool | None, early_up: bytes = b"") -> None:
        self.reactor = reactor
        self.pool = pool
        self.client, client_side = tcp_pair()
        self.origin, origin_side = tcp_pair()
        self.client_t = Transport(reactor, client_side, Protocol())
        self.origin_t = Transport(reactor, origin_side, Protocol())
        self.owner = Owner()
        self.sweep = IdleSweep(reactor, 60.0)
        self.tunnel = Tunnel(
            self.client_t, self.origin_t, owner=self.owner, sweep=self.sweep, pipes=pool
        )
        self.tunnel.start(early_up)

    def run_until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        # Short ticks: the peers' threads change what the predicate reads without waking the
        # reactor's select.
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            self.reactor.run_once(timeout=0.02)
        return predicate()

    @property
    def finished(self) -> bool:
        return bool(self.owner.closed)

    def close_peers(self) -> None:
        self.client.close()
        self.origin.close()


@pytest.fixture(params=MODES)
def rig(request, reactor) -> Iterator[Callable[..., Rig]]:
    pools: list[PipePool] = []
    rigs: list[Rig] = []

    def make(early_up: bytes = b"", **pool_args: int) -> Rig:
        pool = PipePool(**pool_args) if request.param == "splice" else None
        if pool is not None:
            pools.append(pool)
        made = Rig(reactor, pool, early_up)
        rigs.append(made)
        return made

    yield make
    for made in rigs:
        made.close_peers()
        made.tunnel.abort()
        made.run_until(lambda m=made: m.finished, 5)
    for pool in pools:
        assert pool.in_use == 0, "every pipe went back to the pool"
        pool.close()


def background(target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def read_all(sock: socket.socket, into: bytearray, done: threading.Event, chunk: int) -> None:
    try:
        while data := sock.recv(chunk):
            into += data
    except OSError as exc:
        into += f"<{type(exc).__name__}>".encode()
    finally:
        done.set()


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the test closed or reset the connection on purpose


def payload(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 251 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


@pytest.mark.parametrize("pool_args", [{}, {"max_pipes": 1}], ids=["pool", "one-pipe"])
def test_bytes_cross_exactly_both_ways_at_once(rig, pool_args):
    r = rig(**pool_args)  # one pipe for two directions: chunks mix splice and recv/send
    up, down = payload(3 << 20, 1), payload(5 << 20, 7)
    got_up, got_down = bytearray(), bytearray()
    up_done, down_done = threading.Event(), threading.Event()
    background(read_all, r.origin, got_up, up_done, 65536)
    background(read_all, r.client, got_down, down_done, 65536)
    senders = [background(r.client.sendall, up), background(r.origin.sendall, down)]
    assert r.run_until(lambda: len(got_up) >= len(up) and len(got_down) >= len(down))
    for sender in senders:
        sender.join(10)
    assert bytes(got_up) == up and bytes(got_down) == down
    assert r.tunnel.bytes_up == len(up) and r.tunnel.bytes_down == len(down)
    if r.pool is not None and not pool_args:
        assert r.pool.created <= 4, "pipes are reused, not made per chunk"
        assert r.run_until(lambda: r.pool.in_use == 0)


def test_a_slow_reader_holds_the_proxy_to_a_bounded_amount(rig):
    r = rig()
    r.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    data = payload(32 << 20, 3)
    got, done = bytearray(), threading.Event()
    sender = background(r.origin.sendall, data)
    end = r.tunnel.upstream_end
    held = stalled = 0
    deadline = time.monotonic() + 30
    # The client reads nothing yet: the origin -> client direction must stall, not buffer.
    while time.monotonic() < deadline and stalled < 200:
        r.reactor.run_once(timeout=0.01)
        now = r.client_t.get_write_buffer_size() + end.pipe_pending
        held = max(held, now)
        stalled += 1 if (now and not r.origin_t.is_reading) else 0
    assert stalled, "the origin side stopped being read while the client did not read"
    reader = background(read_all, r.client, got, done, 4096)
    while not done.is_set() and len(got) < len(data) and time.monotonic() < deadline:
        r.reactor.run_once(timeout=0.01)
        held = max(held, r.client_t.get_write_buffer_size() + end.pipe_pending)
    reader.join(0)
    sender.join(10)
    assert bytes(got[: len(data)]) == data
    assert held <= r.client_t.high_water + 256 * 1024 + splice.PIPE_SIZE
    if r.pool is not None:
        assert r.pool.in_use <= 1


@pytest.mark.parametrize("first", ["client", "origin"])
def test_half_close_keeps_the_other_direction_flowing(rig, first):
    r = rig()
    closer, other = (r.client, r.origin) if first == "client" else (r.origin, r.client)
    closer.sendall(b"request")
    closer.shutdown(socket.SHUT_WR)
    got = bytearray()
    done = threading.Event()
    background(read_all, other, got, done, 4096)
    assert r.run_until(done.is_set), "the FIN crossed the tunnel"
    assert bytes(got) == b"request"
    reply = payload(2 << 20, 5)
    back, back_done = bytearray(), threading.Event()
    background(read_all, closer, back, back_done, 65536)
    background(lambda: (other.sendall(reply), other.shutdown(socket.SHUT_WR)))
    assert r.run_until(lambda: back_done.is_set() and r.finished)
    assert bytes(back) == reply
    assert r.owner.closed == [None]


def test_reset_mid_transfer_ends_both_sides(rig):
    r = rig()
    got, done = bytearray(), threading.Event()
    background(read_all, r.client, got, done, 65536)
    r.origin.sendall(payload(1 << 20, 9))
    r.origin.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    r.origin.close()  # RST
    assert r.run_until(lambda: done.is_set() and r.finished)
    assert len(r.owner.closed) == 1
    assert r.client_t.is_closing and r.origin_t.is_closing


def test_early_bytes_and_buffered_bytes_go_first(rig):
    early = payload(8 << 20, 11)  # more than the socket takes at once: the rest waits buffered
    r = rig(early_up=early)
    got, done = bytearray(), threading.Event()
    later = b"LATER" * 1000
    r.client.sendall(later)  # arrives while the early bytes are still queued in the transport
    background(read_all, r.origin, got, done, 65536)
    assert r.run_until(lambda: len(got) >= len(early) + len(later))
    assert bytes(got) == early + later


def test_closing_with_bytes_in_a_pipe_resets_instead_of_faking_an_end(reactor):
    if not splice.AVAILABLE:
        pytest.skip("os.splice is Linux-only")
    pool = PipePool()
    r = Rig(reactor, pool)
    r.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    background(send_quietly, r.origin, payload(32 << 20, 2))
    end = r.tunnel.upstream_end
    assert r.run_until(lambda: end.pipe_pending > 0), "the client's side is full"
    r.tunnel.close()
    assert r.run_until(lambda: r.finished)
    assert pool.in_use == 0
    r.client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        while r.client.recv(1 << 20):
            pass
    r.close_peers()
    pool.close()


@needs_splice
def test_a_socket_that_cannot_splice_is_relayed_the_plain_way(reactor, monkeypatch):
    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EINVAL, "splice not supported here")

    monkeypatch.setattr(os, "splice", refuse)
    pool = PipePool()
    r = Rig(reactor, pool)
    data, got = client_to_origin(r, payload(2 << 20, 8))
    assert bytes(got) == data
    assert pool.in_use == 0
    r.close_peers()
    assert r.run_until(lambda: r.finished)
    pool.close()


def client_to_origin(r: Rig, data: bytes) -> tuple[bytes, bytearray]:
    """Send *data* from the client through the tunnel, half-close, wait until it all arrived."""
    got, done = bytearray(), threading.Event()
    background(read_all, r.origin, got, done, 65536)
    r.client.sendall(data)
    r.client.shutdown(socket.SHUT_WR)
    assert r.run_until(done.is_set)
    return data, got


def fds() -> int:
    gc.collect()  # sockets of earlier tests closed by their finalisers must not count
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("mode", MODES)
def test_no_descriptor_leaks(mode):
    before = fds()
    reactor = Reactor()
    pool = PipePool() if mode == "splice" else None
    for _ in range(3):
        r = Rig(reactor, pool)
        data, got = client_to_origin(r, payload(1 << 20, 4))
        r.origin.close()
        assert r.run_until(lambda r=r: r.finished)
        r.client.close()
        assert bytes(got) == data
    if pool is not None:
        assert pool.in_use == 0 and pool.idle >= 1
        pool.close()
    reactor.close()
    assert fds() == before


def test_the_proxy_splices_connect_tunnels_and_returns_its_pipes(make_proxy):
    proxy = make_proxy()
    data = payload(4 << 20, 6)
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def origin() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(data)

        background(origin)
        port = listener.getsockname()[1]
        with proxy.connect() as sock:
            authority = f"origin.test:{port}"
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            got, done = bytearray(), threading.Event()
            read_all(sock, got, done, 65536)
    assert bytes(got).partition(b"\r\n\r\n")[2] == data
    pipes = proxy.server.pipes
    if not splice.AVAILABLE:
        assert pipes is None
        return
    assert proxy.call(lambda: (pipes.created > 0, pipes.in_use)) == (True, 0)


def test_splice_can_be_turned_off(make_proxy, monkeypatch):
    assert make_proxy(splice=False).server.pipes is None
    monkeypatch.setattr(splice, "AVAILABLE", False)
    assert make_proxy().server.pipes is None


def test_an_open_tunnel_sheds_its_http_state_and_still_logs_its_target(make_proxy):
    from proxy.session.client import SPENT_PARSER

    proxy = make_proxy()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with proxy.connect() as sock:
            authority = f"Origin.TEST:{port}"
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            conn, _ = listener.accept()
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")

            def held() -> list[tuple[object, ...]]:
                return [
                    (s.parser is SPENT_PARSER, s.target, s.request.method, s.request.target)
                    for s in proxy.server.sessions
                    if s.tunnel is not None
                ]

            assert proxy.call(held) == [(True, None, "CONNECT", f"origin.test:{port}")]
        conn.close()

    def logged() -> list[tuple[str, str, int]]:
        return [(r.method, r.url, r.status) for r in proxy.server.stats.recent]

    deadline = time.monotonic() + 10
    while not proxy.call(logged) and time.monotonic() < deadline:
        pass  # each call is a round trip through the reactor: the close gets its ticks
    assert proxy.call(logged) == [("CONNECT", f"origin.test:{port}", 200)]

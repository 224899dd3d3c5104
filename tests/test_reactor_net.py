"""Tests for minireactor.server, connect and resolver, on loopback only."""

import collections
import errno
import json
import os
import pathlib
import select
import socket
import subprocess
import sys
import textwrap

import pytest

from minireactor import (
    Handle,
    Protocol,
    Resolver,
    StaticResolver,
    Transport,
    connect,
    connect_host,
    listen,
    numeric_address,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture
def closing():
    """Register sockets, servers, resolvers... to be closed at teardown."""
    things = []
    try:
        yield things.append
    finally:
        for thing in reversed(things):
            thing.close()


def free_port():
    """A loopback port that was bound and closed: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def full_listener(closing):
    """A listener whose accept queue is full and never drained: a SYN to it gets no answer."""
    listener = socket.socket()
    closing(listener)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        closing(filler)
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    # The first filler completes its handshake and fills the queue; wait until it has.
    _, writable, _ = select.select([], fillers[:1], [], 5)
    assert writable
    return address


class SilentResolver:
    """A resolver that never answers (a DNS server that went quiet)."""

    def __init__(self):
        self.handles = []

    def resolve(self, host, port, callback):
        handle = Handle(callback, ())
        self.handles.append(handle)
        return handle


class Result:
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)

    @property
    def done(self):
        return bool(self.calls)


# -- listen / Server -------------------------------------------------------------------------------


def test_listen_accepts_and_serves(reactor, closing):
    accepted = []

    class Echo(Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data.upper())

    def on_accept(conn, addr):
        accepted.append((conn, addr))
        Transport(reactor, conn, Echo())

    server = listen(reactor, "127.0.0.1", 0, on_accept)
    closing(server)
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    client = socket.create_connection(server.address, timeout=5)
    closing(client)
    assert reactor.run_until(lambda: accepted, timeout=5)
    conn, addr = accepted[0]
    assert addr == client.getsockname()
    assert conn.getblocking() is False
    assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    client.setblocking(False)
    client.sendall(b"hello")
    got = bytearray()

    def received():
        try:
            got.extend(client.recv(100))
        except BlockingIOError:
            pass
        return got == b"HELLO"

    assert reactor.run_until(received, timeout=5)
    assert server.accepted == 1


@needs_ipv6
def test_listen_ipv6_loopback(reactor, closing):
    accepted = []
    server = listen(reactor, "::1", 0, lambda conn, addr: accepted.append(conn))
    closing(server)
    client = socket.create_connection(("::1", server.address[1]), timeout=5)
    closing(client)
    assert reactor.run_until(lambda: accepted, timeout=5)
    closing(accepted[0])
    assert accepted[0].family == socket.AF_INET6


def test_accepts_200_clients_in_bounded_batches(reactor, closing):
    batch = 16
    per_tick = collections.Counter()

    def on_accept(conn, addr):
        per_tick[reactor.ticks] += 1
        conn.close()

    server = listen(reactor, "127.0.0.1", 0, on_accept, backlog=1024, batch=batch)
    closing(server)
    n = 200
    for _ in range(n):
        closing(socket.create_connection(server.address, timeout=5))
    assert reactor.run_until(lambda: server.accepted == n, timeout=20)
    assert sum(per_tick.values()) == n
    assert max(per_tick.values()) <= batch
    assert len(per_tick) >= -(-n // batch)


def test_accept_batch_does_not_starve_other_descriptors(reactor, closing):
    a, b = socket.socketpair()
    closing(a)
    closing(b)
    seen = []
    server = listen(reactor, "127.0.0.1", 0, lambda conn, addr: conn.close(), batch=8)
    closing(server)
    for _ in range(100):
        closing(socket.create_connection(server.address, timeout=5))
    reactor.add_reader(a, lambda: seen.append((reactor.ticks, a.recv(10))))
    b.send(b"x")
    reactor.run_once(timeout=5)
    assert seen == [(1, b"x")]
    assert server.accepted <= 8
    reactor.remove_reader(a)


def test_accept_batch_trace_shows_one_fd_event_per_batch(reactor, closing):
    events = []
    counts = []
    server = listen(
        reactor, "127.0.0.1", 0, lambda conn, addr: counts.append(1) or conn.close(), batch=10
    )
    closing(server)
    listener_fd = server.sock.fileno()

    def trace(name, info):
        if name == "fd" and info["fd"] == listener_fd:
            events.append(len(counts))

    reactor.set_trace(trace)
    for _ in range(35):
        closing(socket.create_connection(server.address, timeout=5))
    assert reactor.run_until(lambda: server.accepted == 35, timeout=10)
    events.append(len(counts))
    # Between two readiness events of the listener, at most one batch was accepted.
    steps = [later - earlier for earlier, later in zip(events, events[1:], strict=False)]
    assert steps and max(steps) <= 10
    assert sum(steps) == 35


def test_pause_and_resume(reactor, closing):
    accepted = []
    server = listen(reactor, "127.0.0.1", 0, lambda conn, addr: accepted.append(conn))
    closing(server)
    baseline = reactor.registered_fds
    server.pause()
    server.pause()
    assert server.paused
    assert reactor.registered_fds == baseline - 1
    closing(socket.create_connection(server.address, timeout=5))
    reactor.run_until(lambda: False, timeout=0.2)
    assert accepted == []  # the client waits in the kernel's backlog
    server.resume()
    server.resume()
    assert not server.paused
    assert reactor.run_until(lambda: accepted, timeout=5)
    for conn in accepted:
        conn.close()


def test_pause_inside_on_accept_ends_the_batch(reactor, closing):
    accepted = []

    def on_accept(conn, addr):
        accepted.append(conn)
        closing(conn)
        server.pause()

    server = listen(reactor, "127.0.0.1", 0, on_accept, batch=64)
    closing(server)
    for _ in range(5):
        closing(socket.create_connection(server.address, timeout=5))
    assert reactor.run_until(lambda: accepted, timeout=5)
    reactor.run_until(lambda: False, timeout=0.1)
    assert len(accepted) == 1
    server.resume()  # each accept pauses again: one more per resume
    assert reactor.run_until(lambda: len(accepted) == 2, timeout=5)
    reactor.run_until(lambda: False, timeout=0.1)
    assert len(accepted) == 2


def test_server_close_unregisters_and_closes(reactor):
    baseline = reactor.registered_fds
    server = listen(reactor, "127.0.0.1", 0, lambda conn, addr: conn.close())
    assert reactor.registered_fds == baseline + 1
    address = server.address
    server.close()
    server.close()
    assert reactor.registered_fds == baseline
    assert server.sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError), socket.create_connection(address, timeout=5):
        pass


def test_on_accept_exception_is_logged_and_server_keeps_going(reactor, closing, caplog):
    accepted = []

    def on_accept(conn, addr):
        closing(conn)
        accepted.append(conn)
        if len(accepted) == 1:
            raise RuntimeError("accept handler failed")

    server = listen(reactor, "127.0.0.1", 0, on_accept)
    closing(server)
    closing(socket.create_connection(server.address, timeout=5))
    closing(socket.create_connection(server.address, timeout=5))
    assert reactor.run_until(lambda: len(accepted) == 2, timeout=5)
    assert any(
        r.exc_info and isinstance(r.exc_info[1], RuntimeError)
        for r in caplog.records
        if r.name == "minireactor"
    )


EMFILE_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, resource, socket, sys, time
    from minireactor import Reactor, listen

    logging.basicConfig(level=logging.WARNING)
    N = 40
    reactor = Reactor()
    held = []
    phase = {"hold": True}

    def on_accept(conn, addr):
        if phase["hold"]:
            held.append(conn)
        else:
            conn.close()

    server = listen(reactor, "127.0.0.1", 0, on_accept, backlog=128)
    clients = [socket.create_connection(server.address, timeout=5) for _ in range(N)]
    fds = [int(name) for name in os.listdir("/proc/self/fd")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for only a handful of new descriptors.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(fds) + 4, hard))

    hit = reactor.run_until(lambda: server.resource_errors > 0, timeout=10)
    accepted_at_limit = server.accepted

    ticks_before = reactor.ticks
    start = time.monotonic()
    reactor.run_until(lambda: False, timeout=1.0)
    window = time.monotonic() - start
    ticks = reactor.ticks - ticks_before
    still_registered = reactor.registered_fds

    phase["hold"] = False
    for conn in held:
        conn.close()
    held.clear()
    resumed = reactor.run_until(lambda: server.accepted == N, timeout=15)

    print(json.dumps({
        "hit": hit,
        "n": N,
        "accepted_at_limit": accepted_at_limit,
        "window": window,
        "ticks": ticks,
        "resource_errors": server.resource_errors,
        "resumed": resumed,
        "accepted": server.accepted,
        "registered_during_backoff": still_registered,
    }))
    """
)


def test_emfile_backs_off_without_busy_loop_and_resumes():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hit"], result
    assert result["accepted_at_limit"] < result["n"]
    # Backing off: a handful of retries per second, not a spin.
    assert result["ticks"] < 200 * max(1.0, result["window"]), result
    assert result["resource_errors"] < 100, result
    assert result["resumed"], result
    assert result["accepted"] == result["n"]
    # Logged once per episode, not once per failed accept.
    assert proc.stderr.count("pausing accepts") <= 2, proc.stderr


# -- connect ------------------------------------------------------------------------------------


def test_connect_success(reactor, closing):
    listener = socket.create_server(("127.0.0.1", 0))
    closing(listener)
    fds, timers = reactor.registered_fds, reactor.pending_timers
    result = Result()
    connect(reactor, [(socket.AF_INET, listener.getsockname())], result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    assert len(result.calls) == 1
    sock, exc = result.calls[0]
    closing(sock)
    assert exc is None
    assert sock.getpeername() == listener.getsockname()
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert reactor.registered_fds == fds
    assert reactor.pending_timers == timers


@needs_ipv6
def test_connect_success_ipv6(reactor, closing):
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    closing(listener)
    result = Result()
    connect(reactor, numeric_address("::1", listener.getsockname()[1]), result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    sock, exc = result.calls[0]
    closing(sock)
    assert exc is None
    assert sock.family == socket.AF_INET6


def test_connect_refused(reactor):
    fds, timers = reactor.registered_fds, reactor.pending_timers
    result = Result()
    connect(reactor, [(socket.AF_INET, ("127.0.0.1", free_port()))], result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    reactor.run_until(lambda: False, timeout=0.05)
    assert len(result.calls) == 1
    sock, exc = result.calls[0]
    assert sock is None
    assert isinstance(exc, ConnectionRefusedError)
    assert reactor.registered_fds == fds
    assert reactor.pending_timers == timers


def test_connect_falls_through_to_next_address(reactor, closing):
    listener = socket.create_server(("127.0.0.1", 0))
    closing(listener)
    addresses = [
        (socket.AF_INET, ("127.0.0.1", free_port())),
        (socket.AF_INET, listener.getsockname()),
    ]
    result = Result()
    connect(reactor, addresses, result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    sock, exc = result.calls[0]
    closing(sock)
    assert exc is None
    assert sock.getpeername() == listener.getsockname()


def test_connect_with_no_addresses_fails(reactor):
    result = Result()
    connect(reactor, [], result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    sock, exc = result.calls[0]
    assert sock is None
    assert isinstance(exc, ConnectionRefusedError)
    assert reactor.pending_timers == 0


def test_connect_deadline_raises_timeout(reactor, full_listener):
    fds, timers = reactor.registered_fds, reactor.pending_timers
    result = Result()
    start = reactor.time()
    connect(reactor, [(socket.AF_INET, full_listener)], result, timeout=0.3)
    assert reactor.registered_fds == fds + 1  # waiting for writability
    assert reactor.run_until(lambda: result.done, timeout=10)
    assert reactor.time() - start >= 0.3
    sock, exc = result.calls[0]
    assert sock is None
    assert isinstance(exc, TimeoutError)
    assert reactor.registered_fds == fds
    assert reactor.pending_timers == timers


def test_connect_host_deadline_covers_resolution(reactor):
    resolver = SilentResolver()
    result = Result()
    connect_host(reactor, resolver, "origin.test", 80, result, timeout=0.1)
    assert reactor.run_until(lambda: result.done, timeout=10)
    sock, exc = result.calls[0]
    assert sock is None
    assert isinstance(exc, TimeoutError)
    assert resolver.handles[0].cancelled  # the look-up was abandoned too
    assert reactor.pending_timers == 0
    assert reactor.registered_fds == 0


def test_connect_cancel_leaves_nothing_behind(reactor, full_listener):
    fds, timers = reactor.registered_fds, reactor.pending_timers
    result = Result()
    attempt = connect(reactor, [(socket.AF_INET, full_listener)], result, timeout=0.2)
    assert reactor.registered_fds == fds + 1
    assert reactor.pending_timers == timers + 1
    attempt.cancel()
    attempt.cancel()
    assert reactor.registered_fds == fds
    assert reactor.pending_timers == timers
    reactor.run_until(lambda: False, timeout=0.4)  # past the original deadline
    assert result.calls == []


def test_connect_host_cancel_before_resolution(reactor):
    resolver = StaticResolver(reactor, {"origin.test": "127.0.0.1"})
    result = Result()
    attempt = connect_host(reactor, resolver, "origin.test", free_port(), result, timeout=5)
    attempt.cancel()
    reactor.run_until(lambda: False, timeout=0.1)
    assert result.calls == []
    assert reactor.pending_timers == 0
    assert reactor.registered_fds == 0


def test_cancel_after_completion_is_harmless(reactor, closing):
    listener = socket.create_server(("127.0.0.1", 0))
    closing(listener)
    result = Result()
    attempt = connect(reactor, [(socket.AF_INET, listener.getsockname())], result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    sock, _ = result.calls[0]
    closing(sock)
    attempt.cancel()
    assert sock.fileno() != -1  # the delivered socket belongs to the caller now


def test_connect_host_static_resolver_success(reactor, closing):
    listener = socket.create_server(("127.0.0.1", 0))
    closing(listener)
    resolver = StaticResolver(reactor, {"Origin.Test": "127.0.0.1"})
    result = Result()
    port = listener.getsockname()[1]
    connect_host(reactor, resolver, "origin.test", port, result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    sock, exc = result.calls[0]
    closing(sock)
    assert exc is None
    assert sock.getpeername() == ("127.0.0.1", port)
    assert resolver.lookups == ["origin.test"]


def test_connect_host_static_resolver_failure_delivers_gaierror(reactor):
    resolver = StaticResolver(reactor, {})
    result = Result()
    connect_host(reactor, resolver, "nowhere.test", 80, result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    reactor.run_until(lambda: False, timeout=0.05)
    assert len(result.calls) == 1
    sock, exc = result.calls[0]
    assert sock is None
    assert isinstance(exc, socket.gaierror)
    assert reactor.pending_timers == 0
    assert reactor.registered_fds == 0


def test_connect_host_localhost_with_real_resolver(reactor, closing):
    listener = socket.create_server(("127.0.0.1", 0))
    closing(listener)
    resolver = Resolver(reactor, workers=1)
    closing(resolver)
    result = Result()
    port = listener.getsockname()[1]
    connect_host(reactor, resolver, "localhost", port, result, timeout=10)
    assert reactor.run_until(lambda: result.done, timeout=10)
    sock, exc = result.calls[0]
    closing(sock)
    assert exc is None
    assert sock.getpeername() == ("127.0.0.1", port)


def refuse_ipv6_sockets(monkeypatch):
    """Make socket creation fail for IPv6 as on a host with IPv6 disabled."""
    real = socket.socket

    def fake(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", fake)


def test_connect_falls_through_when_socket_creation_fails(reactor, closing, monkeypatch):
    listener = socket.create_server(("127.0.0.1", 0))
    closing(listener)
    port = listener.getsockname()[1]
    addresses = [(socket.AF_INET6, ("::1", port, 0, 0)), (socket.AF_INET, ("127.0.0.1", port))]
    result = Result()
    with monkeypatch.context() as m:
        refuse_ipv6_sockets(m)
        connect(reactor, addresses, result, timeout=5)
    assert reactor.run_until(lambda: result.done, timeout=5)
    sock, exc = result.calls[0]
    closing(sock)
    assert exc is None
    assert sock.getpeername() == ("127.0.0.1", port)


def test_connect_socket_creation_failure_reported_once(reactor, monkeypatch):
    result = Result()
    raised = []
    with monkeypatch.context() as m:
        refuse_ipv6_sockets(m)
        try:
            connect(reactor, [(socket.AF_INET6, ("::1", 9, 0, 0))], result, timeout=0.1)
        except OSError as exc:
            raised.append(exc)
    reactor.run_until(lambda: False, timeout=0.3)  # past the deadline
    reports = raised + [exc for _, exc in result.calls]
    assert len(reports) == 1
    assert reports[0].errno == errno.EAFNOSUPPORT
    assert reactor.pending_timers == 0


# -- resolver -----------------------------------------------------------------------------------


def test_numeric_address():
    assert numeric_address("127.0.0.1", 80) == [(socket.AF_INET, ("127.0.0.1", 80))]
    assert numeric_address("::1", 443) == [(socket.AF_INET6, ("::1", 443, 0, 0))]
    assert numeric_address("[::1]", 443) == [(socket.AF_INET6, ("::1", 443, 0, 0))]
    assert numeric_address("localhost", 80) is None
    assert numeric_address("example.test", 80) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", [(socket.AF_INET, ("127.0.0.1", 8080))]),
        ("::1", [(socket.AF_INET6, ("::1", 8080, 0, 0))]),
        ("[::1]", [(socket.AF_INET6, ("::1", 8080, 0, 0))]),
    ],
)
def test_resolver_numeric_without_pool(reactor, closing, monkeypatch, host, expected):
    resolver = Resolver(reactor, workers=1)
    closing(resolver)

    def no_pool(*args, **kwargs):
        raise AssertionError("numeric addresses must not use the thread pool")

    monkeypatch.setattr(resolver._pool, "submit", no_pool)
    result = Result()
    resolver.resolve(host, 8080, result)
    assert result.calls == []  # delivered on the loop, not inline
    reactor.run_once(timeout=0)
    assert result.calls == [(expected, None)]


def test_resolver_localhost(reactor, closing):
    resolver = Resolver(reactor, workers=2)
    closing(resolver)
    result = Result()
    resolver.resolve("localhost", 8080, result)
    assert reactor.run_until(lambda: result.done, timeout=10)
    addresses, error = result.calls[0]
    assert error is None
    assert addresses
    sockaddrs = {(family, sockaddr[:2]) for family, sockaddr in addresses}
    assert sockaddrs & {(socket.AF_INET, ("127.0.0.1", 8080)), (socket.AF_INET6, ("::1", 8080))}


def test_resolver_cancelled_lookup_never_calls_back(reactor, closing):
    resolver = Resolver(reactor, workers=1)
    closing(resolver)
    result = Result()
    handle = resolver.resolve("localhost", 80, result)
    handle.cancel()
    numeric = resolver.resolve("127.0.0.1", 80, result)
    numeric.cancel()
    resolver._pool.shutdown(wait=True)  # the look-up has finished and queued its answer
    reactor.run_once(timeout=1)
    reactor.run_once(timeout=0)
    assert result.calls == []


def test_static_resolver_table_and_failure(reactor):
    resolver = StaticResolver(reactor, {"Origin.Test": "127.0.0.1", "v6.test": "::1"})
    results = {}
    for host in ["origin.test", "ORIGIN.TEST.", "v6.test", "10.0.0.1", "missing.test"]:
        results[host] = Result()
        resolver.resolve(host, 81, results[host])
    assert not any(r.calls for r in results.values())
    reactor.run_once(timeout=0)
    assert results["origin.test"].calls == [([(socket.AF_INET, ("127.0.0.1", 81))], None)]
    assert results["ORIGIN.TEST."].calls == [([(socket.AF_INET, ("127.0.0.1", 81))], None)]
    assert results["v6.test"].calls == [([(socket.AF_INET6, ("::1", 81, 0, 0))], None)]
    assert results["10.0.0.1"].calls == [([(socket.AF_INET, ("10.0.0.1", 81))], None)]
    addresses, error = results["missing.test"].calls[0]
    assert addresses is None
    assert isinstance(error, socket.gaierror)
    assert error.errno == socket.EAI_NONAME
    assert resolver.lookups == list(results)

"""Tests for minireactor.transport over socket pairs: data, backpressure, half-close, endings."""

import logging
import socket
import struct

import pytest

from minireactor import Protocol, Transport

MiB = 1024 * 1024


@pytest.fixture
def sockets():
    """Factory for connected pairs; every socket is closed at teardown."""
    made = []

    def unix_pair():
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    def tcp_pair():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname(), timeout=5)
            made.append(client)
            server, _ = listener.accept()
            made.append(server)
        return server, client

    try:
        yield unix_pair, tcp_pair
    finally:
        for s in made:
            s.close()


class Recorder(Protocol):
    """Records every callback; optional behaviour is injected by tests."""

    def __init__(self, keep_open=False):
        self.keep_open = keep_open
        self.transport = None
        self.events = []
        self.data = bytearray()
        self.lost = []
        self.pauses = []
        self.resumes = []

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.data += data
        self.events.append("data")

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open

    def connection_lost(self, exc):
        self.lost.append(exc)
        self.events.append("lost")

    def pause_writing(self):
        self.pauses.append(self.transport.get_write_buffer_size())

    def resume_writing(self):
        self.resumes.append(self.transport.get_write_buffer_size())


class Peer:
    """The far end, read on the same reactor once started."""

    def __init__(self, reactor, sock):
        self.reactor = reactor
        self.sock = sock
        sock.setblocking(False)
        self.data = bytearray()
        self.eof = False
        self.error = None

    def start(self):
        self.reactor.add_reader(self.sock, self._read)

    def stop(self):
        self.reactor.remove_reader(self.sock)

    @property
    def done(self):
        return self.eof or self.error is not None

    def _read(self):
        try:
            chunk = self.sock.recv(MiB)
        except BlockingIOError:
            return
        except OSError as exc:
            self.error = exc
            self.stop()
            return
        if not chunk:
            self.eof = True
            self.stop()
            return
        self.data += chunk


def make(reactor, sock, proto=None, **kw):
    proto = proto or Recorder()
    transport = Transport(reactor, sock, proto, **kw)
    assert reactor.run_until(lambda: proto.transport is not None, timeout=5)
    return transport, proto


def settle(reactor, seconds=0.1):
    """Run the loop for a while to show that something does NOT happen."""
    reactor.run_until(lambda: False, timeout=seconds)


def assert_lost_once(reactor, proto):
    assert reactor.run_until(lambda: proto.lost, timeout=5)
    settle(reactor, 0.05)
    assert len(proto.lost) == 1
    assert proto.events.count("lost") == 1
    return proto.lost[0]


# -- reading -----------------------------------------------------------------------------------


def test_connection_made_then_data_received(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    proto = Recorder()
    transport = Transport(reactor, a, proto)
    assert proto.events == []  # connection_made is scheduled, not called inline
    assert reactor.run_until(lambda: proto.transport is transport, timeout=5)
    assert transport.is_reading
    b.sendall(b"hello ")
    b.sendall(b"world")
    assert reactor.run_until(lambda: proto.data == b"hello world", timeout=5)
    assert proto.events[0] == "made"
    assert not proto.lost
    transport.close()


def test_get_extra_info(reactor, sockets):
    _, tcp_pair = sockets
    server, client = tcp_pair()
    transport, _ = make(reactor, server)
    assert transport.get_extra_info("socket") is server
    assert transport.get_extra_info("peername") == client.getsockname()
    assert transport.get_extra_info("sockname") == client.getpeername()
    assert transport.get_extra_info("nope", "default") == "default"
    transport.close()


def test_pause_reading_and_resume_reading(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    baseline = reactor.registered_fds
    transport, proto = make(reactor, a)
    assert reactor.registered_fds == baseline + 1
    transport.pause_reading()
    transport.pause_reading()  # idempotent
    assert not transport.is_reading
    assert reactor.registered_fds == baseline
    b.sendall(b"waiting")
    settle(reactor)
    assert proto.data == b""
    transport.resume_reading()
    transport.resume_reading()
    assert transport.is_reading
    assert reactor.run_until(lambda: proto.data == b"waiting", timeout=5)
    transport.close()


def test_pause_reading_inside_data_received_stops_delivery(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()

    class PauseAfterFirst(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

    transport, proto = make(reactor, a, PauseAfterFirst())
    b.sendall(b"one")
    assert reactor.run_until(lambda: proto.data, timeout=5)
    b.sendall(b"two")
    settle(reactor)
    assert proto.data == b"one"
    transport.resume_reading()
    assert reactor.run_until(lambda: proto.data == b"onetwo", timeout=5)
    transport.close()


def test_set_protocol_switches_receiver(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, first = make(reactor, a)
    b.sendall(b"1")
    assert reactor.run_until(lambda: first.data == b"1", timeout=5)
    second = Recorder()
    transport.set_protocol(second)
    b.sendall(b"2")
    assert reactor.run_until(lambda: second.data == b"2", timeout=5)
    assert first.data == b"1"
    transport.close()
    assert reactor.run_until(lambda: second.lost, timeout=5)
    assert first.lost == []


# -- writing and backpressure ------------------------------------------------------------------


def test_write_reaches_peer(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, _ = make(reactor, a)
    peer = Peer(reactor, b)
    peer.start()
    transport.write(b"abc")
    transport.write(bytearray(b"def"))
    transport.write(memoryview(b"ghi"))
    transport.write(b"")  # no-op
    assert reactor.run_until(lambda: peer.data == b"abcdefghi", timeout=5)
    assert transport.get_write_buffer_size() == 0
    transport.close()


def test_backpressure_pause_once_resume_once(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    high, low = 64 * 1024, 16 * 1024
    transport, proto = make(reactor, a, high_water=high, low_water=low)
    peer = Peer(reactor, b)  # not reading yet

    chunk = b"x" * (32 * 1024)
    sizes = []
    for _ in range(64):  # 2 MiB, far beyond what the kernel buffers
        transport.write(chunk)
        sizes.append(transport.get_write_buffer_size())
    # The buffer grows while the peer does not read.
    assert sizes == sorted(sizes)
    assert transport.get_write_buffer_size() > high
    assert len(proto.pauses) == 1
    assert proto.pauses[0] > high
    assert proto.resumes == []

    settle(reactor)  # nothing drains while the peer sleeps
    assert len(proto.pauses) == 1 and proto.resumes == []

    peer.start()
    assert reactor.run_until(lambda: len(peer.data) == 64 * len(chunk), timeout=10)
    assert reactor.run_until(lambda: transport.get_write_buffer_size() == 0, timeout=5)
    assert len(proto.pauses) == 1
    assert len(proto.resumes) == 1
    assert proto.resumes[0] <= low
    assert peer.data == chunk * 64
    transport.close()


def test_backpressure_hysteresis_second_cycle(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a, high_water=32 * 1024)
    assert transport.low_water == 8 * 1024  # default: a quarter of high water
    peer = Peer(reactor, b)
    total = 0
    for cycle in (1, 2):
        peer.stop()
        while len(proto.pauses) < cycle:
            transport.write(b"y" * 16384)
            total += 16384
        peer.start()
        assert reactor.run_until(lambda c=cycle: len(proto.resumes) == c, timeout=10)
    assert reactor.run_until(lambda: len(peer.data) == total, timeout=10)
    assert len(proto.pauses) == 2 and len(proto.resumes) == 2
    transport.close()


def test_no_pause_below_high_water(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a, high_water=10 * MiB)
    for _ in range(16):
        transport.write(b"z" * 65536)
    assert transport.get_write_buffer_size() > 0
    assert proto.pauses == []
    peer = Peer(reactor, b)
    peer.start()
    assert reactor.run_until(lambda: len(peer.data) == MiB, timeout=10)
    assert proto.resumes == []
    transport.close()


# -- half-close ---------------------------------------------------------------------------------


def test_write_eof_peer_sees_eof_while_transport_still_receives(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a)
    peer = Peer(reactor, b)
    peer.start()
    transport.write(b"request")
    transport.write_eof()
    transport.write_eof()  # idempotent
    assert reactor.run_until(lambda: peer.eof, timeout=5)
    assert peer.data == b"request"
    transport.write(b"ignored after write_eof")
    assert not transport.is_closing
    # The other direction still works.
    b.sendall(b"reply")
    assert reactor.run_until(lambda: proto.data == b"reply", timeout=5)
    assert not proto.lost
    # The peer closes too: eof_received returns False, so the transport closes.
    b.shutdown(socket.SHUT_WR)
    assert assert_lost_once(reactor, proto) is None
    assert proto.events[-2:] == ["eof", "lost"]
    assert peer.data == b"request"


def test_write_eof_waits_for_buffer_to_flush(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, _ = make(reactor, a)
    payload = bytes(range(256)) * 8192  # 2 MiB
    transport.write(payload)
    assert transport.get_write_buffer_size() > 0
    transport.write_eof()
    transport.write(b"dropped")
    peer = Peer(reactor, b)
    peer.start()
    assert reactor.run_until(lambda: peer.eof, timeout=10)
    assert peer.data == payload
    transport.close()


def test_eof_received_true_keeps_connection_open(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a, Recorder(keep_open=True))
    peer = Peer(reactor, b)
    b.sendall(b"last words")
    b.shutdown(socket.SHUT_WR)
    assert reactor.run_until(lambda: "eof" in proto.events, timeout=5)
    settle(reactor, 0.05)
    assert proto.data == b"last words"
    assert not transport.is_closing
    assert not transport.is_reading
    assert proto.lost == []
    peer.start()
    transport.write(b"late answer")
    assert reactor.run_until(lambda: peer.data == b"late answer", timeout=5)
    transport.close()
    assert assert_lost_once(reactor, proto) is None
    assert reactor.run_until(lambda: peer.eof, timeout=5)


def test_eof_received_false_closes(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a)
    b.shutdown(socket.SHUT_WR)
    assert assert_lost_once(reactor, proto) is None
    assert transport.is_closing
    assert proto.events == ["made", "eof", "lost"]
    assert b.recv(10) == b""


# -- close and abort ---------------------------------------------------------------------------


def test_close_flushes_buffer_before_closing(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    baseline = reactor.registered_fds
    transport, proto = make(reactor, a)
    payload = bytes(range(256)) * 8192  # 2 MiB
    transport.write(payload)
    assert transport.get_write_buffer_size() > 0
    transport.close()
    assert transport.is_closing
    transport.write(b"after close")  # ignored
    settle(reactor, 0.05)
    assert proto.lost == []  # still flushing to a peer that does not read
    peer = Peer(reactor, b)
    peer.start()
    assert reactor.run_until(lambda: peer.eof, timeout=10)
    assert peer.data == payload
    assert assert_lost_once(reactor, proto) is None
    assert a.fileno() == -1
    assert reactor.registered_fds == baseline


def test_close_with_empty_buffer_is_immediate_and_idempotent(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a)
    transport.close()
    transport.close()
    transport.abort()
    assert a.fileno() == -1
    assert proto.lost == []  # connection_lost is scheduled, never run inline
    assert assert_lost_once(reactor, proto) is None
    assert b.recv(10) == b""


def test_abort_drops_buffer_peer_sees_eof(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a)
    transport.write(b"q" * (4 * MiB))
    assert transport.get_write_buffer_size() > 0
    transport.abort()
    assert transport.get_write_buffer_size() == 0
    assert transport.is_closing
    assert assert_lost_once(reactor, proto) is None
    peer = Peer(reactor, b)
    peer.start()
    assert reactor.run_until(lambda: peer.done, timeout=5)
    assert len(peer.data) < 4 * MiB


def test_abort_with_exception_resets_tcp_peer(reactor, sockets):
    _, tcp_pair = sockets
    server, client = tcp_pair()
    transport, proto = make(reactor, server)
    transport.write(b"r" * (4 * MiB))
    assert transport.get_write_buffer_size() > 0
    error = RuntimeError("give up")
    transport.abort(error)
    transport.abort(error)
    assert assert_lost_once(reactor, proto) is error
    peer = Peer(reactor, client)
    peer.start()
    assert reactor.run_until(lambda: peer.done, timeout=5)
    assert len(peer.data) < 4 * MiB
    # SO_LINGER 0 sends a reset rather than a FIN.
    assert isinstance(peer.error, ConnectionResetError)


def test_peer_reset_reports_error_once(reactor, sockets):
    _, tcp_pair = sockets
    server, client = tcp_pair()
    _, proto = make(reactor, server)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    exc = assert_lost_once(reactor, proto)
    assert isinstance(exc, ConnectionResetError)


def test_write_to_closed_peer_reports_error_once(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a)
    b.close()
    transport.write(b"into the void")
    exc = assert_lost_once(reactor, proto)
    assert isinstance(exc, BrokenPipeError)


def test_peer_close_while_writing_buffered_reports_lost_once(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    transport, proto = make(reactor, a)
    transport.write(b"w" * (2 * MiB))
    assert transport.get_write_buffer_size() > 0
    b.close()
    exc = assert_lost_once(reactor, proto)
    # Either the read side saw EOF (clean close) or the write side saw the broken pipe.
    assert exc is None or isinstance(exc, BrokenPipeError | ConnectionResetError)


def test_abort_before_connection_made_still_loses_once(reactor, sockets):
    unix_pair, _ = sockets
    a, _ = unix_pair()
    proto = Recorder()
    transport = Transport(reactor, a, proto)
    transport.abort()
    assert assert_lost_once(reactor, proto) is None
    assert "made" not in proto.events


# -- faults stay local -------------------------------------------------------------------------


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


def test_raising_data_received_aborts_only_that_connection(reactor, sockets, caplog):
    unix_pair, _ = sockets
    bad_sock, bad_peer_sock = unix_pair()
    good_sock, good_peer_sock = unix_pair()

    class Faulty(Recorder):
        def data_received(self, data):
            raise ValueError("protocol bug")

    _, bad = make(reactor, bad_sock, Faulty())
    good_transport, good = make(reactor, good_sock, Echo())
    bad_peer = Peer(reactor, bad_peer_sock)
    good_peer = Peer(reactor, good_peer_sock)
    bad_peer.start()
    good_peer.start()

    with caplog.at_level(logging.ERROR, logger="minireactor"):
        bad_peer_sock.sendall(b"trigger")
        good_peer_sock.sendall(b"ping")
        assert reactor.run_until(lambda: bad_peer.done and good_peer.data == b"ping", timeout=5)
    exc = assert_lost_once(reactor, bad)
    assert isinstance(exc, ValueError)
    logged = [r for r in caplog.records if r.name == "minireactor.transport"]
    assert logged and "data_received" in logged[0].getMessage()
    assert isinstance(logged[0].exc_info[1], ValueError)

    # The other connection keeps working on the same loop.
    good_peer_sock.sendall(b"still here")
    assert reactor.run_until(lambda: good_peer.data == b"pingstill here", timeout=5)
    assert good.lost == []
    good_transport.close()
    assert assert_lost_once(reactor, good) is None


def test_raising_connection_made_aborts(reactor, sockets, caplog):
    unix_pair, _ = sockets
    a, b = unix_pair()

    class Faulty(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            raise RuntimeError("bad start")

    proto = Faulty()
    Transport(reactor, a, proto)
    with caplog.at_level(logging.ERROR, logger="minireactor"):
        exc = assert_lost_once(reactor, proto)
    assert isinstance(exc, RuntimeError)
    b.setblocking(False)
    assert b.recv(10) == b""


def test_raising_pause_writing_aborts(reactor, sockets, caplog):
    unix_pair, _ = sockets
    a, _ = unix_pair()

    class Faulty(Recorder):
        def pause_writing(self):
            raise RuntimeError("cannot pause")

    transport, proto = make(reactor, a, Faulty(), high_water=1024)
    with caplog.at_level(logging.ERROR, logger="minireactor"):
        transport.write(b"p" * (2 * MiB))
        exc = assert_lost_once(reactor, proto)
    assert isinstance(exc, RuntimeError)
    assert transport.get_write_buffer_size() == 0


def test_raising_connection_lost_is_logged_not_repeated(reactor, sockets, caplog):
    unix_pair, _ = sockets
    a, _ = unix_pair()

    class Faulty(Recorder):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise RuntimeError("cleanup failed")

    transport, proto = make(reactor, a, Faulty())
    with caplog.at_level(logging.ERROR, logger="minireactor"):
        transport.close()
        assert assert_lost_once(reactor, proto) is None
    assert any("connection_lost" in r.getMessage() for r in caplog.records)


# -- bug reproductions -------------------------------------------------------------------------


class Producer(Recorder):
    """Writes *total* bytes in chunks, refilling from resume_writing, then ends with *finish*.

    With ``low_water=0`` resume_writing fires exactly when the buffer has drained to empty, and a
    512 KiB chunk is larger than a socket pair's kernel buffer, so the last write always leaves
    bytes queued in the transport when *finish* is called: the reproduction is deterministic.
    """

    CHUNK = 512 * 1024

    def __init__(self, total, finish):
        super().__init__()
        self.total = total
        self.finish = finish
        self.sent = 0
        self.paused = False
        self.finished = False

    def connection_made(self, transport):
        super().connection_made(transport)
        self.produce()

    def pause_writing(self):
        super().pause_writing()
        self.paused = True

    def resume_writing(self):
        super().resume_writing()
        self.paused = False
        self.produce()

    def produce(self):
        while self.sent < self.total and not self.paused:
            self.transport.write(b"x" * self.CHUNK)
            self.sent += self.CHUNK
        if self.sent >= self.total and not self.finished:
            # The last chunk is queued: end the stream; the transport must flush it first.
            self.finished = True
            getattr(self.transport, self.finish)()


def test_close_from_resume_writing_flushes_everything(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    total = 4 * MiB
    proto = Producer(total, "close")
    Transport(reactor, a, proto, high_water=64 * 1024, low_water=0)
    peer = Peer(reactor, b)
    peer.start()
    assert reactor.run_until(lambda: peer.done and proto.lost, timeout=10)
    assert proto.lost == [None]
    assert len(peer.data) == total


def test_write_eof_from_resume_writing_flushes_everything(reactor, sockets):
    unix_pair, _ = sockets
    a, b = unix_pair()
    total = 4 * MiB
    proto = Producer(total, "write_eof")
    Transport(reactor, a, proto, high_water=64 * 1024, low_water=0)
    peer = Peer(reactor, b)
    peer.start()
    assert reactor.run_until(lambda: peer.done, timeout=10)
    assert peer.eof
    assert len(peer.data) == total
    settle(reactor, 0.05)
    assert proto.lost == []

"""Corked writes: held by reference, sent by one sendmsg, in order, counted for backpressure."""

import socket

import pytest

from minireactor import Protocol, Transport

MiB = 1024 * 1024


class Recorder(Protocol):
    def __init__(self):
        self.transport = None
        self.pauses = []
        self.resumes = []

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.pauses.append(self.transport.get_write_buffer_size())

    def resume_writing(self):
        self.resumes.append(self.transport.get_write_buffer_size())


@pytest.fixture
def pair(reactor):
    a, b = socket.socketpair()
    b.setblocking(False)
    proto = Recorder()
    transport = Transport(reactor, a, proto)
    assert reactor.run_until(lambda: proto.transport is not None, timeout=5)
    received = bytearray()

    def read():
        try:
            chunk = b.recv(MiB)
        except BlockingIOError:
            return
        received.extend(chunk)

    reactor.add_reader(b, read)
    try:
        yield transport, proto, received, b, read
    finally:
        reactor.remove_reader(b)
        transport.abort()
        b.close()


def test_corked_pieces_leave_together_in_order(reactor, pair):
    transport, _, received, _, _ = pair
    transport.cork()
    for piece in (b"head ", memoryview(b"xbodyx")[1:5], bytearray(b" end")):
        transport.write(piece)
    # Held, not sent, and counted as buffered meanwhile.
    assert transport.get_write_buffer_size() == 13
    reactor.run_until(lambda: received, timeout=0.05)
    assert received == b""
    transport.uncork()
    assert transport.get_write_buffer_size() == 0
    assert reactor.run_until(lambda: received == b"head body end", timeout=5)


def test_held_pieces_wait_behind_bytes_already_buffered(reactor, pair):
    transport, _, received, reader, read = pair
    reactor.remove_reader(reader)  # nobody reads: the first write cannot leave whole
    first = b"a" * (4 * MiB)
    transport.write(first)
    assert transport.get_write_buffer_size() > 0
    transport.cork()
    transport.write(b"second")
    transport.uncork()
    reactor.add_reader(reader, read)
    assert reactor.run_until(lambda: len(received) == len(first) + 6, timeout=10)
    assert received.endswith(b"asecond")


def test_writes_held_while_corked_count_towards_the_high_water_mark(reactor, pair):
    transport, proto, received, reader, read = pair
    reactor.remove_reader(reader)
    transport.cork()
    transport.write(b"x" * (transport.high_water + 1))
    assert proto.pauses == [transport.high_water + 1]
    transport.uncork()  # the kernel takes part; the rest is buffered, still above the mark
    reactor.add_reader(reader, read)
    assert reactor.run_until(lambda: proto.resumes, timeout=10)
    assert reactor.run_until(lambda: len(received) == transport.high_water + 1, timeout=10)


def test_more_pieces_than_one_sendmsg_takes(reactor, pair):
    transport, _, received, _, _ = pair
    transport.cork()
    for i in range(3000):
        transport.write(b"%d," % i)
    transport.uncork()
    expected = b"".join(b"%d," % i for i in range(3000))
    assert reactor.run_until(lambda: received == expected, timeout=5)


def test_close_while_corked_sends_what_was_held(reactor, pair):
    transport, _, received, _, _ = pair
    transport.cork()
    transport.write(b"last words")
    transport.close()
    assert reactor.run_until(lambda: received == b"last words", timeout=5)


def test_abort_while_corked_drops_what_was_held(reactor, pair):
    transport, _, received, _, _ = pair
    transport.cork()
    transport.write(b"never")
    transport.abort()
    assert transport.get_write_buffer_size() == 0
    reactor.run_until(lambda: received, timeout=0.05)
    assert received == b""

"""Checkers for rung 5, transports and backpressure.

Theory of operation
-------------------
Backpressure is judged by what a transport holds: the checks sample
``get_write_buffer_size()`` while a fast producer feeds a slow consumer (a socket with small
kernel buffers, read 32 KiB every 2 ms by a timer, as in the notebook) and compare the peak with
the high-water mark. A producer that ignores ``pause_writing()`` piles megabytes up; one that
respects it stays within a chunk (or a read) of the mark. :class:`WatchedTransport` also notes,
for each ``write()``, the tick and whether the transport was paused or closing, which shows a
producer writing while paused, writing twice per tick (two chains of ``call_soon`` after a
resume), or writing on after the connection was lost.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

from minireactor import Protocol, Reactor, Transport, listen
from minireactor.transport import READ_SIZE

from .checks import Answer, Wrong, exercise
from .harness import HOST, Background, loop_errors

KiB = 1024
CHUNK = 64 * KiB
KERNEL_BUFFER = 64 * KiB


class _FlowLog(Protocol):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


def _corked_pauses() -> tuple[int | None, int]:
    """The question's six corked 16 KiB writes: (first write that paused, pause calls)."""
    reactor = Reactor()
    ours, theirs = socket.socketpair()
    flow = _FlowLog()
    transport = Transport(reactor, ours, flow, high_water=64 * KiB, low_water=16 * KiB)
    first: int | None = None
    try:
        transport.cork()
        for write in range(1, 7):
            transport.write(b"x" * (16 * KiB))
            if first is None and flow.calls:
                first = write
    finally:
        transport.abort()
        reactor.run_once(timeout=0)
        theirs.close()
        reactor.close()
    return first, flow.calls.count("pause")


@exercise("05-predict-pause", "Predict when a corked transport pauses its producer", kind="predict")
def predict_pause(answer: Answer) -> str:
    first = answer.number("predicted_first_pause")
    calls = answer.number("predicted_pause_calls")
    real_first, real_calls = _corked_pauses()
    if first != real_first:
        raise Wrong(
            f"pause_writing() does not come right after write {first:g}",
            "held bytes count towards the mark, and the test is `buffered > high_water`: "
            "strictly above",
        )
    if calls != real_calls:
        raise Wrong(
            f"pause_writing() is not called {calls:g} time(s)",
            "once paused, the transport does not say it again until it has resumed",
        )
    return (
        f"write {real_first} took the held bytes to {real_first * 16} KiB, above 64 KiB; "
        "pause_writing() came once: a paused producer is told nothing more until it resumes"
    )


class WatchedTransport(Transport):
    """A transport that notes, per write(), (tick, paused, closing, paused after) and the peak."""

    def __init__(
        self, reactor: Reactor, sock: socket.socket, protocol: Protocol, **marks: Any
    ) -> None:
        self.writes: list[tuple[int, bool, bool, bool]] = []
        self.peak = 0
        super().__init__(reactor, sock, protocol, **marks)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        before = (self.reactor.ticks, self._writing_paused, self.is_closing)
        super().write(data)
        self.writes.append((*before, self._writing_paused))
        self.peak = max(self.peak, self.get_write_buffer_size())


class _SlowReader:
    """A client socket read by a reactor timer: at most *size* bytes every *period* seconds."""

    def __init__(self, reactor: Reactor, address: Any, stop_after: int | None = None) -> None:
        self.reactor = reactor
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
        self.sock.connect(address)
        self.sock.setblocking(False)
        self.received = bytearray()
        self.eof = False
        self.stop_after = stop_after
        self.timer = reactor.call_later(0.002, self.read)

    def read(self) -> None:
        try:
            data = self.sock.recv(32 * KiB)
        except BlockingIOError:
            data = None
        except ConnectionError:
            data = b""
        if data == b"":
            self.eof = True
            return
        if data:
            self.received += data
        if self.stop_after is not None and len(self.received) >= self.stop_after:
            self.eof = True  # we leave, with data still unread: the peer sees a reset
            self.sock.close()
            return
        self.timer = self.reactor.call_later(0.002, self.read)

    def close(self) -> None:
        self.timer.cancel()
        self.sock.close()


def _chunks(count: int) -> list[bytes]:
    return [bytes([index % 256]) * CHUNK for index in range(count)]


def _serve_producer(
    reactor: Reactor, make: Callable[[], Protocol], transports: list[WatchedTransport]
) -> Any:
    def on_accept(sock: socket.socket, _address: Any) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
        transports.append(
            WatchedTransport(reactor, sock, make(), high_water=256 * KiB, low_water=64 * KiB)
        )

    return listen(reactor, HOST, 0, on_accept)


@exercise("05-producer", "A producer that respects pause_writing()", kind="implement")
def producer(answer: Answer) -> str:
    producer_class = answer.function("ChunkProducer")
    reactor = Reactor()
    try:
        with loop_errors():
            chunks = _chunks(64)  # 4 MiB
            transports: list[WatchedTransport] = []
            server = _serve_producer(
                reactor, lambda: producer_class(reactor, iter(chunks)), transports
            )
            reader = _SlowReader(reactor, server.address)
            try:
                reactor.run_until(lambda: reader.eof, timeout=10.0)
            finally:
                reader.close()
                server.close()
            if not transports:
                raise Wrong("no connection was accepted")
            transport = transports[0]
            expected = b"".join(chunks)
            if not reader.eof:
                raise Wrong(
                    f"the download did not end: {len(reader.received) // KiB} KiB of 4096 KiB "
                    "arrived in 10 s",
                    "close the transport once the chunks run out; after a pause, "
                    "resume_writing() must start producing again",
                )
            if bytes(reader.received) != expected:
                raise Wrong(
                    f"{len(reader.received) // KiB} KiB arrived instead of the 4096 KiB sent, "
                    "or not in order"
                )
            paused_writes = sum(1 for _, paused, _, _ in transport.writes if paused)
            if paused_writes or transport.peak > 256 * KiB + CHUNK:
                raise Wrong(
                    f"the transport held up to {transport.peak // KiB} KiB; "
                    f"{paused_writes} chunk(s) were written while it was paused",
                    "stop at pause_writing(), and produce again only at resume_writing()",
                )
            ticks = [tick for tick, _, _, _ in transport.writes]
            if len(set(ticks)) != len(ticks):
                raise Wrong(
                    "some ticks ran two writes: after a resume, two chains of produce() run",
                    "one chunk per tick: after resume_writing() schedule produce() only if it "
                    "is not already scheduled",
                )
            pauses = sum(1 for _, before, _, after in transport.writes if after and not before)
            peak = transport.peak

            # The consumer leaves after 256 KiB: the producer must stop, quietly.
            transports.clear()
            server = _serve_producer(
                reactor, lambda: producer_class(reactor, iter(_chunks(64))), transports
            )
            leaver = _SlowReader(reactor, server.address, stop_after=256 * KiB)
            try:
                reactor.run_until(lambda: leaver.eof, timeout=10.0)
                reactor.run_until(lambda: bool(transports) and transports[0].is_closing, 5.0)
                reactor.run_until(lambda: False, timeout=0.1)
            finally:
                leaver.close()
                server.close()
            late = sum(1 for _, _, closing, _ in transports[0].writes if closing)
            if late:
                raise Wrong(
                    f"{late} chunk(s) were written after the connection was lost",
                    "stop producing at connection_lost() (or when transport.is_closing)",
                )
            if reactor._ready:
                raise Wrong(
                    "callbacks are still being scheduled after the connection was lost",
                    "a producer whose connection is gone must not reschedule itself",
                )
    finally:
        reactor.close()
    return (
        f"4 MiB arrived in order; the buffer peaked at {peak // KiB} KiB (high water 256 KiB) "
        f"over {pauses} pauses, one chunk per tick, and nothing was written once the reader left"
    )


PIPE_HIGH = 128 * KiB
PIPE_PAYLOAD = bytes(range(256)) * (16 * KiB)  # 4 MiB


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
        listener.bind((HOST, 0))
        listener.listen(1)
        outside = socket.create_connection(listener.getsockname(), timeout=10)
        inside, _ = listener.accept()
    return outside, inside


def _feed(sock: socket.socket) -> None:
    sock.sendall(PIPE_PAYLOAD)
    sock.shutdown(socket.SHUT_WR)


@exercise("05-pipe", "Backpressure across two connections", kind="design", core=False)
def pipe(answer: Answer) -> str:
    make_pipe = answer.function("pipe")
    reactor = Reactor()
    feeder, source = _tcp_pair()
    drain, sink = _tcp_pair()
    drain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
    sender = Background(_feed, feeder, name="checker-feeder")
    try:
        with loop_errors():
            made = make_pipe(reactor, source, sink, PIPE_HIGH)
            if not (isinstance(made, tuple) and len(made) == 2):
                raise Wrong("pipe() should return (source_transport, sink_transport)")
            source_transport, sink_transport = made
            samples: list[int] = []

            def sample(kind: str, _info: dict[str, Any]) -> None:
                if kind == "tick":
                    samples.append(sink_transport.get_write_buffer_size())

            reactor.set_trace(sample)
            sender.start()
            drain.setblocking(False)
            received = bytearray()
            state = {"eof": False}

            def read() -> None:
                try:
                    data = drain.recv(32 * KiB)
                except BlockingIOError:
                    data = None
                if data == b"":
                    state["eof"] = True
                    return
                if data:
                    received.extend(data)
                reactor.call_later(0.002, read)

            reactor.call_soon(read)
            reactor.run_until(lambda: state["eof"], timeout=15.0)
            reactor.set_trace(None)
            peak = max(samples, default=0)
            if peak > PIPE_HIGH + READ_SIZE + CHUNK:
                raise Wrong(
                    f"the sink's transport held up to {peak // KiB} KiB (high water "
                    f"{PIPE_HIGH // KiB} KiB): the source was read as fast as it sent",
                    "the sink's pause_writing() must pause reading on the source's transport, "
                    "and its resume_writing() resume it",
                )
            if not state["eof"]:
                raise Wrong(
                    f"{len(received) // KiB} KiB of 4096 KiB arrived and no end-of-stream",
                    "when the source sends EOF (eof_received), close the sink: close() flushes "
                    "what is buffered first",
                )
            if bytes(received) != PIPE_PAYLOAD:
                raise Wrong(f"{len(received) // KiB} KiB arrived instead of 4096, or not in order")
            reactor.run_until(lambda: reactor.registered_fds == 0, timeout=2.0)
            if not (source_transport.is_closing and sink_transport.is_closing):
                raise Wrong(
                    "after the end of the stream a transport was left open",
                    "once the sink is closed (connection_lost), close the source too",
                )
            if reactor.registered_fds:
                raise Wrong(f"{reactor.registered_fds} descriptor(s) still watched at the end")
    finally:
        reactor.set_trace(None)
        for sock in (feeder, drain):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if sender.thread.ident is not None:
            sender.thread.join(timeout=5)
        for sock in (source, sink):
            sock.close()
        reactor.close()
    return (
        f"4 MiB crossed from a fast source to a slow sink; the sink's buffer peaked at "
        f"{peak // KiB} KiB, end-of-stream went through, and both connections closed"
    )

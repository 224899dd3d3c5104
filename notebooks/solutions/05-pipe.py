# Exercise 05-pipe: the sink's flow control drives the source's reading.
import socket

from minireactor import Protocol, Reactor, Transport


class SourceSide(Protocol):
    """Reads from the source, writes into the sink."""

    def __init__(self) -> None:
        self.sink: Transport | None = None

    def data_received(self, data: bytes) -> None:
        assert self.sink is not None
        self.sink.write(data)

    def eof_received(self) -> bool:
        assert self.sink is not None
        self.sink.close()  # flushes first; its connection_lost then closes us
        return True  # keep the source open until then


class SinkSide(Protocol):
    """Pauses the source while the sink's buffer is above its high-water mark."""

    def __init__(self) -> None:
        self.source: Transport | None = None

    def pause_writing(self) -> None:
        assert self.source is not None
        self.source.pause_reading()

    def resume_writing(self) -> None:
        assert self.source is not None
        self.source.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.source is not None:
            if exc is None:
                self.source.close()
            else:
                self.source.abort()


def pipe(
    reactor: Reactor, source_sock: socket.socket, sink_sock: socket.socket, high_water: int
) -> tuple[Transport, Transport]:
    source_side, sink_side = SourceSide(), SinkSide()
    source = Transport(reactor, source_sock, source_side)
    sink = Transport(reactor, sink_sock, sink_side, high_water=high_water)
    source_side.sink, sink_side.source = sink, source
    return source, sink

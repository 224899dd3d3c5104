# Exercise 05-producer: one chunk per tick while not paused; stop when the connection goes.
from collections.abc import Iterator

from minireactor import Protocol, Reactor, TransportLike


class ChunkProducer(Protocol):
    def __init__(self, reactor: Reactor, chunks: Iterator[bytes]) -> None:
        self.reactor = reactor
        self.chunks = chunks
        self.transport: TransportLike | None = None
        self.paused = False
        self.scheduled = False  # at most one produce() chain, whatever resumes do

    def connection_made(self, transport: TransportLike) -> None:
        self.transport = transport
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.reactor.call_soon(self._produce)

    def _produce(self) -> None:
        self.scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing or self.paused:
            return  # resume_writing() starts us again; a lost connection never does
        chunk = next(self.chunks, None)
        if chunk is None:
            transport.close()  # flushes what is buffered, then closes
            return
        transport.write(chunk)
        self._schedule()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._schedule()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None

"""CONNECT tunnels (and upgraded connections): opaque bytes, both ways, with crossed backpressure.

Theory of operation
-------------------
After ``200 Connection established`` (RFC 9110 section 9.3.6) the proxy stops speaking HTTP on
that connection: whatever the client sends, usually a TLS handshake, goes to the origin
unchanged, and back. TLS therefore stays end to end; the proxy sees only ciphertext, which is
why path rules of the blocklist cannot apply to HTTPS. The shape is Twisted's
``portforward.py``:

* **Don't read before the other end exists.** The session stops reading from the client when it
  sees ``CONNECT``; bytes the client sent early (a TLS ClientHello right behind the request)
  sit in the parser's buffer and are the first thing written to the origin.
* **Crossed backpressure.** Each side's ``pause_writing`` pauses *reading* on the other side, so
  a fast origin and a slow client cannot fill our memory: the bytes stay in the kernel buffers
  and TCP slows the sender down.
* **Half-close.** EOF from one side becomes ``write_eof`` on the other, and the tunnel keeps
  relaying the opposite direction until that side finishes too (a client may shut down its
  sending side and still wait for the reply).
* **Close both.** When one side is lost, the other is closed after it flushes what it holds.
* **Idle timeout.** A tunnel with no bytes either way for ``idle_timeout`` seconds is closed; a
  counter of bytes checked by a timer avoids touching a timer on every chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from minireactor import Protocol, Reactor, Transport


class TunnelEnd(Protocol):
    """One side of a tunnel: what it receives is written to the peer end's transport."""

    __slots__ = ("tunnel", "name", "transport", "peer", "eof", "lost", "bytes_received")

    def __init__(self, tunnel: Tunnel, name: str) -> None:
        self.tunnel = tunnel
        self.name = name
        self.transport: Transport | None = None
        self.peer: TunnelEnd | None = None
        self.eof = False
        self.lost = False
        self.bytes_received = 0

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        """Used when the end's transport is created for the tunnel (the origin side)."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Relay to the other side."""
        self.bytes_received += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        """Half-close the other side; keep our own direction open."""
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write_eof()
        if peer is None or peer.eof:
            self.tunnel.close()
            return False
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """Close the other side after it flushes."""
        self.lost = True
        self.tunnel.side_lost(self, exc)

    def pause_writing(self) -> None:
        """Our outgoing buffer is full: stop reading from the other side."""
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        """Our buffer drained: read from the other side again."""
        if self.peer is not None and self.peer.transport is not None and not self.peer.eof:
            self.peer.transport.resume_reading()


class Tunnel:
    """Two transports joined back to back."""

    __slots__ = (
        "reactor",
        "client_end",
        "upstream_end",
        "idle_timeout",
        "_on_closed",
        "_closed",
        "_seen",
        "_idle_timer",
    )

    def __init__(
        self,
        reactor: Reactor,
        client: Transport,
        upstream: Transport,
        *,
        idle_timeout: float,
        on_closed: Callable[[Tunnel, BaseException | None], None],
    ) -> None:
        self.reactor = reactor
        self.client_end = TunnelEnd(self, "client")
        self.upstream_end = TunnelEnd(self, "upstream")
        self.client_end.transport = client
        self.upstream_end.transport = upstream
        self.client_end.peer = self.upstream_end
        self.upstream_end.peer = self.client_end
        client.set_protocol(self.client_end)
        upstream.set_protocol(self.upstream_end)
        self.idle_timeout = idle_timeout
        self._on_closed = on_closed
        self._closed = False
        self._seen = -1
        self._idle_timer = reactor.call_later(idle_timeout, self._check_idle)

    def start(self, early_up: bytes, early_down: bytes = b"") -> None:
        """Relay bytes that arrived before the tunnel existed, then read both sides.

        *early_up* came from the client behind its request; *early_down* from the origin
        behind its ``101`` head.
        """
        assert self.upstream_end.transport is not None and self.client_end.transport is not None
        if early_up:
            self.client_end.data_received(early_up)
        if early_down:
            self.upstream_end.data_received(early_down)
        self.client_end.transport.resume_reading()
        self.upstream_end.transport.resume_reading()

    @property
    def bytes_up(self) -> int:
        """Bytes relayed from the client to the origin."""
        return self.client_end.bytes_received

    @property
    def bytes_down(self) -> int:
        """Bytes relayed from the origin to the client."""
        return self.upstream_end.bytes_received

    def _check_idle(self) -> None:
        moved = self.bytes_up + self.bytes_down
        if moved == self._seen:
            self.close()
            return
        self._seen = moved
        self._idle_timer = self.reactor.call_later(self.idle_timeout, self._check_idle)

    def side_lost(self, end: TunnelEnd, exc: BaseException | None) -> None:
        """One side is gone: close the other after it flushes, and report once."""
        other = end.peer
        if other is not None and other.transport is not None and not other.lost:
            if exc is None:
                other.transport.close()
            else:
                other.transport.abort()
        if end.lost and (other is None or other.lost):
            self._finish(exc)

    def close(self) -> None:
        """Close both sides after flushing."""
        for end in (self.client_end, self.upstream_end):
            if end.transport is not None:
                end.transport.close()

    def abort(self) -> None:
        """Close both sides now."""
        for end in (self.client_end, self.upstream_end):
            if end.transport is not None:
                end.transport.abort()

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._idle_timer.cancel()
        self._on_closed(self, exc)

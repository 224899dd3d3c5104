"""Part B: CONNECT tunnels: opaque bytes both ways, half-close, crossed backpressure.

Theory of operation
-------------------
``CONNECT host:port`` (RFC 9110 section 9.3.6; the target is in *authority-form*) asks the proxy
for a TCP connection to ``host:port``. Once it exists the proxy answers ``200 Connection
established`` and from then on relays bytes, whatever they are: usually TLS, which therefore
stays end to end between the client and the origin. The shape is Twisted's ``portforward.py``
and the project's ``proxy/tunnel.py``:

* **Don't read before the other end exists.** The client connection stopped reading when it
  handed the request over (``client.py``) and reads again only once the origin transport is up.
  Bytes the client sent right behind its request (a TLS ClientHello, say) wait in the parser's
  buffer: :meth:`~client.ClientConnection.detach` returns them, and they are the first bytes
  written to the origin.
* **Crossed backpressure.** A transport tells *its own* protocol when its write buffer passes
  the high-water mark (``pause_writing``). A :class:`TunnelEnd` then pauses *reading on the
  other side*: the bytes wait in the kernel's buffers and TCP slows the sender down, so memory
  stays bounded by the water marks whatever the speed of either peer.
* **Half-close.** EOF from one side becomes ``write_eof()`` on the other (a FIN once the buffer
  has drained), and the opposite direction keeps flowing: a client may finish sending and still
  wait for the answer. When both directions have ended, the tunnel closes.
* **Close both.** When one side is lost, the other is closed once it has flushed what it holds.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from rewrite import split_authority

from minireactor import Protocol, Reactor, Transport, TransportLike, connect_host
from minireactor.connect import ConnectAttempt
from proxy.http11 import Request

if TYPE_CHECKING:
    from client import ClientConnection
    from context import ProxyContext

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
"""The answer that opens a tunnel: no body, and no framing fields (RFC 9110 section 9.3.6)."""


def open_tunnel(ctx: ProxyContext, client: ClientConnection, request: Request) -> None:
    """Answer a ``CONNECT``: connect to its authority, then join the two connections.

    :raises ProtocolError: (400) the target is not ``host:port``.
    """
    host, port = split_authority(request.target, default_port=None)
    TunnelSetup(ctx, client, host, port).start()


class TunnelSetup:
    """The client's producer while the origin connection is being made."""

    def __init__(self, ctx: ProxyContext, client: ClientConnection, host: str, port: int) -> None:
        self.ctx = ctx
        self.client = client
        self.host = host
        self.port = port
        self.attempt: ConnectAttempt | None = None

    def start(self) -> None:
        """Resolve and connect, under the proxy's deadline."""
        self.client.producer = self
        self.attempt = connect_host(
            self.ctx.reactor,
            self.ctx.resolver,
            self.host,
            self.port,
            self._connected,
            timeout=self.ctx.timeout,
        )

    def _connected(self, sock: socket.socket | None, error: BaseException | None) -> None:
        self.attempt = None
        if sock is None:
            where = f"{self.host}:{self.port}"
            if isinstance(error, TimeoutError):
                timeout = self.ctx.timeout
                self.client.send_error(504, f"no connection to {where} within {timeout:g} s")
            else:
                self.client.send_error(502, f"cannot connect to {where}: {error}")
            return
        client_transport, early = self.client.detach()
        client_transport.write(ESTABLISHED)
        Tunnel(self.ctx.reactor, client_transport, sock, early)

    def pause_producing(self) -> None:
        """Nothing is relayed yet."""

    def resume_producing(self) -> None:
        """Nothing is relayed yet."""

    def stop_producing(self) -> None:
        """The client left while we were connecting: give the attempt up."""
        if self.attempt is not None:
            self.attempt.cancel()
            self.attempt = None


class TunnelEnd(Protocol):
    """One side of a tunnel: what it receives goes out through the other side's transport."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: TransportLike | None = None
        self.peer: TunnelEnd | None = None
        self.eof = False  # this side has finished sending
        self.lost = False

    def _peer_transport(self) -> TransportLike | None:
        return self.peer.transport if self.peer is not None else None

    def connection_made(self, transport: TransportLike) -> None:
        """The origin side is connected: the tunnel can start."""
        self.transport = transport
        self.tunnel.origin_ready()

    def data_received(self, data: bytes) -> None:
        """Relay to the other side, unchanged."""
        other = self._peer_transport()
        if other is not None:
            other.write(data)

    def eof_received(self) -> bool:
        """This side finished sending: half-close the other side, keep our direction open."""
        self.eof = True
        other = self._peer_transport()
        if other is not None:
            other.write_eof()
        if self.peer is None or self.peer.eof:
            self.tunnel.close()
            return False
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """This side is closed: close the other one after it flushes."""
        self.lost = True
        self.tunnel.side_lost(self)

    def pause_writing(self) -> None:
        """Our outgoing buffer is full: stop reading from the side that fills it."""
        other = self._peer_transport()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        """Our buffer drained: read from the other side again (unless it has ended)."""
        other = self._peer_transport()
        if other is not None and self.peer is not None and not self.peer.eof:
            other.resume_reading()


class Tunnel:
    """Two transports joined back to back."""

    def __init__(
        self, reactor: Reactor, client: TransportLike, origin: socket.socket, early: bytes
    ) -> None:
        self.client_end = TunnelEnd(self)
        self.origin_end = TunnelEnd(self)
        self.client_end.peer, self.origin_end.peer = self.origin_end, self.client_end
        self.client_end.transport = client
        client.set_protocol(self.client_end)
        self.early = early
        # The origin transport calls connection_made on the next tick: origin_ready().
        Transport(reactor, origin, self.origin_end)

    def origin_ready(self) -> None:
        """Both ends exist: send the early bytes, then read from the client at last."""
        origin, client = self.origin_end.transport, self.client_end.transport
        assert origin is not None and client is not None
        if self.client_end.lost:  # the client went away while we were connecting
            origin.close()
            return
        if self.early:
            origin.write(self.early)
            self.early = b""
        client.resume_reading()

    def side_lost(self, end: TunnelEnd) -> None:
        """One side is gone: close the other once it has flushed."""
        other = end.peer
        if other is not None and other.transport is not None and not other.lost:
            other.transport.close()

    def close(self) -> None:
        """Both directions ended: close both sides (each flushes first)."""
        for end in (self.client_end, self.origin_end):
            if end.transport is not None:
                end.transport.close()

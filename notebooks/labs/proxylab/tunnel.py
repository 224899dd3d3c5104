"""Part B: CONNECT tunnels: opaque bytes both ways, half-close, crossed backpressure.

Theory of operation
-------------------
``CONNECT host:port`` (RFC 9110 section 9.3.6; the target is in *authority-form*) asks the proxy
for a TCP connection to ``host:port``. Once it exists the proxy answers ``200 Connection
established`` and from then on relays bytes, whatever they are: usually TLS, which therefore
stays end to end. Rung 9 of the course and the project's ``proxy/tunnel.py`` show the shape
(read them; do not import them):

* don't read before the other end exists, and write the bytes the client sent right behind
  its request first (``client.detach()`` returns them);
* crossed backpressure: each side's ``pause_writing`` pauses *reading on the other side*;
* half-close: EOF from one side becomes ``write_eof()`` on the other;
* close both: when one side is lost, close the other once it has flushed.

What you will need::

    from minireactor import Protocol, Reactor, Transport, TransportLike, connect_host
    from minireactor.connect import ConnectAttempt
    from rewrite import split_authority
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.http11 import Request

if TYPE_CHECKING:
    from client import ClientConnection
    from context import ProxyContext


def open_tunnel(ctx: ProxyContext, client: ClientConnection, request: Request) -> None:
    """Answer a ``CONNECT``: connect to its authority, then join the two connections.

    TODO(B1, B3): split ``request.target`` (400 if it is not ``host:port``), register a
    producer (``client.producer``) whose ``stop_producing`` cancels the connect, connect with
    ``connect_host``; on failure ``client.send_error(502 or 504, why)``; on success
    ``client.detach()``, write ``HTTP/1.1 200 Connection established`` and the blank line, and
    join the client's transport and a new ``Transport`` for the origin socket.
    TODO(B4, B5, B6, B8): the two ends (below).
    """
    raise NotImplementedError("Part B: open_tunnel() in tunnel.py")


class TunnelEnd:
    """One side of a tunnel: what it receives goes out through the other side's transport.

    TODO(B4): make it a ``minireactor.Protocol``: ``data_received`` writes to the peer.
    TODO(B5): ``eof_received`` half-closes the peer (``write_eof``) and returns True while
    the other direction is still open.
    TODO(B6): ``pause_writing``/``resume_writing`` pause/resume *the peer's* reading.
    TODO(B8): ``connection_lost`` closes the peer.
    """

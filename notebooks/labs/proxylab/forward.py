"""Part A: forward one request to its origin and relay the response (with Part C's cache).

Theory of operation
-------------------
:func:`forward` will answer every request but ``CONNECT``:

1. split the target (:func:`rewrite.parse_target`; a bad one raises the 400, and
   ``client.py`` answers with the page);
2. (Part C) ask the cache: a fresh copy is answered at once (:func:`send_cached`), a stale
   copy with a validator makes the request conditional;
3. start an :class:`Exchange`, the origin side's minireactor Protocol: ``connect_host``
   resolves the name and connects without blocking, under one deadline; the exchange sends
   the head that :mod:`rewrite` built, and the body, then relays the response as the origin's
   bytes arrive.

The handout (``README.md``) gives the rules for each step and the check (A1 ... A10) that
grades it. The outline below is a suggestion: keep the signature of :func:`forward`, which
``client.py`` calls, and change anything else.

What you will need (import it when you use it)::

    from minireactor import Protocol, TimerHandle, Transport, TransportLike, connect_host
    from minireactor.connect import ConnectAttempt
    from proxy.http11 import (NEED_DATA, Data, EndOfMessage, ProtocolError, ResponseParser,
                              keep_alive, serialize_response_head)
    from rewrite import client_response_head, origin_request_head, parse_target
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cache

from proxy.http11 import Request

if TYPE_CHECKING:
    from client import ClientConnection
    from context import ProxyContext


def send_cached(
    ctx: ProxyContext, client: ClientConnection, request: Request, entry: cache.CachedResponse
) -> None:
    """Answer *request* from the cache.

    TODO(C1, C2): the stored response, with ``Age`` and ``Content-Length``; then
    ``client.finish(...)``.
    """
    raise NotImplementedError("C1: send_cached() in forward.py")


def forward(ctx: ProxyContext, client: ClientConnection, request: Request, body: bytes) -> None:
    """Answer *request* (anything but CONNECT): from the cache, or through its origin.

    TODO(A1): parse the target, build the head, start an :class:`Exchange`.
    TODO(C1, C5): first look in ``ctx.cache`` (when ``cache.cacheable_request(request)``).
    """
    raise NotImplementedError("Part A: forward() in forward.py")


class Exchange:
    """One request forwarded to its origin: the origin side's Protocol, the client's producer.

    TODO(A1): make it a ``minireactor.Protocol`` and write the methods below. The order of
    events: :meth:`start` connects (``connect_host``; its callback gets a socket or an error);
    ``Transport(ctx.reactor, sock, self)`` makes the transport, which calls
    ``connection_made`` on the next tick: send the request there. ``data_received`` feeds a
    ``ResponseParser`` (call ``expect(method)`` first) and relays each event to the client as
    it comes: the head (``client_response_head``), each ``Data``, and ``EndOfMessage`` (then
    ``client.finish(keep_alive)``). ``eof_received`` and ``connection_lost`` may end the body,
    or cut it short (A9).
    """

    def __init__(self, ctx: ProxyContext, client: ClientConnection, request: Request) -> None:
        self.ctx = ctx
        self.client = client
        self.request = request

    def start(self) -> None:
        """Register as ``client.producer`` and connect to the origin (502/504 on failure)."""
        raise NotImplementedError("A1: Exchange.start() in forward.py")

    def pause_producing(self) -> None:
        """TODO(B7): the client reads slowly: stop reading from the origin."""
        raise NotImplementedError("B7: Exchange.pause_producing() in forward.py")

    def resume_producing(self) -> None:
        """TODO(B7): the client caught up: read from the origin again."""
        raise NotImplementedError("B7: Exchange.resume_producing() in forward.py")

    def stop_producing(self) -> None:
        """TODO(A1): the client is gone: close the origin connection."""
        raise NotImplementedError("A1: Exchange.stop_producing() in forward.py")

"""Part A: forward one request to its origin and relay the response (with Part C's cache).

Theory of operation
-------------------
:func:`forward` answers every request but ``CONNECT``:

1. it splits the target (:func:`rewrite.parse_target`; a bad one raises the 400);
2. it asks the cache (Part C): a fresh copy is answered at once (:func:`send_cached`); a stale
   copy with a validator makes the request conditional;
3. it starts an :class:`Exchange`, the origin side's minireactor Protocol. ``connect_host``
   resolves the name and connects without blocking, under one deadline for both; once
   connected the exchange sends the head that :mod:`rewrite` built, and the body, and relays
   the response as it arrives: each event the sans-IO ``ResponseParser`` hands out becomes
   bytes for the client at once, so a body is never held whole.

The exchange is also the client connection's *producer*: when the client reads slowly its
transport's buffer fills, ``pause_producing`` pauses reading from the origin, and TCP slows the
origin down (the same crossed backpressure as the tunnel's).

Failures become the proxy's own pages: a refused connection, an unknown name or an invalid
response is 502 Bad Gateway; no connection, or no first byte, before the deadline is 504
Gateway Timeout. Once the response head has gone out it is too late for a page: the client
connection is reset, so a cut body can never pass for a complete one.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import cache
from rewrite import (
    HOP_BY_HOP,
    Target,
    client_response_head,
    origin_request_head,
    parse_target,
    via_entry,
)

from minireactor import Protocol, TimerHandle, Transport, TransportLike, connect_host
from minireactor.connect import ConnectAttempt
from proxy.http11 import (
    NEED_DATA,
    BodyWriter,
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    Response,
    ResponseParser,
    keep_alive,
    serialize_response_head,
)

if TYPE_CHECKING:
    from client import ClientConnection
    from context import ProxyContext


def send_cached(
    ctx: ProxyContext, client: ClientConnection, request: Request, entry: cache.CachedResponse
) -> None:
    """Answer *request* from the cache: the stored response, with its ``Age`` (Part C)."""
    headers = entry.headers.copy()
    headers.set("Age", str(int(entry.age(ctx.now()))))
    headers.set("Content-Length", str(len(entry.body)))
    headers.add("Via", via_entry("HTTP/1.1", ctx.pseudonym))
    persist = keep_alive(request.version, request.headers)
    headers.add("Connection", "keep-alive" if persist else "close")
    client.send(serialize_response_head(entry.status, entry.reason, headers) + entry.body)
    client.finish(persist)


def forward(ctx: ProxyContext, client: ClientConnection, request: Request, body: bytes) -> None:
    """Answer *request* (anything but CONNECT): from the cache, or through its origin.

    :raises ProtocolError: (400) the request target is not an absolute http:// URL.
    """
    target = parse_target(request.target)
    key = target.url if cache.cacheable_request(request) else None
    stale = None
    if key is not None:
        entry = ctx.cache.lookup(key)
        if entry is not None and entry.is_fresh(ctx.now()):
            send_cached(ctx, client, request, entry)
            return
        if entry is not None and cache.conditional_headers(entry):
            stale = entry
    validators = cache.conditional_headers(stale) if stale is not None else []
    head = origin_request_head(request, target, ctx.pseudonym, body, validators)
    Exchange(ctx, client, request, target, head + body, key, stale).start()


class Exchange(Protocol):
    """One request forwarded to its origin: the origin side's Protocol and the client's producer.

    :param key: the cache key when the response may be stored (None: never cached).
    :param stale: the stored copy being revalidated, if the request is conditional.
    """

    def __init__(
        self,
        ctx: ProxyContext,
        client: ClientConnection,
        request: Request,
        target: Target,
        outgoing: bytes,
        key: str | None,
        stale: cache.CachedResponse | None,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.request = request
        self.target = target
        self.outgoing = outgoing
        self.key = key
        self.stale = stale
        self.parser = ResponseParser()
        self.parser.expect(request.method)
        self.attempt: ConnectAttempt | None = None
        self.transport: TransportLike | None = None
        self.first_byte: TimerHandle | None = None
        self.response: Response | None = None
        self.writer: BodyWriter | None = None  # set once the response head went to the client
        self.persist = False
        self.tee: bytearray | None = None  # the body being copied for the cache
        self.finished = False

    def start(self) -> None:
        """Register as the client's producer and connect to the origin."""
        self.client.producer = self
        self.attempt = connect_host(
            self.ctx.reactor,
            self.ctx.resolver,
            self.target.host,
            self.target.port,
            self._connected,
            timeout=self.ctx.timeout,
        )

    def _connected(self, sock: socket.socket | None, error: BaseException | None) -> None:
        self.attempt = None
        if sock is None:
            where = self.target.authority
            if isinstance(error, TimeoutError):
                self._fail(504, f"no connection to {where} within {self.ctx.timeout:g} s")
            else:
                self._fail(502, f"cannot connect to {where}: {error}")
            return
        Transport(self.ctx.reactor, sock, self)

    # -- the origin connection's Protocol callbacks -----------------------------------------

    def connection_made(self, transport: TransportLike) -> None:
        """Send the request, and start waiting for the first byte of the answer."""
        if self.finished:  # the client left while we were connecting
            transport.abort()
            return
        self.transport = transport
        transport.write(self.outgoing)
        self.first_byte = self.ctx.reactor.call_later(self.ctx.timeout, self._no_answer)

    def data_received(self, data: bytes) -> None:
        """Parse what the origin sent and relay it."""
        if self.first_byte is not None:
            self.first_byte.cancel()
            self.first_byte = None
        self.parser.feed(data)
        self._relay()

    def eof_received(self) -> bool:
        """The origin closed: that may end a close-delimited body, or cut one short."""
        self.parser.feed_eof()
        self._relay()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        """The origin connection is closed; if the response was not complete, that is a 502."""
        self.transport = None
        if not self.finished:
            self._fail(502, "the origin closed the connection before the response was complete")

    # -- the client's producer ------------------------------------------------------------------

    def pause_producing(self) -> None:
        """The client reads slowly: stop reading from the origin (TCP then slows it down)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_producing(self) -> None:
        """The client caught up: read from the origin again."""
        if self.transport is not None and not self.finished:
            self.transport.resume_reading()

    def stop_producing(self) -> None:
        """The client is gone: drop the origin connection."""
        self.finished = True
        self._release(abort=True)

    # -- relaying -------------------------------------------------------------------------------

    def _relay(self) -> None:
        while not self.finished:
            try:
                event = self.parser.next_event()
            except ProtocolError as error:
                self._fail(502, f"invalid response from the origin: {error.message}")
                return
            if event is NEED_DATA:
                return
            if isinstance(event, Response):
                self._head(event)
            elif isinstance(event, Data):
                self._body(event.data)
            elif isinstance(event, EndOfMessage):
                self._end()
            else:  # ConnectionClosed before any response, or PAUSED after a 101
                self._fail(502, "the origin closed the connection without a usable response")

    def _head(self, response: Response) -> None:
        if response.status < 200:
            # Interim (1xx): the client's "100 Continue" was already answered by the proxy
            # itself, and we forward no Upgrade, so the final response follows.
            return
        self.response = response
        if response.status == 304 and self.stale is not None:
            return  # our own revalidation succeeded: the stored copy answers, in _end
        head, self.writer, self.persist = client_response_head(
            response, self.request, self.ctx.pseudonym
        )
        if self.key is not None:
            if cache.storable(self.request, response):
                self.tee = bytearray()
            else:
                self.ctx.cache.forget(self.key)  # what was stored is outdated by this answer
        self.client.send(head)

    def _body(self, data: bytes | memoryview) -> None:
        assert self.writer is not None
        self.client.send(self.writer.write(data))
        if self.tee is not None:
            if len(self.tee) + len(data) > self.ctx.cache.capacity:
                self.tee = None  # it could never be stored: stop copying
            else:
                self.tee += data

    def _end(self) -> None:
        self.finished = True
        self._release(abort=False)
        now = self.ctx.now()
        if self.writer is None:  # a 304 to our conditional request
            assert self.stale is not None and self.response is not None and self.key is not None
            fields = self.response.headers.without(HOP_BY_HOP | self.response.connection)
            fresh = self.ctx.cache.freshen(self.key, self.stale, fields, now)
            send_cached(self.ctx, self.client, self.request, fresh)
            return
        self.client.send(self.writer.end())
        if self.tee is not None and self.key is not None and self.response is not None:
            stored = self.response.headers.without(HOP_BY_HOP | self.response.connection)
            entry = cache.make_entry(self.response, stored, bytes(self.tee), now)
            self.ctx.cache.store(self.key, entry)
        self.client.finish(self.persist)

    # -- failing ----------------------------------------------------------------------------------

    def _no_answer(self) -> None:
        self.first_byte = None
        self._fail(504, f"{self.target.authority} sent nothing within {self.ctx.timeout:g} s")

    def _fail(self, status: int, detail: str) -> None:
        if self.finished:
            return
        self.finished = True
        self._release(abort=True)
        if self.writer is None:
            self.client.send_error(status, detail)
        else:
            self.client.abort()

    def _release(self, abort: bool) -> None:
        if self.attempt is not None:
            self.attempt.cancel()
            self.attempt = None
        if self.first_byte is not None:
            self.first_byte.cancel()
            self.first_byte = None
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

"""The client side of the lab proxy: one :class:`ClientConnection` per accepted socket.

Theory of operation
-------------------
This module is given: it is the frame the three parts of the lab hang on. A
:class:`ClientConnection` is the minireactor :class:`~minireactor.Protocol` of one client
connection. It feeds what arrives to a sans-IO :class:`~proxy.http11.RequestParser`, collects
one request (its head and its whole body, at most :data:`MAX_REQUEST_BODY` bytes) and hands it
over: ``CONNECT`` to :func:`tunnel.open_tunnel` (Part B), anything else to
:func:`forward.forward` (Part A, with Part C's cache inside).

While a request is being answered the connection is *busy* and does not read from the client
(``pause_reading``). The requests of a pipelining client then wait, in order, in the parser's
buffer and in the kernel, and no client can make the proxy buffer without bound. Whoever
answers calls back exactly once:

* :meth:`ClientConnection.finish` when the response is complete: the next request is parsed,
  or the connection is closed if it does not persist;
* :meth:`ClientConnection.send_error` when it fails before any byte of the response was sent;
* :meth:`ClientConnection.abort` when it fails half-way: a cut response must not look
  complete, so the connection is reset rather than closed;
* :meth:`ClientConnection.detach` when it turns the connection into a tunnel.

Whoever produces the response registers itself as the connection's :attr:`producer` (the
vocabulary is Twisted's ``IPushProducer``). The client transport's water marks reach it as
``pause_producing``/``resume_producing``: backpressure crossed over, as in rung 5. If the client
goes away first it hears ``stop_producing``, so that it can close the origin connection too.

A request the parser rejects is answered with the status its
:class:`~proxy.http11.ProtocolError` carries (400, 414, 431, 501, 505), and so is a
``ProtocolError`` raised by a part (a bad request target is a 400). A part that raises
:class:`NotImplementedError` earns a 501 "not implemented yet": that is how the skeleton
answers before you have written anything.
"""

from __future__ import annotations

import logging
from typing import Protocol as Interface

import forward
import tunnel
from context import ProxyContext
from pages import error_page

from minireactor import Protocol, TransportLike
from proxy.http11 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    RequestParser,
)

log = logging.getLogger("labproxy.client")

#: The largest request body the proxy collects before forwarding (413 beyond).
MAX_REQUEST_BODY = 1 << 20

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Producer(Interface):
    """Whatever writes a response to the client, as seen by the client connection."""

    def pause_producing(self) -> None:
        """The client's write buffer is full: stop reading what you relay to it."""

    def resume_producing(self) -> None:
        """The client's write buffer drained: go on."""

    def stop_producing(self) -> None:
        """The client is gone: release everything (close the origin connection)."""


class ClientConnection(Protocol):
    """One client connection: parse requests and hand each to the part that answers it."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.transport: TransportLike | None = None
        self.parser = RequestParser()
        #: Who is producing the current response (set by forward and tunnel), if anyone.
        self.producer: Producer | None = None
        self._request: Request | None = None
        self._body = bytearray()
        self._busy = False  # a request has been handed over and is not answered yet
        self._done = False  # closing, closed, or handed over to a tunnel
        self._eof = False

    # -- what forward.py and tunnel.py call ---------------------------------------------------

    def send(self, data: bytes | memoryview) -> None:
        """Write *data* to the client (buffered by the transport; never blocks)."""
        if self.transport is not None and not self._done:
            self.transport.write(data)

    def finish(self, keep_alive: bool) -> None:
        """The response is complete; read the next request, or close if *keep_alive* is false."""
        self.producer = None
        if not keep_alive:
            self._close()
            return
        # On the next tick, not now: a chain of cache hits answered from inside this call
        # would otherwise nest one call deeper per pipelined request.
        self.ctx.reactor.call_soon(self._next_request)

    def send_error(self, status: int, detail: str) -> None:
        """Answer with the proxy's own error page, then close (nothing may have been sent)."""
        self.producer = None
        if self.transport is None or self._done:
            return
        log.info("%d: %s", status, detail)
        self.transport.write(error_page(status, detail))
        self._close()

    def abort(self) -> None:
        """Reset the connection: the response was cut short and must not look complete."""
        self.producer = None
        self._done = True
        if self.transport is not None:
            self.transport.abort()

    def detach(self) -> tuple[TransportLike, bytes]:
        """Give the connection up to a tunnel: return the transport and the bytes read early.

        Reading stays paused; the tunnel resumes it once the other end exists.
        """
        assert self.transport is not None
        self.producer = None
        self._done = True
        return self.transport, self.parser.take_trailing_data()

    # -- the Protocol callbacks -----------------------------------------------------------------

    def connection_made(self, transport: TransportLike) -> None:
        """Keep the transport."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Parse what arrived; hand over a request once it is complete."""
        self.parser.feed(data)
        self._pump()

    def eof_received(self) -> bool:
        """The client finished sending: answer what is buffered, then close."""
        self._eof = True
        self.parser.feed_eof()
        self._pump()
        return True  # keep the connection open for writing: a response may still be due

    def pause_writing(self) -> None:
        """The client reads slowly: tell the producer to stop relaying."""
        if self.producer is not None:
            self.producer.pause_producing()

    def resume_writing(self) -> None:
        """The client caught up: let the producer go on."""
        if self.producer is not None:
            self.producer.resume_producing()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The client is gone: stop whoever was answering it."""
        self._done = True
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stop_producing()

    # -- inside -----------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Pull parser events until a request is handed over or more bytes are needed."""
        while not self._busy and not self._done:
            try:
                event = self.parser.next_event()
            except ProtocolError as error:
                self.send_error(error.status, error.message)
                return
            if event is NEED_DATA:
                return
            if event is PAUSED:
                # After a request asking to Upgrade: this proxy never upgrades (the field is
                # hop-by-hop and is not forwarded), so the connection goes on in HTTP/1.1.
                self.parser.resume()
            elif isinstance(event, ConnectionClosed):
                self._close()
            elif isinstance(event, Request):
                self._start_request(event)
            elif isinstance(event, Data):
                self._body += event.data
                if len(self._body) > MAX_REQUEST_BODY:
                    self.send_error(413, f"request bodies are limited to {MAX_REQUEST_BODY} bytes")
            elif isinstance(event, EndOfMessage):
                self._dispatch()

    def _start_request(self, request: Request) -> None:
        self._request = request
        self._body = bytearray()
        if request.method == "CONNECT":
            self._dispatch()  # no body; the bytes that follow belong to the tunnel
            return
        expects = request.headers.get("expect", "") or ""
        if request.framing != 0 and expects.lower() == "100-continue":
            # The client waits for this before sending its body (RFC 9110 section 10.1.1); we
            # collect the body ourselves, so we say "go on" ourselves.
            self.send(_CONTINUE)

    def _dispatch(self) -> None:
        request, body = self._request, bytes(self._body)
        assert request is not None and self.transport is not None
        self._request, self._body = None, bytearray()
        self._busy = True
        self.transport.pause_reading()
        try:
            if request.method == "CONNECT":
                tunnel.open_tunnel(self.ctx, self, request)
            else:
                forward.forward(self.ctx, self, request, body)
        except ProtocolError as error:
            self._stop_producer()
            self.send_error(error.status, error.message)
        except NotImplementedError as missing:
            self._stop_producer()
            self.send_error(501, f"not implemented yet: {missing}")

    def _stop_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stop_producing()

    def _next_request(self) -> None:
        if self._done or self.transport is None:
            return
        self._busy = False
        self._pump()
        if not self._busy and not self._done and not self._eof:
            self.transport.resume_reading()

    def _close(self) -> None:
        self._done = True
        if self.transport is not None:
            self.transport.close()

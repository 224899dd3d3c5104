"""RELAYING_RESPONSE: the origin's answer, re-framed and streamed to the client.

Theory of operation
-------------------
This is the second half of :class:`~proxy.forward.Exchange`, as a mixin it inherits. Every
read from the origin is turned into response events by the origin connection's parser, and
each event is relayed as it comes, with the client's transport corked so a small response
leaves in one ``send``:

* **Interim responses** (``100 Continue``, ``103 Early Hints``) go to HTTP/1.1 clients only.
* **The head** is rewritten: hop-by-hop fields removed, ``Via`` and ``Cache-Status`` added,
  and the body *re-framed* for this client: a chunked or close-delimited body goes to an
  HTTP/1.1 client chunked, so the client connection survives even when the origin's does not;
  an HTTP/1.0 client gets the bytes as they are, then a close. The cache may take over here
  (a ``304`` that refreshed a stored response: :meth:`ResponseRelay.divert`).
* **The body** is written as it arrives and teed into the cache when storable; the client's
  backpressure pauses reading from the origin.
* **The end** returns the origin connection to the pool when it can carry another request.
* **101 Switching Protocols** turns both connections into one byte relay.
"""

from __future__ import annotations

from collections.abc import Callable

from .guard import guarded
from .http11 import (
    NEED_DATA,
    PAUSED,
    BodyWriter,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    ProtocolError,
    Response,
    serialize_response_head,
)
from .http11.framing import CHUNKED, UNTIL_CLOSE, persists
from .target import add_via, strip_hop_by_hop


class ResponseRelay:
    """Relays one response from the origin to the client; mixed into the Exchange."""

    __slots__ = ()

    # -- receiving the response ------------------------------------------------------------------

    @guarded
    def upstream_readable(self) -> None:
        """Relay every response event the origin's bytes complete.

        The client transport is corked meanwhile, so a small response's head, body and end
        leave in one ``send``.
        """
        client = self.session.transport
        if client is None:
            return
        client.cork()
        try:
            self._relay_events()
        finally:
            client.uncork()
        if not self.done and self.response is not None and not self._idle_watched:
            # Armed once, for a response still under way (most small ones end in the event
            # that brought their head); the check re-arms itself, so chunks never touch it.
            self._idle_watched = True
            self._arm_idle_timer()

    def _relay_events(self) -> None:
        parser = self.upstream.parser
        while not self.done:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                self._origin_broke(exc.status, f"the origin sent a malformed response: {exc}")
                return
            if event is NEED_DATA:
                return
            if isinstance(event, Response):
                if event.status < 200 and event.status != 101:
                    self._relay_interim(event)
                else:
                    self._response_head(event)
            elif self._diverted is not None:
                if isinstance(event, EndOfMessage):
                    self._diverted_end()
            elif isinstance(event, Data):
                self._response_body(event.data)
            elif isinstance(event, EndOfMessage):
                self._response_end(event.trailers)
            elif event is PAUSED:
                self._upgraded()
            elif isinstance(event, ConnectionClosed):
                self.upstream_lost(None)

    def _relay_interim(self, response: Response) -> None:
        # 1xx answers (100 Continue, 103 Early Hints) mean nothing to an HTTP/1.0 client.
        if self.request.version == "HTTP/1.1":
            self.session.send(
                serialize_response_head(response.status, response.reason, response.headers)
            )

    def _response_head(self, response: Response) -> None:
        self.response = response
        if self.on_head is not None and self.on_head(self, response):
            return  # the cache took over (a 304 that refreshed a stored entry)
        session = self.session
        session.fire("response_head")
        session.status = response.status
        if session.result == "NONE":
            session.result = "TCP_MISS"
        framing = response.framing
        self.response_framing = framing
        upgrade = response.status == 101
        headers = strip_hop_by_hop(response.headers, response.connection, keep_upgrade=upgrade)
        add_via(headers, response.version, session.config.via_pseudonym)
        if session.cache_status is not None:
            headers.add("Cache-Status", session.cache_status)
        chunked = False
        if framing in (CHUNKED, UNTIL_CLOSE):
            headers.remove("Content-Length")
            if self.request.version == "HTTP/1.1":
                chunked = True
                codings = [
                    c
                    for c in response.headers.get_list("transfer-encoding")
                    if c.lower() != "chunked"
                ]
                headers.add("Transfer-Encoding", ", ".join([*codings, "chunked"]))
        self.client_writer = BodyWriter(chunked=chunked)
        self.client_reusable = (
            session.client_keeps_alive() and (chunked or framing != UNTIL_CLOSE) and not upgrade
        )
        if not upgrade:
            if not self.client_reusable:
                headers.add("Connection", "close")
            elif self.request.version == "HTTP/1.0":
                headers.add("Connection", "keep-alive")
        session.send(serialize_response_head(response.status, response.reason, headers))

    def _response_body(self, data: bytes) -> None:
        self.response_bytes += len(data)
        if self.cache_writer is not None:
            self.cache_writer.write(data)
        assert self.client_writer is not None
        self.session.send(self.client_writer.write(data))

    def _response_end(self, trailers: Headers) -> None:
        response = self.response
        assert response is not None
        assert self.client_writer is not None
        self.session.send(self.client_writer.end(trailers))
        if self.cache_writer is not None:
            self.cache_writer.finish()
            self.cache_writer = None
        reuse = (
            self.request_done
            and persists(response.version, response.connection)
            and self.response_framing != UNTIL_CLOSE
        )
        self._finish(
            reuse_upstream=reuse, client_reusable=self.client_reusable and self.request_done
        )

    def divert(self, then: Callable[[], None]) -> None:
        """Swallow the rest of this (bodiless) response, then call *then* instead of relaying."""
        self._cancel_timers()
        self._diverted = then

    def _diverted_end(self) -> None:
        response = self.response
        assert response is not None
        then = self._diverted
        self.done = True
        self.session.exchange = None
        reuse = self.request_done and persists(response.version, response.connection)
        self._release_upstream(reuse=reuse)
        then()

    def _upgraded(self) -> None:
        # 101 Switching Protocols: both connections become one byte relay (e.g. WebSocket).
        response = self.response
        if response is None or response.status != 101:
            self._origin_broke(502, "the origin switched protocols without a 101 response")
            return
        self.done = True
        self._cancel_timers()
        session = self.session
        session.exchange = None
        session.fire("upgraded")
        session.result = "TCP_UPGRADE"
        upstream = self.upstream
        upstream.owner = None
        transport = upstream.transport
        assert transport is not None
        early_down = upstream.parser.take_trailing_data()
        early_up = session.parser.take_trailing_data()
        session.start_tunnel(transport, early_up, early_down)

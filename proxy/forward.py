"""Exchange: forward one request to an origin and relay its response, streaming both ways.

Theory of operation
-------------------
Neither body is ever held whole. The request body is pulled from the client's parser only while
the origin connection takes it (the origin's ``pause_writing`` stops the pulling and pauses the
client's socket); the response body is written to the client as it arrives, and the client's
``pause_writing`` pauses reading from the origin. Memory per exchange is therefore bounded by
the transports' water marks plus one read, however large the bodies are.

On the way out, the head is rewritten (RFC 9110 section 7.6): the request line takes
origin-form, ``Host`` is set from the absolute URL (RFC 9112 section 3.2.2), hop-by-hop fields
go, ``Via`` is added. Body bytes that arrived with the head are parsed before the head leaves,
so a request already known to be malformed never reaches the origin. The way back (re-framing
for the client, the cache's tee, upgrades) is :mod:`proxy.relay`.

A body cut short by the origin is never passed off as complete: the client connection is reset,
and nothing partial reaches the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .guard import guarded
from .http11 import (
    NEED_DATA,
    BodyWriter,
    Data,
    EndOfMessage,
    Headers,
    ProtocolError,
    Request,
    Response,
    serialize_request_head,
)
from .http11.framing import CHUNKED
from .relay import ResponseRelay
from .states import SessionState
from .target import HOP_BY_HOP_AND_HOST, Target, add_via, strip_hop_by_hop
from .upstream import Upstream

if TYPE_CHECKING:
    from .session import ClientSession

S = SessionState
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _is_upgrade(request: Request) -> bool:
    return "upgrade" in request.connection and "upgrade" in request.headers


class Exchange(ResponseRelay):
    """One request forwarded over one origin connection, and its response relayed back.

    This module sends the request; :class:`~proxy.relay.ResponseRelay`, which it inherits,
    brings the response back.
    """

    # Per-exchange state that starts the same every time: class defaults, shadowed on first
    # assignment, so a new exchange costs fewer attribute stores.
    response: Response | None = None
    response_bytes = 0
    done = False
    upstream_paused = False
    client_writer: BodyWriter | None = None  # set with the response head
    client_reusable = False
    cache_writer: Any = None
    on_head: Any = None
    _diverted: Any = None
    _seen: tuple[int, int] = (-1, -1)
    _idle_watched = False

    def __init__(
        self,
        session: ClientSession,
        upstream: Upstream,
        request: Request,
        target: Target,
        conditional: Headers | None = None,
    ) -> None:
        self.session = session
        self.upstream = upstream
        self.request = request
        self.target = target
        self.conditional = conditional
        self.request_framing = request.framing
        # A retry on a fresh connection resends a request whose end the first attempt already
        # took from the parser: what follows there belongs to the next request.
        self.request_done = session.request_fully_read

    # -- sending the request ---------------------------------------------------------------------

    def start(self) -> None:
        """Send the rewritten head, then as much of the body as has arrived."""
        request, target = self.request, self.target
        config = self.session.config
        self.upstream.owner = self
        headers = strip_hop_by_hop(
            request.headers,
            request.connection,
            keep_upgrade=_is_upgrade(request),
            also=HOP_BY_HOP_AND_HOST,
        )
        headers.add("Host", target.authority)
        if self.conditional is not None:
            for name, value in self.conditional:
                headers.set(name, value)
        add_via(headers, request.version, config.via_pseudonym)
        if self.request_framing == CHUNKED:
            headers.add("Transfer-Encoding", "chunked")
        self.request_writer = BodyWriter(chunked=self.request_framing == CHUNKED)
        # Parse the body bytes that came with the head before the head leaves: a request already
        # known to be malformed must not reach the origin at all (RFC 9112 section 11.2).
        try:
            early = self._early_body()
        except ProtocolError as exc:
            self._client_sent_garbage(exc)
            return
        self.upstream.parser.expect(request.method)
        self.upstream.write(serialize_request_head(request.method, target.path, headers) + early)
        # The session's deadline is free while it forwards: the exchange's timeouts use it.
        self.session.deadline.arm(config.first_byte_timeout, self._first_byte_timed_out)
        self.pump_request_body()
        if self.upstream.parser.buffered or self.upstream.eof:
            self.upstream_readable()

    def _early_body(self) -> bytes:
        # Bounded: the session stops reading a client whose unparsed bytes pass its buffer limit.
        parser = self.session.parser
        pieces = []
        while not self.request_done:
            event = parser.next_event()
            if isinstance(event, Data):
                pieces.append(self.request_writer.write(event.data))
            elif isinstance(event, EndOfMessage):
                pieces.append(self.request_writer.end(event.trailers))
                self.request_done = True
                self.session.request_fully_read = True
            else:
                break  # NEED_DATA: the rest streams through pump_request_body
        return b"".join(pieces)

    @property
    def wants_request_body(self) -> bool:
        """Whether client bytes are still part of this request's body."""
        return not self.request_done and not self.done

    def pump_request_body(self) -> None:
        """Move request-body events from the client's parser to the origin, while it takes them."""
        parser = self.session.parser
        while not self.request_done and not self.upstream_paused and not self.done:
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                self._client_sent_garbage(exc)
                return
            if event is NEED_DATA:
                if self.session.transport is not None and not self.session.client_eof:
                    self.session.transport.resume_reading()
                return
            if isinstance(event, Data):
                self.upstream.write(self.request_writer.write(event.data))
            elif isinstance(event, EndOfMessage):
                self.upstream.write(self.request_writer.end(event.trailers))
                self.request_done = True
                self.session.request_fully_read = True
            else:
                raise RuntimeError(f"unexpected {event!r} in a request body")

    def _client_sent_garbage(self, exc: ProtocolError) -> None:
        # Nothing more of this request may reach the origin.
        self._release_upstream(reuse=False)
        self.done = True
        self.session.exchange = None
        if self.response is None:
            self.session.fire("upstream_failed")
            self.session.answer_error(exc.status, exc.message, close=True)
        else:
            self.session.upstream_failed_midway()

    # -- backpressure ----------------------------------------------------------------------------

    def upstream_pause_writing(self) -> None:
        """The origin is slow to take the request body: stop reading the client."""
        self.upstream_paused = True
        if self.session.transport is not None:
            self.session.transport.pause_reading()

    @guarded
    def upstream_resume_writing(self) -> None:
        """The origin caught up: read the client again."""
        self.upstream_paused = False
        self.pump_request_body()

    def client_paused(self, paused: bool) -> None:
        """The client's write buffer crossed a water mark: pause or resume the origin."""
        transport = self.upstream.transport
        if transport is None or self.done:
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- failures --------------------------------------------------------------------------------

    @guarded
    def upstream_lost(self, exc: BaseException | None) -> None:
        """The origin connection closed before the response was complete."""
        if self.done:
            return
        if self.response is None:
            nothing_heard = self.upstream.parser.buffered == 0
            if (
                self.upstream.reused
                and nothing_heard
                and self.request.method in IDEMPOTENT
                and self.request_framing == 0
            ):
                self.done = True
                self._cancel_timers()
                if self.session.retry_on_fresh_connection():
                    return
            self._origin_broke(502, "the origin closed the connection before sending a response")
            return
        self._origin_broke(502, "the origin closed the connection in the middle of the response")

    @guarded
    def _first_byte_timed_out(self) -> None:
        if self.response is None and not self.done:
            timeout = self.session.config.first_byte_timeout
            self._origin_broke(504, f"the origin sent no response within {timeout:g} s")

    def _origin_broke(self, status: int, detail: str) -> None:
        """Give up on the origin: an error page if nothing was sent yet, else a reset."""
        self._release_upstream(reuse=False)
        self.done = True
        if self.cache_writer is not None:
            self.cache_writer.abort()
            self.cache_writer = None
        session = self.session
        session.exchange = None
        if self.response is None:
            session.fire("upstream_failed")
            session.answer_error(status, detail, close=not self.request_done)
        else:
            session.upstream_failed_midway()

    def client_lost(self) -> None:
        """The client went away: drop the origin connection and anything half-cached."""
        if self.done:
            return
        self._release_upstream(reuse=False)
        self.done = True
        if self.cache_writer is not None:
            self.cache_writer.abort()
            self.cache_writer = None

    # -- bookkeeping -----------------------------------------------------------------------------

    def _finish(self, *, reuse_upstream: bool, client_reusable: bool) -> None:
        self.done = True
        self._release_upstream(reuse=reuse_upstream)
        self.session.exchange_finished(client_reusable)

    def _release_upstream(self, *, reuse: bool) -> None:
        self._cancel_timers()
        upstream = self.upstream
        upstream.owner = None
        if upstream.transport is not None:
            upstream.transport.resume_reading()
        if reuse:
            self.session.ctx.pool.release(upstream)
        else:
            upstream.abort()

    def _arm_idle_timer(self) -> None:
        # Replaces the first-byte timeout: the head has arrived.
        self.session.deadline.arm(self.session.config.idle_timeout, self._check_idle)

    @guarded
    def _check_idle(self) -> None:
        if self.done:
            return
        # Progress is bytes from the origin or bytes drained by the client: a slow reader
        # pausing the origin is not an idle relay, but a relay where neither moves is.
        client = self.session.transport
        progress = (self.response_bytes, client.get_write_buffer_size() if client else 0)
        if progress == self._seen:
            self._origin_broke(504, "the response stopped moving for the idle timeout")
            return
        self._seen = progress
        self._arm_idle_timer()

    def _cancel_timers(self) -> None:
        self.session.deadline.disarm()

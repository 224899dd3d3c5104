"""FORWARDING and RELAYING_RESPONSE: one request to an origin, and its response back.

Theory of operation
-------------------
An :class:`Exchange` forwards one request over one origin connection and relays the response,
streaming both ways, and never holds either body whole:

* **The request out.** The head is rewritten (RFC 9110 section 7.6): origin-form, ``Host`` from
  the absolute URL (RFC 9112 section 3.2.2), hop-by-hop fields removed, ``Via`` added; to a
  parent proxy the target stays absolute and our ``Proxy-Authorization`` is added. Body bytes
  that came with the head are parsed *before* the head leaves, so a request already known to be
  malformed never reaches the origin. The rest of the body is pulled from the client only while
  the origin takes it: the origin's ``pause_writing`` stops the pulling and pauses the client.
* **The response back.** Each read from the origin becomes response events; each is relayed as
  it comes, with the client's transport corked so that a small response leaves in one ``send``.
  Interim responses go to HTTP/1.1 clients only. The head is rewritten for *this* client by
  :func:`client_head` (a pure function): hop-by-hop fields removed, ``Via`` and
  ``Cache-Status`` added, and the body re-framed, so that a chunked or close-delimited body
  reaches an HTTP/1.1 client chunked and the client connection survives even when the origin's
  does not. The body is teed into the cache when the session hands over a cache writer, and the
  client's backpressure pauses reading from the origin.
* **The end.** A complete response gives the origin connection back to its pool when it can
  carry another request. ``101 Switching Protocols`` turns both connections into one byte relay.
  A body cut short by the origin is never passed off as complete: the session resets the client,
  and nothing partial reaches the cache.

The exchange decides nothing about the connection's state. It reports to its
:class:`ExchangeOwner` (the session), which makes the move in the state table and says what
happens next, for instance by handing back a :class:`RelayPlan` for the response head, or by
taking the response over when it refreshed a stored one.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from minireactor import TransportLike

from ..cache.writer import CacheWriter
from ..http11 import (
    NEED_DATA,
    PAUSED,
    BodyWriter,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    ProtocolError,
    Request,
    Response,
    serialize_request_head,
    serialize_response_head,
)
from ..http11.framing import CHUNKED, UNTIL_CLOSE, persists
from ..parent import ParentProxy
from ..target import HOP_BY_HOP_AND_HOST, Target, add_via, strip_hop_by_hop
from ..upstream import Upstream
from .guard import guarded

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Methods a proxy may send twice (RFC 9110 section 9.2.2): what a retry may resend."""


class RelayPlan(NamedTuple):
    """What the session wants done with a response head it accepted."""

    cache_writer: CacheWriter | None = None
    """Tee the body into the cache through this writer."""
    cache_status: str | None = None
    """The ``Cache-Status`` field value to add (RFC 9211)."""


class OriginFailure(NamedTuple):
    """The origin failed: the status and page for the client, had no response begun."""

    status: int
    detail: str
    retryable: bool = False
    """Nothing was heard on a reused connection, and the request may be sent again."""


class ExchangeOwner(Protocol):
    """What an exchange needs from, and reports to, the client session."""

    @property
    def request_complete(self) -> bool:
        """Whether the whole request (its end included) has been read from the client."""
        ...

    def next_body_event(self) -> Data | EndOfMessage | None:
        """The next piece of the request body; None until more bytes arrive.

        :raises ProtocolError: the client's body is malformed.
        """
        ...

    def pause_client_reading(self) -> None:
        """Stop reading from the client (the origin is slow to take the body)."""
        ...

    def send_to_client(self, data: bytes | memoryview) -> None:
        """Write response bytes to the client."""
        ...

    def client_keeps_alive(self) -> bool:
        """Whether the client connection may carry another request after this one."""
        ...

    def response_head(self, response: Response) -> RelayPlan | None:
        """The final response head arrived: relay it by the plan, or None if the session took
        the response over (it called :meth:`Exchange.discard_response` or
        :meth:`Exchange.abandon`)."""
        ...

    def response_finished(self, client_reusable: bool) -> None:
        """The whole response was relayed; the origin connection is released."""
        ...

    def origin_failed(self, failure: OriginFailure) -> None:
        """The origin broke; the origin connection is closed and the exchange is over."""
        ...

    def client_sent_garbage(self, error: ProtocolError) -> None:
        """The request body was malformed; the origin connection is closed."""
        ...

    def upgraded(self, upstream: TransportLike, early_down: bytes) -> None:
        """The origin switched protocols: *upstream* now carries opaque bytes."""
        ...

    def internal_error(self, exc: BaseException) -> None:
        """A bug surfaced in one of the exchange's callbacks."""
        ...


def asks_upgrade(request: Request) -> bool:
    """Whether *request* asks to switch protocols (RFC 9110 section 7.8)."""
    return "upgrade" in request.connection and "upgrade" in request.headers


def switches_as_asked(request: Request, response: Response) -> bool:
    """Whether a ``101`` answers a request that asked to upgrade to that very protocol.

    RFC 9110 section 15.2.2: a server switches only to a protocol named in the request's
    ``Upgrade`` field, and only when the request asked (``Connection: upgrade``).
    """
    if not asks_upgrade(request):
        return False
    offered = {p.strip().lower() for p in request.headers.get_list("upgrade") if p.strip()}
    chosen = [p.strip().lower() for p in response.headers.get_list("upgrade") if p.strip()]
    return bool(chosen) and all(protocol in offered for protocol in chosen)


class ClientHead(NamedTuple):
    """A response head rewritten for one client, and how its body must be framed."""

    head: bytes
    writer: BodyWriter
    reusable: bool


def client_head(
    response: Response,
    request: Request,
    *,
    keep_alive: bool,
    via_pseudonym: str,
    cache_status: str | None,
) -> ClientHead:
    """Rewrite *response*'s head for the client that sent *request*.

    *keep_alive* says whether the client connection could carry another request; the answer
    says whether it still can once this body's framing is known.
    """
    framing = response.framing
    upgrade = response.status == 101
    headers = strip_hop_by_hop(response.headers, response.connection, keep_upgrade=upgrade)
    add_via(headers, response.version, via_pseudonym)
    if cache_status is not None:
        headers.add("Cache-Status", cache_status)
    chunked = False
    if framing in (CHUNKED, UNTIL_CLOSE):
        headers.remove("Content-Length")
        if request.version == "HTTP/1.1":
            chunked = True
            codings = [
                c for c in response.headers.get_list("transfer-encoding") if c.lower() != "chunked"
            ]
            headers.add("Transfer-Encoding", ", ".join([*codings, "chunked"]))
    reusable = keep_alive and (chunked or framing != UNTIL_CLOSE) and not upgrade
    if not upgrade:
        if not reusable:
            headers.add("Connection", "close")
        elif request.version == "HTTP/1.0":
            headers.add("Connection", "keep-alive")
    head = serialize_response_head(response.status, response.reason, headers)
    return ClientHead(head, BodyWriter(chunked=chunked), reusable)


class Exchange:
    """One request forwarded over one origin connection, and its response relayed back."""

    __slots__ = (
        "owner",
        "client",
        "upstream",
        "request",
        "target",
        "conditional",
        "via_pseudonym",
        "parent",
        "response",
        "done",
        "upstream_paused",
        "request_writer",
        "client_writer",
        "client_reusable",
        "cache_writer",
    )

    def __init__(
        self,
        owner: ExchangeOwner,
        client: TransportLike | None,
        upstream: Upstream,
        request: Request,
        target: Target,
        *,
        via_pseudonym: str,
        conditional: Headers | None = None,
        parent: ParentProxy | None = None,
    ) -> None:
        self.owner = owner
        # Corked while a read's events are relayed, written through the owner; None for a
        # revalidation the proxy makes on its own, with no client to answer.
        self.client = client
        self.upstream = upstream
        self.request = request
        self.target = target
        self.conditional = conditional
        self.via_pseudonym = via_pseudonym
        self.parent = parent
        self.response: Response | None = None
        self.done = False
        self.upstream_paused = False
        self.request_writer = BodyWriter(chunked=request.framing == CHUNKED)
        self.client_writer: BodyWriter | None = None
        self.client_reusable = False
        self.cache_writer: CacheWriter | None = None

    def internal_error(self, exc: BaseException) -> None:
        """Hand a bug in a callback to the owner (see :func:`~proxy.session.guard.guarded`)."""
        self.owner.internal_error(exc)

    # -- the request out -------------------------------------------------------------------------

    def start(self) -> None:
        """Send the rewritten head, then as much of the body as has arrived."""
        request, target = self.request, self.target
        self.upstream.owner = self
        headers = strip_hop_by_hop(
            request.headers,
            request.connection,
            keep_upgrade=asks_upgrade(request),
            also=HOP_BY_HOP_AND_HOST,
        )
        headers.add("Host", target.authority)
        if self.conditional is not None:
            for name, value in self.conditional:
                headers.set(name, value)
        add_via(headers, request.version, self.via_pseudonym)
        if request.framing == CHUNKED:
            headers.add("Transfer-Encoding", "chunked")
        # A parent proxy needs the whole URL (absolute form), and our credentials for it.
        path = target.path
        if self.parent is not None:
            path = target.url
            if self.parent.authorization is not None:
                headers.add("Proxy-Authorization", self.parent.authorization)
        try:
            early = self._early_body()
        except ProtocolError as exc:
            self._client_sent_garbage(exc)
            return
        self.upstream.parser.expect(request.method)
        self.upstream.write(serialize_request_head(request.method, path, headers) + early)
        self.pump_request_body()
        if not self.done and (self.upstream.parser.buffered or self.upstream.eof):
            self.upstream_readable()

    def _early_body(self) -> bytes:
        # Bounded: the session stops reading a client whose unparsed bytes pass its buffer limit.
        pieces = []
        owner = self.owner
        while not owner.request_complete:
            event = owner.next_body_event()
            if event is None:
                break
            if isinstance(event, Data):
                pieces.append(self.request_writer.write(event.data))
            else:
                pieces.append(self.request_writer.end(event.trailers))
        return b"".join(pieces)

    @property
    def wants_request_body(self) -> bool:
        """Whether client bytes are still part of this request's body."""
        return not self.owner.request_complete and not self.done

    def pump_request_body(self) -> None:
        """Move request-body events from the client to the origin, while it takes them."""
        owner = self.owner
        while not owner.request_complete and not self.upstream_paused and not self.done:
            try:
                event = owner.next_body_event()
            except ProtocolError as exc:
                self._client_sent_garbage(exc)
                return
            if event is None:
                return
            if isinstance(event, Data):
                self.upstream.write(self.request_writer.write(event.data))
            else:
                self.upstream.write(self.request_writer.end(event.trailers))

    def _client_sent_garbage(self, exc: ProtocolError) -> None:
        # Nothing more of this request may reach the origin.
        self._end(reuse_upstream=False)
        self.owner.client_sent_garbage(exc)

    # -- backpressure ----------------------------------------------------------------------------

    def upstream_pause_writing(self) -> None:
        """The origin is slow to take the request body: stop reading the client."""
        self.upstream_paused = True
        self.owner.pause_client_reading()

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

    # -- the response back -----------------------------------------------------------------------

    @guarded
    def upstream_readable(self) -> None:
        """Relay every response event the origin's bytes complete, the client corked."""
        client = self.client
        if client is None:
            self._relay_events()
            return
        client.cork()
        try:
            self._relay_events()
        finally:
            client.uncork()

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
            # Hop-by-hop fields of an interim answer were for us, like those of a final one.
            headers = strip_hop_by_hop(response.headers, response.connection)
            self.owner.send_to_client(
                serialize_response_head(response.status, response.reason, headers)
            )

    def _response_head(self, response: Response) -> None:
        self.response = response
        if response.status == 407 and self.parent is not None:
            # The parent wants credentials for itself: that is our configuration's fault, not
            # something the client can answer (its Proxy-Authorization is for us).
            label = self.parent.label
            self._origin_broke(502, f"{label} asked for credentials it was not given (407)")
            return
        if response.status == 101 and not switches_as_asked(self.request, response):
            # Otherwise the client's next request, for any host, would reach this origin as
            # raw bytes, and it could answer as that host.
            self._origin_broke(502, "the origin switched protocols though none was asked for")
            return
        plan = self.owner.response_head(response)
        if plan is None:
            return  # the session took the response over
        self.cache_writer = plan.cache_writer
        rewritten = client_head(
            response,
            self.request,
            keep_alive=self.owner.client_keeps_alive(),
            via_pseudonym=self.via_pseudonym,
            cache_status=plan.cache_status,
        )
        self.client_writer = rewritten.writer
        self.client_reusable = rewritten.reusable
        self.owner.send_to_client(rewritten.head)

    def _response_body(self, data: bytes | memoryview) -> None:
        if self.cache_writer is not None:
            self.cache_writer.write(data)
        assert self.client_writer is not None
        self.owner.send_to_client(self.client_writer.write(data))

    def _response_end(self, trailers: Headers) -> None:
        response = self.response
        assert response is not None and self.client_writer is not None
        self.owner.send_to_client(self.client_writer.end(trailers))
        if self.cache_writer is not None:
            self.cache_writer.finish()
            self.cache_writer = None
        request_complete = self.owner.request_complete
        reuse = (
            request_complete
            and persists(response.version, response.connection)
            and response.framing != UNTIL_CLOSE
        )
        self._end(reuse_upstream=reuse)
        self.owner.response_finished(self.client_reusable and request_complete)

    def discard_response(self) -> None:
        """Read the (bodiless) response to its end and release the origin connection.

        For the session, when a ``304`` refreshed a stored response that it serves instead.
        """
        response = self.response
        assert response is not None
        event = self.upstream.parser.next_event()
        if not isinstance(event, EndOfMessage):
            # A 304 has no body (RFC 9110 section 15.4.5): its end follows its head at once.
            # The session has let go of this exchange already, so close the origin here.
            self._end(reuse_upstream=False)
            raise RuntimeError(f"a bodiless response continued with {event!r}")
        reuse = self.owner.request_complete and persists(response.version, response.connection)
        self._end(reuse_upstream=reuse)

    def _upgraded(self) -> None:
        # 101 Switching Protocols: both connections become one byte relay (e.g. WebSocket).
        response = self.response
        if response is None or response.status != 101:
            self._origin_broke(502, "the origin switched protocols without a 101 response")
            return
        self.done = True
        upstream = self.upstream
        upstream.owner = None
        transport = upstream.transport
        assert transport is not None
        self.owner.upgraded(transport, upstream.parser.take_trailing_data())

    # -- failures --------------------------------------------------------------------------------

    @guarded
    def upstream_lost(self, exc: BaseException | None) -> None:
        """The origin connection closed before the response was complete."""
        if self.done:
            return
        if self.response is not None:
            self._origin_broke(
                502, "the origin closed the connection in the middle of the response"
            )
            return
        retryable = (
            self.upstream.reused > 0
            and self.upstream.parser.buffered == 0
            and self.request.method in IDEMPOTENT
            and self.request.framing == 0
        )
        self._origin_broke(
            502, "the origin closed the connection before sending a response", retryable
        )

    def _origin_broke(self, status: int, detail: str, retryable: bool = False) -> None:
        self._end(reuse_upstream=False)
        self.owner.origin_failed(OriginFailure(status, detail, retryable))

    def abandon(self) -> None:
        """The session gives up on this exchange (client gone, a timeout): close the origin
        connection and drop anything half-cached. No report follows."""
        if not self.done:
            self._end(reuse_upstream=False)

    def _end(self, *, reuse_upstream: bool) -> None:
        self.done = True
        if self.cache_writer is not None:
            self.cache_writer.abort()
            self.cache_writer = None
        upstream = self.upstream
        upstream.owner = None
        if reuse_upstream:
            upstream.release()
        else:
            upstream.abort()

"""A revalidation with no client waiting: stale-while-revalidate's background request.

Theory of operation
-------------------
With ``Cache-Control: stale-while-revalidate`` (RFC 5861 section 3) a client is served the
stale copy at once, and the cache asks the origin about it *afterwards*. That request belongs
to no client connection, so it is not a :class:`~proxy.session.client.ClientSession`; it is a
:class:`BackgroundRevalidation`, which drives the very same steps a session does, the
:class:`~proxy.session.dialer.Dialer` and the :class:`~proxy.session.exchange.Exchange`,
through the same two interfaces (``DialOwner``, ``ExchangeOwner``). That the steps accept it
unchanged is what those interfaces are for.

It registers as the leader of its URL in the cache step's table of requests in flight, so a
burst of clients served stale starts one revalidation, and identical misses wait for it.
Whatever the origin answers is handled as a session's answer would be: a ``304`` freshens the
stored copy (:meth:`~proxy.session.cachestep.CacheStep.on_response_head`), a ``200`` is teed
into the store (its body goes nowhere else), an error leaves the stale copy as it is. One
deadline (connect plus first byte plus idle) bounds it, and it never retries.
"""

from __future__ import annotations

import logging
from typing import Protocol

from minireactor import Deadline, TransportLike
from minireactor import Protocol as StreamProtocol

from ..cache.store import StoredResponse
from ..config import Config
from ..http11 import Data, EndOfMessage, Headers, Limits, ProtocolError, Request, Response
from ..parent import Route
from ..target import Target
from ..upstream import Upstream, UpstreamPool
from .cachestep import CachePlan, CacheStep, Refreshed, StandIn, Tee
from .context import Attach, Network, Scheduler
from .dialer import Dialer, DialFailure
from .exchange import Exchange, OriginFailure, RelayPlan

log = logging.getLogger("proxy.session")


class Services(Protocol):
    """What a background revalidation uses of the proxy (a session's context provides it)."""

    @property
    def scheduler(self) -> Scheduler:
        """The reactor's clock and callbacks."""
        ...

    @property
    def config(self) -> Config:
        """The settings (timeouts, the Via name)."""
        ...

    @property
    def limits(self) -> Limits:
        """The parser limits for the origin connection."""
        ...

    @property
    def network(self) -> Network:
        """How origins are reached."""
        ...

    @property
    def pool(self) -> UpstreamPool:
        """Idle origin connections to reuse, and to give back."""
        ...

    @property
    def route(self) -> Route:
        """The first hop (the origin, or a parent proxy)."""
        ...

    @property
    def cache(self) -> CacheStep | None:
        """The cache step the answer goes to."""
        ...


class _NoWaiter:
    """A background revalidation waits for nobody."""

    def cache_wait_over(self, expired: bool) -> None:
        """Never waits: nothing to do."""

    def cache_lookup_ready(self) -> None:
        """Never looks up: nothing to do."""


class BackgroundRevalidation:
    """One conditional request about a stale stored response, for the cache alone."""

    def __init__(
        self,
        ctx: Services,
        request: Request,
        target: Target,
        entry: StoredResponse,
        conditional: Headers,
    ) -> None:
        self.ctx = ctx
        cache = ctx.cache
        assert cache is not None
        self.cache: CacheStep = cache
        headers = request.headers.copy()
        for name in ("if-none-match", "if-modified-since", "range", "if-range"):
            headers.remove(name)  # the client's conditions were answered from the store
        self.request = Request("GET", target.url, "HTTP/1.1", headers)
        self.target = target
        self.plan = CachePlan(target.url, _NoWaiter())
        self.plan.entry = entry  # what a 304 freshens
        self.plan.conditional = conditional
        self.dialer: Dialer | None = None
        self.exchange: Exchange | None = None
        self.deadline = Deadline(ctx.scheduler)
        self.done = False

    def start(self) -> None:
        """Register as the URL's request in flight, then reach the origin."""
        ctx = self.ctx
        self.cache.lead(self.plan)
        config = ctx.config
        self.deadline.arm(
            config.connect_timeout + config.first_byte_timeout + config.idle_timeout,
            self._timed_out,
        )
        hop = ctx.route.hop_for(self.target)
        upstream = ctx.pool.acquire(hop)
        if upstream is not None:
            self._forward(upstream)
            return
        self.dialer = Dialer(ctx.scheduler, ctx.network, config, self)
        self.dialer.dial(hop.host, hop.port, parent=hop.parent)

    def _forward(self, upstream: Upstream) -> None:
        self.plan.request_time = self.cache.clock()
        hop = self.ctx.route.hop_for(self.target)
        self.exchange = Exchange(
            self,
            None,
            upstream,
            self.request,
            self.target,
            via_pseudonym=self.ctx.config.via_pseudonym,
            conditional=self.plan.conditional,
            parent=hop.parent,
        )
        self.exchange.start()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        self.deadline.close()
        if self.dialer is not None:
            self.dialer.cancel()
            self.dialer = None
        if self.exchange is not None:
            self.exchange.abandon()
            self.exchange = None
        self.cache.request_ended(self.plan)  # wakes whoever waited for the URL

    def _timed_out(self) -> None:
        log.info("background revalidation of %s took too long", self.target.url[:200])
        self._end()

    def internal_error(self, exc: BaseException) -> None:
        """A bug in one of the steps' callbacks: log it, give up, keep the stale copy."""
        log.error("internal error revalidating %s", self.target.url[:200], exc_info=exc)
        self._end()

    # -- DialOwner -------------------------------------------------------------------------------

    def dial_resolved(self) -> None:
        """Connecting has begun."""

    def dial_connected(self, attach: Attach, early: bytes) -> None:
        """The origin accepted."""
        self.dialer = None
        if self.done:
            attach(StreamProtocol()).abort()  # ended meanwhile: close the socket, do not leak it
            return
        ctx = self.ctx
        upstream = Upstream(ctx.route.hop_for(self.target), ctx.limits, ctx.pool)
        upstream.transport = attach(upstream)
        self._forward(upstream)

    def dial_failed(self, failure: DialFailure) -> None:
        """Unreachable: the stale copy stays as it is."""
        self.dialer = None
        self._end()

    # -- ExchangeOwner ---------------------------------------------------------------------------

    @property
    def request_complete(self) -> bool:
        """A GET without a body: complete from the start."""
        return True

    def next_body_event(self) -> Data | EndOfMessage | None:
        """There is no request body."""
        return EndOfMessage()

    def pause_client_reading(self) -> None:
        """No client to pause."""

    def send_to_client(self, data: bytes | memoryview) -> None:
        """The answer goes to the cache only (the exchange tees it there)."""

    def client_keeps_alive(self) -> bool:
        """Keeps the origin connection reusable."""
        return True

    def response_head(self, response: Response) -> RelayPlan | None:
        """Refresh, store or give up, as a session's cache step would."""
        outcome = self.cache.on_response_head(self.plan, self.request, self.target, response, None)
        if isinstance(outcome, Refreshed):
            exchange, self.exchange = self.exchange, None
            if exchange is not None:
                exchange.discard_response()
            self._end()
            return None
        if isinstance(outcome, StandIn):
            self._end()  # a 5xx: keep the stale copy
            return None
        assert isinstance(outcome, Tee)
        return RelayPlan(outcome.writer, None)

    def response_finished(self, client_reusable: bool) -> None:
        """The new copy is stored (if it could be)."""
        self.exchange = None
        self._end()

    def origin_failed(self, failure: OriginFailure) -> None:
        """The origin broke: the stale copy stays."""
        self.exchange = None
        self._end()

    def client_sent_garbage(self, error: ProtocolError) -> None:
        """Cannot happen: there is no client."""
        self.exchange = None
        self._end()

    def upgraded(self, upstream: TransportLike, early_down: bytes) -> None:
        """An origin that switches protocols on a revalidation: close it."""
        self.exchange = None
        upstream.abort()
        self._end()

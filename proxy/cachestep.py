"""The cache in the request path: LOOKING_UP_CACHE, WAITING_FOR_CACHE, SERVING_FROM_CACHE.

Theory of operation
-------------------
:mod:`proxy.cache` decides (pure RFC 9111 logic, tested with a fake clock); this module acts on
its decisions for one session:

* **Fresh hit**: serve the stored response with ``Age`` and ``Cache-Status: ...; hit``, without
  touching the origin (``TCP_HIT``); a client's own matching conditional gets ``304``.
* **Stale with validators**: forward with ``If-None-Match``/``If-Modified-Since``. A ``304``
  refreshes the stored headers and the stored body is served (``TCP_REFRESH_UNMODIFIED``); a
  ``200`` replaces it (``TCP_REFRESH_MODIFIED``).
* **Miss**: forward, and tee a storable response into a :class:`~proxy.cache.CacheWriter`
  *while* it streams to the client (``TCP_MISS``); the client never waits for the whole body.
* **Collapsed forwarding**: while one request for a URL is at the origin, identical requests
  wait (WAITING_FOR_CACHE) for it to finish, then look up again, and most become hits. The
  wait is bounded by ``collapse_wait``; after it, or after one wait that ends in another miss,
  a request goes upstream itself.
* **Invalidation**: a successful unsafe request (POST, PUT, DELETE...) drops stored responses
  for its URL and same-origin ``Location``/``Content-Location`` (RFC 9111 section 4.4).

A cached body is written to the client in slices that follow the client's backpressure, so a
slow reader of an 8 MiB object does not pin a private 8 MiB copy in its write buffer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cache import CacheConfig, HttpCache, StoredResponse
from .guard import guarded
from .http11 import Headers, Response, reason_phrase, serialize_response_head
from .target import add_via, strip_hop_by_hop

if TYPE_CHECKING:
    from .app import ProxyContext
    from .forward import Exchange
    from .session import ClientSession

SLICE = 256 * 1024


@dataclass
class CachePlan:
    """What the cache decided for the request a session is serving."""

    url: str
    entry: StoredResponse | None = None
    conditional: Headers | None = None
    leader: bool = False
    waited: bool = False
    request_time: float = 0.0
    wait_timer: Any = None


@dataclass
class _Inflight:
    leader: ClientSession
    waiters: list[ClientSession] = field(default_factory=list)


# Heads kept per entry: a few variants of Connection and Cache-Status within one Age second.
_RENDERED_PER_ENTRY = 8


class CacheStep:
    """Connects :class:`~proxy.cache.HttpCache` to the session state machine."""

    def __init__(self, ctx: ProxyContext, clock: Any = time.time) -> None:
        config = ctx.config
        self.ctx = ctx
        self.clock = clock
        self.cache = HttpCache(
            CacheConfig(max_bytes=config.cache_size, max_object=config.cache_max_object), clock
        )
        self.inflight: dict[str, _Inflight] = {}
        self.hits = 0
        self.misses = 0
        self.revalidations = 0
        self.collapsed = 0

    # -- LOOKING_UP_CACHE ------------------------------------------------------------------------

    def look_up(self, session: ClientSession) -> None:
        """Decide how to answer a GET/HEAD: from the store, after a wait, or from the origin."""
        request, target = session.request, session.target
        assert request is not None and target is not None
        url = target.url
        plan = session.cache_plan
        if plan is None or plan.url != url:
            plan = session.cache_plan = CachePlan(url)
        cache = self.cache
        if not cache.is_cacheable_request(request.method, request.headers):
            session.cache_status = "minireactor; fwd=bypass"
            session.result = "TCP_MISS"
            self.misses += 1
            session.find_upstream("miss")
            return
        found = cache.lookup(request.method, url, request.headers)
        if found.kind == "fresh":
            assert found.entry is not None
            self.hits += 1
            session.fire("fresh_hit")
            ttl = int(found.ttl or 0)
            if found.not_modified:
                self.serve(session, found.entry, f"minireactor; hit; ttl={ttl}", "TCP_IMS_HIT", 304)
            else:
                self.serve(session, found.entry, f"minireactor; hit; ttl={ttl}", "TCP_HIT")
            return
        if found.kind == "only-if-cached-miss":
            self.misses += 1
            session.fire("only_if_cached_miss")
            session.cache_status = "minireactor; fwd=miss; detail=only-if-cached"
            session.answer_error(504, "only-if-cached: the cache holds no usable response")
            return
        flight = self.inflight.get(url)
        if flight is not None and flight.leader is not session and not plan.waited:
            self.collapsed += 1
            plan.waited = True
            flight.waiters.append(session)
            session.fire("fetch_in_progress")
            plan.wait_timer = self.ctx.reactor.call_later(
                self.ctx.config.collapse_wait, self._wait_expired, session
            )
            return
        self.misses += 1
        if found.kind == "stale":
            plan.entry = found.entry
            plan.conditional = found.conditional_headers
            self.revalidations += 1 if plan.conditional is not None else 0
            session.cache_status = f"minireactor; fwd=stale; detail={found.detail or 'stale'}"
        else:
            session.cache_status = f"minireactor; fwd={found.detail or 'uri-miss'}"
        session.result = "TCP_MISS"
        if flight is None and request.method == "GET":
            plan.leader = True
            self.inflight[url] = _Inflight(session)
        session.find_upstream("miss")

    @guarded
    def _wait_expired(self, session: ClientSession) -> None:
        plan = session.cache_plan
        if plan is None or plan.wait_timer is None:
            return
        plan.wait_timer = None
        flight = self.inflight.get(plan.url)
        if flight is not None and session in flight.waiters:
            flight.waiters.remove(session)
        session.fire("wait_expired")
        self.look_up(session)

    def request_ended(self, session: ClientSession) -> None:
        """The session's request is over (answered, failed or abandoned): wake its followers."""
        plan = session.cache_plan
        session.cache_plan = None
        if plan is None:
            return
        if plan.wait_timer is not None:
            plan.wait_timer.cancel()
            plan.wait_timer = None
            flight = self.inflight.get(plan.url)
            if flight is not None and session in flight.waiters:
                flight.waiters.remove(session)
        if plan.leader:
            flight = self.inflight.pop(plan.url, None)
            if flight is not None:
                for waiter in flight.waiters:
                    self.ctx.reactor.call_soon(self._wake, waiter)

    @guarded
    def _wake(self, session: ClientSession) -> None:
        plan = session.cache_plan
        if plan is None or plan.wait_timer is None:
            return
        plan.wait_timer.cancel()
        plan.wait_timer = None
        session.fire("fetch_finished")
        self.look_up(session)

    # -- FORWARDING: the response head decides what the cache does -------------------------------

    def on_response_head(self, exchange: Exchange, response: Response) -> bool:
        """Tee, refresh or invalidate; return True if a 304 refreshed an entry we now serve."""
        session = exchange.session
        request = exchange.request
        url = exchange.target.url
        cache = self.cache
        now = self.clock()
        if request.method not in ("GET", "HEAD"):
            cache.invalidate(request.method, url, response.status, response.headers)
            return False
        plan = session.cache_plan
        if plan is None:
            return False
        if response.status == 304 and plan.entry is not None and plan.conditional is not None:
            entry = cache.freshen(plan.entry, response.headers, plan.request_time or now, now)
            if entry is not None:
                session.fire("not_modified")
                session.cache_status = "minireactor; fwd=stale; fwd-status=304"
                exchange.divert(lambda: self._serve_refreshed(session, entry))
                return True
        if plan.conditional is not None:
            session.result = "TCP_REFRESH_MODIFIED"  # we asked "still the same?" and it was not
        if request.method == "GET":
            writer = cache.begin_store(
                request.method,
                url,
                request.headers,
                response.status,
                response.reason,
                response.headers,
                plan.request_time or now,
                now,
            )
            if writer is not None:
                exchange.cache_writer = writer
                session.cache_status = f"{session.cache_status}; stored"
            else:
                _, why = cache.storable(
                    request.method, url, request.headers, response.status, response.headers
                )
                session.cache_status = f"{session.cache_status}; detail={why}"
        return False

    @guarded
    def _serve_refreshed(self, session: ClientSession, entry: StoredResponse) -> None:
        request = session.request
        assert request is not None
        status = 304 if self.cache.client_not_modified(entry, request.headers) else entry.status
        self.serve(session, entry, session.cache_status or "", "TCP_REFRESH_UNMODIFIED", status)

    # -- SERVING_FROM_CACHE ----------------------------------------------------------------------

    def serve(
        self,
        session: ClientSession,
        entry: StoredResponse,
        cache_status: str,
        result: str,
        status: int | None = None,
    ) -> None:
        """Write a stored response (or a 304 built from it) to the client."""
        request = session.request
        assert request is not None
        status = entry.status if status is None else status
        reusable = session.finish_reading_request() and session.client_keeps_alive()
        if not reusable:
            connection = "close"
        else:
            connection = "keep-alive" if request.version == "HTTP/1.0" else ""
        session.status = status
        session.result = result
        session.send(self._head_for(entry, status, cache_status, connection))
        if request.method == "HEAD" or status == 304 or not entry.body:
            session.finish_request(reusable)
            return
        if len(entry.body) <= SLICE:
            session.send(entry.body)  # small bodies need no pacing
            session.finish_request(reusable)
            return
        sender = BodySender(session, entry.body, reusable)
        session.body_sender = sender
        sender.send_more()

    def _head_for(
        self, entry: StoredResponse, status: int, cache_status: str, connection: str
    ) -> bytes:
        """The serialised head for a hit: built once per Age second, then reused from the entry.

        Everything that decides its bytes is in the key, so a reused head is exactly the one
        that would be built again; a busy entry gets one new head per second.
        """
        age = self.cache.age_seconds(entry)
        key = (status, age, cache_status, connection)
        rendered = entry.rendered
        if rendered is not None:
            head = rendered.get(key)
            if head is not None:
                return head
        if status == 304:
            headers = self.cache.not_modified_headers_for(entry)
        else:
            headers = self.cache.response_headers_for(entry)
        headers = strip_hop_by_hop(headers)
        add_via(headers, "HTTP/1.1", self.ctx.config.via_pseudonym)
        headers.add("Cache-Status", cache_status)
        if connection:
            headers.add("Connection", connection)
        reason = entry.reason if status == entry.status else reason_phrase(status)
        head = serialize_response_head(status, reason, headers)
        if rendered is None or len(rendered) >= _RENDERED_PER_ENTRY:
            rendered = entry.rendered = {}  # older ones name past seconds: drop them
        rendered[key] = head
        return head

    def snapshot(self) -> dict[str, Any]:
        """Numbers for the status page."""
        looked_up = self.hits + self.misses
        return {
            "enabled": True,
            "entries": len(self.cache),
            "bytes": self.cache.size,
            "max_bytes": self.cache.config.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "revalidations": self.revalidations,
            "collapsed": self.collapsed,
            "hit_ratio": round(self.hits / looked_up, 4) if looked_up else 0.0,
        }


class BodySender:
    """Writes a stored body in slices, following the client's backpressure."""

    def __init__(self, session: ClientSession, body: bytes, reusable: bool) -> None:
        self.session = session
        self.body = memoryview(body)
        self.offset = 0
        self.paused = False
        self.reusable = reusable

    def client_paused(self, paused: bool) -> None:
        """The client's write buffer crossed a water mark."""
        self.paused = paused
        if not paused:
            self.send_more()

    def send_more(self) -> None:
        """Write slices until the client pushes back or the body is done."""
        session = self.session
        while not self.paused and self.offset < len(self.body):
            piece = self.body[self.offset : self.offset + SLICE]
            self.offset += len(piece)
            session.send(piece)
            if session.transport is None or session.transport.is_closing:
                return
        if self.offset >= len(self.body) and session.body_sender is self:
            session.body_sender = None
            session.finish_request(self.reusable)

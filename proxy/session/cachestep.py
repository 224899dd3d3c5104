"""The cache in the request path: LOOKING_UP_CACHE, WAITING_FOR_CACHE, SERVING_FROM_CACHE.

Theory of operation
-------------------
:mod:`proxy.cache` decides (pure RFC 9111 logic, tested with a fake clock); this step turns its
decisions into answers the session acts on, one value per outcome:

* **Fresh hit** (:class:`Hit`): serve the stored response with ``Age`` and
  ``Cache-Status: ...; hit``, without touching the origin (``TCP_HIT``); a client's own
  matching conditional gets ``304`` (``TCP_IMS_HIT``).
* **Stale with validators**: forward with ``If-None-Match``/``If-Modified-Since``
  (:class:`Miss` carries them in the :class:`CachePlan`). A ``304`` refreshes the stored
  headers (:class:`Refreshed`) and the stored body is served (``TCP_REFRESH_UNMODIFIED``); a
  ``200`` replaces it (``TCP_REFRESH_MODIFIED``).
* **Miss**: forward, and tee a storable response into a :class:`~proxy.cache.CacheWriter`
  *while* it streams to the client (:class:`Tee`, ``TCP_MISS``); the client never waits for
  the whole body.
* **Collapsed forwarding**: while one request for a URL is at the origin, identical requests
  wait (:class:`Wait`, then :meth:`CacheWaiter.cache_wait_over`) for it to finish and look up
  again; most become hits. The wait is bounded by ``collapse_wait``; after it, or after one wait
  that ends in another miss, a request goes upstream itself.
* **Invalidation**: a successful unsafe request (POST, PUT, DELETE...) drops stored responses
  for its URL and same-origin ``Location``/``Content-Location`` (RFC 9111 section 4.4).

A cached body is written to the client in slices that follow the client's backpressure
(:class:`BodySender`), so a slow reader of an 8 MiB object does not pin a private 8 MiB copy in
its write buffer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from minireactor import Handle, TimerHandle

from ..cache import SAFE_METHODS, CacheConfig, HttpCache, StoredAnswer
from ..cache.ranges import RangeAnswer
from ..cache.store import StoredResponse
from ..cache.writer import CacheWriter
from ..config import Config
from ..http11 import Headers, Request, Response, reason_phrase, serialize_response_head
from ..target import Target, add_via, strip_hop_by_hop
from .context import Scheduler

SLICE = 256 * 1024
"""Bytes of a stored body written per turn; a body no longer than this goes out at once."""

# Heads kept per entry: a few variants of Connection and Cache-Status within one Age second.
_RENDERED_PER_ENTRY = 8


class DiskTier(Protocol):
    """The persistent store behind the memory one (:class:`proxy.diskcache.DiskCache`): it
    works on its own thread and answers on the loop."""

    def select(
        self,
        url: str,
        request_headers: Headers,
        callback: Callable[[StoredResponse | None, str], None],
    ) -> Handle:
        """Look *url* up; *callback* gets the entry (or None) and why not, on the loop."""
        ...

    def put(self, entry: StoredResponse, callback: Callable[[bool], None] | None = None) -> bool:
        """Keep a copy of *entry* (queued; False if shed)."""
        ...

    def update(self, entry: StoredResponse) -> None:
        """*entry*'s header fields and times changed (a revalidation freshened it)."""
        ...

    def remove(self, entry: StoredResponse) -> None:
        """Forget *entry*."""
        ...

    def invalidate(
        self,
        url: str,
        response_headers: Headers,
        callback: Callable[[int], None] | None = None,
    ) -> None:
        """Forget *url* and the same-origin URLs an unsafe request's response names."""
        ...


class CacheWaiter(Protocol):
    """A session waiting in WAITING_FOR_CACHE for an identical fetch."""

    def cache_wait_over(self, expired: bool) -> None:
        """Look up again: the fetch finished, or (*expired*) the wait was long enough."""
        ...

    def cache_lookup_ready(self) -> None:
        """The disk tier answered (what it found is now in memory): look up again."""
        ...


@dataclass(eq=False)
class CachePlan:
    """What the cache knows about the request one session is serving; kept by the session."""

    url: str
    waiter: CacheWaiter
    entry: StoredResponse | None = None
    """The stale response being revalidated."""
    conditional: Headers | None = None
    """Validators to send with the forwarded request, replacing the client's own."""
    leader: bool = False
    """This request is the one at the origin that identical requests wait for."""
    waited: bool = False
    request_time: float = 0.0
    wait_timer: TimerHandle | None = None
    disk_asked: bool = False
    """The disk tier was asked already (once per request is enough)."""
    disk_lookup: Handle | None = None


class Hit(NamedTuple):
    """Serve *entry* (or a ``304`` built from it, when *status* says so)."""

    entry: StoredResponse
    status: int
    cache_status: str
    result: str


class Wait(NamedTuple):
    """An identical request is at the origin: wait for it."""


class OnlyIfCachedMiss(NamedTuple):
    """``only-if-cached`` and nothing usable is stored: answer 504."""

    cache_status: str


class Miss(NamedTuple):
    """Go to the origin (with the plan's validators, when revalidating)."""

    cache_status: str
    result: str


class StaleHit(NamedTuple):
    """Serve the stale *answer* now (``stale-while-revalidate``); with *revalidate* set,
    start the one background revalidation of the URL with those validators."""

    answer: StoredAnswer
    revalidate: Headers | None


class AskingDisk(NamedTuple):
    """Not in memory: the disk tier is looking; :meth:`CacheWaiter.cache_lookup_ready` follows."""


LookupOutcome = Hit | StaleHit | Wait | AskingDisk | OnlyIfCachedMiss | Miss


class Refreshed(NamedTuple):
    """A ``304`` confirmed the stored response: serve it (as *status*) instead of relaying."""

    entry: StoredResponse
    status: int
    cache_status: str
    result: str


class Tee(NamedTuple):
    """Relay the response, teeing it into *writer* when there is one."""

    writer: CacheWriter | None
    cache_status: str | None
    result: str | None
    """A new result code for the access log, or None to keep the session's."""


class StandIn(NamedTuple):
    """The origin failed (a 5xx here): serve this stored answer instead (stale-if-error)."""

    answer: StoredAnswer


HeadOutcome = Refreshed | Tee | StandIn


@dataclass(eq=False)
class _Inflight:
    leader: CachePlan
    waiters: list[CachePlan] = field(default_factory=list)


class CacheStep:
    """Connects :class:`~proxy.cache.HttpCache` to the sessions of one proxy."""

    def __init__(
        self,
        scheduler: Scheduler,
        config: Config,
        clock: Callable[[], float] = time.time,
        disk: DiskTier | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.collapse_wait = config.collapse_wait
        # The cache's name in Cache-Status (RFC 9211) and in Via: one name, so that two chained
        # instances (with different --via-name) can be told apart in one field.
        self.name = name = config.via_pseudonym
        self.cache = HttpCache(
            CacheConfig(
                max_bytes=config.cache_size,
                max_object=config.cache_max_object,
                max_stale=config.max_stale,
                cache_name=name,
            ),
            clock,
        )
        self.disk = disk
        """The persistent tier behind the memory store (``--cache-dir``), or None."""
        self.inflight: dict[str, _Inflight] = {}
        self.hits = 0
        self.misses = 0
        self.revalidations = 0
        self.collapsed = 0
        self.stale_served = 0
        self.disk_hits = 0

    # -- LOOKING_UP_CACHE ------------------------------------------------------------------------

    def look_up(self, plan: CachePlan, request: Request) -> LookupOutcome:
        """Decide how to answer a GET/HEAD: from the store, after a wait, or from the origin."""
        url = plan.url
        cache = self.cache
        if not cache.is_cacheable_request(request.method, request.headers):
            self.misses += 1
            return Miss(f"{self.name}; fwd=bypass", "TCP_MISS")
        found = cache.lookup(request.method, url, request.headers)
        if found.kind == "fresh":
            assert found.entry is not None
            self.hits += 1
            cache_status = f"{self.name}; hit; ttl={int(found.ttl or 0)}"
            if found.not_modified:
                return Hit(found.entry, 304, cache_status, "TCP_IMS_HIT")
            return Hit(found.entry, found.entry.status, cache_status, "TCP_HIT")
        if found.kind in ("miss", "only-if-cached-miss") and self.disk and not plan.disk_asked:
            # Not in memory: perhaps on disk (stored by another worker, or before a restart).
            # The disk answers on its thread; what it finds joins the memory store first.
            plan.disk_asked = True
            plan.disk_lookup = self.disk.select(
                url, request.headers, lambda entry, _why: self._disk_answered(plan, entry)
            )
            return AskingDisk()
        if found.kind == "only-if-cached-miss":
            self.misses += 1
            return OnlyIfCachedMiss(f"{self.name}; fwd=miss; detail=only-if-cached")
        flight = self.inflight.get(url)
        if found.kind == "stale":
            answer = cache.serve_while_revalidating(found, request.headers)
            if answer is not None:
                # RFC 5861 section 3: the client gets the stored copy at once; one request per
                # URL revalidates it in the background (none if one is already on its way).
                self.stale_served += 1
                self.hits += 1
                revalidate = None
                if flight is None and request.method == "GET":
                    revalidate = found.conditional_headers or Headers()
                return StaleHit(answer, revalidate)
        if flight is not None and flight.leader is not plan and not plan.waited:
            self.collapsed += 1
            plan.waited = True
            flight.waiters.append(plan)
            plan.wait_timer = self.scheduler.call_later(self.collapse_wait, self._wake, plan, True)
            return Wait()
        self.misses += 1
        if found.kind == "stale":
            plan.entry = found.entry
            plan.conditional = found.conditional_headers
            if plan.conditional is not None:
                self.revalidations += 1
            if found.detail == "request":
                # Usable but for the request's own directives (no-cache, max-age=0...).
                cache_status = f"{self.name}; fwd=request"
            else:
                cache_status = f"{self.name}; fwd=stale; detail={found.detail or 'stale'}"
        else:
            cache_status = f"{self.name}; fwd={found.detail or 'uri-miss'}"
        if flight is None and request.method == "GET":
            self.lead(plan)
        return Miss(cache_status, "TCP_MISS")

    def lead(self, plan: CachePlan) -> None:
        """Make *plan*'s request the one at the origin that identical requests wait for."""
        plan.leader = True
        self.inflight[plan.url] = _Inflight(plan)

    def _disk_answered(self, plan: CachePlan, entry: StoredResponse | None) -> None:
        plan.disk_lookup = None
        if entry is not None and self.cache.adopt(entry):
            self.disk_hits += 1
        plan.waiter.cache_lookup_ready()

    def abandon_disk_lookup(self, plan: CachePlan) -> None:
        """Stop waiting for *plan*'s disk look-up: its answer, if it ever comes, is dropped."""
        if plan.disk_lookup is not None:
            plan.disk_lookup.cancel()
            plan.disk_lookup = None

    def request_ended(self, plan: CachePlan) -> None:
        """The request is over (answered, failed or abandoned): wake the ones waiting for it."""
        self.abandon_disk_lookup(plan)
        if plan.wait_timer is not None:
            plan.wait_timer.cancel()
            plan.wait_timer = None
            flight = self.inflight.get(plan.url)
            if flight is not None and plan in flight.waiters:
                flight.waiters.remove(plan)
        if plan.leader:
            plan.leader = False
            flight = self.inflight.pop(plan.url, None)
            if flight is not None:
                for waiter in flight.waiters:
                    self.scheduler.call_soon(self._wake, waiter, False)

    def _wake(self, plan: CachePlan, expired: bool) -> None:
        if plan.wait_timer is None:
            return  # already woken, or its request ended
        plan.wait_timer.cancel()
        plan.wait_timer = None
        if expired:
            flight = self.inflight.get(plan.url)
            if flight is not None and plan in flight.waiters:
                flight.waiters.remove(plan)
        plan.waiter.cache_wait_over(expired)

    def stand_in(self, plan: CachePlan | None, request: Request) -> StoredAnswer | None:
        """A stored answer for a request whose origin failed before its head (stale-if-error).

        For the request's stale entry, when one was being revalidated and may still serve.
        """
        if plan is None or plan.entry is None:
            return None
        answer = self.cache.serve_stale_on_error(plan.entry, request.headers, None)
        if answer is not None:
            self.stale_served += 1
        return answer

    def stood_in(self) -> None:
        """A client was served the stale copy of a :class:`StandIn` (a background
        revalidation that meets a 5xx keeps the copy but serves nobody, so is not counted)."""
        self.stale_served += 1

    # -- FORWARDING: the response head decides what the cache does -------------------------------

    def on_response_head(
        self,
        plan: CachePlan | None,
        request: Request,
        target: Target,
        response: Response,
        cache_status: str | None,
    ) -> HeadOutcome:
        """Tee, refresh, stand in or invalidate, for the head that answered *request*."""
        cache = self.cache
        url = target.url
        now = self.clock()
        if request.method not in ("GET", "HEAD"):
            cache.invalidate(request.method, url, response.status, response.headers)
            # As the memory tier does (RFC 9111 section 4.4): only unsafe methods invalidate.
            if (
                self.disk is not None
                and request.method not in SAFE_METHODS
                and 200 <= response.status < 400
            ):
                self.disk.invalidate(url, response.headers)
            return Tee(None, cache_status, None)
        if plan is None:
            return Tee(None, cache_status, None)
        request_time = plan.request_time or now
        entry = plan.entry
        if response.status == 304 and entry is not None and plan.conditional is not None:
            # Never relay this 304: the client may have asked unconditionally (RFC 9110
            # section 15.4.5); the stored response, freshened, answers.
            answer = cache.revalidated(entry, response.headers, request.headers, request_time, now)
            if self.disk is not None:
                if answer.updated:
                    self.disk.update(answer.entry)
                else:
                    self.disk.remove(answer.entry)
            return Refreshed(
                answer.entry, answer.status, answer.cache_status, "TCP_REFRESH_UNMODIFIED"
            )
        if entry is not None and response.status >= 500:
            # Before begin_store: a 5xx must never replace the good copy (RFC 5861 section 4).
            stood_in = cache.serve_stale_on_error(entry, request.headers, response.status)
            if stood_in is not None:
                return StandIn(stood_in)  # counted by stood_in(), if a client gets it
        # We asked "still the same?" and it was not.
        result = "TCP_REFRESH_MODIFIED" if plan.conditional is not None else None
        if request.method != "GET":
            return Tee(None, cache_status, result)
        writer = cache.begin_store(
            request.method,
            url,
            request.headers,
            response.status,
            response.reason,
            response.headers,
            request_time,
            now,
        )
        if writer is not None:
            if self.disk is not None:
                writer.on_commit = self._keep_on_disk
            return Tee(writer, f"{cache_status}; stored", result)
        _, why = cache.storable(
            request.method, url, request.headers, response.status, response.headers
        )
        return Tee(None, _with_detail(cache_status, why), result)

    # -- SERVING_FROM_CACHE ----------------------------------------------------------------------

    def head_for(
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
        add_via(headers, "HTTP/1.1", self.name)
        headers.add("Cache-Status", cache_status)
        if connection:
            headers.add("Connection", connection)
        reason = entry.reason if status == entry.status else reason_phrase(status)
        head = serialize_response_head(status, reason, headers)
        if rendered is None or len(rendered) >= _RENDERED_PER_ENTRY:
            rendered = entry.rendered = {}  # older ones name past seconds: drop them
        rendered[key] = head
        return head

    def _keep_on_disk(self, entry: StoredResponse) -> None:
        # A copy that only stands in on an origin error is stored again by every request for
        # it: one fsync per page view would buy the disk nothing a restart needs.
        if self.disk is None or self.cache.only_stands_in(entry):
            return
        self.disk.put(entry)  # queued for the disk's thread; shed if too much is queued

    def range_head(
        self, entry: StoredResponse, answer: RangeAnswer, cache_status: str, connection: str
    ) -> bytes:
        """The head of a ``206`` cut from a stored response (built each time: rare)."""
        headers = strip_hop_by_hop(answer.head_fields(self.cache.response_headers_for(entry)))
        add_via(headers, "HTTP/1.1", self.name)
        headers.add("Cache-Status", cache_status)
        if connection:
            headers.add("Connection", connection)
        return serialize_response_head(answer.status, reason_phrase(answer.status), headers)

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
            "stale_served": self.stale_served,
            "disk": self.disk is not None,
            "disk_hits": self.disk_hits,
            "hit_ratio": round(self.hits / looked_up, 4) if looked_up else 0.0,
        }


class BodySink(Protocol):
    """Where a :class:`BodySender` writes: the client, through its session."""

    def send_to_client(self, data: bytes | memoryview) -> None:
        """Write bytes to the client."""
        ...

    @property
    def client_closing(self) -> bool:
        """Whether the client connection is closing (nothing more can be sent)."""
        ...

    def stored_body_sent(self, reusable: bool) -> None:
        """The whole body has been written; *reusable* as the sender was told."""
        ...


class BodySender:
    """Writes a stored body in slices, following the client's backpressure."""

    __slots__ = ("sink", "body", "offset", "paused", "reusable")

    def __init__(self, sink: BodySink, body: bytes | memoryview, reusable: bool) -> None:
        self.sink = sink
        self.body = memoryview(body)
        self.offset = 0
        self.paused = False
        self.reusable = reusable
        """Whether the client connection may carry another request once the body is sent."""

    def client_paused(self, paused: bool) -> None:
        """The client's write buffer crossed a water mark."""
        self.paused = paused
        if not paused:
            self.send_more()

    def send_more(self) -> None:
        """Write slices until the client pushes back or the body is done."""
        sink = self.sink
        while not self.paused and self.offset < len(self.body):
            piece = self.body[self.offset : self.offset + SLICE]
            self.offset += len(piece)
            sink.send_to_client(piece)
            if sink.client_closing:
                return
        if self.offset >= len(self.body):
            sink.stored_body_sent(self.reusable)


def _with_detail(cache_status: str | None, why: str) -> str:
    """*cache_status* with its ``detail`` saying *why* (RFC 9211 allows one detail per field).

    Why a response was not stored says more than why it was fetched, so it wins.
    """
    kept = [p for p in (cache_status or "").split("; ") if p and not p.startswith("detail=")]
    return "; ".join([*kept, f"detail={why}"])

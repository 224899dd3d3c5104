"""A shared HTTP cache (RFC 9111) with no I/O: the proxy asks, the cache answers.

Theory of operation: the proxy's session drives the cache with plain values and never hands it
a socket, so every rule can be tested from header fields and a fake clock.

1. **Look up** (RFC 9111 section 4): for a ``GET`` or ``HEAD``, :meth:`HttpCache.lookup` finds
   the variant stored for the URL and the request's ``Vary`` values (section 4.1), computes its
   freshness lifetime and current age (section 4.2), and weighs the directives of both messages
   (section 5.2). The answer is a :class:`Lookup`: ``fresh`` (serve it, or a ``304`` when the
   client's own validators match, section 4.3.2), ``stale`` (forward, adding the validators of
   section 4.3.1 when there are any), ``miss``, or ``only-if-cached-miss`` (answer ``504``,
   section 5.2.1.7).
2. **Revalidate** (section 4.3.3): a ``304`` from the origin goes to :meth:`HttpCache.freshen`,
   which updates the stored header fields and times (section 4.3.4); any other response replaces
   the stored one through the next step.
3. **Store** (section 3): :meth:`HttpCache.begin_store` checks whether the response may be
   stored and returns a :class:`~proxy.cache.writer.CacheWriter`; the proxy tees each body chunk
   into it while relaying, and only :meth:`~proxy.cache.writer.CacheWriter.finish` on a complete
   body commits it (section 3.3: incomplete responses are not reused). Bodies over
   ``max_object`` are dropped while they stream.
4. **Invalidate** (section 4.4): a successful unsafe request (``POST``, ``PUT``, ...) removes the
   stored responses for its URL, and for same-origin ``Location``/``Content-Location``.
5. **Serve stale** (section 4.2.4, RFC 5861): a ``stale`` :class:`Lookup` also says whether the
   entry may stand in if the origin fails (``stale_on_error``, then
   :meth:`HttpCache.serve_stale_on_error`) or may be served at once while a background
   request revalidates it (``stale_while_revalidate``, then
   :meth:`HttpCache.serve_while_revalidating`). The rules are in ``proxy.cache.stale``.

Every way of answering from the store ends in a :class:`StoredAnswer`: the entry, the status
to send (the entry's, or ``304`` when the client's own validators match) and the
``Cache-Status`` value, so the proxy serves a revalidated, a stale and a fresh response alike.

The rules live in :mod:`~proxy.cache.directives` (field syntax), :mod:`~proxy.cache.freshness`
(storability, lifetime, age, reuse), :mod:`~proxy.cache.validation` (validators and header
updates), ``proxy.cache.stale`` (stale serving), ``proxy.cache.ranges`` (``206``
from a stored body) and :mod:`~proxy.cache.store` (cache keys, ``Vary`` and the LRU); this
module wires them. ``proxy.cache.disk`` keeps the same entries on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.cache import freshness, stale, validation
from proxy.cache.directives import DELTA_SECONDS_MAX, CacheControl
from proxy.cache.store import CacheStore, StoredResponse, normalize_url
from proxy.cache.writer import CacheWriter
from proxy.http11.headers import Headers

# Only what this module defines: the re-exported names (``CacheWriter``, ``StoredResponse``,
# ``normalize_url``) are documented in their own modules, so autodoc lists them once.
__all__ = ["CacheConfig", "HttpCache", "Lookup", "StoredAnswer"]

#: Methods that never invalidate (RFC 9110 section 9.2.1); every other one does (section 4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True)
class CacheConfig:
    """Tuning knobs of :class:`HttpCache`.

    :ivar max_bytes: total budget of the store; least recently used entries go first.
    :ivar max_object: largest body stored; bigger ones are relayed but not kept.
    :ivar heuristic_fraction: share of the time since ``Last-Modified`` used as a heuristic
        freshness lifetime (RFC 9111 section 4.2.2 suggests 10 %).
    :ivar heuristic_cap: upper bound of a heuristic lifetime, in seconds.
    :ivar max_stale: how stale, in seconds, a stored response may be when it is served
        because the origin failed or under ``stale-while-revalidate``; ``0`` turns stale
        serving off (see ``proxy.cache.stale`` for the default's reasoning). While it is
        above zero, responses that may be stored but come with no lifetime and no validator
        are kept too (stale at once), because an origin failure is the one time they serve.
    :ivar cache_name: the cache's identifier in ``Cache-Status`` (RFC 9211 section 2).
    """

    max_bytes: int = 64 * 2**20
    max_object: int = 8 * 2**20
    heuristic_fraction: float = 0.1
    heuristic_cap: float = 86400.0
    max_stale: float = stale.DEFAULT_MAX_STALE
    cache_name: str = "minireactor"


@dataclass(frozen=True)
class Lookup:
    """The result of :meth:`HttpCache.lookup`.

    :ivar kind: ``"fresh"`` (serve *entry*), ``"stale"`` (forward, with *conditional_headers*
        if any), ``"miss"`` (forward) or ``"only-if-cached-miss"`` (answer ``504``).
    :ivar entry: the selected stored response, for ``fresh`` and ``stale``.
    :ivar conditional_headers: for ``stale``: ``If-None-Match``/``If-Modified-Since`` to set on
        the forwarded request, replacing the client's own; ``None`` when there is no validator.
    :ivar not_modified: for ``fresh``: the client's own conditional request is satisfied, so the
        answer is ``304 Not Modified``.
    :ivar detail: why it is not a plain hit, as a ``Cache-Status`` token (RFC 9211):
        ``uri-miss``, ``vary-miss``, ``method``, ``request`` (the client's directives) or
        ``stale``; empty for ``fresh``.
    :ivar ttl: freshness lifetime minus current age in seconds (negative when stale), for the
        ``Cache-Status`` ``ttl`` parameter; ``None`` without an entry.
    :ivar stale_on_error: for ``stale``: the entry may answer the request if the origin fails
        (RFC 9111 section 4.2.4, RFC 5861 ``stale-if-error``), as judged at look-up time;
        :meth:`HttpCache.serve_stale_on_error` judges again when the failure happens.
    :ivar stale_while_revalidate: for ``stale``: the entry may be served at once while the
        cache revalidates it in the background (RFC 5861 ``stale-while-revalidate``).
    """

    kind: str
    entry: StoredResponse | None = None
    conditional_headers: Headers | None = None
    not_modified: bool = False
    detail: str = ""
    ttl: float | None = None
    stale_on_error: bool = False
    stale_while_revalidate: bool = False


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A stored response chosen to answer one request, and how to send it.

    :ivar entry: the stored response whose head (with ``Age``) and body are served.
    :ivar status: ``entry.status``, or ``304`` when the client's own ``If-None-Match`` or
        ``If-Modified-Since`` matches it (RFC 9111 section 4.3.2).
    :ivar cache_status: the ``Cache-Status`` value to send (RFC 9211).
    :ivar updated: for a revalidation: whether the origin's ``304`` freshened the stored entry
        (``False`` when its validator selected no stored response, RFC 9111 section 4.3.4).
    """

    entry: StoredResponse
    status: int
    cache_status: str
    updated: bool = True


class HttpCache:
    """The facade the proxy calls: look-up, storage, revalidation and invalidation.

    :param config: size limits and heuristic parameters.
    :param clock: returns the current time as a POSIX timestamp; tests pass a fake one.
    """

    def __init__(
        self, config: CacheConfig = CacheConfig(), clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.clock = clock
        self._store = CacheStore(config.max_bytes)

    def __len__(self) -> int:
        return len(self._store)

    @property
    def size(self) -> int:
        """Approximate bytes held by the stored responses."""
        return self._store.size

    def clear(self) -> None:
        """Drop every stored response."""
        self._store.clear()

    def is_cacheable_request(self, method: str, request_headers: Headers) -> bool:
        """Tell whether a request takes part in caching: ``GET``/``HEAD`` without ``no-store``.

        ``HEAD`` is answered from a stored ``GET`` response. A request with ``no-store``
        (RFC 9111 section 5.2.1.5) bypasses the cache altogether.
        """
        if method.upper() not in ("GET", "HEAD"):
            return False
        return "no-store" not in CacheControl.from_headers(request_headers)

    def lookup(self, method: str, url: str, request_headers: Headers) -> Lookup:
        """Find a stored response for a request and say how it may be used (RFC 9111 §4)."""
        if method.upper() not in ("GET", "HEAD"):
            return Lookup("miss", detail="method")
        request_cc = freshness.request_directives(request_headers)
        entry, detail = self._store.select(normalize_url(url), request_headers)
        if entry is None:
            kind = "only-if-cached-miss" if "only-if-cached" in request_cc else "miss"
            return Lookup(kind, detail=detail)
        self._store.touch(entry)
        lifetime, _, response_cc = self._judge(entry)
        age = self.current_age(entry)
        reusable, why = freshness.reuse_verdict(request_cc, response_cc, lifetime, age)
        if reusable:
            not_modified = self.client_not_modified(entry, request_headers)
            return Lookup("fresh", entry, not_modified=not_modified, ttl=lifetime - age)
        if "only-if-cached" in request_cc:
            return Lookup("only-if-cached-miss", detail=why)
        conditions = validation.conditional_headers(entry.headers)
        permission = stale.stale_permission(
            request_cc, response_cc, lifetime, age, self.config.max_stale
        )
        return Lookup(
            "stale",
            entry,
            conditional_headers=conditions,
            detail=why,
            ttl=lifetime - age,
            stale_on_error=permission.on_error,
            stale_while_revalidate=permission.while_revalidating,
        )

    def serve_while_revalidating(
        self, found: Lookup, request_headers: Headers
    ) -> StoredAnswer | None:
        """The answer for a ``stale`` look-up that may be served at once (RFC 5861 §3).

        ``None`` unless ``found.stale_while_revalidate``. The proxy sends the answer and
        revalidates *found.entry* in the background (one request per URL), with
        ``found.conditional_headers``.
        """
        entry = found.entry
        if not found.stale_while_revalidate or entry is None:
            return None
        status = 304 if self.client_not_modified(entry, request_headers) else entry.status
        ttl = found.ttl if found.ttl is not None else 0.0
        return StoredAnswer(
            entry, status, stale.revalidating_cache_status(ttl, self.config.cache_name)
        )

    def serve_stale_on_error(
        self, entry: StoredResponse, request_headers: Headers, fwd_status: int | None
    ) -> StoredAnswer | None:
        """The answer when the origin failed and *entry* may stand in (RFC 9111 §4.2.4).

        :param entry: the stale entry the request was forwarded to revalidate or replace.
        :param request_headers: the client's request header fields.
        :param fwd_status: the origin's status code, or ``None`` when no response head came
            (connection refused or timed out, reset or closed before the head, no first byte
            in time). Only ``None`` and ``500``/``502``/``503``/``504`` let a stale response
            stand in (RFC 5861 section 4).
        :returns: ``None`` when the error must reach the client: another status, a directive
            forbids it, or the entry is now staler than allowed (the age is taken now, not at
            look-up, since connecting may have taken seconds).
        """
        if not stale.is_origin_error(fwd_status):
            return None
        lifetime, _, response_cc = self._judge(entry)
        age = self.current_age(entry)
        request_cc = freshness.request_directives(request_headers)
        permission = stale.stale_permission(
            request_cc, response_cc, lifetime, age, self.config.max_stale
        )
        if not permission.on_error:
            return None
        self._store.touch(entry)
        status = 304 if self.client_not_modified(entry, request_headers) else entry.status
        cache_status = stale.error_cache_status(lifetime - age, fwd_status, self.config.cache_name)
        return StoredAnswer(entry, status, cache_status)

    def storable(
        self,
        method: str,
        url: str,
        request_headers: Headers,
        status: int,
        response_headers: Headers,
    ) -> tuple[bool, str]:
        """Decide whether a response may be stored (RFC 9111 section 3).

        See :func:`proxy.cache.freshness.storable` for the rules and the reason tokens.
        """
        return freshness.storable(
            method,
            status,
            request_headers,
            response_headers,
            self.config.max_object,
            keep_without_lifetime=self.config.max_stale > 0,
        )

    def begin_store(
        self,
        method: str,
        url: str,
        request_headers: Headers,
        status: int,
        reason: str,
        response_headers: Headers,
        request_time: float,
        response_time: float,
    ) -> CacheWriter | None:
        """Start storing a response; ``None`` when it may not be stored.

        :param request_time: when the request was sent upstream (RFC 9111 section 4.2.3).
        :param response_time: when the response head arrived.
        """
        ok, _ = self.storable(method, url, request_headers, status, response_headers)
        if not ok:
            return None
        entry = StoredResponse.for_response(
            normalize_url(url), status, reason, response_headers, request_headers,
            request_time, response_time,
        )  # fmt: skip
        return CacheWriter.for_response(self._store, entry, response_headers, self.config)

    def freshen(
        self,
        entry: StoredResponse,
        response_304_headers: Headers,
        request_time: float,
        response_time: float,
    ) -> StoredResponse | None:
        """Update a stored response from a ``304 Not Modified`` (RFC 9111 section 4.3.4).

        The 304's fields replace the stored ones (except ``Content-Length``), and its times
        become the entry's, so the age starts again from the 304's ``Date`` and ``Age``.

        :returns: the updated entry (the same object, updated in place); or ``None`` when the
            304's validator does not select this entry (another ``ETag``): the entry is then
            dropped and the proxy should fetch the resource again without validators.
        """
        if not validation.validator_selects(entry.headers, response_304_headers):
            self._store.remove(entry)
            return None
        entry.headers = validation.freshened_fields(
            entry.headers, response_304_headers, response_time
        )
        entry.judgement = None
        entry.rendered = None
        entry.request_time = request_time
        entry.response_time = response_time
        self._store.resize(entry)
        self._store.touch(entry)
        return entry

    def revalidated(
        self,
        entry: StoredResponse,
        response_304_headers: Headers,
        request_headers: Headers,
        request_time: float,
        response_time: float,
    ) -> StoredAnswer:
        """Answer a request whose revalidation of *entry* got ``304 Not Modified``.

        For every 304 that answered the validators this cache sent for *entry*: never relay
        it, since an unconditional client must get the stored ``200`` (RFC 9110 §15.4.5,
        RFC 9111 §4.3.3); the status is ``304`` only when the client's own validators match.
        A 304 that selects *entry* freshens it (:meth:`freshen`, ``updated``). One that does
        not (another strong ``ETag``) may not update it (§4.3.4), but it still said "not
        modified" to validators taken from *entry*: *entry* answers this request as it is and
        leaves the store, so the next request fetches a copy the origin's validators fit.
        """
        freshened = self.freshen(entry, response_304_headers, request_time, response_time)
        name = self.config.cache_name
        if freshened is None:
            cache_status = f"{name}; fwd=stale; fwd-status=304; detail=validator-mismatch"
        else:
            cache_status = f"{name}; fwd=stale; fwd-status=304"
        status = 304 if self.client_not_modified(entry, request_headers) else entry.status
        return StoredAnswer(entry, status, cache_status, updated=freshened is not None)

    def adopt(self, entry: StoredResponse) -> bool:
        """Put an entry found elsewhere (the disk store) into the memory store, as stored.

        Its ``Vary`` key, times and header fields are kept; it replaces the variant with the
        same key, as a new store would. :returns: ``False`` when it is too big to keep.
        """
        entry.judgement = None
        entry.rendered = None
        entry.size = entry.compute_size()
        return self._store.put(entry)

    def _judge(self, entry: StoredResponse) -> tuple[float, float, CacheControl]:
        """Lifetime, corrected initial age and directives of *entry*, computed once."""
        if entry.judgement is None:
            lifetime = freshness.freshness_lifetime(
                entry.status,
                entry.headers,
                entry.response_time,
                self.config.heuristic_fraction,
                self.config.heuristic_cap,
            )
            # At now == response_time the resident time is zero: what is left is the
            # corrected initial age, fixed for the life of the entry (section 4.2.3).
            initial_age = freshness.current_age(
                entry.headers, entry.request_time, entry.response_time, entry.response_time
            )
            entry.judgement = (lifetime, initial_age, CacheControl.from_headers(entry.headers))
        lifetime, initial_age, directives = entry.judgement
        return lifetime, initial_age, directives  # type: ignore[return-value]

    def current_age(self, entry: StoredResponse) -> float:
        """Current age of *entry* in seconds, now (RFC 9111 section 4.2.3)."""
        _, initial_age, _ = self._judge(entry)
        return initial_age + (self.clock() - entry.response_time)

    def freshness_lifetime(self, entry: StoredResponse) -> float:
        """Freshness lifetime of *entry* in seconds (RFC 9111 section 4.2.1)."""
        return self._judge(entry)[0]

    def only_stands_in(self, entry: StoredResponse) -> bool:
        """Whether *entry* can never be reused nor revalidated: no freshness lifetime and no
        validator (``ETag``, ``Last-Modified``). Such a copy is kept only to stand in when the
        origin fails (section 4.2.4), and is stored again by every request for it."""
        headers = entry.headers
        return (
            self.freshness_lifetime(entry) <= 0
            and "ETag" not in headers
            and "Last-Modified" not in headers
        )

    def response_headers_for(self, entry: StoredResponse, hit_detail: str = "") -> Headers:
        """Header fields for serving *entry*: a copy with ``Age`` set (RFC 9111 section 5.1).

        *hit_detail* is ignored: the proxy writes ``Cache-Status`` itself.
        """
        headers = entry.headers.copy()
        headers.set("Age", str(self.age_seconds(entry)))
        return headers

    def not_modified_headers_for(self, entry: StoredResponse) -> Headers:
        """Header fields for a ``304`` answered from *entry*, with ``Age`` (RFC 9110 §15.4.5)."""
        headers = validation.not_modified_fields(entry.headers)
        headers.set("Age", str(self.age_seconds(entry)))
        return headers

    def client_not_modified(self, entry: StoredResponse, request_headers: Headers) -> bool:
        """Tell whether the client's own ``If-None-Match``/``If-Modified-Since`` match *entry*.

        :meth:`lookup` already reports this as ``Lookup.not_modified``; call it again after
        :meth:`freshen` to choose between ``200`` and ``304`` for the client (RFC 9111 §4.3.2).
        """
        return validation.client_not_modified(
            entry.status, entry.headers, entry.response_time, request_headers
        )

    def invalidate(self, method: str, url: str, status: int, response_headers: Headers) -> int:
        """Drop stored responses made obsolete by an unsafe request (RFC 9111 section 4.4).

        Applies to any method but ``GET``, ``HEAD``, ``OPTIONS`` and ``TRACE`` with a
        non-error (2xx or 3xx) status: the target URI is invalidated, and so are the URIs in
        ``Location`` and ``Content-Location`` when they share its origin.

        :returns: the number of stored variants dropped.
        """
        if method.upper() in SAFE_METHODS or not 200 <= status <= 399:
            return 0
        return self._store.invalidate(normalize_url(url), response_headers)

    def age_seconds(self, entry: StoredResponse) -> int:
        """The ``Age`` value *entry* is served with now (whole seconds, RFC 9111 section 5.1)."""
        return min(DELTA_SECONDS_MAX, max(0, int(self.current_age(entry))))

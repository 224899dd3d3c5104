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

The rules live in :mod:`~proxy.cache.directives` (field syntax), :mod:`~proxy.cache.freshness`
(storability, lifetime, age, reuse), :mod:`~proxy.cache.validation` (validators and header
updates) and :mod:`~proxy.cache.store` (cache keys, ``Vary`` and the LRU); this module wires them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

from proxy.cache import freshness, validation
from proxy.cache.directives import DELTA_SECONDS_MAX, CacheControl, format_http_date
from proxy.cache.store import (
    CacheStore,
    StoredResponse,
    normalize_url,
    origin_of,
    vary_key_for,
    vary_names_of,
)
from proxy.cache.writer import CacheWriter
from proxy.http11.headers import Headers

# Only what this module defines: the re-exported names (``CacheWriter``, ``StoredResponse``,
# ``normalize_url``) are documented in their own modules, so autodoc lists them once.
__all__ = ["CacheConfig", "HttpCache", "Lookup"]

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
    """

    max_bytes: int = 64 * 2**20
    max_object: int = 8 * 2**20
    heuristic_fraction: float = 0.1
    heuristic_cap: float = 86400.0


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
    """

    kind: str
    entry: StoredResponse | None = None
    conditional_headers: Headers | None = None
    not_modified: bool = False
    detail: str = ""
    ttl: float | None = None


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
        return Lookup(
            "stale", entry, conditional_headers=conditions, detail=why, ttl=lifetime - age
        )

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
            method, status, request_headers, response_headers, self.config.max_object
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
        vary_names = vary_names_of(response_headers)
        entry = StoredResponse(
            url=normalize_url(url),
            status=status,
            reason=reason,
            headers=validation.fields_for_storage(response_headers, response_time),
            body=b"",
            request_time=request_time,
            response_time=response_time,
            vary_names=vary_names,
            vary_key=vary_key_for(request_headers, vary_names),
        )
        length = response_headers.get("Content-Length")
        expected = int(length) if length is not None and length.strip().isdigit() else None
        return CacheWriter(self._store, entry, expected, self.config.max_object)

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
        headers = validation.freshened_fields(entry.headers, response_304_headers)
        if "Age" not in response_304_headers:
            headers.remove("Age")  # the old Age described the old response
        if "Date" not in response_304_headers:
            headers.set("Date", format_http_date(response_time))
        entry.headers = headers
        entry.judgement = None
        entry.rendered = None
        entry.request_time = request_time
        entry.response_time = response_time
        self._store.resize(entry)
        self._store.touch(entry)
        return entry

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
        target = normalize_url(url)
        dropped = self._store.remove_url(target)
        for name in ("Location", "Content-Location"):
            value = response_headers.get(name)
            if not value:
                continue
            other = normalize_url(urljoin(target, value.strip()))
            if other != target and origin_of(other) == origin_of(target):
                dropped += self._store.remove_url(other)
        return dropped

    def age_seconds(self, entry: StoredResponse) -> int:
        """The ``Age`` value *entry* is served with now (whole seconds, RFC 9111 section 5.1)."""
        return min(DELTA_SECONDS_MAX, max(0, int(self.current_age(entry))))

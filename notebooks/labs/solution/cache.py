"""Part C: a small shared HTTP cache: what to store, how long it is fresh, revalidation, LRU.

Theory of operation
-------------------
A shared cache (RFC 9111) answers four questions. Each is a pure function of header fields and
times here, so this module opens no socket and can be tested from objects alone.

1. **May this response be stored?** (:func:`storable`, section 3.) A ``GET`` without
   ``Authorization``, answered ``200``, that neither message forbids (``no-store``; ``private``,
   because this cache is shared), without ``Vary`` (this cache keeps one copy per URL), and
   with something to go on: an explicit lifetime (``max-age``, ``Expires``) or a validator
   (``ETag``, ``Last-Modified``). This cache gives no *heuristic* lifetime (section 4.2.2 allows
   one; we choose not to).
2. **How long is it fresh?** (:func:`freshness_lifetime`, section 4.2.1.) ``max-age`` if
   present, else ``Expires`` minus ``Date``. An ``Expires`` that does not parse means "already
   expired" (section 5.3). ``no-cache`` means 0: store it, but ask the origin every time.
3. **How old is it?** (:meth:`CachedResponse.age`, section 4.2.3, simplified.) The age it had
   when it arrived, the larger of the origin's ``Age`` and the arrival time minus ``Date``, plus
   the time it has spent here since. It is *fresh* while its lifetime exceeds its age.
4. **Can a stale copy be saved?** (:func:`conditional_headers`, :meth:`Cache.freshen`, section
   4.3.) With an ``ETag`` or a ``Last-Modified`` the proxy asks the origin "has it changed?"
   (``If-None-Match``, ``If-Modified-Since``). A ``304 Not Modified`` makes the stored copy
   fresh again, with the 304's header fields, and costs the origin no body.

The store is bounded in bytes and evicts the least recently used entry first. An
:class:`~collections.OrderedDict` keeps the entries in order of use: the least recently used is
at the front, and every look-up moves its entry to the back, both O(1). An entry larger than the
whole budget is never stored: it would evict everything and still not fit.

Times are wall-clock seconds (:func:`time.time`), the clock of ``Date`` and ``Expires``; the
caller passes ``now`` in, so a test can use any clock it likes.
"""

from __future__ import annotations

import email.utils
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC

from proxy.http11 import Headers, Request, Response

_VALIDATORS = (("etag", "If-None-Match"), ("last-modified", "If-Modified-Since"))


def directives(headers: Headers) -> dict[str, str | None]:
    """The ``Cache-Control`` directives of *headers*: lower-cased names, unquoted arguments.

    Splitting on commas is wrong inside a quoted argument (``no-cache="a, b"``); the lab
    accepts that, since the directives it acts on take no quoted list.
    """
    found: dict[str, str | None] = {}
    for item in headers.get_list("cache-control"):
        name, equals, argument = item.partition("=")
        found.setdefault(name.strip().lower(), argument.strip().strip('"') if equals else None)
    return found


def delta_seconds(text: str | None) -> int | None:
    """``max-age`` style seconds (1*DIGIT), or None when *text* is missing or malformed."""
    if text is None or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def http_date(text: str | None) -> float | None:
    """An HTTP date (``Sun, 06 Nov 1994 08:49:37 GMT``) as a timestamp; None if it is invalid."""
    if not text:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def freshness_lifetime(headers: Headers, arrived: float) -> float:
    """How many seconds a response with these *headers*, received at *arrived*, stays fresh."""
    found = directives(headers)
    if "no-cache" in found:
        return 0.0
    if "max-age" in found:
        return float(delta_seconds(found["max-age"]) or 0)
    if "expires" in headers:
        expires = http_date(headers.get("expires"))
        if expires is None:
            return 0.0
        date = http_date(headers.get("date"))
        return max(0.0, expires - (date if date is not None else arrived))
    return 0.0


def cacheable_request(request: Request) -> bool:
    """Whether the cache may answer *request* at all, and store what answers it.

    Requests with ``Authorization`` are left alone (the answer may be for that user only), and
    so are requests that carry their own validators: the client has its own copy, and its
    conditional request goes to the origin as it is.
    """
    if request.method != "GET":
        return False
    headers = request.headers
    if "authorization" in headers or "if-none-match" in headers or "if-modified-since" in headers:
        return False
    found = directives(headers)
    return "no-store" not in found and "no-cache" not in found


def storable(request: Request, response: Response) -> bool:
    """Whether *response*, the answer to *request*, may be stored (see the module docstring)."""
    if not cacheable_request(request) or response.status != 200:
        return False
    found = directives(response.headers)
    if "no-store" in found or "private" in found or "vary" in response.headers:
        return False
    headers = response.headers
    explicit = "max-age" in found or "expires" in headers
    return explicit or "etag" in headers or "last-modified" in headers


@dataclass(frozen=True)
class CachedResponse:
    """A stored response: status, end-to-end header fields, body, and its timing."""

    status: int
    reason: str
    #: The origin's end-to-end fields, without ``Age`` and ``Content-Length`` (set on serving).
    headers: Headers
    body: bytes
    #: When the response, or the 304 that last freshened it, arrived.
    arrived: float
    #: Its age at that moment.
    age_on_arrival: float
    #: How long it is fresh, counted from an age of zero.
    lifetime: float

    def age(self, now: float) -> float:
        """Its current age in seconds (RFC 9111 section 4.2.3)."""
        return self.age_on_arrival + max(0.0, now - self.arrived)

    def is_fresh(self, now: float) -> bool:
        """Whether it may be served without asking the origin."""
        return self.lifetime > self.age(now)

    @property
    def size(self) -> int:
        """What it costs the store: body plus header bytes."""
        return len(self.body) + len(self.headers.to_bytes())


def _timed(
    status: int, reason: str, headers: Headers, body: bytes, arrived: float
) -> CachedResponse:
    """A :class:`CachedResponse` whose age and lifetime are read from *headers*."""
    date = http_date(headers.get("date"))
    apparent_age = max(0.0, arrived - date) if date is not None else 0.0
    age_value = float(delta_seconds(headers.get("age")) or 0)
    stored = headers.without({"age", "content-length"})
    lifetime = freshness_lifetime(headers, arrived)
    return CachedResponse(
        status, reason, stored, body, arrived, max(apparent_age, age_value), lifetime
    )


def make_entry(response: Response, headers: Headers, body: bytes, now: float) -> CachedResponse:
    """Build the entry for *response* (its end-to-end *headers* and whole *body*) at *now*."""
    return _timed(response.status, response.reason, headers, body, now)


def conditional_headers(entry: CachedResponse) -> list[tuple[str, str]]:
    """The fields that ask the origin whether *entry* changed (empty: it has no validator)."""
    return [
        (field, value)
        for name, field in _VALIDATORS
        if (value := entry.headers.get(name)) is not None
    ]


class Cache:
    """URL -> :class:`CachedResponse`, at most *capacity* bytes, least recently used out first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: Bytes held now (the sum of the entries' sizes).
        self.used = 0
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, url: str) -> CachedResponse | None:
        """The entry stored for *url*, fresh or not, now the most recently used; or None."""
        entry = self._entries.get(url)
        if entry is not None:
            self._entries.move_to_end(url)
        return entry

    def store(self, url: str, entry: CachedResponse) -> bool:
        """Store *entry* for *url* (replacing any older one), evicting LRU entries to fit it.

        Return False, storing nothing, when *entry* alone exceeds the capacity.
        """
        self.forget(url)
        if entry.size > self.capacity:
            return False
        while self.used + entry.size > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self.used -= evicted.size
        self._entries[url] = entry
        self.used += entry.size
        return True

    def forget(self, url: str) -> None:
        """Drop what is stored for *url*, if anything."""
        entry = self._entries.pop(url, None)
        if entry is not None:
            self.used -= entry.size

    def freshen(
        self, url: str, stale: CachedResponse, not_modified: Headers, now: float
    ) -> CachedResponse:
        """Apply a ``304`` (its header fields *not_modified*) to *stale*; store and return it.

        The 304's end-to-end fields replace the stored ones of the same name (RFC 9111 section
        3.2), except ``Content-Length``, which describes the 304's own empty body.
        """
        headers = stale.headers.copy()
        for name, value in not_modified.without({"content-length"}):
            headers.set(name, value)
        fresh = _timed(stale.status, stale.reason, headers, stale.body, now)
        self.store(url, fresh)
        return fresh

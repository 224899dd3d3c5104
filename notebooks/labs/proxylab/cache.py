"""Part C: a small shared HTTP cache: what to store, how long it is fresh, revalidation, LRU.

Theory of operation
-------------------
A shared cache (RFC 9111) answers four questions. Each is a pure function of header fields and
times, so this module needs no socket and you can test it from objects alone:

1. May this response be stored? (:func:`storable`, RFC 9111 section 3)
2. How long is it fresh? (:func:`freshness_lifetime`, section 4.2.1)
3. How old is it? (:meth:`CachedResponse.age`, section 4.2.3)
4. Can a stale copy be saved by asking the origin? (:func:`conditional_headers`,
   :meth:`Cache.freshen`, section 4.3)

The store is bounded in bytes and evicts the least recently used entry first
(:class:`collections.OrderedDict` has ``move_to_end`` and ``popitem(last=False)``). The
handout lists the exact rules the driver checks (C1 ... C8). Times are wall-clock seconds,
passed in as ``now`` (``ctx.now()`` in ``forward.py``).

Until Part C, ``forward.py`` need not call anything here; ``labproxy.py`` makes a
:class:`Cache` at start-up, so its constructor is written already.

What you may need: ``email.utils.parsedate_to_datetime`` for HTTP dates.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from proxy.http11 import Headers, Request, Response


def freshness_lifetime(headers: Headers, arrived: float) -> float:
    """How many seconds a response with these *headers*, received at *arrived*, stays fresh.

    TODO(C1, C3): ``max-age`` first, else ``Expires`` minus ``Date`` (an invalid Expires is
    already expired), else 0. ``no-cache`` means 0.
    """
    raise NotImplementedError("C1: freshness_lifetime() in cache.py")


def cacheable_request(request: Request) -> bool:
    """Whether the cache may answer *request* at all (TODO(C4): GET, no Authorization...)."""
    raise NotImplementedError("C4: cacheable_request() in cache.py")


def storable(request: Request, response: Response) -> bool:
    """Whether *response*, the answer to *request*, may be stored (TODO(C4))."""
    raise NotImplementedError("C4: storable() in cache.py")


@dataclass(frozen=True)
class CachedResponse:
    """A stored response: status, end-to-end header fields, body, and its timing.

    TODO(C1, C2): add what you need to compute its age (when it arrived, how old it was then)
    and its freshness lifetime.
    """

    status: int
    reason: str
    headers: Headers
    body: bytes

    def age(self, now: float) -> float:
        """Its current age in seconds (TODO(C2))."""
        raise NotImplementedError("C2: CachedResponse.age() in cache.py")

    def is_fresh(self, now: float) -> bool:
        """Whether it may be served without asking the origin (TODO(C1))."""
        raise NotImplementedError("C1: CachedResponse.is_fresh() in cache.py")

    @property
    def size(self) -> int:
        """What it costs the store (TODO(C8): the body plus the header bytes, say)."""
        raise NotImplementedError("C8: CachedResponse.size in cache.py")


def make_entry(response: Response, headers: Headers, body: bytes, now: float) -> CachedResponse:
    """Build the entry for *response* (its end-to-end *headers*, its whole *body*) at *now*."""
    raise NotImplementedError("C1: make_entry() in cache.py")


def conditional_headers(entry: CachedResponse) -> list[tuple[str, str]]:
    """The fields that ask the origin whether *entry* changed (TODO(C5, C6))."""
    raise NotImplementedError("C5: conditional_headers() in cache.py")


class Cache:
    """URL -> :class:`CachedResponse`, at most *capacity* bytes, least recently used out first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: Bytes held now (the sum of the entries' sizes).
        self.used = 0
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def lookup(self, url: str) -> CachedResponse | None:
        """The entry stored for *url*, now the most recently used; or None (TODO(C1, C8))."""
        raise NotImplementedError("C1: Cache.lookup() in cache.py")

    def store(self, url: str, entry: CachedResponse) -> bool:
        """Store *entry*, evicting least recently used entries to fit it (TODO(C1, C8))."""
        raise NotImplementedError("C1: Cache.store() in cache.py")

    def forget(self, url: str) -> None:
        """Drop what is stored for *url*, if anything (TODO(C5))."""
        raise NotImplementedError("C5: Cache.forget() in cache.py")

    def freshen(
        self, url: str, stale: CachedResponse, not_modified: Headers, now: float
    ) -> CachedResponse:
        """Apply a ``304``'s header fields to *stale*; store and return it (TODO(C5))."""
        raise NotImplementedError("C5: Cache.freshen() in cache.py")

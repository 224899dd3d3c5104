"""The storage side of the cache: cache keys, ``Vary`` variants and a byte-bounded LRU.

Theory of operation: a stored response is found by its *cache key* (RFC 9111 section 2): the
*primary key* is the target URI, here the effective request URI normalised by
:func:`normalize_url` so that ``HTTP://Example.COM:80`` and ``http://example.com/`` meet.
One URI can hold several *variants* when the origin negotiates content: its ``Vary`` field names
the request fields that chose the response, and a stored response is only selected for a request
whose values of those fields match the ones that produced it (section 4.1). Each
:class:`StoredResponse` therefore remembers the ``Vary`` field names (``vary_names``) and the
request values (``vary_key``), normalised by :func:`vary_key_for` (lines joined, whitespace
around list items trimmed). A ``Vary`` naming ``*`` never matches.

:class:`CacheStore` keeps every variant in one ``collections.OrderedDict`` used as an LRU
list: a hit moves the entry to the end, and when the bytes held exceed the budget, entries are
dropped from the front. Sizes count the body plus the serialised header fields plus the URL, an
approximation of the memory really used. A second dictionary indexes variants by URL, so a
look-up or an invalidation (section 4.4) touches only that URL's variants.

Storing a new variant replaces the one with the same key; if the origin has changed the *set*
of ``Vary`` names, older variants (selected by a different rule) are dropped too, since a
response that no longer varies like them would select ambiguously otherwise.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from proxy.cache import validation
from proxy.http11.headers import Headers

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: A variant's key in the store: ``(url, vary_names, vary_key)``.
VariantKey = tuple[str, tuple[str, ...], tuple[str | None, ...]]


@functools.lru_cache(maxsize=4096)  # a pure function of a string, asked on every look-up
def normalize_url(url: str) -> str:
    """Normalise an absolute URI into a primary cache key (RFC 9111 section 2).

    Scheme and host are lower-cased, the default port (80 for ``http``, 443 for ``https``) and
    any user information or fragment are dropped, and an empty path becomes ``/``.

    >>> normalize_url("HTTP://User@Example.COM:80?q=1#top")
    'http://example.com/?q=1'
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    if not scheme:
        return f"{path}{query}"
    return f"{scheme}://{netloc}{path}{query}"


def origin_of(url: str) -> tuple[str, str, int | None]:
    """Return the origin ``(scheme, host, port)`` of an absolute URI (RFC 9110 section 4.3.1)."""
    parts = urlsplit(normalize_url(url))
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme
    return scheme, (parts.hostname or ""), port or _DEFAULT_PORTS.get(scheme)


def invalidation_urls(url: str, response_headers: Headers) -> list[str]:
    """Normalised *url* and the same-origin ``Location``/``Content-Location`` URIs it names.

    What a successful unsafe request invalidates (RFC 9111 section 4.4); other origins' URIs
    are left alone, so one site cannot flush another's responses.
    """
    urls = [url]
    for name in ("Location", "Content-Location"):
        value = response_headers.get(name)
        if not value:
            continue
        other = normalize_url(urljoin(url, value.strip()))
        if other not in urls and origin_of(other) == origin_of(url):
            urls.append(other)
    return urls


def vary_names_of(response_headers: Headers) -> tuple[str, ...]:
    """Return the lower-cased, sorted, de-duplicated field names a response's ``Vary`` lists."""
    return tuple(sorted({name.lower() for name in response_headers.get_list("Vary")}))


def vary_key_for(request_headers: Headers, vary_names: tuple[str, ...]) -> tuple[str | None, ...]:
    """Return the request's normalised values for *vary_names* (RFC 9111 section 4.1).

    Each value joins every line of the field with ``,`` after trimming the whitespace around the
    list items; an absent field gives ``None``, so "absent" and "empty" stay different.
    """
    key: list[str | None] = []
    for name in vary_names:
        if name not in request_headers:
            key.append(None)
        else:
            key.append(",".join(request_headers.get_list(name)))
    return tuple(key)


@dataclass(eq=False)
class StoredResponse:
    """One stored variant: a complete response and what is needed to judge its age.

    :ivar url: the normalised target URI (primary cache key).
    :ivar status: the status code.
    :ivar reason: the reason phrase.
    :ivar headers: the stored response header fields (hop-by-hop fields removed).
    :ivar body: the complete content.
    :ivar request_time: when the request that fetched it was sent (RFC 9111 section 4.2.3).
    :ivar response_time: when the response was received.
    :ivar vary_names: the field names of its ``Vary`` (lower-case, sorted).
    :ivar vary_key: the request values of those fields that selected it.
    :ivar size: approximate bytes held: body, serialised header fields and URL.
    :ivar judgement: what the stored header fields imply, worked out once (parsing dates and
        directives on every hit would cost more than the rest of the hit):
        ``(freshness lifetime, corrected initial age, response Cache-Control)``; ``None`` until
        first needed and after the fields change.
    :ivar rendered: response heads a server already serialised from this entry, by whatever
        decides their bytes (for the proxy: status, Age, ``Cache-Status``, ``Connection``);
        dropped with ``judgement`` when the fields change. A few per entry at most.
    """

    url: str
    status: int
    reason: str
    headers: Headers
    body: bytes
    request_time: float
    response_time: float
    vary_names: tuple[str, ...] = ()
    vary_key: tuple[str | None, ...] = ()
    size: int = field(default=0)
    judgement: tuple[float, float, object] | None = field(default=None, compare=False, repr=False)
    rendered: dict[tuple[Any, ...], bytes] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.size = self.compute_size()

    @classmethod
    def for_response(
        cls,
        url: str,
        status: int,
        reason: str,
        response_headers: Headers,
        request_headers: Headers,
        request_time: float,
        response_time: float,
    ) -> StoredResponse:
        """A new entry (body still empty) for a response to a request, keyed by its ``Vary``.

        *url* is already normalised; the fields are filtered for storage (RFC 9111 §3.1).
        """
        vary_names = vary_names_of(response_headers)
        return cls(
            url=url,
            status=status,
            reason=reason,
            headers=validation.fields_for_storage(response_headers, response_time),
            body=b"",
            request_time=request_time,
            response_time=response_time,
            vary_names=vary_names,
            vary_key=vary_key_for(request_headers, vary_names),
        )

    def compute_size(self) -> int:
        """Return the approximate number of bytes this entry holds."""
        return len(self.body) + len(self.headers.to_bytes()) + len(self.url)

    @property
    def key(self) -> VariantKey:
        """The variant's key in the store: ``(url, vary_names, vary_key)``."""
        return (self.url, self.vary_names, self.vary_key)

    def matches(self, request_headers: Headers) -> bool:
        """Tell whether this variant may be selected for a request (RFC 9111 section 4.1)."""
        if "*" in self.vary_names:
            return False
        return vary_key_for(request_headers, self.vary_names) == self.vary_key


class CacheStore:
    """A least-recently-used store of :class:`StoredResponse` bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[VariantKey, StoredResponse] = OrderedDict()
        self._by_url: dict[str, list[VariantKey]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: object) -> bool:
        if not isinstance(entry, StoredResponse):
            return False
        return self._entries.get(entry.key) is entry

    def variants(self, url: str) -> list[StoredResponse]:
        """Return the stored variants of normalised *url*, in the order they were stored."""
        return [self._entries[key] for key in self._by_url.get(url, ())]

    def select(self, url: str, request_headers: Headers) -> tuple[StoredResponse | None, str]:
        """Find the variant of *url* that matches the request (RFC 9111 section 4.1).

        :returns: ``(entry, "")``; or ``(None, "uri-miss")`` when nothing is stored under the
            URL; or ``(None, "vary-miss")`` when variants exist but none matches.
        """
        variants = self.variants(url)
        if not variants:
            return None, "uri-miss"
        for entry in variants:
            if entry.matches(request_headers):
                return entry, ""
        return None, "vary-miss"

    def touch(self, entry: StoredResponse) -> None:
        """Mark *entry* as the most recently used."""
        if entry in self:
            self._entries.move_to_end(entry.key)

    def put(self, entry: StoredResponse) -> bool:
        """Store *entry*, replacing same-key and differently-varying variants, then evict.

        :returns: ``False`` (and stores nothing) if the entry alone exceeds the byte budget.
        """
        if entry.size > self.max_bytes:
            return False
        for old in self.variants(entry.url):
            if old.key == entry.key or old.vary_names != entry.vary_names:
                self._drop(old.key)
        self._entries[entry.key] = entry
        self._by_url.setdefault(entry.url, []).append(entry.key)
        self.size += entry.size
        self._evict()
        return True

    def resize(self, entry: StoredResponse) -> None:
        """Recount *entry*'s size after it was updated in place, and evict if needed."""
        if entry in self:
            new_size = entry.compute_size()
            self.size += new_size - entry.size
            entry.size = new_size
            self._evict(keep=entry)
        else:
            entry.size = entry.compute_size()

    def remove(self, entry: StoredResponse) -> bool:
        """Drop *entry* if it is stored; tell whether it was."""
        if entry in self:
            self._drop(entry.key)
            return True
        return False

    def remove_url(self, url: str) -> int:
        """Drop every variant of normalised *url*; return how many were dropped."""
        keys = list(self._by_url.get(url, ()))
        for key in keys:
            self._drop(key)
        return len(keys)

    def invalidate(self, url: str, response_headers: Headers) -> int:
        """Drop normalised *url* and the same-origin URIs in ``Location``/``Content-Location``.

        RFC 9111 section 4.4, once the caller has checked the method and status.
        :returns: the number of variants dropped.
        """
        return sum(self.remove_url(other) for other in invalidation_urls(url, response_headers))

    def clear(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self._by_url.clear()
        self.size = 0

    def _evict(self, keep: StoredResponse | None = None) -> None:
        while self.size > self.max_bytes and self._entries:
            key = next(iter(self._entries))
            if keep is not None and key == keep.key:
                if len(self._entries) == 1:
                    break
                self._entries.move_to_end(key)
                continue
            self._drop(key)

    def _drop(self, key: VariantKey) -> None:
        entry = self._entries.pop(key)
        self.size -= entry.size
        keys = self._by_url[entry.url]
        keys.remove(key)
        if not keys:
            del self._by_url[entry.url]

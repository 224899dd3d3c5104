"""Collecting a response body while it streams past, and committing it when complete.

Theory of operation: the proxy never holds a whole response before relaying it; it forwards
each chunk as it arrives. To cache it anyway, the session *tees* every chunk into a
:class:`CacheWriter`, created by :meth:`proxy.cache.HttpCache.begin_store` once the response
head was found storable (RFC 9111 section 3). The writer keeps the chunks until one of three
endings:

* :meth:`CacheWriter.finish`: the body ended normally. If its length agrees with the
  ``Content-Length`` the origin announced, the entry goes into the store; otherwise the response
  is incomplete and a cache must not reuse it (section 3.3), so it is dropped.
* :meth:`CacheWriter.abort`: the connection failed mid-body; nothing is stored.
* The body outgrows ``max_object``: the writer frees what it held at once and ignores the rest,
  so one large download never costs more than ``max_object`` bytes of memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from proxy.cache.store import CacheStore, StoredResponse
from proxy.http11.headers import Headers


class _Limits(Protocol):
    @property
    def max_object(self) -> int: ...


class CacheWriter:
    """Collects the body of a storable response while the proxy relays it.

    :ivar abandoned: set once the body outgrew ``max_object`` or did not match its
        ``Content-Length``; nothing will be stored.
    """

    def __init__(
        self,
        store: CacheStore,
        entry: StoredResponse,
        expected_length: int | None,
        max_object: int,
    ) -> None:
        self._store = store
        self._max_object = max_object
        self._entry = entry
        self._expected_length = expected_length
        self._chunks: list[bytes] = []
        self._received = 0
        self._closed = False
        self.abandoned = False
        self.on_commit: Callable[[StoredResponse], None] | None = None
        """Called with the entry once it is stored (the disk tier keeps a copy)."""

    @classmethod
    def for_response(
        cls, store: CacheStore, entry: StoredResponse, response_headers: Headers, limits: _Limits
    ) -> CacheWriter:
        """A writer for *entry* expecting the body length the response announced, if any."""
        length = response_headers.get("Content-Length")
        expected = int(length) if length is not None and length.strip().isdigit() else None
        return cls(store, entry, expected, limits.max_object)

    def write(self, data: bytes | memoryview) -> None:
        """Add a chunk of the body; past ``max_object`` give up silently and free the buffer."""
        if self._closed or self.abandoned:
            return
        self._received += len(data)
        if self._received > self._max_object:
            self.abandoned = True
            self._chunks.clear()
            return
        self._chunks.append(bytes(data))

    def finish(self) -> StoredResponse | None:
        """Commit the complete response to the store; return the entry, or ``None`` if dropped.

        A body whose length differs from the response's ``Content-Length`` is incomplete and
        is not stored (RFC 9111 section 3.3).
        """
        if self._closed or self.abandoned:
            self._closed = True
            return None
        self._closed = True
        body = b"".join(self._chunks)
        self._chunks.clear()
        if self._expected_length is not None and len(body) != self._expected_length:
            self.abandoned = True
            return None
        entry = self._entry
        entry.body = body
        if entry.status not in (204, 304):
            entry.headers.set("Content-Length", str(len(body)))
        entry.size = entry.compute_size()
        if not self._store.put(entry):
            return None
        if self.on_commit is not None:
            self.on_commit(entry)
        return entry

    def abort(self) -> None:
        """Forget the body: a partial or aborted response is never stored (RFC 9111 §3.3)."""
        self._closed = True
        self._chunks.clear()

"""Connections to origin servers, and the pool that keeps idle ones for reuse.

Theory of operation
-------------------
Opening a TCP connection costs a round trip (and, to a far origin, much more), so a proxy keeps
the connections an origin is willing to keep alive and lends them to later requests for the
same ``host:port`` (RFC 9112 section 9.3). An :class:`Upstream` is one such connection. While
it is lent out, its *owner* (the exchange forwarding a request) hears about readable bytes,
EOF, loss and backpressure; while it sits idle in the :class:`UpstreamPool` it has no owner, and
anything the origin sends then (usually its FIN as it times the connection out) means the
connection is no longer reusable, so it closes and leaves the pool.

An idle connection may still be closed by the origin at the instant we reuse it. That race
cannot be avoided, only handled: the exchange retries an idempotent request once on a fresh
connection when a reused one dies before answering.
"""

from __future__ import annotations

import collections
import logging
from typing import Protocol as TypingProtocol

from minireactor import Clock, Deadline, Protocol, TransportLike

from .http11 import Limits, ResponseParser
from .parent import Hop

log = logging.getLogger("proxy.upstream")

PoolKey = Hop
"""The first hop a connection goes to: an origin's ``host, port``, or a parent proxy."""


class UpstreamOwner(TypingProtocol):
    """What an :class:`Upstream` reports to whoever borrowed it."""

    def upstream_readable(self) -> None:
        """New bytes (or EOF) are in ``upstream.parser``."""

    def upstream_lost(self, exc: BaseException | None) -> None:
        """The origin connection is gone."""

    def upstream_pause_writing(self) -> None:
        """The origin is not taking our bytes fast enough."""

    def upstream_resume_writing(self) -> None:
        """The origin caught up."""


class Upstream(Protocol):
    """One connection to an origin, lent to one owner at a time."""

    def __init__(self, key: PoolKey, limits: Limits, pool: UpstreamPool | None = None) -> None:
        self.key = key
        self.parser = ResponseParser(limits)
        self.pool = pool
        self.owner: UpstreamOwner | None = None
        self.transport: TransportLike | None = None
        self.closed = False
        self.eof = False
        self.reused = 0
        # Created by the pool on the first release: most connections are borrowed at once.
        self.idle_deadline: Deadline | None = None

    def connection_made(self, transport: TransportLike) -> None:
        """Remember the transport."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Feed the parser and tell the owner; an idle connection must not receive anything."""
        self.parser.feed(data)
        if self.owner is not None:
            self.owner.upstream_readable()
        else:
            self.close()

    def eof_received(self) -> bool:
        """The origin finished sending: close-delimited bodies end here."""
        self.eof = True
        self.parser.feed_eof()
        if self.owner is not None:
            self.owner.upstream_readable()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        """Tell the owner (if any) and leave the pool."""
        self.closed = True
        if self.idle_deadline is not None:
            self.idle_deadline.close()
        if self.pool is not None:
            self.pool.discard(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        """Relay backpressure to the owner."""
        if self.owner is not None:
            self.owner.upstream_pause_writing()

    def resume_writing(self) -> None:
        """Relay the end of backpressure to the owner."""
        if self.owner is not None:
            self.owner.upstream_resume_writing()

    def write(self, data: bytes) -> None:
        """Send bytes to the origin."""
        if self.transport is not None:
            self.transport.write(data)

    def release(self) -> None:
        """The owner is done with it: back to the pool for reuse, or closed without a pool."""
        self.owner = None
        if self.transport is not None:
            self.transport.resume_reading()  # the client's backpressure may have paused it
        if self.pool is not None:
            self.pool.release(self)
        else:
            self.close()

    def close(self) -> None:
        """Close after flushing."""
        self.owner = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, discarding anything unsent."""
        self.owner = None
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        """Whether the connection can carry another request."""
        return (
            not self.closed
            and not self.eof
            and self.transport is not None
            and (not self.transport.is_closing)
        )


class UpstreamPool:
    """Idle origin connections by their hop (``host, port``, or a parent), each with an idle
    timeout."""

    def __init__(self, reactor: Clock, idle_timeout: float, max_per_key: int) -> None:
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.max_per_key = max_per_key
        self._idle: dict[PoolKey, collections.deque[Upstream]] = {}
        self.reuses = 0

    def acquire(self, key: PoolKey) -> Upstream | None:
        """Lend the most recently used idle connection to *key*, or None."""
        idle = self._idle.get(key)
        while idle:
            upstream = idle.pop()
            if upstream.idle_deadline is not None:
                upstream.idle_deadline.disarm()
            if upstream.usable:
                if not idle:
                    del self._idle[key]
                upstream.reused += 1
                self.reuses += 1
                return upstream
        self._idle.pop(key, None)
        return None

    def release(self, upstream: Upstream) -> None:
        """Take back a connection that finished a response and may be reused."""
        upstream.owner = None
        if not upstream.usable or upstream.parser.buffered:
            upstream.close()
            return
        idle = self._idle.setdefault(upstream.key, collections.deque())
        if len(idle) >= self.max_per_key:
            idle.popleft().close()
        idle.append(upstream)
        if upstream.idle_deadline is None:
            upstream.idle_deadline = Deadline(self.reactor)
        upstream.idle_deadline.arm(self.idle_timeout, upstream.close)

    def discard(self, upstream: Upstream) -> None:
        """Forget a connection that closed."""
        idle = self._idle.get(upstream.key)
        if idle and upstream in idle:
            idle.remove(upstream)
            if not idle:
                del self._idle[upstream.key]

    def __len__(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def close_all(self) -> None:
        """Close every idle connection."""
        for idle in list(self._idle.values()):
            for upstream in list(idle):
                upstream.close()
        self._idle.clear()

"""What every part of the lab proxy shares: the reactor, the resolver, the cache, the settings.

Theory of operation
-------------------
The lab proxy is one process, one thread and one :class:`~minireactor.Reactor`. Everything a
connection needs from the rest of the program is in one :class:`ProxyContext`, made once by
``labproxy.py`` and handed to every :class:`~client.ClientConnection`; nothing is global, so a
test can build a context of its own (a fake clock, a :class:`~minireactor.StaticResolver`).

Two clocks, on purpose. Deadlines (connect, first byte) run on the reactor's monotonic clock,
which never jumps. Cache ages are computed against ``Date`` and ``Expires``, which are
wall-clock dates, so :meth:`ProxyContext.now` is :func:`time.time`.

This file is given: you need not change it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cache import Cache

from minireactor import Reactor
from minireactor.resolver import ResolverLike


@dataclass(frozen=True)
class ProxyContext:
    """The shared pieces of one running lab proxy."""

    #: The one event loop; every callback of the proxy runs on it.
    reactor: Reactor
    #: Turns names into addresses off the loop (``connect_host`` uses it).
    resolver: ResolverLike
    #: The shared HTTP cache of Part C.
    cache: Cache
    #: Seconds allowed to connect to an origin, and then to wait for its first byte (504 after).
    timeout: float = 10.0
    #: The name this proxy gives itself in ``Via`` (RFC 9110 section 7.6.3).
    pseudonym: str = "labproxy"

    def now(self) -> float:
        """Wall-clock seconds, the clock of ``Date``, ``Expires`` and ``Age``."""
        return time.time()

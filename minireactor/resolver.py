"""Name resolution off the loop thread.

Theory of operation
-------------------
``getaddrinfo`` blocks, sometimes for seconds, and the standard library offers no non-blocking
version. A reactor therefore never calls it on its own thread: :class:`Resolver` answers numeric
addresses at once (no look-up is needed, and it is the common case behind a proxy on loopback)
and sends names to a small thread pool. The pool thread hands the answer back with
:meth:`~minireactor.loop.Reactor.call_soon_threadsafe`, so the callback runs on the loop like
any other; the pool never touches the caller's state.

Anything with a ``resolve(host, port, callback)`` method returning a cancellable object can
stand in for :class:`Resolver`. Tests inject :class:`StaticResolver` to simulate a DNS failure
without asking any real name server.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from .loop import Reactor
from .timers import Handle

SocketAddress = tuple[str, int] | tuple[str, int, int, int]
"""An IPv4 ``(host, port)`` or IPv6 ``(host, port, flowinfo, scope_id)`` address."""

Address = tuple[int, SocketAddress]
"""An ``(address family, sockaddr)`` pair, ready for :func:`socket.socket` and ``connect``."""

ResolveCallback = Callable[[list[Address] | None, BaseException | None], None]
"""Receives ``(addresses, None)`` on success or ``(None, error)`` on failure."""


class ResolverLike(Protocol):
    """What the proxy needs from a resolver."""

    def resolve(self, host: str, port: int, callback: ResolveCallback) -> Handle:
        """Look up *host*; call *callback* on the loop; return a cancellable handle."""
        ...


def numeric_address(host: str, port: int) -> list[Address] | None:
    """Return the address list for a numeric host, or None if *host* is a name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return [(socket.AF_INET6, (str(ip), port, 0, 0))]
    return [(socket.AF_INET, (str(ip), port))]


class Resolver:
    """Resolves names with ``getaddrinfo`` in a thread pool, delivering results on the loop."""

    def __init__(self, reactor: Reactor, workers: int = 4) -> None:
        self.reactor = reactor
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resolver")

    def resolve(self, host: str, port: int, callback: ResolveCallback) -> Handle:
        """Resolve *host*; *callback* runs on the loop unless the handle is cancelled first."""
        handle = Handle(callback, ())
        numeric = numeric_address(host, port)
        if numeric is not None:
            self.reactor.call_soon(self._deliver, handle, numeric, None)
            return handle
        self._pool.submit(self._lookup, handle, host, port)
        return handle

    def _lookup(self, handle: Handle, host: str, port: int) -> None:
        # Runs on a pool thread: it may block, and it touches nothing but its arguments.
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses: list[Address] | None = [
                (family, sockaddr)
                for family, _type, _proto, _name, sockaddr in infos
                if isinstance(sockaddr[0], str)  # internet addresses only, never raw ones
            ]
            error: BaseException | None = None
        except OSError as exc:
            addresses, error = None, exc
        self.reactor.call_soon_threadsafe(self._deliver, handle, addresses, error)

    @staticmethod
    def _deliver(
        handle: Handle, addresses: list[Address] | None, error: BaseException | None
    ) -> None:
        if not handle.cancelled:
            handle.callback(addresses, error)

    def close(self) -> None:
        """Stop the pool without waiting for look-ups in progress."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class StaticResolver:
    """A resolver from a table, for tests: names map to IPs, anything else fails like DNS."""

    def __init__(self, reactor: Reactor, table: Mapping[str, str] | None = None) -> None:
        self.reactor = reactor
        self.table = {name.lower(): ip for name, ip in (table or {}).items()}
        self.lookups: list[str] = []

    def resolve(self, host: str, port: int, callback: ResolveCallback) -> Handle:
        """Answer from the table (or numerically) on the next tick."""
        handle = Handle(callback, ())
        self.lookups.append(host)
        addresses = numeric_address(host, port)
        error: BaseException | None = None
        if addresses is None:
            ip = self.table.get(host.lower().rstrip("."))
            if ip is None:
                error = socket.gaierror(socket.EAI_NONAME, f"Name or service not known: {host}")
            else:
                addresses = numeric_address(ip, port)
        self.reactor.call_soon(Resolver._deliver, handle, addresses, error)
        return handle

    def close(self) -> None:
        """Nothing to release."""

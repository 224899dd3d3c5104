"""The real network behind :class:`~proxy.session.context.Network`: resolver, connect, transports.

Theory of operation
-------------------
Sessions reach origins through an interface (:mod:`proxy.session.context`) so that tests can
drive them without sockets. In the running proxy that interface is this small adapter over
:mod:`minireactor`: names go to the resolver (a thread pool, or a static table in tests),
addresses to :func:`minireactor.connect`, and a connected socket comes back as an *attach*
function that wraps it in a :class:`~minireactor.Transport` with whatever protocol the session
chooses (an origin connection, or one end of a tunnel).
"""

from __future__ import annotations

import socket

from minireactor import Protocol, Reactor, Transport, TransportLike, connect
from minireactor.resolver import Address, ResolveCallback, ResolverLike

from .session.context import Attach, Cancellable, ConnectCallback


class ReactorNetwork:
    """Resolve with *resolver*, connect with *reactor*'s non-blocking connect."""

    def __init__(self, reactor: Reactor, resolver: ResolverLike) -> None:
        self.reactor = reactor
        self.resolver = resolver

    def resolve(self, host: str, port: int, callback: ResolveCallback) -> Cancellable:
        """Look *host* up; the answer comes back on the loop."""
        return self.resolver.resolve(host, port, callback)

    def connect(
        self, addresses: list[Address], callback: ConnectCallback, timeout: float
    ) -> Cancellable:
        """Connect to the first of *addresses* that accepts, within *timeout* seconds."""

        def connected(sock: socket.socket | None, error: BaseException | None) -> None:
            callback(None if sock is None else self._attacher(sock), error)

        return connect(self.reactor, addresses, connected, timeout)

    def _attacher(self, sock: socket.socket) -> Attach:
        def attach(protocol: Protocol) -> TransportLike:
            return Transport(self.reactor, sock, protocol)

        return attach

"""What a session and its steps depend on: the small interfaces of the world around them.

Theory of operation
-------------------
A session is written against interfaces, not against the reactor or the server that runs it,
so the whole machine can be driven in a test, or a notebook, with a fake clock and fake
connections and no socket at all (``tests/support.py`` has them):

* :class:`Scheduler` is the part of the reactor a session uses: the clock and callbacks.
* :class:`Network` reaches origins: resolve a name, connect to addresses, and hand back an
  :data:`Attach` function that puts a protocol on the new connection.
* :class:`SessionHost` is the server seen from one session: whether the proxy is stopping,
  and where to report that the connection has ended.

No step imports the session. Each step is built with exactly what it needs and answers with
a value or reports to the session through an interface its own module defines
(``DialOwner``, ``ExchangeOwner``, ``CacheWaiter``, ``TunnelOwner``); the session implements
them all, and gets the steps the server built once for all its sessions in one record,
:class:`~proxy.session.client.SessionContext`. So the imports run one way: the steps import
this module, the session imports the steps, the server imports the session; no module imports
back into one that imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from minireactor import Handle, TimerHandle, TransportLike
from minireactor import Protocol as StreamProtocol
from minireactor.resolver import Address, ResolveCallback


class Scheduler(Protocol):
    """The reactor as a session sees it: a clock and a way to be called back (loop thread)."""

    def time(self) -> float:
        """The current time (monotonic seconds)."""
        ...

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the next tick."""
        ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after *delay* seconds."""
        ...

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` at time *when*."""
        ...


class Cancellable(Protocol):
    """Something in flight that can be called off (a look-up, a connect attempt)."""

    def cancel(self) -> None:
        """Call it off: its callback will not run."""
        ...


Attach = Callable[[StreamProtocol], TransportLike]
"""A connected socket, waiting for its protocol: call it to get the transport driving it."""

ConnectCallback = Callable[[Attach | None, BaseException | None], None]
"""Receives ``(attach, None)`` once connected, or ``(None, error)``."""


class Network(Protocol):
    """How sessions reach origins."""

    def resolve(self, host: str, port: int, callback: ResolveCallback) -> Cancellable:
        """Look *host* up off the loop; *callback* runs on the loop."""
        ...

    def connect(
        self, addresses: list[Address], callback: ConnectCallback, timeout: float
    ) -> Cancellable:
        """Connect to the first of *addresses* that accepts, within *timeout* seconds."""
        ...


class SessionHost(Protocol):
    """The server, as one session sees it."""

    @property
    def shutting_down(self) -> bool:
        """Whether the proxy is stopping: no connection is kept alive after its request."""
        ...

    def session_closed(self, session: object) -> None:
        """The session's client connection has ended for good."""
        ...

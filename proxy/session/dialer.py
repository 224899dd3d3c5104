"""RESOLVING and CONNECTING: from a host name to a connected socket, under one deadline.

Theory of operation
-------------------
Reaching an origin takes two waits that can each last long: the name look-up (``getaddrinfo``,
run off the loop by the resolver) and the TCP handshake (a non-blocking ``connect``). One
deadline, ``connect_timeout``, covers both, so a client learns within a bounded time that the
origin cannot be reached: 502 when the name does not resolve or the connection is refused, 504
when the deadline passes, 403 when ``--deny-private`` forbids the address the name led to.

A :class:`Dialer` serves one attempt of one session and reports to its :class:`DialOwner`:
``dial_resolved`` once the name is known (the session moves on to CONNECTING),
``dial_connected`` with the new connection, or ``dial_failed`` with a :class:`DialFailure`
that says what went wrong, in HTTP terms. :meth:`Dialer.cancel` (the client went away) calls
off the look-up, the half-open socket and the timer, so nothing leaks and no report comes.
"""

from __future__ import annotations

import enum
import socket
from typing import NamedTuple, Protocol

from minireactor.resolver import Address
from minireactor.timers import TimerHandle

from ..config import Config
from ..policy import address_refusal
from .context import Attach, Cancellable, Network, Scheduler
from .guard import guarded


class DialError(enum.Enum):
    """Why an origin could not be reached."""

    NO_ADDRESS = "the name did not resolve"
    FORBIDDEN_ADDRESS = "the name resolved to an address the policy refuses"
    CONNECT_FAILED = "no address accepted the connection"
    TIMED_OUT = "the deadline passed"


class DialFailure(NamedTuple):
    """What the client is told when its origin cannot be reached."""

    error: DialError
    status: int
    detail: str
    result: str = "NONE"


class DialOwner(Protocol):
    """Whom a :class:`Dialer` reports to (the client session)."""

    def dial_resolved(self) -> None:
        """The name resolved; connecting has begun."""
        ...

    def dial_connected(self, attach: Attach) -> None:
        """An address accepted: *attach* puts a protocol on the connection."""
        ...

    def dial_failed(self, failure: DialFailure) -> None:
        """The origin cannot be reached; nothing is left open."""
        ...

    def internal_error(self, exc: BaseException) -> None:
        """A bug surfaced in one of the dialer's callbacks."""
        ...


class Dialer:
    """Resolve a target and connect to it, within one deadline."""

    __slots__ = (
        "_scheduler",
        "_network",
        "_config",
        "_owner",
        "_pending",
        "_deadline",
        "_timer",
        "_where",
    )

    def __init__(
        self, scheduler: Scheduler, network: Network, config: Config, owner: DialOwner
    ) -> None:
        self._scheduler = scheduler
        self._network = network
        self._config = config
        self._owner = owner
        self._pending: Cancellable | None = None
        timeout = config.connect_timeout
        self._deadline = scheduler.time() + timeout
        self._timer: TimerHandle = scheduler.call_later(timeout, self._timed_out)
        self._where = ""

    def internal_error(self, exc: BaseException) -> None:
        """Hand a bug in a callback to the owner (see :func:`~proxy.session.guard.guarded`)."""
        self._owner.internal_error(exc)

    def dial(self, host: str, port: int) -> None:
        """Start the look-up of *host*; the connection goes to *port*."""
        self._where = f"{host}:{port}"
        self._pending = self._network.resolve(host, port, self._resolved)

    @guarded
    def _resolved(self, addresses: list[Address] | None, error: BaseException | None) -> None:
        self._pending = None
        if not addresses:
            host = self._where.rpartition(":")[0]
            detail = f"cannot resolve host {host!r}: {describe(error)}"
            self._fail(DialFailure(DialError.NO_ADDRESS, 502, detail))
            return
        refusal = address_refusal(self._config, addresses)
        if refusal is not None:
            self._fail(DialFailure(DialError.FORBIDDEN_ADDRESS, 403, refusal, "TCP_DENIED"))
            return
        self._owner.dial_resolved()
        remaining = max(0.001, self._deadline - self._scheduler.time())
        self._pending = self._network.connect(addresses, self._connected, remaining)

    @guarded
    def _connected(self, attach: Attach | None, error: BaseException | None) -> None:
        self._pending = None
        self._timer.cancel()
        if attach is None:
            self._fail(self._unreachable(error))
            return
        self._owner.dial_connected(attach)

    @guarded
    def _timed_out(self) -> None:
        if self._pending is None:
            return  # already reported
        self._pending.cancel()
        self._pending = None
        self._fail(self._unreachable(TimeoutError("connect deadline passed")))

    def _unreachable(self, error: BaseException | None) -> DialFailure:
        if isinstance(error, TimeoutError):
            detail = f"connecting to {self._where} took longer than the deadline"
            return DialFailure(DialError.TIMED_OUT, 504, detail)
        detail = f"cannot connect to {self._where}: {describe(error)}"
        return DialFailure(DialError.CONNECT_FAILED, 502, detail)

    def _fail(self, failure: DialFailure) -> None:
        self._timer.cancel()
        self._owner.dial_failed(failure)

    def cancel(self) -> None:
        """Abandon the attempt: no report will come and nothing stays open."""
        self._timer.cancel()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


def describe(error: BaseException | None) -> str:
    """A short human reason for a resolve or connect failure."""
    if error is None:
        return "no address"
    if isinstance(error, socket.gaierror):
        return error.strerror or str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__

"""RESOLVING and CONNECTING: from a host name to a connected socket, under one deadline.

Theory of operation
-------------------
Reaching an origin takes two waits that can each last long: the name look-up (``getaddrinfo``,
run off the loop by the resolver) and the TCP handshake (a non-blocking ``connect``). One
deadline, ``connect_timeout``, covers both, so a client learns within a bounded time that the
origin cannot be reached: 502 when the name does not resolve or the connection is refused, 504
when the deadline passes.

A :class:`Dialer` belongs to one session and one attempt. It reports back with
:meth:`~proxy.session.ClientSession.origin_connected` or by answering the client itself, and
:meth:`Dialer.cancel` (the client went away) releases the look-up, the half-open socket and the
timer, so nothing leaks.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from minireactor import connect
from minireactor.resolver import Address

from .guard import guarded
from .policy import address_refusal
from .states import SessionState

if TYPE_CHECKING:
    from .session import ClientSession

S = SessionState


class Dialer:
    """Resolve the session's target and connect to it (states RESOLVING, CONNECTING)."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self._pending: Any = None
        reactor = session.reactor
        timeout = session.config.connect_timeout
        self._deadline = reactor.time() + timeout
        self._timer = reactor.call_later(timeout, self._timed_out)

    def dial(self) -> None:
        """Start the look-up (the session is RESOLVING)."""
        target = self.session.target
        assert target is not None
        self._pending = self.session.ctx.resolver.resolve(target.host, target.port, self._resolved)

    @guarded
    def _resolved(self, addresses: list[Address] | None, error: BaseException | None) -> None:
        self._pending = None
        session = self.session
        assert session.target is not None
        if not addresses:
            self._give_up("resolve_failed")
            session.answer_error(
                502, f"cannot resolve host {session.target.host!r}: {describe(error)}"
            )
            return
        refusal = address_refusal(session.config, addresses)
        if refusal is not None:
            self._give_up("resolve_failed")
            session.answer_error(403, refusal, result="TCP_DENIED")
            return
        session.fire("resolved")
        remaining = max(0.001, self._deadline - session.reactor.time())
        self._pending = connect(session.reactor, addresses, self._connected, remaining)

    @guarded
    def _connected(self, sock: socket.socket | None, error: BaseException | None) -> None:
        self._pending = None
        self._timer.cancel()
        session = self.session
        session.dialer = None
        if sock is None:
            self._failed(error)
            return
        session.origin_connected(sock)

    @guarded
    def _timed_out(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.session.state in (S.RESOLVING, S.CONNECTING):
            self._failed(TimeoutError("connect deadline passed"))

    def _failed(self, error: BaseException | None) -> None:
        session = self.session
        assert session.target is not None
        self._give_up("resolve_failed" if session.state is S.RESOLVING else "connect_failed")
        where = f"{session.target.host}:{session.target.port}"
        if isinstance(error, TimeoutError):
            session.answer_error(504, f"connecting to {where} took longer than the deadline")
        else:
            session.answer_error(502, f"cannot connect to {where}: {describe(error)}")

    def _give_up(self, trigger: str) -> None:
        self._timer.cancel()
        self.session.dialer = None
        self.session.fire(trigger)

    def cancel(self) -> None:
        """Abandon the attempt: no callback will reach the session and nothing stays open."""
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

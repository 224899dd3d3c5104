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

Through a parent proxy (:mod:`proxy.parent`) a tunnel takes one more step within the same
deadline: a :class:`ParentHandshake` asks the parent ``CONNECT host:port`` and reads its
answer; the connection is reported only once the parent said ``2xx``, with any bytes that
came behind that answer, and a refusal is reported as a failure naming the parent.
"""

from __future__ import annotations

import enum
import socket
from typing import NamedTuple, Protocol

from minireactor import Protocol as StreamProtocol
from minireactor import TransportLike
from minireactor.resolver import Address
from minireactor.timers import TimerHandle

from ..config import Config
from ..http11 import NEED_DATA, PAUSED, ProtocolError, Response, ResponseParser
from ..parent import ParentProxy
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

    def dial_connected(self, attach: Attach, early: bytes) -> None:
        """An address accepted: *attach* puts a protocol on the connection; *early* are
        bytes a parent proxy sent behind its answer to CONNECT (the tunnel's first)."""
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
        "_parent",
        "_tunnel_head",
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
        self._parent: ParentProxy | None = None
        self._tunnel_head: bytes | None = None

    def internal_error(self, exc: BaseException) -> None:
        """Hand a bug in a callback to the owner (see :func:`~proxy.session.guard.guarded`)."""
        self._owner.internal_error(exc)

    def dial(
        self,
        host: str,
        port: int,
        *,
        parent: ParentProxy | None = None,
        tunnel_head: bytes | None = None,
    ) -> None:
        """Start the look-up of *host*; the connection goes to *port*.

        With *parent*, the hop is that parent proxy (named so in error pages, its address
        not judged by ``--deny-private``); with *tunnel_head* too, the ``CONNECT`` request
        to send it before the connection counts as made.
        """
        self._parent = parent
        self._tunnel_head = tunnel_head
        self._where = parent.label.removeprefix("the ") if parent else f"{host}:{port}"
        self._pending = self._network.resolve(host, port, self._resolved)

    @guarded
    def _resolved(self, addresses: list[Address] | None, error: BaseException | None) -> None:
        self._pending = None
        if not addresses:
            if self._parent is not None:
                detail = f"cannot resolve {self._where}: {describe(error)}"
            else:
                host = self._where.rpartition(":")[0]
                detail = f"cannot resolve host {host!r}: {describe(error)}"
            self._fail(DialFailure(DialError.NO_ADDRESS, 502, detail))
            return
        refusal = None if self._parent is not None else address_refusal(self._config, addresses)
        if refusal is not None:
            self._fail(DialFailure(DialError.FORBIDDEN_ADDRESS, 403, refusal, "TCP_DENIED"))
            return
        self._owner.dial_resolved()
        remaining = max(0.001, self._deadline - self._scheduler.time())
        self._pending = self._network.connect(addresses, self._connected, remaining)

    @guarded
    def _connected(self, attach: Attach | None, error: BaseException | None) -> None:
        self._pending = None
        if attach is None:
            self._fail(self._unreachable(error))
            return
        if self._tunnel_head is not None:
            handshake = ParentHandshake(self)
            handshake.begin(attach(handshake), self._tunnel_head)
            self._pending = handshake  # the deadline still runs: the parent may never answer
            return
        self._timer.cancel()
        self._owner.dial_connected(attach, b"")

    def _tunnel_ready(self, transport: TransportLike, early: bytes) -> None:
        self._pending = None
        self._timer.cancel()

        def attach(protocol: StreamProtocol) -> TransportLike:
            transport.set_protocol(protocol)
            return transport

        self._owner.dial_connected(attach, early)

    def _tunnel_refused(self, why: str) -> None:
        self._pending = None
        detail = f"{self._where} {why}"
        self._fail(DialFailure(DialError.CONNECT_FAILED, 502, detail))

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


class ParentHandshake(StreamProtocol):
    """Asks a parent proxy for a tunnel and reads its answer (the dialer's last step)."""

    __slots__ = ("dialer", "transport", "parser", "done")

    def internal_error(self, exc: BaseException) -> None:
        """Hand a bug in a callback to the dialer's owner."""
        self.done = True
        if self.transport is not None:
            self.transport.abort()
        self.dialer.internal_error(exc)

    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self.transport: TransportLike | None = None
        self.parser = ResponseParser()
        self.done = False

    def begin(self, transport: TransportLike, head: bytes) -> None:
        """Send the ``CONNECT`` request on the new connection."""
        self.transport = transport
        self.parser.expect("CONNECT")
        transport.write(head)

    def data_received(self, data: bytes) -> None:
        """Read the parent's answer as it comes."""
        self.parser.feed(data)
        self._read_answer()

    def eof_received(self) -> bool:
        """The parent closed before (or instead of) answering."""
        self.parser.feed_eof()
        self._read_answer()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection broke before the answer came."""
        if not self.done:
            self._give_up("closed the connection before answering the CONNECT")

    def cancel(self) -> None:
        """The attempt is abandoned (a timeout, the client gone): close the connection."""
        self.done = True
        if self.transport is not None:
            self.transport.abort()

    @guarded
    def _read_answer(self) -> None:
        if self.done:
            return
        while True:
            try:
                event = self.parser.next_event()
            except ProtocolError as exc:
                self._give_up(f"answered the CONNECT with a malformed response: {exc.message}")
                return
            if event is NEED_DATA:
                return
            if isinstance(event, Response):
                if event.status < 200:
                    continue  # an interim answer: the final one follows
                if event.status >= 300:
                    reason = f"{event.status} {event.reason}".strip()
                    self._give_up(f"refused the tunnel: {reason}")
                    return
                continue  # a 2xx: the parser pauses at once, the tunnel begins
            if event is PAUSED:
                self.done = True
                assert self.transport is not None
                self.dialer._tunnel_ready(self.transport, self.parser.take_trailing_data())
                return
            self._give_up("closed the connection before answering the CONNECT")
            return

    def _give_up(self, why: str) -> None:
        self.done = True
        if self.transport is not None:
            self.transport.abort()
        self.dialer._tunnel_refused(why)


def describe(error: BaseException | None) -> str:
    """A short human reason for a resolve or connect failure."""
    if error is None:
        return "no address"
    if isinstance(error, socket.gaierror):
        return error.strerror or str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__

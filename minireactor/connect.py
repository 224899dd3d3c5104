"""Non-blocking connect, with a deadline and fall-through across addresses.

Theory of operation
-------------------
``connect`` on a non-blocking socket returns at once with ``EINPROGRESS`` (Python raises
``BlockingIOError``). The handshake then finishes in the kernel, and the socket becomes
*writable* when it is done, successfully or not. Writability alone does not say which: we read
``SO_ERROR``, which is 0 on success or the ``errno`` of the failure (``ECONNREFUSED``, ...).

A name may resolve to several addresses (IPv6 and IPv4, say); if one refuses we try the next,
as ``socket.create_connection`` does. The whole attempt has one deadline, a timer on the reactor;
when it fires the attempt fails with :class:`TimeoutError`, which a proxy turns into 504.
Cancelling an attempt (the client went away) closes the half-open socket and the timer, so
nothing leaks.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from .loop import Reactor
from .resolver import Address, ResolverLike

ConnectCallback = Callable[[socket.socket | None, BaseException | None], None]
"""Receives ``(connected non-blocking socket, None)`` or ``(None, error)``."""


class ConnectAttempt:
    """One connection attempt in flight; call :meth:`cancel` to give it up."""

    def __init__(
        self,
        reactor: Reactor,
        callback: ConnectCallback,
        timeout: float,
    ) -> None:
        self.reactor = reactor
        self._callback = callback
        self._addresses: list[Address] = []
        self._sock: socket.socket | None = None
        self._last_error: BaseException | None = None
        self._done = False
        self._lookup: Any = None
        self._report: Any = None
        self._timer = reactor.call_later(timeout, self._on_deadline, timeout)

    def start(self, addresses: list[Address]) -> None:
        """Try *addresses* in order until one accepts."""
        if self._done:
            return
        self._addresses = list(addresses)
        self._try_next()

    def _try_next(self) -> None:
        while self._addresses:
            family, sockaddr = self._addresses.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                # e.g. IPv6 disabled on this host: fall through to the next address.
                self._last_error = exc
                continue
            sock.setblocking(False)
            try:
                sock.connect(sockaddr)
            except (BlockingIOError, InterruptedError):
                self._sock = sock
                self.reactor.add_writer(sock, self._on_writable)
                return
            except OSError as exc:
                sock.close()
                self._last_error = exc
                continue
            self._succeed(sock)
            return
        self._fail(self._last_error or ConnectionRefusedError("no address to connect to"))

    def _on_writable(self) -> None:
        sock = self._sock
        assert sock is not None
        self.reactor.remove_writer(sock)
        self._sock = None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            self._succeed(sock)
            return
        sock.close()
        self._last_error = _error_from_errno(code)
        self._try_next()

    def _succeed(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._finish(sock, None)

    def _fail(self, exc: BaseException) -> None:
        self._finish(None, exc)

    def _finish(self, sock: socket.socket | None, exc: BaseException | None) -> None:
        if self._done:
            if sock is not None:
                sock.close()
            return
        self._done = True
        self._timer.cancel()
        # Always report on a later tick, never inside connect(): callers may still be storing
        # the attempt object when an immediate failure would otherwise call them back.
        self._report = self.reactor.call_soon(self._deliver, sock, exc)

    def _deliver(self, sock: socket.socket | None, exc: BaseException | None) -> None:
        self._report = None
        self._callback(sock, exc)

    def _on_deadline(self, timeout: float) -> None:
        self._close_pending()
        if self._lookup is not None:
            self._lookup.cancel()
        self._fail(TimeoutError(f"connect did not complete within {timeout:g} s"))

    def _close_pending(self) -> None:
        if self._sock is not None:
            self.reactor.remove_writer(self._sock)
            self._sock.close()
            self._sock = None

    def cancel(self) -> None:
        """Abandon the attempt: no callback will run and nothing stays open."""
        if self._report is not None:
            # Finished but not yet reported: drop the report and anything it would hand over.
            self._report.cancel()
            sock = self._report.args[0]
            if sock is not None:
                sock.close()
            self._report = None
            return
        if self._done:
            return
        self._done = True
        self._timer.cancel()
        if self._lookup is not None:
            self._lookup.cancel()
        self._close_pending()


def _error_from_errno(code: int) -> OSError:
    if code == errno.ECONNREFUSED:
        return ConnectionRefusedError(code, os.strerror(code))
    if code == errno.ETIMEDOUT:
        return TimeoutError(code, os.strerror(code))
    return OSError(code, os.strerror(code))


def connect(
    reactor: Reactor,
    addresses: list[Address],
    callback: ConnectCallback,
    timeout: float = 10.0,
) -> ConnectAttempt:
    """Connect to the first of *addresses* that accepts, within *timeout* seconds."""
    attempt = ConnectAttempt(reactor, callback, timeout)
    attempt.start(addresses)
    return attempt


def connect_host(
    reactor: Reactor,
    resolver: ResolverLike,
    host: str,
    port: int,
    callback: ConnectCallback,
    timeout: float = 10.0,
) -> ConnectAttempt:
    """Resolve *host* with *resolver*, then connect; one deadline covers both steps.

    A failed look-up reaches *callback* as the resolver's error (``socket.gaierror``).
    """
    attempt = ConnectAttempt(reactor, callback, timeout)

    def resolved(addresses: list[Address] | None, error: BaseException | None) -> None:
        attempt._lookup = None
        if addresses:
            attempt.start(addresses)
        else:
            attempt._fail(error or socket.gaierror(socket.EAI_NONAME, f"no address for {host}"))

    attempt._lookup = resolver.resolve(host, port, resolved)
    return attempt

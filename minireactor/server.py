"""Listening sockets: accept in bounded batches, and survive running out of descriptors.

Theory of operation
-------------------
One readiness event on a listening socket may stand for many queued connections, so the accept
callback loops, but only up to ``batch`` times: a flood of new clients must not starve the ones
already connected, whose events wait behind this callback in the same tick.

When the process runs out of file descriptors (``EMFILE``/``ENFILE``) or kernel memory, the
pending connection stays in the backlog and the listening socket *stays readable*. Retrying at
once would spin the CPU at 100% doing nothing, so the server stops watching the socket and tries
again after a back-off that doubles up to one second, logging once per episode. Connections
finishing meanwhile free descriptors; the clients waiting in the backlog are then served.

A server can also be paused on purpose (:meth:`Server.pause`), which is how a cap on concurrent
connections keeps newcomers waiting in the kernel's backlog instead of in our memory.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from .loop import Reactor

log = logging.getLogger("minireactor.server")

AcceptCallback = Callable[[socket.socket, Any], None]
"""Called with each accepted (already non-blocking) socket and the peer's address."""

_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def _family_for(host: str) -> socket.AddressFamily:
    try:
        return (
            socket.AF_INET6
            if isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address)
            else socket.AF_INET
        )
    except ValueError:
        # A name: this runs once at start-up, before the loop serves anyone, so a blocking
        # look-up here cannot stall a connection.
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]


class Server:
    """A listening socket whose connections are handed to a callback."""

    def __init__(
        self,
        reactor: Reactor,
        sock: socket.socket,
        on_accept: AcceptCallback,
        *,
        batch: int = 64,
    ) -> None:
        self.reactor = reactor
        self.sock = sock
        self.on_accept = on_accept
        self.batch = batch
        self._paused = False
        self._closed = False
        self._backoff = 0.0
        self._retry: Any = None
        self.accepted = 0
        self.resource_errors = 0
        sock.setblocking(False)
        reactor.add_reader(sock, self._on_readable)

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` actually bound (useful with port 0)."""
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _on_readable(self) -> None:
        for _ in range(self.batch):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._back_off(exc)
                    return
                raise
            self._backoff = 0.0
            self.accepted += 1
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.on_accept(conn, addr)
            if self._paused or self._closed:
                return

    def _back_off(self, exc: OSError) -> None:
        self.resource_errors += 1
        if self._backoff == 0.0:
            log.warning("accept failed (%s); pausing accepts until descriptors free up", exc)
        self._backoff = min(1.0, max(0.05, self._backoff * 2))
        self.reactor.remove_reader(self.sock)
        self._retry = self.reactor.call_later(self._backoff, self._retry_accept)

    def _retry_accept(self) -> None:
        self._retry = None
        if not self._paused and not self._closed:
            self.reactor.add_reader(self.sock, self._on_readable)

    def pause(self) -> None:
        """Stop accepting; new clients wait in the kernel's backlog."""
        if not self._paused and not self._closed:
            self._paused = True
            self.reactor.remove_reader(self.sock)

    def resume(self) -> None:
        """Accept again after :meth:`pause`."""
        if self._paused and not self._closed:
            self._paused = False
            if self._retry is None:
                self.reactor.add_reader(self.sock, self._on_readable)

    @property
    def paused(self) -> bool:
        """Whether accepting is paused on purpose."""
        return self._paused

    def close(self) -> None:
        """Stop listening and close the socket; connections already accepted are untouched."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self.reactor.remove_reader(self.sock)
        self.sock.close()


def bind_socket(
    host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False
) -> socket.socket:
    """Create, bind and listen a TCP socket (blocking call, for start-up)."""
    family = _family_for(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def listen(
    reactor: Reactor,
    host: str,
    port: int,
    on_accept: AcceptCallback,
    *,
    backlog: int = 1024,
    batch: int = 64,
    reuse_port: bool = False,
) -> Server:
    """Listen on ``host:port`` (port 0: the kernel picks) and call *on_accept* per connection."""
    sock = bind_socket(host, port, backlog=backlog, reuse_port=reuse_port)
    return Server(reactor, sock, on_accept, batch=batch)

"""A buffered, non-blocking stream over one connected socket.

Theory of operation
-------------------
A non-blocking ``send`` may take only part of what it is given, and a fast producer (an origin
on loopback) can hand us data far quicker than a slow consumer (a phone on 3G) takes it. The
transport hides the first problem and makes the second visible:

* :meth:`Transport.write` never blocks. It tries ``send`` at once when nothing is queued (the
  common case costs no extra tick), keeps the rest in a ``bytearray`` and asks the reactor for
  writability until the buffer is empty. Deleting from the front of a ``bytearray`` is amortised
  O(1) in CPython, which is why asyncio uses one too.
* **Backpressure.** When the buffer grows past ``high_water`` the transport calls the protocol's
  ``pause_writing``; when it drains below ``low_water`` it calls ``resume_writing``. A proxy
  wires these *across* connections: the client's buffer filling pauses reading from the origin,
  so memory stays bounded by the water marks, not by the size of the download. The gap between
  the marks (hysteresis) stops the pair from flapping on every chunk.
* **Half-close.** :meth:`Transport.write_eof` sends FIN after the buffer drains
  (``shutdown(SHUT_WR)``) while reading goes on: a tunnel must pass one side's EOF to the
  other without dropping the reply still coming back.
* **Two ways to end.** :meth:`Transport.close` stops reading and closes once the buffer is flushed;
  :meth:`Transport.abort` drops the buffer and closes now. Either way the protocol hears exactly one
  ``connection_lost``, scheduled with ``call_soon`` so it never runs inside another callback.
* **Faults stay local.** An exception raised by the protocol while handling this connection's
  data is logged with its traceback and aborts *this* connection; the loop serves the others.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from .loop import Reactor
from .protocol import Protocol

log = logging.getLogger("minireactor.transport")

READ_SIZE = 256 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)
_UNKNOWN = object()
_TRY_AGAIN = (BlockingIOError, InterruptedError)
_MAX_GATHER = 64
_JOIN_BELOW = 16 * 1024
_PEER_GONE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class Transport:
    """Buffered non-blocking stream with water marks, half-close, close and abort."""

    # Slots, not a __dict__: a proxy holding 10,000 idle tunnels holds 20,000 transports.
    __slots__ = (
        "reactor",
        "sock",
        "protocol",
        "high_water",
        "low_water",
        "_fd",
        "_buffer",
        "_writing_paused",
        "_writer_on",
        "_corked",
        "_held",
        "_held_size",
        "_reading",
        "_closing",
        "_eof_pending",
        "_eof_sent",
        "_closed",
        "_peername",
        "_sockname",
        "_read_handler",
    )

    def __init__(
        self,
        reactor: Reactor,
        sock: socket.socket,
        protocol: Protocol,
        *,
        high_water: int = 256 * 1024,
        low_water: int | None = None,
    ) -> None:
        sock.setblocking(False)
        self.reactor = reactor
        self.sock = sock
        self.protocol = protocol
        self._fd = sock.fileno()
        self._buffer = bytearray()
        self.high_water = high_water
        self.low_water = high_water // 4 if low_water is None else low_water
        self._writing_paused = False
        self._writer_on = False
        self._corked = False
        self._held: list[bytes | bytearray | memoryview] | None = None  # written while corked
        self._held_size = 0
        self._reading = False
        self._closing = False
        self._eof_pending = False
        self._eof_sent = False
        self._closed = False
        # Asked for lazily: most transports never need their addresses, and two address tuples
        # per transport are a large share of an idle tunnel's memory.
        self._peername: Any = _UNKNOWN
        self._sockname: Any = _UNKNOWN
        self._read_handler: Callable[[], None] | None = None
        reactor.call_soon(self._start)

    def _start(self) -> None:
        if self._closed:
            return
        self._guard(self.protocol.connection_made, self)
        if not self._closing and not self._closed:
            self.resume_reading()

    # -- information -------------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"peername"``, ``"sockname"`` or ``"socket"``, as in asyncio."""
        if name == "socket":
            return self.sock
        if name == "peername":
            if self._peername is _UNKNOWN:
                self._peername = self._address(self.sock.getpeername)
            return self._peername
        if name == "sockname":
            if self._sockname is _UNKNOWN:
                self._sockname = self._address(self.sock.getsockname)
            return self._sockname
        return default

    @staticmethod
    def _address(ask: Any) -> Any:
        try:
            return ask()
        except OSError:
            return None  # already closed, or never connected

    def get_write_buffer_size(self) -> int:
        """Bytes accepted by :meth:`write` but not yet handed to the kernel."""
        return len(self._buffer) + self._held_size

    @property
    def is_closing(self) -> bool:
        """True once :meth:`Transport.close` or :meth:`Transport.abort` has been called."""
        return self._closing or self._closed

    @property
    def is_reading(self) -> bool:
        """Whether the transport is watching the socket for incoming bytes."""
        return self._reading

    def set_protocol(self, protocol: Protocol) -> None:
        """Hand the connection to another protocol (an HTTP session becoming a tunnel)."""
        self.protocol = protocol

    # -- reading -----------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading; the kernel's receive buffer fills and TCP slows the peer down."""
        if self._reading and not self._closed:
            self._reading = False
            self.reactor.remove_reader(self._fd)

    def resume_reading(self) -> None:
        """Start (or restart) reading."""
        if not self._reading and not self._closed and not self._closing:
            self._reading = True
            self.reactor.add_reader(self._fd, self._read_handler or self._on_readable)

    def set_read_handler(self, handler: Callable[[], None] | None) -> None:
        """Let *handler* take readable events instead of ``recv`` (None restores ``recv``).

        For zero-copy relays (:mod:`minireactor.splice`): the handler moves the bytes itself and
        reports EOF and errors as ``recv`` would (``eof_received``, :meth:`abort`), while pausing,
        closing and ``connection_lost`` stay the transport's.
        """
        self._read_handler = handler
        if self._reading:
            self.reactor.add_reader(self._fd, handler or self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except _TRY_AGAIN:
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            self._guard(self.protocol.data_received, data)
            return
        self.pause_reading()
        keep_open = self._guard(self.protocol.eof_received)
        if keep_open is not True and not self._closed:
            self.close()

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data*; never blocks. Ignored after close or half-close."""
        if self._closed or self._closing or self._eof_pending or self._eof_sent or not data:
            return
        if self._corked:
            # Held by reference, not copied: uncork() hands them all to one sendmsg().
            if self._held is None:
                self._held = [data]
            else:
                self._held.append(data)
            self._held_size += len(data)
            self._check_high_water()
            return
        if not self._buffer:
            try:
                sent = self.sock.send(data)
            except _TRY_AGAIN:
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._buffer += data
        self._want_writable()
        self._check_high_water()

    def cork(self) -> None:
        """Collect writes without sending until :meth:`uncork`.

        A response head, its body and its end written in one callback then leave in one
        system call instead of three: fewer system calls and fewer small TCP segments. The
        pieces are held by reference and sent with one ``sendmsg`` (gather I/O), so a large
        body written while corked is not copied into the buffer first.
        """
        self._corked = True

    def uncork(self) -> None:
        """Send what :meth:`cork` collected (as much as the kernel takes now)."""
        if not self._corked:
            return
        self._corked = False
        held = self._held
        if held is None:
            return
        size = self._held_size
        self._held = None
        self._held_size = 0
        if self._closed:
            return
        if self._buffer or self._writer_on:
            for piece in held:  # older bytes wait in the buffer: keep the order
                self._buffer += piece
            self._want_writable()
            return
        if len(held) > 1 and (size <= _JOIN_BELOW or len(held) > _MAX_GATHER):
            # Copying a few small pieces is cheaper than sendmsg's setup (and sendmsg takes
            # at most IOV_MAX pieces); large pieces go by reference.
            held = [b"".join(held)]
        try:
            sent = self.sock.sendmsg(held) if len(held) > 1 else self.sock.send(held[0])
        except _TRY_AGAIN:
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        for piece in held:  # keep what the kernel did not take
            length = len(piece)
            if sent >= length:
                sent -= length
                continue
            self._buffer += memoryview(piece)[sent:]
            sent = 0
        if self._buffer:
            self._want_writable()
        self._check_low_water()

    def _want_writable(self) -> None:
        if not self._writer_on:
            self._writer_on = True
            self.reactor.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._buffer)
        except _TRY_AGAIN:
            self._want_writable()
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del self._buffer[:sent]
        # resume_writing may queue more bytes, or ask for close/write_eof: check afterwards.
        self._check_low_water()
        if self._closed:
            return
        if self._buffer:
            self._want_writable()
            return
        if self._writer_on:
            self._writer_on = False
            self.reactor.remove_writer(self._fd)
        if self._eof_pending:
            self._shutdown_write()
        if self._closing:
            self._finish_close(None)

    def _check_high_water(self) -> None:
        if not self._writing_paused and len(self._buffer) + self._held_size > self.high_water:
            self._writing_paused = True
            self._guard(self.protocol.pause_writing)

    def _check_low_water(self) -> None:
        if self._writing_paused and len(self._buffer) + self._held_size <= self.low_water:
            self._writing_paused = False
            self._guard(self.protocol.resume_writing)

    def write_eof(self) -> None:
        """Half-close: send FIN once the buffer is flushed; reading continues."""
        if self._closed or self._closing or self._eof_pending or self._eof_sent:
            return
        self.uncork()
        if self._buffer:
            self._eof_pending = True
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self._eof_pending = False
        self._eof_sent = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                self._fatal(exc)

    # -- ending ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading, flush what is buffered, then close."""
        if self._closing or self._closed:
            return
        self.uncork()
        self._closing = True
        self.pause_reading()
        self._reading = False
        if not self._buffer:
            self._finish_close(None)

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the buffer and close at once."""
        if self._closed:
            return
        self._closing = True
        self._finish_close(exc)

    def _fatal(self, exc: BaseException) -> None:
        if not isinstance(exc, _PEER_GONE):
            log.debug("transport %s failed: %r", self.get_extra_info("peername"), exc)
        self.abort(exc)

    def _finish_close(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._held = None
        self._held_size = 0
        self.reactor.remove_reader(self._fd)
        self.reactor.remove_writer(self._fd)
        if exc is not None:
            # RST instead of FIN: the peer must not mistake a cut message for a complete one.
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.sock.close()
        self.reactor.call_soon(self._guard, self.protocol.connection_lost, exc)

    def _guard(self, method: Any, *args: Any) -> Any:
        """Call a protocol method; if it raises, log it and abort this connection only."""
        try:
            return method(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            log.error(
                "protocol %s raised in %s; closing its connection",
                type(self.protocol).__name__,
                getattr(method, "__name__", method),
                exc_info=exc,
            )
            if method.__name__ != "connection_lost":
                self.abort(exc)
            return None

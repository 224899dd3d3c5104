"""Zero-copy relaying with ``os.splice``: socket to pipe to socket, the bytes never enter Python.

Theory of operation
-------------------
A relay that ``recv``-s into a ``bytes`` object and ``send``-s it on copies every byte twice
between the kernel and the interpreter. Linux's ``splice(2)`` moves data between a descriptor
and a *pipe* inside the kernel, so a relay can go ``socket -> pipe -> socket`` with two system
calls per chunk and no copy into Python at all. The price is the pipe: two descriptors and a
kernel buffer. A proxy holding 10,000 idle tunnels cannot give each one a pipe, so:

* **Pipes are borrowed, not owned.** :class:`PipePool` hands out a pipe when a direction becomes
  readable and takes it back as soon as the pipe is empty again. An idle tunnel holds none; the
  pool keeps a few spare pipes (``max_idle``) and never more than ``max_pipes`` in all. When the
  pool is exhausted, or the process is out of descriptors, the chunk simply goes the plain way
  (``recv`` then :meth:`Transport.write <minireactor.transport.Transport.write>`).
* **Backpressure through the pipe.** After ``splice(socket -> pipe)`` the relay at once tries
  ``splice(pipe -> socket)``. If the destination takes everything, the pipe goes back to the
  pool. If not (``EAGAIN`` or a partial move), the relay keeps the pipe, stops reading its
  source and waits for the destination to be writable: the bytes wait in one pipe, the rest in
  kernel socket buffers, and TCP slows the sender down. Memory stays bounded by the pipe size.
* **Order is kept.** Bytes already in the destination transport's write buffer (a response head,
  early bytes from a parser) must leave first, so a chunk is spliced only while that buffer is
  empty; otherwise it takes the plain path behind them. While a pipe holds bytes nothing else
  writes to the destination, and the source is not read, so an EOF is seen only once everything
  before it was delivered.
* **The transport stays in charge of its socket.** :class:`Splicer` plugs into the transport with
  :meth:`Transport.set_read_handler <minireactor.transport.Transport.set_read_handler>`, so
  ``pause_reading``, ``close``, ``abort`` and ``connection_lost`` work exactly as before; EOF
  goes to the protocol's ``eof_received`` and errors abort the transport, as ``recv`` would.

``F_SETPIPE_SZ`` grows each pipe (64 KiB by default) to :data:`PIPE_SIZE` when allowed, so one
readable event can move as much as one 256 KiB ``recv``. Where ``os.splice`` is missing (not
Linux, or Python before 3.10) :data:`AVAILABLE` is False and callers keep the plain path.
"""

from __future__ import annotations

import errno
import logging
import os

# At import time, not when the first pipe is made: an import on the loop reads files, and
# fails when the process is out of descriptors, exactly when a busy proxy makes pipes.
try:
    import fcntl
except ImportError:  # not a POSIX system: AVAILABLE is False there anyway
    fcntl = None  # type: ignore[assignment]

from .loop import Reactor
from .protocol import Protocol, TransportLike
from .transport import READ_SIZE, Transport

log = logging.getLogger("minireactor.splice")

AVAILABLE: bool = hasattr(os, "splice") and hasattr(os, "pipe2") and fcntl is not None
"""Whether this platform can splice (Linux with Python 3.10 or later)."""

PIPE_SIZE = 256 * 1024
"""The pipe capacity asked for with ``F_SETPIPE_SZ``: one chunk, as large as one ``recv``."""

_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0
_TRY_AGAIN = (BlockingIOError, InterruptedError)
_CANNOT_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


class Pipe:
    """Both ends of one non-blocking pipe and its capacity in bytes."""

    __slots__ = ("read_fd", "write_fd", "size")

    def __init__(self, read_fd: int, write_fd: int, size: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.size = size

    def close(self) -> None:
        """Close both descriptors (whatever the pipe still holds is dropped)."""
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_fd = self.write_fd = -1


class PipePool:
    """A few pipes lent to relays while they move a chunk (one pool per reactor)."""

    def __init__(self, *, size: int = PIPE_SIZE, max_pipes: int = 64, max_idle: int = 4) -> None:
        if not AVAILABLE:
            raise RuntimeError("os.splice is not available on this platform")
        self.size = size
        self.max_pipes = max_pipes
        self.max_idle = max_idle
        self._idle: list[Pipe] = []
        self.in_use = 0
        """Pipes lent out now."""
        self.created = 0
        """Pipes created over the pool's life (a steady figure means they are reused)."""
        self.refused = 0
        """Requests answered with None: pool exhausted or no descriptor left."""
        self._closed = False

    @property
    def idle(self) -> int:
        """Empty pipes kept for the next borrower."""
        return len(self._idle)

    def acquire(self) -> Pipe | None:
        """An empty pipe, or None if the pool is at ``max_pipes`` or pipes cannot be made."""
        if self._idle:
            self.in_use += 1
            return self._idle.pop()
        if self._closed or self.in_use >= self.max_pipes:
            self.refused += 1
            return None
        try:
            read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # EMFILE/ENFILE: the caller falls back to recv/send, no harm done
            self.refused += 1
            return None
        size = 65536
        try:
            size = fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            # EPERM beyond /proc/sys/fs/pipe-max-size or the user's pipe-user-pages limits:
            # the pipe keeps its default size, which only means smaller chunks.
            try:
                size = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
            except OSError:
                pass
        self.created += 1
        self.in_use += 1
        return Pipe(read_fd, write_fd, size)

    def release(self, pipe: Pipe) -> None:
        """Take back an *empty* pipe (keep it if fewer than ``max_idle`` wait, else close it)."""
        self.in_use -= 1
        if not self._closed and len(self._idle) < self.max_idle:
            self._idle.append(pipe)
        else:
            pipe.close()

    def discard(self, pipe: Pipe) -> None:
        """Take back a pipe that may still hold bytes: close it, never lend it again."""
        self.in_use -= 1
        pipe.close()

    def close(self) -> None:
        """Close the idle pipes; pipes lent out are closed when they come back."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class Splicer(Protocol):
    """Protocol base: relay what its transport receives to :meth:`sink`, by splice when it can.

    A subclass provides ``transport`` (the source, set in ``connection_made`` or by its owner),
    :meth:`sink` (the destination transport) and ``eof_received``; :meth:`use_pipes` switches
    the transport from ``recv`` to :meth:`splice_readable`. Without it (or when no pipe can be
    had) bytes arrive through :meth:`data_received` and go out with ``sink().write``.
    """

    __slots__ = ("received", "_pool", "_pipe", "_pending", "_reactor")

    transport: TransportLike | None

    def __init__(self) -> None:
        self.received = 0
        self._pool: PipePool | None = None
        self._pipe: Pipe | None = None
        self._pending = 0
        self._reactor: Reactor | None = None  # set with the pipes: splicing watches the sink

    def sink(self) -> TransportLike | None:
        """The transport this end's bytes go to (None once there is none)."""
        raise NotImplementedError

    @property
    def pipe_pending(self) -> int:
        """Bytes read from the source and held in a pipe, not yet taken by the sink."""
        return self._pending

    def use_pipes(self, pool: PipePool) -> bool:
        """Splice from now on, borrowing pipes from *pool* (call before reading starts).

        Only a real socket :class:`~minireactor.transport.Transport` can splice; for any other
        transport this returns False and the end relays the plain way.
        """
        transport = self.transport
        if not isinstance(transport, Transport):
            return False
        self._pool = pool
        self._reactor = transport.reactor
        transport.set_read_handler(self.splice_readable)
        return True

    # -- the plain path ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes that came through ``recv``: hand them to the sink's buffer."""
        self.received += len(data)
        sink = self.sink()
        if sink is not None:
            sink.write(data)

    # -- the splice path ---------------------------------------------------------------------

    def splice_readable(self) -> None:
        """The source is readable: move one chunk towards the sink."""
        source = self.transport
        if not isinstance(source, Transport):
            return
        try:
            self._read_chunk(source)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # a bug here costs this connection only, as in Transport
            log.error("splice relay failed; closing its connection", exc_info=exc)
            self.drop_pipe()
            source.abort(exc)

    def _read_chunk(self, source: Transport) -> None:
        if self._pipe is not None:  # the last chunk is still on its way: wait for the sink
            source.pause_reading()
            return
        sink = self.sink()
        pool = self._pool
        pipe = None
        # Bytes already queued in the sink go first: while there are any, take the plain path.
        if pool is not None and sink is not None and not sink.get_write_buffer_size():
            pipe = None if sink.is_closing else pool.acquire()
        if pipe is None:
            self._read_plain(source)
            return
        assert pool is not None
        fd = source.get_extra_info("socket").fileno()
        try:
            moved = os.splice(fd, pipe.write_fd, pipe.size, flags=_FLAGS)
        except _TRY_AGAIN:
            pool.release(pipe)
            return
        except OSError as exc:
            pool.release(pipe)  # a failed splice moved nothing: the pipe is still empty
            if exc.errno in _CANNOT_SPLICE:
                # A socket type without splice support: this end relays the plain way from now.
                self._pool = None
                self._read_plain(source)
            else:
                source.abort(exc)
            return
        if moved == 0:
            pool.release(pipe)
            self._end_of_input(source)
            return
        self.received += moved
        self._pipe = pipe
        self._pending = moved
        if self._flush() and self._pending:
            # The sink is full: keep the pipe, stop reading, wait until the sink can take more.
            source.pause_reading()
            sink_sock = sink.get_extra_info("socket") if sink is not None else None
            if sink_sock is not None and sink_sock.fileno() >= 0:
                source.reactor.add_writer(sink_sock.fileno(), self._sink_writable)

    def _read_plain(self, source: Transport) -> None:
        try:
            data = source.get_extra_info("socket").recv(READ_SIZE)
        except _TRY_AGAIN:
            return
        except OSError as exc:
            source.abort(exc)
            return
        if data:
            self.data_received(data)
        else:
            self._end_of_input(source)

    def _end_of_input(self, source: Transport) -> None:
        # What Transport does on EOF: stop reading, ask the protocol, close unless told not to.
        source.pause_reading()
        if self.eof_received() is not True:
            source.close()

    def _flush(self) -> bool:
        """Splice what the pipe holds into the sink; False if the sink is gone (pipe dropped)."""
        pipe = self._pipe
        sink = self.sink()
        sock = sink.get_extra_info("socket") if sink is not None else None
        if pipe is None or sink is None or sock is None or sock.fileno() < 0 or sink.is_closing:
            if sink is not None and self._pending:
                # Never let a FIN pass for a complete stream when bytes were lost: reset.
                sink.abort(ConnectionAbortedError("closed with undelivered relay bytes"))
            self.drop_pipe()
            return False
        try:
            for _ in range(64):  # bounded: each pass moves bytes or stops
                sent = os.splice(pipe.read_fd, sock.fileno(), self._pending, flags=_FLAGS)
                if sent <= 0:
                    break
                self._pending -= sent
                if not self._pending:
                    break
        except _TRY_AGAIN:
            pass
        except OSError as exc:
            self.drop_pipe()
            sink.abort(exc)
            return False
        if not self._pending:
            self._pipe = None
            assert self._pool is not None
            self._pool.release(pipe)
        return True

    def _sink_writable(self) -> None:
        source = self.transport
        sink = self.sink()
        if not self._flush() or self._pending:
            return
        # Drained: stop watching the sink (our registration) and read the source again.
        if sink is not None and source is not None:
            sock = sink.get_extra_info("socket")
            if sock is not None and sock.fileno() >= 0:
                assert self._reactor is not None
                self._reactor.remove_writer(sock.fileno())
            source.resume_reading()

    def drop_pipe(self) -> None:
        """Give the pipe back (closed if it still holds bytes) and stop watching the sink.

        Safe to call at any time, also after either transport closed: a closed socket reports
        descriptor -1, so a number reused by a new connection is never touched.
        """
        pipe = self._pipe
        if pipe is None:
            return
        pending = self._pending
        self._pipe = None
        self._pending = 0
        sink = self.sink()
        sock = sink.get_extra_info("socket") if sink is not None else None
        if pending and sink is not None and sock is not None and sock.fileno() >= 0:
            assert self._reactor is not None
            self._reactor.remove_writer(sock.fileno())
        assert self._pool is not None
        if pending:
            self._pool.discard(pipe)
        else:
            self._pool.release(pipe)

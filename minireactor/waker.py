"""The self-pipe: how another thread wakes a reactor sleeping in ``select``.

Theory of operation
-------------------
The reactor spends most of its life blocked in ``selector.select(timeout)``. A resolver thread
or a file watcher that appends a callback to the reactor's queue must also end that sleep, or the
callback waits for the next unrelated event or timer. ``select`` only wakes for file descriptors,
so we give it one: a connected socket pair whose read end is registered with the selector. Any
thread may write one byte to the write end (:meth:`Waker.wake`); the loop wakes, drains the bytes
and runs the queued callbacks. It is the classic "self-pipe trick" (D. J. Bernstein); a socket
pair instead of ``os.pipe`` keeps it portable to Windows, as asyncio does.

Both ends are non-blocking. If the write end is full, the read end is already readable, so a
failed write loses nothing and the waking thread never blocks.
"""

from __future__ import annotations

import socket


class Waker:
    """A socket pair whose read end becomes readable when :meth:`wake` is called."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """The descriptor the reactor watches for readability."""
        return self._reader.fileno()

    def write_fileno(self) -> int:
        """The write end, for :func:`signal.set_wakeup_fd` (the C signal handler writes to it)."""
        return self._writer.fileno()

    def wake(self) -> None:
        """Make :meth:`fileno` readable; safe to call from any thread, never blocks."""
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the buffer is full, so the loop is awake already
        except OSError:
            pass  # closed during shutdown: nobody is left to wake

    def drain(self) -> None:
        """Swallow every pending wake byte; called on the loop when the reader is ready."""
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        """Close both ends."""
        self._reader.close()
        self._writer.close()

"""What the checkers share: student code in a thread, loopback clients, captured loop errors.

Theory of operation
-------------------
A checker runs code that may be unfinished or wrong, so every way it can misbehave must end
in a verdict, not in a hung or crashed notebook:

* Student servers run in a daemon thread (:class:`Background`). An exception raised there is
  kept and re-raised on the checker's thread, so the stub's ``NotImplementedError`` still
  reads as "not done"; :meth:`Background.settle` notices a thread that died at once, without
  waiting for a client to time out. A server that ignores ``stop`` is reported as wrong.
* Clients connect to ``127.0.0.1`` with a timeout on every call; no check waits forever.
* A reactor runs every callback inside ``try`` and logs what it raises, and so does a
  transport for its protocol. :func:`loop_errors` catches those log records, so that a
  ``NotImplementedError`` raised inside a callback still means "not done", and anything else
  is reported as the student's exception instead of a traceback on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from .checks import NotDone, Wrong

HOST = "127.0.0.1"


class Background:
    """Run ``target(*args)`` in a daemon thread and keep whatever it raises."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str = "exercise") -> None:
        self._target = target
        self._args = args
        self.error: BaseException | None = None
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._target(*self._args)
        except BaseException as exc:
            self.error = exc

    def start(self) -> Background:
        """Start the thread; return self."""
        self.thread.start()
        return self

    def raise_error(self) -> None:
        """Re-raise, on the caller's thread, what the student's code raised, if anything."""
        if self.error is not None:
            raise self.error

    def settle(self, seconds: float = 0.05) -> None:
        """Give the thread *seconds* to fail at once (a stub raises in microseconds)."""
        self.thread.join(seconds)
        self.raise_error()

    def join(self, timeout: float, what: str) -> None:
        """Wait for the thread to end; :class:`Wrong` naming *what* if it does not."""
        self.thread.join(timeout)
        self.raise_error()
        if self.thread.is_alive():
            raise Wrong(
                f"{what} was still running {timeout:.0f} s after it was asked to stop",
                "check `stop.is_set()` often: block only in calls with a short timeout",
            )


class Serving:
    """``with Serving(serve, *args) as address:`` runs ``serve(listener, stop, *args)``.

    The listener listens on 127.0.0.1 with port 0. On exit ``stop`` is set, the server must
    return within *stop_timeout* seconds, and the listener is closed. If the body fails while
    the server thread has died with an exception, that exception is the one reported.
    """

    def __init__(
        self,
        serve: Callable[..., Any],
        *args: Any,
        backlog: int = 64,
        buffer_size: int | None = None,
        stop_timeout: float = 3.0,
    ) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if buffer_size is not None:  # accepted sockets inherit these
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
        self.listener.bind((HOST, 0))
        self.listener.listen(backlog)
        self.address: tuple[str, int] = self.listener.getsockname()
        self.stop = threading.Event()
        self.stop_timeout = stop_timeout
        self.server = Background(serve, self.listener, self.stop, *args, name="student-server")

    def __enter__(self) -> tuple[str, int]:
        try:
            self.server.start().settle()
        except BaseException:
            self.stop.set()
            self.listener.close()
            raise
        return self.address

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop.set()
        try:
            if exc is None:
                self.server.join(self.stop_timeout, "your server")
                return
            self.server.thread.join(self.stop_timeout)
            if self.server.error is not None:
                raise self.server.error from exc  # the cause of what the checker saw
        finally:
            self.listener.close()


def connect(address: tuple[str, int], timeout: float = 3.0) -> socket.socket:
    """A blocking client socket connected to *address*, with *timeout* on every call."""
    return socket.create_connection(address, timeout=timeout)


def receive_exactly(sock: socket.socket, size: int, timeout: float) -> bytes:
    """Read until *size* bytes arrived, EOF, or *timeout* seconds; return what came."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    while len(received) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(size - len(received))
        except TimeoutError:
            break
        if not data:
            break
        received += data
    return bytes(received)


def echoed(sock: socket.socket, message: bytes, timeout: float = 3.0) -> bool:
    """Send *message* and tell whether exactly it came back within *timeout*."""
    sock.sendall(message)
    return receive_exactly(sock, len(message), timeout) == message


def sees_eof(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes *sock* (an empty read or a reset) within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll *predicate* until it holds or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


def threads_settle(baseline: int, timeout: float = 3.0) -> bool:
    """Whether the thread count comes back down to *baseline* within *timeout*."""
    return wait_until(lambda: threading.active_count() <= baseline, timeout)


def open_fds() -> int:
    """How many file descriptors this process has open (Linux: /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd"))


def spin(seconds: float) -> None:
    """Keep the CPU busy for *seconds*: a callback that is slow, without sleeping."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _raise_collected(errors: list[BaseException]) -> None:
    for error in errors:
        if isinstance(error, NotImplementedError):
            raise NotDone(
                "a method of your code still raises NotImplementedError (the loop caught it)"
            )
    if errors:
        raise errors[0]


@contextlib.contextmanager
def loop_errors() -> Iterator[list[BaseException]]:
    """Collect what callbacks raised on a minireactor loop (instead of logging it).

    On exit, even when the checked code failed meanwhile, a collected
    :class:`NotImplementedError` becomes :class:`NotDone`, and any other collected exception
    is raised again for :func:`course.checks.run` to report: it is the cause, whatever
    symptom the checker saw next.
    """
    logger = logging.getLogger("minireactor")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.errors
    except BaseException:
        _raise_collected(handler.errors)
        raise
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    _raise_collected(handler.errors)

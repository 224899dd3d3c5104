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

The later rungs need more of the world, and get it without waiting on real time where they can:
:class:`VirtualClock` runs timers only when a check moves its time (exact, however loaded the
machine); :func:`import_support` brings in the fake world of ``tests/support.py`` that notebook
07 uses; :class:`ThreadedOrigin` and :func:`running_proxy` start a loopback origin and the
real proxy in threads, stopped on exit, and :class:`KeepLines` collects the access log.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from minireactor import Handle, TimerHandle
from minireactor.timers import TimerHeap

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


def fds_left_open(baseline: int, timeout: float = 2.0) -> int:
    """How many descriptors above *baseline* are still open once *timeout* has let them close.

    Other threads of the process (a server of an earlier cell, the test runner) open and close
    descriptors of their own while a check runs, so the count is compared with ``>`` and given
    time to come down, never compared for equality at one instant.
    """
    wait_until(lambda: open_fds() <= baseline, timeout)
    return max(0, open_fds() - baseline)


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


class VirtualClock:
    """A scheduler on virtual time: ``time``, ``call_soon``, ``call_later``, ``call_at``.

    Nothing runs until :meth:`advance` moves the time (and :meth:`run` runs what is ready), so
    a check of timers is exact and instantaneous whatever the machine's load. :attr:`pending`
    counts the live timers, which is how a check sees "one timer for all of them".
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.timers = TimerHeap()
        self.ready: collections.deque[Handle] = collections.deque()

    def time(self) -> float:
        """The virtual time, in seconds."""
        return self.now

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run *callback* at the next :meth:`run`."""
        handle = Handle(callback, args)
        self.ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run *callback* *delay* virtual seconds from now."""
        return self.timers.push(self.now + delay, callback, args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run *callback* at the virtual time *when*."""
        return self.timers.push(when, callback, args)

    @property
    def pending(self) -> int:
        """How many timers are scheduled and not cancelled."""
        return len(self.timers)

    def run(self, limit: int = 100_000) -> None:
        """Run the ready callbacks, and the ones they schedule, until none is left."""
        ran = 0
        while self.ready:
            handle = self.ready.popleft()
            if not handle.cancelled:
                handle.run()
            ran += 1
            if ran > limit:
                raise Wrong("callbacks keep scheduling callbacks: is there a loop of call_soon?")

    def advance(self, seconds: float) -> None:
        """Move the time forward by *seconds*, running every timer due on the way, in order."""
        target = self.now + seconds
        self.run()
        while (when := self.timers.next_deadline()) is not None and when <= target:
            self.now = max(self.now, when)
            for timer in self.timers.pop_due(self.now):
                if not timer.cancelled:
                    timer.run()
            self.run()
        self.now = target


def import_support() -> Any:
    """The project's ``tests/support.py`` (the fake world of notebook 07), imported once."""
    try:
        import support  # type: ignore[import-not-found]  # the notebook put ../tests on the path
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
        import support
    return support


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A keep-alive origin for the checks: ``answer`` maps a path to (status, fields, body)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status, fields, body = self.answers.get(
            self.path.split("?", 1)[0], (200, {}, f"the page at {self.path}\n".encode())
        )
        self.send_response(status)
        for name, value in fields.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class ThreadedOrigin:
    """``with ThreadedOrigin(handler) as port:`` an ``http.server`` on 127.0.0.1 in a thread.

    *wrap* (an ``ssl.SSLContext``) makes it a TLS origin. On exit the server is shut down and
    its thread joined.
    """

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], wrap: Any = None) -> None:
        self.server = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self.server.daemon_threads = True
        if wrap is not None:
            self.server.socket = wrap.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> int:
        self.thread.start()
        return int(self.server.server_address[1])

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextlib.contextmanager
def running_proxy(
    hosts: dict[str, str], blocklist: str = "", access_sink: Any = None, **settings: Any
) -> Iterator[Any]:
    """The real proxy (``proxy.app.ProxyServer``) on 127.0.0.1, its reactor in a thread.

    Names resolve from *hosts* only (a ``StaticResolver``); the blocklist is *blocklist*, in a
    temporary file, not watched. Yields the server; on exit it is stopped and its thread joined.
    """
    from minireactor import Reactor, StaticResolver
    from proxy.app import ProxyServer
    from proxy.config import Config

    reactor = Reactor()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "blacklist.txt"
        path.write_text(blocklist, encoding="utf-8")
        config = Config(
            port=0,
            blacklist=str(path),
            watch_blacklist=False,
            access_log="stderr" if access_sink is not None else "none",
            **settings,
        )
        server = ProxyServer(
            config,
            reactor=reactor,
            resolver=StaticResolver(reactor, hosts),
            access_sink=access_sink,
        )
        server.start_in_thread()
        try:
            yield server
        finally:
            server.stop_from_thread()
            reactor.close()


class KeepLines:
    """An access-log sink (``ProxyServer(access_sink=...)``) that keeps the lines it gets."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, data: bytes) -> None:
        """Keep *data*'s lines."""
        self.lines.extend(data.decode("utf-8", "replace").splitlines())

    def reopen(self) -> None:
        """Nothing to reopen."""

    def close(self) -> None:
        """Nothing to close."""

    def wait_for(self, needle: str, timeout: float = 5.0) -> str | None:
        """The first line containing *needle*, once the proxy has written it (None: never)."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines if needle in line][:1]
            return bool(found)

        wait_until(seen, timeout)
        return found[0] if found else None


def status_of(sock: socket.socket, timeout: float = 5.0) -> int | None:
    """The status code of the response head arriving on *sock* (None: none within *timeout*)."""
    head = bytearray()
    deadline = time.monotonic() + timeout
    while b"\r\n" not in head and (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data = sock.recv(4096)
        except (TimeoutError, ConnectionError):
            break
        if not data:
            break
        head += data
    parts = bytes(head).split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None

"""The reactor: one thread, one selector, and one place where callbacks run.

Theory of operation
-------------------
Design principles, numbered in the manner of curio's kernel:

1. **One thread owns everything.** Sockets, buffers, timers and the state of every connection are
   touched only by the thread running :meth:`Reactor.run_forever`. There are no locks around that
   state because no other thread may reach it; other threads talk to the loop only through
   :meth:`Reactor.call_soon_threadsafe`.
2. **Nothing blocks.** A callback that sleeps, reads a file or resolves a name stalls every
   connection at once. Slow work goes to a thread and comes back as a callback.
3. **Callbacks run in one place.** :meth:`Reactor.run_once` is the whole algorithm:

   a. work out how long ``select`` may sleep: zero if callbacks are ready, else until the
      earliest timer, else forever;
   b. ``select`` and queue the reader/writer callback of every ready descriptor;
   c. queue every timer whose deadline has passed;
   d. run exactly the callbacks that were queued *before this step began*. A callback scheduled
      by a callback waits for the next tick, so a chain of ``call_soon`` can never starve I/O.

4. **A failing callback costs one connection, not the server.** Every callback runs inside
   ``try``; an exception is logged with its traceback and handed to the exception handler,
   and the loop carries on. Transports go one step further and abort the connection whose
   protocol raised.
5. **Signals are callbacks too.** :meth:`Reactor.add_signal_handler` turns a signal into a
   callback on the loop, and points :func:`signal.set_wakeup_fd` at the waker so that a signal
   the kernel hands to another thread still ends the main thread's ``select``.
6. **The loop can be watched.** A trace hook (off by default, so it costs one ``is None`` test)
   reports ticks, descriptor events and callbacks, which is how the notebooks draw timelines.

The selector key's ``data`` holds the ``(reader, writer)`` pair of handles for one descriptor,
as in CPython's ``selector_events.py``, so one registration serves both directions.
"""

from __future__ import annotations

import collections
import logging
import selectors
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .timers import Handle, TimerHandle, TimerHeap
from .waker import Waker

log = logging.getLogger("minireactor")

TraceHook = Callable[[str, dict[str, Any]], None]
"""A trace hook receives an event name (``"tick"``, ``"fd"``, ``"callback"``) and its details."""

ExceptionHandler = Callable[[dict[str, Any]], None]
"""Called with ``{"message", "exception", "handle"}`` when a callback raises."""


class Reactor:
    """A single-threaded event loop on :mod:`selectors`, driven by callbacks."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        self._ready: collections.deque[Handle] = collections.deque()
        self._timers = TimerHeap()
        self._waker = Waker()
        self._signal_handlers: dict[int, Any] = {}  # signum -> the handler we replaced
        self._previous_wakeup_fd: int | None = None
        self._stopping = False
        self._closed = False
        self._thread_id: int | None = None
        self._trace: TraceHook | None = None
        self._exception_handler: ExceptionHandler = self._default_exception_handler
        self.ticks = 0
        self._selector.register(self._waker.fileno(), selectors.EVENT_READ, (None, None))

    # -- time and scheduling ---------------------------------------------------------------

    def time(self) -> float:
        """The reactor's clock: :func:`time.monotonic`, immune to wall-clock jumps."""
        return time.monotonic()

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the next tick. Loop thread only."""
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after *delay* seconds. Loop thread only."""
        return self._timers.push(time.monotonic() + delay, callback, args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` at :meth:`time` *when*. Loop thread only."""
        return self._timers.push(when, callback, args)

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the loop; the only method other threads may call.

        ``deque.append`` is atomic in CPython, so the queue needs no lock; the waker byte ends
        the loop's ``select`` so the callback runs now rather than at the next unrelated event.
        """
        handle = Handle(callback, args)
        self._ready.append(handle)
        self._waker.wake()
        return handle

    # -- descriptors -------------------------------------------------------------------------

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` whenever *fd* is readable (replaces any previous reader)."""
        self._set_handler(fd, 0, Handle(callback, args))

    def add_writer(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` whenever *fd* is writable (replaces any previous writer)."""
        self._set_handler(fd, 1, Handle(callback, args))

    def remove_reader(self, fd: Any) -> bool:
        """Stop watching *fd* for readability; return whether it was watched."""
        return self._clear_handler(fd, 0)

    def remove_writer(self, fd: Any) -> bool:
        """Stop watching *fd* for writability; return whether it was watched."""
        return self._clear_handler(fd, 1)

    def _set_handler(self, fd: Any, slot: int, handle: Handle) -> None:
        try:
            key = self._selector.get_key(fd)
        except KeyError:
            pair = (handle, None) if slot == 0 else (None, handle)
            events = selectors.EVENT_READ if slot == 0 else selectors.EVENT_WRITE
            self._selector.register(fd, events, pair)
            return
        reader, writer = key.data
        # A replaced handle may already sit in this tick's ready queue: cancel it so only the
        # new callback runs.
        if slot == 0:
            if reader is not None:
                reader.cancel()
            reader = handle
        else:
            if writer is not None:
                writer.cancel()
            writer = handle
        self._selector.modify(fd, key.events | (1 << slot), (reader, writer))

    def _clear_handler(self, fd: Any, slot: int) -> bool:
        try:
            key = self._selector.get_key(fd)
        except (KeyError, ValueError):
            return False
        reader, writer = key.data
        old = reader if slot == 0 else writer
        if slot == 0:
            reader = None
        else:
            writer = None
        events = key.events & ~(1 << slot)
        if events:
            self._selector.modify(fd, events, (reader, writer))
        else:
            self._selector.unregister(fd)
        if old is not None:
            old.cancel()
        return old is not None

    # -- signals ---------------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop whenever signal *signum* arrives. Main thread only.

        Python runs a signal's handler on the main thread between two bytecodes. The kernel,
        though, may interrupt any thread (a file watcher, a resolver), and then the main thread,
        asleep in ``select``, gets no ``EINTR`` and sleeps on. :func:`signal.set_wakeup_fd` makes
        the C-level handler write the signal number to the waker, whichever thread it runs on,
        so ``select`` returns, the handler runs and queues the callback for this tick.

        :raises ValueError: if called from a thread other than the main thread.
        """
        if self._previous_wakeup_fd is None:
            fd = self._waker.write_fileno()
            self._previous_wakeup_fd = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)

        def on_signal(_signum: int, _frame: Any) -> None:
            self.call_soon_threadsafe(callback, *args)

        previous = signal.signal(signum, on_signal)
        self._signal_handlers.setdefault(signum, previous)

    def remove_signal_handlers(self) -> None:
        """Give back the handlers and wakeup descriptor that :meth:`add_signal_handler` replaced."""
        for signum, previous in self._signal_handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._signal_handlers.clear()
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None

    # -- tracing and errors -----------------------------------------------------------------

    def set_trace(self, hook: TraceHook | None) -> None:
        """Install (or with None remove) a hook that sees ticks, fd events and callbacks."""
        self._trace = hook

    def set_exception_handler(self, handler: ExceptionHandler | None) -> None:
        """Replace the handler called when a callback raises (None restores logging)."""
        self._exception_handler = handler or self._default_exception_handler

    @staticmethod
    def _default_exception_handler(context: dict[str, Any]) -> None:
        log.error(
            "%s: %r", context["message"], context.get("handle"), exc_info=context.get("exception")
        )

    # -- running ------------------------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> None:
        """Run one tick: wait for I/O or a timer, then run what was ready when the tick began.

        *timeout* caps the wait (None: as long as nothing is scheduled).
        """
        self.ticks += 1
        deadline = self._timers.next_deadline()
        if self._ready:
            wait: float | None = 0.0
        elif deadline is not None:
            wait = max(0.0, deadline - time.monotonic())
        else:
            wait = None
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)

        trace = self._trace
        started = time.monotonic() if trace else 0.0
        events = self._selector.select(wait)
        if trace:
            trace(
                "tick",
                {
                    "tick": self.ticks,
                    "timeout": wait,
                    "waited": time.monotonic() - started,
                    "events": len(events),
                    "ready": len(self._ready),
                    "timers": len(self._timers),
                },
            )
        for key, mask in events:
            reader, writer = key.data
            if reader is None and writer is None:
                self._waker.drain()
                continue
            if trace:
                trace("fd", {"fd": key.fd, "readable": bool(mask & 1), "writable": bool(mask & 2)})
            if mask & selectors.EVENT_READ and reader is not None and not reader.cancelled:
                self._ready.append(reader)
            if mask & selectors.EVENT_WRITE and writer is not None and not writer.cancelled:
                self._ready.append(writer)

        if self._timers:
            self._ready.extend(self._timers.pop_due(time.monotonic()))

        # Only what is queued now runs this tick: later arrivals wait for the next one.
        for _ in range(len(self._ready)):
            handle = self._ready.popleft()
            if handle.cancelled:
                continue
            if trace:
                began = time.monotonic()
                self._run_handle(handle)
                trace(
                    "callback",
                    {
                        "callback": getattr(handle.callback, "__qualname__", repr(handle.callback)),
                        "start": began,
                        "duration": time.monotonic() - began,
                    },
                )
            else:
                self._run_handle(handle)

    def _run_handle(self, handle: Handle) -> None:
        try:
            handle.callback(*handle.args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._exception_handler(
                {"message": "exception in callback", "exception": exc, "handle": handle}
            )

    def run_forever(self) -> None:
        """Run ticks until :meth:`stop` is called."""
        if self._thread_id is not None:
            raise RuntimeError("the reactor is already running")
        self._thread_id = threading.get_ident()
        try:
            while not self._stopping:
                self.run_once()
        finally:
            self._stopping = False
            self._thread_id = None

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Run ticks until *predicate* is true or *timeout* seconds pass; return the predicate.

        Meant for tests and notebooks that drive the loop by hand.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return predicate()
            self.run_once(timeout=remaining)
        return True

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after the current tick (loop thread)."""
        self._stopping = True

    def is_running(self) -> bool:
        """Whether :meth:`run_forever` is executing."""
        return self._thread_id is not None

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on the thread executing the loop."""
        return self._thread_id == threading.get_ident()

    def close(self) -> None:
        """Release the selector and the waker; pending callbacks are dropped.

        Signal handlers added by :meth:`add_signal_handler` are given back, so a reactor that
        has them must be closed on the main thread.
        """
        if self._closed:
            return
        self._closed = True
        if self._previous_wakeup_fd is not None:
            # The C handler must never write into a closed (or reused) descriptor.
            self.remove_signal_handlers()
        self._ready.clear()
        self._selector.close()
        self._waker.close()

    @property
    def pending_timers(self) -> int:
        """How many live timers are scheduled (useful to check that nothing leaks)."""
        return len(self._timers)

    @property
    def registered_fds(self) -> int:
        """How many descriptors the selector watches, not counting the waker."""
        return len(self._selector.get_map()) - 1

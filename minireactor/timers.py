"""Timers: a binary heap of deadlines with lazy cancellation.

Theory of operation
-------------------
A reactor needs two things from its timers, quickly: "what is the earliest deadline?" (to bound
how long ``select`` may sleep) and "which timers are due now?" (to run them). A binary heap
(:mod:`heapq`) answers both in O(log n) per timer, which is why CPython's asyncio and curio keep
one too. Each heap entry is a ``(deadline, sequence number, handle)`` tuple: tuples compare in
C, and the sequence number makes timers with the same deadline run in the order they were set.

Cancelling a timer that sits in the middle of a heap would cost O(n) to find and remove it, so we
do what asyncio does: :meth:`TimerHandle.cancel` only sets a flag, and a cancelled timer is thrown
away when it reaches the top of the heap. Connections that cancel their idle timers on every
request would otherwise leave the heap full of dead entries, so when more than half of the heap is
dead we rebuild it in one O(n) pass; that keeps memory proportional to the live timers.

Most timeouts of a server never fire: a keep-alive connection re-arms its idle timeout on every
request. :class:`Deadline` is made for them. It keeps one heap entry and moves only its own
``when`` attribute; the entry is replaced only when the new deadline is *earlier* than the entry.
When an entry comes due and the deadline has moved later meanwhile, it is pushed again for the
new time. A connection serving thousands of requests a minute touches the heap about once per
timeout period instead of twice per request (nginx's timer tree and Twisted's ``resetTimeout``
make the same trade).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol

_sequence = itertools.count()


class Handle:
    """A callback scheduled on the reactor; :meth:`cancel` stops it from running."""

    __slots__ = ("callback", "args", "cancelled", "__weakref__")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Prevent the callback from running; harmless if it already ran."""
        self.cancelled = True

    def run(self) -> None:
        """Call the callback with its arguments (the reactor guards this call)."""
        self.callback(*self.args)

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        state = " cancelled" if self.cancelled else ""
        return f"<{type(self).__name__} {name}{state}>"


class TimerHandle(Handle):
    """A :class:`Handle` with a deadline on the reactor's monotonic clock."""

    __slots__ = ("when", "_order", "_heap")

    def __init__(
        self,
        when: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        heap: TimerHeap | None = None,
    ) -> None:
        super().__init__(callback, args)
        self.when = when
        # Ties on the deadline run in scheduling order, so timers are deterministic.
        self._order = next(_sequence)
        self._heap = heap

    def cancel(self) -> None:
        """Cancel the timer; it is dropped lazily when it reaches the heap's top."""
        if not self.cancelled:
            self.cancelled = True
            if self._heap is not None:
                self._heap.note_cancelled()
                self._heap = None


# The heap holds (when, order, timer) tuples rather than timers: tuples compare in C, a
# TimerHandle.__lt__ would run Python code for every one of the log n comparisons of a push.
_Entry = tuple[float, int, TimerHandle]


class TimerHeap:
    """The reactor's pending timers, earliest first."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._cancelled = 0

    def push(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> TimerHandle:
        """Schedule *callback* at the monotonic time *when* and return its handle."""
        timer = TimerHandle(when, callback, args, self)
        heapq.heappush(self._heap, (when, timer._order, timer))
        return timer

    def note_cancelled(self) -> None:
        """Count a cancellation, and compact the heap once most of it is dead."""
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        """Return the earliest live deadline, or None when no timer is pending."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[TimerHandle]:
        """Remove and return, in deadline order, every live timer due at or before *now*."""
        due: list[TimerHandle] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer._heap = None
                due.append(timer)
        return due

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled


class Clock(Protocol):
    """What a :class:`Deadline` needs of a reactor: its clock and a way to be called back."""

    def time(self) -> float:
        """The current time on the reactor's clock."""
        ...

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` at :meth:`time` *when*."""
        ...


class Deadline:
    """A re-armable timeout: :meth:`arm` and :meth:`disarm` are cheap, firing is rare.

    At most one callback is pending: arming again replaces the previous callback and deadline.
    The callback runs on the loop, without arguments, once the latest armed deadline passes.
    """

    __slots__ = ("_reactor", "_when", "_callback", "_entry")

    def __init__(self, reactor: Clock) -> None:
        self._reactor = reactor
        self._when: float | None = None
        self._callback: Callable[[], Any] | None = None
        self._entry: TimerHandle | None = None  # the heap entry; it may be due earlier

    @property
    def armed(self) -> bool:
        """Whether a callback is waiting for its deadline."""
        return self._when is not None

    def arm(self, delay: float, callback: Callable[[], Any]) -> None:
        """Call *callback* in *delay* seconds, replacing whatever was armed."""
        when = self._reactor.time() + delay
        self._when = when
        self._callback = callback
        entry = self._entry
        if entry is None or entry.when > when:
            if entry is not None:
                entry.cancel()
            self._entry = self._reactor.call_at(when, self._due)

    def disarm(self) -> None:
        """Forget the armed callback; the heap entry stays until it comes due, then goes."""
        self._when = None
        self._callback = None

    def close(self) -> None:
        """Disarm and drop the heap entry too (the owner goes away)."""
        self.disarm()
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    def _due(self) -> None:
        self._entry = None
        when = self._when
        if when is None:
            return
        if when > self._reactor.time():
            self._entry = self._reactor.call_at(when, self._due)  # moved later meanwhile
            return
        callback = self._callback
        self._when = None
        self._callback = None
        assert callback is not None
        callback()

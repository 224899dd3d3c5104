"""Checkers for rung 3, the reactor loop.

Theory of operation
-------------------
``03-predict-ticks`` runs the snippet of the question on a fresh :class:`~minireactor.Reactor`
and compares the log. ``03-select-timeout`` is a pure function, checked case by case against
the three rules the notebook states. The two timer exercises run on a reactor of their own
that records every timer it is asked for, driven by ``run_until``. ``03-every`` is judged on
the times its beats are *scheduled* for, which a loaded machine cannot blur (it only wakes
late): with a callback that works for half of each interval, beats scheduled from the end of
the previous one fall off the ``start + k * interval`` grid, and catching up schedules beats in
the past. ``03-debounce`` must poke a thousand times and schedule a handful of timers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from minireactor import Reactor, TimerHandle

from .checks import Answer, Wrong, exercise
from .harness import loop_errors, spin


def _tick_log() -> list[tuple[int, str]]:
    """The question's program, run on a fresh reactor."""
    reactor = Reactor()
    log: list[tuple[int, str]] = []
    try:

        def note(name: str) -> None:
            log.append((reactor.ticks, name))

        def first() -> None:
            note("a")
            reactor.call_soon(note, "c")

        reactor.call_later(0, note, "timer")
        reactor.call_soon(first)
        reactor.call_soon(note, "b")
        reactor.run_until(lambda: len(log) == 4, timeout=2.0)
    finally:
        reactor.close()
    return log


@exercise("03-predict-ticks", "Predict which tick runs each callback", kind="predict")
def predict_ticks(answer: Answer) -> str:
    predicted = answer.value("predicted_log")
    truth = _tick_log()
    if not isinstance(predicted, list) or len(predicted) != len(truth):
        raise Wrong(f"`predicted_log` should be a list of {len(truth)} (tick, name) pairs")
    if sorted(name for _, name in predicted) != sorted(name for _, name in truth):
        raise Wrong("the names should be 'a', 'b', 'c' and 'timer', each once")
    if [name for _, name in predicted] != [name for _, name in truth]:
        raise Wrong(
            "the order is not right",
            "within a tick: ready callbacks first, in FIFO order, then the timers that are due; "
            "a callback queued by a callback waits for the next tick",
        )
    if list(predicted) != truth:
        raise Wrong(
            "the order is right, but not every tick number",
            "ticks count from 1 (`ticks` is incremented as run_once starts); a due timer runs "
            "in the same tick as the callbacks that were ready",
        )
    return "right: one tick ran a, b and the due timer; c, queued during it, ran in the next"


@exercise("03-select-timeout", "Write the select timeout rule", kind="implement")
def select_timeout(answer: Answer) -> str:
    rule = answer.function("select_timeout")
    now = 1000.0
    cases: list[tuple[str, tuple[int, float | None, float, float | None], float | None, str]] = [
        ("callbacks ready, a timer later", (2, now + 5, now, None), 0.0, "rule 1"),
        ("callbacks ready, nothing else", (1, None, now, None), 0.0, "rule 1"),
        ("callbacks ready and a cap", (3, None, now, 0.5), 0.0, "rule 1 wins over the cap"),
        ("a timer in 0.25 s", (0, now + 0.25, now, None), 0.25, "rule 2"),
        ("an overdue timer", (0, now - 1.0, now, None), 0.0, "never a negative timeout"),
        ("nothing at all", (0, None, now, None), None, "rule 3: sleep until a descriptor"),
        ("nothing, capped", (0, None, now, 0.5), 0.5, "the cap bounds rule 3"),
        ("a timer past the cap", (0, now + 2.0, now, 0.5), 0.5, "the smaller of timer and cap"),
        ("a timer before the cap", (0, now + 0.1, now, 0.5), 0.1, "the smaller of the two"),
    ]
    for label, args, expected, why in cases:
        got = rule(*args)
        ok = (got is None and expected is None) or (
            got is not None
            and expected is not None
            and not isinstance(got, bool)
            and isinstance(got, int | float)
            and math.isclose(got, expected, abs_tol=1e-9)
        )
        if not ok:
            ready, deadline, _, cap = args
            deadline_text = "None" if deadline is None else f"now{deadline - now:+g}"
            raise Wrong(
                f"{label}: select_timeout(ready={ready}, next_deadline={deadline_text}, "
                f"now, cap={cap}) returned {got!r}",
                why,
            )
    return f"all {len(cases)} cases follow the rule: 0 if ready, else until the timer, else the cap"


class _Beats:
    """Records when, and in which tick, a periodic callback runs."""

    def __init__(self, reactor: Reactor, busy: Callable[[int], float] = lambda _n: 0.0) -> None:
        self.reactor = reactor
        self.times: list[float] = []
        self.ends: list[float] = []
        self.busy = busy
        self.handle: Any = None
        self.cancel_after: int | None = None

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        spin(self.busy(len(self.times)))
        self.ends.append(time.monotonic())
        if self.cancel_after is not None and len(self.times) >= self.cancel_after:
            self.handle.cancel()


def _cancellable(handle: Any) -> None:
    if not callable(getattr(handle, "cancel", None)):
        raise Wrong(
            f"call_every returned {handle!r}, which has no cancel()",
            "return an object with a cancel() method (a small class of your own will do)",
        )


class _RecordingReactor(Reactor):
    """A reactor that records (now, when) for every timer it is asked to schedule."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: list[tuple[float, float]] = []

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        now = time.monotonic()
        self.scheduled.append((now, now + delay))
        return super().call_later(delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        self.scheduled.append((time.monotonic(), when))
        return super().call_at(when, callback, *args)


INTERVAL = 0.02


def _on_grid(whens: list[float], interval: float) -> bool:
    """Whether every scheduled time is a whole number of intervals after the previous one."""
    for earlier, later in zip(whens, whens[1:], strict=False):
        steps = round((later - earlier) / interval)
        if steps < 1 or abs(later - earlier - steps * interval) > 0.001:
            return False
    return True


@exercise("03-every", "A periodic timer that does not drift", kind="implement")
def every(answer: Answer) -> str:
    call_every = answer.function("call_every")
    reactor = _RecordingReactor()
    try:
        with loop_errors():
            # Drift: each beat keeps the CPU busy for half an interval. Judged on the times the
            # beats were scheduled for, not on when they ran: a loaded machine wakes late, but
            # a beat scheduled from the end of the previous one is off the grid by the work.
            beats = _Beats(reactor, busy=lambda _n: INTERVAL / 2)
            start = time.monotonic()
            beats.handle = call_every(reactor, INTERVAL, beats)
            _cancellable(beats.handle)
            reactor.run_until(lambda: len(beats.times) >= 10, timeout=3.0)
            beats.handle.cancel()
            if len(beats.times) < 10:
                raise Wrong(f"only {len(beats.times)} beats in 3 s at one every 20 ms")
            early = start + INTERVAL - beats.times[0]
            if early > 0.002:
                raise Wrong(
                    f"the first beat came {early * 1000:.0f} ms early",
                    "the first beat is one interval after call_every",
                )
            whens = [when for _, when in reactor.scheduled]
            if not _on_grid(whens, INTERVAL):
                raise Wrong(
                    "with a callback that works for 10 ms, your beats were scheduled "
                    f"{(whens[1] - whens[0]) * 1000:.1f} ms apart instead of 20: they drift",
                    "schedule beat k at start + k * interval with reactor.call_at, not "
                    "call_later(interval) after the previous beat ran",
                )
            lateness = beats.times[-1] - whens[len(beats.times) - 1]  # one schedule per beat

            # Missed beats: the second beat overruns by three and a half intervals.
            slow = 2 * INTERVAL
            reactor.scheduled.clear()
            stalled = _Beats(reactor, busy=lambda n: 3.5 * slow if n == 2 else 0.0)
            stalled.handle = call_every(reactor, slow, stalled)
            reactor.run_until(lambda: len(stalled.times) >= 5, timeout=3.0)
            stalled.handle.cancel()
            if len(stalled.times) < 5:
                raise Wrong(f"only {len(stalled.times)} beats in 3 s at one every 40 ms")
            stale = [now - when for now, when in reactor.scheduled if when < now - slow / 2]
            # A timer never fires early, so the next beat on the grid is half an interval later.
            rushed = [t for t in stalled.times[2:] if t - stalled.ends[1] < slow / 16]
            if stale or rushed:
                raise Wrong(
                    f"after a beat that overran by {3.5 * slow * 1000:.0f} ms, the missed beats "
                    "followed at once, to catch up",
                    "when the loop is late by more than an interval, skip the beats that were "
                    "missed: the next beat is the first start + k * interval still ahead",
                )

            # Cancel from inside the callback, and before the first beat.
            inside = _Beats(reactor)
            inside.cancel_after = 3
            inside.handle = call_every(reactor, INTERVAL, inside)
            outside = _Beats(reactor)
            outside.handle = call_every(reactor, INTERVAL, outside)
            outside.handle.cancel()
            reactor.run_until(lambda: False, timeout=8 * INTERVAL)
            if len(inside.times) != 3:
                raise Wrong(f"cancelled during its third beat, it beat {len(inside.times)} times")
            if outside.times:
                raise Wrong("cancelled before its first beat, it still beat")
            if reactor.pending_timers:
                raise Wrong(
                    f"{reactor.pending_timers} timer(s) still pending after every cancel()",
                    "cancel() must cancel the TimerHandle of the next beat",
                )
    finally:
        reactor.close()
    return (
        f"10 beats with 10 ms of work each, all scheduled on the grid (the last ran "
        f"{lateness * 1000:.1f} ms after its time); "
        "missed beats skipped; cancel() stops it from anywhere and leaves no timer behind"
    )


DELAY = 0.1


@exercise("03-debounce", "A debouncer with one timer", kind="design", core=False)
def debounce(answer: Answer) -> str:
    debouncer_class = answer.function("Debouncer")
    reactor = _RecordingReactor()
    fired: list[float] = []
    try:
        with loop_errors():
            debouncer = debouncer_class(reactor, DELAY, lambda: fired.append(time.monotonic()))
            for _ in range(1000):
                debouncer.poke()
            for _ in range(10):  # and across ticks: a poke every 10 ms for 100 ms
                reactor.run_until(lambda: False, timeout=0.01)
                debouncer.poke()
            last_poke = time.monotonic()
            if fired:
                raise Wrong(
                    "the callback ran while pokes kept coming",
                    "each poke pushes the deadline back: the callback runs `delay` after the "
                    "last poke only",
                )
            reactor.run_until(lambda: bool(fired), timeout=2.0)
            if not fired:
                raise Wrong("the callback never ran after the pokes stopped")
            quiet = fired[0] - last_poke
            if quiet < DELAY * 0.9:
                raise Wrong(f"the callback ran {quiet * 1000:.0f} ms after the last poke")
            if len(reactor.scheduled) > 10:
                raise Wrong(
                    f"1,010 pokes scheduled {len(reactor.scheduled)} timers",
                    "arm one minireactor.Deadline: re-arming it later does not touch the heap",
                )
            reactor.run_until(lambda: False, timeout=2 * DELAY)
            if len(fired) != 1:
                raise Wrong(f"the callback ran {len(fired)} times for one burst of pokes")
            debouncer.poke()  # reusable after it fired
            reactor.run_until(lambda: len(fired) == 2, timeout=2.0)
            if len(fired) != 2:
                raise Wrong("a poke after the callback ran did not make it run again")
            debouncer.poke()
            debouncer.cancel()
            reactor.run_until(lambda: False, timeout=2 * DELAY)
            if len(fired) != 2:
                raise Wrong("the callback ran although cancel() came after the last poke")
            if reactor.pending_timers:
                raise Wrong(f"{reactor.pending_timers} timer(s) still pending after cancel()")
    finally:
        reactor.close()
    return (
        f"1,010 pokes, one call {quiet * 1000:.0f} ms after the last, "
        f"{len(reactor.scheduled)} timer(s) scheduled in all; poke again and it runs again"
    )

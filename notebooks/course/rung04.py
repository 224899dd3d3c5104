"""Checkers for rung 4, threads and the wakeup.

Theory of operation
-------------------
Every check here involves two threads, so each measures *which* thread ran a callback
(``threading.get_ident``) and *how long after* the other thread acted it ran. The loop is
always left asleep in ``select()`` with nothing else to wake it (or with one far timer), so a
callback posted without waking the loop shows up as a long delay instead of passing by luck.
``04-waker`` is checked with a selector alone, the way the reactor uses a waker: readable after
``wake()``, quiet after ``drain()``, and never blocking, even after 100,000 wakes.
"""

from __future__ import annotations

import concurrent.futures
import selectors
import threading
import time
from typing import Any

from minireactor import Reactor

from .checks import Answer, Wrong, exercise
from .harness import Background, fds_left_open, loop_errors, open_fds, threads_settle

TIMER, POST_AFTER = 0.5, 0.1


def _unsafe_post_delay() -> float:
    """Seconds from a plain call_soon() made by another thread until the callback runs."""
    reactor = Reactor()
    ran: list[float] = []
    posted: list[float] = []

    def poster() -> None:
        time.sleep(POST_AFTER)  # by then the loop sleeps in select(), waiting for its timer
        posted.append(time.monotonic())
        reactor.call_soon(lambda: ran.append(time.monotonic()))  # not the thread-safe door

    try:
        reactor.call_later(TIMER, lambda: None)
        thread = threading.Thread(target=poster)
        thread.start()
        reactor.run_until(lambda: bool(ran), timeout=5.0)
        thread.join(timeout=5)
    finally:
        reactor.close()
    return ran[0] - posted[0]


@exercise("04-predict-unsafe", "Predict when a callback posted the wrong way runs", kind="predict")
def predict_unsafe(answer: Answer) -> str:
    predicted = answer.number("predicted_delay")
    measured = _unsafe_post_delay()
    if abs(predicted - measured) > max(0.1, 0.25 * measured):
        raise Wrong(
            f"{predicted:.2f} s is {'too short' if predicted < measured else 'too long'}",
            "call_soon() appends to the ready queue and nothing more: what ends the sleep of a "
            "select() that waits for a timer due 0.5 s after the start?",
        )
    return (
        f"the callback waited {measured:.2f} s: nothing woke select(), so it ran only when the "
        "unrelated timer ended the sleep; call_soon_threadsafe() would have run it at once"
    )


@exercise("04-waker", "Write the self-pipe", kind="implement")
def waker(answer: Answer) -> str:
    make = answer.function("SelfPipe")
    fds = open_fds()
    pipe = make()
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(pipe.fileno(), selectors.EVENT_READ)
            if selector.select(timeout=0):
                raise Wrong("a new SelfPipe is readable before any wake()")

            def wake_soon() -> None:
                time.sleep(0.05)  # let select() fall asleep first
                pipe.wake()

            waking = Background(wake_soon, name="checker-waker")
            started = time.monotonic()
            waking.start()
            events = selector.select(timeout=2.0)
            woke_after = time.monotonic() - started
            waking.join(2, "wake()")
            if not events:
                raise Wrong("select() slept 2 s although another thread called wake() at 50 ms")

            for _ in range(100):
                pipe.wake()
            if len(selector.select(timeout=0)) != 1:
                raise Wrong("100 wakes should make one descriptor readable")
            drainer = Background(pipe.drain, name="checker-drain").start()
            drainer.join(2, "drain()")
            if selector.select(timeout=0):
                raise Wrong(
                    "still readable after drain()",
                    "drain() reads until the socket is empty (BlockingIOError)",
                )
            again = Background(pipe.drain, name="checker-drain").start()
            again.join(2, "drain() with nothing to read")

            woken = [0]

            def flood_of_wakes() -> None:
                for _ in range(100_000):
                    pipe.wake()
                    woken[0] += 1

            flood = Background(flood_of_wakes, name="flood")
            flood.start().thread.join(3)
            # A loaded machine may just be slow: blocked means no wake() returned for a second.
            while flood.thread.is_alive() and time.monotonic() - started < 30:
                before = woken[0]
                flood.thread.join(1)
                if woken[0] == before:
                    break
            if flood.thread.is_alive():
                pipe.close()  # lets the blocked send() fail, so the thread ends
                flood.thread.join(2)
                raise Wrong(
                    "wake() blocked once the socket buffer was full",
                    "make the write end non-blocking and ignore BlockingIOError: a full buffer "
                    "means the loop is awake already",
                )
            flood.raise_error()
            pipe.drain()
            selector.unregister(pipe.fileno())
    finally:
        pipe.close()
    pipe.wake()  # after close: must be harmless (shutdown races with other threads)
    if left_open := fds_left_open(fds):
        raise Wrong(
            f"{left_open} descriptor(s) still open after close()",
            "close() closes both ends",
        )
    return (
        f"select() woke {woke_after * 1000:.0f} ms after the start (wake at 50 ms); "
        "100 wakes made one event, drain() emptied it, 100,000 wakes never blocked"
    )


@exercise(
    "04-offload", "Run blocking work off the loop and bring the result back", kind="implement"
)
def offload(answer: Answer) -> str:
    run_in_thread = answer.function("run_in_thread")
    reactor = Reactor()
    loop_thread = threading.get_ident()
    baseline = threading.active_count()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    try:
        with loop_errors():
            done: list[tuple[Any, Any, int, float]] = []
            finished: list[float] = []

            def work() -> int:
                time.sleep(0.2)  # blocking work: must not run on the loop
                finished.append(time.monotonic())
                return 42

            def on_done(result: Any, error: Any) -> None:
                done.append((result, error, threading.get_ident(), time.monotonic()))

            beats: list[float] = []

            def heartbeat() -> None:
                beats.append(time.monotonic())
                if len(beats) < 5:
                    reactor.call_later(0.01, heartbeat)

            reactor.call_soon(heartbeat)
            started = time.monotonic()
            run_in_thread(reactor, executor, work, on_done)
            returned = time.monotonic() - started
            if returned > 0.09:
                raise Wrong(
                    f"run_in_thread() took {returned * 1000:.0f} ms to return",
                    "submit the work to the executor and return: never wait for it on the loop",
                )
            # No other timer from here on: only a wakeup can end select() early.
            reactor.run_until(lambda: bool(done), timeout=1.5)
            if not done:
                raise Wrong(
                    "on_done did not run on the loop within 1.5 s",
                    "hand it to the loop with reactor.call_soon_threadsafe(on_done, ...)",
                )
            result, error, thread, at = done[0]
            if thread != loop_thread:
                raise Wrong(
                    "on_done ran on a worker thread, not on the loop's thread",
                    "hand it to the loop with reactor.call_soon_threadsafe(on_done, ...)",
                )
            if (result, error) != (42, None):
                raise Wrong(f"on_done got ({result!r}, {error!r}), expected (42, None)")
            if len(beats) < 5:
                raise Wrong("the loop's timers stopped while the work ran: the loop was blocked")
            late = at - finished[0]
            if late > 0.25:
                raise Wrong(
                    f"on_done ran {late:.2f} s after the work finished: the loop slept through",
                    "call_soon() from a thread does not wake select(); call_soon_threadsafe() does",
                )

            def failing() -> None:
                raise KeyError("no such host")

            run_in_thread(reactor, executor, failing, on_done)
            reactor.run_until(lambda: len(done) == 2, timeout=3.0)
            if len(done) != 2:
                raise Wrong("when the work raised, on_done was never called")
            result, error, thread, _ = done[1]
            if not isinstance(error, KeyError) or result is not None or thread != loop_thread:
                raise Wrong(
                    f"when the work raised KeyError, on_done got ({result!r}, {error!r})",
                    "catch the exception in the worker (or read future.exception()) and pass it "
                    "as on_done(None, error), on the loop",
                )
            if len(done) != 2:
                raise Wrong("on_done was called more than once for one piece of work")
    finally:
        executor.shutdown(wait=True)
        reactor.close()
    threads_settle(baseline)
    return (
        f"on_done(42, None) ran on the loop {late * 1000:.1f} ms after the work finished, "
        "the loop kept ticking meanwhile, and an exception came back as on_done(None, error)"
    )


class _LoopThread:
    """A reactor running run_forever() in a thread of its own, for the checks."""

    def __init__(self) -> None:
        self.reactor = Reactor()
        self.thread = threading.Thread(target=self.reactor.run_forever, name="checker-loop")
        self.thread.start()
        started = threading.Event()
        self.reactor.call_soon_threadsafe(started.set)
        started.wait(5)

    def close(self) -> None:
        self.reactor.call_soon_threadsafe(self.reactor.stop)
        self.thread.join(timeout=5)
        self.reactor.close()


@exercise(
    "04-call-and-wait", "Call into the loop from a thread and wait", kind="design", core=False
)
def call_and_wait(answer: Answer) -> str:
    call = answer.function("call_and_wait")
    loop = _LoopThread()
    reactor = loop.reactor
    try:
        with loop_errors():
            caller = Background(call, reactor, threading.get_ident, 2.0, name="checker-caller")
            caller.start().join(3, "call_and_wait()")
            if caller.result != loop.thread.ident:
                raise Wrong(
                    "fn did not run on the loop's thread (or its result was not returned)",
                    "post fn with call_soon_threadsafe, and hand its result back through a "
                    "threading.Event (or a concurrent.futures.Future)",
                )

            def fails() -> None:
                raise LookupError("from the loop")

            failing = Background(call, reactor, fails, 2.0, name="checker-caller")
            failing.start().thread.join(3)
            if not isinstance(failing.error, LookupError):
                raise Wrong(
                    f"when fn raised LookupError, call_and_wait gave {failing.error!r} "
                    f"(returned {failing.result!r})",
                    "catch the exception on the loop, and raise it again in the waiting thread",
                )

            reactor.call_soon_threadsafe(time.sleep, 0.5)  # a stalled loop, on purpose
            started = time.monotonic()
            stalled = Background(call, reactor, lambda: "late", 0.1, name="checker-caller")
            stalled.start().thread.join(3)
            waited = time.monotonic() - started
            if not isinstance(stalled.error, TimeoutError) or waited > 0.4:
                raise Wrong(
                    f"with the loop stalled for 0.5 s and timeout=0.1, call_and_wait gave "
                    f"{stalled.error or stalled.result!r} after {waited:.2f} s",
                    "wait at most `timeout` seconds, then raise TimeoutError",
                )

            inside: list[Any] = []

            def from_the_loop() -> None:
                started = time.monotonic()
                try:
                    inside.append(call(reactor, lambda: "self", 1.0))
                except BaseException as exc:
                    inside.append(exc)
                inside.append(time.monotonic() - started)

            reactor.call_soon_threadsafe(from_the_loop)
            deadline = time.monotonic() + 3
            while len(inside) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            if len(inside) < 2 or not isinstance(inside[0], RuntimeError) or inside[1] > 0.1:
                raise Wrong(
                    "called on the loop's own thread, call_and_wait waited for itself "
                    f"({inside[0] if inside else 'no answer'!r})",
                    "the loop cannot run fn while it waits: check reactor.in_loop_thread() "
                    "and raise RuntimeError at once",
                )
    finally:
        loop.close()
    return (
        "fn ran on the loop and its result came back; its exception was raised in the caller; "
        "a stalled loop gave TimeoutError in time; on the loop thread it refused at once"
    )

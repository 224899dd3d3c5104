"""Tests for minireactor.loop: scheduling, fairness, select timeouts, waking, errors, tracing."""

import logging
import signal
import socket
import threading
import time

import pytest

from minireactor import Reactor


@pytest.fixture
def socketpair():
    made = []

    def make():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        made.extend((a, b))
        return a, b

    try:
        yield make
    finally:
        for s in made:
            s.close()


def record_trace(reactor):
    events = []
    reactor.set_trace(lambda name, info: events.append((name, info)))
    return events


# -- call_soon ---------------------------------------------------------------------------------


def test_call_soon_runs_in_fifo_order_with_args(reactor):
    seen = []
    for i in range(10):
        reactor.call_soon(seen.append, i)
    reactor.run_once()
    assert seen == list(range(10))


def test_call_soon_does_not_run_synchronously(reactor):
    seen = []
    reactor.call_soon(seen.append, 1)
    assert seen == []
    reactor.run_once()
    assert seen == [1]


def test_cancelled_call_soon_handle_does_not_run(reactor):
    seen = []
    reactor.call_soon(seen.append, "a")
    handle = reactor.call_soon(seen.append, "b")
    reactor.call_soon(seen.append, "c")
    handle.cancel()
    reactor.run_once()
    assert seen == ["a", "c"]
    assert "cancelled" in repr(handle)


def test_callback_scheduled_during_tick_runs_next_tick(reactor):
    ticks = []

    def second():
        ticks.append(("second", reactor.ticks))

    def first():
        ticks.append(("first", reactor.ticks))
        reactor.call_soon(second)

    reactor.call_soon(first)
    reactor.run_once()
    assert ticks == [("first", 1)]
    reactor.run_once()
    assert ticks == [("first", 1), ("second", 2)]


def test_self_rescheduling_chain_does_not_starve_fd_or_timer(reactor, socketpair):
    a, b = socketpair()
    state = {"chain": 0, "fd_tick": None, "timer_tick": None}

    def chain():
        state["chain"] += 1
        reactor.call_soon(chain)

    def on_readable():
        a.recv(100)
        state["fd_tick"] = reactor.ticks
        reactor.remove_reader(a)

    def on_timer():
        state["timer_tick"] = reactor.ticks

    reactor.call_soon(chain)
    reactor.add_reader(a, on_readable)
    b.send(b"ping")
    # A due timer: its deadline is already in the past.
    reactor.call_at(reactor.time() - 1.0, on_timer)

    assert reactor.run_until(
        lambda: state["fd_tick"] is not None and state["timer_tick"] is not None, timeout=5
    )
    # Both were served on the very first tick, next to the chain, not after it.
    assert state["fd_tick"] == 1
    assert state["timer_tick"] == 1
    # The chain ran exactly once per tick: it never ran twice in one tick.
    assert state["chain"] == reactor.ticks


def test_chain_keeps_running_one_step_per_tick(reactor):
    count = []

    def chain():
        count.append(reactor.ticks)
        reactor.call_soon(chain)

    reactor.call_soon(chain)
    for _ in range(5):
        reactor.run_once()
    assert count == [1, 2, 3, 4, 5]


# -- timers ------------------------------------------------------------------------------------


def test_timers_run_in_deadline_order(reactor):
    seen = []
    now = reactor.time()
    for when, name in [(-1.0, "c"), (-3.0, "a"), (-2.0, "b"), (-0.5, "d")]:
        reactor.call_at(now + when, seen.append, name)
    reactor.run_once()
    assert seen == ["a", "b", "c", "d"]


def test_call_later_timers_fire_in_deadline_order(reactor):
    seen = []
    reactor.call_later(0.06, seen.append, 3)
    reactor.call_later(0.02, seen.append, 1)
    reactor.call_later(0.04, seen.append, 2)
    assert reactor.run_until(lambda: len(seen) == 3, timeout=5)
    assert seen == [1, 2, 3]
    assert reactor.pending_timers == 0


def test_timer_does_not_fire_before_its_deadline(reactor):
    fired = []
    start = time.monotonic()
    reactor.call_later(0.1, lambda: fired.append(time.monotonic()))
    assert reactor.run_until(lambda: fired, timeout=5)
    assert fired[0] - start >= 0.1


def test_timer_ties_run_in_scheduling_order(reactor):
    seen = []
    when = reactor.time() - 0.5
    for i in range(50):
        reactor.call_at(when, seen.append, i)
    reactor.run_once()
    assert seen == list(range(50))


def test_cancelled_timers_never_run(reactor):
    seen = []
    now = reactor.time()
    keep = reactor.call_at(now - 1, seen.append, "keep")
    drop = reactor.call_at(now - 2, seen.append, "drop")
    later = reactor.call_later(0.05, seen.append, "later-drop")
    drop.cancel()
    later.cancel()
    assert reactor.pending_timers == 1
    reactor.run_once()
    # Run past the cancelled timer's deadline too.
    reactor.run_until(lambda: False, timeout=0.15)
    assert seen == ["keep"]
    assert keep.cancelled is False
    assert reactor.pending_timers == 0


def test_cancel_is_idempotent_and_harmless_after_running(reactor):
    seen = []
    timer = reactor.call_at(reactor.time() - 1, seen.append, 1)
    other = reactor.call_later(100, seen.append, 2)
    reactor.run_once()
    assert seen == [1]
    timer.cancel()  # already ran: must not disturb the live count
    assert reactor.pending_timers == 1
    other.cancel()
    other.cancel()
    assert reactor.pending_timers == 0


def test_timer_cancelled_by_earlier_callback_in_same_tick_does_not_run(reactor):
    seen = []
    now = reactor.time()
    victim = None

    def killer():
        seen.append("killer")
        victim.cancel()

    reactor.call_at(now - 2, killer)
    victim = reactor.call_at(now - 1, seen.append, "victim")
    reactor.run_once()
    assert seen == ["killer"]
    assert reactor.pending_timers == 0


def test_heap_compaction_keeps_pending_timers_correct(reactor):
    seen = []
    now = reactor.time()
    n = 5000
    handles = [reactor.call_at(now - 10 + i * 1e-6, seen.append, i) for i in range(n)]
    survivors = set(range(0, n, 500))  # ten of them
    # Cancel in an interleaved order so compaction happens at various heap states.
    order = list(range(1, n, 2)) + list(range(0, n, 2))
    for i in order:
        if i not in survivors:
            handles[i].cancel()
            handles[i].cancel()  # double cancel must not be counted twice
    assert reactor.pending_timers == len(survivors)
    # Compaction keeps memory proportional to the live timers, not to everything ever scheduled.
    assert len(reactor._timers._heap) <= 2 * len(survivors) + 65
    reactor.run_once()
    assert seen == sorted(survivors)
    assert reactor.pending_timers == 0


def test_pending_timers_correct_through_mixed_cancel_and_run(reactor):
    seen = []
    now = reactor.time()
    due = [reactor.call_at(now - 1 + i * 1e-6, seen.append, i) for i in range(300)]
    future = [reactor.call_later(1000 + i, seen.append, -i) for i in range(300)]
    for h in due[::3]:
        h.cancel()
    for h in future[::2]:
        h.cancel()
    assert reactor.pending_timers == 200 + 150
    reactor.run_once()
    assert seen == [i for i in range(300) if i % 3 != 0]
    assert reactor.pending_timers == 150
    for h in future:
        h.cancel()
    assert reactor.pending_timers == 0


# -- select timeout rule -----------------------------------------------------------------------


def test_run_once_with_only_a_timer_waits_until_it(reactor):
    trace = record_trace(reactor)
    fired = []
    start = time.monotonic()
    reactor.call_later(0.3, fired.append, 1)
    reactor.run_once()
    elapsed = time.monotonic() - start
    tick = [info for name, info in trace if name == "tick"][0]
    # The select timeout was derived from the timer's deadline, not "forever" and not zero.
    assert tick["timeout"] is not None
    assert 0 < tick["timeout"] <= 0.3
    # select sleeps at least until the deadline (epoll rounds up to the millisecond).
    assert elapsed >= 0.29
    assert elapsed < 2.0
    # The tick that slept until the deadline also runs the timer (or the next one does).
    assert reactor.run_until(lambda: fired, timeout=2)


def test_run_once_with_ready_callbacks_does_not_wait(reactor):
    trace = record_trace(reactor)
    seen = []
    reactor.call_later(30, seen.append, "far")
    reactor.call_soon(seen.append, "soon")
    start = time.monotonic()
    reactor.run_once()
    assert time.monotonic() - start < 1.0
    assert seen == ["soon"]
    tick = [info for name, info in trace if name == "tick"][0]
    assert tick["timeout"] == 0.0


def test_run_once_timeout_caps_the_wait(reactor):
    trace = record_trace(reactor)
    reactor.call_later(30, lambda: None)
    start = time.monotonic()
    reactor.run_once(timeout=0.05)
    assert time.monotonic() - start < 2.0
    tick = [info for name, info in trace if name == "tick"][0]
    assert tick["timeout"] == 0.05


def test_run_once_with_nothing_scheduled_would_wait_forever(reactor):
    trace = record_trace(reactor)
    reactor.run_once(timeout=0.01)
    reactor.set_trace(None)
    # The only bound came from the caller: with no timeout the wait is unbounded.
    assert [info["timeout"] for name, info in trace if name == "tick"] == [0.01]


# -- call_soon_threadsafe ----------------------------------------------------------------------


def test_call_soon_threadsafe_wakes_loop_blocked_in_select(reactor):
    trace = record_trace(reactor)
    seen = []

    def other_thread():
        time.sleep(0.1)  # let the loop reach select; correctness does not depend on it
        reactor.call_soon_threadsafe(seen.append, threading.get_ident())

    thread = threading.Thread(target=other_thread, daemon=True)
    start = time.monotonic()
    thread.start()
    reactor.run_until(lambda: seen, timeout=30)
    elapsed = time.monotonic() - start
    thread.join(5)
    assert seen and seen[0] != threading.get_ident()
    assert elapsed < 2.0
    # The loop was blocked with a long timeout (no timers), and the waker ended the sleep.
    ticks = [info for name, info in trace if name == "tick"]
    assert ticks[0]["timeout"] > 20


def test_call_soon_threadsafe_stops_run_forever_in_another_thread(reactor):
    started = threading.Event()
    reactor.call_soon(started.set)
    thread = threading.Thread(target=reactor.run_forever, daemon=True)
    thread.start()
    assert started.wait(5)
    assert reactor.is_running()
    start = time.monotonic()
    reactor.call_soon_threadsafe(reactor.stop)
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - start < 2.0
    assert not reactor.is_running()


def test_many_threads_call_soon_threadsafe_all_run(reactor):
    seen = []
    n_threads, per_thread = 4, 250

    def worker(k):
        for i in range(per_thread):
            reactor.call_soon_threadsafe(seen.append, (k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert reactor.run_until(lambda: len(seen) == n_threads * per_thread, timeout=10)
    for k in range(n_threads):
        assert [i for kk, i in seen if kk == k] == list(range(per_thread))
    # The waker's bytes were drained: with nothing scheduled the next tick sleeps the full cap.
    start = time.monotonic()
    reactor.run_once(timeout=0.05)
    reactor.run_once(timeout=0.05)
    assert time.monotonic() - start >= 0.05


# -- signals -----------------------------------------------------------------------------------

needs_pthread_kill = pytest.mark.skipif(
    not hasattr(signal, "pthread_kill"), reason="signal.pthread_kill is POSIX-only"
)


@needs_pthread_kill
def test_signal_landing_on_another_thread_still_wakes_the_loop(reactor):
    seen = []
    reactor.add_signal_handler(signal.SIGUSR1, seen.append, "usr1")
    reactor.add_signal_handler(signal.SIGUSR2, seen.append, "usr2")

    def other_thread():
        time.sleep(0.1)  # let the loop reach select; correctness does not depend on it
        # Delivered to this thread, so the main thread asleep in select gets no EINTR: only the
        # byte the C handler writes to the waker can end its sleep.
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    thread = threading.Thread(target=other_thread, daemon=True)
    start = time.monotonic()
    thread.start()
    assert reactor.run_until(lambda: seen, timeout=30)
    thread.join(5)
    assert time.monotonic() - start < 10  # the bug this guards against slept the full 30 s
    assert seen == ["usr1"]
    # A signal the main thread receives itself runs its callback on the loop too.
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
    assert reactor.run_until(lambda: len(seen) == 2, timeout=30)
    assert seen == ["usr1", "usr2"]


def test_close_gives_back_the_signal_handlers_and_wakeup_fd():
    handler_before = signal.getsignal(signal.SIGUSR1)
    wakeup_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_before)
    r = Reactor()
    r.add_signal_handler(signal.SIGUSR1, lambda: None)
    r.add_signal_handler(signal.SIGUSR1, lambda: None)  # replacing keeps the first original
    assert signal.getsignal(signal.SIGUSR1) is not handler_before
    r.close()
    assert signal.getsignal(signal.SIGUSR1) is handler_before
    assert signal.set_wakeup_fd(wakeup_before) == wakeup_before


def test_add_signal_handler_off_the_main_thread_raises(reactor):
    errors = []

    def other_thread():
        try:
            reactor.add_signal_handler(signal.SIGUSR1, lambda: None)
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(5)
    assert len(errors) == 1
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


# -- run_until, run_forever, stop --------------------------------------------------------------


def test_run_until_returns_true_when_predicate_holds(reactor):
    seen = []
    reactor.call_later(0.02, seen.append, 1)
    assert reactor.run_until(lambda: seen, timeout=5) is True


def test_run_until_returns_false_after_timeout(reactor):
    start = time.monotonic()
    assert reactor.run_until(lambda: False, timeout=0.1) is False
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 2.0


def test_run_until_true_predicate_runs_no_tick(reactor):
    before = reactor.ticks
    assert reactor.run_until(lambda: True, timeout=1) is True
    assert reactor.ticks == before


def test_stop_ends_run_forever_after_current_tick(reactor):
    seen = []

    def step(n):
        seen.append((n, reactor.is_running(), reactor.in_loop_thread()))
        if n == 3:
            reactor.stop()
            reactor.call_soon(seen.append, "after-stop")
        else:
            reactor.call_soon(step, n + 1)

    reactor.call_soon(step, 1)
    reactor.run_forever()
    assert seen == [(1, True, True), (2, True, True), (3, True, True)]
    assert not reactor.is_running()
    assert not reactor.in_loop_thread()
    # The stop flag is reset: the loop can run again, and the queued callback is still there.
    reactor.call_soon(reactor.stop)
    reactor.run_forever()
    assert seen[-1] == "after-stop"


def test_run_forever_is_not_reentrant(reactor):
    errors = []
    reactor.set_exception_handler(lambda ctx: errors.append(ctx["exception"]))
    reactor.call_soon(reactor.run_forever)
    reactor.call_soon(reactor.stop)
    reactor.run_forever()
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)


def test_close_is_idempotent_and_drops_pending_callbacks():
    r = Reactor()
    seen = []
    r.call_soon(seen.append, 1)
    r.close()
    r.close()
    assert seen == []
    # A late wake from another thread after close is harmless.
    r.call_soon_threadsafe(seen.append, 2)


# -- errors ------------------------------------------------------------------------------------


def test_exception_in_callback_is_logged_and_others_still_run(reactor, caplog):
    seen = []

    def boom():
        raise ValueError("kaboom")

    reactor.call_soon(seen.append, "before")
    reactor.call_soon(boom)
    reactor.call_soon(seen.append, "after")
    reactor.call_at(reactor.time() - 1, boom)
    reactor.call_at(reactor.time() - 1, seen.append, "timer-after")
    with caplog.at_level(logging.ERROR, logger="minireactor"):
        reactor.run_once()
    assert seen == ["before", "after", "timer-after"]
    records = [r for r in caplog.records if r.name == "minireactor"]
    assert len(records) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in records)
    assert "exception in callback" in records[0].getMessage()
    assert "boom" in records[0].getMessage()
    # The loop is still usable.
    reactor.call_soon(seen.append, "next")
    reactor.run_once()
    assert seen[-1] == "next"


def test_exception_in_fd_callback_is_logged_and_loop_continues(reactor, socketpair, caplog):
    a, b = socketpair()
    seen = []

    def bad_reader():
        a.recv(10)
        raise OSError("reader broke")

    reactor.add_reader(a, bad_reader)
    reactor.call_soon(seen.append, "ok")
    b.send(b"x")
    with caplog.at_level(logging.ERROR, logger="minireactor"):
        assert reactor.run_until(
            lambda: (
                seen
                and any(r.exc_info and "reader broke" in str(r.exc_info[1]) for r in caplog.records)
            ),
            timeout=5,
        )
    reactor.remove_reader(a)


def test_set_exception_handler_receives_context(reactor, caplog):
    contexts = []
    reactor.set_exception_handler(contexts.append)
    exc = KeyError("k")

    def boom():
        raise exc

    handle = reactor.call_soon(boom)
    with caplog.at_level(logging.ERROR, logger="minireactor"):
        reactor.run_once()
    assert len(contexts) == 1
    assert contexts[0]["exception"] is exc
    assert contexts[0]["handle"] is handle
    assert contexts[0]["message"] == "exception in callback"
    assert not [r for r in caplog.records if r.name == "minireactor"]

    # None restores the default, logging handler.
    reactor.set_exception_handler(None)
    reactor.call_soon(boom)
    with caplog.at_level(logging.ERROR, logger="minireactor"):
        reactor.run_once()
    assert len(contexts) == 1
    assert [r for r in caplog.records if r.name == "minireactor"]


def test_keyboard_interrupt_propagates_out_of_the_loop(reactor):
    def interrupt():
        raise KeyboardInterrupt

    reactor.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        reactor.run_once()


# -- tracing -----------------------------------------------------------------------------------


def test_trace_hook_reports_tick_fd_and_callback(reactor, socketpair):
    a, b = socketpair()
    events = record_trace(reactor)

    def on_readable():
        a.recv(100)

    def named_callback():
        pass

    reactor.add_reader(a, on_readable)
    reactor.call_soon(named_callback)
    b.send(b"x")
    reactor.run_once()
    names = [name for name, _ in events]
    assert names[0] == "tick"
    assert "fd" in names and "callback" in names
    tick = events[0][1]
    assert tick["tick"] == reactor.ticks
    assert tick["events"] == 1
    assert tick["ready"] == 1
    assert {"timeout", "waited", "timers"} <= tick.keys()
    fd_info = [info for name, info in events if name == "fd"][0]
    assert fd_info == {"fd": a.fileno(), "readable": True, "writable": False}
    callbacks = [info["callback"] for name, info in events if name == "callback"]
    assert any(c.endswith("named_callback") for c in callbacks)
    assert any(c.endswith("on_readable") for c in callbacks)
    for name, info in events:
        if name == "callback":
            assert info["duration"] >= 0

    reactor.set_trace(None)
    count = len(events)
    reactor.call_soon(named_callback)
    reactor.run_once()
    assert len(events) == count
    reactor.remove_reader(a)


def test_trace_does_not_report_waker_as_fd_event(reactor):
    events = record_trace(reactor)
    reactor.call_soon_threadsafe(lambda: None)
    reactor.run_once(timeout=1)
    reactor.run_once(timeout=0)
    assert not [info for name, info in events if name == "fd"]


# -- descriptors -------------------------------------------------------------------------------


def test_reader_and_writer_on_same_fd_are_independent(reactor, socketpair):
    a, b = socketpair()
    seen = []

    def on_write():
        seen.append("w")

    def on_read():
        seen.append(("r", a.recv(100)))

    baseline = reactor.registered_fds
    reactor.add_writer(a, on_write)
    assert reactor.registered_fds == baseline + 1
    reactor.run_once(timeout=1)
    assert seen == ["w"]

    reactor.add_reader(a, on_read)
    assert reactor.registered_fds == baseline + 1  # one registration serves both directions
    b.send(b"hi")
    assert reactor.run_until(lambda: ("r", b"hi") in seen, timeout=5)

    assert reactor.remove_writer(a) is True
    assert reactor.remove_writer(a) is False
    assert reactor.registered_fds == baseline + 1
    seen.clear()
    b.send(b"again")
    assert reactor.run_until(lambda: seen, timeout=5)
    assert seen == [("r", b"again")]  # the writer is gone, the reader still works

    reactor.add_writer(a, on_write)
    assert reactor.remove_reader(a) is True
    assert reactor.registered_fds == baseline + 1
    seen.clear()
    b.send(b"ignored")
    reactor.run_once(timeout=1)
    assert seen and set(seen) == {"w"}  # the writer works without the reader

    assert reactor.remove_writer(a) is True
    assert reactor.registered_fds == baseline
    assert reactor.remove_reader(a) is False


def test_remove_on_unknown_or_closed_fd_returns_false(reactor):
    a, b = socket.socketpair()
    try:
        assert reactor.remove_reader(a) is False
        assert reactor.remove_writer(a.fileno()) is False
    finally:
        a.close()
        b.close()
    assert reactor.remove_reader(a) is False


def test_add_reader_accepts_int_fd_and_passes_args(reactor, socketpair):
    a, b = socketpair()
    seen = []

    def on_read(tag, sock):
        seen.append((tag, sock.recv(10)))

    reactor.add_reader(a.fileno(), on_read, "tag", a)
    b.send(b"z")
    assert reactor.run_until(lambda: seen, timeout=5)
    assert seen == [("tag", b"z")]
    assert reactor.remove_reader(a) is True  # the object maps to the same registration


def test_add_reader_replaces_previous_reader(reactor, socketpair):
    a, b = socketpair()
    seen = []
    reactor.add_reader(a, lambda: seen.append("old"))
    reactor.add_reader(a, lambda: seen.append(("new", a.recv(10))))
    b.send(b"q")
    assert reactor.run_until(lambda: seen, timeout=5)
    assert seen == [("new", b"q")]
    reactor.remove_reader(a)


def test_remove_reader_cancels_event_already_queued_this_tick(reactor, socketpair):
    a1, b1 = socketpair()
    a2, b2 = socketpair()
    seen = []

    def make(own, other, name):
        def on_read():
            own.recv(10)
            seen.append(name)
            reactor.remove_reader(other)

        return on_read

    # Whichever descriptor the selector reports first removes the other's reader.
    reactor.add_reader(a1, make(a1, a2, "a1"))
    reactor.add_reader(a2, make(a2, a1, "a2"))
    b1.send(b"x")
    b2.send(b"x")
    reactor.run_once(timeout=1)
    assert seen in (["a1"], ["a2"])
    reactor.run_once(timeout=0.05)
    assert len(seen) == 1
    assert reactor.registered_fds == 1
    reactor.remove_reader(a1)
    reactor.remove_reader(a2)
    assert reactor.registered_fds == 0


def test_replaced_reader_queued_this_tick_does_not_run(reactor, socketpair):
    a1, b1 = socketpair()
    a2, b2 = socketpair()
    seen = []

    def on_a1():
        a1.recv(10)
        seen.append("a1")
        reactor.add_reader(a2, on_a2_new)

    def on_a2_new():
        a2.recv(10)
        seen.append("a2-new")

    def on_a2_first():
        a2.recv(10)
        seen.append("a2-first")
        reactor.add_reader(a1, on_a1_new)

    def on_a1_new():
        a1.recv(10)
        seen.append("a1-new")

    # Whichever fd the selector reports first replaces the other's reader.
    reactor.add_reader(a1, on_a1)
    reactor.add_reader(a2, on_a2_first)
    b1.send(b"x")
    b2.send(b"x")
    reactor.run_once(timeout=1)
    # After a replacement the old callback must not run any more: either on_a1 ran and
    # replaced a2's reader (then on_a2_first must not run), or the other way round.
    assert seen in (["a1"], ["a2-first"])
    reactor.remove_reader(a1)
    reactor.remove_reader(a2)

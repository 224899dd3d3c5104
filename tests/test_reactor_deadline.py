"""Tests for minireactor.timers.Deadline: a timeout re-armed often that touches the heap rarely."""

import time

from minireactor import Deadline


def heap_entries(reactor):
    return len(reactor._timers._heap)


def test_armed_deadline_fires_once_after_its_delay(reactor):
    fired = []
    deadline = Deadline(reactor)
    start = time.monotonic()
    deadline.arm(0.05, lambda: fired.append(time.monotonic()))
    assert deadline.armed
    assert reactor.run_until(lambda: fired, timeout=5)
    assert fired[0] - start >= 0.05
    assert not deadline.armed
    assert reactor.pending_timers == 0


def test_rearming_later_keeps_one_heap_entry_and_fires_at_the_last_deadline(reactor):
    fired = []
    deadline = Deadline(reactor)
    deadline.arm(0.05, lambda: fired.append("first"))
    for _ in range(1000):
        last_armed = time.monotonic()
        deadline.arm(0.2, lambda: fired.append(time.monotonic()))
    # A thousand re-arms, one entry: the heap is not touched when a deadline moves later.
    assert heap_entries(reactor) == 1
    assert reactor.run_until(lambda: fired, timeout=5)
    assert len(fired) == 1 and fired[0] != "first"
    assert fired[0] - last_armed >= 0.2


def test_early_entry_coming_due_is_pushed_again_for_the_moved_deadline(reactor):
    fired = []
    deadline = Deadline(reactor)
    deadline.arm(0.02, lambda: fired.append("early"))
    deadline.arm(0.15, lambda: fired.append("late"))
    heap = reactor._timers._heap
    first_due = heap[0][0]
    # The early entry comes due, finds the deadline moved and goes back in for the new time.
    assert reactor.run_until(lambda: heap and heap[0][0] > first_due, timeout=5)
    assert fired == [] and deadline.armed and heap_entries(reactor) == 1
    assert reactor.run_until(lambda: fired, timeout=5)
    assert fired == ["late"]


def test_rearming_earlier_replaces_the_entry(reactor):
    fired = []
    deadline = Deadline(reactor)
    deadline.arm(60, lambda: fired.append("late"))
    start = time.monotonic()
    deadline.arm(0.02, lambda: fired.append(time.monotonic()))
    assert reactor.run_until(lambda: fired, timeout=5)
    assert len(fired) == 1 and fired[0] - start >= 0.02
    assert time.monotonic() - start < 30  # did not wait for the 60 s entry
    assert reactor.pending_timers == 0  # the replaced entry was cancelled


def test_disarmed_deadline_never_fires_and_its_entry_goes_when_due(reactor):
    fired = []
    deadline = Deadline(reactor)
    deadline.arm(0.02, lambda: fired.append(1))
    deadline.disarm()
    assert not deadline.armed
    assert reactor.run_until(lambda: heap_entries(reactor) == 0, timeout=5)
    assert fired == []


def test_close_drops_the_heap_entry_at_once(reactor):
    deadline = Deadline(reactor)
    deadline.arm(60, lambda: None)
    assert reactor.pending_timers == 1
    deadline.close()
    assert reactor.pending_timers == 0 and not deadline.armed


def test_callback_may_rearm_its_own_deadline(reactor):
    fired = []
    deadline = Deadline(reactor)

    def tick():
        fired.append(time.monotonic())
        if len(fired) < 3:
            deadline.arm(0.01, tick)

    deadline.arm(0.01, tick)
    assert reactor.run_until(lambda: len(fired) == 3, timeout=5)
    assert fired == sorted(fired)
    assert not deadline.armed

# Exercise 03-debounce: one Deadline, re-armed on every poke.
from collections.abc import Callable

from minireactor import Deadline, Reactor


class Debouncer:
    """Runs *callback* once, *delay* seconds after the last poke()."""

    def __init__(self, reactor: Reactor, delay: float, callback: Callable[[], object]) -> None:
        self.delay = delay
        self.callback = callback
        self.deadline = Deadline(reactor)

    def poke(self) -> None:
        # Re-arming later only moves the Deadline's `when`: no heap push per poke.
        self.deadline.arm(self.delay, self.callback)

    def cancel(self) -> None:
        self.deadline.close()

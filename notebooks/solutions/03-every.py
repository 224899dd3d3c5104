# Exercise 03-every: beats on a fixed grid, start + k * interval, missed ones skipped.
import math
from collections.abc import Callable

from minireactor import Reactor, TimerHandle


class Every:
    """Calls *callback* every *interval* seconds on *reactor* until cancel()."""

    def __init__(self, reactor: Reactor, interval: float, callback: Callable[[], object]) -> None:
        self.reactor = reactor
        self.interval = interval
        self.callback = callback
        self.start = reactor.time()
        self.beat = 0
        self.cancelled = False
        self.timer: TimerHandle | None = None
        self._schedule()

    def _schedule(self) -> None:
        # The next grid point still ahead: beat + 1, unless the loop fell behind by more.
        behind = math.floor((self.reactor.time() - self.start) / self.interval) + 1
        self.beat = max(self.beat + 1, behind)
        self.timer = self.reactor.call_at(self.start + self.beat * self.interval, self._run)

    def _run(self) -> None:
        self.callback()
        if not self.cancelled:  # the callback may have cancelled us
            self._schedule()

    def cancel(self) -> None:
        self.cancelled = True
        if self.timer is not None:
            self.timer.cancel()


def call_every(reactor: Reactor, interval: float, callback: Callable[[], object]) -> Every:
    return Every(reactor, interval, callback)

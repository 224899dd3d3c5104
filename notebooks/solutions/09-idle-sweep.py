# Exercise 09-idle-sweep: close idle tunnels with one timer for all of them.
class IdleSweep:
    """Close every watched tunnel that moved no byte for `idle_timeout` seconds.

    Four sweeps per idle_timeout; a tunnel is closed after four quiet sweeps in a row, so
    between idle_timeout and 1.25 * idle_timeout after its last byte.
    """

    SWEEPS = 4

    def __init__(self, clock, idle_timeout):
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.watched = {}  # tunnel -> [bytes seen at the last sweep, quiet sweeps in a row]
        self.timer = None

    def add(self, tunnel):
        self.watched[tunnel] = [None, 0]  # None: the first sweep counts as a change
        if self.timer is None:
            self._schedule()

    def discard(self, tunnel):
        self.watched.pop(tunnel, None)
        if not self.watched and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _schedule(self):
        self.timer = self.clock.call_later(self.idle_timeout / self.SWEEPS, self._sweep)

    def _sweep(self):
        self.timer = None
        for tunnel, seen in list(self.watched.items()):  # close() changes the dict
            if tunnel.moved != seen[0]:
                seen[0], seen[1] = tunnel.moved, 0
                continue
            seen[1] += 1
            if seen[1] >= self.SWEEPS:
                tunnel.close()
        if self.watched and self.timer is None:
            self._schedule()

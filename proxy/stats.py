"""Counters, the access log, and the recent-requests table.

Theory of operation
-------------------
Observability must cost nothing on the hot path beyond integer increments: the relay loop adds
byte counts, :meth:`Stats.moved` shifts one connection between state counters, and each finished
request writes exactly one access-log line (never one per chunk). Everything else, rates and
ratios, is derived when somebody asks (the status page, ``/stats.json``).

The access-log line follows Squid's spirit with fixed fields separated by spaces::

    127.0.0.1:53412 GET http://example.com/ 200 1520 12ms TCP_MISS

client address, method, URL, status, bytes sent to the client (head and body), duration,
result code.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .session.states import INITIAL_STATE, SessionState, Trigger

access_log = logging.getLogger("proxy.access")


@dataclass(slots=True)
class RequestRecord:
    """One finished request, as the access log and the status page show it."""

    at: float
    client: str
    method: str
    url: str
    status: int
    bytes_sent: int
    duration: float
    result: str
    user: str | None = None
    """The authenticated user (with ``--auth-file``), else None."""

    def log_line(self) -> str:
        """The access-log line for this request."""
        return (
            f"{self.client} {self.method} {self.url} {self.status} {self.bytes_sent} "
            f"{self.duration * 1000:.0f}ms {self.result}"
        )


class Stats:
    """Live counters of one proxy instance (owned by the reactor thread)."""

    def __init__(self, clock: Callable[[], float] = time.time, recent: int = 50) -> None:
        self.clock = clock
        self.started = clock()
        self.states: collections.Counter[SessionState] = collections.Counter()
        self.connections_total = 0
        self.requests_total = 0
        self.local_requests = 0
        self.bytes_from_clients = 0
        self.bytes_to_clients = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.results: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[RequestRecord] = collections.deque(maxlen=recent)
        self._rate_window: collections.deque[float] = collections.deque(maxlen=4096)
        self.blocklist_rules = 0
        self.blocklist_reload: dict[str, Any] = {}

    def opened(self) -> None:
        """A connection was accepted: it starts in the initial state."""
        self.connections_total += 1
        self.states[INITIAL_STATE] += 1

    def moved(self, old: SessionState, trigger: Trigger, new: SessionState) -> None:
        """A connection moved from *old* to *new* (a state machine observer)."""
        self.states[old] -= 1
        self.states[new] += 1

    def finished(self, record: RequestRecord) -> None:
        """Count a finished request and write its access-log line.

        Requests for the proxy's own pages are logged and counted apart (``local``): the
        dashboard polls every second and would otherwise fill the table with itself.
        """
        if access_log.isEnabledFor(logging.INFO):  # formatting the line costs more than counting
            access_log.info("%s", record.log_line())
        if record.result == "TCP_LOCAL":
            self.local_requests += 1
            return
        self.requests_total += 1
        self.statuses[record.status] += 1
        self.results[record.result] += 1
        self.recent.append(record)
        self._rate_window.append(record.at)

    def requests_per_second(self, window: float = 5.0) -> float:
        """Requests finished per second over the last *window* seconds."""
        now = self.clock()
        count = sum(1 for at in self._rate_window if now - at <= window)
        return count / window

    @property
    def open_connections(self) -> int:
        """Connections not yet closed."""
        return sum(n for state, n in self.states.items() if state is not SessionState.CLOSED)

    def snapshot(self, viewer: str | None = None) -> dict[str, Any]:
        """Every counter as plain JSON-ready data.

        The recent requests are shown without their query strings, which often carry tokens;
        with a *viewer*, only that user's own requests are listed.
        """
        recent = [r for r in reversed(self.recent) if viewer is None or r.user == viewer]
        return {
            "uptime_seconds": round(self.clock() - self.started, 3),
            "connections": {
                "open": self.open_connections,
                "total": self.connections_total,
                "by_state": {
                    state.name: self.states.get(state, 0)
                    for state in SessionState
                    if state is not SessionState.CLOSED
                },
            },
            "requests": {
                "total": self.requests_total,
                "local": self.local_requests,
                "errors": sum(n for status, n in self.statuses.items() if status >= 400),
                "per_second": round(self.requests_per_second(), 2),
                "by_status": {str(k): v for k, v in sorted(self.statuses.items())},
                "by_result": dict(sorted(self.results.items())),
            },
            "bytes": {"from_clients": self.bytes_from_clients, "to_clients": self.bytes_to_clients},
            "blocklist": {"rules": self.blocklist_rules, "last_reload": self.blocklist_reload},
            "recent": [
                {
                    "at": round(r.at, 3),
                    "client": r.client,
                    "method": r.method,
                    "url": r.url.partition("?")[0],
                    "status": r.status,
                    "bytes": r.bytes_sent,
                    "ms": round(r.duration * 1000, 1),
                    "result": r.result,
                }
                for r in recent
            ],
        }

"""Counters, the access log, the recent-requests table and the metrics, from one place.

Theory of operation
-------------------
Observability must cost nothing on the hot path beyond integer increments: the relay adds byte
counts, :meth:`Stats.moved` (an observer of every session's state machine) shifts one
connection between state counters and counts the moves that are errors or tunnels, and each
finished request comes here once, as one :class:`~proxy.accesslog.AccessRecord`, never once
per chunk. :meth:`Stats.finished` hands the record to the access log (which formats its line
and writes once per tick, :mod:`proxy.accesslog`), counts it by status, result, method and
status class, and observes its duration. Everything else, rates, ratios and the metrics
families, is derived when somebody asks (the status page, ``/stats.json``, ``/metrics``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from .accesslog import AccessLog, AccessRecord
from .metrics import Histogram, MetricsSnapshot, method_label, status_class
from .session.states import INITIAL_STATE, SessionState, Trigger

ERROR_TRIGGERS: frozenset[Trigger] = frozenset(
    {
        Trigger.BAD_REQUEST,
        Trigger.HEAD_TIMEOUT,
        Trigger.DENIED,
        Trigger.RESOLVE_FAILED,
        Trigger.DIAL_TIMEOUT,
        Trigger.CONNECT_FAILED,
        Trigger.UPSTREAM_FAILED,
        Trigger.FIRST_BYTE_TIMEOUT,
        Trigger.RELAY_STALLED,
        Trigger.CLIENT_GONE,
        Trigger.INTERNAL_ERROR,
    }
)
"""The moves that are errors: ``/metrics`` counts them by kind, the trigger's name."""


class Stats:
    """Live counters of one proxy instance (owned by the reactor thread)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        recent: int = 50,
        access_log: AccessLog | None = None,
    ) -> None:
        self.clock = clock
        self.started = clock()
        self.access_log = access_log
        """Where each finished request's line goes (None: no access log)."""
        self.states: collections.Counter[SessionState] = collections.Counter()
        self.connections_total = 0
        self.requests_total = 0
        self.local_requests = 0
        self.bytes_from_clients = 0
        self.bytes_to_clients = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.results: collections.Counter[str] = collections.Counter()
        self.by_method_class: collections.Counter[tuple[str, str]] = collections.Counter()
        self.durations = Histogram()
        self.errors: collections.Counter[Trigger] = collections.Counter()
        self.tunnels_total = 0
        self.recent: collections.deque[AccessRecord] = collections.deque(maxlen=recent)
        self._rate_window: collections.deque[float] = collections.deque(maxlen=4096)
        self.blocklist_rules = 0
        self.blocklist_reload: dict[str, Any] = {}
        self.blocklist_reloads = 0
        self.blocklist_reload_failures = 0

    def opened(self) -> None:
        """A connection was accepted: it starts in the initial state."""
        self.connections_total += 1
        self.states[INITIAL_STATE] += 1

    def moved(self, old: SessionState, trigger: Trigger, new: SessionState) -> None:
        """A connection moved from *old* to *new* (a state machine observer)."""
        states = self.states
        states[old] -= 1
        states[new] += 1
        if trigger in ERROR_TRIGGERS:
            self.errors[trigger] += 1
        elif new is SessionState.TUNNEL_OPEN:
            self.tunnels_total += 1

    def finished(self, record: AccessRecord) -> None:
        """Count a finished request and hand it to the access log.

        Requests for the proxy's own pages are logged and counted apart (``local``): the
        dashboard polls every second and would otherwise fill the table with itself.
        """
        if self.access_log is not None:
            self.access_log.log(record)
        if record.result == "TCP_LOCAL":
            self.local_requests += 1
            return
        self.requests_total += 1
        self.statuses[record.status] += 1
        self.results[record.result] += 1
        self.by_method_class[(method_label(record.method), status_class(record.status))] += 1
        self.durations.observe(record.duration)
        self.recent.append(record)
        self._rate_window.append(record.at)

    def metrics(self) -> MetricsSnapshot:
        """This process's counters as ``/metrics`` families (the cache's are added by the
        server, which owns the cache step)."""
        return MetricsSnapshot(
            requests=dict(self.by_method_class),
            bytes_received=self.bytes_from_clients,
            bytes_sent=self.bytes_to_clients,
            connections_open={
                state.name: n
                for state, n in self.states.items()
                if state is not SessionState.CLOSED and n
            },
            connections_total=self.connections_total,
            tunnels_open=self.states.get(SessionState.TUNNEL_OPEN, 0),
            tunnels_total=self.tunnels_total,
            blocklist_rules=self.blocklist_rules,
            blocklist_reloads=self.blocklist_reloads,
            blocklist_reload_failures=self.blocklist_reload_failures,
            errors={trigger.name.lower(): n for trigger, n in self.errors.items()},
            request_duration=self.durations.snapshot(),
        )

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
                    "client": _client_label(r),
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


def _client_label(record: AccessRecord) -> str:
    ip = record.client_ip
    return f"[{ip}]:{record.client_port}" if ":" in ip else f"{ip}:{record.client_port}"

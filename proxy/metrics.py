"""Prometheus metrics: a typed snapshot of the counters, rendered in the text exposition format.

Theory of operation
-------------------
The proxy already counts everything on the reactor thread (:mod:`proxy.stats`). Metrics add no
work per request beyond one :meth:`Histogram.observe`; the rest happens when somebody scrapes
``/metrics``:

1. The owner of the live counters copies them into a :class:`MetricsSnapshot`, a frozen value
   with one field per metric family. Nothing here reads the proxy's objects, so this module can
   be tested from plain values and the counters can change shape without touching it.
2. With ``--workers N`` each process has its own counters; :mod:`proxy.sharedmetrics` carries
   their snapshots to whichever worker answers the scrape, and :func:`merge` adds them up
   (counters and gauges are summed; the blocklist figures, the same file loaded by every
   worker, take the largest).
3. :func:`render` writes the text format exactly as Prometheus specifies it (version 0.0.4): a
   ``# HELP`` and a ``# TYPE`` line per family, then one sample per line, label values escaped
   (backslash, double quote, newline), counters named ``*_total``, a histogram as cumulative
   ``_bucket{le="..."}`` samples ending with ``le="+Inf"``, then ``_sum`` and ``_count``.

Label values come only from small fixed sets, because each distinct value is a time series
kept for ever by the server: methods outside the registered ones become ``OTHER``
(:func:`method_label`), statuses become their class (:func:`status_class`), and error kinds and
states are names from the code, never text from a request.

The request-duration :class:`Histogram` has fixed bucket bounds (those of the official client
libraries, 5 ms to 10 s, plus 25 ms and 30 s): ``observe`` is one binary search over a dozen
floats and two additions, with no allocation.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from . import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of the text exposition format."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds, in seconds, of the request-duration buckets (``+Inf`` is implied)."""

_K = TypeVar("_K")

KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def method_label(method: str) -> str:
    """*method* if it is a standard one, else ``OTHER`` (so clients cannot mint series)."""
    return method if method in KNOWN_METHODS else "OTHER"


def status_class(status: int) -> str:
    """``2xx`` for 204 and so on; ``none`` when no status was sent (0)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


@dataclass(frozen=True)
class HistogramSnapshot:
    """Counts per bucket (not cumulative; the last one is beyond every bound), and the sum."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("a histogram has one count per bound, plus one beyond them all")

    @property
    def count(self) -> int:
        """Observations in all."""
        return sum(self.counts)


class Histogram:
    """Observations counted into fixed buckets (owned by one thread)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not all(math.isfinite(b) for b in bounds):
            raise ValueError("bucket bounds must be finite and strictly increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count *value*: into the first bucket whose bound is at least *value*."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        """The counts as they are now."""
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every number ``/metrics`` shows, for one process or summed over workers."""

    requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Finished requests by (:func:`method_label`, :func:`status_class`)."""
    cache_hits: int = 0
    """Requests served from the cache without contacting the origin."""
    cache_misses: int = 0
    """Cacheable requests looked up and not found."""
    cache_stale: int = 0
    """Stored responses found stale and revalidated with the origin."""
    bytes_received: int = 0
    """Bytes read from clients."""
    bytes_sent: int = 0
    """Bytes written to clients."""
    connections_open: Mapping[str, int] = field(default_factory=dict)
    """Open client connections by session state name."""
    connections_total: int = 0
    """Client connections accepted."""
    tunnels_open: int = 0
    """CONNECT tunnels open now."""
    tunnels_total: int = 0
    """CONNECT tunnels opened."""
    blocklist_rules: int = 0
    """Rules in the blocklist in force."""
    blocklist_reloads: int = 0
    """Blocklist reloads that succeeded."""
    blocklist_reload_failures: int = 0
    """Blocklist reloads that failed (the old list stayed)."""
    errors: Mapping[str, int] = field(default_factory=dict)
    """Errors by kind: the lower-cased name of one of :data:`proxy.stats.ERROR_TRIGGERS`
    (``dial_timeout``, ``connect_failed``, ``denied``...)."""
    request_duration: HistogramSnapshot = field(default_factory=HistogramSnapshot)
    """Request durations, seconds from the request head to the end of the response."""
    access_log_written: int = 0
    """Access-log lines handed to the destination."""
    access_log_dropped: int = 0
    """Access-log lines lost (a full disk, a closed pipe): the one loss the log accepts, so it
    must be visible to an alert."""
    workers: int = 1
    """Processes whose numbers are included."""


def _sum_maps(maps: Iterable[Mapping[_K, int]]) -> dict[_K, int]:
    total: dict[_K, int] = {}
    for mapping in maps:
        for key, value in mapping.items():
            total[key] = total.get(key, 0) + value
    return total


def merge(snapshots: Sequence[MetricsSnapshot]) -> MetricsSnapshot:
    """The numbers of several workers as one: sums, except the blocklist's (the largest).

    :raises ValueError: if there is nothing to merge or the histograms' buckets differ.
    """
    if not snapshots:
        raise ValueError("no snapshot to merge")
    bounds = snapshots[0].request_duration.bounds
    if any(s.request_duration.bounds != bounds for s in snapshots):
        raise ValueError("the workers' histograms have different buckets")
    return MetricsSnapshot(
        requests=_sum_maps(s.requests for s in snapshots),
        cache_hits=sum(s.cache_hits for s in snapshots),
        cache_misses=sum(s.cache_misses for s in snapshots),
        cache_stale=sum(s.cache_stale for s in snapshots),
        bytes_received=sum(s.bytes_received for s in snapshots),
        bytes_sent=sum(s.bytes_sent for s in snapshots),
        connections_open=_sum_maps(s.connections_open for s in snapshots),
        connections_total=sum(s.connections_total for s in snapshots),
        tunnels_open=sum(s.tunnels_open for s in snapshots),
        tunnels_total=sum(s.tunnels_total for s in snapshots),
        blocklist_rules=max(s.blocklist_rules for s in snapshots),
        blocklist_reloads=max(s.blocklist_reloads for s in snapshots),
        blocklist_reload_failures=max(s.blocklist_reload_failures for s in snapshots),
        errors=_sum_maps(s.errors for s in snapshots),
        request_duration=HistogramSnapshot(
            bounds,
            tuple(map(sum, zip(*(s.request_duration.counts for s in snapshots), strict=True))),
            math.fsum(s.request_duration.sum for s in snapshots),
        ),
        access_log_written=sum(s.access_log_written for s in snapshots),
        access_log_dropped=sum(s.access_log_dropped for s in snapshots),
        workers=sum(s.workers for s in snapshots),
    )


# -- the text format ----------------------------------------------------------------------------


def escape_label_value(value: str) -> str:
    """A label value for inside double quotes: ``\\`` ``"`` and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers as such, ``+Inf``, ``-Inf``, ``NaN`` as Prometheus spells them."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Exposition:
    """Accumulates the lines of one scrape."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        if labels:
            inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {format_value(value)}")
        else:
            self.lines.append(f"{name} {format_value(value)}")

    def scalar(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def labelled(
        self, name: str, kind: str, help_text: str, label: str, values: Mapping[str, int]
    ) -> None:
        self.family(name, kind, help_text)
        for key in sorted(values):
            self.sample(name, values[key], {label: key})


def render(s: MetricsSnapshot) -> str:
    """*s* in the Prometheus text exposition format (ends with a newline)."""
    out = _Exposition()
    out.family("proxy_info", "gauge", "The proxy's version (always 1).")
    out.sample("proxy_info", 1, {"version": __version__})
    out.scalar("proxy_workers", "gauge", "Worker processes whose numbers are included.", s.workers)
    out.family("proxy_requests_total", "counter", "Finished requests by method and status class.")
    for (method, code_class), count in sorted(s.requests.items()):
        out.sample("proxy_requests_total", count, {"method": method, "code": code_class})
    out.labelled(
        "proxy_cache_lookups_total",
        "counter",
        "Cache look-ups by outcome: hit (fresh, served), miss, stale (revalidated).",
        "result",
        {"hit": s.cache_hits, "miss": s.cache_misses, "stale": s.cache_stale},
    )
    out.scalar(
        "proxy_received_bytes_total", "counter", "Bytes read from clients.", s.bytes_received
    )
    out.scalar("proxy_sent_bytes_total", "counter", "Bytes written to clients.", s.bytes_sent)
    out.labelled(
        "proxy_connections_open",
        "gauge",
        "Open client connections by session state.",
        "state",
        s.connections_open,
    )
    out.scalar(
        "proxy_connections_total", "counter", "Client connections accepted.", s.connections_total
    )
    out.scalar("proxy_tunnels_open", "gauge", "CONNECT tunnels open now.", s.tunnels_open)
    out.scalar("proxy_tunnels_total", "counter", "CONNECT tunnels opened.", s.tunnels_total)
    out.scalar(
        "proxy_blocklist_rules", "gauge", "Rules in the blocklist in force.", s.blocklist_rules
    )
    out.labelled(
        "proxy_blocklist_reloads_total",
        "counter",
        "Blocklist reloads by outcome (a failed one keeps the old list).",
        "outcome",
        {"ok": s.blocklist_reloads, "failed": s.blocklist_reload_failures},
    )
    out.labelled("proxy_errors_total", "counter", "Errors by kind.", "kind", s.errors)
    out.labelled(
        "proxy_access_log_lines_total",
        "counter",
        "Access-log lines by outcome: written, or dropped (the destination failed).",
        "outcome",
        {"written": s.access_log_written, "dropped": s.access_log_dropped},
    )
    _histogram(
        out,
        "proxy_request_duration_seconds",
        "Seconds from the request head to the end of the response or tunnel.",
        s.request_duration,
    )
    return "\n".join(out.lines) + "\n"


def _histogram(out: _Exposition, name: str, help_text: str, h: HistogramSnapshot) -> None:
    out.family(name, "histogram", help_text)
    running = 0
    for bound, count in zip(h.bounds, h.counts, strict=False):
        running += count
        out.sample(f"{name}_bucket", running, {"le": format_value(float(bound))})
    out.sample(f"{name}_bucket", h.count, {"le": "+Inf"})
    out.sample(f"{name}_sum", h.sum)
    out.sample(f"{name}_count", h.count)

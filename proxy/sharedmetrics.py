"""Metrics summed over ``--workers``: one shared-memory slot per worker process.

Theory of operation
-------------------
With ``--workers N`` the kernel hands each connection to one of N independent processes, and a
scrape of ``/metrics`` reaches one of them too. For the answer to cover them all, every worker
must see the others' numbers, without locks a dead worker could leave held and without ever
blocking its reactor.

The parent creates one anonymous shared mapping (``mmap.mmap(-1, size)``, ``MAP_SHARED``) before
it forks, so every worker inherits the same physical pages. The mapping is cut into N fixed
slots, one per worker; only worker *i* writes slot *i*, and anyone may read any slot. A slot
holds a small header and the worker's :class:`~proxy.metrics.MetricsSnapshot` encoded as JSON::

    sequence (u64) | length (u32) | crc32 of the payload (u32) | payload ...

Writing is a seqlock: the writer makes the sequence odd, writes the payload, then writes the
header again with the next even sequence, the length and the checksum. A reader copies the
header and payload and accepts them only if the sequence was even, unchanged after the copy,
and the checksum matches: a copy torn by a concurrent write (even one that the processor
reordered) fails the test and is retried a few times; failing that, the reader uses the last
good copy it had of that slot. Nothing waits on another process.

Each worker refreshes its slot every ``interval`` seconds from a reactor timer
(:class:`MetricsPublisher`) and once more right before it answers ``/metrics``, so its own
numbers in the answer are current and the others' at most ``interval`` old. A worker that has
died leaves its last numbers in its slot: counters keep the requests it served. Its gauges
would go on showing connections that are gone, so the parent, which waits on the workers,
rewrites the dead worker's slot (:meth:`SharedMetrics.mark_dead`; the slot's only writer is
dead, so the seqlock still has one writer) with the counters kept and the gauges at zero.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import struct
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from .metrics import HistogramSnapshot, MetricsSnapshot, merge

HEADER = struct.Struct("<QII")
"""Slot header: sequence number, payload length, CRC-32 of the payload."""

SLOT_SIZE = 32 * 1024
"""Bytes per worker's slot: a snapshot is a few KiB of JSON (its labels come from fixed sets)."""


def encode(snapshot: MetricsSnapshot) -> bytes:
    """*snapshot* as compact JSON bytes (tuple keys become lists)."""
    h = snapshot.request_duration
    return json.dumps(
        {
            "requests": [[m, c, n] for (m, c), n in snapshot.requests.items()],
            "cache": [snapshot.cache_hits, snapshot.cache_misses, snapshot.cache_stale],
            "bytes": [snapshot.bytes_received, snapshot.bytes_sent],
            "connections_open": dict(snapshot.connections_open),
            "connections_total": snapshot.connections_total,
            "tunnels": [snapshot.tunnels_open, snapshot.tunnels_total],
            "blocklist": [
                snapshot.blocklist_rules,
                snapshot.blocklist_reloads,
                snapshot.blocklist_reload_failures,
            ],
            "errors": dict(snapshot.errors),
            "duration": [list(h.bounds), list(h.counts), h.sum],
            "access_log": [snapshot.access_log_written, snapshot.access_log_dropped],
            "workers": snapshot.workers,
        },
        separators=(",", ":"),
    ).encode()


def decode(data: bytes) -> MetricsSnapshot:
    """The inverse of :func:`encode`."""
    doc: dict[str, Any] = json.loads(data)
    bounds, counts, total = doc["duration"]
    hits, misses, stale = doc["cache"]
    received, sent = doc["bytes"]
    tunnels_open, tunnels_total = doc["tunnels"]
    rules, reloads, failures = doc["blocklist"]
    written, dropped = doc["access_log"]
    return MetricsSnapshot(
        requests={(m, c): n for m, c, n in doc["requests"]},
        cache_hits=hits,
        cache_misses=misses,
        cache_stale=stale,
        bytes_received=received,
        bytes_sent=sent,
        connections_open=doc["connections_open"],
        connections_total=doc["connections_total"],
        tunnels_open=tunnels_open,
        tunnels_total=tunnels_total,
        blocklist_rules=rules,
        blocklist_reloads=reloads,
        blocklist_reload_failures=failures,
        errors=doc["errors"],
        request_duration=HistogramSnapshot(tuple(bounds), tuple(counts), total),
        access_log_written=written,
        access_log_dropped=dropped,
        workers=doc["workers"],
    )


class SharedMetrics:
    """N slots in memory shared across ``fork``; create it in the parent, before forking."""

    def __init__(self, slots: int, slot_size: int = SLOT_SIZE) -> None:
        if slots < 1:
            raise ValueError("at least one slot")
        if slot_size <= HEADER.size:
            raise ValueError(f"a slot needs more than {HEADER.size} bytes")
        self.slots = slots
        self.slot_size = slot_size
        # Anonymous and MAP_SHARED (mmap's default): the children of a fork share these pages.
        self._map = mmap.mmap(-1, slots * slot_size)
        self._last_good: dict[int, MetricsSnapshot] = {}

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"no slot {slot} (there are {self.slots})")
        return slot * self.slot_size

    def publish(self, slot: int, snapshot: MetricsSnapshot) -> None:
        """Write *snapshot* into *slot* (only that slot's worker may call this).

        :raises ValueError: if the encoded snapshot does not fit in a slot.
        """
        start = self._offset(slot)
        payload = encode(snapshot)
        if HEADER.size + len(payload) > self.slot_size:
            raise ValueError(f"metrics snapshot of {len(payload)} bytes exceeds the slot")
        sequence = HEADER.unpack_from(self._map, start)[0]
        if sequence % 2:  # left odd by a writer that died mid-write: start from the next even
            sequence += 1
        HEADER.pack_into(self._map, start, sequence + 1, 0, 0)
        body = start + HEADER.size
        self._map[body : body + len(payload)] = payload
        HEADER.pack_into(self._map, start, sequence + 2, len(payload), zlib.crc32(payload))

    def read(self, slot: int, attempts: int = 4) -> MetricsSnapshot | None:
        """The last snapshot written to *slot*, or None if none ever was."""
        start = self._offset(slot)
        body = start + HEADER.size
        for _ in range(attempts):
            sequence, length, crc = HEADER.unpack_from(self._map, start)
            if sequence == 0:
                return None
            # A header read while the writer rewrites it can pair the new sequence number with
            # the intermediate zero length (and zero CRC, which is also the CRC of nothing).
            if sequence % 2 or not 0 < length <= self.slot_size - HEADER.size:
                continue
            payload = self._map[body : body + length]
            if HEADER.unpack_from(self._map, start)[0] != sequence:
                continue
            if zlib.crc32(payload) != crc:
                continue
            try:
                snapshot = decode(payload)
            except (ValueError, KeyError, TypeError):  # torn past both checks: read again
                continue
            self._last_good[slot] = snapshot
            return snapshot
        return self._last_good.get(slot)

    def mark_dead(self, slot: int) -> None:
        """Keep the counters of *slot*'s dead worker but drop its gauges and its worker count.

        Only for a slot whose worker has exited: it becomes the slot's one writer.
        """
        last = self.read(slot)
        if last is None:
            return  # it died before publishing: nothing of it is in the sum
        self.publish(
            slot,
            dataclasses.replace(last, connections_open={}, tunnels_open=0, workers=0),
        )

    def snapshots(self) -> list[MetricsSnapshot]:
        """The latest snapshot of every slot that has published one."""
        found = (self.read(slot) for slot in range(self.slots))
        return [s for s in found if s is not None]

    def total(self) -> MetricsSnapshot:
        """Every worker's numbers added up (:func:`~proxy.metrics.merge`); zeros if none yet."""
        found = self.snapshots()
        return merge(found) if found else MetricsSnapshot(workers=0)

    def close(self) -> None:
        """Unmap (in this process only)."""
        self._map.close()


class TimerScheduler(Protocol):
    """What the publisher needs of the reactor."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Run ``callback(*args)`` in *delay* seconds; the result has ``cancel()``."""
        ...


class MetricsSource(Protocol):
    """What ``/metrics`` renders: the numbers to show now."""

    def current(self) -> MetricsSnapshot:
        """This process's numbers, or the sum over workers."""
        ...


class LocalMetrics:
    """One process: the snapshot is taken when asked."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def current(self) -> MetricsSnapshot:
        """A fresh snapshot of this process."""
        return self._snapshot()


class MetricsPublisher:
    """One worker: refreshes its slot periodically and answers with the sum over all slots."""

    def __init__(
        self,
        shared: SharedMetrics,
        slot: int,
        snapshot: Callable[[], MetricsSnapshot],
        scheduler: TimerScheduler,
        interval: float = 1.0,
    ) -> None:
        self.shared = shared
        self.slot = slot
        self._snapshot = snapshot
        self._scheduler = scheduler
        self._interval = interval
        self._timer: Any = None

    def start(self) -> None:
        """Publish now and every *interval* seconds until :meth:`stop`."""
        self._tick()

    def _tick(self) -> None:
        self.publish()
        self._timer = self._scheduler.call_later(self._interval, self._tick)

    def publish(self) -> None:
        """Write this worker's numbers into its slot now."""
        self.shared.publish(self.slot, self._snapshot())

    def current(self) -> MetricsSnapshot:
        """Refresh this worker's slot, then sum every slot."""
        self.publish()
        return self.shared.total()

    def stop(self) -> None:
        """Publish a last time (counters stay in the sum) and cancel the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.publish()

"""The disk store off the reactor thread: one worker thread, results handed back on the loop.

Theory of operation
-------------------
:class:`~proxy.cache.disk.DiskStore` reads and writes files and waits for other processes'
SQLite transactions, any of which can take milliseconds or, on a busy disk, seconds. The
reactor thread must never wait like that (DESIGN rule 5), so :class:`DiskCache` owns one
worker thread that owns the store: it opens it (the index, the sweep of the folder), runs
every job in the order it was asked for, and hands each result back with
:meth:`~minireactor.loop.Reactor.call_soon_threadsafe`, exactly as
:mod:`minireactor.resolver` hands back addresses. Callbacks therefore run on the loop, where
the session's state lives; the worker never touches it.

One thread, in order, is deliberate: a look-up queued after an invalidation of the same URL
must see it, and SQLite serialises writers anyway. The costs are bounded instead:

* **Stores are snapshots.** :meth:`DiskCache.put` copies the entry's header fields before
  queueing, so a later freshen on the loop cannot change what the worker is writing; the body
  is immutable ``bytes`` and is shared, not copied.
* **Stores can be shed.** Queued bodies cost memory until written, so past
  ``max_pending_bytes`` a put is dropped (counted in :attr:`DiskCache.dropped`): the disk tier
  misses that entry, nothing else happens.
* **Failures are misses.** A job that raises (disk full, a lock held past the timeout) is
  logged and answered as a miss (``None``, ``"disk-error"``); a store that cannot even be
  opened logs once and answers every job that way, so the proxy keeps serving from memory
  and the origin.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from minireactor import Handle

from .cache.disk import DiskStore
from .cache.store import StoredResponse
from .http11.headers import Headers

log = logging.getLogger(__name__)

SelectCallback = Callable[[StoredResponse | None, str], None]
"""Receives ``(entry, "")`` or ``(None, detail)``: ``uri-miss``, ``vary-miss``, ``disk-error``."""


class ThreadsafeScheduler(Protocol):
    """The one reactor method other threads may call."""

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the loop thread."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    work: Callable[[DiskStore], Any]
    handle: Handle | None
    failure: Any = None
    """What the callback receives if the job fails."""
    size: int = 0
    """Body bytes this job holds in the queue."""
    spread: bool = False
    """Whether the result is a tuple of callback arguments."""


_STOP = None


class DiskCache:
    """Runs a :class:`~proxy.cache.disk.DiskStore` on its own thread for a reactor.

    :param reactor: where results are delivered.
    :param open_store: makes the store; called on the worker thread, since opening reads the
        folder.
    :param max_pending_bytes: bytes of bodies queued for writing beyond which puts are dropped.
    """

    def __init__(
        self,
        reactor: ThreadsafeScheduler,
        open_store: Callable[[], DiskStore],
        max_pending_bytes: int = 64 * 2**20,
    ) -> None:
        self.reactor = reactor
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        """Body bytes queued for writing (loop thread only)."""
        self.dropped = 0
        """Puts shed because too much was queued."""
        self.errors = 0
        """Jobs that failed (loop thread only)."""
        self._open_store = open_store
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="disk-cache", daemon=True)
        self._thread.start()

    # -- asked on the loop -----------------------------------------------------------------------

    def select(self, url: str, request_headers: Headers, callback: SelectCallback) -> Handle:
        """Look *url* up on disk; *callback* runs on the loop unless the handle is cancelled."""
        handle = Handle(callback, ())
        headers = request_headers.copy()
        self._submit(
            _Job(
                lambda store: store.select(url, headers), handle, (None, "disk-error"), spread=True
            )
        )
        return handle

    def put(self, entry: StoredResponse, callback: Callable[[bool], None] | None = None) -> bool:
        """Queue a copy of *entry* for storing; ``False`` if it was shed (too much queued)."""
        size = len(entry.body)
        if self._closed or self.pending_bytes + size > self.max_pending_bytes:
            self.dropped += 1
            return False
        snapshot = _snapshot(entry)
        self.pending_bytes += size
        handle = None if callback is None else Handle(callback, ())
        self._submit(_Job(lambda store: store.put(snapshot), handle, False, size))
        return True

    def update(self, entry: StoredResponse) -> None:
        """Queue rewriting *entry*'s header fields and times (after a ``304``)."""
        snapshot = _snapshot(entry)
        self._submit(_Job(lambda store: store.update(snapshot), None))

    def remove(self, entry: StoredResponse) -> None:
        """Queue dropping *entry*'s variant."""
        snapshot = _snapshot(entry)
        self._submit(_Job(lambda store: store.remove(snapshot), None))

    def invalidate(
        self, url: str, response_headers: Headers, callback: Callable[[int], None] | None = None
    ) -> None:
        """Queue the invalidation of an unsafe request's URLs (RFC 9111 section 4.4)."""
        headers = response_headers.copy()
        handle = None if callback is None else Handle(callback, ())
        self._submit(_Job(lambda store: store.invalidate(url, headers), handle, 0))

    def call(self, job: Callable[[DiskStore], Any], callback: Callable[[Any], None]) -> Handle:
        """Run ``job(store)`` on the worker; ``callback(result)`` on the loop (tests, stats)."""
        handle = Handle(callback, ())
        self._submit(_Job(job, handle))
        return handle

    def close(self, timeout: float = 10.0) -> bool:
        """Finish the queued jobs, close the store, stop the thread; tell whether it stopped.

        Results of jobs still queued are not delivered: the loop may be closing too.
        """
        if not self._closed:
            self._closed = True
            self._jobs.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _submit(self, job: _Job) -> None:
        if self._closed:
            if job.handle is not None:
                job.handle.cancel()
            self.pending_bytes -= job.size
            return
        self._jobs.put(job)

    # -- on the loop, delivered by the worker -----------------------------------------------------

    def _deliver(self, job: _Job, result: Any, failed: bool) -> None:
        self.pending_bytes -= job.size
        if failed:
            self.errors += 1
        handle = job.handle
        if handle is None or handle.cancelled:
            return
        if job.spread:
            handle.callback(*result)
        else:
            handle.callback(result)

    # -- the worker thread -----------------------------------------------------------------------

    def _work(self) -> None:
        store: DiskStore | None = None
        try:
            store = self._open_store()
        except Exception as exc:  # noqa: BLE001 - any reason: one line, and carry on from memory
            log.warning(
                "disk cache unavailable (%s: %s); serving from memory and the origin only",
                type(exc).__name__,
                exc,
            )
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                result, failed = _run(store, job)
                if not self._closed:
                    self.reactor.call_soon_threadsafe(self._deliver, job, result, failed)
        finally:
            if store is not None:
                store.close()


def _run(store: DiskStore | None, job: _Job) -> tuple[Any, bool]:
    if store is None:
        return job.failure, True
    try:
        return job.work(store), False
    except Exception:
        log.exception("disk cache job failed; answered as a miss")
        return job.failure, True


def _snapshot(entry: StoredResponse) -> StoredResponse:
    # The loop may freshen *entry* (new header object, new times) while the worker writes it.
    return dataclasses.replace(entry, headers=entry.headers.copy(), judgement=None, rendered=None)

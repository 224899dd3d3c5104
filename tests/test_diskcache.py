"""proxy.diskcache: the disk store on a worker thread, results back on a real Reactor."""

import threading
import time

import pytest
from cache_helpers import T0, H

from proxy.cache import CacheConfig, HttpCache
from proxy.cache.disk import DiskStore
from proxy.cache.store import StoredResponse
from proxy.diskcache import DiskCache

URL = "http://example.com/a"
TIMEOUT = 20.0  # generous: a shared two-core machine


def entry(url=URL, body=b"hello"):
    headers = H(("Cache-Control", "max-age=60"), ("Content-Length", str(len(body))))
    return StoredResponse(url, 200, "OK", headers, body, T0, T0)


@pytest.fixture
def disk(reactor, tmp_path):
    cache = DiskCache(reactor, lambda: DiskStore(tmp_path, 1 << 20, warn=lambda m: None))
    yield cache
    assert cache.close()


class Results(list):
    """A callback that records its arguments and the thread it ran on."""

    def __call__(self, *args):
        self.append((threading.get_ident(), args))

    def wait(self, reactor, count=1):
        assert reactor.run_until(lambda: len(self) >= count, TIMEOUT), "no result in time"
        return [args for _, args in self]


def test_results_come_back_on_the_loop_thread_in_order(reactor, disk):
    """Jobs run in the order asked; callbacks run where the reactor runs."""
    stored, found = Results(), Results()
    assert disk.put(entry(), stored)
    disk.select(URL, H(), found)
    assert found.wait(reactor)[0][0].body == b"hello"
    assert stored.wait(reactor) == [(True,)]
    assert {thread for thread, _ in stored + found} == {threading.get_ident()}
    assert disk.pending_bytes == 0


def test_an_invalidation_is_seen_by_the_look_up_queued_after_it(reactor, disk):
    """RFC 9111 §4.4 across the queue: FIFO, so nothing invalidated comes back."""
    disk.put(entry())
    dropped, found = Results(), Results()
    disk.invalidate(URL, H(), dropped)
    disk.select(URL, H(), found)
    assert found.wait(reactor) == [(None, "uri-miss")]
    assert dropped.wait(reactor) == [(1,)]


def test_a_put_is_a_snapshot(reactor, disk):
    """Changing the entry on the loop after put() does not change what is written."""
    stored = entry()
    disk.put(stored)
    stored.headers.set("X-Later", "1")
    found = Results()
    disk.select(URL, H(), found)
    assert "X-Later" not in found.wait(reactor)[0][0].headers


def test_the_loop_never_waits_for_the_disk(reactor, tmp_path):
    """Asking returns at once while the worker is still busy (here: still opening)."""
    release = threading.Event()

    def slow_open():
        assert release.wait(TIMEOUT)
        return DiskStore(tmp_path, 1 << 20)

    disk = DiskCache(reactor, slow_open)
    found = Results()
    started = time.monotonic()
    disk.put(entry())
    disk.select(URL, H(), found)
    assert time.monotonic() - started < 0.5
    assert not reactor.run_until(lambda: bool(found), 0.05)
    release.set()
    assert found.wait(reactor)[0][0] is not None
    assert disk.close()


def test_puts_are_shed_past_the_pending_bound(reactor, tmp_path):
    """Queued bodies are bounded: past it a put is dropped and counted, nothing else."""
    disk = DiskCache(reactor, lambda: DiskStore(tmp_path, 1 << 20), max_pending_bytes=8)
    assert disk.put(entry(body=b"12345"))
    assert not disk.put(entry(url=URL + "2", body=b"12345"))  # the first is not written yet
    assert disk.dropped == 1
    assert reactor.run_until(lambda: disk.pending_bytes == 0, TIMEOUT)
    assert disk.put(entry(url=URL + "3", body=b"12345"))
    assert disk.close()


def test_a_store_that_cannot_open_answers_misses(reactor, tmp_path, caplog):
    """No disk tier is no reason to fail a request: every look-up is a miss."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    disk = DiskCache(reactor, lambda: DiskStore(blocker / "cache", 1 << 20))
    found, stored = Results(), Results()
    disk.select(URL, H(), found)
    disk.put(entry(), stored)
    assert found.wait(reactor) == [(None, "disk-error")]
    assert stored.wait(reactor) == [(False,)]
    assert disk.errors == 2
    assert "disk cache unavailable" in caplog.text
    assert disk.close()


def test_a_failing_job_is_a_miss_and_the_worker_goes_on(reactor, disk):
    """An exception in one job (disk full...) is logged and the next job still runs."""

    def explode(store):
        raise OSError(28, "No space left on device")

    failed, found = Results(), Results()
    disk.call(explode, failed)
    disk.select(URL, H(), found)
    assert failed.wait(reactor) == [(None,)]
    assert found.wait(reactor) == [(None, "uri-miss")]
    assert disk.errors == 1


def test_a_cancelled_look_up_never_calls_back(reactor, disk):
    """The session may be gone by the time the disk answers."""
    found, later = Results(), Results()
    disk.select(URL, H(), found).cancel()
    disk.select(URL, H(), later)
    later.wait(reactor)
    reactor.run_until(lambda: False, 0.05)
    assert found == []


def test_two_tiers_disk_behind_memory_across_a_restart(reactor, tmp_path):
    """The wiring the proxy needs: memory miss, disk hit, adopt, then a memory hit."""
    clock = [T0]
    first = HttpCache(CacheConfig(), clock=lambda: clock[0])
    writer = first.begin_store(
        "GET", URL, H(), 200, "OK", H(("Cache-Control", "max-age=60")), T0, T0
    )
    writer.write(b"kept across restarts")
    disk = DiskCache(reactor, lambda: DiskStore(tmp_path, 1 << 20))
    done = Results()
    disk.put(writer.finish(), done)
    done.wait(reactor)
    assert disk.close()

    restarted = HttpCache(CacheConfig(), clock=lambda: clock[0])
    assert restarted.lookup("GET", URL, H()).kind == "miss"
    disk = DiskCache(reactor, lambda: DiskStore(tmp_path, 1 << 20))
    found = Results()
    disk.select(URL, H(), found)
    ((stored, detail),) = found.wait(reactor)
    assert detail == "" and restarted.adopt(stored)
    clock[0] += 5
    hit = restarted.lookup("GET", URL, H())
    assert (hit.kind, hit.entry.body, restarted.age_seconds(hit.entry)) == (
        "fresh",
        b"kept across restarts",
        5,
    )
    assert disk.close()

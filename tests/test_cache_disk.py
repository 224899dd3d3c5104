"""The disk store: restarts, several processes, LRU bound, and every kind of bad file.

Each test gets its own folder (``tmp_path``). Warnings are collected by a callback, so "exactly
one warning" is counted, not grepped from logs.
"""

import multiprocessing
import os
import random
import sqlite3

import pytest
from cache_helpers import T0, Clock, H

from proxy.cache import CacheConfig, HttpCache
from proxy.cache.directives import format_http_date
from proxy.cache.disk import DiskStore
from proxy.cache.disklayout import BODIES, INDEX_NAME, body_path, digest
from proxy.cache.store import StoredResponse

URL = "http://example.com/a"


def entry(url=URL, body=b"hello", vary=(), key=(), status=200, **fields):
    headers = H(("Date", format_http_date(T0)), ("Cache-Control", "max-age=60"))
    for name, value in fields.items():
        headers.add(name.replace("_", "-"), value)
    headers.set("Content-Length", str(len(body)))
    return StoredResponse(url, status, "OK", headers, body, T0 - 1, T0, tuple(vary), tuple(key))


class Warnings(list):
    def __call__(self, message):
        self.append(message)


@pytest.fixture
def warnings():
    return Warnings()


def open_store(folder, warnings, max_bytes=1 << 20, clock=None, **options):
    return DiskStore(folder, max_bytes, clock=clock or Clock(), warn=warnings, **options)


def body_files(folder):
    found = []
    for root, _, files in os.walk(os.path.join(folder, BODIES)):
        found += [os.path.join(root, name) for name in files]
    return sorted(found)


def row_body_file(folder, url=URL):
    with sqlite3.connect(os.path.join(folder, INDEX_NAME)) as db:
        return db.execute("SELECT body_file FROM variants WHERE url = ?", (url,)).fetchone()[0]


def test_a_new_store_on_the_same_folder_serves_what_the_old_one_stored(tmp_path, warnings):
    """Restart: everything a response is (RFC 9111 §3) survives, variants included (§4.1)."""
    first = open_store(tmp_path, warnings)
    gzip = entry(body=b"gzip body", vary=("accept-encoding",), key=("gzip",), ETag='"g"')
    plain = entry(body=b"plain body", vary=("accept-encoding",), key=(None,), ETag='"p"')
    assert first.put(gzip) and first.put(plain)
    first.close()
    again = open_store(tmp_path, warnings)
    found, detail = again.select(URL, H(("Accept-Encoding", "gzip")))
    assert detail == "" and found is not None
    assert (found.status, found.reason, found.body) == (200, "OK", b"gzip body")
    assert list(found.headers) == list(gzip.headers)
    assert (found.request_time, found.response_time) == (T0 - 1, T0)
    assert (found.vary_names, found.vary_key) == (("accept-encoding",), ("gzip",))
    assert again.select(URL, H())[0].body == b"plain body"
    assert again.select(URL, H(("Accept-Encoding", "br"))) == (None, "vary-miss")
    assert again.select("http://example.com/b", H()) == (None, "uri-miss")
    assert (len(again), again.size) == (2, gzip.compute_size() + plain.compute_size())
    assert warnings == []


def test_disk_entries_work_in_the_memory_cache(tmp_path, warnings):
    """Two tiers: an entry read from disk is adopted by HttpCache and judged as stored."""
    store = open_store(tmp_path, warnings)
    clock = Clock()
    memory = HttpCache(CacheConfig(), clock=clock)
    writer = memory.begin_store(
        "GET", URL, H(), 200, "OK", H(("Cache-Control", "max-age=60")), T0, T0
    )
    writer.write(b"from the origin")
    assert store.put(writer.finish())
    fresh_process = HttpCache(CacheConfig(), clock=clock)
    found, _ = store.select(URL, H())
    assert fresh_process.adopt(found)
    clock.now += 10
    hit = fresh_process.lookup("GET", URL, H())
    assert (hit.kind, hit.entry.body, fresh_process.age_seconds(hit.entry)) == (
        "fresh",
        b"from the origin",
        10,
    )


def test_put_replaces_the_variant_and_deletes_its_old_body(tmp_path, warnings):
    """One row per cache key; the replaced body file goes too."""
    store = open_store(tmp_path, warnings)
    store.put(entry(body=b"one"))
    store.put(entry(body=b"two"))
    assert len(store) == 1 and len(body_files(tmp_path)) == 1
    assert store.select(URL, H())[0].body == b"two"


def test_a_new_vary_drops_differently_varying_variants(tmp_path, warnings):
    """As the memory store: variants chosen by another Vary rule would select ambiguously."""
    store = open_store(tmp_path, warnings)
    store.put(entry(vary=("accept",), key=("a",)))
    store.put(entry(vary=("accept",), key=("b",)))
    store.put(entry(vary=("accept-language",), key=("fr",)))
    assert len(store) == 1 and len(body_files(tmp_path)) == 1


def test_update_after_a_304_reaches_the_next_process(tmp_path, warnings):
    """RFC 9111 §4.3.4: freshened fields and times are written, the body is kept."""
    store = open_store(tmp_path, warnings)
    stored = entry(ETag='"v1"')
    store.put(stored)
    stored.headers.set("X-Version", "2")
    stored.response_time = T0 + 100
    assert store.update(stored)
    other = open_store(tmp_path, warnings).select(URL, H())[0]
    assert (other.headers.get("X-Version"), other.response_time, other.body) == (
        "2",
        T0 + 100,
        b"hello",
    )
    assert store.size == stored.compute_size()
    assert not store.update(entry(url="http://example.com/never-stored"))


def test_a_304_for_an_older_response_leaves_a_newer_one_alone(tmp_path, warnings):
    """Another process stored a new body under the key meanwhile: its row keeps its own head."""
    first, second = open_store(tmp_path, warnings), open_store(tmp_path, warnings)
    old = entry(body=b"hello", ETag='"a"')
    first.put(old)
    second.put(entry(body=b"a newer and longer body", ETag='"b"'))
    old.headers.set("X-Freshened", "1")
    assert not first.update(old)  # the row no longer holds old's body
    assert not first.remove(old)
    found = open_store(tmp_path, warnings).select(URL, H())[0]
    assert found.body == b"a newer and longer body" and found.headers.get("ETag") == '"b"'
    assert found.headers.get("Content-Length") == str(len(found.body))
    assert "X-Freshened" not in found.headers and warnings == []
    assert first.size == found.compute_size()


def test_remove_and_invalidation(tmp_path, warnings):
    """RFC 9111 §4.4: the URL and same-origin Location/Content-Location go; others stay."""
    store = open_store(tmp_path, warnings)
    for path in ("a", "b", "c"):
        store.put(entry(url=f"http://example.com/{path}"))
    store.put(entry(url="http://other.test/b"))
    location = H(("Location", "/b"), ("Content-Location", "http://other.test/b"))
    assert store.invalidate("http://EXAMPLE.com:80/a", location) == 2
    assert store.select("http://other.test/b", H())[0] is not None
    assert store.remove(entry(url="http://example.com/c")) is True
    assert store.remove_url("http://other.test/b") == 1
    assert len(store) == 0 and body_files(tmp_path) == []


def test_lru_eviction_keeps_the_byte_bound(tmp_path, warnings):
    """Least recently used first; a look-up counts as a use; the new entry always stays."""
    clock = Clock()
    size = entry(url="http://example.com/0", body=b"x" * 1000).compute_size()
    store = open_store(tmp_path, warnings, max_bytes=3 * size, clock=clock)
    for n in range(3):
        clock.now += 10
        store.put(entry(url=f"http://example.com/{n}", body=b"x" * 1000))
    clock.now += 10
    assert store.select("http://example.com/0", H())[0] is not None  # 0 is now the newest use
    clock.now += 10
    store.put(entry(url="http://example.com/3", body=b"x" * 1000))
    assert store.select("http://example.com/1", H()) == (None, "uri-miss")
    for n in (0, 2, 3):
        assert store.select(f"http://example.com/{n}", H())[0] is not None
    assert store.size <= 3 * size and len(body_files(tmp_path)) == 3
    assert store.put(entry(body=b"y" * (3 * size))) is False  # alone over the bound


def test_a_torn_body_is_never_served_and_warned_about_once(tmp_path, warnings):
    """Crash safety: a body shorter than its row says is dropped, with exactly one warning."""
    store = open_store(tmp_path, warnings)
    store.put(entry(body=b"a complete body"))
    path = body_path(str(tmp_path), row_body_file(str(tmp_path)))
    with open(path, "r+b") as stream:
        stream.truncate(5)
    assert store.select(URL, H()) == (None, "uri-miss")
    assert len(warnings) == 1 and "torn or altered" in warnings[0]
    assert store.select(URL, H()) == (None, "uri-miss")
    assert len(warnings) == 1 and not os.path.exists(path) and len(store) == 0


@pytest.mark.parametrize("damage", [b"A complete body", b"a complete body and more"])
def test_an_altered_or_grown_body_is_never_served(tmp_path, warnings, damage):
    """The digest catches same-length changes; the length check a file that grew."""
    store = open_store(tmp_path, warnings)
    store.put(entry(body=b"a complete body"))
    with open(body_path(str(tmp_path), row_body_file(str(tmp_path))), "wb") as stream:
        stream.write(damage)
    assert store.select(URL, H())[0] is None and len(warnings) == 1


def test_a_body_that_cannot_be_read_is_dropped_with_one_warning(tmp_path, warnings):
    """A directory where the body should be (any OSError on open or read, as EIO or EACCES)."""
    store = open_store(tmp_path, warnings)
    store.put(entry())
    path = body_path(str(tmp_path), row_body_file(str(tmp_path)))
    os.unlink(path)
    os.mkdir(path)
    assert store.select(URL, H()) == (None, "uri-miss")
    assert store.select(URL, H()) == (None, "uri-miss")
    assert len(warnings) == 1 and "cannot be read" in warnings[0] and len(store) == 0


def test_a_body_deleted_meanwhile_is_a_quiet_miss(tmp_path, warnings):
    """Another process may evict between our row read and our file open: no warning."""
    store = open_store(tmp_path, warnings)
    store.put(entry())
    os.unlink(body_path(str(tmp_path), row_body_file(str(tmp_path))))
    assert store.select(URL, H()) == (None, "uri-miss")
    assert warnings == [] and len(store) == 0


def test_a_garbage_index_is_moved_aside_with_one_warning(tmp_path, warnings):
    """A file that is not SQLite at all: set aside, a new index starts, the store works."""
    (tmp_path / INDEX_NAME).write_bytes(b"this is not a database\n" * 200)
    store = open_store(tmp_path, warnings)
    assert len(warnings) == 1 and "corrupt" in warnings[0]
    assert (tmp_path / f"{INDEX_NAME}.corrupt").exists()
    store.put(entry())
    assert store.select(URL, H())[0].body == b"hello"
    assert len(open_store(tmp_path, Warnings())) == 1  # and the next process is fine


def test_a_corrupt_page_found_later_replaces_the_index(tmp_path, warnings):
    """Corruption past the header is met mid-use: one warning, then an empty sound index."""
    store = open_store(tmp_path, warnings)
    for n in range(200):
        store.put(entry(url=f"http://example.com/{n}", ETag=f'"{"x" * 200}"'))
    store.close()
    index = tmp_path / INDEX_NAME
    data = bytearray(index.read_bytes())
    assert len(data) > 3 * 4096
    data[4096:] = random.Random(7).randbytes(len(data) - 4096)
    index.write_bytes(bytes(data))
    store = open_store(tmp_path, warnings)
    assert store.select("http://example.com/5", H()) == (None, "uri-miss")
    assert len(warnings) == 1 and "corrupt" in warnings[0]
    store.put(entry())
    assert store.select(URL, H())[0] is not None


def test_another_programs_database_is_left_intact_beside_ours(tmp_path, warnings):
    """A valid SQLite file that is not ours (application_id): set aside, not overwritten."""
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        db.execute("CREATE TABLE accounts (name TEXT)")
        db.execute("INSERT INTO accounts VALUES ('precious')")
    db.close()
    store = open_store(tmp_path, warnings)
    assert len(warnings) == 1 and "foreign" in warnings[0]
    with sqlite3.connect(tmp_path / f"{INDEX_NAME}.foreign") as db:
        assert db.execute("SELECT name FROM accounts").fetchall() == [("precious",)]
    db.close()
    store.put(entry())
    assert len(store) == 1


def test_an_older_schema_is_rebuilt_quietly(tmp_path, warnings):
    """A cache may forget: another user_version of our index starts empty, no warning."""
    store = open_store(tmp_path, warnings)
    store.put(entry())
    store.close()
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        db.execute("PRAGMA user_version=0")
    db.close()
    assert len(open_store(tmp_path, warnings)) == 0 and warnings == []


def test_foreign_files_are_ignored_with_one_warning_each(tmp_path, warnings):
    """Never read, never deleted, warned about once per file and store."""
    open_store(tmp_path, Warnings()).put(entry())
    strangers = [
        tmp_path / "notes.txt",
        tmp_path / BODIES / "zz",
        tmp_path / BODIES / "ab" / "ab12.body",
        tmp_path / BODIES / "ab" / ("cd" + "0" * 30 + ".body"),  # ours in form, wrong folder
    ]
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not for the cache")
    store = open_store(tmp_path, warnings, orphan_grace=0)
    assert sorted(warnings) == sorted(
        f"foreign file {path} in the cache folder: ignored" for path in strangers
    )
    store.sweep()
    assert len(warnings) == len(strangers)
    assert all(path.read_bytes() == b"not for the cache" for path in strangers)
    assert store.select(URL, H())[0].body == b"hello"


def test_a_row_naming_a_path_outside_the_folder_is_never_followed(tmp_path, warnings):
    """Nothing on disk is trusted: a body_file of ../../x is a corrupt row, not a path."""
    folder = tmp_path / "cache"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"hello")
    store = open_store(folder, warnings)
    store.put(entry())
    with sqlite3.connect(folder / INDEX_NAME) as db:
        db.execute(
            "UPDATE variants SET body_file = '../../outside.txt', body_digest = ?",
            (digest(b"hello"),),
        )
    db.close()
    assert store.select(URL, H()) == (None, "uri-miss")
    assert len(warnings) == 1 and "unreadable" in warnings[0]
    assert outside.read_bytes() == b"hello" and len(store) == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("headers", "not json"),
        ("headers", '[["a", 1]]'),
        ("vary_names", "{}"),
        ("status", "x"),
        ("status", 99999),
        ("headers", '[["X-A", "a\\r\\nInjected: 1"]]'),  # would break the head
        ("headers", '[["Bad Name", "1"]]'),
        ("headers", '[["Content-Length", "100"]]'),  # the body has 5: the framing would go
        ("reason", "OK\r\n"),
    ],
)
def test_an_unreadable_row_is_dropped_with_one_warning(tmp_path, warnings, column, value):
    """Every column is type-checked on the way out."""
    store = open_store(tmp_path, warnings)
    store.put(entry())
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        db.execute(f"UPDATE variants SET {column} = ?", (value,))
    db.close()
    assert store.select(URL, H())[0] is None
    assert store.select(URL, H())[0] is None
    assert len(warnings) == 1 and len(store) == 0


def test_sweep_removes_our_old_leftovers_but_not_recent_ones(tmp_path, warnings):
    """A crash between rename and commit, or mid-write, leaves files only we could name."""
    clock = Clock()
    store = open_store(tmp_path, warnings, clock=clock, orphan_grace=600)
    store.put(entry())
    kept = body_files(tmp_path)
    orphan = tmp_path / BODIES / "ab" / ("ab" + "1" * 30 + ".body")
    temporary = tmp_path / BODIES / "ab" / (".ab" + "2" * 30 + ".body.4242.tmp")
    for path in (orphan, temporary):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"leftover")
        os.utime(path, (T0, T0))
    clock.now = T0 + 599
    assert store.sweep().removed == 0
    clock.now = T0 + 601
    assert store.sweep().removed == 2
    assert body_files(tmp_path) == kept and warnings == []


def _worker(folder: str, seed: int, max_bytes: int, rounds: int) -> tuple[int, int]:
    """One process of the two-process test: store, look up, check the bound, many times."""
    rng = random.Random(seed)
    store = DiskStore(folder, max_bytes, warn=lambda message: None)
    stored = hits = 0
    for n in range(rounds):
        url = f"http://example.com/{rng.randrange(60)}"
        body = bytes([seed]) * rng.randrange(2_000, 20_000)
        headers = H(("Cache-Control", "max-age=60"), ("X-Writer", str(seed)))
        if store.put(StoredResponse(url, 200, "OK", headers, body, float(n), float(n))):
            stored += 1
        assert store.size <= max_bytes
        found, _ = store.select(f"http://example.com/{rng.randrange(60)}", H())
        if found is not None:
            hits += 1
            assert found.body == bytes([found.body[0]]) * len(found.body)
    store.close()
    return stored, hits


def test_two_processes_store_and_evict_within_one_byte_bound(tmp_path):
    """--workers: two processes share the folder; the bound holds for both together."""
    max_bytes = 150_000
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        runs = [pool.apply_async(_worker, (str(tmp_path), seed, max_bytes, 150)) for seed in (1, 2)]
        results = [run.get(timeout=240) for run in runs]
    assert all(stored == 150 for stored, _ in results)
    assert sum(hits for _, hits in results) > 0
    warnings = Warnings()
    store = DiskStore(tmp_path, max_bytes, warn=warnings)
    assert warnings == []
    on_disk = sum(os.path.getsize(path) for path in body_files(tmp_path))
    assert store.size <= max_bytes and on_disk <= max_bytes
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        urls = [row[0] for row in db.execute("SELECT url FROM variants")]
    db.close()
    assert len(urls) == len(body_files(tmp_path)) > 3  # no orphan, no dangling row
    assert all(store.select(url, H())[0] is not None for url in urls)

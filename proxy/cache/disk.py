"""A persistent store of cached responses, shared by every process that opens the same folder.

Theory of operation
-------------------
:class:`DiskStore` holds the same :class:`~proxy.cache.store.StoredResponse` variants as the
memory store (:class:`~proxy.cache.store.CacheStore`), with the same cache key (RFC 9111
section 2: normalised URL, then the ``Vary`` values of section 4.1), but in a folder, so they
outlive the process and are shared by all ``--workers``. It is *synchronous* and starts no
thread: every method may block on the disk or on another process's transaction, so the proxy
calls it on a worker thread (``proxy.diskcache``), never on the reactor thread. One instance
is used by one thread at a time.

The files and their safety rules are described in ``proxy.cache.disklayout``; in short, an
SQLite index (one row per variant) and one immutable body file per row, written atomically
before its row is committed, and checked (length and digest) on every read.

* :meth:`DiskStore.select` finds the variant for a request (section 4.1), reads and checks its
  body and marks it used (at most once a second per entry, so a hot entry is not a write per
  hit). A body that fails its check is dropped with one warning and the look-up misses.
* :meth:`DiskStore.put` replaces the variant with the same key, and the ones with another set
  of ``Vary`` names (as the memory store does), then evicts the least recently used variants,
  in the same transaction, until the bytes held fit ``max_bytes``. That transaction is
  exclusive across processes (``BEGIN IMMEDIATE``), so two workers storing at once can never
  both decide there is room: the bound holds for the folder, not per process. Bodies of the
  dropped rows are deleted after the commit; a reader that had just picked one finds it gone
  and misses.
* :meth:`DiskStore.update` rewrites a variant's header fields and times after a ``304``
  (section 4.3.4); :meth:`DiskStore.remove_url` and :meth:`DiskStore.invalidate` drop what an
  unsafe request invalidated (section 4.4).

Sizes count what the memory store counts (body, serialised header fields, URL); an index
row's own overhead is not counted, so the folder uses a little more than ``max_bytes``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from proxy.cache import disklayout, diskrows
from proxy.cache.disklayout import SweepReport, Warn
from proxy.cache.store import StoredResponse, invalidation_urls, normalize_url, vary_key_for
from proxy.http11.headers import Headers

_TOUCH_INTERVAL = 1.0  # seconds: LRU order finer than this is not worth a write per hit


def _log_warning(message: str) -> None:
    logging.getLogger(__name__).warning("%s", message)


_SAME_VARIANT_AND_BODY = (
    "WHERE url = ? AND vary_names = ? AND vary_key = ? AND body_length = ? AND body_digest = ?"
)


class DiskStore:
    """Stored responses in *directory*, bounded by *max_bytes*, safe to share between processes.

    :param directory: the cache folder (created if missing).
    :param max_bytes: the byte budget for the folder; least recently used variants go first.
    :param clock: the time used for "last used" (wall clock: processes must agree).
    :param warn: where the one-line warnings about broken or foreign files go (the
        ``proxy.cache.disk`` logger by default).
    :param orphan_grace: age in seconds after which an unreferenced body or temporary file
        is taken for a crash's leftover and removed.
    :param busy_timeout: how long to wait for another process's transaction, in seconds.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.time,
        warn: Warn = _log_warning,
        orphan_grace: float = 600.0,
        busy_timeout: float = 10.0,
    ) -> None:
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        self.clock = clock
        self.orphan_grace = orphan_grace
        self._warn = warn
        self._warned: set[str] = set()
        self._busy_timeout = busy_timeout
        os.makedirs(os.path.join(self.directory, disklayout.BODIES), exist_ok=True)
        self._db = disklayout.open_index(self.directory, self._warn_once, busy_timeout)
        self.sweep()

    def _warn_once(self, message: str, key: str | None = None) -> None:
        key = message if key is None else key
        if key not in self._warned:
            self._warned.add(key)
            self._warn(message)

    def close(self) -> None:
        """Close the index; the files stay for the next store that opens the folder."""
        self._db.close()

    def __len__(self) -> int:
        return int(self._query("SELECT count(*) FROM variants")[0][0])

    @property
    def size(self) -> int:
        """Bytes held by the stored variants, as the memory store counts them."""
        return int(self._query("SELECT bytes FROM totals")[0][0])

    # -- reading ---------------------------------------------------------------------------------

    def select(self, url: str, request_headers: Headers) -> tuple[StoredResponse | None, str]:
        """Find and read the variant of *url* for a request (RFC 9111 section 4.1).

        :returns: ``(entry, "")``, or ``(None, "uri-miss")`` / ``(None, "vary-miss")`` as
            :meth:`proxy.cache.store.CacheStore.select` does. A variant whose body is missing
            or fails its check counts as absent.
        """
        url = normalize_url(url)
        rows = self._query(f"SELECT {diskrows.COLUMNS} FROM variants WHERE url = ?", (url,))
        if not rows:
            return None, "uri-miss"
        other_variants = False
        for row in rows:
            try:
                names = diskrows.vary_names_from(row[2])
                if "*" in names or diskrows.encode(vary_key_for(request_headers, names)) != row[3]:
                    other_variants = True
                    continue
                entry = self._entry(row)
            except diskrows.CorruptRow as error:
                self._warn_once(f"cache index row for {url} is unreadable ({error}): dropped")
                self._drop_rows([row[0]])
                continue
            if entry is None:
                return None, "uri-miss"
            now = self.clock()
            try:
                self._execute(
                    "UPDATE variants SET last_used = ? WHERE rowid = ? AND last_used < ?",
                    (now, row[0], now - _TOUCH_INTERVAL),
                )
            except sqlite3.OperationalError:
                pass  # busy past the timeout: a missed LRU touch is no reason to miss
            return entry, ""
        return None, "vary-miss" if other_variants else "uri-miss"

    def _entry(self, row: tuple[Any, ...]) -> StoredResponse | None:
        rowid, body_file, length, expected_digest = row[0], row[9], row[10], row[11]
        if not disklayout.is_body_name(body_file) or not isinstance(length, int):
            raise diskrows.CorruptRow("body reference")
        try:
            body = disklayout.read_body(self.directory, body_file, length)
        except OSError as error:  # a directory in its place, no permission, EIO...
            path = disklayout.body_path(self.directory, body_file)
            self._warn_once(f"cache body {path} cannot be read ({error}): dropped, never served")
            self._drop_rows([rowid])
            return None
        if body is None:
            self._drop_rows([rowid])  # evicted by another process meanwhile, or deleted
            return None
        if len(body) != length or disklayout.digest(body) != expected_digest:
            path = disklayout.body_path(self.directory, body_file)
            self._warn_once(f"cache body {path} is torn or altered: dropped, never served")
            self._drop_rows([rowid])
            return None
        return diskrows.entry_from_row(row, body)

    # -- writing ---------------------------------------------------------------------------------

    def put(self, entry: StoredResponse) -> bool:
        """Store *entry*, replacing its variant and differently-varying ones, then evict.

        :returns: ``False`` (nothing stored) when the entry alone exceeds ``max_bytes``.
        """
        size = entry.compute_size()
        if size > self.max_bytes:
            return False
        name = disklayout.new_body_name()
        disklayout.write_body(self.directory, name, entry.body)
        row = diskrows.row_for(entry, name, disklayout.digest(entry.body), self.clock())
        try:
            dropped = self._transaction(self._replace_and_evict, row)
        except BaseException:
            disklayout.remove_bodies(self.directory, [name])
            raise
        disklayout.remove_bodies(self.directory, dropped)
        return True

    def _replace_and_evict(self, row: tuple[Any, ...]) -> list[str]:
        db = self._db
        url, names, key = row[:3]
        old = db.execute(
            "SELECT rowid, body_file FROM variants "
            "WHERE url = ? AND (vary_names != ? OR vary_key = ?)",
            (url, names, key),
        ).fetchall()
        db.executemany("DELETE FROM variants WHERE rowid = ?", [(r[0],) for r in old])
        new_rowid = db.execute(diskrows.INSERT, row).lastrowid
        dropped = [r[1] for r in old]
        excess = db.execute("SELECT bytes FROM totals").fetchone()[0] - self.max_bytes
        while excess > 0:
            # Least recently used first, a batch at a time, never the entry being stored.
            victims = db.execute(
                "SELECT rowid, body_file, size FROM variants WHERE rowid != ? "
                "ORDER BY last_used, rowid LIMIT 64",
                (new_rowid,),
            ).fetchall()
            if not victims:
                break
            for rowid, body_file, size in victims:
                if excess <= 0:
                    break
                db.execute("DELETE FROM variants WHERE rowid = ?", (rowid,))
                dropped.append(body_file)
                excess -= size
        return dropped

    def update(self, entry: StoredResponse) -> bool:
        """Rewrite the header fields and times of *entry*'s variant after a ``304`` (§4.3.4).

        Only the row that still holds *entry*'s body is rewritten: another process may have
        stored a newer response under the same key meanwhile, and that body with this
        response's ``Content-Length`` and ``ETag`` would be a wrong answer (and a desynchronised
        connection) for every process that reads it.

        :returns: whether the variant was on disk.
        """
        cursor = self._execute(
            "UPDATE variants SET status = ?, reason = ?, headers = ?, request_time = ?, "
            "response_time = ?, size = ?, last_used = ? " + _SAME_VARIANT_AND_BODY,
            (
                entry.status, entry.reason, diskrows.fields_text(entry.headers),
                entry.request_time, entry.response_time, entry.compute_size(), self.clock(),
                *self._variant_and_body(entry),
            ),
        )  # fmt: skip
        return cursor is not None and cursor.rowcount > 0

    def remove(self, entry: StoredResponse) -> bool:
        """Drop *entry*'s variant if it still holds *entry*'s body; tell whether it did."""
        rows = self._query(
            "SELECT rowid FROM variants " + _SAME_VARIANT_AND_BODY, self._variant_and_body(entry)
        )
        return self._drop_rows([row[0] for row in rows]) > 0

    @staticmethod
    def _variant_and_body(entry: StoredResponse) -> tuple[Any, ...]:
        url, names, key = diskrows.row_for(entry, "", "", 0.0)[:3]
        return url, names, key, len(entry.body), disklayout.digest(entry.body)

    def remove_url(self, url: str) -> int:
        """Drop every variant of *url*; return how many were dropped."""
        rows = self._query("SELECT rowid FROM variants WHERE url = ?", (normalize_url(url),))
        return self._drop_rows([row[0] for row in rows])

    def invalidate(self, url: str, response_headers: Headers) -> int:
        """Drop *url* and its same-origin ``Location``/``Content-Location`` (RFC 9111 §4.4)."""
        urls = invalidation_urls(normalize_url(url), response_headers)
        return sum(self.remove_url(other) for other in urls)

    def clear(self) -> None:
        """Drop every stored variant and its body."""
        rows = self._query("SELECT rowid FROM variants")
        self._drop_rows([row[0] for row in rows])

    def sweep(self) -> SweepReport:
        """Remove crash leftovers and warn, once per file, about foreign files in the folder."""
        referenced = {row[0] for row in self._query("SELECT body_file FROM variants")}
        report = disklayout.sweep(self.directory, referenced, self.orphan_grace, self.clock())
        for path in report.foreign:
            self._warn_once(f"foreign file {path} in the cache folder: ignored", key=path)
        return report

    # -- SQLite plumbing: a broken index is replaced, never a crash ------------------------------

    def _drop_rows(self, rowids: list[int]) -> int:
        def drop() -> list[str]:
            names: list[str] = []
            for rowid in rowids:
                row = self._db.execute(
                    "SELECT body_file FROM variants WHERE rowid = ?", (rowid,)
                ).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM variants WHERE rowid = ?", (rowid,))
                    names.append(row[0])
            return names

        dropped = self._transaction(drop) if rowids else []
        disklayout.remove_bodies(self.directory, dropped)
        return len(dropped)

    def _transaction(self, work: Callable[..., list[str]], *args: Any, **kwargs: Any) -> list[str]:
        for attempt in range(2):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(*args, **kwargs)
                    self._db.execute("COMMIT")
                    return result
                except BaseException:
                    if self._db.in_transaction:  # some errors end it themselves
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as error:
                if attempt or not disklayout.is_corruption(error):
                    raise
                self._reopen()
        return []

    def _query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            try:
                return self._db.execute(sql, parameters).fetchall()
            except sqlite3.DatabaseError as error:
                if attempt or not disklayout.is_corruption(error):
                    raise
                self._reopen()
        return []

    def _execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> sqlite3.Cursor | None:
        for attempt in range(2):
            try:
                return self._db.execute(sql, parameters)
            except sqlite3.DatabaseError as error:
                if attempt or not disklayout.is_corruption(error):
                    raise
                self._reopen()
        return None

    def _reopen(self) -> None:
        self._db.close()
        disklayout.set_aside_if_broken(self.directory, self._warn_once)
        self._db = disklayout.open_index(self.directory, self._warn_once, self._busy_timeout)

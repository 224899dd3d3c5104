"""The files of the disk cache: names, atomic body writes, the SQLite index, recovery, sweeping.

Theory of operation
-------------------
The disk cache (``proxy.cache.disk``) keeps each stored response (RFC 9111 section 3) in two
places, chosen for what each is good at:

* the **index**, one SQLite database (``index.sqlite3``, standard library), holds everything
  small and changing: cache key, status, header fields, times, size, last use, and the name,
  length and digest of the body file. SQLite gives transactions that several processes can
  share (``--workers``) with WAL journaling, so an eviction in one worker and a store in
  another never see half of each other, and a crash leaves the last committed state.
* **bodies** are plain files, one per stored response, never modified once written: a new
  version gets a new random name. Each is written to a temporary name, ``fsync``-ed, then
  renamed into place with ``os.replace``, which is atomic, and only *then* is the index row
  that names it committed. A reader either finds the complete file or no file.

Layout::

    DIR/index.sqlite3        the index (+ -wal, -shm while open)
    DIR/index.lock           taken (flock) only while replacing a broken index
    DIR/bodies/3f/3fa9...c1.body             a body: 32 hex digits, fanned out by the first two
    DIR/bodies/3f/.3fa9...c1.body.<pid>.tmp  a body being written

**Nothing on disk is trusted.** Bodies are checked on every read against the length and
BLAKE2b digest in their index row, so a torn or altered file is never served (it is dropped,
with one warning). An index that is not an SQLite file, is corrupt, or is another program's
database (its ``application_id`` is not ours) is moved aside to ``index.sqlite3.corrupt`` or
``.foreign`` with one warning, and a new empty one starts; the bodies it named become orphans.
An index of an older schema is emptied and rebuilt: a cache may always forget.

**Sweeping** (:func:`sweep`) walks ``bodies/``: a body no index row names, or a temporary file,
older than a grace period (a crash between rename and commit, or mid-write) is removed; one
younger may belong to another process's store in progress and is left alone. A file whose
name is not ours, here or at the top of ``DIR``, is *foreign*: reported once, never read,
never deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

INDEX_NAME = "index.sqlite3"
LOCK_NAME = "index.lock"
BODIES = "bodies"

#: ``PRAGMA application_id`` of our index ("mrPX"): tells our database from anyone else's.
APPLICATION_ID = 0x6D725058
#: ``PRAGMA user_version``: the schema below; another value means rebuild.
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE variants (
    url TEXT NOT NULL,
    vary_names TEXT NOT NULL,
    vary_key TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    headers TEXT NOT NULL,
    request_time REAL NOT NULL,
    response_time REAL NOT NULL,
    body_file TEXT NOT NULL,
    body_length INTEGER NOT NULL,
    body_digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    last_used REAL NOT NULL,
    UNIQUE (url, vary_names, vary_key)
);
CREATE INDEX variants_by_last_use ON variants (last_used);
CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT INTO totals VALUES (0, 0);
CREATE TRIGGER variants_added AFTER INSERT ON variants
    BEGIN UPDATE totals SET bytes = bytes + NEW.size; END;
CREATE TRIGGER variants_dropped AFTER DELETE ON variants
    BEGIN UPDATE totals SET bytes = bytes - OLD.size; END;
CREATE TRIGGER variants_resized AFTER UPDATE OF size ON variants
    BEGIN UPDATE totals SET bytes = bytes + NEW.size - OLD.size; END;
"""

_BODY_NAME = re.compile(r"[0-9a-f]{32}\.body", re.ASCII)
_TEMP_NAME = re.compile(r"\.([0-9a-f]{32}\.body)\.\d+\.tmp", re.ASCII)
_FAN_OUT = re.compile(r"[0-9a-f]{2}", re.ASCII)
_OWN_TOP_LEVEL = frozenset(
    {BODIES, LOCK_NAME}
    | {INDEX_NAME + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    | {f"{INDEX_NAME}.{why}" for why in ("corrupt", "foreign")}
)

Warn = Callable[[str], None]


class ForeignIndex(Exception):
    """The index file is a valid SQLite database, but not one of ours."""


def new_body_name() -> str:
    """A fresh random body file name (128 bits: two stores never pick the same)."""
    return secrets.token_hex(16) + ".body"


def is_body_name(name: object) -> bool:
    """Tell whether *name* is one of ours: an index row naming ``../x`` is never followed."""
    return isinstance(name, str) and _BODY_NAME.fullmatch(name) is not None


def body_path(directory: str, name: str) -> str:
    """Where body *name* lives under *directory* (``ValueError`` for a name not ours)."""
    if not is_body_name(name):
        raise ValueError(f"not a cache body name: {name!r}")
    return os.path.join(directory, BODIES, name[:2], name)


def digest(body: bytes) -> str:
    """The digest a body is checked against on every read."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def write_body(directory: str, name: str, body: bytes) -> None:
    """Write *body* as body file *name*, atomically: temporary file, ``fsync``, rename."""
    final = body_path(directory, name)
    folder = os.path.dirname(final)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "xb") as stream:
            stream.write(body)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_body(directory: str, name: str, length: int) -> bytes | None:
    """Read at most ``length + 1`` bytes of body *name*; ``None`` if it is gone.

    One byte more than expected is enough to tell a file that grew; the caller checks length
    and digest.
    """
    try:
        with open(body_path(directory, name), "rb") as stream:
            return stream.read(length + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None


def remove_bodies(directory: str, names: list[str]) -> None:
    """Delete body files whose index rows were dropped; missing ones are already gone."""
    for name in names:
        if is_body_name(name):
            # Gone already, or not a file we can remove (a directory in its place, no
            # permission): the row is dropped either way, and the sweep reports what stays.
            with contextlib.suppress(OSError):
                os.unlink(body_path(directory, name))


def is_corruption(error: sqlite3.DatabaseError) -> bool:
    """Tell a broken database file from an ordinary failure (locked, disk full...)."""
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def open_index(directory: str, warn: Warn, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) the index of *directory*, replacing a broken or foreign one."""
    path = os.path.join(directory, INDEX_NAME)
    for _ in range(3):
        connection = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            _prepare(connection)
            return connection
        except (sqlite3.DatabaseError, ForeignIndex) as error:
            connection.close()
            if isinstance(error, sqlite3.DatabaseError) and not is_corruption(error):
                raise
            set_aside_if_broken(directory, warn)
    raise RuntimeError(f"cannot open a cache index in {directory}")


def _prepare(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
    connection.execute("PRAGMA synchronous=NORMAL")  # consistent after a crash, not durable
    connection.execute("BEGIN IMMEDIATE")  # one process creates the schema, others wait
    try:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if application_id == 0:
            if connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise ForeignIndex(INDEX_NAME)
            _create_schema(connection)
        elif application_id != APPLICATION_ID:
            raise ForeignIndex(INDEX_NAME)
        elif version != SCHEMA_VERSION:
            for table in ("variants", "totals"):
                connection.execute(f"DROP TABLE IF EXISTS {table}")
            _create_schema(connection)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _create_schema(connection: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";\n"):
        if statement.strip():
            connection.execute(statement)
    connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


@contextlib.contextmanager
def _recovery_lock(directory: str) -> Iterator[None]:
    with open(os.path.join(directory, LOCK_NAME), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def set_aside_if_broken(directory: str, warn: Warn) -> None:
    """Move a corrupt or foreign index aside (with one warning) so a new one can start.

    Under a lock, and only if it is still broken: with several processes, the first to get
    the lock replaces it and the others find the new one sound.
    """
    path = os.path.join(directory, INDEX_NAME)
    with _recovery_lock(directory):
        why = _breakage(path)
        if why is None:
            return
        warn(f"cache index {path} is {why}: moved aside to {path}.{why}, starting empty")
        os.replace(path, f"{path}.{why}")
        for suffix in ("-wal", "-shm", "-journal"):
            # A journal describes the old file; applied to the new one it would corrupt it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)


def _breakage(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    probe = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        application_id = probe.execute("PRAGMA application_id").fetchone()[0]
        tables = probe.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id not in (0, APPLICATION_ID) or (application_id == 0 and tables):
            return "foreign"
        check = probe.execute("PRAGMA quick_check(1)").fetchone()[0]
        return None if check == "ok" else "corrupt"
    except sqlite3.DatabaseError as error:
        if is_corruption(error):
            return "corrupt"
        raise
    finally:
        probe.close()


@dataclass
class SweepReport:
    """What :func:`sweep` found.

    :ivar removed: our leftover files deleted (unreferenced bodies, stale temporary files).
    :ivar foreign: paths of files that are not ours (never read, never deleted).
    """

    removed: int = 0
    foreign: list[str] = field(default_factory=list)


def sweep(directory: str, referenced: set[str], grace: float, now: float) -> SweepReport:
    """Remove our leftovers older than *grace* seconds; list the foreign files.

    :param referenced: the body names the index refers to.
    """
    report = SweepReport()
    for name in sorted(os.listdir(directory)):
        if name not in _OWN_TOP_LEVEL:
            report.foreign.append(os.path.join(directory, name))
    bodies = os.path.join(directory, BODIES)
    for folder in sorted(os.listdir(bodies)) if os.path.isdir(bodies) else ():
        folder_path = os.path.join(bodies, folder)
        if not _FAN_OUT.fullmatch(folder) or not os.path.isdir(folder_path):
            report.foreign.append(folder_path)
            continue
        for name in sorted(os.listdir(folder_path)):
            path = os.path.join(folder_path, name)
            ours = _BODY_NAME.fullmatch(name) or _TEMP_NAME.fullmatch(name)
            if not ours or not name.lstrip(".").startswith(folder) or not os.path.isfile(path):
                report.foreign.append(path)
                continue
            if _BODY_NAME.fullmatch(name) and name in referenced:
                continue
            try:
                old = now - os.stat(path).st_mtime > grace
                if old:
                    os.unlink(path)
                    report.removed += 1
            except FileNotFoundError:
                pass  # another process swept or stored it meanwhile
    return report

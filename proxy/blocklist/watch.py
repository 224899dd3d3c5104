"""Hot reload of ``blacklist.txt``: watchdog events in, new blocklist snapshots out.

Theory of operation
-------------------
Editors rarely write a file in place: most write a temporary file and rename it over
the old one, which replaces the inode a per-file watch was attached to.  So the
watcher observes the file's *folder* and keeps only events that name the file
(created, modified, closed, moved to or from it, deleted).

Two threads do the work, and neither touches proxy state:

* the watchdog observer thread turns events into a request: it notes the time and
  notifies a :class:`threading.Condition`;
* one worker thread sleeps on that condition (no polling, no busy loop).  When woken
  it waits for ``debounce`` seconds of quiet (never more than ``max(0.1, debounce)``
  after the first event), reads and parses the file, counts added and removed rules
  against the previous snapshot and calls ``deliver(blocklist, report)``.

``deliver`` runs on the worker thread; the proxy passes a function that forwards
the snapshot with ``reactor.call_soon_threadsafe``, so the swap is one reference
assignment on the loop.  A missing, unreadable or undecodable file keeps the last
good list, and that is delivered too, with a failed report (``ok=False``, its
``reason``): whoever shows the last reload must show the refusal,
not go on showing the success before it.  A save that leaves the bytes unchanged is
not delivered, except after :meth:`BlocklistWatcher.reload_now`.

Invalid lines are not a failure: they are skipped, counted in
``ReloadReport.rejected`` and listed in :attr:`ReloadReport.errors`.  They are
logged one by one, the first :data:`LOGGED_ERRORS` of them, each quoting at most a
short prefix of the line (:func:`excerpt`): the file is
written by people and scripts, and a 1 MB line or a million bad ones must not turn
every reload into megabytes of log.  If inotify cannot start (for example ``OSError``
for too many watches) the watcher falls back to watchdog's polling observer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from . import rules
from .rules import EMPTY, ParseError, parse

log = logging.getLogger("proxy.blocklist.watch")

POLL_INTERVAL = 0.1
"""Seconds between two scans of the folder when the polling observer is used."""

LOGGED_ERRORS = 20
"""Invalid lines logged one by one per reload; the rest are counted in one line."""

# No FileModifiedEvent: the kernel would wake the observer for every write to any file in the
# folder (an access log or a "2> proxy.log" beside the blocklist: once per request, measured
# at +170 to +300 us of CPU per request). An editor's save ends in a close after writing, a
# rename over the file, a creation or a deletion, which these four report.
_EVENTS = [FileCreatedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent]
# The polling observer compares snapshots and never sees a close: it reports a change as a
# modification (and it costs a scan per period, not a wake-up per write).
_POLLED_EVENTS = [*_EVENTS, FileModifiedEvent]


@dataclass(frozen=True)
class ReloadReport:
    """What one reload did.

    :ivar ok: ``True`` when the file was read and parsed into a new snapshot; ``False``
        when it was refused and the last good list is kept.
    :ivar rules: number of valid rules in the list now in force.
    :ivar added: rules present now but not before (compared in canonical form).
    :ivar removed: rules present before but not now.
    :ivar errors: the invalid lines that were skipped.
    :ivar message: one human-readable line, as logged.
    :ivar at: wall-clock time of the reload (:func:`time.time`).
    :ivar reason: why the reload was refused (``""`` when ``ok``), e.g.
        ``"the file is missing"`` or ``"line 3 is not UTF-8"``.
    :ivar rejected: lines the reload could not use: the invalid rules skipped, or, for a
        file refused as not UTF-8, the lines that do not decode.
    """

    ok: bool
    rules: int
    added: int
    removed: int
    errors: tuple[ParseError, ...]
    message: str
    at: float
    reason: str = ""
    rejected: int = 0


def excerpt(text: str, limit: int = 60) -> str:
    """``repr`` of *text*, cut after *limit* characters with the full length noted.

    What a log line quotes from a rule: a 1 MB line must not make a 1 MB log line.

    >>> excerpt("x" * 100, 5)
    "'xxxxx'... (100 characters)"
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class _Handler(FileSystemEventHandler):
    """Forward events that name the watched file to the watcher."""

    def __init__(self, path: str, notify: Callable[[], None]) -> None:
        """Call *notify* for events naming *path*."""
        self._path = os.path.normcase(path)
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        """Notify if the event's source or destination is the watched file."""
        paths = (event.src_path, event.dest_path)
        if any(p and os.path.normcase(os.fsdecode(p)) == self._path for p in paths):
            self._notify()


class BlocklistWatcher:
    """Watch one blocklist file and deliver a fresh blocklist on every change.

    Each is an immutable :class:`~proxy.blocklist.rules.Blocklist`.

    :param path: the blocklist file (its folder must exist).
    :param deliver: called as ``deliver(blocklist, report)`` *from the worker thread*.
    :param debounce: seconds of quiet to wait for after the last event of a burst.
    :param use_polling: use the polling observer even where inotify works.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        deliver: Callable[[rules.Blocklist, ReloadReport], None],
        *,
        debounce: float = 0.05,
        use_polling: bool = False,
    ) -> None:
        """Remember the settings; nothing is read or started before :meth:`start`."""
        self.path = os.path.abspath(os.fspath(path))
        self._deliver = deliver
        self._debounce = debounce
        self._max_delay = max(0.1, debounce)
        self._use_polling = use_polling
        self._cond = threading.Condition()
        self._first = self._last = 0.0  # monotonic times of the burst's events
        self._pending = self._forced = self._stopping = False
        self._current: rules.Blocklist = EMPTY
        self._keys: frozenset[str] = frozenset()
        self._digest: bytes | None = None  # hash of the bytes last parsed; None: missing
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None
        self.last_report: ReloadReport | None = None
        """The latest report, including failures (``ok=False``) that were not delivered."""

    @property
    def observer_kind(self) -> str:
        """``"inotify"`` (or the platform's native observer), ``"polling"`` or ``""``."""
        if self._observer is None:
            return ""
        return "polling" if isinstance(self._observer, PollingObserver) else "native"

    def start(self) -> rules.Blocklist:
        """Load the file now, start the observer and worker threads, return the list.

        A missing or unreadable file gives :data:`~proxy.blocklist.rules.EMPTY` and a warning.

        :raises OSError: if the folder cannot be watched at all.
        """
        self._observer = self._start_observer()  # first, so no save can slip between
        self._load(forced=True, initial=True)
        self._worker = threading.Thread(target=self._run, name="blocklist-reload", daemon=True)
        self._worker.start()
        return self._current

    def _start_observer(self) -> BaseObserver:
        """Start the native observer on the folder, or the polling one as a fallback."""
        handler = _Handler(self.path, self._request)
        folder = os.path.dirname(self.path)
        if not self._use_polling:
            observer = Observer()
            try:
                observer.schedule(handler, folder, recursive=False, event_filter=_EVENTS)
                observer.start()
                return observer
            except OSError as exc:
                log.warning("cannot start the native file observer (%s); polling instead", exc)
                try:
                    observer.stop()
                except Exception:  # a half-started observer may refuse to stop
                    pass
        observer = PollingObserver(timeout=POLL_INTERVAL)
        observer.schedule(handler, folder, recursive=False, event_filter=_POLLED_EVENTS)
        observer.start()
        return observer

    def reload_now(self) -> None:
        """Ask for a reload (thread-safe, e.g. from a SIGHUP handler); returns at once.

        The file is read and parsed on the worker thread, and the result is delivered
        even if the file did not change.
        """
        self._request(forced=True)

    def _request(self, forced: bool = False) -> None:
        """Record that the file may have changed and wake the worker."""
        now = time.monotonic()
        with self._cond:
            if not self._pending:
                self._first = now
            self._pending = True
            self._last = now - self._debounce if forced else now
            self._forced = self._forced or forced
            self._cond.notify()

    def stop(self) -> None:
        """Stop the observer and the worker thread and join them (at most ~2 s each)."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=2.0)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=2.0)

    def _run(self) -> None:
        """Worker loop: sleep until asked, debounce the burst, then reload."""
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                while not self._stopping:
                    due = min(self._last + self._debounce, self._first + self._max_delay)
                    delay = due - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._stopping:
                    return
                forced, self._pending, self._forced = self._forced, False, False
            try:
                self._load(forced=forced)
            except Exception:  # never let one bad reload kill the watcher
                log.exception("blocklist reload failed")

    def _fail(self, reason: str, *, initial: bool, rejected: int = 0) -> None:
        """Keep the last good list, log and record a failed report, and deliver it."""
        kept = len(self._current)
        message = f"blocklist {self.path} refused: {reason}; keeping the last good list"
        message += f" ({kept} rules)"
        log.warning("%s", message)
        report = ReloadReport(
            False, kept, 0, 0, (), message, time.time(), reason=reason, rejected=rejected
        )
        self.last_report = report
        if not initial:
            self._deliver(self._current, report)

    def _load(self, *, forced: bool, initial: bool = False) -> None:
        """Read, parse and (unless *initial*) deliver the file; keep the old list on error."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if self._digest is not None or initial or forced:
                self._fail("the file is missing", initial=initial)
            self._digest = None
            return
        except OSError as exc:
            return self._fail(f"cannot read the file: {exc.strerror or exc}", initial=initial)
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self._digest and not forced:
            return
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self._digest = digest  # the same bad bytes saved again are not news
            return self._fail(
                _not_utf8_reason(data, exc), initial=initial, rejected=_undecodable_lines(data)
            )
        new = parse(text)
        self._log_errors(new.errors)
        old_keys, new_keys = self._keys, new.keys()
        added, removed = len(new_keys - old_keys), len(old_keys - new_keys)
        message = f"blocklist reloaded: rules: {len(new)}, +{added}, -{removed}"
        if initial:
            message = f"blocklist loaded: rules: {len(new)}"
        if new.errors:
            message += f", {len(new.errors)} invalid lines skipped"
        log.info("%s", message)
        rejected = len(new.errors)
        at = time.time()
        report = ReloadReport(True, len(new), added, removed, new.errors, message, at, "", rejected)
        self._current, self._keys, self._digest, self.last_report = new, new_keys, digest, report
        if not initial:
            self._deliver(new, report)

    def _log_errors(self, errors: tuple[ParseError, ...]) -> None:
        for err in errors[:LOGGED_ERRORS]:
            log.warning(
                "%s:%d: invalid rule %s skipped: %s",
                self.path,
                err.line,
                excerpt(err.text),
                err.message,
            )
        if len(errors) > LOGGED_ERRORS:
            log.warning(
                "%s: %d more invalid rules skipped (python -m proxy.blocklist list shows them)",
                self.path,
                len(errors) - LOGGED_ERRORS,
            )


def _not_utf8_reason(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where the first undecodable byte is, as a person editing the file would look for it."""
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"line {line} is not UTF-8 (byte 0x{data[exc.start]:02x} at column {column})"


def _undecodable_lines(data: bytes) -> int:
    count = 0
    for line in data.split(b"\n"):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            count += 1
    return count

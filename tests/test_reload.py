"""Tests of BlocklistWatcher: real watchdog observers on a temporary folder.

Every wait is on a queue with a generous timeout; nothing sleeps a fixed time
except where the test checks that nothing arrives.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path

import pytest

from proxy.blocklist import EMPTY, Blocklist, watch
from proxy.blocklist.watch import BlocklistWatcher, ReloadReport

TIMEOUT = 10.0
Delivered = tuple[Blocklist, ReloadReport]


def save_by_rename(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".swp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture(params=[False, True], ids=["native", "polling"])
def setup(request: pytest.FixtureRequest, tmp_path: Path):
    path = tmp_path / "blacklist.txt"
    path.write_text("example.com\n")
    got: queue.Queue[Delivered] = queue.Queue()
    watcher = BlocklistWatcher(path, lambda bl, rep: got.put((bl, rep)), use_polling=request.param)
    initial = watcher.start()
    yield path, watcher, got, initial
    watcher.stop()


def test_initial_load(setup) -> None:
    path, watcher, got, initial = setup
    assert [r.text for r in initial.rules] == ["example.com"]
    assert watcher.observer_kind in ("native", "polling")
    assert got.empty()


def test_modify_in_place(setup) -> None:
    path, watcher, got, _ = setup
    started = time.monotonic()
    path.write_text("example.com\nnew.org\n")
    bl, rep = got.get(timeout=TIMEOUT)
    assert time.monotonic() - started < 5.0
    assert bl.match("new.org") is not None
    assert (rep.ok, rep.rules, rep.added, rep.removed) == (True, 2, 1, 0)
    assert rep.message == "blocklist reloaded: rules: 2, +1, -0"


def test_rename_save_then_delete_then_recreate(setup, caplog: pytest.LogCaptureFixture) -> None:
    path, watcher, got, _ = setup
    caplog.set_level(logging.INFO, logger="proxy.blocklist.watch")
    save_by_rename(path, "other.org\n")
    bl, rep = got.get(timeout=TIMEOUT)
    assert [r.text for r in bl.rules] == ["other.org"]
    assert (rep.added, rep.removed) == (1, 1)

    path.unlink()
    kept, failed = got.get(timeout=TIMEOUT)
    assert kept is bl  # the last good list stays in force, and the refusal is delivered
    assert not failed.ok and failed.reason == "the file is missing" and failed.rules == 1
    assert "refused: the file is missing" in failed.message
    warning = next(r for r in caplog.records if "missing" in r.getMessage())
    assert warning.levelno == logging.WARNING
    assert watcher.last_report is failed

    path.write_text("other.org\n")  # same content as before: still delivered
    bl, rep = got.get(timeout=TIMEOUT)
    assert [r.text for r in bl.rules] == ["other.org"] and (rep.added, rep.removed) == (0, 0)


def test_invalid_lines_are_reported_not_fatal(setup, caplog: pytest.LogCaptureFixture) -> None:
    path, watcher, got, _ = setup
    caplog.set_level(logging.WARNING, logger="proxy.blocklist.watch")
    save_by_rename(path, "good.org\nexa mple.com\n*.\n")
    bl, rep = got.get(timeout=TIMEOUT)
    assert rep.ok and rep.rules == 1 and [e.line for e in rep.errors] == [2, 3]
    lines = [r.getMessage() for r in caplog.records if "invalid rule" in r.getMessage()]
    assert len(lines) == 2 and ":2: invalid rule 'exa mple.com'" in lines[0]


def test_undecodable_file_keeps_last_list(setup, caplog: pytest.LogCaptureFixture) -> None:
    path, watcher, got, initial = setup
    tmp = path.with_name(path.name + ".swp")
    tmp.write_bytes(b"good.org\nb\xe9d.org\n\xff\xfe bad\nfine.org\n")
    os.replace(tmp, path)
    kept, failed = got.get(timeout=TIMEOUT)
    assert kept is initial
    assert (failed.ok, failed.rules, failed.rejected) == (False, 1, 2)
    assert failed.reason == "line 2 is not UTF-8 (byte 0xe9 at column 2)"
    assert any("not UTF-8" in r.getMessage() for r in caplog.records)
    save_by_rename(path, "fixed.org\n")
    bl, rep = got.get(timeout=TIMEOUT)
    assert bl.match("fixed.org") is not None and rep.ok and rep.reason == ""


def test_reload_now_delivers_even_unchanged(setup) -> None:
    path, watcher, got, _ = setup
    watcher.reload_now()
    bl, rep = got.get(timeout=TIMEOUT)
    assert (rep.rules, rep.added, rep.removed) == (1, 0, 0)


def test_other_files_ignored(setup) -> None:
    path, watcher, got, _ = setup
    (path.parent / "unrelated.txt").write_text("x\n")
    watcher.reload_now()  # a marker: the next delivery must be this one
    _, rep = got.get(timeout=TIMEOUT)
    assert rep.added == 0
    path.write_text("marker.org\n")
    bl, _ = got.get(timeout=TIMEOUT)
    assert bl.match("marker.org") is not None


def test_missing_file_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    got: queue.Queue[Delivered] = queue.Queue()
    watcher = BlocklistWatcher(tmp_path / "none.txt", lambda bl, rep: got.put((bl, rep)))
    with caplog.at_level(logging.WARNING, logger="proxy.blocklist.watch"):
        assert watcher.start() is EMPTY
    try:
        assert any("missing" in r.getMessage() for r in caplog.records)
        (tmp_path / "none.txt").write_text("late.org\n")
        bl, _ = got.get(timeout=TIMEOUT)
        assert bl.match("late.org") is not None
    finally:
        watcher.stop()


def test_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(watch.Observer):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(watch, "Observer", Broken)
    path = tmp_path / "b.txt"
    path.write_text("a.org\n")
    got: queue.Queue[Delivered] = queue.Queue()
    watcher = BlocklistWatcher(path, lambda bl, rep: got.put((bl, rep)))
    with caplog.at_level(logging.WARNING, logger="proxy.blocklist.watch"):
        watcher.start()
    try:
        assert watcher.observer_kind == "polling"
        assert any("polling instead" in r.getMessage() for r in caplog.records)
        save_by_rename(path, "b.org\n")
        bl, _ = got.get(timeout=TIMEOUT)
        assert bl.match("b.org") is not None
    finally:
        watcher.stop()


def test_burst_is_debounced(tmp_path: Path) -> None:
    """Five saves in a burst become at most one delivery per max(0.1, debounce) window, and
    the last one carries the final content."""
    path = tmp_path / "b.txt"
    path.write_text("a.org\n")
    got: queue.Queue[Delivered] = queue.Queue()
    watcher = BlocklistWatcher(path, lambda bl, rep: got.put((bl, rep)), debounce=0.5)
    watcher.start()
    try:
        started = time.monotonic()
        for i in range(5):
            save_by_rename(path, f"a.org\nn{i}.org\n")
        burst = time.monotonic() - started
        deliveries = [got.get(timeout=TIMEOUT)]
        while deliveries[-1][0].match("n4.org") is None:
            deliveries.append(got.get(timeout=TIMEOUT))
        with pytest.raises(queue.Empty):  # nothing more comes once the final list is in
            deliveries.append(got.get(timeout=1.5))
    finally:
        watcher.stop()
    # Each window of max(0.1, debounce) = 0.5 s delivers at most once; a burst that took less
    # than one window (the usual case: milliseconds) comes as one or two deliveries, not five.
    windows = 1 + int(burst / 0.5)
    assert len(deliveries) <= windows + 1, (len(deliveries), burst)
    assert all(bl.match("a.org") is not None for bl, _ in deliveries)


def test_stop_joins_threads(tmp_path: Path) -> None:
    watcher = BlocklistWatcher(tmp_path / "b.txt", lambda bl, rep: None)
    watcher.start()
    watcher.stop()
    assert watcher._worker is not None and not watcher._worker.is_alive()
    watcher.stop()  # idempotent


def test_a_huge_invalid_line_is_logged_as_a_short_prefix(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    path, watcher, got, _ = setup
    caplog.set_level(logging.WARNING, logger="proxy.blocklist.watch")
    huge = "x" * 1_000_000 + " y"  # whitespace: invalid
    ipv6ish = "::" + "1" * 500_000  # an error message that would quote the whole line
    save_by_rename(path, f"good.org\n{huge}\n{ipv6ish}\n")
    bl, rep = got.get(timeout=TIMEOUT)
    assert rep.ok and rep.rules == 1 and rep.rejected == 2
    assert "2 invalid lines skipped" in rep.message
    logged = [r.getMessage() for r in caplog.records]
    assert max(len(line) for line in logged) < 600, max(len(line) for line in logged)
    assert any(
        ":2: invalid rule 'xxxx" in line and "(1000002 characters)" in line for line in logged
    )
    assert all(len(err.message) <= 160 for err in rep.errors)


def test_many_invalid_lines_are_counted_not_all_logged(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    path, watcher, got, _ = setup
    caplog.set_level(logging.WARNING, logger="proxy.blocklist.watch")
    save_by_rename(path, "".join(f"bad rule {i}\n" for i in range(500)))
    _bl, rep = got.get(timeout=TIMEOUT)
    assert rep.rejected == 500 and len(rep.errors) == 500
    invalid = [r.getMessage() for r in caplog.records if "invalid rule" in r.getMessage()]
    assert len(invalid) == watch.LOGGED_ERRORS + 1
    assert "480 more invalid rules skipped" in invalid[-1]


def test_a_log_written_beside_the_blocklist_does_not_wake_the_watcher(tmp_path, monkeypatch):
    """An access log (or "2> proxy.log") in the blocklist's folder is written once per
    request: the native observer must not be woken by those writes at all."""
    woken_by: list[str] = []
    original = watch._Handler.on_any_event

    def recording(self, event):  # noqa: ANN001, ANN202
        woken_by.append(os.path.basename(event.src_path))
        original(self, event)

    monkeypatch.setattr(watch._Handler, "on_any_event", recording)
    path = tmp_path / "blacklist.txt"
    path.write_text("example.com\n")
    log_path = tmp_path / "proxy.log"
    with open(log_path, "a") as log_file:  # created before the watcher starts
        got: queue.Queue[Delivered] = queue.Queue()
        watcher = BlocklistWatcher(path, lambda bl, rep: got.put((bl, rep)))
        watcher.start()
        try:
            assert watcher.observer_kind == "native"
            for number in range(200):
                log_file.write(f"request {number}\n")
                log_file.flush()
            # The observer reports in order: once the blocklist's save is delivered, any
            # event for the log's writes has been seen already.
            save_by_rename(path, "example.com\nnew.example\n")
            bl, _ = got.get(timeout=TIMEOUT)
            assert bl.match("new.example") is not None
            assert "proxy.log" not in woken_by, woken_by
        finally:
            watcher.stop()

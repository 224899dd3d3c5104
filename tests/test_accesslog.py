"""The access log: the three formats line for line, and the buffered writer (ticks, close,
errors, reopen after a rename, pipes, several processes appending to one file)."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from minireactor import Reactor
from proxy.accesslog import (
    FORMATS,
    JSON_FIELDS,
    PIPE_BUF,
    AccessLog,
    AccessRecord,
    FdSink,
    combined_line,
    json_line,
    open_access_log,
    squid_line,
)

RECORD = AccessRecord(
    at=1_700_000_000.123456,
    duration=0.0125,
    client_ip="127.0.0.1",
    client_port=53412,
    method="GET",
    url="http://example.com/index.html?q=1",
    status=200,
    bytes_sent=1520,
    bytes_received=87,
    result="TCP_MISS",
    user="alice",
    hierarchy="HIER_DIRECT",
    peer="93.184.216.34",
    content_type="text/html",
    referer="http://example.com/",
    user_agent="curl/8.5.0",
)

# The grok pattern log shippers use for Squid's native format (one field per token).
SQUID_NATIVE = re.compile(
    r"\s*(?P<ts>\d+\.\d{3})\s+(?P<elapsed>\d+) (?P<client>\S+) (?P<code>[A-Z_]+)/(?P<status>\d{3}) "
    r"(?P<bytes>\d+) (?P<method>\S+) (?P<url>\S+) (?P<user>\S+) (?P<hier>[A-Z_]+)/(?P<peer>\S+) "
    r"(?P<type>\S+)\n"
)
# Apache's combined format as log analysers read it.
COMBINED = re.compile(
    r"(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>(?:[^"\\]|\\.)*)" '
    r'"(?P<agent>(?:[^"\\]|\\.)*)"\n'
)


@pytest.fixture
def utc(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- formats ---------------------------------------------------------------------------------


def test_squid_native_line():
    assert squid_line(RECORD) == (
        "1700000000.123     12 127.0.0.1 TCP_MISS/200 1520 GET "
        "http://example.com/index.html?q=1 alice HIER_DIRECT/93.184.216.34 text/html\n"
    )
    assert SQUID_NATIVE.fullmatch(squid_line(RECORD))


def test_squid_line_with_nothing_known():
    bare = AccessRecord(at=5.0, duration=0.0, client_ip="::1", client_port=1, method="-",
                        url="-", status=0, bytes_sent=0)  # fmt: skip
    assert squid_line(bare) == "        5.000      0 ::1 NONE/000 0 - - - HIER_NONE/- -\n"
    assert SQUID_NATIVE.fullmatch(squid_line(bare))


def test_squid_fields_cannot_split_or_break_the_line():
    odd = RECORD._replace(
        url="http://x/a b\nc", user="bob smith", content_type="text/html; charset=utf-8",
        method="G\tET", peer="é",
    )  # fmt: skip
    line = squid_line(odd)
    assert line.count("\n") == 1
    match = SQUID_NATIVE.fullmatch(line)
    assert match, line
    assert match["url"] == "http://x/a%20b%0Ac"
    assert match["user"] == "bob%20smith"
    assert match["type"] == "text/html;%20charset=utf-8"
    assert match["method"] == "G%09ET"
    assert match["peer"] == "%C3%A9"


def test_combined_line(utc):
    assert combined_line(RECORD) == (
        # %t is when the request arrived: 12.5 ms before the end, the same second here.
        '127.0.0.1 - alice [14/Nov/2023:22:13:20 +0000] "GET http://example.com/index.html?q=1 '
        'HTTP/1.1" 200 1520 "http://example.com/" "curl/8.5.0"\n'
    )
    assert COMBINED.fullmatch(combined_line(RECORD))


def test_combined_time_is_local_with_offset(monkeypatch):
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        line = combined_line(RECORD._replace(at=1_700_000_000.0, duration=1.5))
        assert "[14/Nov/2023:17:13:18 -0500]" in line
    finally:
        monkeypatch.undo()
        time.tzset()


def test_combined_escapes_quotes_and_controls(utc):
    odd = RECORD._replace(user=None, bytes_sent=0, user_agent='say "hi"\\\n', referer=None)
    line = combined_line(odd)
    match = COMBINED.fullmatch(line)
    assert match, line
    assert match["user"] == "-" and match["size"] == "-" and match["referer"] == "-"
    assert match["agent"] == 'say \\"hi\\"\\\\\\x0a'


def test_combined_without_a_request_line(utc):
    line = combined_line(RECORD._replace(method="-", url="-", http_version="-"))
    assert '"-"' in line and COMBINED.fullmatch(line)


def test_json_line_has_every_documented_field():
    line = json_line(RECORD)
    assert line.endswith("}\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert tuple(doc) == JSON_FIELDS
    assert doc["time"] == "2023-11-14T22:13:20.123Z"
    assert doc["ts"] == 1700000000.123
    assert doc["duration_ms"] == 12.5
    assert doc["client"] == "127.0.0.1" and doc["client_port"] == 53412
    assert doc["status"] == 200 and doc["result"] == "TCP_MISS"
    assert doc["bytes_sent"] == 1520 and doc["bytes_received"] == 87
    assert doc["peer"] == "93.184.216.34" and doc["user_agent"] == "curl/8.5.0"


def test_json_keeps_odd_text_exact_on_one_line():
    doc = json.loads(json_line(RECORD._replace(url="http://x/\n\u2028é", user=None)))
    assert doc["url"] == "http://x/\n\u2028é" and doc["user"] is None


def test_every_format_ends_each_line_with_one_newline():
    for name, formatter in FORMATS.items():
        assert formatter(RECORD).endswith("\n") and formatter(RECORD).count("\n") == 1, name


# -- the writer ---------------------------------------------------------------------------------


class Ticks:
    """A scheduler whose ticks the test runs by hand."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> object:
        self.ready.append(lambda: callback(*args))
        return None

    def tick(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


class MemorySink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.failing: OSError | None = None
        self.closed = False
        self.reopened = 0

    def write(self, data: bytes) -> None:
        if self.failing is not None:
            raise self.failing
        self.writes.append(data)

    def reopen(self) -> None:
        self.reopened += 1

    def close(self) -> None:
        self.closed = True


def test_lines_of_one_tick_go_out_in_one_write():
    ticks, sink = Ticks(), MemorySink()
    access = AccessLog(sink, squid_line, ticks)
    for i in range(3):
        access.log(RECORD._replace(status=200 + i))
    assert len(ticks.ready) == 1  # one flush scheduled for the tick, not one per line
    assert sink.writes == []
    ticks.tick()
    assert len(sink.writes) == 1
    assert sink.writes[0].decode().count("\n") == 3
    assert "TCP_MISS/202" in sink.writes[0].decode()
    access.log(RECORD)
    ticks.tick()
    assert len(sink.writes) == 2 and access.written == 4


def test_a_long_burst_flushes_early():
    ticks, sink = Ticks(), MemorySink()
    access = AccessLog(sink, squid_line, ticks, max_buffered=10)
    for _ in range(25):
        access.log(RECORD)
    assert [w.count(b"\n") for w in sink.writes] == [10, 10]
    ticks.tick()
    assert sum(w.count(b"\n") for w in sink.writes) == 25


def test_close_flushes_and_later_lines_are_counted_as_dropped(caplog):
    ticks, sink = Ticks(), MemorySink()
    access = AccessLog(sink, squid_line, ticks)
    access.log(RECORD)
    access.close()  # before the tick's flush ran: the line still gets out
    assert sink.closed and len(sink.writes) == 1
    with caplog.at_level(logging.WARNING, logger="proxy"):
        access.log(RECORD)
    assert access.dropped == 1 and "closed" in caplog.text
    ticks.tick()
    assert len(sink.writes) == 1


def test_write_errors_drop_lines_and_warn_once(caplog):
    ticks, sink = Ticks(), MemorySink()
    access = AccessLog(sink, squid_line, ticks)
    sink.failing = OSError(28, "No space left on device")
    with caplog.at_level(logging.WARNING, logger="proxy"):
        for _ in range(3):
            access.log(RECORD)
            ticks.tick()
        assert access.dropped == 3
        assert caplog.text.count("cannot write (No space left on device)") == 1
        sink.failing = None
        access.log(RECORD)
        ticks.tick()
    assert access.written == 1
    assert "writing again (3 line(s) were lost)" in caplog.text


def test_the_reactor_flushes_at_the_end_of_the_tick(tmp_path, reactor: Reactor):
    path = tmp_path / "access.log"
    access = open_access_log(str(path), "squid", reactor)
    assert access is not None
    reactor.call_soon(access.log, RECORD)
    reactor.run_once(timeout=0)  # the callback runs and schedules the flush
    reactor.run_once(timeout=0)
    assert path.read_text() == squid_line(RECORD)
    access.close()


def test_open_access_log_destinations(tmp_path):
    ticks = Ticks()
    assert open_access_log("none", "json", ticks) is None
    with pytest.raises(KeyError):
        open_access_log("none", "xml", ticks)
    with pytest.raises(OSError):
        open_access_log(str(tmp_path / "no" / "such" / "access.log"), "squid", ticks)
    path = tmp_path / "access.log"
    access = open_access_log(str(path), "squid", ticks)
    assert access is not None
    assert oct(path.stat().st_mode & 0o777) in (oct(0o640 & ~_umask()), oct(0o640))
    access.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_reopen_after_a_rename_writes_the_new_file(tmp_path):
    ticks = Ticks()
    path = tmp_path / "access.log"
    access = open_access_log(str(path), "squid", ticks)
    assert access is not None
    access.log(RECORD._replace(status=201))
    ticks.tick()
    path.rename(tmp_path / "access.log.1")  # what logrotate does
    access.log(RECORD._replace(status=202))  # still buffered when the signal comes
    access.reopen()
    access.log(RECORD._replace(status=203))
    ticks.tick()
    access.close()
    old = (tmp_path / "access.log.1").read_text()
    assert "TCP_MISS/201" in old and "TCP_MISS/202" in old
    assert path.read_text() == squid_line(RECORD._replace(status=203))


def test_a_failed_reopen_keeps_the_old_file(tmp_path, caplog):
    ticks = Ticks()
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "access.log"
    access = open_access_log(str(path), "squid", ticks)
    assert access is not None
    path.rename(tmp_path / "moved.log")
    folder.rmdir()  # the path cannot be opened again
    with caplog.at_level(logging.WARNING, logger="proxy"):
        access.reopen()
    assert "cannot reopen" in caplog.text
    access.log(RECORD)
    access.close()
    assert (tmp_path / "moved.log").read_text() == squid_line(RECORD)


class RecordingSink(FdSink):
    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.pieces: list[bytes] = []

    def _write_all(self, data: bytes) -> None:
        self.pieces.append(bytes(data))
        super()._write_all(data)


def test_a_pipe_gets_line_aligned_pieces_of_at_most_pipe_buf():
    read_end, write_end = os.pipe()
    try:
        sink = RecordingSink(write_end)
        lines = [f"{i:05d} {'x' * (i % 97)}\n".encode() for i in range(200)]
        long_line = b"L" * (PIPE_BUF * 2) + b"\n"
        data = b"".join(lines[:100]) + long_line + b"".join(lines[100:])
        assert len(data) < 60000  # fits in the pipe: nobody needs to read concurrently
        sink.write(data)
        os.close(write_end)
        write_end = -1
        received = b""
        while chunk := os.read(read_end, 65536):
            received += chunk
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert received == data
    assert all(piece.endswith(b"\n") for piece in sink.pieces)
    assert [p for p in sink.pieces if len(p) > PIPE_BUF] == [long_line]


def test_worker_processes_appending_to_one_file_never_split_a_line(tmp_path):
    path = tmp_path / "access.log"
    writers, batches, per_batch = 3, 40, 50
    children = []
    for worker in range(writers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ticks = Ticks()
                access = open_access_log(str(path), "squid", ticks)
                assert access is not None
                for batch in range(batches):
                    for i in range(per_batch):
                        access.log(RECORD._replace(url=f"http://w{worker}/{batch}/{i}"))
                    ticks.tick()
                access.close()
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == writers * batches * per_batch
    assert all(SQUID_NATIVE.fullmatch(line) for line in lines)
    for worker in range(writers):
        mine = [line.split()[6] for line in lines if f"//w{worker}/" in line]
        expected = [f"http://w{worker}/{b}/{i}" for b in range(batches) for i in range(per_batch)]
        assert mine == expected  # each worker's lines whole and in order


def test_stream_sinks_are_not_closed(tmp_path):
    read_end, write_end = os.pipe()
    try:
        sink = FdSink(write_end)
        sink.reopen()
        sink.close()
        sink.write(b"still open\n")
        assert os.read(read_end, 100) == b"still open\n"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_named_tuple_records_are_immutable():
    with pytest.raises(AttributeError):
        RECORD.status = 500  # type: ignore[misc]


def test_a_plain_squid_line_takes_the_fast_path(monkeypatch):
    """No field needs escaping: the line is built without the per-field escaping helper."""
    from proxy import accesslog

    def escaping(_text):  # noqa: ANN001, ANN202
        raise AssertionError("the escaping path ran for a plain record")

    monkeypatch.setattr(accesslog, "_token", escaping)
    record = accesslog.AccessRecord(
        1.0, 0.1, "127.0.0.1", 5, "GET", "http://x/", 200, 10, result="TCP_HIT",
        content_type="text/plain",
    )  # fmt: skip
    assert accesslog.squid_line(record).endswith(" HIER_NONE/- text/plain\n")


def test_only_the_formats_that_show_them_need_the_request_fields():
    from proxy.accesslog import FORMATS, AccessLog

    class Nowhere:
        def write(self, data: bytes) -> None: ...
        def reopen(self) -> None: ...
        def close(self) -> None: ...

    wants = {
        name: AccessLog(Nowhere(), f, scheduler=None).wants_request_fields  # type: ignore[arg-type]
        for name, f in FORMATS.items()
    }
    assert wants == {"squid": False, "combined": True, "json": True}


def test_the_last_lines_are_written_even_if_the_metrics_publisher_fails_at_stop():
    """A clean stop loses no line (issue 19), whatever the steps before the log's close do."""
    from minireactor import StaticResolver
    from proxy.app import ProxyServer
    from proxy.config import Config
    from proxy.sharedmetrics import SharedMetrics

    reactor = Reactor()
    sink = MemorySink()
    server = ProxyServer(
        Config(host="127.0.0.1", port=0, watch_blacklist=False),
        reactor=reactor,
        resolver=StaticResolver(reactor, {}),
        access_sink=sink,
        shared_metrics=SharedMetrics(1),
        worker=0,
    )
    server.start()
    assert server.access_log is not None and server._publisher is not None

    def outgrown() -> None:
        raise ValueError("snapshot larger than its slot")

    server._publisher.stop = outgrown  # type: ignore[method-assign]
    server.access_log.log(RECORD)  # buffered until the tick ends, or the close
    with pytest.raises(ValueError, match="slot"):
        server._release()
    assert b"".join(sink.writes) == squid_line(RECORD).encode()
    assert sink.closed
    assert server.server is not None and server.server.sock.fileno() == -1  # later steps ran
    reactor.close()


def test_written_and_dropped_lines_reach_the_metrics():
    """The one loss the log accepts (a full disk, a closed pipe) must be visible to an alert."""
    from minireactor import StaticResolver
    from proxy.app import ProxyServer
    from proxy.config import Config

    reactor = Reactor()
    sink = MemorySink()
    server = ProxyServer(
        Config(host="127.0.0.1", port=0, watch_blacklist=False),
        reactor=reactor,
        resolver=StaticResolver(reactor, {}),
        access_sink=sink,
    )
    server.start()
    try:
        assert server.access_log is not None
        server.access_log.log(RECORD)
        server.access_log.flush()
        sink.failing = OSError(28, "No space left on device")
        server.access_log.log(RECORD)
        server.access_log.log(RECORD)
        server.access_log.flush()
        snapshot = server.metrics_snapshot()
        assert (snapshot.access_log_written, snapshot.access_log_dropped) == (1, 2)
        assert 'proxy_access_log_lines_total{outcome="dropped"} 2' in server.metrics_text()
    finally:
        server._release()
        reactor.close()

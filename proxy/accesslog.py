"""The access log: one preformatted line per finished request, written once per reactor tick.

Theory of operation
-------------------
An access log is written on the hot path, once per request, so it must cost little more than
building one string. Python's :mod:`logging` costs several times that: a ``LogRecord`` with a
dozen attributes, a level check per handler, a lock, a formatter, and one ``write`` plus one
``flush`` system call per line. This module does none of that:

1. The session fills an :class:`AccessRecord` (a named tuple: built in one C call, immutable)
   when a request ends.
2. :meth:`AccessLog.log` turns it into text at once with the chosen format function
   (:data:`FORMATS`: ``squid``, ``combined``, ``json``) and appends the line to a list.
3. The first line of a tick schedules one ``call_soon(flush)``; the flush joins the list and
   hands all its lines to the :class:`Sink` in a single ``write``. Under load a tick finishes
   many requests, so the system calls are shared among them; an idle proxy still writes each
   line within one tick of its request. A burst longer than ``max_buffered`` lines flushes early,
   so memory stays bounded.
4. :meth:`AccessLog.close` flushes what is buffered, so a clean stop loses no line;
   :meth:`AccessLog.reopen` flushes into the old file and then opens the path again, which is
   what ``logrotate`` needs after renaming the file (the proxy calls it on ``SIGUSR1``).

Sinks write raw bytes to a file descriptor. A regular file is opened with ``O_APPEND``, so the
writes of several worker processes sharing one file land whole, one after another. A pipe
(stdout or stderr under systemd or a shell) only promises that for writes of at most
``PIPE_BUF`` bytes, so a pipe sink cuts its data at line ends into pieces no larger than that.
Writes are blocking, like Squid's and nginx's: a local file or a pipe drained by a journal
accepts them at memory speed; a write error is reported once, and the lines are counted as
dropped rather than raised into the session that finished the request.

Every field that may hold text from the network (URL, user, header values) is escaped so a line
stays one line with a fixed number of fields: ``squid`` percent-encodes bytes outside printable
ASCII and the space, ``combined`` uses Apache's ``\\xhh`` escapes inside its quoted fields, and
``json`` is JSON.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, NamedTuple, Protocol

log = logging.getLogger("proxy")

PIPE_BUF = getattr(select, "PIPE_BUF", 512)
"""Largest write a pipe delivers in one piece even with several writers (POSIX: 512 or more)."""


class AccessRecord(NamedTuple):
    """Everything the three formats need about one finished request."""

    at: float
    """When the request finished (seconds since the epoch): the line's time stamp."""
    duration: float
    """Seconds from the complete request head to the end of the response or tunnel."""
    client_ip: str
    """The client's address (IPv6 unbracketed); ``-`` if unknown."""
    client_port: int
    """The client's port; 0 if unknown."""
    method: str
    """The request method; ``-`` when no request head was read."""
    url: str
    """The effective URL; ``host:port`` for ``CONNECT``."""
    status: int
    """The status sent to the client; 0 when nothing was sent."""
    bytes_sent: int
    """Bytes written to the client for this request, response head included."""
    bytes_received: int = 0
    """Bytes read from the client for this request, request head included."""
    result: str = "NONE"
    """How it was served, in Squid's words: ``TCP_MISS``, ``TCP_HIT``, ``TCP_TUNNEL``..."""
    http_version: str = "HTTP/1.1"
    """The request's protocol version as it appeared in the request line; ``-`` if none."""
    user: str | None = None
    """The user name that authenticated with Basic proxy authentication, if any."""
    hierarchy: str = "HIER_NONE"
    """How the upstream was chosen: ``HIER_NONE``, ``HIER_DIRECT`` or ``FIRSTUP_PARENT``."""
    peer: str | None = None
    """Host of the origin or parent proxy the request went to, as the request or ``--parent``
    names it (a name, or an IP literal), if any: not the address it resolved to."""
    content_type: str | None = None
    """The response's ``Content-Type``, if any."""
    referer: str | None = None
    """The request's ``Referer``, if any."""
    user_agent: str | None = None
    """The request's ``User-Agent``, if any."""


# -- escaping ---------------------------------------------------------------------------------


def _plain(text: str) -> bool:
    """Whether *text* is printable ASCII without spaces (the common case, checked in C)."""
    return text.isascii() and text.isprintable() and " " not in text


def _token(text: str | None) -> str:
    """*text* as one space-free field: ``-`` for nothing, bytes outside ``!``..``~`` as ``%XX``."""
    if not text:
        return "-"
    if _plain(text):
        return text
    return "".join(c if "!" <= c <= "~" else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _quoted(text: str | None) -> str:
    """*text* for inside Apache's double quotes: ``\\"``, ``\\\\`` and ``\\xhh`` escapes."""
    if not text:
        return "-"
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.extend(f"\\x{b:02x}" for b in c.encode())
    return "".join(out)


# -- formats --------------------------------------------------------------------------------


def squid_line(r: AccessRecord) -> str:
    """Squid's native ``logformat squid``.

    ``%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt``: end time, milliseconds
    taken, client, result/status, bytes sent, method, URL, user, hierarchy/peer, content type.
    Unlike Squid's ``%<a``, the peer is the upstream's host as named (the origin's host from
    the request, the parent's from ``--parent``), not the address it resolved to.
    """
    # %-formatting: about twice as fast as an f-string with format specs, and %d truncates
    # floats as Squid's integer arithmetic does.
    at = r.at
    seconds = int(at)
    head = "%9d.%03d %6d " % (seconds, (at - seconds) * 1000, r.duration * 1000)  # noqa: UP031
    rest = "%s %s/%03d %d %s %s %s %s/%s %s" % (  # noqa: UP031
        r.client_ip,
        r.result,
        r.status,
        r.bytes_sent,
        r.method,
        r.url,
        r.user or "-",
        r.hierarchy,
        r.peer or "-",
        r.content_type or "-",
    )
    # The common case checked in three C calls: no field added a space, a control character
    # or a non-ASCII one (empty fields already read "-").
    if rest.count(" ") == 7 and rest.isascii() and rest.isprintable() and r.method and r.url:
        return head + rest + "\n"
    return head + (
        f"{_token(r.client_ip)} {r.result}/{r.status:03d} {r.bytes_sent} {_token(r.method)} "
        f"{_token(r.url)} {_token(r.user)} {r.hierarchy}/{_token(r.peer)} "
        f"{_token(r.content_type)}\n"
    )


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# The last second formatted and its text: log lines come in bursts within one second. One tuple
# assignment, so two proxies formatting on two threads at worst compute it twice.
_clf_second: tuple[int, str] = (-1, "")
_iso_second: tuple[int, str] = (-1, "")


def _clf_time(seconds: int) -> str:
    """``10/Oct/2000:13:55:36 -0700`` in local time (English month names whatever the locale)."""
    global _clf_second
    cached = _clf_second
    if cached[0] == seconds:
        return cached[1]
    t = time.localtime(seconds)
    offset = t.tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    text = (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
        f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
    )
    _clf_second = (seconds, text)
    return text


def combined_line(r: AccessRecord) -> str:
    """Apache's ``combined``: ``%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"``.

    ``%t`` is when the request arrived (the end time minus the duration), as in Apache. ``%b``
    here counts the response head too (the record keeps one byte count, as Squid's ``%<st``).
    """
    request = f"{r.method} {r.url} {r.http_version}" if r.method != "-" else "-"
    size = str(r.bytes_sent) if r.bytes_sent else "-"
    return (
        f"{_token(r.client_ip)} - {_token(r.user)} [{_clf_time(int(r.at - r.duration))}] "
        f'"{_quoted(request)}" {r.status:03d} {size} "{_quoted(r.referer)}" '
        f'"{_quoted(r.user_agent)}"\n'
    )


def _iso_time(at: float) -> str:
    """``2026-11-27T00:31:05.660Z``: UTC with milliseconds."""
    global _iso_second
    seconds = int(at)
    cached = _iso_second
    if cached[0] != seconds:
        cached = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
        _iso_second = cached
    return f"{cached[1]}.{int((at - seconds) * 1000):03d}Z"


JSON_FIELDS = (
    "time",
    "ts",
    "duration_ms",
    "client",
    "client_port",
    "user",
    "method",
    "url",
    "http_version",
    "status",
    "bytes_sent",
    "bytes_received",
    "result",
    "hierarchy",
    "peer",
    "content_type",
    "referer",
    "user_agent",
)
"""The keys of a ``json`` line, in the order written."""


def _js(text: str | None) -> str:
    """A JSON string (ASCII only, so any byte-oriented shipper reads it), or ``null``."""
    return "null" if text is None else _json_string(text)


def json_line(r: AccessRecord) -> str:
    """One JSON object on one line, keys as in :data:`JSON_FIELDS` (absent values are null).

    Built by hand rather than with :func:`json.dumps` (three times slower on a dict this
    size); every string goes through the JSON module's own C escaping.
    """
    return (
        f'{{"time":"{_iso_time(r.at)}","ts":{r.at:.3f},"duration_ms":{r.duration * 1000:.3f},'
        f'"client":{_js(r.client_ip)},"client_port":{int(r.client_port)},"user":{_js(r.user)},'
        f'"method":{_js(r.method)},"url":{_js(r.url)},"http_version":{_js(r.http_version)},'
        f'"status":{int(r.status)},"bytes_sent":{int(r.bytes_sent)},'
        f'"bytes_received":{int(r.bytes_received)},"result":{_js(r.result)},'
        f'"hierarchy":{_js(r.hierarchy)},"peer":{_js(r.peer)},'
        f'"content_type":{_js(r.content_type)},"referer":{_js(r.referer)},'
        f'"user_agent":{_js(r.user_agent)}}}\n'
    )


Formatter = Callable[[AccessRecord], str]

FORMATS: dict[str, Formatter] = {
    "squid": squid_line,
    "combined": combined_line,
    "json": json_line,
}
"""``--access-log-format`` names and the functions that make their lines (newline included)."""

_USES_REQUEST_FIELDS = frozenset({combined_line, json_line})


# -- where the bytes go -------------------------------------------------------------------------


class Sink(Protocol):
    """Where an :class:`AccessLog` writes its flushed lines."""

    def write(self, data: bytes) -> None:
        """Write all of *data* (whole lines), or raise :class:`OSError`."""
        ...

    def reopen(self) -> None:
        """Open the destination again (after a rotation); raise :class:`OSError` to keep the old."""
        ...

    def close(self) -> None:
        """Release the destination."""
        ...


class FdSink:
    """A file descriptor: a file the sink opened itself (and reopens), or stdout/stderr."""

    def __init__(self, fd: int, path: str | None = None) -> None:
        self._fd = fd
        self.path = path
        self._pipe_like = not stat.S_ISREG(os.fstat(fd).st_mode)

    @classmethod
    def open(cls, path: str) -> FdSink:
        """Append to *path*, creating it (mode 0640 before the umask)."""
        return cls(cls._open_fd(path), path)

    @staticmethod
    def _open_fd(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, data: bytes) -> None:
        """Write *data*; to a pipe, in line-aligned pieces of at most ``PIPE_BUF`` bytes."""
        if not self._pipe_like or len(data) <= PIPE_BUF:
            self._write_all(data)
            return
        start = 0
        while start < len(data):
            end = data.rfind(b"\n", start, start + PIPE_BUF) + 1
            if end <= start:  # one line longer than PIPE_BUF: it goes alone, whole
                end = data.find(b"\n", start) + 1 or len(data)
            self._write_all(data[start:end])
            start = end

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def reopen(self) -> None:
        """Open the path again, then let go of the old descriptor (stdout and stderr: no-op)."""
        if self.path is None:
            return
        fresh = self._open_fd(self.path)  # raises before anything changes: the old fd stays
        old, self._fd = self._fd, fresh
        self._pipe_like = not stat.S_ISREG(os.fstat(fresh).st_mode)
        os.close(old)

    def close(self) -> None:
        """Close the file (stdout and stderr are left open)."""
        if self.path is not None and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Scheduler(Protocol):
    """What the access log needs of the reactor."""

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> object:
        """Run ``callback(*args)`` on the next tick."""
        ...


class AccessLog:
    """Formats a line per finished request, buffers them and writes them once per tick."""

    def __init__(
        self,
        sink: Sink,
        formatter: Formatter,
        scheduler: Scheduler,
        *,
        max_buffered: int = 512,
    ) -> None:
        self._sink = sink
        self._format = formatter
        self.wants_request_fields = formatter in _USES_REQUEST_FIELDS
        """Whether lines show the request's ``Referer`` and ``User-Agent`` (the session looks
        them up only then)."""
        self._scheduler = scheduler
        self._max_buffered = max_buffered
        self._lines: list[str] = []
        self._flush_scheduled = False
        self._closed = False
        self._failing = False
        self.written = 0
        """Lines handed to the sink."""
        self.dropped = 0
        """Lines lost to write errors or logged after :meth:`close`."""

    def log(self, record: AccessRecord) -> None:
        """Format *record*'s line now; it is written at the end of this tick."""
        if self._closed:
            self._drop(1, "the access log is closed")
            return
        lines = self._lines
        lines.append(self._format(record))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._scheduler.call_soon(self.flush)
        elif len(lines) >= self._max_buffered:
            self.flush()

    def flush(self) -> None:
        """Write every buffered line in one go."""
        self._flush_scheduled = False
        lines = self._lines
        if not lines:
            return
        self._lines = []
        data = "".join(lines).encode("utf-8", "backslashreplace")
        try:
            self._sink.write(data)
        except OSError as exc:
            self._drop(len(lines), exc.strerror or str(exc))
            return
        self.written += len(lines)
        if self._failing:
            self._failing = False
            log.warning("access log: writing again (%d line(s) were lost)", self.dropped)

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if not self._failing:  # one warning per outage, not one per line
            self._failing = True
            log.warning("access log: cannot write (%s); dropping lines until it works", why)

    def reopen(self) -> None:
        """Flush into the current file, then open its path again (``SIGUSR1`` after a rotation).

        If the path cannot be opened, the old file stays in use and the reason is logged.
        """
        self.flush()
        try:
            self._sink.reopen()
        except OSError as exc:
            log.warning("access log: cannot reopen (%s); still writing the old file", exc)

    def close(self) -> None:
        """Flush and release the destination; lines logged afterwards are counted as dropped."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._sink.close()


def open_sink(destination: str) -> Sink | None:
    """The sink for an ``--access-log`` value: ``none``, ``-`` (stdout), ``stderr`` or a path.

    :raises OSError: if the file cannot be opened.
    """
    if destination == "none":
        return None
    if destination == "-":
        return FdSink(1)
    if destination == "stderr":
        return FdSink(2)
    return FdSink.open(destination)


def open_access_log(destination: str, format_name: str, scheduler: Scheduler) -> AccessLog | None:
    """The access log a :class:`~proxy.config.Config` asks for, or None for ``none``.

    :raises OSError: if the file cannot be opened.
    :raises KeyError: for a format not in :data:`FORMATS`.
    """
    formatter = FORMATS[format_name]
    sink = open_sink(destination)
    return None if sink is None else AccessLog(sink, formatter, scheduler)

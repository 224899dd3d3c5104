"""Heads: start-lines and field lines, read one CRLF-terminated line at a time.

Theory of operation: a head is a start-line, field lines, and an empty line (RFC 9112 section
2.1). :class:`HeadReader` pulls complete lines out of the receive buffer as they arrive (the
buffer remembers how far it already searched for a line end), so a head dribbled in one byte
at a time still costs linear time. The same reader, without a start-line, reads the trailer
section of a chunked body (section 7.1.2).

We are deliberately strict, because a proxy that parses a message differently from the server
behind it is the recipe for request smuggling:

* Lines end in CRLF. Section 2.2 *allows* a recipient to accept a bare LF; we reject it (400),
  and a bare CR anywhere in a line too (section 2.2 allows either rejecting or replacing it).
* Empty lines before a request-line are skipped (section 2.2).
* Whitespace between a field name and its colon is rejected (section 5.1), and so is obs-fold,
  a line starting with SP or HTAB (section 5.2; this also covers whitespace after the start-line,
  section 2.2).
* Field names are tokens; values may hold HTAB, SP, VCHAR and obs-text, never NUL or another
  control character (RFC 9110 section 5.5). Bytes are decoded as latin-1, one char per byte.

Size caps are checked against what the buffered bytes *prove* (a partial line of n bytes is at
least n - 1 long: its last byte may be the CR of its CRLF), so the answer is the same however
the input is split, and a peer that never ends its line is stopped as soon as it is too long.
"""

from __future__ import annotations

import re

from .errors import ProtocolError
from .headers import Headers
from .receivebuffer import ReceiveBuffer

#: A token (RFC 9110 section 5.6.2): methods, field names, transfer codings.
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(TOKEN)
_FIELD_LINE_RE = re.compile(rb"(" + TOKEN + rb"):[ \t]*(.*?)[ \t]*", re.DOTALL)
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Every field line of a clean head at once: token, colon, allowed value bytes, CRLF.
_FIELD_BLOCK_RE = re.compile(rb"(?:" + TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_REQUEST_LINE_RE = re.compile(b"(" + TOKEN + rb") ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
_VERSION_RE = re.compile(rb"HTTP/([0-9])\.([0-9])")
_STATUS_LINE_RE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_SUPPORTED = {(b"1", b"0"), (b"1", b"1")}

_CR, _LF = 13, 10


class HeadReader:
    """Collect one head (or trailer section) from a receive buffer, line by line.

    :param start_line: whether the section opens with a start-line (``False`` for trailers).
    :param max_start_line: longest start-line, CRLF excluded (error *start_line_status*).
    :param max_field_bytes: most bytes of field lines, CRLFs included (error *fields_status*).
    :param max_fields: most field lines (error *fields_status*).
    :param status: the status of every other error (400 for requests, 502 for responses).
    """

    def __init__(
        self,
        *,
        start_line: bool,
        max_start_line: int,
        max_field_bytes: int,
        max_fields: int,
        status: int,
        start_line_status: int,
        fields_status: int,
    ) -> None:
        self._has_start_line = start_line
        self._max_start_line = max_start_line
        self._max_field_bytes = max_field_bytes
        self._max_fields = max_fields
        self._status = status
        self._start_line_status = start_line_status
        self._fields_status = fields_status
        self.reset()

    def reset(self) -> None:
        """Forget any partial head, ready for the next one."""
        self._start: bytes | None = None
        self._fields: list[tuple[str, str]] = []
        self._field_bytes = 0

    @property
    def started(self) -> bool:
        """Whether part of a head (beyond skipped empty lines) has been consumed."""
        return self._start is not None or bool(self._fields)

    def read(self, buf: ReceiveBuffer) -> tuple[bytes, Headers] | None:
        """Consume complete lines; return ``(start_line, headers)`` once the head is whole.

        Returns ``None`` when more bytes are needed. For trailers *start_line* is ``b""``.
        """
        if self._has_start_line and not self.started:
            head = self._read_clean_head(buf)
            if head is not None:
                return head
        while True:
            end = buf.find_line_end()
            if end < 0:
                self._check_partial(buf)
                return None
            raw = buf.take(end + 1)
            crlf = raw.endswith(b"\r\n")
            line = raw[:-2] if crlf else raw[:-1]
            if self._has_start_line and self._start is None:
                if not line and crlf:
                    continue  # empty lines before a request-line are ignored (section 2.2)
                self._check_start_length(len(line))
                self._check_line_end(crlf)
                self._start = line
                continue
            if not line:
                self._check_line_end(crlf)
                head = (self._start or b"", Headers(self._fields))
                self.reset()
                return head
            self._field_bytes += len(line) + 2
            self._check_field_bytes(self._field_bytes)
            if len(self._fields) >= self._max_fields:
                raise ProtocolError("too many header fields", self._fields_status)
            self._check_line_end(crlf)
            self._fields.append(parse_field_line(line, self._status))

    def _read_clean_head(self, buf: ReceiveBuffer) -> tuple[bytes, Headers] | None:
        """Fast path: a whole, well-formed head is buffered; parse it with a few C-level calls.

        Anything unusual (a bare CR or LF, leading empty lines, a limit reached, a field line
        that is not ``token: value``) returns None without consuming a byte, and the line-by-
        line reader above then gives the exact verdict. The two paths accept the same heads.
        """
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        block = buf.peek(end + 2)  # the start-line and every field line, each with its CRLF
        crlfs = block.count(b"\r\n")
        if block.count(b"\r") != crlfs or block.count(b"\n") != crlfs:
            return None
        first = block.find(b"\r\n")
        start, fields_part = block[:first], block[first + 2 :]
        if (
            not start
            or len(start) > self._max_start_line
            or len(fields_part) > self._max_field_bytes
            or crlfs - 1 > self._max_fields
            or _FIELD_BLOCK_RE.fullmatch(fields_part) is None
        ):
            return None
        buf.skip(end + 4)
        # The block is known clean, so each line splits at its first colon; list comprehensions
        # (not a loop of appends) and the names lower-cased here, once, keep this cheap.
        lines = fields_part.decode("latin-1").split("\r\n")
        lines.pop()  # the empty string after the last CRLF
        fields = [
            (name, value.strip(" \t")) for name, _, value in [x.partition(":") for x in lines]
        ]
        return start, Headers.parsed(fields, [name.lower() for name, _ in fields])

    def _check_partial(self, buf: ReceiveBuffer) -> None:
        """Fail early when the unterminated line already proves a limit is exceeded."""
        size = len(buf)
        shortest = size - 1 if size and buf.byte_at(size - 1) == _CR else size
        if self._has_start_line and self._start is None:
            self._check_start_length(shortest)
        elif shortest:
            self._check_field_bytes(self._field_bytes + shortest + 2)

    def _check_start_length(self, length: int) -> None:
        if length > self._max_start_line:
            raise ProtocolError("start-line too long", self._start_line_status)

    def _check_field_bytes(self, total: int) -> None:
        if total > self._max_field_bytes:
            raise ProtocolError("header section too large", self._fields_status)

    def _check_line_end(self, crlf: bool) -> None:
        if not crlf:
            raise ProtocolError("line ends in a bare LF, not CRLF", self._status)


def parse_field_line(line: bytes, status: int = 400) -> tuple[str, str]:
    """Split ``name: OWS value OWS`` (RFC 9112 section 5) into a latin-1 ``(name, value)``."""
    if line[:1] in (b" ", b"\t"):
        raise ProtocolError("obs-fold or whitespace before a field line", status)
    if b"\r" in line:
        raise ProtocolError("bare CR in a field line", status)
    match = _FIELD_LINE_RE.fullmatch(line)
    if match is None:
        name = line.partition(b":")[0]
        if b":" not in line:
            raise ProtocolError("field line without a colon", status)
        if name.rstrip(b" \t") != name:
            raise ProtocolError("whitespace between field name and colon", status)
        raise ProtocolError("field name is not a token", status)
    name, value = match.groups()
    if _BAD_VALUE_RE.search(value):
        raise ProtocolError("control character in a field value", status)
    return name.decode("latin-1"), value.decode("latin-1")


def is_token(text: bytes) -> bool:
    """Tell whether *text* is a token (RFC 9110 section 5.6.2)."""
    return _TOKEN_RE.fullmatch(text) is not None


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """Split ``method SP request-target SP HTTP-version`` (RFC 9112 section 3)."""
    match = _REQUEST_LINE_RE.fullmatch(line)
    if match is not None and match.group(3) in _VERSIONS:
        # The usual line in one regex; anything else gets the checks below, which name the fault.
        method, target, version = match.groups()
        return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")
    if b"\r" in line:
        raise ProtocolError("bare CR in the request-line")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise ProtocolError("request-line is not 'method SP target SP version'")
    method, target, version = parts
    match = _VERSION_RE.fullmatch(version)
    if match is None:
        raise ProtocolError("malformed HTTP-version")
    if match.groups() not in _SUPPORTED:
        raise ProtocolError("HTTP version not supported", 505)
    if not is_token(method):
        raise ProtocolError("method is not a token")
    if _TARGET_RE.fullmatch(target) is None:
        raise ProtocolError("malformed request-target")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def parse_status_line(line: bytes) -> tuple[str, int, str]:
    """Split ``HTTP-version SP status-code SP [reason-phrase]`` (RFC 9112 section 4).

    The SP before an empty reason-phrase may be missing (some servers omit it).
    Returns ``(version, status, reason)``; errors carry status 502.
    """
    match = _STATUS_LINE_RE.fullmatch(line)
    if match is None:
        raise ProtocolError("malformed status-line", 502)
    major, minor, code, reason = match.groups()
    if (major, minor) not in _SUPPORTED:
        raise ProtocolError("response in an unsupported HTTP version", 502)
    status = int(code)
    if status < 100:
        raise ProtocolError("status code below 100", 502)
    version = b"HTTP/" + major + b"." + minor
    return version.decode("ascii"), status, (reason or b"").decode("latin-1")

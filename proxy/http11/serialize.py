"""Serialisation: events back into bytes for the wire.

Theory of operation: writing is the easy direction, but a proxy writes what it *received*
(possibly edited), so the serialiser refuses anything that would change the message boundaries
on the wire: a CR, LF or other control character in a method, target, reason or field, or a
field name that is not a token, raises ``ValueError`` (the classic header-injection bug). The
parsers already reject such input, so this only fires on a programming error.

A head is its start-line (RFC 9112 sections 3 and 4), ``name: value`` lines (section 5) and an
empty line. A body is framed by :class:`BodyWriter`: as is when the head carries a
``Content-Length`` (or the body runs until close), or in chunks (section 7.1), where an empty
chunk would mean "end of body", so writing ``b""`` must produce nothing at all.
"""

from __future__ import annotations

import re
from typing import NoReturn

from .headers import Headers
from .heads import TOKEN

_TOKEN_RE = re.compile(TOKEN.decode("ascii"))
_TARGET_RE = re.compile(r"[\x21-\x7e]+")
_VERSION_RE = re.compile(r"HTTP/[0-9]\.[0-9]")
_TEXT_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _check(pattern: re.Pattern[str], text: str, what: str) -> None:
    if pattern.fullmatch(text) is None:
        raise ValueError(f"invalid {what}: {text!r}")


_FIELD_LINES = rb"(?:" + TOKEN + rb": [\t\x20-\x7e\x80-\xff]*\r\n)*"
_FIELD_LINES_RE = re.compile(_FIELD_LINES)
# A whole head minus its final empty line, checked by one regex: the hot path of every message.
_REQUEST_HEAD_RE = re.compile(TOKEN + rb" [\x21-\x7e]+ HTTP/[0-9]\.[0-9]\r\n" + _FIELD_LINES)
_RESPONSE_HEAD_RE = re.compile(
    rb"HTTP/[0-9]\.[0-9] [0-9]{3} [\t\x20-\x7e\x80-\xff]*\r\n" + _FIELD_LINES
)


def _fields(headers: Headers) -> bytes:
    try:
        block = headers.to_bytes()
    except UnicodeEncodeError:
        block = b"\0"  # not latin-1: let the per-field checks name the culprit
    # The line count catches a value holding CRLF plus text that looks like another field.
    if block.count(b"\n") != len(headers) or _FIELD_LINES_RE.fullmatch(block) is None:
        _explain_fields(headers)
    return block


def _explain_fields(headers: Headers) -> NoReturn:
    for name, value in headers:  # find which field is wrong, for the message
        _check(_TOKEN_RE, name, "field name")
        _check(_TEXT_RE, value, "field value")
    raise ValueError("invalid header fields")  # unreachable unless the patterns disagree


def _checked_head(start: str, encoding: str, headers: Headers, pattern: re.Pattern[bytes]) -> bytes:
    """*start* and the field lines, with the final empty line; ``b""`` if *pattern* rejects them."""
    try:
        head = start.encode(encoding) + headers.to_bytes()
    except UnicodeEncodeError:
        return b""
    # The line count catches a value holding CRLF plus text that looks like another field.
    if head.count(b"\n") != len(headers) + 1 or pattern.fullmatch(head) is None:
        return b""
    return head + b"\r\n"


def serialize_request_head(
    method: str, target: str, headers: Headers, version: str = "HTTP/1.1"
) -> bytes:
    """Return ``method SP target SP version CRLF``, the field lines and the empty line.

    :raises ValueError: a part holds characters that would break the framing.
    """
    head = _checked_head(f"{method} {target} {version}\r\n", "ascii", headers, _REQUEST_HEAD_RE)
    if not head:
        _check(_TOKEN_RE, method, "method")
        _check(_TARGET_RE, target, "request-target")
        _check(_VERSION_RE, version, "HTTP-version")
        _explain_fields(headers)
    return head


def serialize_response_head(
    status: int, reason: str, headers: Headers, version: str = "HTTP/1.1"
) -> bytes:
    """Return ``version SP status SP reason CRLF``, the field lines and the empty line.

    The SP before the reason is written even when the reason is empty (section 4).

    :raises ValueError: a part holds characters that would break the framing.
    """
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status code: {status!r}")
    start = f"{version} {status:03d} {reason}\r\n"
    head = _checked_head(start, "latin-1", headers, _RESPONSE_HEAD_RE)
    if not head:
        _check(_VERSION_RE, version, "HTTP-version")
        _check(_TEXT_RE, reason, "reason phrase")
        _explain_fields(headers)
    return head


class BodyWriter:
    """Frame a body for the wire: in chunks, or as is (Content-Length or until close).

    :param chunked: use the chunked transfer coding (the head must say
        ``Transfer-Encoding: chunked``).
    """

    __slots__ = ("chunked", "_ended")

    def __init__(self, chunked: bool) -> None:
        #: Whether the body is chunked.
        self.chunked = chunked
        self._ended = False

    def write(self, data: bytes | memoryview) -> bytes:
        """Return the wire bytes carrying *data*; ``b""`` for empty *data*.

        :raises RuntimeError: :meth:`end` was already called.
        """
        if self._ended:
            raise RuntimeError("write() after end()")
        if not data:
            return b""  # a zero-length chunk would end the body
        if not self.chunked:
            return data if type(data) is bytes else bytes(data)
        return b"%x\r\n" % len(data) + data + b"\r\n"

    def end(self, trailers: Headers | None = None) -> bytes:
        """Return the bytes that end the body: the last chunk and *trailers*, or ``b""``.

        Without chunking, trailers cannot be sent and are dropped, as RFC 9112 section 7.1.2
        lets a recipient do.

        :raises RuntimeError: :meth:`end` was already called.
        """
        if self._ended:
            raise RuntimeError("end() called twice")
        self._ended = True
        if not self.chunked:
            return b""
        return b"0\r\n" + (_fields(trailers) if trailers else b"") + b"\r\n"

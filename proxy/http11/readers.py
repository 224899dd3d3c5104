"""Body readers: one small object per framing, chosen once the head is parsed.

Theory of operation: after the head, the framing (see :mod:`proxy.http11.framing`) picks a
reader, in the manner of h11's ``_readers.py``. Every reader has the same two verbs:

* ``read(buf)`` consumes what it can and returns a :class:`~proxy.http11.events.Data`, an
  :class:`~proxy.http11.events.EndOfMessage`, or ``None`` for "need more bytes";
* ``eof()`` is called when ``read`` needs more but the peer has closed: it returns the
  :class:`~proxy.http11.events.EndOfMessage` of a close-delimited body, or raises because the
  body was cut short.

Body bytes are handed out as soon as they are buffered, never held until the body is whole, so
memory stays bounded by what the caller has not yet pulled. The chunked reader (RFC 9112
section 7.1) is a small state machine: size line, data, the CRLF after the data, and after the
last (zero) chunk the trailer section, read by the same line reader as a head. It is as strict
as the head reader: CRLF only, 1 to 16 hex digits (no sign, no ``0x``: ``int(x, 16)`` alone
would accept those), and a bounded size line, since extensions are otherwise unbounded.
"""

from __future__ import annotations

import re
from typing import Literal

from .errors import ProtocolError
from .events import Data, EndOfMessage
from .framing import CHUNKED, UNTIL_CLOSE, Framing
from .heads import HeadReader
from .limits import Limits
from .receivebuffer import ReceiveBuffer

# chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" ... ] ).
# Extensions are discarded, so beyond "no control characters" their grammar is not checked.
_CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_MAX_HEX_DIGITS = 16

_CR = 13


class BodyReader:
    """The interface every body reader implements."""

    def read(self, buf: ReceiveBuffer) -> Data | EndOfMessage | None:
        """Return the next body event from *buf*, or ``None`` when more bytes are needed."""
        raise NotImplementedError

    def eof(self) -> EndOfMessage:
        """The peer closed while :meth:`read` needed more: end the body or raise."""
        raise NotImplementedError


class ContentLengthReader(BodyReader):
    """Exactly *length* bytes (RFC 9112 section 6.2)."""

    def __init__(self, length: int, status: int) -> None:
        self._remaining = length
        self._status = status

    def read(self, buf: ReceiveBuffer) -> Data | EndOfMessage | None:
        """Hand out up to the remaining length; the fed ``bytes`` object itself when it fits."""
        if self._remaining == 0:
            return EndOfMessage()
        if not len(buf):
            return None
        data = buf.take_view(self._remaining)
        self._remaining -= len(data)
        return Data(data)

    def eof(self) -> EndOfMessage:
        """A Content-Length body cut short is an error."""
        raise ProtocolError(
            f"connection closed {self._remaining} bytes before the body end", self._status
        )


class UntilCloseReader(BodyReader):
    """Everything until the peer closes (RFC 9112 section 6.3, rule 8; responses only)."""

    def read(self, buf: ReceiveBuffer) -> Data | EndOfMessage | None:
        """Hand out whatever is buffered."""
        return Data(buf.take_view(len(buf))) if len(buf) else None

    def eof(self) -> EndOfMessage:
        """The close is the end of the body."""
        return EndOfMessage()


class ChunkedReader(BodyReader):
    """The chunked transfer coding (RFC 9112 section 7.1), trailers included."""

    def __init__(self, limits: Limits, status: int, fields_status: int) -> None:
        self._max_line = limits.max_chunk_line
        self._status = status
        self._remaining = 0
        self._step = self._size_line
        self._trailers = HeadReader(
            start_line=False,
            max_start_line=0,
            max_field_bytes=limits.max_trailer_bytes,
            max_fields=limits.max_header_fields,
            status=status,
            start_line_status=status,
            fields_status=fields_status,
        )

    def read(self, buf: ReceiveBuffer) -> Data | EndOfMessage | None:
        """Run the steps until one yields an event or needs more bytes."""
        while True:
            result = self._step(buf)
            if result is not True:
                return result

    def eof(self) -> EndOfMessage:
        """A chunked body cut short is an error."""
        raise ProtocolError("connection closed inside a chunked body", self._status)

    # Each step returns an event, None (need more) or True (go on with the next step).

    def _size_line(self, buf: ReceiveBuffer) -> Data | EndOfMessage | None | Literal[True]:
        end = buf.find_line_end()
        if end < 0:
            size = len(buf)
            if size and buf.byte_at(size - 1) == _CR:
                size -= 1
            if size > self._max_line:
                raise ProtocolError("chunk-size line too long", self._status)
            return None
        raw = buf.take(end + 1)
        crlf = raw.endswith(b"\r\n")
        line = raw[:-2] if crlf else raw[:-1]
        if len(line) > self._max_line:  # checked first, like the partial line above
            raise ProtocolError("chunk-size line too long", self._status)
        if not crlf:
            raise ProtocolError("chunk-size line ends in a bare LF", self._status)
        match = _CHUNK_LINE_RE.fullmatch(line)
        if match is None:
            raise ProtocolError("malformed chunk-size line", self._status)
        digits = match.group(1)
        if len(digits) > _MAX_HEX_DIGITS:
            raise ProtocolError("chunk size too large", self._status)
        self._remaining = int(digits, 16)
        self._step = self._data if self._remaining else self._trailer_section
        return True

    def _data(self, buf: ReceiveBuffer) -> Data | None:
        if not len(buf):
            return None
        data = buf.take_view(self._remaining)
        self._remaining -= len(data)
        if not self._remaining:
            self._step = self._data_end
        return Data(data)

    def _data_end(self, buf: ReceiveBuffer) -> Literal[True] | None:
        if len(buf) and buf.byte_at(0) != _CR:
            raise ProtocolError("chunk data not followed by CRLF", self._status)
        if len(buf) < 2:
            return None
        if buf.peek(2) != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF", self._status)
        buf.skip(2)
        self._step = self._size_line
        return True

    def _trailer_section(self, buf: ReceiveBuffer) -> EndOfMessage | None:
        section = self._trailers.read(buf)
        if section is None:
            return None
        self._step = self._done
        return EndOfMessage(section[1])

    def _done(self, buf: ReceiveBuffer) -> None:
        raise RuntimeError("chunked body already complete")


def make_reader(framing: Framing, limits: Limits, status: int, fields_status: int) -> BodyReader:
    """Return the reader for *framing*; errors will carry *status* (400 or 502)."""
    if framing == 0:
        return _NO_BODY
    if framing == CHUNKED:
        return ChunkedReader(limits, status, fields_status)
    if framing == UNTIL_CLOSE:
        return UntilCloseReader()
    assert isinstance(framing, int)
    return ContentLengthReader(framing, status)


# Most requests have no body: one shared reader that only ever says EndOfMessage (reading
# zero remaining bytes changes nothing, so sharing it is safe).
_NO_BODY = ContentLengthReader(0, 400)

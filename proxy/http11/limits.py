"""Size limits that keep a parser's memory bounded.

Theory of operation: a parser must buffer a whole head before it can hand it out, so a peer that
never sends the blank line could make it buffer forever. Every unbounded piece of the grammar
therefore gets a cap, checked as soon as the buffered bytes *prove* it is exceeded (before the
line end arrives): the request-line (RFC 9112 section 3, answer ``414``), the header section
(section 5, answer ``431``), a chunk-size line with its extensions (section 7.1.1) and the
trailer section (section 7.1.2). Bodies need no cap here: they are handed out as they arrive,
and the caller applies backpressure using the parser's ``buffered`` count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps, in bytes or fields, on the parts of a message that must be buffered whole."""

    #: Longest request-line or status-line, without its CRLF.
    max_request_line: int = 8192
    #: Most bytes in a header section: every field line with its CRLF.
    max_header_bytes: int = 65536
    #: Most field lines in a header or trailer section.
    max_header_fields: int = 100
    #: Longest chunk-size line, chunk extensions included, without its CRLF.
    max_chunk_line: int = 4096
    #: Most bytes in a trailer section: every field line with its CRLF.
    max_trailer_bytes: int = 65536


#: The limits used when none are given.
DEFAULT_LIMITS = Limits()

"""Range requests answered from a complete stored body: ``206``, ``416`` or the whole ``200``.

Theory of operation: a client that already holds part of a representation (a resumed download,
a video player seeking) asks for byte ranges with ``Range: bytes=...`` (RFC 9110 section 14).
The cache keeps only complete bodies, so any range of a stored ``200`` can be cut from it
without asking the origin; this module decides how, as a pure function of the request's fields,
the stored fields and the body, and returns a :class:`RangeAnswer` (or ``None``: serve the
whole response as usual).

1. **Does the Range field apply?** (section 14.2) Only to ``GET``, only to a stored ``200``,
   only in the ``bytes`` unit (units are case-insensitive, section 14.1); anything else, or a
   value that does not parse, is ignored and the whole ``200`` is served, which section 14.2
   allows ("A server MAY ignore the Range header field").
2. **If-Range** (section 13.1.5): "send me the part if it is still this version, else the
   whole thing". An entity-tag matches only by the *strong* comparison (a weak tag never
   does); a date matches only when it equals ``Last-Modified`` and that date is a strong
   validator, i.e. at least one second before the stored ``Date`` (section 8.8.2.2). When it
   does not match, or is invalid, the Range is ignored: the whole ``200`` goes out.
3. **Which bytes?** (section 14.1.2) ``first-last`` (``last`` clipped to the end), ``first-``
   (to the end) and ``-suffix`` (the last *suffix* bytes). A range starting at or past the end
   is unsatisfiable; when none is satisfiable the answer is ``416`` with
   ``Content-Range: bytes */length`` (section 15.5.17).
4. **One part or several?** Overlapping ranges, and ranges separated by a gap smaller than
   the cost of another part, are coalesced regardless of their order, as section 14.6 allows;
   that also defuses the "many overlapping ranges" attack of section 17.15. One range left:
   a plain ``206`` with ``Content-Range`` and the slice as body (a ``memoryview``, no copy).
   Several: ``206`` with ``multipart/byteranges`` (section 14.6), each part carrying the
   stored ``Content-Type`` and its ``Content-Range``. More than :data:`MAX_PARTS` parts after
   coalescing is more bookkeeping than help: the whole ``200`` is served instead.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from proxy.cache.directives import parse_http_date
from proxy.http11.headers import Headers

#: Parts of a multipart/byteranges answer beyond which the whole 200 is served instead.
MAX_PARTS = 16

#: Ranges closer than this many bytes are merged: a part's own head costs about as much.
COALESCE_GAP = 80

# Positions of up to 18 digits (below 2**63): a longer one names no byte of any body we hold,
# and would make int() raise past 4,300 digits. A field with one is ignored, as invalid.
_INT_RANGE = re.compile(r"(\d{1,18})-(\d{0,18})", re.ASCII)
_SUFFIX_RANGE = re.compile(r"-(\d{1,18})", re.ASCII)

RangeSpec = tuple[int, int | None] | tuple[None, int]
"""A parsed range-spec: ``(first, last)`` (``last`` may be ``None``) or ``(None, suffix)``."""


@dataclass(frozen=True, slots=True)
class RangeAnswer:
    """How to answer a range request from a stored body.

    :ivar status: ``206`` (partial content) or ``416`` (range not satisfiable).
    :ivar fields: the fields to put on the stored response's head, replacing any of the same
        name: ``Content-Range``/``Content-Length`` (and ``Content-Type`` for multipart). For
        ``416`` only ``Content-Range: bytes */length``: the proxy sends it on its own short
        error page, not on the stored head.
    :ivar body: the content to send (``b""`` for ``416``).
    :ivar parts: the byte ranges served, inclusive ``(first, last)`` pairs, in order.
    """

    status: int
    fields: Headers
    body: bytes | memoryview
    parts: tuple[tuple[int, int], ...] = ()

    def head_fields(self, served: Headers) -> Headers:
        """A copy of the fields a hit would be served with, adjusted for this answer."""
        headers = served.copy()
        for name, value in self.fields:
            headers.set(name, value)
        return headers


def parse_range(value: str) -> list[RangeSpec] | None:
    """Parse a ``Range`` value in the ``bytes`` unit (RFC 9110 section 14.1.2).

    :returns: the range-specs in order, or ``None`` when the value is not a valid
        ``bytes=`` ranges-specifier (another unit, a ``last`` below ``first``, junk).

    >>> parse_range("bytes=0-499, 1000-, -200")
    [(0, 499), (1000, None), (None, 200)]
    >>> parse_range("bytes=500-100") is None
    True
    """
    unit, equals, range_set = value.strip(" \t").partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    specs: list[RangeSpec] = []
    for item in range_set.split(","):
        item = item.strip(" \t")
        if not item:
            continue  # empty list elements are allowed and ignored (RFC 9110 section 5.6.1)
        found = _INT_RANGE.fullmatch(item)
        if found is not None:
            first = int(found[1])
            last = int(found[2]) if found[2] else None
            if last is not None and last < first:
                return None  # an invalid range-spec makes the whole field invalid (14.1.1)
            specs.append((first, last))
            continue
        found = _SUFFIX_RANGE.fullmatch(item)
        if found is None:
            return None
        specs.append((None, int(found[1])))
    return specs or None


def satisfiable_ranges(specs: list[RangeSpec], length: int) -> list[tuple[int, int]]:
    """Turn range-specs into inclusive byte ranges of a body of *length* bytes, clipped.

    Unsatisfiable specs (starting at or past the end; a zero suffix) are dropped.
    """
    ranges: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:
            assert last is not None
            if last == 0 or length == 0:
                continue
            ranges.append((max(0, length - last), length - 1))
        elif first < length:
            ranges.append((first, length - 1 if last is None else min(last, length - 1)))
    return ranges


def coalesce(ranges: list[tuple[int, int]], gap: int = COALESCE_GAP) -> list[tuple[int, int]]:
    """Merge overlapping ranges and ranges less than *gap* bytes apart, in ascending order.

    >>> coalesce([(500, 599), (0, 99), (50, 149), (160, 199)], gap=20)
    [(0, 199), (500, 599)]
    """
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1 + gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def if_range_holds(value: str, stored: Headers) -> bool:
    """Evaluate ``If-Range`` against stored header fields (RFC 9110 section 13.1.5).

    An entity-tag must match the stored ``ETag`` by strong comparison (both strong and equal);
    an HTTP-date must equal a strong ``Last-Modified`` (one at least a second before ``Date``).
    Anything else is false.
    """
    value = value.strip(" \t")
    if value.startswith(('"', 'W/"')):
        etag = (stored.get("ETag") or "").strip(" \t")
        return not value.startswith("W/") and not etag.startswith("W/") and value == etag
    since = parse_http_date(value)
    modified = parse_http_date(stored.get("Last-Modified"))
    date = parse_http_date(stored.get("Date"))
    if since is None or modified is None or date is None:
        return False
    return since == modified and date - modified >= 1


def answer_range(
    method: str,
    request_headers: Headers,
    status: int,
    stored: Headers,
    body: bytes,
    boundary: str | None = None,
) -> RangeAnswer | None:
    """Decide how a request with ``Range`` is answered from a complete stored response.

    :param method: the request method (only ``GET`` has range semantics, section 14.2).
    :param request_headers: the request's fields (``Range``, ``If-Range``).
    :param status: the stored response's status (only ``200`` is cut into ranges).
    :param stored: the stored response's fields (``ETag``, ``Last-Modified``, ``Date``,
        ``Content-Type``).
    :param body: the complete stored body.
    :param boundary: the multipart boundary; a random one by default (tests pass their own).
    :returns: ``None`` to serve the whole response as usual; otherwise the ``206`` or ``416``.
    """
    value = request_headers.get("Range")
    if value is None or method.upper() != "GET" or status != 200:
        return None
    if request_headers.count("Range") > 1:
        return None  # Range is a singleton; a repeated one is invalid, hence ignored
    specs = parse_range(value)
    if specs is None:
        return None
    if_range = request_headers.get("If-Range")
    if if_range is not None and not if_range_holds(if_range, stored):
        return None
    length = len(body)
    ranges = coalesce(satisfiable_ranges(specs, length))
    if not ranges:
        return RangeAnswer(416, Headers([("Content-Range", f"bytes */{length}")]), b"")
    if len(ranges) > MAX_PARTS:
        return None
    view = memoryview(body)
    if len(ranges) == 1:
        first, last = ranges[0]
        fields = Headers(
            [
                ("Content-Range", f"bytes {first}-{last}/{length}"),
                ("Content-Length", str(last - first + 1)),
            ]
        )
        return RangeAnswer(206, fields, view[first : last + 1], ((first, last),))
    return _multipart(ranges, stored.get("Content-Type"), body, boundary)


def _multipart(
    ranges: list[tuple[int, int]],
    content_type: str | None,
    body: bytes,
    boundary: str | None,
) -> RangeAnswer:
    length = len(body)
    view = memoryview(body)
    chosen = boundary or secrets.token_hex(16)
    # RFC 2046 section 5.1.1: the boundary must not occur in the parts. A random one almost
    # never does; a chosen one that does is refused rather than sent broken.
    delimiter = b"--" + chosen.encode("ascii")
    while any(body.find(delimiter, first, last + 1) >= 0 for first, last in ranges):
        if boundary is not None:
            raise ValueError(f"boundary {boundary!r} occurs in the body")
        chosen = secrets.token_hex(16)
        delimiter = b"--" + chosen.encode("ascii")
    pieces: list[bytes | memoryview] = []
    for first, last in ranges:
        head = f"\r\n--{chosen}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Range: bytes {first}-{last}/{length}\r\n\r\n"
        pieces.append(head.encode("latin-1"))
        pieces.append(view[first : last + 1])
    pieces.append(f"\r\n--{chosen}--\r\n".encode("ascii"))
    joined = b"".join(pieces)[2:]  # the first delimiter needs no CRLF before it
    fields = Headers(
        [
            ("Content-Type", f"multipart/byteranges; boundary={chosen}"),
            ("Content-Length", str(len(joined))),
        ]
    )
    return RangeAnswer(206, fields, joined, tuple(ranges))

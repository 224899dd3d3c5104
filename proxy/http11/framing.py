"""Framing: how long is a body, and does the connection stay open after it?

Theory of operation: HTTP/1.1 has no length prefix on messages; the head tells how the body is
delimited, by the rules of RFC 9112 section 6.3, tried in order. Getting this wrong is how
request smuggling happens (a proxy and a server disagree on where a body ends, and the leftover
bytes become a second request), so where the RFC lets a recipient choose, we refuse:

* Requests (section 6.3): ``Transfer-Encoding`` must list ``chunked`` exactly once, last (else
  400, rule 4); any other coding next to it is one we do not implement (501, section 6.1).
  ``Transfer-Encoding`` in an HTTP/1.0 request, or together with ``Content-Length``, is an
  error (400, sections 6.1 and 6.3 rule 3). ``Content-Length`` must be digits (1*DIGIT);
  repeated or comma-listed values are accepted only when they are all the same number (rule 5),
  and are then folded into one field, so the message goes on with one length, as RFC 9110
  section 8.6 asks of a recipient that accepts them (some servers refuse a repeated field).
  No body header means no body. An HTTP/1.1 request needs exactly one ``Host`` field, and no
  request may carry two (section 3.2).
* Responses (section 6.3): no body for ``HEAD``, ``1xx``, ``204`` and ``304`` (rule 1).
  ``Transfer-Encoding`` ending in ``chunked`` is chunked; ending in anything else, the body runs
  until the server closes (rule 4). ``Transfer-Encoding`` with ``Content-Length``, or in an
  HTTP/1.0 response, is refused (502): we will not relay ambiguous framing. Then
  ``Content-Length``, else until close (rule 8). The ``2xx``-to-``CONNECT`` and ``101`` cases
  leave HTTP altogether and are handled by the parser.

A framing is either an ``int`` (exactly that many bytes, 0 for none), :data:`CHUNKED` or
:data:`UNTIL_CLOSE`.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from .errors import ProtocolError
from .headers import Headers

#: The body is chunked (RFC 9112 section 7.1).
CHUNKED = "chunked"
#: The body runs until the peer closes the connection (RFC 9112 section 6.3, rule 8).
UNTIL_CLOSE = "until-close"

#: How a body is delimited: a byte count, :data:`CHUNKED` or :data:`UNTIL_CLOSE`.
Framing = int | str

# 18 digits keep the value a machine integer and far above any real body (about 10**18 bytes).
_LENGTH_RE = re.compile(r"[0-9]{1,18}")


def content_length(headers: Headers, status: int = 400) -> int:
    """Return the one length that every ``Content-Length`` value agrees on (RFC 9110 8.6).

    Repeated fields or a list of values (``5, 5``) are folded into one field in *headers*.
    """
    values = headers.get_all("content-length")
    if len(values) == 1:
        value = values[0]
        # The usual single, plain value; isascii() because latin-1 has digits like "²".
        if value.isascii() and value.isdigit() and len(value) <= 18:
            return int(value)
    lengths = set()
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if _LENGTH_RE.fullmatch(item) is None:
                raise ProtocolError(f"malformed Content-Length {item!r}", status)
            lengths.add(int(item))
    if len(lengths) != 1:
        raise ProtocolError("conflicting Content-Length values", status)
    length = lengths.pop()
    headers.fold("Content-Length", str(length))
    return length


def _codings(headers: Headers, status: int) -> list[str]:
    codings = [coding.lower() for coding in headers.get_list("transfer-encoding")]
    if not codings:
        raise ProtocolError("empty Transfer-Encoding", status)
    return codings


def request_framing(method: str, version: str, headers: Headers) -> Framing:
    """Decide how the body of a request is delimited, refusing ambiguity (400/501)."""
    hosts = headers.count("host")
    if hosts > 1:
        raise ProtocolError("more than one Host field")
    if hosts == 0 and version == "HTTP/1.1":
        raise ProtocolError("HTTP/1.1 request without Host")
    if method == "CONNECT":
        return 0  # the parser pauses: what follows belongs to the tunnel
    if "transfer-encoding" in headers:
        if version == "HTTP/1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if "content-length" in headers:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        codings = _codings(headers, 400)
        if codings[-1] != CHUNKED or codings.count(CHUNKED) != 1:
            raise ProtocolError("chunked must be the final transfer coding, applied once")
        if len(codings) > 1:
            raise ProtocolError(f"transfer coding {codings[0]!r} not implemented", 501)
        return CHUNKED
    if "content-length" in headers:
        return content_length(headers)
    return 0


def response_framing(request_method: str, status: int, version: str, headers: Headers) -> Framing:
    """Decide how the body of a response (to a *request_method* request) is delimited (502)."""
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        if "content-length" in headers:
            try:
                content_length(headers, 502)  # only to fold repeated values
            except ProtocolError:
                pass  # a length that frames nothing: relayed as it is, as before
        return 0
    if "transfer-encoding" in headers:
        if version == "HTTP/1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response", 502)
        if "content-length" in headers:
            raise ProtocolError("both Transfer-Encoding and Content-Length", 502)
        codings = _codings(headers, 502)
        if codings[-1] != CHUNKED:
            return UNTIL_CLOSE
        if codings.count(CHUNKED) != 1:
            raise ProtocolError("chunked applied more than once", 502)
        return CHUNKED
    if "content-length" in headers:
        return content_length(headers, 502)
    return UNTIL_CLOSE


def keep_alive(version: str, headers: Headers) -> bool:
    """Tell whether the connection persists after this message (RFC 9112 section 9.3).

    HTTP/1.1 persists unless ``Connection: close``; HTTP/1.0 only with
    ``Connection: keep-alive``; anything else does not.
    """
    return persists(version, headers.tokens("connection"))


def persists(version: str, connection: frozenset[str]) -> bool:
    """:func:`keep_alive` from the ``Connection`` tokens a parser already read (``.connection``)."""
    if "close" in connection:
        return False
    if version == "HTTP/1.1":
        return True
    return version == "HTTP/1.0" and "keep-alive" in connection


# The phrases RFC 9110 renamed; the interpreter's HTTPStatus still has the old ones.
_RFC9110_PHRASES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def reason_phrase(status: int) -> str:
    """Return the standard reason phrase for *status* (``"OK"``), or ``""`` if unknown.

    The phrases are RFC 9110's (section 15), which renamed a few.
    """
    if status in _RFC9110_PHRASES:
        return _RFC9110_PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""

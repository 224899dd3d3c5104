"""Events: what the parsers hand out, one message piece at a time.

Theory of operation: a sans-IO parser never calls anybody back. It turns bytes into a stream of
small frozen records, and the caller pulls them with ``next_event()``. As h11's, they cannot be
changed: a handler that needs another head builds a new event. The heads are named tuples
(equal when their lines and fields are), because a frozen dataclass with six fields takes four
times as long to build, one ``object.__setattr__`` per field, and a proxy builds two heads per
request; the one-field events are frozen dataclasses. One message is always the same sequence
(RFC 9112 section 2.1, message = start-line, fields, optional body)::

    Request | Response      the head: start-line and header fields
    Data ...                zero or more pieces of the body, handed out as soon as they arrive
    EndOfMessage            the body is complete (carries the trailer fields of a chunked body)

Between messages the parser may say :data:`NEED_DATA` (feed more bytes), :data:`PAUSED` (the
connection stopped speaking HTTP/1.1 after a ``CONNECT``, an ``Upgrade`` or a ``101``), or
:class:`ConnectionClosed` (the peer closed the connection cleanly at a message boundary).

How the body is cut into :class:`Data` events depends on how the bytes arrived, so code (and
tests) must never rely on it: only the concatenated body is meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .headers import Headers


class Request(NamedTuple):
    """A request head: request-line and header fields (RFC 9112 section 3)."""

    #: The method token, e.g. ``"GET"`` (case-sensitive, section 3.1).
    method: str
    #: The request-target exactly as sent: origin-, absolute-, authority- or asterisk-form.
    target: str
    #: ``"HTTP/1.0"`` or ``"HTTP/1.1"``.
    version: str
    #: The header fields in the order received.
    headers: Headers
    #: How the body is delimited (:mod:`~proxy.http11.framing`), decided once by the parser.
    framing: int | str = 0
    #: The lower-cased tokens of ``Connection`` (RFC 9110 section 7.6.1), read once by the parser.
    connection: frozenset[str] = frozenset()

    # Two heads are equal when their lines and fields are; framing and connection are derived.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and self[:4] == other[:4]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        return (
            f"Request(method={self.method!r}, target={self.target!r}, "
            f"version={self.version!r}, headers={self.headers!r})"
        )


class Response(NamedTuple):
    """A response head: status-line and header fields (RFC 9112 section 4)."""

    #: The three-digit status code.
    status: int
    #: The reason phrase, possibly empty; it carries no meaning.
    reason: str
    #: ``"HTTP/1.0"`` or ``"HTTP/1.1"``.
    version: str
    #: The header fields in the order received.
    headers: Headers
    #: How the body is delimited, decided once by the parser (it knows the request method).
    framing: int | str = 0
    #: The lower-cased tokens of ``Connection``, read once by the parser.
    connection: frozenset[str] = frozenset()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Response) and self[:4] == other[:4]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        return (
            f"Response(status={self.status!r}, reason={self.reason!r}, "
            f"version={self.version!r}, headers={self.headers!r})"
        )


@dataclass(slots=True, frozen=True)
class Data:
    """A piece of a message body, with any transfer coding (chunked framing) removed."""

    #: The body bytes: ``bytes``, or a read-only ``memoryview`` into the bytes received when
    #: the body arrived behind its head (no copy); both go straight to ``socket.send``.
    data: bytes | memoryview


@dataclass(slots=True, frozen=True)
class EndOfMessage:
    """The body is complete; *trailers* holds the trailer fields of a chunked body."""

    #: Trailer fields (RFC 9112 section 7.1.2); empty unless the body was chunked.
    trailers: Headers = field(default_factory=Headers)


@dataclass(slots=True, frozen=True)
class ConnectionClosed:
    """The peer closed its side (EOF) at a message boundary, with nothing left unparsed."""


class Sentinel:
    """A named marker object, compared with ``is`` (``event is NEED_DATA``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Returned by ``next_event()`` when the buffered bytes do not hold a whole event yet.
NEED_DATA = Sentinel("NEED_DATA")

#: Returned by ``next_event()`` once the connection has left HTTP/1.1: after a ``CONNECT``
#: request, after a request asking to ``Upgrade`` (until ``resume()``), after a ``101`` or a
#: ``2xx`` answer to ``CONNECT``. The bytes that follow belong to the tunnel; get the ones
#: already buffered with ``take_trailing_data()``.
PAUSED = Sentinel("PAUSED")

#: Anything ``next_event()`` may return.
Event = Request | Response | Data | EndOfMessage | ConnectionClosed | Sentinel

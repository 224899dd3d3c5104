"""Sans-IO HTTP/1.1: bytes in, events out; events in, bytes out.

This package knows nothing of sockets (it imports no ``socket``, ``selectors``, ``ssl``,
``threading`` or ``minireactor``): it is driven and tested from bytes and objects alone, in the
manner of h11. A session feeds received bytes to a
:class:`~proxy.http11.parser.RequestParser` (client side) or a
:class:`~proxy.http11.parser.ResponseParser` (origin side) and pulls events; it turns events
back into bytes with :func:`~proxy.http11.serialize.serialize_request_head`,
:func:`~proxy.http11.serialize.serialize_response_head` and
:class:`~proxy.http11.serialize.BodyWriter`. Everything public is re-exported here.

Modules, bottom up: :mod:`~proxy.http11.headers` (the field multi-map),
:mod:`~proxy.http11.events`, :mod:`~proxy.http11.errors`, :mod:`~proxy.http11.limits`,
:mod:`~proxy.http11.receivebuffer`, :mod:`~proxy.http11.heads` (lines and fields),
:mod:`~proxy.http11.framing` (how long is a body), :mod:`~proxy.http11.readers` (body
readers), :mod:`~proxy.http11.parser` and :mod:`~proxy.http11.serialize`.
"""

from .errors import ProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Request,
    Response,
    Sentinel,
)
from .framing import keep_alive, reason_phrase
from .headers import Headers
from .limits import DEFAULT_LIMITS, Limits
from .parser import RequestParser, ResponseParser
from .serialize import BodyWriter, serialize_request_head, serialize_response_head

__all__ = [
    "DEFAULT_LIMITS",
    "NEED_DATA",
    "PAUSED",
    "BodyWriter",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "Headers",
    "Limits",
    "ProtocolError",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "Sentinel",
    "keep_alive",
    "reason_phrase",
    "serialize_request_head",
    "serialize_response_head",
]

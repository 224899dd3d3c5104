"""The parsers: bytes in, events out, for each side of a connection.

Theory of operation: a parser is a buffer plus a state, driven by three verbs (the shape of
h11's ``Connection``): ``feed(bytes)`` and ``feed_eof()`` only store input, and
``next_event()`` does all the work, returning one event or a sentinel. Because parsing happens
only on demand, the caller controls memory: while it does not pull events, bytes just wait in
the buffer (``buffered`` tells how many), so it can stop reading from the socket.

The state is one of::

    HEAD    reading a start-line and header fields (HeadReader)
    BODY    a body reader chosen by the framing rules (RFC 9112 section 6.3) is running
    PAUSED  the connection stopped speaking HTTP/1.1; bytes stay buffered for the tunnel
    CLOSED  the peer closed at a message boundary: ConnectionClosed, for ever
    ERROR   a ProtocolError was raised; every later next_event() raises it again

A request parser pauses after a ``CONNECT`` head (RFC 9110 section 9.3.6: what follows is the
tunnel) and after the body of a request that asks to ``Upgrade`` (RFC 9110 section 7.8), until
``resume()`` says the origin refused. A response parser pauses after a ``101`` and after a
``2xx`` to ``CONNECT``. It needs to know the request method (``expect``): a response to
``HEAD`` has no body whatever its head says (RFC 9112 section 6.3, rule 1). Interim ``1xx``
responses (section 4, RFC 9110 section 15.2) are handed out and then the next head is read;
a ``1xx`` loses any ``Content-Length`` or ``Transfer-Encoding`` field, since it frames nothing.

Every error is a :class:`~proxy.http11.errors.ProtocolError`, whatever the input: requests
answer 400 (or 414, 431, 501, 505), responses 502.
"""

from __future__ import annotations

from collections import deque

from .errors import ProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Request,
    Response,
    Sentinel,
)
from .framing import request_framing, response_framing
from .headers import Headers
from .heads import HeadReader, parse_request_line, parse_status_line
from .limits import DEFAULT_LIMITS, Limits
from .readers import BodyReader, make_reader
from .receivebuffer import ReceiveBuffer

_HEAD, _BODY, _PAUSED, _CLOSED = "HEAD", "BODY", "PAUSED", "CLOSED"


class _Parser:
    """What both parsers share: the buffer, the EOF flag, the state and the body step."""

    _status = 400  # the status of every error from this side

    def __init__(self, limits: Limits, start_line_status: int, fields_status: int) -> None:
        self._limits = limits
        self._fields_status = fields_status
        self._buf = ReceiveBuffer()
        self._eof = False
        self._state = _HEAD
        self._error: ProtocolError | None = None
        self._reader: BodyReader | None = None
        self._head = HeadReader(
            start_line=True,
            max_start_line=limits.max_request_line,
            max_field_bytes=limits.max_header_bytes,
            max_fields=limits.max_header_fields,
            status=self._status,
            start_line_status=start_line_status,
            fields_status=fields_status,
        )

    def feed(self, data: bytes) -> None:
        """Buffer *data* received from the peer; call :meth:`next_event` to parse it."""
        if self._eof and data:
            raise RuntimeError("feed() after feed_eof()")
        self._buf.append(data)

    def feed_eof(self) -> None:
        """Note that the peer closed its sending side; nothing more will be fed."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """How many received bytes are buffered, not yet handed out as events."""
        return self._buf.size

    @property
    def head_started(self) -> bool:
        """Whether part of a head has arrived but not all of it.

        The bytes may still be buffered, or already consumed: complete field lines are read
        into the head as they arrive, so a head that stops at a line end leaves nothing
        buffered (``buffered == 0``) and is still unfinished. A head deadline must use this.
        """
        return self._state is _HEAD and (self._buf.size > 0 or self._head.started)

    def take_trailing_data(self) -> bytes:
        """Remove and return every buffered byte that was not parsed.

        Meant for use after :data:`~proxy.http11.events.PAUSED`: these are the first bytes of
        the tunnel, which the peer may send before it sees the answer. The parser stays paused.
        """
        self._head.reset()
        return self._buf.take_all()

    def next_event(self) -> Request | Response | Data | EndOfMessage | ConnectionClosed | Sentinel:
        """Return the next event, or :data:`~.events.NEED_DATA` or :data:`~.events.PAUSED`.

        :raises ProtocolError: the input breaks HTTP/1.1; it is raised again on every call.
        """
        if self._error is not None:
            raise self._error
        try:
            if self._state is not _BODY:
                return self._head_event()
            # Inline, not a helper: most events of a busy connection are body events.
            reader = self._reader
            assert reader is not None
            event = reader.read(self._buf)
            if event is None:
                if not self._eof:
                    return NEED_DATA
                event = reader.eof()
            if isinstance(event, EndOfMessage):
                self._reader = None
                self._state = self._after_body()
            return event
        except ProtocolError as error:
            self._error = error
            raise

    def _head_event(self) -> Request | Response | ConnectionClosed | Sentinel:
        if self._state is _PAUSED:
            return PAUSED
        if self._state is _CLOSED:
            return ConnectionClosed()
        if self._buf.size:  # an empty buffer holds no head: the usual case between requests
            head = self._head.read(self._buf)
            if head is not None:
                return self._head_done(*head)
        if not self._eof:
            return NEED_DATA
        if len(self._buf) or self._head.started:
            raise ProtocolError("connection closed inside a head", self._status)
        self._state = _CLOSED
        return ConnectionClosed()

    def _start_body(self, framing: int | str) -> None:
        self._reader = make_reader(framing, self._limits, self._status, self._fields_status)
        self._state = _BODY

    def _head_done(self, start: bytes, headers: Headers) -> Request | Response:
        raise NotImplementedError

    def _after_body(self) -> str:
        return _HEAD


class RequestParser(_Parser):
    """Parse the requests a client sends (server side of a connection).

    :param limits: size caps; a too long request-line answers 414, too many or too large
        header fields 431.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits, start_line_status=414, fields_status=431)
        self._upgrading = False

    def resume(self) -> None:
        """Leave :data:`~.events.PAUSED` and parse the next request (the upgrade was refused).

        :raises RuntimeError: the parser is not paused.
        """
        if self._state is not _PAUSED:
            raise RuntimeError("resume() while not paused")
        self._state = _HEAD

    def _head_done(self, start: bytes, headers: Headers) -> Request:
        method, target, version = parse_request_line(start)
        connection = headers.tokens("connection")
        framing = request_framing(method, version, headers)
        request = Request(method, target, version, headers, framing, connection)
        if method == "CONNECT":
            self._state = _PAUSED
            return request
        self._upgrading = "upgrade" in connection and "upgrade" in headers
        self._start_body(framing)
        return request

    def _after_body(self) -> str:
        return _PAUSED if self._upgrading else _HEAD


class ResponseParser(_Parser):
    """Parse the responses an origin server sends (client side of a connection).

    Every error, limits included, carries status 502 (Bad Gateway).

    :param limits: size caps on the status-line, header fields and trailers.
    """

    _status = 502

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits, start_line_status=502, fields_status=502)
        self._methods: deque[str] = deque()

    def expect(self, request_method: str) -> None:
        """Announce the method of the request the next response answers.

        Call it once per request, in request order (calls queue up, so requests may be
        pipelined). A response head arriving with no request announced is a 502.
        """
        self._methods.append(request_method)

    def _head_done(self, start: bytes, headers: Headers) -> Response:
        version, status, reason = parse_status_line(start)
        connection = headers.tokens("connection")
        if not self._methods:
            raise ProtocolError("response received with no request outstanding", 502)
        if status < 200:
            # A 1xx has no body (RFC 9112 section 6.3 rule 1), and a server must not send
            # Content-Length or Transfer-Encoding in one (RFC 9110 8.6, RFC 9112 6.1): fields
            # that frame nothing are dropped, not passed on for a client to misread.
            headers.remove("content-length")
            headers.remove("transfer-encoding")
        if status < 200 and status != 101:
            # An interim response: the final one follows.
            return Response(status, reason, version, headers, 0, connection)
        method = self._methods.popleft()
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            self._state = _PAUSED
            return Response(status, reason, version, headers, 0, connection)
        framing = response_framing(method, status, version, headers)
        self._start_body(framing)
        return Response(status, reason, version, headers, framing, connection)

"""Whatever the bytes and however they are split, a parser raises only ProtocolError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http11_requests import drive

from proxy.http11 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Limits,
    ProtocolError,
    RequestParser,
    ResponseParser,
)

# Pieces of HTTP, so that random input also reaches the deep states (bodies, chunks, trailers).
VOCABULARY = [
    b"GET / HTTP/1.1\r\n",
    b"POST /x HTTP/1.1\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Up\r\n",
    b"HTTP/1.0 204 \r\n",
    b"Host: h\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Connection: upgrade\r\n",
    b"Upgrade: x\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b";",
    b"0",
    b"5",
    b"f",
    b"0\r\n\r\n",
    b"3\r\nabc\r\n",
    b"X: 1\r\n",
    b"\x00",
    b"\xff",
    b"abc",
]
streams = st.lists(st.one_of(st.sampled_from(VOCABULARY), st.binary(max_size=8)), max_size=40)
limits = st.builds(
    Limits,
    max_request_line=st.integers(1, 64),
    max_header_bytes=st.integers(0, 128),
    max_header_fields=st.integers(0, 5),
    max_chunk_line=st.integers(0, 16),
    max_trailer_bytes=st.integers(0, 64),
)


def _pull(parser) -> bool:
    """Pull events until more input is needed; True when the parser is done."""
    for _ in range(10_000):
        try:
            event = parser.next_event()
        except ProtocolError:
            return True
        if event is NEED_DATA or event is PAUSED:
            return False
        if isinstance(event, ConnectionClosed):
            return True
    raise AssertionError("next_event() does not converge")


def _run(parser, pieces: list[bytes], eof: bool) -> None:
    for piece in pieces:
        parser.feed(piece)
        if _pull(parser):
            return
    if eof:
        parser.feed_eof()
        _pull(parser)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=streams, eof=st.booleans(), limits=st.one_of(st.just(Limits()), limits))
def test_request_parser_raises_only_protocol_error(pieces, eof, limits):
    _run(RequestParser(limits), pieces, eof)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=streams,
    eof=st.booleans(),
    limits=st.one_of(st.just(Limits()), limits),
    methods=st.lists(st.sampled_from(["GET", "HEAD", "CONNECT", "POST"]), max_size=4),
)
def test_response_parser_raises_only_protocol_error(pieces, eof, limits, methods):
    parser = ResponseParser(limits)
    for method in methods:
        parser.expect(method)
    _run(parser, pieces, eof)


@given(data=st.binary(max_size=300), eof=st.booleans())
def test_arbitrary_bytes(data, eof):
    _run(RequestParser(), [data], eof)
    parser = ResponseParser()
    parser.expect("GET")
    _run(parser, [data], eof)


@given(pieces=streams, cut=st.integers(0, 400))
def test_same_outcome_however_split(pieces, cut):
    """Same events (Data joined) and the same error for the whole stream and a cut stream."""
    data = b"".join(pieces)
    whole = drive(RequestParser(), [data])
    assert drive(RequestParser(), [data[:cut], data[cut:]]) == whole

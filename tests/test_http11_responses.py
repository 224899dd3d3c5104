"""Response parsing: framing by request method and status, every split, errors are 502."""

from __future__ import annotations

import pytest
from test_http11_requests import drive, splits

from proxy.http11 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    ProtocolError,
    Response,
    ResponseParser,
)

EOM = EndOfMessage()
CLOSED = ConnectionClosed()


def resp(status, reason, fields=(), version="HTTP/1.1"):
    return Response(status, reason, version, Headers(fields))


def parser_for(*methods: str) -> ResponseParser:
    parser = ResponseParser()
    for method in methods:
        parser.expect(method)
    return parser


CL5 = ("Content-Length", "5")

VALID = [
    (
        "identical Content-Length fields are folded into one",
        ["GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\ncontent-length: 5, 5\r\n\r\nhello",
        [resp(200, "OK", [CL5, ("X-A", "1")]), Data(b"hello"), EOM, CLOSED],
    ),
    (
        "identical Content-Length values in a HEAD answer are folded too",
        ["HEAD"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
        [resp(200, "OK", [CL5]), EOM, CLOSED],
    ),
    (
        "conflicting lengths in a 304 frame nothing and pass as they are",
        ["GET"],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        [resp(304, "Not Modified", [CL5, ("Content-Length", "6")]), EOM, CLOSED],
    ),
    (
        "framing fields of a 1xx frame nothing and are dropped",
        ["GET", "GET"],
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nContent-Length: 3\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        [
            resp(103, "Early Hints", [("Link", "</a>")]),
            resp(101, "Switching Protocols", [("Upgrade", "x")]),
            PAUSED,
        ],
    ),
    (
        "200 with Content-Length",
        ["GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        [resp(200, "OK", [CL5]), Data(b"hello"), EOM, CLOSED],
    ),
    (
        "HEAD: no body whatever the head says",
        ["HEAD", "GET"],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        [resp(200, "OK", [CL5]), EOM, resp(200, "OK", [("Content-Length", "0")]), EOM, CLOSED],
    ),
    (
        "204 and 304 have no body",
        ["GET", "GET"],
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        [
            resp(204, "No Content", [CL5]),
            EOM,
            resp(304, "Not Modified", [("Transfer-Encoding", "chunked")]),
            EOM,
            CLOSED,
        ],
    ),
    (
        "100 and 103 before the final response",
        ["POST"],
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        [
            resp(100, "Continue"),
            resp(103, "Early Hints", [("Link", "</a>")]),
            resp(200, "OK", [CL5]),
            Data(b"hello"),
            EOM,
            CLOSED,
        ],
    ),
    (
        "101 pauses",
        ["GET"],
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        [resp(101, "Switching Protocols", [("Upgrade", "websocket")]), PAUSED],
    ),
    (
        "200 to CONNECT pauses",
        ["CONNECT"],
        b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03",
        [resp(200, "Connection established"), PAUSED],
    ),
    (
        "407 to CONNECT has a body",
        ["CONNECT"],
        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 5\r\n\r\nhello",
        [resp(407, "Proxy Authentication Required", [CL5]), Data(b"hello"), EOM, CLOSED],
    ),
    (
        "close-delimited",
        ["GET"],
        b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it\r\n\r\nGET / HTTP/1.1",
        [
            resp(200, "OK", [("Server", "old")], "HTTP/1.0"),
            Data(b"all of it\r\n\r\nGET / HTTP/1.1"),
            EOM,
            CLOSED,
        ],
    ),
    (
        "chunked with trailers",
        ["GET"],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext\r\n world\r\n0\r\nExpires: never\r\n\r\n",
        [
            resp(200, "OK", [("Transfer-Encoding", "chunked")]),
            Data(b"hello world"),
            EndOfMessage(Headers([("Expires", "never")])),
            CLOSED,
        ],
    ),
    (
        "gzip, chunked is chunked",
        ["GET"],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
        [resp(200, "OK", [("Transfer-Encoding", "gzip, chunked")]), Data(b"zz"), EOM, CLOSED],
    ),
    (
        "TE gzip is close-delimited",
        ["GET"],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        [
            resp(200, "OK", [("Transfer-Encoding", "gzip")]),
            Data(b"5\r\nhello\r\n0\r\n\r\n"),
            EOM,
            CLOSED,
        ],
    ),
    (
        "empty reason, with and without its SP",
        ["GET", "GET"],
        b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\nHTTP/1.1 299\r\nContent-Length: 0\r\n\r\n",
        [
            resp(200, "", [("Content-Length", "0")]),
            EOM,
            resp(299, "", [("Content-Length", "0")]),
            EOM,
            CLOSED,
        ],
    ),
    ("EOF before any response", ["GET"], b"", [CLOSED]),
]


@pytest.mark.parametrize(("name", "methods", "data", "expected"), VALID, ids=[c[0] for c in VALID])
def test_valid_responses_any_split(name, methods, data, expected):
    for how, chunks in splits(data):
        assert drive(parser_for(*methods), chunks) == expected, how


def _head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


OK = b"HTTP/1.1 200 OK"
CHUNKED = b"Transfer-Encoding: chunked"

INVALID = [
    ("TE and CL", _head(OK, CHUNKED, b"Content-Length: 5") + b"0\r\n\r\n"),
    ("CL differing", _head(OK, b"Content-Length: 5, 6") + b"hello!"),
    ("CL +5", _head(OK, b"Content-Length: +5") + b"hello"),
    ("CL 0x5", _head(OK, b"Content-Length: 0x5") + b"hello"),
    ("TE in HTTP/1.0", _head(b"HTTP/1.0 200 OK", CHUNKED) + b"0\r\n\r\n"),
    ("TE chunked twice", _head(OK, b"Transfer-Encoding: chunked, chunked")),
    ("TE empty", _head(OK, b"Transfer-Encoding:")),
    ("chunk size g", _head(OK, CHUNKED) + b"g\r\n"),
    ("chunk not followed by CRLF", _head(OK, CHUNKED) + b"1\r\nxy\r\n"),
    ("obs-fold", _head(OK, b"X: a", b"\tb")),
    ("space before colon", _head(OK, b"Server : x")),
    ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"),
    ("HTTP/2.0", _head(b"HTTP/2.0 200 OK")),
    ("two-digit status", _head(b"HTTP/1.1 20 OK")),
    ("status below 100", _head(b"HTTP/1.1 099 Weird")),
    ("not a status-line", _head(b"<html>")),
    ("bare CR in reason", _head(b"HTTP/1.1 200 O\rK")),
    ("status-line too long", _head(b"HTTP/1.1 200 " + b"x" * 9000)),
    ("101 fields", _head(OK, *[b"X-%d: 1" % i for i in range(101)])),
    ("EOF inside head", b"HTTP/1.1 200 OK\r\n"),
    ("EOF inside CL body", _head(OK, b"Content-Length: 5") + b"hel"),
    ("EOF inside chunked body", _head(OK, CHUNKED) + b"5\r\nhello\r\n"),
]


@pytest.mark.parametrize(("name", "data"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_responses_any_split(name, data):
    expected = drive(parser_for("GET"), [data])
    assert expected[-1] == ("error", 502)
    for how, chunks in splits(data):
        assert drive(parser_for("GET"), chunks) == expected, how


def test_response_without_a_request_is_an_error():
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status == 502


def test_expect_once_per_response():
    parser = ResponseParser()
    parser.expect("HEAD")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert parser.next_event().status == 200
    assert parser.next_event() == EOM
    assert parser.next_event() is NEED_DATA
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert parser.next_event().status == 200
    assert parser.next_event() == Data(b"hello")
    assert parser.next_event() == EOM


def test_connect_response_hands_over_tunnel_bytes():
    parser = parser_for("CONNECT")
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\nserver hello")
    assert parser.next_event().status == 200
    assert parser.next_event() is PAUSED
    assert parser.take_trailing_data() == b"server hello"
    assert parser.next_event() is PAUSED


def test_close_delimited_body_flows_before_eof():
    parser = parser_for("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\nfirst")
    assert parser.next_event().status == 200
    assert parser.next_event() == Data(b"first")
    assert parser.next_event() is NEED_DATA
    parser.feed(b"second")
    assert parser.next_event() == Data(b"second")
    parser.feed_eof()
    assert parser.next_event() == EOM
    assert parser.next_event() == CLOSED

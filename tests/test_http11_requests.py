"""Request parsing: table-driven, every message split at every byte offset."""

from __future__ import annotations

import pytest

from proxy.http11 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    Limits,
    ProtocolError,
    Request,
    RequestParser,
)


def drive(parser, chunks, eof=True):
    """Feed *chunks*, pulling events after each; merge adjacent Data; record errors."""
    events: list = []

    def pull() -> bool:
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as error:
                events.append(("error", error.status))
                return True
            if event is NEED_DATA:
                return False
            if event is PAUSED:
                if not events or events[-1] is not PAUSED:
                    events.append(PAUSED)
                return False
            if isinstance(event, Data) and events and isinstance(events[-1], Data):
                events[-1] = Data(bytes(events[-1].data) + bytes(event.data))
            else:
                events.append(event)
            if isinstance(event, ConnectionClosed):
                return True

    for chunk in chunks:
        parser.feed(chunk)
        if pull():
            return events
    if eof:
        parser.feed_eof()
        pull()
    return events


def cut_points(data: bytes) -> list[int]:
    """Every offset of a short message; for a long one, those near a CR or LF and a sample."""
    if len(data) <= 4096:
        return list(range(1, len(data)))
    cuts = set(range(1, len(data), len(data) // 256))
    for index, byte in enumerate(data):
        if byte in b"\r\n":
            cuts.update(range(max(1, index - 2), min(len(data), index + 3)))
    return sorted(cuts)


def splits(data: bytes):
    """Cuts of *data* in two (see :func:`cut_points`), plus one byte at a time."""
    yield "whole", [data]
    for cut in cut_points(data):
        yield f"cut at {cut}", [data[:cut], data[cut:]]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]


def req(method, target, fields=(), version="HTTP/1.1"):
    return Request(method, target, version, Headers(fields))


HOST = [("Host", "example.com")]
EOM = EndOfMessage()
CLOSED = ConnectionClosed()

VALID = [
    (
        "simple GET",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        [req("GET", "/", HOST), EOM, CLOSED],
    ),
    (
        "empty lines before the request-line",
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        [req("GET", "/", HOST), EOM, CLOSED],
    ),
    (
        "absolute-form, HTTP/1.0 without Host",
        b"GET http://example.com/a?b=c HTTP/1.0\r\n\r\n",
        [req("GET", "http://example.com/a?b=c", version="HTTP/1.0"), EOM, CLOSED],
    ),
    (
        "asterisk-form",
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        [req("OPTIONS", "*", [("Host", "h")]), EOM, CLOSED],
    ),
    (
        "OWS trimmed, inner tab kept, obs-text, empty values",
        b"GET / HTTP/1.1\r\nHost:example.com\r\nA: \t x\ty \t\r\nB: caf\xe9\r\nC:\r\nD:  \r\n\r\n",
        [
            req(
                "GET",
                "/",
                [("Host", "example.com"), ("A", "x\ty"), ("B", "caf\xe9"), ("C", ""), ("D", "")],
            ),
            EOM,
            CLOSED,
        ],
    ),
    (
        "Content-Length body",
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        [req("POST", "/p", [("Host", "h"), ("Content-Length", "5")]), Data(b"hello"), EOM, CLOSED],
    ),
    (
        "Content-Length 0",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        [req("POST", "/", [("Host", "h"), ("Content-Length", "0")]), EOM, CLOSED],
    ),
    (
        "identical Content-Length values",
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
        [
            req("PUT", "/", [("Host", "h"), ("Content-Length", "3")]),  # folded into one field
            Data(b"abc"),
            EOM,
            CLOSED,
        ],
    ),
    (
        "chunked with extensions, upper-case hex, leading zeros and trailers",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b'5;name=value\r\nhello\r\n00A ; x ; y="a b"\r\n0123456789\r\n'
        b"0000000000000001\r\n!\r\n0\r\nX-Checksum: 1\r\nX-B: 2\r\n\r\n",
        [
            req("POST", "/", [("Host", "h"), ("Transfer-Encoding", "Chunked")]),
            Data(b"hello0123456789!"),
            EndOfMessage(Headers([("X-Checksum", "1"), ("X-B", "2")])),
            CLOSED,
        ],
    ),
    (
        "pipelined requests",
        b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
        b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nc\r\n0\r\n\r\n",
        [
            req("POST", "/1", [("Host", "h"), ("Content-Length", "2")]),
            Data(b"ab"),
            EOM,
            req("GET", "/2", [("Host", "h")]),
            EOM,
            req("POST", "/3", [("Host", "h"), ("Transfer-Encoding", "chunked")]),
            Data(b"c"),
            EOM,
            CLOSED,
        ],
    ),
    (
        "smuggling attempt stays body",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 42\r\n\r\n"
        b"GET /evil HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        [
            req("POST", "/", [("Host", "h"), ("Content-Length", "42")]),
            Data(b"GET /evil HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
            EOM,
            CLOSED,
        ],
    ),
    (
        "CONNECT pauses, no body parsed",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01",
        [req("CONNECT", "example.com:443", [("Host", "example.com:443")]), PAUSED],
    ),
    (
        "Upgrade pauses after the body",
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n\x81\x05hello",
        [
            req(
                "GET",
                "/ws",
                [("Host", "h"), ("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket")],
            ),
            EOM,
            PAUSED,
        ],
    ),
    (
        "Upgrade without Connection: upgrade does not pause",
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n",
        [req("GET", "/", [("Host", "h"), ("Upgrade", "h2c")]), EOM, CLOSED],
    ),
]


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[c[0] for c in VALID])
def test_valid_requests_any_split(name, data, expected):
    for how, chunks in splits(data):
        assert drive(RequestParser(), chunks) == expected, how


def _head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


POST = b"POST / HTTP/1.1"
H = b"Host: h"
CHUNKED = b"Transfer-Encoding: chunked"


def _chunked(body: bytes) -> bytes:
    return _head(POST, H, CHUNKED) + body


INVALID = [
    ("TE and CL", _head(POST, H, CHUNKED, b"Content-Length: 3") + b"0\r\n\r\n", 400),
    ("CL list differing", _head(POST, H, b"Content-Length: 5, 6") + b"hello!", 400),
    ("CL fields differing", _head(POST, H, b"Content-Length: 5", b"Content-Length: 6"), 400),
    ("CL +5", _head(POST, H, b"Content-Length: +5") + b"hello", 400),
    ("CL 0x5", _head(POST, H, b"Content-Length: 0x5") + b"hello", 400),
    ("CL -1", _head(POST, H, b"Content-Length: -1"), 400),
    ("CL empty", _head(POST, H, b"Content-Length:"), 400),
    ("CL empty list item", _head(POST, H, b"Content-Length: 5,"), 400),
    ("CL 1 2", _head(POST, H, b"Content-Length: 1 2"), 400),
    ("CL superscript digit", _head(POST, H, b"Content-Length: \xb2"), 400),
    ("CL 19 digits", _head(POST, H, b"Content-Length: " + b"1" * 19), 400),
    ("TE gzip, chunked", _chunked(b"0\r\n\r\n").replace(b"chunked", b"gzip, chunked"), 501),
    ("TE chunked twice", _head(POST, H, b"Transfer-Encoding: chunked, chunked"), 400),
    ("TE chunked in two fields", _head(POST, H, CHUNKED, CHUNKED), 400),
    ("TE chunked not last", _head(POST, H, b"Transfer-Encoding: chunked, gzip"), 400),
    ("TE gzip alone", _head(POST, H, b"Transfer-Encoding: gzip"), 400),
    ("TE unknown", _head(POST, H, b"Transfer-Encoding: x-custom"), 400),
    ("TE empty", _head(POST, H, b"Transfer-Encoding: "), 400),
    ("TE in HTTP/1.0", _head(b"POST / HTTP/1.0", CHUNKED) + b"0\r\n\r\n", 400),
    ("obs-fold", _head(b"GET / HTTP/1.1", H, b"X: a", b" b"), 400),
    ("whitespace after request-line", _head(b"GET / HTTP/1.1", b" Host: h"), 400),
    ("space before colon", _head(b"GET / HTTP/1.1", b"Host : x"), 400),
    ("tab before colon", _head(b"GET / HTTP/1.1", b"Host\t: x"), 400),
    ("no colon", _head(b"GET / HTTP/1.1", H, b"Nocolon"), 400),
    ("empty field name", _head(b"GET / HTTP/1.1", H, b": x"), 400),
    ("name not a token", _head(b"GET / HTTP/1.1", H, b"X(y): 1"), 400),
    ("bare CR in value", _head(b"GET / HTTP/1.1", H, b"X: a\rb"), 400),
    ("NUL in value", _head(b"GET / HTTP/1.1", H, b"X: a\x00b"), 400),
    ("DEL in value", _head(b"GET / HTTP/1.1", H, b"X: a\x7fb"), 400),
    ("bare LF ends request-line", b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400),
    ("bare LF ends field line", b"GET / HTTP/1.1\r\nHost: h\n\r\n", 400),
    ("bare LF ends head", b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400),
    ("bare LF empty line before request", b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("bare CR in request-line", _head(b"GET /\r HTTP/1.1", H), 400),
    ("HTTP/2.0", _head(b"GET / HTTP/2.0", H), 505),
    ("HTTP/0.9", _head(b"GET / HTTP/0.9", H), 505),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("lower-case version", _head(b"GET / http/1.1", H), 400),
    ("version garbage", _head(b"GET / HTTP/1.1x", H), 400),
    ("double space", _head(b"GET  / HTTP/1.1", H), 400),
    ("no target", _head(b"GET HTTP/1.1", H), 400),
    ("method not a token", _head(b"G(T / HTTP/1.1", H), 400),
    ("non-ASCII target", _head(b"GET /\xe9 HTTP/1.1", H), 400),
    ("HTTP/1.1 without Host", _head(b"GET / HTTP/1.1", b"X: 1"), 400),
    ("two Host fields", _head(b"GET / HTTP/1.1", H, b"Host: other"), 400),
    ("two Host fields in HTTP/1.0", _head(b"GET / HTTP/1.0", H, H), 400),
    ("chunk size g", _chunked(b"g\r\n"), 400),
    ("chunk size -1", _chunked(b"-1\r\n"), 400),
    ("chunk size 0x10", _chunked(b"0x10\r\n"), 400),
    ("chunk size +1", _chunked(b"+1\r\nx\r\n"), 400),
    ("chunk size empty", _chunked(b"\r\n"), 400),
    ("chunk size leading space", _chunked(b" 1\r\nx\r\n"), 400),
    ("chunk size 17 hex digits", _chunked(b"0" * 16 + b"1\r\nx\r\n"), 400),
    ("chunk not followed by CRLF", _chunked(b"5\r\nhelloX\r\n0\r\n\r\n"), 400),
    ("chunk followed by CR only", _chunked(b"5\r\nhello\rX0\r\n\r\n"), 400),
    ("chunk followed by bare LF", _chunked(b"5\r\nhello\n0\r\n\r\n"), 400),
    ("chunk-size line bare LF", _chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    ("chunk ext line too long", _chunked(b"1;" + b"x" * 4100 + b"\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk ext with bare CR", _chunked(b"1;a\rb\r\nx\r\n0\r\n\r\n"), 400),
    ("trailer obs-fold", _chunked(b"0\r\nX: 1\r\n 2\r\n\r\n"), 400),
    ("trailer bare LF", _chunked(b"0\r\nX: 1\n\r\n"), 400),
    ("request-line 9000 bytes", _head(b"GET /" + b"a" * 9000 + b" HTTP/1.1", H), 414),
    ("101 fields", _head(b"GET / HTTP/1.1", H, *[b"X-%d: 1" % i for i in range(100)]), 431),
    ("70 KiB of headers", _head(b"GET / HTTP/1.1", H, *[b"X: " + b"a" * 1024] * 70), 431),
    ("EOF inside head", b"GET / HTTP/1.1\r\nHost: h\r\n", 400),
    ("EOF inside request-line", b"GET / HTT", 400),
    ("EOF after a lone CR", b"\r", 400),
    ("EOF inside CL body", _head(POST, H, b"Content-Length: 5") + b"hel", 400),
    ("EOF inside chunked body", _chunked(b"5\r\nhel"), 400),
    ("EOF inside trailers", _chunked(b"0\r\nX: 1\r\n"), 400),
]


@pytest.mark.parametrize(("name", "data", "status"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_requests_any_split(name, data, status):
    expected = drive(RequestParser(), [data])
    assert expected[-1] == ("error", status)
    for how, chunks in splits(data):
        assert drive(RequestParser(), chunks) == expected, how


def test_too_long_request_line_detected_before_crlf():
    parser = RequestParser()
    parser.feed(b"GET /" + b"a" * 8187)  # 8192 bytes: could still end in a CR
    assert parser.next_event() is NEED_DATA
    parser.feed(b"\r")  # 8193 bytes, the last a CR: still possibly a line of exactly 8192
    assert parser.next_event() is NEED_DATA
    parser.feed(b"a")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status == 414


def test_request_line_limit_is_exact():
    limits = Limits(max_request_line=14)
    ok = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"  # request-line of exactly 14 bytes
    for how, chunks in splits(ok):
        assert drive(RequestParser(limits), chunks)[-1] == CLOSED, how
    too_long = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    for how, chunks in splits(too_long):
        assert drive(RequestParser(limits), chunks) == [("error", 414)], how


def test_header_bytes_limit_is_exact():
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: 12\r\n\r\n"  # 9 + 7 field bytes
    for how, chunks in splits(data):
        assert drive(RequestParser(Limits(max_header_bytes=16)), chunks)[-1] == CLOSED, how
        assert drive(RequestParser(Limits(max_header_bytes=15)), chunks) == [("error", 431)]


def test_field_count_limit_is_exact():
    data = _head(b"GET / HTTP/1.1", H, b"A: 1", b"B: 2")
    assert drive(RequestParser(Limits(max_header_fields=3)), [data])[-1] == CLOSED
    assert drive(RequestParser(Limits(max_header_fields=2)), [data]) == [("error", 431)]


def test_huge_header_detected_before_line_end():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 70000)
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status == 431


def test_long_chunk_line_detected_before_line_end():
    parser = RequestParser()
    parser.feed(_chunked(b"1;" + b"x" * 5000))
    assert isinstance(parser.next_event(), Request)
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status == 400


def test_trailer_limit():
    data = _chunked(b"0\r\nX: 123456\r\n\r\n")
    assert drive(RequestParser(Limits(max_trailer_bytes=11)), [data])[-1] == CLOSED
    assert drive(RequestParser(Limits(max_trailer_bytes=10)), [data])[-1] == ("error", 431)


def test_pipelined_requests_in_one_feed():
    parser = RequestParser()
    parser.feed(_head(b"GET /a HTTP/1.1", H) + _head(b"GET /b HTTP/1.1", H))
    assert parser.next_event().target == "/a"
    assert parser.next_event() == EOM
    assert parser.next_event().target == "/b"
    assert parser.next_event() == EOM
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 0


def test_connect_hands_over_early_tunnel_bytes():
    parser = RequestParser()
    parser.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03")
    assert parser.next_event().method == "CONNECT"
    assert parser.next_event() is PAUSED
    parser.feed(b"\x01rest")
    parser.feed_eof()
    assert parser.next_event() is PAUSED
    assert parser.buffered == 7
    assert parser.take_trailing_data() == b"\x16\x03\x01rest"
    assert parser.buffered == 0
    assert parser.next_event() is PAUSED


def test_refused_upgrade_resumes_with_the_next_request():
    parser = RequestParser()
    parser.feed(
        _head(
            b"POST /up HTTP/1.1", H, b"Connection: Upgrade", b"Upgrade: foo", b"Content-Length: 2"
        )
        + b"hi"
        + _head(b"GET /next HTTP/1.1", H)
    )
    assert parser.next_event().target == "/up"
    assert parser.next_event() == Data(b"hi")
    assert parser.next_event() == EOM
    assert parser.next_event() is PAUSED
    assert parser.next_event() is PAUSED
    parser.resume()
    assert parser.next_event().target == "/next"
    assert parser.next_event() == EOM
    with pytest.raises(RuntimeError):
        parser.resume()


def test_accepted_upgrade_takes_the_trailing_bytes():
    parser = RequestParser()
    parser.feed(_head(b"GET / HTTP/1.1", H, b"Connection: upgrade", b"Upgrade: ws") + b"xyz")
    assert isinstance(parser.next_event(), Request)
    assert parser.next_event() == EOM
    assert parser.next_event() is PAUSED
    assert parser.take_trailing_data() == b"xyz"
    assert parser.next_event() is PAUSED


def test_errors_are_sticky_and_misuse_raises():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/9.9\r\n\r\n")
    with pytest.raises(ProtocolError) as first:
        parser.next_event()
    with pytest.raises(ProtocolError) as second:
        parser.next_event()
    assert first.value is second.value and first.value.status == 505
    parser = RequestParser()
    parser.feed_eof()
    assert parser.next_event() == CLOSED
    assert parser.next_event() == CLOSED
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


def test_large_body_is_passed_through_without_copying():
    parser = RequestParser()
    parser.feed(_head(POST, H, b"Content-Length: 3000000"))
    assert isinstance(parser.next_event(), Request)
    assert parser.next_event() is NEED_DATA
    block = bytes(1_000_000)
    for _ in range(3):
        parser.feed(block)
        assert parser.next_event().data is block
    assert parser.next_event() == EOM


def test_body_is_handed_out_before_it_is_complete():
    parser = RequestParser()
    parser.feed(_chunked(b"a\r\n01234"))
    assert isinstance(parser.next_event(), Request)
    assert parser.next_event() == Data(b"01234")
    assert parser.next_event() is NEED_DATA


def test_head_started_counts_lines_already_read():
    parser = RequestParser()
    assert not parser.head_started
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 0  # the complete lines were consumed into the head
    assert parser.head_started
    parser.feed(b"X-A: 1")
    assert parser.next_event() is NEED_DATA and parser.head_started
    parser.feed(b"\r\n\r\n")
    assert isinstance(parser.next_event(), Request)
    assert not parser.head_started
    assert isinstance(parser.next_event(), EndOfMessage)
    parser.feed(b"G")
    assert parser.next_event() is NEED_DATA and parser.head_started

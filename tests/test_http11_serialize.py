"""Serialising heads and bodies, keep-alive and reason phrases; round trips through a parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_http11_requests import drive

from proxy.http11 import (
    BodyWriter,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    keep_alive,
    reason_phrase,
    serialize_request_head,
    serialize_response_head,
)


def test_request_head():
    headers = Headers([("Host", "example.com"), ("X-A", "1")])
    assert serialize_request_head("GET", "/a?b", headers) == (
        b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n"
    )
    assert serialize_request_head("GET", "/", Headers(), "HTTP/1.0") == b"GET / HTTP/1.0\r\n\r\n"


def test_response_head():
    headers = Headers([("Content-Length", "0")])
    assert serialize_response_head(404, "Not Found", headers) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    )
    assert serialize_response_head(299, "", Headers(), "HTTP/1.0") == b"HTTP/1.0 299 \r\n\r\n"
    assert serialize_response_head(200, "caf\xe9", Headers()) == b"HTTP/1.1 200 caf\xe9\r\n\r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: serialize_request_head("GET", "/", Headers([("X", "a\r\nInjected: 1")])),
        lambda: serialize_request_head("GET", "/", Headers([("X", "a\x00")])),
        lambda: serialize_request_head("GET", "/", Headers([("X Y", "1")])),
        lambda: serialize_request_head("GET", "/", Headers([("", "1")])),
        lambda: serialize_request_head("GE T", "/", Headers()),
        lambda: serialize_request_head("GET", "/ HTTP/1.1\r\n", Headers()),
        lambda: serialize_request_head("GET", "", Headers()),
        lambda: serialize_request_head("GET", "/", Headers(), "HTTP/1.1\r\n"),
        lambda: serialize_response_head(200, "OK\r\nX: 1", Headers()),
        lambda: serialize_response_head(42, "", Headers()),
        lambda: serialize_response_head(1000, "", Headers()),
        lambda: BodyWriter(True).end(Headers([("X", "\n")])),
    ],
)
def test_serializer_refuses_framing_breakers(call):
    with pytest.raises(ValueError):
        call()


def test_chunked_writer():
    writer = BodyWriter(chunked=True)
    assert writer.write(b"hello") == b"5\r\nhello\r\n"
    assert writer.write(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert writer.write(b"") == b""
    assert writer.end() == b"0\r\n\r\n"
    with pytest.raises(RuntimeError):
        writer.write(b"more")
    with pytest.raises(RuntimeError):
        writer.end()


def test_chunked_writer_trailers():
    writer = BodyWriter(chunked=True)
    assert writer.end(Headers([("X-Sum", "abc")])) == b"0\r\nX-Sum: abc\r\n\r\n"


def test_identity_writer():
    writer = BodyWriter(chunked=False)
    assert writer.write(b"hello") == b"hello"
    assert writer.write(b"") == b""
    assert writer.end(Headers([("X-Dropped", "1")])) == b""


@pytest.mark.parametrize(
    ("version", "fields", "expected"),
    [
        ("HTTP/1.1", [], True),
        ("HTTP/1.1", [("Connection", "close")], False),
        ("HTTP/1.1", [("connection", "Keep-Alive, CLOSE")], False),
        ("HTTP/1.1", [("Connection", "upgrade")], True),
        ("HTTP/1.0", [], False),
        ("HTTP/1.0", [("Connection", "keep-alive")], True),
        ("HTTP/1.0", [("Connection", "Keep-Alive"), ("Connection", "close")], False),
        ("HTTP/0.9", [("Connection", "keep-alive")], False),
    ],
)
def test_keep_alive(version, fields, expected):
    assert keep_alive(version, Headers(fields)) is expected


def test_reason_phrase():
    assert reason_phrase(200) == "OK"
    assert reason_phrase(404) == "Not Found"
    assert reason_phrase(502) == "Bad Gateway"
    assert reason_phrase(599) == ""


TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
RESERVED = {"host", "content-length", "transfer-encoding", "upgrade", "connection"}
tokens = st.text(TCHAR, min_size=1, max_size=12)
names = tokens.filter(lambda name: name.lower() not in RESERVED)
values = st.text("".join(map(chr, [9, *range(0x20, 0x7F), *range(0x80, 0x100)])), max_size=30).map(
    lambda value: value.strip(" \t")
)
fields = st.lists(st.tuples(names, values), max_size=8)
targets = st.text("".join(map(chr, range(0x21, 0x7F))), min_size=1, max_size=40)


def _encode(writer: BodyWriter, body: bytes, cuts: list[int], trailers: Headers) -> bytes:
    pieces, start = [], 0
    for cut in sorted(cut % (len(body) + 1) for cut in cuts):
        pieces.append(writer.write(body[start:cut]))
        start = cut
    pieces.append(writer.write(body[start:]))
    return b"".join(pieces) + writer.end(trailers)


def _split(wire: bytes, cuts: list[int]) -> list[bytes]:
    offsets = sorted({cut % (len(wire) + 1) for cut in cuts} | {0, len(wire)})
    return [wire[a:b] for a, b in zip(offsets, offsets[1:], strict=False)]


@given(
    method=tokens.filter(lambda method: method != "CONNECT"),
    target=targets,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    extra=fields,
    body=st.binary(max_size=200),
    chunked=st.booleans(),
    trailer_fields=fields,
    body_cuts=st.lists(st.integers(0, 1000), max_size=5),
    wire_cuts=st.lists(st.integers(0, 10000), max_size=6),
)
def test_request_round_trip(
    method, target, version, extra, body, chunked, trailer_fields, body_cuts, wire_cuts
):
    chunked = chunked and version == "HTTP/1.1"
    headers = Headers([("Host", "example.com"), *extra])
    headers.add(
        *(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body))))
    )
    trailers = Headers(trailer_fields if chunked else [])
    wire = serialize_request_head(method, target, headers, version)
    wire += _encode(BodyWriter(chunked), body, body_cuts, trailers)
    expected = [Request(method, target, version, headers)]
    expected += [Data(body)] if body else []
    expected += [EndOfMessage(trailers), ConnectionClosed()]
    assert drive(RequestParser(), _split(wire, wire_cuts)) == expected


@given(
    status=st.integers(200, 599).filter(lambda status: status not in (204, 304)),
    reason=values,
    extra=fields,
    body=st.binary(max_size=200),
    framing=st.sampled_from(["length", "chunked", "close"]),
    trailer_fields=fields,
    body_cuts=st.lists(st.integers(0, 1000), max_size=5),
    wire_cuts=st.lists(st.integers(0, 10000), max_size=6),
)
def test_response_round_trip(
    status, reason, extra, body, framing, trailer_fields, body_cuts, wire_cuts
):
    headers = Headers(extra)
    if framing == "length":
        headers.add("Content-Length", str(len(body)))
    elif framing == "chunked":
        headers.add("Transfer-Encoding", "chunked")
    trailers = Headers(trailer_fields if framing == "chunked" else [])
    wire = serialize_response_head(status, reason, headers)
    wire += _encode(BodyWriter(framing == "chunked"), body, body_cuts, trailers)
    parser = ResponseParser()
    parser.expect("GET")
    expected = [Response(status, reason, "HTTP/1.1", headers)]
    expected += [Data(body)] if body else []
    expected += [EndOfMessage(trailers), ConnectionClosed()]
    assert drive(parser, _split(wire, wire_cuts)) == expected


def test_fold_keeps_the_first_fields_place_and_name():
    headers = Headers([("content-length", "5"), ("X", "1"), ("Content-Length", "5, 5"), ("Y", "2")])
    headers.fold("Content-Length", "5")
    assert list(headers) == [("content-length", "5"), ("X", "1"), ("Y", "2")]
    assert headers.get_all("CONTENT-LENGTH") == ["5"]
    headers.fold("Z", "3")
    assert list(headers)[-1] == ("Z", "3")

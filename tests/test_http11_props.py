"""Properties of the parser that the fuzz and round-trip tests do not already state.

``test_http11_fuzz.py`` shows that any bytes raise only ProtocolError, and
``test_http11_serialize.py`` that one valid message round-trips. Here: a defect injected into a
valid head is always refused (400 for requests, 502 for responses) before any event escapes;
any mix of ``Transfer-Encoding`` and ``Content-Length`` is refused; a body never yields a
request, whatever it holds; pipelined requests come out one for one; and the size limits give
the same status however the input is split (RFC 9112 sections 2.2, 5, 6.3 and 11.2). And the
request target: any text is either refused with a ProtocolError or gives a target every later
layer (blocklist, cache key, the URL forwarded) takes as it is.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from test_http11_fuzz import VOCABULARY
from test_http11_requests import drive
from test_http11_serialize import _split, fields, names

from proxy.blocklist import normalize_host, parse
from proxy.cache.store import normalize_url
from proxy.http11 import (
    BodyWriter,
    Data,
    Headers,
    Limits,
    ProtocolError,
    Request,
    RequestParser,
    ResponseParser,
    serialize_request_head,
)
from proxy.target import parse_target

cuts = st.lists(st.integers(0, 10_000), max_size=6)
# What a request-line lets through as a target (heads.py: VCHAR only).
ASCII_TARGET = "".join(map(chr, range(0x21, 0x7F)))
# A blocklist with a rule of every kind, so matching parses the host the way it does in use.
CATCH_ALL_RULES = parse("ads.example\n10.0.0.0/8\n::1\n=exact.example\nexample.org/p\n")

# Defects a smuggler relies on; each alone must make the head invalid.
DEFECTS = [b"\x00", b"\r", b"\n", b"\x0b", b"\x7f", b"\r\n ", b"\r\n\t"]


@settings(max_examples=200)
@given(
    extra=fields,
    index=st.integers(0, 1000),
    defect=st.sampled_from(DEFECTS),
    at=st.integers(0, 100),
    wire_cuts=cuts,
)
def test_defect_in_a_field_value_is_always_refused(extra, index, defect, at, wire_cuts):
    names_values = [("Host", "h"), *extra, ("X-Target", "value")]
    name, value = names_values[index % len(names_values)]
    value = value[: at % (len(value) + 1)] + "\0" + value[at % (len(value) + 1) :]
    names_values[index % len(names_values)] = (name, value)
    head = b"GET / HTTP/1.1\r\n" + Headers(names_values).to_bytes() + b"\r\n"
    head = head.replace(b"\0", defect)
    events = drive(RequestParser(), _split(head, wire_cuts))
    assert events == [("error", 400)]
    parser = ResponseParser()
    parser.expect("GET")
    response = head.replace(b"GET / HTTP/1.1", b"HTTP/1.1 200 OK", 1)
    assert drive(parser, _split(response, wire_cuts)) == [("error", 502)]


@given(name=names, wire_cuts=cuts, space=st.sampled_from([" ", "\t", "  "]))
def test_whitespace_before_the_colon_is_always_refused(name, wire_cuts, space):
    head = f"GET / HTTP/1.1\r\nHost: h\r\n{name}{space}: v\r\n\r\n".encode()
    assert drive(RequestParser(), _split(head, wire_cuts)) == [("error", 400)]


framing_fields = st.lists(
    st.tuples(
        st.sampled_from(
            ["Transfer-Encoding", "transfer-encoding", "Content-Length", "CONTENT-LENGTH"]
        ),
        st.sampled_from(
            ["chunked", "gzip, chunked", "chunked, chunked", "identity", "5", "0", "5, 5"]
        ),
    ),
    min_size=1,
    max_size=4,
).filter(lambda fs: {"transfer-encoding", "content-length"} <= {n.lower() for n, _ in fs})


@given(framing=framing_fields, wire_cuts=cuts)
def test_transfer_encoding_with_content_length_is_always_refused(framing, wire_cuts):
    head = serialize_request_head("POST", "/", Headers([("Host", "h"), *framing]))
    events = drive(RequestParser(), _split(head + b"5\r\nhello\r\n0\r\n\r\n", wire_cuts))
    assert len(events) == 1 and events[0][0] == "error" and events[0][1] in (400, 501)


@given(
    pieces=st.lists(st.sampled_from(VOCABULARY), max_size=30),
    chunked=st.booleans(),
    wire_cuts=cuts,
)
def test_a_body_never_yields_a_request(pieces, chunked, wire_cuts):
    body = b"".join(pieces)
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body)))
    wire = serialize_request_head("POST", "/", Headers([("Host", "h"), framing]))
    writer = BodyWriter(chunked)
    wire += writer.write(body) + writer.end()
    events = drive(RequestParser(), _split(wire, wire_cuts))
    assert sum(isinstance(event, Request) for event in events) == 1
    assert b"".join(e.data for e in events if isinstance(e, Data)) == body


@given(
    bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=5),
    chunked=st.lists(st.booleans(), min_size=5, max_size=5),
    wire_cuts=cuts,
)
def test_pipelined_requests_come_out_one_for_one(bodies, chunked, wire_cuts):
    wire = b""
    for number, body in enumerate(bodies):
        framing = (
            ("Transfer-Encoding", "chunked")
            if chunked[number]
            else ("Content-Length", str(len(body)))
        )
        wire += serialize_request_head("POST", f"/{number}", Headers([("Host", "h"), framing]))
        writer = BodyWriter(chunked[number])
        wire += writer.write(body) + writer.end()
    events = drive(RequestParser(), _split(wire, wire_cuts))
    targets = [event.target for event in events if isinstance(event, Request)]
    assert targets == [f"/{number}" for number in range(len(bodies))]


@given(
    line=st.integers(1, 64),
    over=st.integers(1, 50),
    terminated=st.booleans(),
    wire_cuts=cuts,
)
def test_request_line_limit_gives_414_however_split(line, over, terminated, wire_cuts):
    target = "/" + "a" * (line + over)
    wire = f"GET {target} HTTP/1.1".encode() + (b"\r\nHost: h\r\n\r\n" if terminated else b"")
    limits = Limits(max_request_line=line)
    events = drive(RequestParser(limits), _split(wire, wire_cuts), eof=terminated)
    assert events == [("error", 414)]


@given(size=st.integers(0, 200), over=st.integers(1, 50), wire_cuts=cuts)
def test_header_limit_gives_431_however_split(size, over, wire_cuts):
    value = "v" * (size + over)
    wire = f"GET / HTTP/1.1\r\nX: {value}\r\n\r\n".encode()
    limits = Limits(max_header_bytes=size + 2)  # "X: " + value + CRLF is always larger
    assert drive(RequestParser(limits), _split(wire, wire_cuts)) == [("error", 431)]


# -- request targets (proxy.target): whatever the text, a ProtocolError or a sound Target -------

AUTHORITY_PIECES = [
    "127.0.0.1",
    "example.com",
    "a",
    ".",
    ":",
    "80",
    "0",
    "65536",
    "[",
    "]",
    "::1",
    "::ffff:1.2.3.4",
    "%25eth0",
    "@",
    "/",
    "?",
    "#",
    "0x7f",
    "0177",
    "2130706433",
    "_",
    "-",
    "x" * 64,
    "\\",
]
authorities = st.lists(
    st.one_of(st.sampled_from(AUTHORITY_PIECES), st.text(ASCII_TARGET, max_size=4)), max_size=8
).map("".join)


def _check_target(method: str, text: str) -> None:
    """A target is refused with ProtocolError only; an accepted one is sound for every layer."""
    try:
        target = parse_target(method, text)
    except ProtocolError as exc:
        assert 400 <= exc.status < 600
        return
    assert target.host and 0 < target.port < 65536
    if ":" in target.host:
        ipaddress.IPv6Address(target.host)  # only an IPv6 literal holds a colon
    # Every layer the host reaches next takes it without an exception of its own.
    assert normalize_host(target.host) == target.host
    CATCH_ALL_RULES.match(target.host, target.path or None, target.port, target.scheme)
    normalize_url(target.url)
    if method != "CONNECT":
        # What the proxy forwards and caches under parses back to the same target.
        assert parse_target(method, target.url) == target
        assert urlsplit(target.url).port in (target.port, None)


@settings(max_examples=500)
@given(authority=authorities, path=st.sampled_from(["", "/", "/a?b", "?q", "#f", "/x#y"]))
def test_absolute_form_target_is_refused_or_sound(authority, path):
    _check_target("GET", f"http://{authority}{path}")


@settings(max_examples=300)
@given(authority=authorities)
def test_authority_form_target_is_refused_or_sound(authority):
    _check_target("CONNECT", authority)


@given(text=st.text(ASCII_TARGET, min_size=1, max_size=60))
def test_any_request_target_text_is_refused_or_sound(text):
    for method in ("GET", "CONNECT"):
        _check_target(method, text)

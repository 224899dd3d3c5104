"""Range requests from a complete stored body (RFC 9110 section 14, If-Range section 13.1.5)."""

import re

import pytest
from cache_helpers import T0, H
from hypothesis import given
from hypothesis import strategies as st

from proxy.cache.directives import format_http_date
from proxy.cache.ranges import (
    MAX_PARTS,
    answer_range,
    coalesce,
    if_range_holds,
    parse_range,
    satisfiable_ranges,
)

BODY = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
LM = format_http_date(T0 - 3600)
STORED = H(
    ("Content-Type", "application/octet-stream"),
    ("ETag", '"v1"'),
    ("Last-Modified", LM),
    ("Date", format_http_date(T0)),
    ("Content-Length", str(len(BODY))),
)


@pytest.mark.parametrize(
    ("value", "specs"),
    [
        ("bytes=0-499", [(0, 499)]),  # RFC 9110 §14.1.2 int-range
        ("bytes=500-", [(500, None)]),  # open-ended
        ("bytes=-200", [(None, 200)]),  # suffix-range
        ("BYTES=1-2", [(1, 2)]),  # range units are case-insensitive (§14.1)
        ("bytes=0-0, -1", [(0, 0), (None, 1)]),
        ("bytes= 1-2 ,, 4-5 ", [(1, 2), (4, 5)]),  # list OWS and empty elements (§5.6.1)
        ("bytes=500-100", None),  # last < first: invalid (§14.1.1)
        ("bytes=", None),
        ("bytes=a-b", None),
        ("bytes=1-2-3", None),
        ("bytes=--5", None),
        ("bytes=+1-2", None),
        ("items=0-5", None),  # a unit we do not know
        ("0-5", None),
        ("bytes 0-5", None),
    ],
)
def test_parse_range(value, specs):
    """RFC 9110 §14.1.2: ranges-specifier = range-unit "=" range-set."""
    assert parse_range(value) == specs


@pytest.mark.parametrize(
    ("specs", "length", "ranges"),
    [
        ([(0, 499)], 1000, [(0, 499)]),
        ([(0, 5000)], 1000, [(0, 999)]),  # last-pos past the end is clipped (§14.1.2)
        ([(999, None)], 1000, [(999, 999)]),
        ([(1000, None)], 1000, []),  # first-pos at the length: unsatisfiable
        ([(None, 200)], 1000, [(800, 999)]),
        ([(None, 5000)], 1000, [(0, 999)]),  # a suffix longer than the body: all of it
        ([(None, 0)], 1000, []),  # a zero suffix is unsatisfiable
        ([(None, 5)], 0, []),  # nothing in an empty body is satisfiable
        ([(5, 9), (2000, None)], 1000, [(5, 9)]),
    ],
)
def test_satisfiable_ranges(specs, length, ranges):
    """RFC 9110 §14.1.2-14.1.3: clipped to the current length; the rest is unsatisfiable."""
    assert satisfiable_ranges(specs, length) == ranges


def test_coalesce_merges_overlaps_and_small_gaps_in_any_order():
    """RFC 9110 §14.6: a server MAY coalesce overlapping or nearby ranges, whatever the order."""
    assert coalesce([(10, 20), (0, 15)]) == [(0, 20)]
    assert coalesce([(0, 9), (10, 19)], gap=0) == [(0, 19)]  # adjacent
    assert coalesce([(0, 9), (11, 19)], gap=0) == [(0, 9), (11, 19)]
    assert coalesce([(0, 9), (60, 69)], gap=80) == [(0, 69)]
    assert coalesce([(0, 0)] * 1000) == [(0, 0)]  # §17.15: many overlaps cost nothing


@pytest.mark.parametrize(
    ("if_range", "holds"),
    [
        ('"v1"', True),  # strong comparison (RFC 9110 §8.8.3.2)
        ('"v2"', False),
        ('W/"v1"', False),  # a weak tag never matches in If-Range (§13.1.5)
        (LM, True),  # a date equal to a strong Last-Modified
        (format_http_date(T0 - 3599), False),
        ("not a date", False),
    ],
)
def test_if_range(if_range, holds):
    """RFC 9110 §13.1.5: entity-tag by strong comparison, or the exact strong Last-Modified."""
    assert if_range_holds(if_range, STORED) is holds


def test_if_range_date_needs_a_strong_last_modified():
    """RFC 9110 §8.8.2.2: Last-Modified less than a second before Date is weak."""
    same_second = H(("Last-Modified", LM), ("Date", LM))
    assert not if_range_holds(LM, same_second)
    assert not if_range_holds('"v1"', H(("ETag", 'W/"v1"')))


def request(*fields):
    return H(*fields)


def test_single_range_is_a_206_with_content_range():
    """RFC 9110 §15.3.7.1: one part: Content-Range and the slice, length adjusted."""
    answer = answer_range("GET", request(("Range", "bytes=10-19")), 200, STORED, BODY)
    assert answer is not None and answer.status == 206
    assert bytes(answer.body) == BODY[10:20]
    head = answer.head_fields(STORED)
    assert head.get("Content-Range") == "bytes 10-19/1024"
    assert head.get("Content-Length") == "10"
    assert head.get("Content-Type") == "application/octet-stream"
    assert head.get("ETag") == '"v1"'  # §15.3.7: the 206 keeps the validators
    assert answer.parts == ((10, 19),)


def test_suffix_and_open_ended_ranges():
    """RFC 9110 §14.1.2: -N is the last N bytes, N- runs to the end."""
    tail = answer_range("GET", request(("Range", "bytes=-24")), 200, STORED, BODY)
    assert tail is not None and bytes(tail.body) == BODY[-24:]
    assert tail.fields.get("Content-Range") == "bytes 1000-1023/1024"
    rest = answer_range("GET", request(("Range", "bytes=1020-")), 200, STORED, BODY)
    assert rest is not None and bytes(rest.body) == BODY[1020:]


def test_unsatisfiable_is_416_with_the_length():
    """RFC 9110 §15.5.17: 416 carries Content-Range: bytes */length."""
    answer = answer_range("GET", request(("Range", "bytes=1024-")), 200, STORED, BODY)
    assert answer is not None and answer.status == 416
    assert answer.fields.get("Content-Range") == "bytes */1024"
    assert answer.body == b""


@pytest.mark.parametrize(
    ("method", "fields", "status"),
    [
        ("HEAD", [("Range", "bytes=0-1")], 200),  # only GET has range semantics (§14.2)
        ("GET", [("Range", "bytes=0-1")], 404),  # only a stored 200 is cut
        ("GET", [("Range", "items=0-1")], 200),  # unknown unit: ignored
        ("GET", [("Range", "bytes=9-1")], 200),  # invalid: ignored
        ("GET", [("Range", "bytes=0-1"), ("Range", "bytes=2-3")], 200),  # not a singleton
        ("GET", [("Range", "bytes=0-1"), ("If-Range", '"v0"')], 200),  # changed: all of it
        ("GET", [("If-Range", '"v1"')], 200),  # If-Range without Range: ignored (§13.1.5)
        ("GET", [], 200),
    ],
)
def test_range_ignored_means_the_whole_200(method, fields, status):
    """RFC 9110 §14.2: a server MAY ignore Range; then the full response is sent."""
    assert answer_range(method, request(*fields), status, STORED, BODY) is None


def test_if_range_match_gives_the_part():
    """RFC 9110 §13.1.5: a matching If-Range lets the Range apply."""
    fields = [("Range", "bytes=0-3"), ("If-Range", '"v1"')]
    answer = answer_range("GET", request(*fields), 200, STORED, BODY)
    assert answer is not None and bytes(answer.body) == BODY[:4]


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A strict reader of multipart/byteranges (RFC 9110 §14.6, RFC 2046 §5.1.1)."""
    delimiter = f"--{boundary}".encode()
    assert body.startswith(delimiter + b"\r\n")
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    chunks = body[: -len(delimiter) - 6].split(b"\r\n" + delimiter + b"\r\n")
    chunks[0] = chunks[0][len(delimiter) + 2 :]
    parts = []
    for chunk in chunks:
        head, _, data = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((fields, data))
    return parts


def test_several_ranges_are_multipart_byteranges():
    """RFC 9110 §14.6: each part has Content-Type and Content-Range; in ascending order."""
    fields = [("Range", "bytes=900-909, 0-9, 500-509")]
    answer = answer_range("GET", request(*fields), 200, STORED, BODY, boundary="THIS_BOUNDARY")
    assert answer is not None and answer.status == 206
    assert answer.fields.get("Content-Type") == "multipart/byteranges; boundary=THIS_BOUNDARY"
    assert int(answer.fields.get("Content-Length")) == len(answer.body)
    parts = parse_multipart(bytes(answer.body), "THIS_BOUNDARY")
    assert [p[0]["Content-Range"] for p in parts] == [
        "bytes 0-9/1024",
        "bytes 500-509/1024",
        "bytes 900-909/1024",
    ]
    assert all(p[0]["Content-Type"] == "application/octet-stream" for p in parts)
    assert [p[1] for p in parts] == [BODY[0:10], BODY[500:510], BODY[900:910]]
    assert "Content-Range" not in answer.head_fields(STORED)


def test_multipart_boundary_is_random_and_absent_from_the_parts():
    """RFC 2046 §5.1.1: the boundary must not occur in the encapsulated data."""
    answer = answer_range("GET", request(("Range", "bytes=0-9, 500-509")), 200, STORED, BODY)
    assert answer is not None
    boundary = re.search(r"boundary=(\S+)", answer.fields.get("Content-Type")).group(1)
    assert len(parse_multipart(bytes(answer.body), boundary)) == 2
    body = b"x--BOUNDARYx" * 100
    with pytest.raises(ValueError, match="occurs in the body"):
        answer_range("GET", request(("Range", "bytes=0-5, 900-")), 200, H(), body, "BOUNDARY")


def test_too_many_parts_serve_the_whole_200():
    """RFC 9110 §14.2, §17.15: a server may ignore a Range asking for many small pieces."""
    many = ", ".join(f"{i * 200}-{i * 200}" for i in range(MAX_PARTS + 1))
    body = b"z" * (200 * (MAX_PARTS + 1))
    assert answer_range("GET", request(("Range", f"bytes={many}")), 200, H(), body) is None
    fewer = ", ".join(f"{i * 200}-{i * 200}" for i in range(MAX_PARTS))
    assert answer_range("GET", request(("Range", f"bytes={fewer}")), 200, H(), body) is not None


@given(
    body=st.binary(min_size=0, max_size=300),
    first=st.integers(min_value=0, max_value=400),
    span=st.one_of(st.none(), st.integers(min_value=0, max_value=400)),
)
def test_a_single_range_is_always_the_matching_slice(body, first, span):
    """Property: bytes=first-[last] yields body[first:last+1], or 416 past the end."""
    last = None if span is None else first + span
    value = f"bytes={first}-" + ("" if last is None else str(last))
    answer = answer_range("GET", request(("Range", value)), 200, H(), body)
    assert answer is not None
    if first >= len(body):
        assert answer.status == 416
        return
    end = len(body) if last is None else min(last + 1, len(body))
    assert (answer.status, bytes(answer.body)) == (206, body[first:end])
    assert answer.fields.get("Content-Range") == f"bytes {first}-{end - 1}/{len(body)}"

"""Validation: conditional requests out, client conditionals in, freshening (RFC 9111 §4.3)."""

import pytest
from cache_helpers import T0, URL, Clock, H

from proxy.cache import HttpCache
from proxy.cache.directives import format_http_date

LM = format_http_date(T0 - 3600)


def cache_with(*response, status=200):
    clock = Clock()
    cache = HttpCache(clock=clock)
    fields = H(("Date", format_http_date(T0)), ("Cache-Control", "max-age=60"), *response)
    writer = cache.begin_store("GET", URL, H(), status, "OK", fields, T0, T0)
    assert writer is not None
    writer.write(b"body")
    entry = writer.finish()
    assert entry is not None
    return cache, clock, entry


def test_etag_becomes_if_none_match():
    """RFC 9111 §4.3.1: the stored ETag is sent in If-None-Match."""
    cache, clock, _ = cache_with(("ETag", 'W/"v1"'))
    clock.now += 61
    result = cache.lookup("GET", URL, H())
    assert result.kind == "stale"
    assert list(result.conditional_headers) == [("If-None-Match", 'W/"v1"')]


def test_last_modified_becomes_if_modified_since():
    """RFC 9111 §4.3.1: the stored Last-Modified is sent in If-Modified-Since."""
    cache, clock, _ = cache_with(("Last-Modified", LM))
    clock.now += 61
    assert list(cache.lookup("GET", URL, H()).conditional_headers) == [("If-Modified-Since", LM)]


def test_both_validators_are_sent():
    """RFC 9110 §13.1.3: send If-Modified-Since alongside If-None-Match when both exist."""
    cache, clock, _ = cache_with(("ETag", '"v1"'), ("Last-Modified", LM))
    clock.now += 61
    conditions = cache.lookup("GET", URL, H()).conditional_headers
    assert conditions.get("If-None-Match") == '"v1"'
    assert conditions.get("If-Modified-Since") == LM


def test_no_validator_means_plain_forward():
    """RFC 9111 §4.3.1: without a validator there is nothing to ask; forward as is."""
    cache, clock, _ = cache_with()
    clock.now += 61
    result = cache.lookup("GET", URL, H())
    assert (result.kind, result.conditional_headers) == ("stale", None)


@pytest.mark.parametrize(
    ("if_none_match", "expected"),
    [
        ('"v1"', True),
        ('W/"v1"', True),  # weak comparison
        ('"v0", "v1"', True),  # any member of a list
        ("*", True),
        ('"v2"', False),
    ],
)
def test_client_if_none_match_weak_comparison(if_none_match, expected):
    """RFC 9111 §4.3.2, RFC 9110 §13.1.2: If-None-Match uses the weak comparison."""
    cache, _, _ = cache_with(("ETag", '"v1"'))
    result = cache.lookup("GET", URL, H(("If-None-Match", if_none_match)))
    assert (result.kind, result.not_modified) == ("fresh", expected)


def test_client_if_none_match_split_over_lines():
    """RFC 9110 §5.3: several If-None-Match lines form one list."""
    cache, _, _ = cache_with(("ETag", '"v1"'))
    request = H(("If-None-Match", '"v0"'), ("If-None-Match", '"v1"'))
    assert cache.lookup("GET", URL, request).not_modified


def test_client_if_modified_since():
    """RFC 9111 §4.3.2: not modified when Last-Modified <= the client's date."""
    cache, _, _ = cache_with(("Last-Modified", LM))
    later = format_http_date(T0 - 60)
    earlier = format_http_date(T0 - 7200)
    assert cache.lookup("GET", URL, H(("If-Modified-Since", later))).not_modified
    assert cache.lookup("GET", URL, H(("If-Modified-Since", LM))).not_modified
    assert not cache.lookup("GET", URL, H(("If-Modified-Since", earlier))).not_modified
    assert not cache.lookup("GET", URL, H(("If-Modified-Since", "garbage"))).not_modified


def test_client_if_modified_since_falls_back_to_date():
    """RFC 9111 §4.3.2: without Last-Modified the stored Date is compared."""
    cache, _, _ = cache_with()
    assert cache.lookup("GET", URL, H(("If-Modified-Since", format_http_date(T0)))).not_modified
    before = format_http_date(T0 - 1)
    assert not cache.lookup("GET", URL, H(("If-Modified-Since", before))).not_modified


def test_if_modified_since_ignored_when_if_none_match_present():
    """RFC 9110 §13.2.2: If-None-Match takes precedence over If-Modified-Since."""
    cache, _, _ = cache_with(("ETag", '"v1"'), ("Last-Modified", LM))
    request = H(("If-None-Match", '"other"'), ("If-Modified-Since", format_http_date(T0)))
    assert not cache.lookup("GET", URL, request).not_modified


def test_client_conditionals_ignored_for_non_2xx():
    """RFC 9110 §13.2.1: preconditions apply only when the response would be 2xx."""
    cache, _, _ = cache_with(("ETag", '"v1"'), status=404)
    assert not cache.lookup("GET", URL, H(("If-None-Match", "*"))).not_modified


def test_not_modified_headers_for():
    """RFC 9110 §15.4.5: a 304 carries ETag, Date, Cache-Control, Expires, Vary..."""
    cache, _, entry = cache_with(("ETag", '"v1"'), ("Content-Type", "text/plain"))
    headers = cache.not_modified_headers_for(entry)
    assert headers.get("ETag") == '"v1"'
    assert headers.get("Cache-Control") == "max-age=60"
    assert headers.get("Age") == "0"
    assert "Content-Type" not in headers


def test_freshen_from_304():
    """RFC 9111 §4.3.4: a 304 updates stored fields and times; the entry is fresh again."""
    cache, clock, entry = cache_with(("ETag", '"v1"'), ("X-Version", "1"), ("Age", "5"))
    clock.now += 100
    assert cache.lookup("GET", URL, H()).kind == "stale"
    now = clock.now
    update = H(
        ("Date", format_http_date(now)),
        ("ETag", '"v1"'),
        ("X-Version", "2"),
        ("Content-Length", "0"),
        ("Connection", "keep-alive"),
    )
    fresh = cache.freshen(entry, update, now - 1, now)
    assert fresh is entry
    assert entry.headers.get_all("X-Version") == ["2"]
    assert entry.headers.get("Content-Length") == "4"  # never taken from a 304
    assert "Connection" not in entry.headers
    assert "Age" not in entry.headers  # the old Age described the old response
    assert (entry.request_time, entry.response_time) == (now - 1, now)
    assert cache.current_age(entry) == 1
    assert cache.lookup("GET", URL, H()).kind == "fresh"
    assert cache.size == entry.size


def test_freshen_with_other_etag_drops_entry():
    """RFC 9111 §4.3.4: a 304 whose strong validator matches no stored response updates none."""
    cache, clock, entry = cache_with(("ETag", '"v1"'))
    clock.now += 100
    assert cache.freshen(entry, H(("ETag", '"v2"')), clock.now, clock.now) is None
    assert len(cache) == 0


def test_client_conditional_checked_after_freshen():
    """RFC 9111 §4.3.2: after revalidation the client's own validators decide 200 or 304."""
    cache, clock, entry = cache_with(("ETag", '"v1"'))
    clock.now += 100
    update = H(("Date", format_http_date(clock.now)), ("ETag", '"v1"'))
    entry = cache.freshen(entry, update, clock.now, clock.now)
    assert cache.client_not_modified(entry, H(("If-None-Match", '"v1"')))
    assert not cache.client_not_modified(entry, H())

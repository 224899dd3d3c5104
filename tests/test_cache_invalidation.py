"""Invalidation by unsafe methods (RFC 9111 section 4.4)."""

import pytest

from proxy.cache import HttpCache
from proxy.http11.headers import Headers

T0 = 1_700_000_000.0


def H(*pairs: tuple[str, str]) -> Headers:
    return Headers(pairs)


def filled(*urls: str) -> HttpCache:
    cache = HttpCache(clock=lambda: T0)
    for url in urls:
        fields = H(("Cache-Control", "max-age=600"))
        writer = cache.begin_store("GET", url, H(), 200, "OK", fields, T0, T0)
        writer.write(b"x")
        writer.finish()
    return cache


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "FROBNICATE"])
def test_unsafe_method_success_invalidates_target(method):
    """RFC 9111 §4.4: a non-error response to an unsafe (or unknown) method invalidates."""
    cache = filled("http://example.com/a")
    assert cache.invalidate(method, "http://EXAMPLE.com/a", 201, H()) == 1
    assert len(cache) == 0


def test_error_status_does_not_invalidate():
    """RFC 9111 §4.4: only non-error (2xx, 3xx) status codes invalidate."""
    cache = filled("http://example.com/a")
    assert cache.invalidate("POST", "http://example.com/a", 500, H()) == 0
    assert cache.invalidate("POST", "http://example.com/a", 404, H()) == 0
    assert len(cache) == 1


def test_safe_method_does_not_invalidate():
    """RFC 9111 §4.4, RFC 9110 §9.2.1: safe methods leave the cache alone."""
    cache = filled("http://example.com/a")
    assert cache.invalidate("GET", "http://example.com/a", 200, H()) == 0
    assert cache.invalidate("OPTIONS", "http://example.com/a", 200, H()) == 0


def test_same_origin_location_and_content_location_invalidated():
    """RFC 9111 §4.4: Location and Content-Location of the same origin are invalidated."""
    cache = filled("http://example.com/a", "http://example.com/b", "http://example.com/c")
    headers = H(("Location", "/b"), ("Content-Location", "http://example.com:80/c"))
    assert cache.invalidate("POST", "http://example.com/a", 303, headers) == 3
    assert len(cache) == 0


def test_cross_origin_location_not_invalidated():
    """RFC 9111 §4.4: a URI of another origin must not be invalidated."""
    cache = filled("http://example.com/a", "http://other.example/b", "https://example.com/b")
    headers = H(
        ("Location", "http://other.example/b"), ("Content-Location", "https://example.com/b")
    )
    assert cache.invalidate("PUT", "http://example.com/a", 200, headers) == 1
    assert len(cache) == 2


def test_invalidation_drops_every_variant():
    """RFC 9111 §4.4: invalidation applies to all stored responses for the URI."""
    cache = HttpCache(clock=lambda: T0)
    url = "http://example.com/v"
    for encoding in ("gzip", "identity"):
        fields = H(("Cache-Control", "max-age=600"), ("Vary", "Accept-Encoding"))
        request = H(("Accept-Encoding", encoding))
        writer = cache.begin_store("GET", url, request, 200, "OK", fields, T0, T0)
        writer.write(b"x")
        writer.finish()
    assert len(cache) == 2
    assert cache.invalidate("DELETE", url, 204, H()) == 2

"""Reusing stored responses: request and response directives (RFC 9111 sections 4, 5.2)."""

from cache_helpers import T0, URL, Clock, H

from proxy.cache import HttpCache
from proxy.cache.directives import format_http_date


def cache_with(*response, status=200):
    """A cache holding one response stored at T0, and its clock."""
    clock = Clock()
    cache = HttpCache(clock=clock)
    fields = H(("Date", format_http_date(T0)), *response)
    writer = cache.begin_store("GET", URL, H(), status, "OK", fields, T0, T0)
    assert writer is not None
    writer.write(b"body")
    assert writer.finish() is not None
    return cache, clock


def look(cache, *request, method="GET", url=URL):
    return cache.lookup(method, url, H(*request))


def test_fresh_hit():
    """RFC 9111 §4.2: a response is fresh while its lifetime exceeds its age."""
    cache, clock = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 59
    result = look(cache)
    assert (result.kind, result.detail, result.ttl) == ("fresh", "", 1)
    assert result.entry.body == b"body"


def test_stale_after_lifetime():
    """RFC 9111 §4.2: once age reaches the lifetime the response is stale."""
    cache, clock = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 60
    result = look(cache)
    assert (result.kind, result.detail, result.ttl) == ("stale", "stale", 0)


def test_uri_miss():
    """RFC 9111 §4: nothing stored for the target URI."""
    cache, _ = cache_with(("Cache-Control", "max-age=60"))
    result = look(cache, url="http://example.com/b")
    assert (result.kind, result.detail, result.entry) == ("miss", "uri-miss", None)


def test_method_other_than_get_or_head_misses():
    """RFC 9111 §4: the request method must allow a stored response to be used."""
    cache, _ = cache_with(("Cache-Control", "max-age=60"))
    result = look(cache, method="POST")
    assert (result.kind, result.detail) == ("miss", "method")


def test_head_is_answered_from_get_entry():
    """RFC 9110 §9.3.2: a HEAD can be served from the stored GET response's head."""
    cache, _ = cache_with(("Cache-Control", "max-age=60"))
    result = look(cache, method="HEAD")
    assert result.kind == "fresh"
    assert cache.response_headers_for(result.entry).get("Content-Length") == "4"


def test_request_no_cache_forces_revalidation():
    """RFC 9111 §5.2.1.4: request no-cache means validate before reuse."""
    cache, _ = cache_with(("Cache-Control", "max-age=60"))
    result = look(cache, ("Cache-Control", "no-cache"))
    assert (result.kind, result.detail) == ("stale", "request")


def test_pragma_no_cache_without_cache_control():
    """RFC 9111 §5.4: Pragma: no-cache acts as no-cache when Cache-Control is absent."""
    cache, _ = cache_with(("Cache-Control", "max-age=60"))
    assert look(cache, ("Pragma", "no-cache")).kind == "stale"
    assert look(cache, ("Pragma", "no-cache"), ("Cache-Control", "max-stale")).kind == "fresh"


def test_request_max_age_bounds_age():
    """RFC 9111 §5.2.1.1: the client will not accept a response older than max-age."""
    cache, clock = cache_with(("Cache-Control", "max-age=600"))
    clock.now += 30
    assert look(cache, ("Cache-Control", "max-age=30")).kind == "fresh"
    assert look(cache, ("Cache-Control", "max-age=29")).detail == "request"


def test_request_max_stale_with_value():
    """RFC 9111 §5.2.1.2: max-stale=n accepts a response stale by at most n seconds."""
    cache, clock = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 70
    assert look(cache, ("Cache-Control", "max-stale=10")).kind == "fresh"
    assert look(cache, ("Cache-Control", "max-stale=9")).kind == "stale"


def test_request_max_stale_without_value():
    """RFC 9111 §5.2.1.2: a bare max-stale accepts a stale response of any staleness."""
    cache, clock = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 10**6
    result = look(cache, ("Cache-Control", "max-stale"))
    assert result.kind == "fresh"
    assert result.ttl < 0


def test_request_min_fresh():
    """RFC 9111 §5.2.1.3: min-fresh=n wants a response fresh for at least n more seconds."""
    cache, clock = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 40
    assert look(cache, ("Cache-Control", "min-fresh=20")).kind == "fresh"
    assert look(cache, ("Cache-Control", "min-fresh=21")).detail == "request"


def test_only_if_cached_miss():
    """RFC 9111 §5.2.1.7: only-if-cached with nothing usable stored -> 504."""
    cache, clock = cache_with(("Cache-Control", "max-age=60"))
    only = ("Cache-Control", "only-if-cached")
    assert look(cache, only).kind == "fresh"
    assert look(cache, only, url="http://example.com/none").kind == "only-if-cached-miss"
    clock.now += 61
    assert look(cache, only).kind == "only-if-cached-miss"


def test_must_revalidate_disables_max_stale():
    """RFC 9111 §5.2.2.2: must-revalidate forbids serving stale, even under max-stale."""
    cache, clock = cache_with(("Cache-Control", "max-age=60, must-revalidate"))
    clock.now += 61
    assert look(cache, ("Cache-Control", "max-stale")).kind == "stale"


def test_proxy_revalidate_and_s_maxage_disable_max_stale_in_shared_cache():
    """RFC 9111 §5.2.2.8, §5.2.2.10: proxy-revalidate and s-maxage bind shared caches."""
    for directive in ("max-age=60, proxy-revalidate", "s-maxage=60"):
        cache, clock = cache_with(("Cache-Control", directive))
        clock.now += 61
        assert look(cache, ("Cache-Control", "max-stale")).kind == "stale"


def test_response_no_cache_forces_revalidation():
    """RFC 9111 §5.2.2.4: a no-cache response is never reused without validation."""
    cache, _ = cache_with(("Cache-Control", "no-cache, max-age=600"), ("ETag", '"v1"'))
    result = look(cache, ("Cache-Control", "max-stale"))
    assert (result.kind, result.detail) == ("stale", "stale")
    assert result.conditional_headers.get("If-None-Match") == '"v1"'


def test_lookup_key_is_normalised_url():
    """RFC 9111 §2: the primary key is the target URI (normalised here)."""
    cache, _ = cache_with(("Cache-Control", "max-age=60"))
    assert look(cache, url="HTTP://EXAMPLE.com:80/a").kind == "fresh"

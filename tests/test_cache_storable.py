"""When a shared cache may store a response (RFC 9111 section 3)."""

import pytest

from proxy.cache import CacheConfig, HttpCache
from proxy.http11.headers import Headers

URL = "http://example.com/page"
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"


def H(*pairs: tuple[str, str]) -> Headers:
    return Headers(pairs)


def storable(response, request=(), method="GET", status=200, config=None):
    cache = HttpCache(config or CacheConfig())
    return cache.storable(method, URL, H(*request), status, H(*response))


def test_explicit_max_age_is_storable():
    """RFC 9111 §3: a GET 200 with max-age may be stored."""
    assert storable([("Cache-Control", "max-age=60")]) == (True, "")


def test_request_no_store_prevents_storage():
    """RFC 9111 §5.2.1.5: request no-store forbids storing the response."""
    assert storable([("Cache-Control", "max-age=60")], [("Cache-Control", "no-store")]) == (
        False,
        "no-store",
    )


def test_response_no_store_prevents_storage():
    """RFC 9111 §5.2.2.5: response no-store forbids storing it."""
    assert storable([("Cache-Control", "no-store, max-age=60")]) == (False, "no-store")


def test_must_understand_overrides_no_store_for_understood_status():
    """RFC 9111 §5.2.2.3: a cache understanding the status ignores no-store with must-understand."""
    response = [("Cache-Control", "must-understand, no-store, max-age=60")]
    assert storable(response) == (True, "")
    assert storable(response, status=299) == (False, "status")


def test_private_prevents_shared_storage():
    """RFC 9111 §5.2.2.7: a shared cache must not store a private response."""
    assert storable([("Cache-Control", "private, max-age=60")]) == (False, "private")


def test_private_with_field_names_is_treated_as_private():
    """RFC 9111 §5.2.2.7: the qualified form is handled as unqualified private (simpler, safe)."""
    assert storable([("Cache-Control", 'private="Set-Cookie", max-age=60')]) == (
        False,
        "private",
    )


def test_authorization_without_permission_is_not_stored():
    """RFC 9111 §3.5: a response to an authorized request needs explicit permission."""
    auth = [("Authorization", "Basic dTpw")]
    assert storable([("Cache-Control", "max-age=60")], auth) == (False, "authorization")


@pytest.mark.parametrize("directive", ["public", "s-maxage=60", "must-revalidate, max-age=60"])
def test_authorization_with_public_s_maxage_or_must_revalidate_is_stored(directive):
    """RFC 9111 §3.5: public, s-maxage and must-revalidate allow storing authorized responses."""
    response = [("Cache-Control", directive), ("Last-Modified", LAST_MODIFIED)]
    assert storable(response, [("Authorization", "Basic dTpw")]) == (True, "")


def test_post_is_not_stored():
    """RFC 9111 §3: only GET responses are stored by this cache."""
    assert storable([("Cache-Control", "max-age=60")], method="POST") == (False, "method")


@pytest.mark.parametrize("status", [206, 304, 101])
def test_partial_not_modified_and_interim_statuses_are_not_stored(status):
    """RFC 9111 §3, §3.3: 206 (no range support), 304 and 1xx are not stored."""
    assert storable([("Cache-Control", "max-age=60")], status=status) == (False, "status")


def test_heuristically_cacheable_status_with_last_modified_is_stored():
    """RFC 9111 §4.2.2: a 200 with Last-Modified gets a heuristic lifetime, so it is stored."""
    assert storable([("Last-Modified", LAST_MODIFIED)]) == (True, "")
    assert storable([("Last-Modified", LAST_MODIFIED)], status=404) == (True, "")


def test_status_not_heuristically_cacheable_needs_explicit_freshness():
    """RFC 9111 §4.2.2, RFC 9110 §15.1: a 302 is only stored with explicit freshness."""
    assert storable([("Last-Modified", LAST_MODIFIED)], status=302) == (False, "no-freshness")
    assert storable([("Cache-Control", "max-age=60")], status=302) == (True, "")
    assert storable([("Expires", "Sun, 06 Nov 2044 08:49:37 GMT")], status=302) == (True, "")


def test_public_allows_heuristic_on_any_status():
    """RFC 9111 §4.2.2: public marks a response explicitly cacheable for heuristics."""
    response = [("Cache-Control", "public"), ("Last-Modified", LAST_MODIFIED)]
    assert storable(response, status=302) == (True, "")


def test_cacheable_by_default_without_a_lifetime_is_stored():
    """RFC 9111 §3: a heuristically cacheable status may be stored with no lifetime at all.

    It is stale at once: revalidated with its ETag, or kept to serve on an origin error.
    """
    assert storable([("ETag", '"v1"')]) == (True, "")
    assert storable([]) == (True, "")
    assert storable([], status=404) == (True, "")


def test_without_lifetime_or_validator_kept_only_for_stale_serving():
    """A copy that can be neither reused nor revalidated is only kept while stale serving is
    on, and never when a directive forbids serving it stale (RFC 9111 §4.2.4)."""
    assert storable([], config=CacheConfig(max_stale=0)) == (False, "no-freshness")
    assert storable([("ETag", '"v1"')], config=CacheConfig(max_stale=0)) == (True, "")
    for directive in ("no-cache", "must-revalidate", "proxy-revalidate"):
        assert storable([("Cache-Control", directive)]) == (False, "no-freshness")
    assert storable([("Cache-Control", "no-cache"), ("ETag", '"v1"')]) == (True, "")


@pytest.mark.parametrize("status", [201, 302, 303, 307, 500, 503])
def test_status_not_cacheable_by_default_is_not_stored_without_explicit_freshness(status):
    """RFC 9111 §3: other statuses need max-age, s-maxage, Expires or public."""
    assert storable([("ETag", '"v1"')], status=status) == (False, "no-freshness")
    assert storable([], status=status) == (False, "no-freshness")
    assert storable([("Cache-Control", "max-age=5")], status=status) == (True, "")


def test_set_cookie_is_not_stored():
    """RFC 9111 §3 allows it; this shared cache refuses Set-Cookie responses (privacy)."""
    response = [("Cache-Control", "max-age=60"), ("Set-Cookie", "id=1")]
    assert storable(response) == (False, "set-cookie")


def test_vary_star_is_not_stored():
    """RFC 9111 §4.1: Vary: * never matches, so storing it would be useless."""
    assert storable([("Cache-Control", "max-age=60"), ("Vary", "Accept, *")]) == (
        False,
        "vary-star",
    )


def test_content_length_over_max_object_is_not_stored():
    """A declared body larger than max_object is never stored."""
    config = CacheConfig(max_object=10)
    response = [("Cache-Control", "max-age=60"), ("Content-Length", "11")]
    assert storable(response, config=config) == (False, "too-large")


def test_begin_store_returns_none_when_not_storable():
    """RFC 9111 §3: begin_store refuses what storable refuses."""
    cache = HttpCache()
    writer = cache.begin_store(
        "GET", URL, H(), 200, "OK", H(("Cache-Control", "no-store")), 0.0, 0.0
    )
    assert writer is None


def test_is_cacheable_request():
    """RFC 9111 §5.2.1.5: GET and HEAD take part; no-store requests and POST bypass."""
    cache = HttpCache()
    assert cache.is_cacheable_request("GET", H())
    assert cache.is_cacheable_request("head", H())
    assert not cache.is_cacheable_request("POST", H())
    assert not cache.is_cacheable_request("GET", H(("Cache-Control", "no-store")))

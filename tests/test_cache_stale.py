"""Serving stale responses: on an origin error, and while revalidating (RFC 9111 §4.2.4, RFC 5861).

The rules are table rows for ``proxy.cache.stale.stale_permission``; then the same rules through
the ``HttpCache`` calls the proxy makes (``lookup`` flags, ``serve_stale_on_error``,
``serve_while_revalidating``).
"""

import pytest
from cache_helpers import T0, URL, Clock, H

from proxy.cache import CacheConfig, HttpCache
from proxy.cache.directives import CacheControl, format_http_date
from proxy.cache.stale import (
    DEFAULT_MAX_STALE,
    error_cache_status,
    is_origin_error,
    revalidating_cache_status,
    stale_permission,
)

DAY = 86400.0

PERMISSION_CASES = [
    # (response CC, request CC, lifetime, age, max_stale) -> (on_error, while_revalidating, why)
    # RFC 9111 §4.2.4: a disconnected cache may serve stale; max_stale is the configuration.
    ("max-age=60", "", 60, 100, DAY, (True, False, "")),
    ("max-age=60", "", 60, 60 + DAY, DAY, (True, False, "")),  # exactly at the bound
    ("max-age=60", "", 60, 61 + DAY, DAY, (False, False, "too-stale")),
    ("max-age=60", "", 60, 100, 0, (False, False, "disabled")),  # max_stale 0: off
    # RFC 5861 §4: stale-if-error=N is an upper limit on staleness, in response or request.
    ("max-age=60, stale-if-error=30", "", 60, 90, DAY, (True, False, "")),
    ("max-age=60, stale-if-error=30", "", 60, 91, DAY, (False, False, "too-stale")),
    ("max-age=60, stale-if-error=999999", "", 60, 61 + DAY, DAY, (False, False, "too-stale")),
    ("max-age=60", "stale-if-error=10", 60, 71, DAY, (False, False, "too-stale")),
    ("max-age=60", "stale-if-error=10", 60, 70, DAY, (True, False, "")),
    # RFC 5861 §3: stale-while-revalidate=N, within N (and within max_stale).
    ("max-age=60, stale-while-revalidate=30", "", 60, 90, DAY, (True, True, "")),
    ("max-age=60, stale-while-revalidate=30", "", 60, 91, DAY, (True, False, "")),
    ("max-age=60, stale-while-revalidate=30", "", 60, 90, 10, (False, False, "too-stale")),
    ("max-age=60, stale-while-revalidate=30", "", 60, 65, 10, (True, True, "")),
    ("max-age=60, stale-while-revalidate=30, stale-if-error=0", "", 60, 70, DAY, (False, True, "")),
    # RFC 9111 §4.2.4 with 5.2.2.2, 5.2.2.4, 5.2.2.8, 5.2.2.10: directives forbid stale.
    ("max-age=60, must-revalidate", "", 60, 100, DAY, (False, False, "must-revalidate")),
    ("max-age=60, proxy-revalidate", "", 60, 100, DAY, (False, False, "proxy-revalidate")),
    ("s-maxage=60", "", 60, 100, DAY, (False, False, "s-maxage")),
    ("no-cache, stale-if-error=99", "", 0, 10, DAY, (False, False, "no-cache")),
    (
        "max-age=60, must-revalidate, stale-while-revalidate=99",
        "",
        60,
        70,
        DAY,
        (False, False, "must-revalidate"),
    ),
    # RFC 9111 §5.2.1: a client asking for validation or a younger response gets no stale...
    ("max-age=60", "no-cache", 60, 100, DAY, (False, False, "request")),
    ("max-age=60", "max-age=30", 60, 100, DAY, (False, False, "request")),
    ("max-age=60", "min-fresh=5", 60, 100, DAY, (False, False, "request")),
    ("max-age=60, stale-while-revalidate=99", "no-cache", 60, 70, DAY, (False, False, "request")),
    # ...unless its own stale-if-error says what it accepts when the origin fails (RFC 5861 §4).
    ("max-age=60", "no-cache, stale-if-error=60", 60, 100, DAY, (True, False, "")),
    ("max-age=60", "max-age=0, stale-if-error=10", 60, 100, DAY, (False, False, "request")),
    # A client max-age the age still satisfies is no demand.
    ("max-age=60", "max-age=200", 60, 100, DAY, (True, False, "")),
]


@pytest.mark.parametrize(
    ("response", "request_", "lifetime", "age", "max_stale", "expected"), PERMISSION_CASES
)
def test_stale_permission(response, request_, lifetime, age, max_stale, expected):
    """One row per rule of RFC 9111 §4.2.4 and RFC 5861 §3-4 (see the table's comments)."""
    permission = stale_permission(
        CacheControl.parse([request_]), CacheControl.parse([response]), lifetime, age, max_stale
    )
    assert (permission.on_error, permission.while_revalidating, permission.why_not) == expected


@pytest.mark.parametrize(
    ("status", "error"),
    [(None, True), (500, True), (502, True), (503, True), (504, True), (501, False), (404, False)],
)
def test_origin_errors_that_allow_stale(status, error):
    """RFC 5861 §4: no response at all, or 500, 502, 503, 504."""
    assert is_origin_error(status) is error


def test_cache_status_values():
    """RFC 9211: a stale answer after a forward is fwd=stale (with fwd-status); a stale one
    served without forwarding is a hit with a negative ttl."""
    assert error_cache_status(-12.9, 502) == (
        "minireactor; fwd=stale; fwd-status=502; ttl=-12; detail=stale-if-error"
    )
    assert error_cache_status(-1, None, name="edge") == (
        "edge; fwd=stale; ttl=-1; detail=stale-if-error"
    )
    assert revalidating_cache_status(-3) == (
        "minireactor; hit; ttl=-3; detail=stale-while-revalidate"
    )


def test_default_max_stale_is_one_day():
    """The documented default bound (see proxy.cache.stale)."""
    assert DEFAULT_MAX_STALE == CacheConfig().max_stale == DAY


# -- through HttpCache -----------------------------------------------------------------------------


def cache_with(*response, config=None, status=200):
    clock = Clock()
    cache = HttpCache(config or CacheConfig(), clock=clock)
    fields = H(("Date", format_http_date(T0)), *response)
    writer = cache.begin_store("GET", URL, H(), status, "OK", fields, T0, T0)
    assert writer is not None
    writer.write(b"stored body")
    entry = writer.finish()
    assert entry is not None
    return cache, clock, entry


def test_lookup_flags_a_stale_entry_for_error_and_revalidation():
    """RFC 5861: the stale Lookup says what the entry may still be used for."""
    cache, clock, entry = cache_with(("Cache-Control", "max-age=60, stale-while-revalidate=30"))
    clock.now += 80
    found = cache.lookup("GET", URL, H())
    assert (found.kind, found.stale_on_error, found.stale_while_revalidate) == ("stale", True, True)
    answer = cache.serve_while_revalidating(found, H())
    assert answer is not None and answer.entry is entry
    assert (answer.status, answer.cache_status) == (
        200,
        "minireactor; hit; ttl=-20; detail=stale-while-revalidate",
    )
    clock.now += 20  # 40 s stale: past the revalidation window, still servable on error
    found = cache.lookup("GET", URL, H())
    assert (found.stale_on_error, found.stale_while_revalidate) == (True, False)
    assert cache.serve_while_revalidating(found, H()) is None


def test_fresh_lookup_has_no_stale_flags():
    """Flags belong to stale look-ups only."""
    cache, _, _ = cache_with(("Cache-Control", "max-age=60, stale-while-revalidate=30"))
    found = cache.lookup("GET", URL, H())
    assert (found.kind, found.stale_on_error, found.stale_while_revalidate) == (
        "fresh",
        False,
        False,
    )


def test_serve_stale_while_revalidating_answers_a_client_conditional_with_304():
    """RFC 9111 §4.3.2: the client's own validator matching the stale entry gets a 304."""
    cache, clock, _ = cache_with(
        ("Cache-Control", "max-age=60, stale-while-revalidate=30"), ("ETag", '"v1"')
    )
    clock.now += 70
    request = H(("If-None-Match", '"v1"'))
    answer = cache.serve_while_revalidating(cache.lookup("GET", URL, request), request)
    assert answer is not None and answer.status == 304


@pytest.mark.parametrize(
    ("fwd_status", "served"), [(None, True), (500, True), (503, True), (504, True), (404, False)]
)
def test_serve_stale_on_error_by_origin_outcome(fwd_status, served):
    """RFC 9111 §4.2.4, RFC 5861 §4: connect failure, reset or 5xx; not an ordinary answer."""
    cache, clock, entry = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 100
    answer = cache.serve_stale_on_error(entry, H(), fwd_status)
    if not served:
        assert answer is None
        return
    assert answer is not None and (answer.entry, answer.status) == (entry, 200)
    suffix = "" if fwd_status is None else f"; fwd-status={fwd_status}"
    assert answer.cache_status == f"minireactor; fwd=stale{suffix}; ttl=-40; detail=stale-if-error"


def test_serve_stale_on_error_judges_the_age_when_the_error_happens():
    """The bound applies to the age at the failure, not at the look-up (connecting takes time)."""
    config = CacheConfig(max_stale=30)
    cache, clock, entry = cache_with(("Cache-Control", "max-age=60"), config=config)
    clock.now += 80
    assert cache.lookup("GET", URL, H()).stale_on_error
    clock.now += 15  # the connect attempt timed out: now 35 s stale
    assert cache.serve_stale_on_error(entry, H(), None) is None


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "no-cache"])
def test_serve_stale_on_error_refused_by_directive(directive):
    """RFC 9111 §4.2.4: an explicit directive forbids generating a stale response."""
    cache, clock, entry = cache_with(
        ("Cache-Control", f"max-age=60, {directive}"), ("ETag", '"v1"')
    )
    clock.now += 100
    assert not cache.lookup("GET", URL, H()).stale_on_error
    assert cache.serve_stale_on_error(entry, H(), 503) is None


def test_pragma_no_cache_client_gets_no_stale():
    """RFC 9111 §5.4: Pragma: no-cache is request no-cache when Cache-Control is absent."""
    cache, clock, entry = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 100
    assert cache.serve_stale_on_error(entry, H(("Pragma", "no-cache")), None) is None


def test_response_without_lifetime_is_kept_and_stands_in_on_error():
    """RFC 9111 §3: a plain 200 is cacheable by default: stored stale at once, served stale
    when the origin is unreachable (§4.2.4), never reused otherwise."""
    cache, clock, entry = cache_with()
    assert cache.freshness_lifetime(entry) == 0
    clock.now += 5
    found = cache.lookup("GET", URL, H())
    assert (found.kind, found.conditional_headers, found.stale_on_error) == ("stale", None, True)
    answer = cache.serve_stale_on_error(entry, H(), None)
    assert answer is not None and answer.entry.body == b"stored body"
    assert answer.cache_status == "minireactor; fwd=stale; ttl=-5; detail=stale-if-error"


def test_response_without_lifetime_to_a_request_with_a_cookie_is_not_kept():
    """A page with no caching fields, asked for with a session cookie, is likely personal:
    kept stale at once, it would stand in for every other user when the origin fails."""
    cache, _, _ = cache_with()
    writer = cache.begin_store("GET", URL + "?me", H(("Cookie", "s=A")), 200, "OK", H(), T0, T0)
    assert writer is None
    assert cache.lookup("GET", URL + "?me", H(("Cookie", "s=B"))).kind == "miss"
    # With explicit freshness the origin has said it may be shared: stored as ever.
    fresh = H(("Cache-Control", "max-age=60"))
    assert cache.begin_store("GET", URL + "?p", H(("Cookie", "s=A")), 200, "OK", fresh, T0, T0)


def test_max_stale_zero_turns_it_all_off():
    """With max_stale 0 nothing is served stale, and plain 200s are not even stored."""
    config = CacheConfig(max_stale=0)
    cache, clock, entry = cache_with(
        ("Cache-Control", "max-age=60, stale-while-revalidate=99"), config=config
    )
    clock.now += 70
    found = cache.lookup("GET", URL, H())
    assert (found.stale_on_error, found.stale_while_revalidate) == (False, False)
    assert cache.serve_stale_on_error(entry, H(), None) is None
    writer = cache.begin_store("GET", URL + "?plain", H(), 200, "OK", H(), T0, T0)
    assert writer is None


def test_client_max_stale_is_ordinary_reuse():
    """RFC 9111 §5.2.1.2: request max-stale makes the stale entry a plain hit (no forwarding)."""
    cache, clock, _ = cache_with(("Cache-Control", "max-age=60"))
    clock.now += 100
    assert cache.lookup("GET", URL, H(("Cache-Control", "max-stale=50"))).kind == "fresh"
    assert cache.lookup("GET", URL, H(("Cache-Control", "max-stale=10"))).kind == "stale"

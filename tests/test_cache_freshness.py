"""Freshness lifetime (RFC 9111 section 4.2.1-4.2.2) and current age (section 4.2.3)."""

from cache_helpers import T0, URL, Clock, H

from proxy.cache import CacheConfig, HttpCache
from proxy.cache.directives import format_http_date


def date(t: float) -> str:
    return format_http_date(t)


def stored(cache, *response, status=200, request_time=T0, response_time=T0, body=b"hello"):
    writer = cache.begin_store(
        "GET", URL, H(), status, "OK", H(*response), request_time, response_time
    )
    assert writer is not None
    writer.write(body)
    entry = writer.finish()
    assert entry is not None
    return entry


def test_s_maxage_beats_max_age():
    """RFC 9111 §4.2.1: a shared cache uses s-maxage before max-age."""
    cache = HttpCache(clock=Clock())
    entry = stored(cache, ("Cache-Control", "max-age=10, s-maxage=20"), ("Date", date(T0)))
    assert cache.freshness_lifetime(entry) == 20


def test_max_age_beats_expires():
    """RFC 9111 §4.2.1: max-age overrides Expires."""
    cache = HttpCache(clock=Clock())
    entry = stored(
        cache,
        ("Cache-Control", "max-age=10"),
        ("Date", date(T0)),
        ("Expires", date(T0 + 500)),
    )
    assert cache.freshness_lifetime(entry) == 10


def test_expires_minus_date():
    """RFC 9111 §4.2.1: without max-age the lifetime is Expires minus Date."""
    cache = HttpCache(clock=Clock())
    entry = stored(cache, ("Date", date(T0 - 100)), ("Expires", date(T0 + 500)))
    assert cache.freshness_lifetime(entry) == 600


def test_invalid_expires_means_already_expired():
    """RFC 9111 §5.3: an invalid Expires such as "0" is a time in the past."""
    cache = HttpCache(clock=Clock())
    entry = stored(
        cache, ("Date", date(T0)), ("Expires", "0"), ("Last-Modified", date(T0 - 10_000))
    )
    assert cache.freshness_lifetime(entry) == 0


def test_expires_overrides_heuristic():
    """RFC 9111 §4.2.2: no heuristic when an explicit expiration time is present."""
    cache = HttpCache(clock=Clock())
    entry = stored(
        cache,
        ("Date", date(T0)),
        ("Expires", date(T0 + 5)),
        ("Last-Modified", date(T0 - 10_000)),
    )
    assert cache.freshness_lifetime(entry) == 5


def test_heuristic_is_ten_percent_of_time_since_last_modified():
    """RFC 9111 §4.2.2: a typical heuristic is 10% of (Date - Last-Modified)."""
    cache = HttpCache(clock=Clock())
    entry = stored(cache, ("Date", date(T0)), ("Last-Modified", date(T0 - 1000)))
    assert cache.freshness_lifetime(entry) == 100


def test_heuristic_is_capped_at_one_day():
    """RFC 9111 §4.2.2: the heuristic lifetime is bounded (here by heuristic_cap, one day)."""
    cache = HttpCache(clock=Clock())
    entry = stored(cache, ("Date", date(T0)), ("Last-Modified", date(T0 - 365 * 86400)))
    assert cache.freshness_lifetime(entry) == 86400
    small = HttpCache(CacheConfig(heuristic_fraction=0.5, heuristic_cap=60), clock=Clock())
    entry = stored(small, ("Date", date(T0)), ("Last-Modified", date(T0 - 1000)))
    assert small.freshness_lifetime(entry) == 60


def test_missing_date_uses_time_of_receipt():
    """RFC 9110 §6.6.1: a response without Date gets one from the receiving cache."""
    cache = HttpCache(clock=Clock())
    entry = stored(cache, ("Cache-Control", "max-age=60"), response_time=T0 + 3)
    assert entry.headers.get("Date") == date(T0 + 3)


def test_age_grows_with_resident_time():
    """RFC 9111 §4.2.3: resident_time = now - response_time is added to the age."""
    clock = Clock()
    cache = HttpCache(clock=clock)
    entry = stored(cache, ("Cache-Control", "max-age=60"), ("Date", date(T0)))
    assert cache.current_age(entry) == 0
    clock.now += 42
    assert cache.current_age(entry) == 42


def test_age_header_plus_response_delay():
    """RFC 9111 §4.2.3: corrected_age_value = age_value + response_delay."""
    clock = Clock(T0)
    cache = HttpCache(clock=clock)
    entry = stored(
        cache,
        ("Cache-Control", "max-age=600"),
        ("Date", date(T0)),
        ("Age", "30"),
        request_time=T0 - 2,
        response_time=T0,
    )
    # apparent_age = 0; corrected_age_value = 30 + 2
    assert cache.current_age(entry) == 32


def test_apparent_age_wins_when_origin_clock_is_behind():
    """RFC 9111 §4.2.3: corrected_initial_age = max(apparent_age, corrected_age_value)."""
    clock = Clock(T0 + 10)
    cache = HttpCache(clock=clock)
    entry = stored(
        cache,
        ("Cache-Control", "max-age=600"),
        ("Date", date(T0 - 100)),
        ("Age", "5"),
        request_time=T0 - 1,
        response_time=T0,
    )
    # apparent_age = 100 > corrected_age_value = 6; resident_time = 10
    assert cache.current_age(entry) == 110


def test_origin_clock_ahead_does_not_make_age_negative():
    """RFC 9111 §4.2.3: apparent_age = max(0, response_time - date_value)."""
    cache = HttpCache(clock=Clock(T0))
    entry = stored(
        cache,
        ("Cache-Control", "max-age=600"),
        ("Date", date(T0 + 3600)),
        request_time=T0 - 1,
        response_time=T0,
    )
    assert cache.current_age(entry) == 1  # only the response delay


def test_age_header_on_hits_is_integer_current_age():
    """RFC 9111 §5.1: a cache sends Age as the current age in whole seconds."""
    clock = Clock()
    cache = HttpCache(clock=clock)
    entry = stored(cache, ("Cache-Control", "max-age=600"), ("Date", date(T0)), ("Age", "3"))
    clock.now += 7.9
    headers = cache.response_headers_for(entry)
    assert headers.get_all("Age") == ["10"]
    assert entry.headers.get("Age") == "3"  # the stored copy is untouched

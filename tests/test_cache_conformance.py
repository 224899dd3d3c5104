"""Issue 17, defects 1-4: table-driven checks of the rules the public cache suite found broken.

Each table row names the RFC section it follows. Defect 1 is checked here at the API the proxy
calls (``HttpCache.revalidated``); the end-to-end regression is in test_e2e_cache_conformance.py.
"""

import pytest
from cache_helpers import T0, URL, Clock, H

from proxy.cache import HttpCache
from proxy.cache.directives import format_http_date, parse_http_date
from proxy.cache.freshness import age_field_value

NOV_6_1994 = 784111777.0


def stored(*response, status=200, clock=None):
    clock = clock or Clock()
    cache = HttpCache(clock=clock)
    writer = cache.begin_store("GET", URL, H(), status, "OK", H(*response), T0, T0)
    assert writer is not None
    writer.write(b"body")
    entry = writer.finish()
    assert entry is not None
    return cache, clock, entry


# -- defect 2: an invalid Expires means "already expired" (RFC 9111 §5.3) ------------------------

VALID_DATES = [
    # RFC 9110 §5.6.7: the three formats, and nothing else.
    ("Sun, 06 Nov 1994 08:49:37 GMT", NOV_6_1994),  # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:37 GMT", NOV_6_1994),  # obsolete RFC 850
    ("Sun Nov  6 08:49:37 1994", NOV_6_1994),  # asctime, day padded with a space
    ("Sun Nov 16 08:49:37 1994", NOV_6_1994 + 10 * 86400),  # asctime, two-digit day
    ("  Sun, 06 Nov 1994 08:49:37 GMT\t", NOV_6_1994),  # OWS around a field value (§5.5)
    ("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800.0),  # a leap day exists
    ("Sat, 31 Dec 2016 23:59:60 GMT", 1483228800.0),  # second = 60: a leap second (§5.6.7)
]

INVALID_DATES = [
    "Thu, 18 Aug 2050 02:01:18 UTC",  # zone other than GMT
    "Thu, 18 Aug 2050 02:01:18 +0000",
    "Thu, 18 Aug 50 02:01:18 GMT",  # two-digit year outside RFC 850
    "Thu 18 Aug 2050 02:01:18 GMT",  # missing comma
    "Thu, 18  Aug  2050 02:01:18 GMT",  # multiple spaces
    "Thu, 18-Aug-2050 02:01:18 GMT",  # dashes with a short day name and 4-digit year
    "Thu, 18 Aug 2050 02.01.18 GMT",  # time with periods
    "Thu, 18 Aug 2050 2:01:18 GMT",  # one-digit hour
    "THU, 18 Aug 2050 02:01:18 GMT",  # HTTP-date is case-sensitive (§5.6.7)
    "Thu, 18 AUG 2050 02:01:18 GMT",
    "Thu, 18 Aug 2050 02:01:18 gMT",
    "Thu, 8 Aug 2050 02:01:18 GMT",  # IMF-fixdate days have two digits
    "Sun, 30 Feb 2050 02:01:18 GMT",  # no such day
    "Sun, 06 Nov 1994 24:00:00 GMT",  # no such hour
    "Sun, 06 Nov 1994 08:60:00 GMT",  # no such minute
    "Sun, 06 Nov 0000 08:49:37 GMT",  # no year zero
    "Sun, 06 Nov 1994 08:49:37 GMT junk",
    "Sun, 06 Nov 1994 08:49:37",  # IMF-fixdate needs its GMT
    "Sun Nov 6 08:49:37 1994",  # asctime pads a one-digit day with a space
    "0",
    "-1",
    "yesterday",
    "",
]


@pytest.mark.parametrize(("text", "timestamp"), VALID_DATES)
def test_http_date_formats_are_accepted(text, timestamp):
    """RFC 9110 §5.6.7: recipients accept IMF-fixdate, rfc850-date and asctime-date."""
    assert parse_http_date(text) == timestamp


# Full-width digits are not DIGIT (they cannot reach a stored field, which is latin-1).
@pytest.mark.parametrize("text", [*INVALID_DATES, "Sun, ０６ Nov 1994 08:49:37 GMT"])
def test_anything_else_is_not_an_http_date(text):
    """RFC 9110 §5.6.7: the grammar fixes case, spaces, digits and the GMT zone."""
    assert parse_http_date(text) is None


@pytest.mark.parametrize(
    ("two_digit", "now_year", "year"),
    [("94", 2024, 1994), ("50", 2024, 2050), ("74", 2024, 2074), ("75", 2024, 1975)],
)
def test_rfc850_two_digit_year_is_at_most_50_years_ahead(two_digit, now_year, year):
    """RFC 9110 §5.6.7: a year "more than 50 years in the future" is read as the last century."""
    now = parse_http_date(f"Mon, 01 Jan {now_year} 00:00:00 GMT")
    parsed = parse_http_date(f"Sunday, 06-Nov-{two_digit} 08:49:37 GMT", now=now)
    assert parsed == parse_http_date(f"Sun, 06 Nov {year} 08:49:37 GMT")


@pytest.mark.parametrize("expires", INVALID_DATES)
def test_invalid_expires_is_already_expired(expires):
    """RFC 9111 §5.3: an invalid Expires, "especially 0", represents a time in the past."""
    cache, _, entry = stored(("Date", format_http_date(T0)), ("Expires", expires))
    assert cache.freshness_lifetime(entry) == 0
    assert cache.lookup("GET", URL, H()).kind == "stale"


@pytest.mark.parametrize(
    "expires",
    [
        format_http_date(T0 + 600),
        "Tuesday, 14-Nov-23 22:23:20 GMT",  # T0 + 600 in RFC 850 form
        "Tue Nov 14 22:23:20 2023",  # and in asctime form
    ],
)
def test_valid_expires_in_each_format_gives_the_lifetime(expires):
    """RFC 9111 §4.2.1: the lifetime is Expires minus Date, whatever the date format."""
    cache, _, entry = stored(("Date", format_http_date(T0)), ("Expires", expires))
    assert cache.freshness_lifetime(entry) == 600
    assert cache.lookup("GET", URL, H()).kind == "fresh"


def test_max_age_wins_over_an_invalid_expires():
    """RFC 9111 §5.3: with max-age present, Expires is ignored, valid or not."""
    cache, _, entry = stored(("Cache-Control", "max-age=60"), ("Expires", "0"))
    assert cache.freshness_lifetime(entry) == 60


# -- defect 3: a list-valued Age uses its first member (RFC 9111 §5.1) -----------------------------

AGE_CASES = [
    ([("Age", "7200, 0")], 7200),  # first member of a list
    ([("Age", "7200,0")], 7200),
    ([("Age", "0, 7200")], 0),
    ([("Age", "7200"), ("Age", "0")], 7200),  # two field lines make one list
    ([("Age", "0"), ("Age", "7200")], 0),
    ([("Age", "7200, 7200")], 7200),
    ([("Age", "abc")], 0),  # an invalid first member: the field is ignored
    ([("Age", "-7200")], 0),
    ([("Age", "7200.0")], 0),
    ([("Age", "abc, 7200")], 0),
    ([], 0),
]


@pytest.mark.parametrize(("fields", "age"), AGE_CASES)
def test_age_field_value_is_the_first_member(fields, age):
    """RFC 9111 §5.1: "use the first member of the field value, discarding subsequent ones"."""
    assert age_field_value(H(*fields)) == age


@pytest.mark.parametrize(("fields", "age"), AGE_CASES)
def test_list_valued_age_ages_the_stored_response(fields, age):
    """RFC 9111 §4.2.3: the first Age member enters the corrected initial age."""
    cache, _, entry = stored(
        ("Date", format_http_date(T0)), ("Cache-Control", "max-age=3600"), *fields
    )
    assert cache.current_age(entry) == age
    assert cache.lookup("GET", URL, H()).kind == ("stale" if age >= 3600 else "fresh")


# -- defect 4: If-Modified-Since is compared with Date when there is no Last-Modified -------------

LM = T0 - 3000
IMS_CASES = [
    # (stored fields, If-Modified-Since, 304?)   RFC 9110 §13.1.3, RFC 9111 §4.3.2
    ([("Date", T0 - 10)], T0 - 20, False),  # modified (dated) after the client's copy
    ([("Date", T0 - 10)], T0 - 10, True),  # no Last-Modified: Date is the modification time
    ([("Date", T0 - 10)], T0, True),
    ([("Date", T0 - 10), ("Last-Modified", LM)], LM, True),  # Last-Modified first
    ([("Date", T0 - 10), ("Last-Modified", LM)], LM + 1, True),
    ([("Date", T0 - 10), ("Last-Modified", LM)], LM - 1, False),
    ([("Date", T0 - 10), ("Last-Modified", "garbage")], T0 - 10, True),  # invalid LM: Date
    ([("Date", T0 - 10), ("Last-Modified", "garbage")], T0 - 11, False),
]


@pytest.mark.parametrize(("fields", "since", "not_modified"), IMS_CASES)
def test_if_modified_since_uses_last_modified_else_date(fields, since, not_modified):
    """RFC 9111 §4.3.2: compare with Last-Modified, else the stored Date, else receipt time."""
    response = [("Cache-Control", "max-age=600")]
    response += [(n, format_http_date(v) if isinstance(v, float) else v) for n, v in fields]
    cache, _, _ = stored(*response)
    found = cache.lookup("GET", URL, H(("If-Modified-Since", format_http_date(since))))
    assert (found.kind, found.not_modified) == ("fresh", not_modified)


def test_if_modified_since_without_any_date_uses_the_receipt_time():
    """RFC 9111 §4.3.2: no Last-Modified and no Date: the time the response was received.

    (A missing Date is filled in on storage with that time, RFC 9110 §6.6.1.)
    """
    cache, _, entry = stored(("Cache-Control", "max-age=600"))
    assert parse_http_date(entry.headers.get("Date")) == T0
    assert cache.lookup("GET", URL, H(("If-Modified-Since", format_http_date(T0)))).not_modified
    since = format_http_date(T0 - 1)
    assert not cache.lookup("GET", URL, H(("If-Modified-Since", since))).not_modified


@pytest.mark.parametrize(
    ("request_fields", "not_modified"),
    [
        ([("If-Modified-Since", "yesterday")], False),  # invalid date: ignored (§13.1.3)
        ([("If-None-Match", '"other"'), ("If-Modified-Since", format_http_date(T0))], False),
        ([("If-None-Match", '"v1"'), ("If-Modified-Since", format_http_date(T0 - 99))], True),
    ],
)
def test_if_none_match_takes_precedence_and_invalid_dates_are_ignored(request_fields, not_modified):
    """RFC 9110 §13.2.2: If-Modified-Since is ignored when If-None-Match is present."""
    cache, _, _ = stored(
        ("Cache-Control", "max-age=600"), ("Date", format_http_date(T0)), ("ETag", '"v1"')
    )
    assert cache.lookup("GET", URL, H(*request_fields)).not_modified is not_modified


def test_if_modified_since_only_for_2xx():
    """RFC 9110 §13.2.1: a stored 404 never turns into a 304."""
    cache, _, _ = stored(
        ("Cache-Control", "max-age=600"), ("Date", format_http_date(T0)), status=404
    )
    since = format_http_date(T0 + 5)
    assert not cache.lookup("GET", URL, H(("If-Modified-Since", since))).not_modified


# -- defect 1: a 304 after revalidation gives an unconditional client the stored 200 -------------

REVALIDATION_CASES = [
    # (stored validators, 304 fields, client fields, status, updated, entry kept)
    # RFC 9111 §4.3.4: the 304's validator selects the stored response: freshened, 200.
    ([("ETag", '"v1"')], [("ETag", '"v1"')], [], 200, True, True),
    ([("ETag", 'W/"v1"')], [("ETag", 'W/"v1"')], [], 200, True, True),
    ([("Last-Modified", LM)], [("Last-Modified", LM)], [], 200, True, True),
    ([("Last-Modified", LM)], [], [], 200, True, True),  # no validator: the one revalidated
    # RFC 9111 §4.3.2: the client's own matching validator makes it a 304 for the client.
    ([("ETag", '"v1"')], [("ETag", '"v1"')], [("If-None-Match", '"v1"')], 304, True, True),
    ([("ETag", '"v1"')], [("ETag", '"v1"')], [("If-None-Match", '"v0"')], 200, True, True),
    # §4.3.4: a 304 with a new strong ETag updates nothing, yet the stored 200 answers (§4.3.3).
    ([("Last-Modified", LM)], [("ETag", '"new"')], [], 200, False, False),
    ([("ETag", '"v1"')], [("ETag", '"v2"')], [], 200, False, False),
]


@pytest.mark.parametrize(
    ("validators", "update", "client", "status", "updated", "kept"), REVALIDATION_CASES
)
def test_revalidated_never_relays_the_304(validators, update, client, status, updated, kept):
    """RFC 9110 §15.4.5, RFC 9111 §4.3.3-4.3.4: a 304 to the cache's own validators is not the
    client's answer; the stored response is."""
    validators = [(n, format_http_date(v) if isinstance(v, float) else v) for n, v in validators]
    update = [(n, format_http_date(v) if isinstance(v, float) else v) for n, v in update]
    cache, clock, entry = stored(("Cache-Control", "max-age=60"), ("X-Version", "1"), *validators)
    clock.now += 100
    found = cache.lookup("GET", URL, H(*client))
    assert found.kind == "stale" and found.conditional_headers is not None
    update_fields = H(("Date", format_http_date(clock.now)), ("X-Version", "2"), *update)
    answer = cache.revalidated(entry, update_fields, H(*client), clock.now, clock.now)
    assert answer.entry is entry and answer.entry.body == b"body"
    assert (answer.status, answer.updated) == (status, updated)
    assert "fwd-status=304" in answer.cache_status
    assert (len(cache) == 1) is kept
    if updated:
        assert entry.headers.get("X-Version") == "2"
        assert cache.lookup("GET", URL, H()).kind == "fresh"
    else:
        assert entry.headers.get("X-Version") == "1"  # not updated (§4.3.4)
        assert "validator-mismatch" in answer.cache_status
        assert cache.lookup("GET", URL, H()).kind == "miss"

"""Field syntax the cache reads: Cache-Control, HTTP-dates, entity tags."""

from proxy.cache.directives import (
    DELTA_SECONDS_MAX,
    CacheControl,
    format_http_date,
    parse_etags,
    parse_http_date,
    weak_match,
)

NOV_6_1994 = 784111777.0


def test_directive_names_are_case_insensitive_and_arguments_unquoted():
    """RFC 9111 §5.2: directive names are case-insensitive; arguments may be quoted."""
    cc = CacheControl.parse(['MAX-AGE="60", Public'])
    assert cc.seconds("max-age") == 60
    assert "public" in cc
    assert cc.argument("public") is None


def test_quoted_argument_may_contain_commas():
    """RFC 9111 §5.2.2.7: private="a, b" lists field names inside one quoted-string."""
    cc = CacheControl.parse(['private="Set-Cookie, X-Id", max-age=5'])
    assert cc.field_names("private") == ["set-cookie", "x-id"]
    assert cc.seconds("max-age") == 5


def test_directives_gathered_from_every_field_line_first_wins():
    """RFC 9111 §4.2.1: with duplicate directives the first occurrence may be used."""
    cc = CacheControl.parse(["max-age=10", "no-cache, max-age=99"])
    assert cc.seconds("max-age") == 10
    assert "no-cache" in cc


def test_invalid_delta_seconds_means_stale():
    """RFC 9111 §5.2: invalid freshness information is treated as stale (zero)."""
    assert CacheControl.parse(["max-age=abc"]).seconds("max-age") == 0
    assert CacheControl.parse(["max-age=-5"]).seconds("max-age") == 0
    assert CacheControl.parse(["max-age"]).seconds("max-age") == 0
    assert CacheControl.parse([""]).seconds("max-age") is None


def test_huge_delta_seconds_is_capped():
    """RFC 9111 §1.2.2: a delta-seconds too large to represent becomes 2147483648."""
    assert CacheControl.parse(["max-age=99999999999999"]).seconds("max-age") == DELTA_SECONDS_MAX


def test_http_date_three_formats():
    """RFC 9110 §5.6.7: IMF-fixdate, obsolete RFC 850 and asctime formats are all accepted."""
    for text in (
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ):
        assert parse_http_date(text) == NOV_6_1994
    assert format_http_date(NOV_6_1994) == "Sun, 06 Nov 1994 08:49:37 GMT"


def test_invalid_http_date_is_none():
    """RFC 9111 §5.3: invalid dates such as "0" are recognised as invalid."""
    for text in ("0", "-1", "yesterday", "", None):
        assert parse_http_date(text) is None


def test_entity_tag_lists_and_weak_comparison():
    """RFC 9110 §8.8.3.2: the weak comparison ignores W/; lists split outside quotes."""
    assert parse_etags('W/"a", "b,c" , *') == ['W/"a"', '"b,c"', "*"]
    assert weak_match('W/"a"', '"a"')
    assert not weak_match('"a"', '"b"')

"""Table-driven tests of the pure blocklist: parsing, matching, errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.blocklist import EMPTY, Match, ParseError, Rule, normalize_host, parse, parse_rule, rules

# (rules text, url or authority, expected rule text or None)
CASES = [
    # whole labels only: the substring trap of the original report
    ("x.com", "http://netflix.com/", None),
    ("x.com", "http://x.com/", "x.com"),
    ("x.com", "http://a.b.x.com/p", "x.com"),
    ("x.com", "http://x.com.evil.org/", None),
    ("x.com", "http://xx.com/", None),
    ("x.com", "x.com:443", "x.com"),
    # *. and =
    ("*.example.com", "http://example.com/", None),
    ("*.example.com", "http://www.example.com/", "*.example.com"),
    ("*.example.com", "a.b.example.com:443", "*.example.com"),
    ("=example.com", "http://example.com/", "=example.com"),
    ("=example.com", "http://www.example.com/", None),
    (".example.com", "http://example.com/", ".example.com"),
    # path prefixes
    ("example.com/ads/", "http://example.com/ads/banner.png", "example.com/ads/"),
    ("example.com/ads/", "http://cdn.example.com/ads/x", "example.com/ads/"),
    ("example.com/ads/", "http://example.com/adsense", None),
    ("example.com/ads/", "http://example.com/ads", None),
    ("example.com/ads/", "http://example.com/", None),
    ("example.com/ads/", "example.com:443", None),  # CONNECT: path unknown
    ("example.com/ads", "http://example.com/ads", "example.com/ads"),
    ("example.com/ads", "http://example.com/ads/x", "example.com/ads"),
    ("example.com/ads", "http://example.com/ads?q=1", "example.com/ads"),
    ("example.com/ads", "http://example.com/adsense", None),
    ("example.com/ads", "http://example.com/ADS/x", "example.com/ads"),
    ("example.com/ads", "http://example.com/x/../ads/y", "example.com/ads"),
    ("example.com/ads", "http://example.com/%61ds/y", "example.com/ads"),
    ("http://example.com/ads/", "https://example.com/ads/x", "http://example.com/ads/"),
    ("https://example.com/ads/", "http://example.com/ads/x", "https://example.com/ads/"),
    ("http://example.com", "example.com:443", "http://example.com"),
    ("http://example.com/", "http://www.example.com/a", "http://example.com/"),
    ("example.com/search?q=", "http://example.com/search?q=cats", "example.com/search?q="),
    ("=example.com/a", "http://www.example.com/a", None),
    ("*.example.com/a", "http://www.example.com/a", "*.example.com/a"),
    # case, trailing dot, IDN
    ("WWW.Example.COM.", "http://www.example.com/", "WWW.Example.COM."),
    ("www.example.com", "http://WWW.EXAMPLE.COM./", "www.example.com"),
    ("bücher.example", "http://xn--bcher-kva.example/", "bücher.example"),
    ("xn--bcher-kva.example", "http://BÜCHER.example/", "xn--bcher-kva.example"),
    ("bücher.example", "http://shop.bücher.example/", "bücher.example"),
    # ports: no port = every port; a port restricts; the default port of a scheme
    ("example.com", "http://example.com:8080/", "example.com"),
    ("example.com:8080", "http://example.com/", None),
    ("example.com:8080", "http://example.com:8080/", "example.com:8080"),
    ("example.com:443", "example.com:443", "example.com:443"),
    ("example.com:80", "http://example.com/", "example.com:80"),
    ("example.com:80", "https://example.com/", None),
    ("http://example.com:80/a", "https://example.com/a", "http://example.com:80/a"),
    # IP addresses and ranges: literal targets only
    ("10.0.0.0/8", "http://10.1.2.3/", "10.0.0.0/8"),
    ("10.0.0.0/8", "http://11.0.0.1/", None),
    ("10.0.0.0/8", "10.0.0.1:443", "10.0.0.0/8"),
    ("203.0.113.7", "http://203.0.113.7:8080/x", "203.0.113.7"),
    ("203.0.113.7", "http://203.0.113.8/", None),
    ("203.0.113.7/32", "http://203.0.113.7/", "203.0.113.7/32"),
    ("::1/128", "http://[::1]:8080/", "::1/128"),
    ("::1", "[::1]:443", "::1"),
    ("[::1]", "http://[0:0::1]/", "[::1]"),
    ("2001:db8::/32", "http://[2001:db8:1::5]/", "2001:db8::/32"),
    ("10.0.0.0/8", "http://[::ffff:10.0.0.1]/", "10.0.0.0/8"),
    ("[::1]:8443", "[::1]:8443", "[::1]:8443"),
    ("[::1]:8443", "[::1]:443", None),
    ("http://127.0.0.1/admin", "http://127.0.0.1/admin/x", "http://127.0.0.1/admin"),
    ("http://127.0.0.1/admin", "http://127.0.0.1/", None),
    ("http://10.0.0.0/8", "http://10.0.0.0/8/x", "http://10.0.0.0/8"),
    ("http://10.0.0.0/8", "http://10.0.0.1/8", None),
    # the original report's format
    ("www.example.com  \n", "http://www.example.com/", "www.example.com"),
    (
        "http://neverssl.com/favicon.ico\n",
        "http://neverssl.com/favicon.ico",
        "http://neverssl.com/favicon.ico",
    ),
    ("http://neverssl.com/favicon.ico", "http://neverssl.com/", None),
]


@pytest.mark.parametrize(("rules", "url", "expected"), CASES)
def test_match_table(rules: str, url: str, expected: str | None) -> None:
    found = parse(rules).match_url(url)
    assert (found.rule.text if found else None) == expected


def test_report_format_full_url_rule() -> None:
    bl = parse("http://neverssl.com/favicon.ico  \r\n")
    assert bl.match_url("http://neverssl.com/favicon.ico").rule == Rule(
        "http://neverssl.com/favicon.ico", 1
    )


def test_match_arguments() -> None:
    bl = parse("example.com/ads\n=exact.org:8080\n")
    assert bl.match("example.com", "/ads/1") == Match(Rule("example.com/ads", 1))
    assert bl.match("example.com", None) is None  # CONNECT: no path
    assert bl.match("exact.org", "/", 8080) is not None
    assert bl.match("exact.org", "/", None, scheme="https") is None
    assert EMPTY.match("example.com", "/") is None


def test_invalid_lines_reported_and_skipped() -> None:
    text = "\n".join(
        [
            "# comment",
            "good.com  # trailing comment",
            "exa mple.com",
            "*.",
            "300.1.1.1/8",
            "a..b",
            "*example.com",
            "",
            "ftp://example.com",
            "example.com:99999",
            "10.0.0.1/8",
            "=10.0.0.1",
            "example.123",
            "also-good.org",
        ]
    )
    bl = parse(text)
    assert [(r.line, r.text) for r in bl.rules] == [(2, "good.com"), (14, "also-good.org")]
    assert [e.line for e in bl.errors] == [3, 4, 5, 6, 7, 9, 10, 11, 12, 13]
    assert bl.errors[0] == ParseError(3, "exa mple.com", "contains whitespace")
    assert all(e.message and "\n" not in e.message for e in bl.errors)
    assert len(bl) == 2
    assert bl.match_url("http://good.com/") and bl.match_url("http://also-good.org/")


def test_comments_and_blank_lines() -> None:
    bl = parse("  # whole line\n\n   \nexample.com\t# tab comment\nhttp://a.com/x#frag\n")
    assert [r.text for r in bl.rules] == ["example.com", "http://a.com/x#frag"]


def test_parse_rule_and_keys() -> None:
    assert parse_rule("  Example.COM \n", 3) == Rule("Example.COM", 3)
    with pytest.raises(ValueError, match="whitespace"):
        parse_rule("exa mple.com")
    same = parse("Example.COM.\nexample.com\nhttp://example.com:80/\nbücher.example\n")
    assert same.keys() == {"example.com", "xn--bcher-kva.example"}
    assert len(same) == 4


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("[::1]", "::1"),
        ("0:0::1", "::1"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("10.0.0.1", "10.0.0.1"),
        ("under_score.example", "under_score.example"),
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize(
    "host", ["", ".", "a..b", "exa mple.com", "300.1.1.1", "[::1", "a/b", "x" * 64]
)
def test_normalize_host_rejects(host: str) -> None:
    with pytest.raises(ValueError):
        normalize_host(host)


def test_first_rule_wins_and_most_specific_host() -> None:
    bl = parse("example.com\nwww.example.com\nexample.com\n")
    assert bl.match_url("http://www.example.com/").rule.line == 2
    assert bl.match_url("http://example.com/").rule.line == 1
    assert len(bl) == 3


labels = st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True)


@given(st.lists(labels, min_size=1, max_size=4), st.lists(labels, min_size=1, max_size=3))
def test_never_a_substring_match(rule_labels: list[str], other: list[str]) -> None:
    rule = ".".join(rule_labels + ["test"])
    host = ".".join(other + ["test"])
    expected = host == rule or host.endswith("." + rule)
    assert (parse(rule).match(host, "/") is not None) == expected
    prefixed = "x" + host  # glue a character onto the first label
    glued = prefixed == rule or prefixed.endswith("." + rule)
    assert (parse(rule).match(prefixed, "/") is not None) == glued


def test_pure_module_imports() -> None:
    tree = ast.parse(Path(rules.__file__).read_text())
    names = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    names |= {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert not names & {"socket", "selectors", "ssl", "threading", "watchdog", "minireactor"}

"""Issue 18: eleven defects found by probing the running proxy, one regression test (or more) each.

Every end-to-end case drives the real proxy over loopback (``make_proxy``) with raw sockets
and, where the origin's side matters, a scripted origin (``raw_origin``). The pure function
behind each fix is tested on its own next to it.

Each test failed before its fix (the ones whose fix lives in the session were first written as
strict xfails and flipped when it was wired).
"""

from __future__ import annotations

import base64
import html
import ipaddress
import json
import logging
import re
import socket
import threading
import time

import pytest
from support import read_response
from test_robustness import WAIT, canned, raw_origin, read_all, silent, status_of, wait_for

from proxy import auth
from proxy.config import Config
from proxy.http11 import Headers, ProtocolError
from proxy.policy import address_refusal, embedded_ipv4, is_globally_routable
from proxy.target import parse_target

__all__ = ["raw_origin"]  # a fixture, used by name


def _access_lines(proxy) -> list[str]:
    return proxy.access.snapshot()


def _ask(proxy, wire: bytes, *, source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send *wire* on a new connection (from *source*, a loopback address) and read one answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(WAIT)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((proxy.host, proxy.port))
        sock.sendall(wire)
        return read_response(sock)
    finally:
        sock.close()


# -- 1. --deny-private refuses every destination that is not globally routable ----------------

NOT_GLOBAL = [
    "100.100.100.200",  # shared address space (RFC 6598): cloud metadata services
    "100.64.0.1",
    "127.0.0.1",
    "10.1.2.3",
    "169.254.169.254",
    "0.0.0.0",
    "192.0.0.8",  # IETF protocol assignments; Python's is_global says yes
    "198.18.0.1",  # benchmarking
    "224.0.1.1",  # multicast; is_global says yes
    "255.255.255.255",
    "::1",
    "::",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:100.100.100.200",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1; is_global says yes
    "2002:6464:64c8::1",  # 6to4 of 100.100.100.200
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1; is_global says yes
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215); is_global says yes
    "::7f00:1",  # IPv4-compatible (deprecated); is_global says yes
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT); is_global says yes
    "fe80::1",
    "fec0::1",  # site-local (deprecated); is_global says yes
    "fc00::1",
    "ff0e::1",  # global-scope multicast; is_global says yes
    "2001:db8::1",
    "3fff::1",  # documentation (RFC 9637); Python 3.11's is_global says yes
    "5f00::1",  # SRv6 SIDs (RFC 9602)
    "2001::1",  # Teredo
]
GLOBAL = ["8.8.8.8", "1.1.1.1", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]
GLOBAL += ["2001:4860:4860::8888", "2606:4700::1111"]


@pytest.mark.parametrize("text", NOT_GLOBAL)
def test_not_globally_routable(text):
    assert not is_globally_routable(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", GLOBAL)
def test_globally_routable(text):
    assert is_globally_routable(ipaddress.ip_address(text))


def test_embedded_ipv4_unwraps_mapped_6to4_and_nat64():
    v6 = ipaddress.IPv6Address
    assert str(embedded_ipv4(v6("::ffff:10.0.0.1"))) == "10.0.0.1"
    assert str(embedded_ipv4(v6("2002:a00:1::5"))) == "10.0.0.1"
    assert str(embedded_ipv4(v6("64:ff9b::a00:1"))) == "10.0.0.1"
    assert embedded_ipv4(v6("2001:4860::1")) is None


def test_every_resolved_address_is_checked():
    config = Config(deny_private=True)
    public = (socket.AF_INET, ("8.8.8.8", 80))
    metadata = (socket.AF_INET, ("100.100.100.200", 80))
    nat64 = (socket.AF_INET6, ("64:ff9b::7f00:1", 80, 0, 0))
    assert address_refusal(config, [public]) is None
    refusal = address_refusal(config, [public, metadata])
    assert refusal is not None and "100.100.100.200" in refusal
    refusal = address_refusal(config, [public, nat64])
    assert refusal is not None and "127.0.0.1" in refusal  # the address it leads to is named
    assert address_refusal(Config(deny_private=False), [metadata]) is None


DENIED_NAMES = {
    "metadata.test": "100.100.100.200",
    "cgnat.test": "100.64.0.1",
    "mapped.test": "::ffff:100.100.100.200",
    "sixtofour.test": "2002:7f00:1::1",
    "nat64.test": "64:ff9b::7f00:1",
    "localnat64.test": "64:ff9b:1::a00:1",
}


@pytest.mark.parametrize(
    "host",
    [*DENIED_NAMES, "100.100.100.200", "[64:ff9b::7f00:1]", "[::ffff:100.64.0.1]"],
)
def test_deny_private_refuses_get_and_connect_before_any_connection(make_proxy, host):
    # A refused check would try to connect: give that a deadline far beyond the answer's.
    proxy = make_proxy(deny_private=True, hosts=DENIED_NAMES, connect_timeout=5.0)
    started = time.monotonic()
    status, _headers, body = _ask(
        proxy, f"GET http://{host}/latest/meta-data/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    )
    assert status == 403, body
    assert b"not globally routable" in body
    with proxy.connect() as sock:
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        data, _how = read_all(sock)
    assert status_of(data) == 403, data[:200]
    assert time.monotonic() - started < 4.0  # no connect attempt ran into its deadline
    assert wait_for(lambda: len(_access_lines(proxy)) >= 2)
    lines = _access_lines(proxy)
    assert all(" TCP_DENIED/403 " in line for line in lines), lines


def test_deny_private_still_lets_the_proxy_serve_its_own_pages(make_proxy):
    proxy = make_proxy(deny_private=True)
    wire = f"GET /stats.json HTTP/1.1\r\nHost: {proxy.host}:{proxy.port}\r\n\r\n".encode()
    assert _ask(proxy, wire)[0] == 200


# -- 6. an authority with two colons is a 400 from the target parser, never a 500 ------------

BAD_AUTHORITIES = [
    "127.0.0.1:80:80",
    "example.com:80:80",
    "::1",  # an IPv6 literal needs brackets
    "[::1]:80:80",
    "[fe80::1%25eth0]",
    "[v1.future]",
    "example.com:",
    "example.com:+80",
    "example.com:0",
    "example.com:65536",
    "example.com:000000080",
    ".",
    "a..b",
    ".example.com",
    "x" * 64 + ".example.com",  # a label longer than 63
    ("a" * 63 + ".") * 4 + "com",  # a name longer than 253
    "2130706433",  # 127.0.0.1 to inet_aton
    "0x7f.1",
    "0177.0.0.1",
    "1.2.3.4.5",
    "256.0.0.1",
    "exa(mple).com",
    "exa,mple.com",
    "exa~mple.com",
    "[::1",
]


@pytest.mark.parametrize("authority", BAD_AUTHORITIES)
def test_target_parser_refuses_malformed_authorities(authority):
    with pytest.raises(ProtocolError) as absolute:
        parse_target("GET", f"http://{authority}/")
    with pytest.raises(ProtocolError) as connect:
        parse_target("CONNECT", authority)
    assert absolute.value.status == connect.value.status == 400


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("http://Example.COM./x", "example.com", 80),
        ("http://127.0.0.1:8080/", "127.0.0.1", 8080),
        ("http://[::1]:81/", "::1", 81),
        ("http://[0:0::1]/", "::1", 80),
        ("http://_srv.example-1.com/", "_srv.example-1.com", 80),
        ("http://host?q", "host", 80),
    ],
)
def test_target_parser_accepts_and_normalises_hosts(text, host, port):
    target = parse_target("GET", text)
    assert (target.host, target.port) == (host, port)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("http://host?q=1", "/?q=1"),
        ("http://host:8080?x=1&y", "/?x=1&y"),
        ("http://host#frag", "/"),
        ("http://host?q#frag", "/?q"),
        ("http://host/a?b#c", "/a?b"),
        ("http://host", "/"),
    ],
)
def test_a_query_right_after_the_authority_stays_in_the_path(text, path):
    assert parse_target("GET", text).path == path


def test_a_query_right_after_the_authority_reaches_the_origin(make_proxy, raw_origin):
    # It used to be dropped: the origin got "GET /" and the cache stored the answer under "/".
    origin = raw_origin(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    proxy = make_proxy(cache_enabled=True)
    wire = f"GET http://origin.test:{origin.port}?q=1 HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    assert _ask(proxy, wire.encode())[0] == 200
    assert origin.heads[0].startswith(b"GET /?q=1 HTTP/1.1\r\n")


# -- numbers longer than int() reads: Python refuses over 4,300 digits ------------------------

LONG_NUMBER = "9" * 4400


def test_long_numbers_in_cache_fields_are_read_as_the_largest_value():
    from proxy.cache.directives import DELTA_SECONDS_MAX, parse_delta_seconds
    from proxy.cache.ranges import parse_range

    assert parse_delta_seconds(LONG_NUMBER) == DELTA_SECONDS_MAX  # RFC 9111 section 1.2.2
    assert parse_range(f"bytes={LONG_NUMBER}-") is None  # invalid: the field is ignored
    assert parse_range(f"bytes=-{LONG_NUMBER}") is None


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("GET", f"Cache-Control: max-age={LONG_NUMBER}"),
        ("GET", f"Cache-Control: max-stale={LONG_NUMBER}, min-fresh={LONG_NUMBER}"),
        ("GET", f"Range: bytes={LONG_NUMBER}-"),
        ("OPTIONS", f"Max-Forwards: {LONG_NUMBER}"),
    ],
    ids=["max-age", "max-stale", "range", "max-forwards"],
)
def test_long_numbers_from_a_client_are_no_500(make_proxy, raw_origin, caplog, method, field):
    caplog.set_level(logging.INFO)
    origin = raw_origin(
        canned(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok")
    )
    proxy = make_proxy(cache_enabled=True)
    url = f"http://origin.test:{origin.port}/n"
    plain = f"GET {url} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode()
    assert _ask(proxy, plain)[0] == 200  # stored, so the second request meets the cache
    asked = f"{method} {url} HTTP/1.1\r\nHost: origin.test\r\n{field}\r\n\r\n".encode()
    status, _headers, body = _ask(proxy, asked)
    assert status == 200 and body == b"ok"
    if method == "OPTIONS":
        assert b"\r\nMax-Forwards: 999999999999999999\r\n" in origin.heads[-1]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_long_numbers_from_an_origin_are_no_500_on_a_later_hit(make_proxy, raw_origin, caplog):
    caplog.set_level(logging.INFO)
    answer = f"HTTP/1.1 200 OK\r\nCache-Control: max-age={LONG_NUMBER}\r\nAge: {LONG_NUMBER}\r\n"
    origin = raw_origin(canned(answer.encode() + b"Content-Length: 2\r\n\r\nok"))
    proxy = make_proxy(cache_enabled=True)
    wire = f"GET http://origin.test:{origin.port}/n HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    for _ in range(2):
        status, _headers, body = _ask(proxy, wire.encode())
        assert status == 200 and body == b"ok"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("cache", [True, False])
def test_two_colons_in_an_authority_get_400_not_500(make_proxy, caplog, cache):
    caplog.set_level(logging.INFO)
    proxy = make_proxy(cache_enabled=cache)  # the empty blocklist of the fixture: the default
    for wire in (
        b"GET http://127.0.0.1:80:80/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"CONNECT 127.0.0.1:80:80 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET http://2130706433/ HTTP/1.1\r\nHost: 2130706433\r\n\r\n",
    ):
        status, _headers, body = _ask(proxy, wire)
        assert status == 400, body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- 9. identical Content-Length fields are forwarded as one, both ways ----------------------


def _content_lengths(head: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")[1:]
    return [line for line in lines if line.lower().startswith(b"content-length:")]


@pytest.mark.parametrize(
    "lengths",
    [["5", "5"], ["5, 5"], ["5", "5, 5", "5"]],
    ids=["two-fields", "one-list", "fields-and-list"],
)
def test_identical_content_lengths_reach_the_origin_as_one(make_proxy, raw_origin, lengths):
    origin = raw_origin(canned(b"HTTP/1.1 204 No Content\r\n\r\n"))
    proxy = make_proxy()
    fields = "".join(f"Content-Length: {value}\r\n" for value in lengths)
    url = f"http://origin.test:{origin.port}/upload"
    wire = f"POST {url} HTTP/1.1\r\nHost: origin.test\r\n{fields}\r\nhello".encode()
    assert _ask(proxy, wire)[0] == 204
    assert len(origin.heads) == 1
    assert _content_lengths(origin.heads[0]) == [b"Content-Length: 5"]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("lengths", [["5", "5"], ["5, 5"]], ids=["two-fields", "one-list"])
def test_identical_content_lengths_reach_the_client_as_one(make_proxy, raw_origin, cache, lengths):
    fields = "".join(f"Content-Length: {value}\r\n" for value in lengths).encode()
    origin = raw_origin(canned(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nhello"))
    proxy = make_proxy(cache_enabled=cache)
    with proxy.connect() as sock:
        sock.sendall(
            f"GET http://origin.test:{origin.port}/x HTTP/1.1\r\nHost: origin.test\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data, how = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(data) == 200 and body == b"hello" and how == "eof"
    assert _content_lengths(head) == [b"Content-Length: 5"]


# -- 10 and 11. a refused blocklist reload is visible; an invalid line is quoted briefly ------


def _stats(proxy) -> dict:
    wire = f"GET /stats.json HTTP/1.1\r\nHost: {proxy.host}:{proxy.port}\r\n\r\n".encode()
    status, _headers, body = _ask(proxy, wire)
    assert status == 200, body
    return json.loads(body)


def _replace_file(path, data: bytes) -> None:
    """Save as editors do (write a temporary file, rename it over): the watcher sees one event."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _last_reload(proxy, predicate) -> dict:
    found: list[dict] = []

    def seen() -> bool:
        reload = _stats(proxy)["blocklist"]["last_reload"]
        found[:] = [reload]
        return bool(reload) and predicate(reload)

    assert wait_for(seen), found
    return found[0]


@pytest.fixture
def watched_proxy(make_proxy, tmp_path):
    (tmp_path / "blacklist.txt").write_text("ads.example\ntracker.example\n")
    proxy = make_proxy(watch_blacklist=True)
    assert _stats(proxy)["blocklist"]["rules"] == 2
    return proxy, tmp_path / "blacklist.txt"


@pytest.mark.parametrize("fault", ["not-utf-8", "deleted"])
def test_refused_reload_shows_in_stats_json(watched_proxy, fault):
    proxy, path = watched_proxy
    if fault == "deleted":
        path.unlink()
        reason = "the file is missing"
    else:
        _replace_file(path, b"ads.example\nb\xe9d.example\n")
        reason = "line 2 is not UTF-8 (byte 0xe9 at column 2)"
    reload = _last_reload(proxy, lambda r: r["ok"] is False)
    assert reason in reload["message"]
    assert reload["rules"] == 2  # the last good list is still the one in force
    assert _stats(proxy)["blocklist"]["rules"] == 2
    wire = b"GET http://ads.example/x HTTP/1.1\r\nHost: ads.example\r\n\r\n"
    assert _ask(proxy, wire)[0] == 403
    _replace_file(path, b"ads.example\n")  # fixed: the next success replaces the failure
    reload = _last_reload(proxy, lambda r: r["ok"] is True)
    assert reload["rules"] == 1


def test_stats_json_shows_the_reason_and_the_rejected_lines(watched_proxy):
    proxy, path = watched_proxy
    _replace_file(path, b"ads.example\nbad rule one\nbad rule two\n")
    reload = _last_reload(proxy, lambda r: r["rules"] == 1)
    assert (reload["ok"], reload["reason"], reload["rejected"]) == (True, "", 2)
    _replace_file(path, b"ads.example\n\xff\n\xfe\n\xfd\n")
    reload = _last_reload(proxy, lambda r: r["ok"] is False)
    assert reload["reason"] == "line 2 is not UTF-8 (byte 0xff at column 1)"
    assert reload["rejected"] == 3


def test_a_huge_invalid_blocklist_line_is_logged_as_a_short_prefix(watched_proxy, caplog):
    proxy, path = watched_proxy
    caplog.set_level(logging.INFO)
    _replace_file(path, b"ads.example\n" + b"y" * 1_000_000 + b"\n" + b"bad rule\n")
    _last_reload(proxy, lambda r: r["rules"] == 1)
    assert wait_for(
        lambda: any("invalid rule 'bad rule'" in r.getMessage() for r in caplog.records)
    )
    longest = max(len(r.getMessage()) for r in caplog.records)
    assert longest < 600, f"a log line of {longest} characters"
    assert any("(1000000 characters)" in r.getMessage() for r in caplog.records)


# -- 4. a flood of wrong passwords from one client slows only that client ---------------------


def _basic(user: str, password: str) -> Headers:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return Headers([("Proxy-Authorization", f"Basic {token}")])


USERS = {f"user{i}": f"password {i}" for i in range(12)}


def _checker(**budgets: float) -> tuple[auth.Authenticator, list[float]]:
    now = [1000.0]
    lines = "\n".join(auth.make_entry(u, p, iterations=1000) for u, p in USERS.items())
    return auth.Authenticator(auth.parse_entries(lines), clock=lambda: now[0], **budgets), now


def test_a_flooding_client_is_throttled_and_others_are_not():
    # A frozen clock: no debt drains during the test, so what passes is what the budgets allow.
    checker, _now = _checker(budget=10.0, client_budget=0.003)
    for guess in range(200):
        assert checker.user_for(_basic("user0", f"guess {guess}"), "10.0.0.1") is None
    flood_hashes = checker.hashes
    assert flood_hashes < 20 and checker.throttled == 200 - flood_hashes
    for number, (user, password) in enumerate(USERS.items()):
        assert checker.user_for(_basic(user, password), f"10.0.1.{number}") == user
    assert checker.hashes == flood_hashes + len(USERS)


def test_guessing_one_user_from_many_addresses_is_bounded_by_the_user_budget():
    checker, _now = _checker(budget=10.0, client_budget=10.0, user_budget=0.005)
    for guess in range(100):
        checker.user_for(_basic("user0", f"guess {guess}"), f"10.0.0.{guess % 10}")
    # One first guess per address is free of the user budget, the rest share it.
    assert 10 <= checker.hashes < 30, checker.hashes
    # The user's own first login, from an address that never failed, still gets in.
    assert checker.user_for(_basic("user0", "password 0"), "192.0.2.7") == "user0"


def test_the_shared_budget_keeps_room_for_clean_clients():
    checker, _now = _checker(budget=0.02, client_budget=10.0, user_budget=10.0)
    for guess in range(300):  # ten addresses guessing together
        checker.user_for(_basic(f"user{guess % 12}", f"guess {guess}"), f"10.0.{guess % 10}.1")
    guessed = checker.hashes
    assert checker.throttled > 0 and guessed < 100
    for guess in range(100):  # caught guessing, they find the shared budget spent
        checker.user_for(_basic("user1", f"again {guess}"), f"10.0.{guess % 10}.1")
    assert checker.hashes == guessed
    # A clean client may go up to twice the budget: there is room for a genuine newcomer.
    assert checker.user_for(_basic("user3", "password 3"), "192.0.2.1") == "user3"


def test_debts_drain_so_a_throttled_client_is_forgiven():
    checker, now = _checker(budget=10.0, client_budget=0.003)
    for guess in range(50):
        checker.user_for(_basic("user0", f"guess {guess}"), "10.0.0.1")
    assert checker.user_for(_basic("user0", "password 0"), "10.0.0.1") is None  # throttled
    now[0] += 60.0
    assert checker.user_for(_basic("user0", "password 0"), "10.0.0.1") == "user0"


def test_wrong_passwords_never_evict_a_cached_right_one():
    checker, _now = _checker(budget=1e9, client_budget=1e9, user_budget=1e9)
    assert checker.user_for(_basic("user5", "password 5"), "10.0.0.5") == "user5"
    for guess in range(auth.CACHE_SIZE + 50):
        checker.user_for(_basic("user0", f"guess {guess}"), "10.0.0.1")
    hashes = checker.hashes
    assert checker.user_for(_basic("user5", "password 5"), "10.0.0.5") == "user5"
    assert checker.hashes == hashes  # answered from the cache, no hash


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("2001:db8:1:2::5", "2001:db8:1:2:ffff::1", True),  # one /64, one host
        ("2001:db8:1:2::5", "2001:db8:1:3::5", False),
        ("::ffff:10.0.0.1", "10.0.0.1", True),
        ("fe80::1%eth0", "fe80::2", True),
        ("10.0.0.1", "10.0.0.2", False),
        (None, "", True),
    ],
)
def test_client_keys(first, second, same):
    assert (auth.client_key(first) == auth.client_key(second)) is same


def _flood_wrong_passwords(proxy, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        with proxy.connect() as sock:
            sock.settimeout(WAIT)
            guess = 0
            while not stop.is_set():
                guess += 1
                credentials = _basic("user0", f"guess {guess}").get("proxy-authorization")
                sock.sendall(
                    f"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n"
                    f"Proxy-Authorization: {credentials}\r\n\r\n".encode()
                )
                assert read_response(sock)[0] == 407
    except BaseException as exc:  # reported by the test, not lost in a thread
        errors.append(exc)


def test_genuine_first_logins_get_through_a_password_flood(make_proxy, origin, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text(
        "\n".join(auth.make_entry(u, p, iterations=50_000) for u, p in USERS.items()) + "\n"
    )
    proxy = make_proxy(auth_file=str(users))
    stop, errors = threading.Event(), []
    flooders = [
        threading.Thread(target=_flood_wrong_passwords, args=(proxy, stop, errors))
        for _ in range(2)
    ]
    for thread in flooders:
        thread.start()
    try:
        assert wait_for(lambda: proxy.call(lambda: proxy.server.auth.throttled) > 20), "no flood"
        statuses = []
        for number, (user, password) in enumerate(USERS.items()):
            credentials = _basic(user, password).get("proxy-authorization")
            wire = (
                f"GET http://origin.test:{origin.port}/hello HTTP/1.1\r\nHost: origin.test\r\n"
                f"Proxy-Authorization: {credentials}\r\n\r\n"
            ).encode()
            statuses.append(_ask(proxy, wire, source=f"127.0.0.{number + 2}")[0])
    finally:
        stop.set()
        for thread in flooders:
            thread.join(WAIT)
    assert not errors, errors
    assert statuses == [200] * len(USERS), f"{statuses.count(407)} of 12 got 407"


# -- 2. a 101 that answers no Upgrade request is a 502, never a raw pipe ----------------------


def _switching_origin(protocol: str):
    """Behaviour: answer 101 to protocol *protocol*, then record every byte that follows."""
    received: list[bytes] = []

    def behaviour(conn: socket.socket, _head: bytes) -> None:
        conn.sendall(
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\n"
            "Connection: upgrade\r\n\r\n".encode()
        )
        conn.settimeout(3.0)
        try:
            while data := conn.recv(65536):
                received.append(data)
        except OSError:
            pass

    return behaviour, received


@pytest.mark.parametrize(
    "asked", ["", "Upgrade: websocket\r\nConnection: upgrade\r\n"], ids=["no-upgrade", "other"]
)
def test_unrequested_101_is_a_502(make_proxy, origin, raw_origin, asked):
    behaviour, received = _switching_origin("evil-pipe")
    switcher = raw_origin(behaviour)
    proxy = make_proxy()
    with proxy.connect() as sock:
        sock.settimeout(WAIT)
        sock.sendall(
            f"GET http://origin.test:{switcher.port}/ HTTP/1.1\r\nHost: origin.test\r\n"
            f"{asked}\r\n".encode()
        )
        status, _headers, _body = read_response(sock)
        # The client's next request, for another origin, must go there, not to the switcher.
        sock.sendall(
            f"GET http://other.test:{origin.port}/hello HTTP/1.1\r\nHost: other.test\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        rest, _how = read_all(sock)
    assert status == 502
    assert status_of(rest) in (200, None)  # served, or the connection was closed after a 502
    assert b"other.test" not in b"".join(received)
    assert len(switcher.heads) == 1


# -- 3. the proxy's own pages: only for its own names, no query strings, per user -------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}"])
def test_own_pages_refuse_a_foreign_host(make_proxy, host):
    proxy = make_proxy()
    for path in ("/stats.json", "/", "/proxy.pac"):
        wire = f"GET {path} HTTP/1.1\r\nHost: {host.format(port=proxy.port)}\r\n\r\n".encode()
        status, _headers, body = _ask(proxy, wire)
        assert status in (400, 403, 421), (path, status)
        assert b"uptime_seconds" not in body and b"FindProxyForURL" not in body


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "proxy.local", "127.0.0.1", "localhost"]
)
def test_own_pages_answer_the_proxys_own_names(make_proxy, host):
    proxy = make_proxy()
    wire = f"GET /stats.json HTTP/1.1\r\nHost: {host.format(port=proxy.port)}\r\n\r\n".encode()
    status, _headers, body = _ask(proxy, wire)
    assert status == 200 and b"uptime_seconds" in body


def test_recent_requests_show_no_query_strings(make_proxy, origin):
    proxy = make_proxy()
    url = f"http://origin.test:{origin.port}/hello?session=SECRET-TOKEN&q=1"
    assert _ask(proxy, f"GET {url} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode())[0] == 200
    recent = _stats(proxy)["recent"]
    assert [r["url"] for r in recent] == [f"http://origin.test:{origin.port}/hello"]


def test_recent_requests_are_per_user_with_an_auth_file(make_proxy, origin, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text(
        auth.make_entry("alice", "a-pw", iterations=1000)
        + "\n"
        + auth.make_entry("bob", "b-pw", iterations=1000)
        + "\n"
    )
    proxy = make_proxy(auth_file=str(users))
    alice = f"Proxy-Authorization: {_basic('alice', 'a-pw').get('proxy-authorization')}\r\n"
    bob = f"Proxy-Authorization: {_basic('bob', 'b-pw').get('proxy-authorization')}\r\n"
    for who, path in ((alice, "/hello"), (bob, "/echo")):
        wire = f"GET http://origin.test:{origin.port}{path} HTTP/1.1\r\nHost: x\r\n{who}\r\n"
        assert _ask(proxy, wire.encode())[0] == 200
    own = f"Host: {proxy.host}:{proxy.port}\r\n"
    status, _headers, body = _ask(proxy, f"GET /stats.json HTTP/1.1\r\n{own}{alice}\r\n".encode())
    assert status == 200
    urls = [r["url"] for r in json.loads(body)["recent"]]
    assert urls == [f"http://origin.test:{origin.port}/hello"], urls


# -- 5. upload progress re-arms the first-byte deadline ---------------------------------------


def _trickle_upload(sock: socket.socket, url: str, size: int, seconds: float) -> float:
    """POST *size* bytes to *url*, spread evenly over *seconds*; return when the last left."""
    sock.sendall(
        f"POST {url} HTTP/1.1\r\nHost: origin.test\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    pieces = 30
    started = time.monotonic()
    for number in range(pieces):
        # Pace by the clock; a 504 arriving early shows up as a reset or a closed socket.
        time.sleep(max(0.0, started + seconds * number / pieces - time.monotonic()))
        try:
            sock.sendall(b"u" * (size // pieces))
        except OSError:
            break
    return time.monotonic()


def test_an_upload_longer_than_the_first_byte_timeout_is_not_cut(make_proxy, origin):
    proxy = make_proxy(first_byte_timeout=1.0)
    with proxy.connect() as sock:
        sock.settimeout(WAIT)
        _trickle_upload(sock, f"http://origin.test:{origin.port}/echo", 30_000, 3.0)
        status, headers, body = read_response(sock)
    assert status == 200 and headers["x-received-bytes"] == "30000" and len(body) == 30_000


def test_the_first_byte_deadline_runs_from_the_end_of_the_upload(make_proxy, raw_origin):
    quiet = raw_origin(silent)
    proxy = make_proxy(first_byte_timeout=1.0)
    with proxy.connect() as sock:
        sock.settimeout(WAIT)
        sent = _trickle_upload(sock, f"http://origin.test:{quiet.port}/sink", 30_000, 3.0)
        status, _headers, body = read_response(sock)
        waited = time.monotonic() - sent
    assert status == 504, body[:200]
    assert 0.7 <= waited <= 2.5, f"504 {waited:.2f} s after the upload ended"


# -- 7. --idle-timeout N cuts a stalled response after N, not 2N ------------------------------


def test_idle_timeout_cuts_a_stalled_response_after_n_seconds(make_proxy, raw_origin):
    stalled = raw_origin(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx", close=False))
    proxy = make_proxy(idle_timeout=1.0, cache_enabled=False)
    with proxy.connect() as sock:
        sock.settimeout(WAIT)
        sock.sendall(f"GET http://origin.test:{stalled.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = sock.recv(65536)
        stalled_at = time.monotonic()
        rest, how = read_all(sock)
        cut_after = time.monotonic() - stalled_at
    assert status_of(first) == 200 and how in ("eof", "reset")
    assert len((first + rest).partition(b"\r\n\r\n")[2]) < 100
    assert 0.8 <= cut_after <= 1.7, f"cut after {cut_after:.2f} s with --idle-timeout 1"


# -- 8. --head-timeout holds when the buffered head ends at a line end ------------------------


def test_head_timeout_holds_for_a_head_sent_line_by_line(make_proxy):
    proxy = make_proxy(head_timeout=1.0, keepalive_timeout=8.0)
    with proxy.connect() as sock:
        sock.sendall(b"GET http://origin.test/ HTTP/1.1\r\n")
        started = time.monotonic()
        sock.settimeout(0.25)  # one header line every quarter second, until answered
        answer = b""
        line = 0
        while time.monotonic() - started < 6.0:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                line += 1
                try:
                    sock.sendall(f"X-Line-{line}: slow\r\n".encode())
                except OSError:
                    break
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408, answer[:200]
    assert 0.8 <= elapsed <= 2.0, f"408 after {elapsed:.2f} s with --head-timeout 1"


@pytest.mark.browser
def test_dashboard_shows_a_refused_reload_with_its_reason_and_rejected_lines(
    watched_proxy, tmp_path
):
    from test_browser import dump_dom

    proxy, path = watched_proxy
    _replace_file(path, b"ads.example\n\xff\n\xfe\n\xfd\n")
    _last_reload(proxy, lambda r: r["ok"] is False)
    dom = dump_dom(tmp_path, proxy, "http://proxy.local/")
    shown = re.search(r'<span id="reload">(.*?)</span>', dom, re.S)
    assert shown is not None, dom[:2000]
    text = html.unescape(shown.group(1))
    assert "reload failed" in text
    assert "line 2 is not UTF-8 (byte 0xff at column 1)" in text
    assert "3 lines rejected" in text
    assert "2 rules" in text  # what is still in force


# -- found by the whole-proxy fuzzer: interim responses keep their hop-by-hop fields ---------


def test_interim_responses_lose_their_hop_by_hop_fields(make_proxy, raw_origin):
    hints = raw_origin(
        canned(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\nKeep-Alive: timeout=5\r\n"
            b"Connection: X-Hint\r\nX-Hint: 1\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    proxy = make_proxy()
    with proxy.connect() as sock:
        sock.sendall(
            f"GET http://origin.test:{hints.port}/ HTTP/1.1\r\nHost: origin.test\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data, _how = read_all(sock)
    interim, _, final = data.partition(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 103 ") and b"link: </style.css>" in interim.lower()
    for field in (b"keep-alive:", b"x-hint:", b"connection: x-hint"):
        assert field not in interim.lower()
    assert status_of(final) == 200

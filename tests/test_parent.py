"""A parent proxy: a second instance of ours as the upstream proxy, over loopback.

The child proxy sends every request through the parent (``--parent``); the tests check what
each hop sees, that CONNECT tunnels go through both, that the parent's credentials travel and
the client's do not, that a bypassed domain goes direct, and that a parent that is down or
silent gives the client a page naming it.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest
from support import OriginServer, RunningProxy, read_response

from proxy.auth import make_entry
from proxy.parent import Bypass, Route, connect_head, parse_parent, redact_parent
from proxy.target import Target


def _get(proxy: RunningProxy, url: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    with proxy.connect() as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        return read_response(sock)


def _chain(make_proxy, **child: object) -> tuple[RunningProxy, RunningProxy]:
    parent = make_proxy(via_pseudonym="parent-proxy")
    chained = make_proxy(parent=f"http://127.0.0.1:{parent.port}", **child)
    return parent, chained


# -- the pure part ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://10.0.0.1:3128", ("10.0.0.1", 3128, None)),
        ("proxy.lan", ("proxy.lan", 3128, None)),
        ("http://u%40x:p%3Aw@proxy.lan:8080/", ("proxy.lan", 8080, "Basic dUB4OnA6dw==")),
    ],
)
def test_parent_urls(url: str, expected: tuple[str, int, str | None]) -> None:
    assert tuple(parse_parent(url)) == expected


@pytest.mark.parametrize(
    "url", ["https://proxy.lan", "http://proxy.lan/path", "http://:3128", "http://h:99999"]
)
def test_bad_parent_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_parent(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://u:s3cret@proxy.lan",
        "http://u:s3cret@proxy.lan/path",
        "http://u:s3cret@:3128",
        "http://u:s3cret@h:99999",
        "http://u:s3/cret@h:99999",  # a raw / that cuts the authority short of the @
        "ftp://u:s3cret@h",
    ],
)
def test_a_bad_parent_url_is_named_without_its_password(url: str) -> None:
    """The message goes to stderr at start and to the journal on SIGHUP."""
    with pytest.raises(ValueError) as caught:
        parse_parent(url)
    assert "s3" not in str(caught.value) and "cret" not in str(caught.value)
    assert "u:***@" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1", "http://u:***@h:1"),
        ("u:p@h", "u:***@h"),
        ("http://u:p@w@h:1", "http://u:***@h:1"),
        ("http://u@h", "http://u@h"),  # a user alone is no secret
        ("http://h:1", "http://h:1"),
    ],
)
def test_redact_parent(url: str, shown: str) -> None:
    assert redact_parent(url) == shown


def test_bypass_matches_domains_with_their_subdomains_and_literal_addresses() -> None:
    bypass = Bypass(["intranet.example", ".lan", "10.0.0.0/8", "::1/128"])
    assert bypass.matches("intranet.example") and bypass.matches("WWW.intranet.example.")
    assert bypass.matches("printer.lan") and bypass.matches("10.1.2.3") and bypass.matches("[::1]")
    assert not bypass.matches("notintranet.example") and not bypass.matches("11.0.0.1")
    route = Route(parse_parent("http://p:1"), bypass)
    assert route.hop_for(Target("http", "printer.lan", 80, "/")).parent is None
    assert route.hop_for(Target("http", "example.com", 80, "/")).port == 1


def test_the_connect_head_names_the_target_and_carries_the_parents_credentials() -> None:
    head = connect_head("origin.test:443", parse_parent("http://a:b@p:1"), "me")
    assert head.startswith(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n")
    assert b"Proxy-Authorization: Basic YTpi\r\n" in head and head.endswith(b"\r\n\r\n")


# -- two proxies on loopback -----------------------------------------------------------------------


def test_http_goes_through_the_parent_in_absolute_form(make_proxy, origin: OriginServer) -> None:
    parent, child = _chain(make_proxy)
    status, _, body = _get(child, origin.url("/headers", host="origin.test"))
    assert status == 200
    seen = json.loads(body)
    assert seen["request_line"] == "GET /headers HTTP/1.1"
    via = ", ".join(value for name, value in seen["headers"] if name.lower() == "via")
    assert via == "1.1 minireactor, 1.1 parent-proxy", "each hop adds itself, in order"
    parent_saw = parent.call(lambda: [r.url for r in parent.server.stats.recent])
    assert parent_saw == [origin.url("/headers", host="origin.test")]


def test_a_connect_tunnel_goes_through_both(
    make_proxy, tls_origin: OriginServer, client_tls_context: ssl.SSLContext
) -> None:
    parent, child = _chain(make_proxy)
    with child.connect() as raw:
        authority = f"origin.test:{tls_origin.port}"
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert raw.recv(1024).startswith(b"HTTP/1.1 200")
        with client_tls_context.wrap_socket(raw, server_hostname="origin.test") as tls:
            tls.sendall(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello from the origin\n")
    results = parent.call(lambda: dict(parent.server.stats.results))
    deadline = time.monotonic() + 10
    while "TCP_TUNNEL" not in results and time.monotonic() < deadline:
        results = parent.call(lambda: dict(parent.server.stats.results))
    assert results.get("TCP_TUNNEL") == 1


def test_the_parents_credentials_travel_and_the_clients_do_not(
    make_proxy, tmp_path, origin: OriginServer
) -> None:
    users = tmp_path / "users"
    users.write_text(make_entry("child", "s3cret", iterations=1000) + "\n")
    parent = make_proxy(via_pseudonym="parent-proxy", auth_file=str(users))
    child = make_proxy(parent=f"http://child:s3cret@127.0.0.1:{parent.port}")
    status, _, body = _get(
        child,
        origin.url("/headers", host="origin.test"),
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n",
    )
    assert status == 200
    headers = dict(json.loads(body)["headers"])
    assert "Proxy-Authorization" not in headers, "credentials for a proxy never reach the origin"
    wrong = make_proxy(parent=f"http://child:wrong@127.0.0.1:{parent.port}")
    status, _, body = _get(wrong, origin.url("/hello", host="origin.test"))
    assert status == 502 and b"parent proxy 127.0.0.1:" in body and b"407" in body


def test_a_bypassed_domain_goes_direct(make_proxy, origin: OriginServer) -> None:
    parent, child = _chain(make_proxy, parent_bypass=("origin.test",))
    assert _get(child, origin.url("/hello", host="origin.test"))[0] == 200
    assert parent.call(lambda: parent.server.stats.requests_total) == 0


def test_a_parent_that_is_down_is_named_in_a_502(make_proxy, origin: OriginServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the socket is closed
    child = make_proxy(parent=f"http://127.0.0.1:{closed_port}")
    status, _, body = _get(child, origin.url("/hello", host="origin.test"))
    assert status == 502
    assert f"parent proxy 127.0.0.1:{closed_port}".encode() in body
    with child.connect() as sock:
        sock.sendall(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 502 and b"parent proxy" in body


def test_a_silent_parent_is_named_in_a_504(make_proxy, origin: OriginServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            silent.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(silent.accept()[0])
                except TimeoutError:
                    pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            child = make_proxy(
                parent=f"http://127.0.0.1:{silent.getsockname()[1]}",
                first_byte_timeout=1.0,
                connect_timeout=1.0,
            )
            status, _, body = _get(child, origin.url("/hello", host="origin.test"))
            assert status == 504 and b"parent proxy 127.0.0.1:" in body
            with child.connect() as sock:
                sock.sendall(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
                status, _, body = read_response(sock)
            assert status == 504 and b"parent proxy 127.0.0.1:" in body
        finally:
            stop.set()
            thread.join(5)
            for sock in accepted:
                sock.close()

"""End to end: the HTTP cache in the running proxy (RFC 9111), observed from both sides.

The origin's ``/cacheable`` route counts its hits (``origin.hits``) and keeps every request
head (``origin.requests``), so "served from the cache" means "the origin never heard of it".
"""

from __future__ import annotations

import threading
from urllib.parse import quote

from support import OriginServer, read_response
from test_e2e_relay import Responses

MiB = 1024 * 1024


def fetch(
    proxy,
    origin: OriginServer,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh client connection; returns (status, headers, body)."""
    url = f"http://origin.test:{origin.port}{path}"
    lines = [f"{method} {url} HTTP/1.1", f"Host: origin.test:{origin.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if method in ("POST", "PUT", "DELETE") and "Content-Length" not in (headers or {}):
        lines.append("Content-Length: 0")
    with proxy.connect(timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if method == "HEAD":
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                assert data
                buf += data
            head = buf.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])
            }
            return int(head[0].split()[1]), fields, b""
        return read_response(sock)


def test_fresh_hit_does_not_reach_the_origin(proxy, origin):
    first = fetch(proxy, origin, "/cacheable")
    second = fetch(proxy, origin, "/cacheable")
    assert first[0] == second[0] == 200
    assert second[2] == first[2]
    assert origin.hits["/cacheable"] == 1
    assert "age" in second[1]
    assert int(second[1]["age"]) >= 0
    assert "hit" in second[1]["cache-status"]
    assert "hit" not in first[1].get("cache-status", "").split(";")[1:2]


def test_no_store_private_and_post_are_not_cached(proxy, origin):
    for cc in ("no-store", "private"):
        path = f"/cacheable?cc={cc}"
        fetch(proxy, origin, path)
        status, headers, _ = fetch(proxy, origin, path)
        assert status == 200
        assert "hit" not in headers.get("cache-status", "")
    assert origin.hits["/cacheable"] == 4
    fetch(proxy, origin, "/cacheable?cc=max-age%3D60&p=1", method="POST")
    fetch(proxy, origin, "/cacheable?cc=max-age%3D60&p=1", method="POST")
    assert origin.hits["/cacheable"] == 6


def test_stale_entry_is_revalidated_with_its_etag(proxy, origin):
    # no-cache: store, but ask the origin every time. A lifetime (max-age) is needed too: this
    # cache deliberately stores nothing without a freshness source (test_cache_storable.py).
    path = "/cacheable?cc=" + quote("no-cache, max-age=60") + "&etag=" + quote('"v1"')
    status, _, first_body = fetch(proxy, origin, path)
    assert status == 200
    for round_trip in (2, 3):
        status, headers, body = fetch(proxy, origin, path)
        assert status == 200
        assert body == first_body  # the stored body, served after the origin's 304
        assert origin.hits["/cacheable"] == round_trip
        conditional = origin.requests[-1][2]
        assert conditional.get("If-None-Match") == '"v1"'
        assert "fwd-status=304" in headers["cache-status"]


def test_vary_keeps_variants_apart(proxy, origin):
    path = "/cacheable?vary=Accept-Encoding"
    gzip = fetch(proxy, origin, path, headers={"Accept-Encoding": "gzip"})
    plain = fetch(proxy, origin, path, headers={"Accept-Encoding": "identity"})
    assert origin.hits["/cacheable"] == 2
    assert b"Accept-Encoding: gzip" in gzip[2]
    assert b"Accept-Encoding: identity" in plain[2]
    again = fetch(proxy, origin, path, headers={"Accept-Encoding": "gzip"})
    again_plain = fetch(proxy, origin, path, headers={"Accept-Encoding": "identity"})
    assert origin.hits["/cacheable"] == 2
    assert again[2] == gzip[2]
    assert again_plain[2] == plain[2]


def test_concurrent_fetches_of_one_url_are_collapsed(proxy, origin):
    clients = 10
    start = threading.Barrier(clients)
    results: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            start.wait(10)
            status, _, body = fetch(proxy, origin, "/slow?delay=1")
            results.append((status, body))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert len(results) == clients
    assert {status for status, _ in results} == {200}
    assert len({body for _, body in results}) == 1
    assert origin.hits["/slow"] == 1
    collapsed = proxy.call(lambda: proxy.server.cache_step.collapsed)
    assert collapsed >= 1


def test_object_over_the_limit_is_relayed_but_not_stored(make_proxy, origin):
    proxy = make_proxy(cache_max_object=8 * MiB)
    size = 20 * MiB
    path = f"/big-cacheable?size={size}"
    status, _, body = fetch(proxy, origin, path)
    assert status == 200
    assert len(body) == size
    assert body == b"c" * size
    fetch(proxy, origin, path)
    assert origin.hits["/big-cacheable"] == 2
    assert proxy.call(lambda: proxy.server.cache_step.cache.size) == 0


def test_eviction_keeps_the_cache_within_its_size(make_proxy, origin):
    cache_size = 64 * 1024
    proxy = make_proxy(cache_size=cache_size, cache_max_object=32 * 1024)
    for i in range(10):
        status, _, body = fetch(proxy, origin, f"/big-cacheable?size=20000&n={i}")
        assert (status, len(body)) == (200, 20000)
        size = proxy.call(lambda: proxy.server.cache_step.cache.size)
        assert 0 < size <= cache_size
    entries = proxy.call(lambda: len(proxy.server.cache_step.cache))
    assert entries < 10
    # The most recent object survived eviction; the oldest did not.
    fetch(proxy, origin, "/big-cacheable?size=20000&n=9")
    assert origin.hits["/big-cacheable"] == 10
    fetch(proxy, origin, "/big-cacheable?size=20000&n=0")
    assert origin.hits["/big-cacheable"] == 11


def test_post_invalidates_the_cached_get(proxy, origin):
    fetch(proxy, origin, "/cacheable")
    fetch(proxy, origin, "/cacheable")
    assert origin.hits["/cacheable"] == 1
    status, _, _ = fetch(proxy, origin, "/cacheable", method="POST")
    assert status == 200
    assert origin.hits["/cacheable"] == 2
    status, headers, _ = fetch(proxy, origin, "/cacheable")
    assert status == 200
    assert origin.hits["/cacheable"] == 3
    assert "hit" not in headers.get("cache-status", "")


def test_only_if_cached_miss_is_504(proxy, origin):
    status, _, _ = fetch(proxy, origin, "/cacheable", headers={"Cache-Control": "only-if-cached"})
    assert status == 504
    assert origin.hits["/cacheable"] == 0


def test_head_is_served_from_a_cached_get(proxy, origin):
    _, _, body = fetch(proxy, origin, "/cacheable")
    status, headers, _ = fetch(proxy, origin, "/cacheable", method="HEAD")
    assert status == 200
    assert origin.hits["/cacheable"] == 1
    assert "hit" in headers["cache-status"]
    assert headers["content-length"] == str(len(body))


# -- a cache hit on a kept-alive connection ----------------------------------------------------


def _get(origin: OriginServer, path: str, method: str = "GET") -> bytes:
    url = f"http://origin.test:{origin.port}{path}"
    return f"{method} {url} HTTP/1.1\r\nHost: origin.test:{origin.port}\r\n\r\n".encode()


def test_connection_survives_a_fresh_hit(proxy, origin):
    fetch(proxy, origin, "/cacheable")
    with proxy.connect(timeout=10) as sock:
        sock.sendall(_get(origin, "/cacheable"))
        status, headers, _ = read_response(sock)
        assert "hit" in headers["cache-status"]
        sock.sendall(_get(origin, "/hello"))
        assert read_response(sock)[2] == b"hello from the origin\n"


def test_connection_survives_a_head_served_from_the_cache(proxy, origin):
    fetch(proxy, origin, "/cacheable")
    with proxy.connect(timeout=10) as sock:
        sock.sendall(_get(origin, "/cacheable", "HEAD"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            assert data
            buf += data
        assert b"hit" in buf
        sock.sendall(_get(origin, "/hello"))
        assert read_response(sock)[2] == b"hello from the origin\n"


def test_pipelined_hits_and_misses_are_answered_in_order(proxy, origin):
    fetch(proxy, origin, "/cacheable")
    batch = _get(origin, "/cacheable") + _get(origin, "/hello") + _get(origin, "/cacheable")
    with proxy.connect(timeout=10) as sock:
        sock.sendall(batch)
        responses = Responses(sock)
        answers = [responses.read() for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert "hit" in answers[0][1]["cache-status"]
    assert answers[1][2] == b"hello from the origin\n"
    assert "hit" in answers[2][1]["cache-status"]
    assert answers[0][2] == answers[2][2]
    assert origin.hits["/cacheable"] == 1


def test_connection_survives_a_revalidated_hit(proxy, origin):
    path = "/cacheable?cc=" + quote("no-cache, max-age=60") + "&etag=" + quote('"v1"')
    fetch(proxy, origin, path)
    with proxy.connect(timeout=10) as sock:
        sock.sendall(_get(origin, path))
        status, headers, _ = read_response(sock)
        assert (status, "fwd-status=304" in headers["cache-status"]) == (200, True)
        sock.sendall(_get(origin, "/hello"))
        assert read_response(sock)[2] == b"hello from the origin\n"


def test_reused_hit_heads_still_follow_each_client_connection(proxy, origin):
    # Hit heads are serialised once per Age second and reused: a reused head must never carry
    # another client's Connection decision.
    fetch(proxy, origin, "/cacheable")
    kept = fetch(proxy, origin, "/cacheable")
    closing = fetch(proxy, origin, "/cacheable", headers={"Connection": "close"})
    kept_again = fetch(proxy, origin, "/cacheable")
    assert origin.hits["/cacheable"] == 1
    assert "connection" not in kept[1] and "connection" not in kept_again[1]
    assert closing[1]["connection"] == "close"
    assert kept[2] == closing[2] == kept_again[2]
    assert "hit" in kept_again[1]["cache-status"] and "hit" in closing[1]["cache-status"]

"""End to end, issue 17: the cache's conformance fixes, stale serving, ranges and the disk tier.

A scripted origin (below) answers each request with the next response of a script, and can be
stopped for good (listener closed, every connection shut), which the shared ``OriginServer``
cannot: its keep-alive handler threads outlive ``stop()``.

Each test failed before its fix (the ones wired in the session were first strict xfails).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from support import read_response

from proxy.cache.directives import format_http_date

Request = tuple[str, str, dict[str, str]]
"""(method, target, lower-cased header fields) as the origin received them."""

Script = Callable[[int, Request], bytes | None]
"""Given the request number (1, 2, ...) and the request: the bytes to answer, or None to close
the connection without answering (a reset before the head)."""


class ScriptedOrigin:
    """A loopback origin answering from a script; one request per connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                self._connections.append(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    data += chunk
            except OSError:
                return
            lines = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            with self._lock:
                self.requests.append((method, target, fields))
                number = len(self.requests)
            answer = self.script(number, (method, target, fields))
            if answer is not None:
                try:
                    connection.sendall(answer)
                except OSError:
                    return

    def stop(self) -> None:
        """Refuse every new connection and cut the open ones: the origin is gone."""
        try:
            # On Linux only shutdown() wakes a thread blocked in accept(); close() alone would
            # leave the socket listening until that accept() returned.
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._accepting.join(10)
        for thread in self._threads:
            thread.join(10)


def response(status: int, body: bytes = b"", **fields: str) -> bytes:
    """An HTTP/1.1 response that closes its connection; field names from keywords."""
    reason = {200: "OK", 304: "Not Modified", 503: "Service Unavailable"}.get(status, "X")
    head = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
    head += [f"{name.replace('_', '-')}: {value}" for name, value in fields.items()]
    if status != 304:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if status == 304 else body)


@pytest.fixture
def scripted():
    """Start scripted origins; all are stopped at the end of the test."""
    started: list[ScriptedOrigin] = []

    def start(script: Script) -> ScriptedOrigin:
        origin = ScriptedOrigin(script)
        started.append(origin)
        return origin

    yield start
    for origin in started:
        origin.stop()


def fetch(proxy, origin, path="/r", timeout=30.0, **fields: str):
    """One GET through the proxy on a new connection: (status, fields, body)."""
    host = f"origin.test:{origin.port}"
    lines = [f"GET http://{host}{path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in fields.items()]
    with proxy.connect(timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return read_response(sock)


NOW = time.time


# -- defect 1: a 304 after the cache's own revalidation ------------------------------------------


def test_304_with_a_new_etag_gives_an_unconditional_client_the_stored_200(proxy, scripted):
    """RFC 9110 §15.4.5, RFC 9111 §4.3.3-4.3.4: the client did not ask for a 304."""
    modified = format_http_date(NOW() - 3600)

    def script(number, request):
        if number == 1:
            return response(
                200, b"the stored body", Cache_Control="max-age=0", Last_Modified=modified
            )
        assert request[2].get("if-modified-since") == modified  # the cache revalidates
        return response(304, ETag='"new"', Date=format_http_date(NOW()))

    origin = scripted(script)
    assert fetch(proxy, origin)[0] == 200
    status, fields, body = fetch(proxy, origin)
    assert len(origin.requests) == 2
    assert (status, body) == (200, b"the stored body")
    assert "fwd-status=304" in fields["cache-status"]


def test_304_with_the_same_validator_freshens_and_serves_the_stored_200(proxy, scripted):
    """RFC 9111 §4.3.4: the usual case, already right; kept so the rewrite keeps it."""

    def script(number, request):
        if number == 1:
            return response(200, b"the stored body", Cache_Control="max-age=0", ETag='"v1"')
        assert request[2].get("if-none-match") == '"v1"'
        return response(304, ETag='"v1"', Cache_Control="max-age=60")

    origin = scripted(script)
    fetch(proxy, origin)
    assert fetch(proxy, origin)[::2] == (200, b"the stored body")
    status, fields, body = fetch(proxy, origin)  # freshened: now a hit
    assert (status, body, len(origin.requests)) == (200, b"the stored body", 2)
    assert "hit" in fields["cache-status"]


# -- defects 2-4, through the proxy ---------------------------------------------------------------


@pytest.mark.parametrize(
    "expires", ["Thu, 18 Aug 50 02:01:18 GMT", "Thu, 18 Aug 2050 02:01:18 UTC", "0"]
)
def test_invalid_expires_is_not_reused(proxy, scripted, expires):
    """RFC 9111 §5.3: each of these means "already expired"; the origin is asked again."""
    origin = scripted(lambda n, r: response(200, f"copy {n}".encode(), Expires=expires))
    fetch(proxy, origin)
    assert fetch(proxy, origin)[2] == b"copy 2"


def test_list_valued_age_uses_its_first_member(proxy, scripted):
    """RFC 9111 §5.1: Age: 7200, 0 is 7200 seconds old, past max-age=3600."""
    origin = scripted(
        lambda n, r: response(
            200, f"copy {n}".encode(), Cache_Control="max-age=3600", Age="7200, 0"
        )
    )
    fetch(proxy, origin)
    assert fetch(proxy, origin)[2] == b"copy 2"


def test_if_modified_since_is_compared_with_date_without_last_modified(proxy, scripted):
    """RFC 9110 §13.1.3, RFC 9111 §4.3.2: the cache answers 304 itself, from the Date."""
    date = format_http_date(NOW() - 60)
    origin = scripted(lambda n, r: response(200, b"body", Cache_Control="max-age=600", Date=date))
    fetch(proxy, origin)
    status, _, body = fetch(proxy, origin, If_Modified_Since=date)
    assert (status, body, len(origin.requests)) == (304, b"", 1)
    earlier = format_http_date(NOW() - 120)
    assert fetch(proxy, origin, If_Modified_Since=earlier)[0] == 200


# -- serving stale when the origin fails (RFC 9111 §4.2.4, RFC 5861 stale-if-error) --------------


def test_a_stopped_origin_is_replaced_by_the_cached_copy(proxy, scripted):
    """The classic proxy-lab check: fetch, stop the origin, fetch again, get the copy.

    The origin sends no freshness information at all: the copy is stored stale at once
    (RFC 9111 §3) and stands in only because the origin is unreachable (§4.2.4).
    """
    origin = scripted(
        lambda n, r: response(200, b"<html>lab page</html>", Content_Type="text/html")
    )
    assert fetch(proxy, origin)[::2] == (200, b"<html>lab page</html>")
    origin.stop()
    status, fields, body = fetch(proxy, origin)
    assert (status, body) == (200, b"<html>lab page</html>")
    assert "fwd=stale" in fields["cache-status"] and "stale-if-error" in fields["cache-status"]


@pytest.mark.parametrize("failure", ["503", "reset"])
def test_a_failing_origin_is_replaced_by_the_stale_copy(proxy, scripted, failure):
    """RFC 5861 §4: a 5xx or a connection cut before the head, within stale-if-error."""

    def script(number, request):
        if number == 1:
            return response(200, b"stale but good", Cache_Control="max-age=0, stale-if-error=600")
        return response(503, b"down for maintenance") if failure == "503" else None

    origin = scripted(script)
    fetch(proxy, origin)
    status, fields, body = fetch(proxy, origin)
    assert (status, body) == (200, b"stale but good")
    expected = "fwd-status=503" if failure == "503" else "fwd=stale"
    assert expected in fields["cache-status"]


def test_must_revalidate_forbids_serving_stale_when_the_origin_is_gone(proxy, scripted):
    """RFC 9111 §4.2.4, §5.2.2.2: must-revalidate makes an unreachable origin an error."""
    origin = scripted(
        lambda n, r: response(
            200, b"strict", Cache_Control="max-age=0, must-revalidate", ETag='"s"'
        )
    )
    fetch(proxy, origin)
    origin.stop()
    status, _, body = fetch(proxy, origin)
    assert status in (502, 504) and body != b"strict"


# -- stale-while-revalidate (RFC 5861 §3) ---------------------------------------------------------


def test_stale_while_revalidate_answers_at_once_and_refreshes_in_the_background(proxy, scripted):
    """The client never waits for the slow origin; the next client sees the new copy."""
    slow = threading.Event()

    def script(number, request):
        if number == 1:
            return response(200, b"old", Cache_Control="max-age=0, stale-while-revalidate=600")
        assert slow.wait(30)
        return response(200, b"new", Cache_Control="max-age=600")

    origin = scripted(script)
    fetch(proxy, origin)
    try:
        started = time.monotonic()
        status, fields, body = fetch(proxy, origin, timeout=5)
        assert (status, body) == (200, b"old") and time.monotonic() - started < 5
        assert "stale-while-revalidate" in fields["cache-status"]
    finally:
        slow.set()
    deadline = time.monotonic() + 20
    while fetch(proxy, origin)[2] != b"new":
        assert time.monotonic() < deadline, "the background revalidation never landed"
        time.sleep(0.05)
    assert len(origin.requests) == 2  # one revalidation, however many clients asked


# -- ranges from a stored response (RFC 9110 §14) -------------------------------------------------


def test_a_range_of_a_stored_response_is_served_from_the_cache(proxy, scripted):
    """RFC 9110 §14.2, §15.3.7: 206 with Content-Range, cut from the stored body."""
    origin = scripted(lambda n, r: response(200, b"0123456789", Cache_Control="max-age=600"))
    fetch(proxy, origin)
    status, fields, body = fetch(proxy, origin, Range="bytes=2-5")
    assert (status, body, fields["content-range"]) == (206, b"2345", "bytes 2-5/10")
    assert len(origin.requests) == 1


# -- the disk tier (--cache-dir) ------------------------------------------------------------------


def test_a_restarted_proxy_serves_hits_from_the_cache_dir(make_proxy, scripted, tmp_path):
    """Issue 17 item 7: what one proxy stored, the next one (same folder) serves."""
    origin = scripted(lambda n, r: response(200, f"copy {n}".encode(), Cache_Control="max-age=600"))
    first = make_proxy(cache_dir=str(tmp_path / "cache"))
    assert fetch(first, origin)[2] == b"copy 1"
    first.stop()
    second = make_proxy(cache_dir=str(tmp_path / "cache"))
    status, fields, body = fetch(second, origin)
    assert (status, body, len(origin.requests)) == (200, b"copy 1", 1)
    assert "hit" in fields["cache-status"]

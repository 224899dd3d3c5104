"""Part A checks: the HTTP relay (35 points).

Theory of operation
-------------------
Each check sends real requests through the proxy to the loopback HTTP origin and compares what
each end saw: the client the response, the origin (through its log, found by the request's
``X-Lab-Check`` field) the request. A check collects every problem it finds before failing, so
the reason lists all of them, not just the first.
"""

from __future__ import annotations

import json
import re
import time

from checks import CheckFailed, Context, check, expect, fail_if
from checks.http_origin import CHUNKS, CLOSE_BODY, HELLO, Recorded, big_body, sha256
from checks.wire import HttpClient, Reply, ask, curl, expect_status, get

# received-protocol received-by [comment] (RFC 9110 section 7.6.3)
_VIA = re.compile(r"(HTTP/)?1\.[01] \S+( \(.*\))?")


def seen_by_origin(ctx: Context, marker: str) -> Recorded:
    """The request the origin received with ``X-Lab-Check: marker``."""
    recorded = ctx.origins.http.find(marker)
    if recorded is None:
        raise CheckFailed(f"the origin never received the request marked {marker!r}")
    return recorded


@check("A1", 4, "GET through the proxy, with curl")
def get_with_curl(ctx: Context) -> str:
    """A small body by IP address, and 300 kB by name (``localhost``, through the resolver)."""
    small = curl(ctx, ctx.origins.url("/hello"))
    expect_status(small.reply(), 200, "curl /hello")
    expect(small.body == HELLO, f"curl /hello: wrong body {small.body[:80]!r}")
    url = ctx.origins.url("/big?size=300000&seed=1", host="localhost")
    large = curl(ctx, url)
    expect_status(large.reply(), 200, f"curl {url}")
    wanted = big_body(300000, 1)
    expect(
        large.body == wanted,
        f"curl {url}: {len(large.body)} bytes (sha256 {sha256(large.body)[:12]}), "
        f"expected {len(wanted)} (sha256 {sha256(wanted)[:12]})",
    )
    return "200 and the origin's bytes, by address and by name"


@check("A2", 4, "origin-form request line, Host from the URL")
def origin_form(ctx: Context) -> str:
    """The origin sees ``GET /path?query`` and the URL's authority in one ``Host``."""
    port = ctx.origins.http.port
    cases = [
        (f"http://127.0.0.1:{port}/echo?x=1&y=%20z", "/echo?x=1&y=%20z", f"127.0.0.1:{port}"),
        (f"http://Origin.TEST:{port}/echo", "/echo", f"origin.test:{port}"),
        (f"http://127.0.0.1:{port}", "/", f"127.0.0.1:{port}"),
        (f"http://127.0.0.1:{port}?only=query", "/?only=query", f"127.0.0.1:{port}"),
    ]
    problems = []
    for number, (url, target, host) in enumerate(cases):
        marker = f"A2-{number}"
        request = (
            f"GET {url} HTTP/1.1\r\nHost: wrong.invalid\r\nX-Lab-Check: {marker}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        reply = ask(ctx, request, f"GET {url}")
        if reply.status >= 500 or reply.status in (400, 501):
            problems.append(f"GET {url}: {reply.describe()}")
            continue
        seen = seen_by_origin(ctx, marker)
        if seen.target != target:
            problems.append(f"GET {url}: the origin got target {seen.target!r}, not {target!r}")
        hosts = [value.lower() for value in seen.get_all("host")]
        if hosts != [host]:
            problems.append(f"GET {url} (client sent Host: wrong.invalid): origin saw Host {hosts}")
    fail_if(problems)
    return "targets rewritten to origin-form; Host taken from the URL, not from the client"


@check("A3", 5, "hop-by-hop fields removed, both ways")
def hop_by_hop(ctx: Context) -> str:
    """Connection-specific fields (and those ``Connection`` names) stop at the proxy."""
    url = ctx.origins.url("/hop")
    extra = (
        "Connection: keep-alive, X-Client-Private\r\n"
        "X-Client-Private: secret\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic bGFiOmxhYg==\r\n"
        "TE: trailers\r\n"
        "Upgrade: h2c\r\n"
        "X-Keep-Me: yes\r\n"
    )
    reply = ask(ctx, get(url, "A3", extra=extra), "GET /hop")
    expect_status(reply, 200, "GET /hop")
    seen = seen_by_origin(ctx, "A3")
    problems = []
    private = ["X-Client-Private", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization"]
    for name in [*private, "TE", "Upgrade"]:
        if seen.get(name) is not None:
            problems.append(f"the origin received {name}: {seen.get(name)}")
    if "x-client-private" in seen.tokens("connection"):
        problems.append("the origin received Connection: ... X-Client-Private")
    if seen.get("x-keep-me") != "yes":
        problems.append("the end-to-end field X-Keep-Me did not reach the origin")
    for name in ("X-Origin-Private", "Keep-Alive"):
        if name in reply.headers:
            problems.append(f"the client received {name}: {reply.headers.get(name)}")
    if reply.headers.has_token("connection", "x-origin-private"):
        problems.append("the client received Connection: X-Origin-Private")
    if reply.headers.get("x-origin-public") != "visible":
        problems.append("the end-to-end field X-Origin-Public did not reach the client")
    fail_if(problems)
    return "removed: Connection and what it names, Keep-Alive, Proxy-*, TE, Upgrade"


@check("A4", 3, "Via added, both ways")
def via(ctx: Context) -> str:
    """Our ``Via`` entry goes after the ones already there, on the request and the response."""
    url = ctx.origins.url("/echo")
    reply = ask(ctx, get(url, "A4", extra="Via: 1.0 earlier-proxy\r\n"), "GET /echo")
    expect_status(reply, 200, "GET /echo")
    seen = seen_by_origin(ctx, "A4")
    entries = [
        item.strip() for value in seen.get_all("via") for item in value.split(",") if item.strip()
    ]
    problems = []
    if len(entries) != 2 or entries[0] != "1.0 earlier-proxy" or not _VIA.fullmatch(entries[1]):
        problems.append(f"the origin saw Via {entries}, wanted ['1.0 earlier-proxy', '1.1 NAME']")
    answered = reply.headers.get_list("via")
    if not answered or not _VIA.fullmatch(answered[-1]):
        problems.append(f"the client saw Via {answered}, wanted an entry like '1.1 NAME'")
    fail_if(problems)
    return f"request Via: {', '.join(entries)}; response Via: {', '.join(answered)}"


@check("A5", 3, "keep-alive with the client; close when asked")
def keep_alive(ctx: Context) -> str:
    """Four requests on one HTTP/1.1 connection; HTTP/1.0 and ``Connection: close`` end it."""
    wanted = {
        "/hello": HELLO,
        "/chunked": b"".join(CHUNKS),
        "/big?size=100000&seed=5": big_body(100000, 5),
        "/hello?again": HELLO,
    }
    with HttpClient(ctx) as client:
        for number, (path, body) in enumerate(wanted.items()):
            client.send(get(ctx.origins.url(path)))
            reply = client.read_reply(f"request {number + 1} of 4 on one connection ({path})")
            expect_status(reply, 200, f"request {number + 1} of 4 on one connection ({path})")
            expect(reply.body == body, f"{path}: wrong body on a kept-alive connection")
    for version, extra, what in (
        ("HTTP/1.0", "", "an HTTP/1.0 request"),
        ("HTTP/1.1", "Connection: close\r\n", "Connection: close"),
    ):
        with HttpClient(ctx) as client:
            client.send(get(ctx.origins.url("/hello"), version=version, extra=extra))
            reply = client.read_reply(what)
            expect_status(reply, 200, what)
            client.expect_closed(f"after {what}")
    return "4 requests on one connection; closed after HTTP/1.0 and after Connection: close"


@check("A6", 4, "pipelined requests, then half-close")
def pipelining(ctx: Context) -> str:
    """Three requests in one write and a FIN: three answers in order, then the proxy closes."""
    paths = {"/hello": HELLO, "/big?size=200000&seed=6": big_body(200000, 6), "/chunked": None}
    with HttpClient(ctx) as client:
        client.send(b"".join(get(ctx.origins.url(path)) for path in paths))
        client.shutdown_write()  # "no more requests", and still waiting for the answers
        for number, (path, body) in enumerate(paths.items()):
            what = f"pipelined request {number + 1} of 3 ({path}) after the client's FIN"
            reply = client.read_reply(what)
            expect_status(reply, 200, what)
            expected = body if body is not None else b"".join(CHUNKS)
            expect(reply.body == expected, f"{what}: wrong body (answers out of order?)")
        client.expect_closed("after the three answers to a half-closed client")
    return "three answers, in order, then the proxy closed"


@check("A7", 4, "bodies of every framing, both ways")
def framing(ctx: Context) -> str:
    """Chunked and close-delimited responses re-framed; request bodies; HEAD has no body."""
    with HttpClient(ctx) as client:
        client.send(get(ctx.origins.url("/chunked")))
        reply = client.read_reply("GET /chunked (HTTP/1.1)")
        expect_status(reply, 200, "GET /chunked")
        expect(reply.body == b"".join(CHUNKS), "GET /chunked: the body changed on the way")
        client.send(get(ctx.origins.url("/hello")))
        reply = client.read_reply("GET /hello after a chunked response on the same connection")
        expect(reply.body == HELLO, "the request after a chunked response got a wrong body")
    reply = ask(ctx, get(ctx.origins.url("/close")), "GET /close (body ends at close)")
    expect_status(reply, 200, "GET /close")
    expect(reply.body == CLOSE_BODY, f"GET /close: {len(reply.body)} bytes, not {len(CLOSE_BODY)}")
    old = ask(ctx, get(ctx.origins.url("/chunked"), version="HTTP/1.0"), "HTTP/1.0 GET /chunked")
    expect_status(old, 200, "HTTP/1.0 GET /chunked")
    expect(
        not old.headers.has_token("transfer-encoding", "chunked"),
        "an HTTP/1.0 client was sent Transfer-Encoding: chunked (RFC 9112 section 6.1)",
    )
    expect(old.body == b"".join(CHUNKS), "HTTP/1.0 GET /chunked: the body changed on the way")
    upload = big_body(50000, 7)
    url = ctx.origins.url("/echo")
    authority = url.split("/")[2]
    for framing_name, head, wire in (
        ("Content-Length", f"Content-Length: {len(upload)}\r\n", upload),
        (
            "chunked",
            "Transfer-Encoding: chunked\r\n",
            b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (20000, upload[:20000], len(upload) - 20000, upload[20000:]),
        ),
    ):
        request = f"POST {url} HTTP/1.1\r\nHost: {authority}\r\n{head}\r\n".encode() + wire
        reply = ask(ctx, request, f"POST with a {framing_name} body")
        expect_status(reply, 200, f"POST with a {framing_name} body")
        seen = json.loads(reply.body)
        expect(
            seen["body_sha256"] == sha256(upload),
            f"POST with a {framing_name} body: the origin got {seen['body_length']} bytes "
            f"that differ from the {len(upload)} sent",
        )
    with HttpClient(ctx) as client:
        client.send(get(ctx.origins.url("/hello")).replace(b"GET", b"HEAD", 1))
        reply = client.read_reply("HEAD /hello", method="HEAD")
        expect_status(reply, 200, "HEAD /hello")
        client.send(get(ctx.origins.url("/hello")))
        reply = client.read_reply("GET /hello after HEAD on the same connection")
        expect(reply.body == HELLO, "the GET after a HEAD got a wrong body (did HEAD get one?)")
    return "chunked, until-close, HTTP/1.0, uploads (length and chunked) and HEAD all framed"


@check("A8", 3, "400 for requests a forward proxy cannot serve")
def bad_requests(ctx: Context) -> str:
    """Each malformed request gets a 400 page and the connection is closed."""
    port = ctx.origins.http.port
    cases = {
        "origin-form target (GET /relative)": b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
        "a port that is not a number": b"GET http://127.0.0.1:http/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "port 70000": b"GET http://127.0.0.1:70000/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "no host (http:///path)": b"GET http:///path HTTP/1.1\r\nHost: x\r\n\r\n",
        "user information in the URL": (
            f"GET http://user:pw@127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        ),
        "a request line that is not HTTP": b"HELLO PROXY\r\n\r\n",
        "two different Content-Lengths": (
            f"POST http://127.0.0.1:{port}/echo HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        ).encode(),
    }
    problems = []
    for what, request in cases.items():
        with HttpClient(ctx) as client:
            client.send(request)
            reply = client.read_reply(what)
            if reply.status != 400:
                problems.append(f"{what}: {reply.describe()}")
            elif not reply.body:
                problems.append(f"{what}: a 400 without a page saying why")
            else:
                client.expect_closed(f"after the 400 for {what}")
    fail_if(problems)
    return f"{len(cases)} malformed requests, {len(cases)} pages saying 400, connections closed"


@check("A9", 3, "502 when the origin cannot be reached or answers nonsense")
def bad_gateway(ctx: Context) -> str:
    """Refused, unknown name, invalid response, closed without answering: 502 each, with a page."""
    port = ctx.origins.http.port
    cases = {
        "a refused connection": f"http://127.0.0.1:{ctx.origins.refused_port}/",
        "a name that does not resolve": f"http://nosuch.test:{port}/",
        "an invalid status line": ctx.origins.url("/bad"),
        "an origin closing without an answer": ctx.origins.url("/drop"),
    }
    problems = []
    for what, url in cases.items():
        reply = ask(ctx, get(url), what)
        if reply.status != 502:
            problems.append(f"{what}: {reply.describe()}")
        elif not reply.body:
            problems.append(f"{what}: a 502 without a page saying why")
    still = ask(ctx, get(ctx.origins.url("/hello")), "a good request after the bad ones")
    if still.status != 200:
        problems.append(f"a good request after the bad ones: {still.describe()}")
    fail_if(problems)
    return "502 pages for refused, unresolvable, invalid and dropped; the proxy kept serving"


@check("A10", 2, "504 when the origin does not answer in time")
def gateway_timeout(ctx: Context) -> str:
    """A connect that never completes, and an origin that never sends a byte: 504 each."""
    cases = {"an origin that never sends a byte": ctx.origins.url("/silent")}
    if ctx.origins.unanswered_port is not None:
        cases["a connect that never completes"] = f"http://127.0.0.1:{ctx.origins.unanswered_port}/"
    problems = []
    for what, url in cases.items():
        started = time.monotonic()
        with HttpClient(ctx, timeout=ctx.timeout + 5) as client:
            client.send(get(url))
            reply: Reply = client.read_reply(f"{what} (proxy --timeout {ctx.timeout:g})")
        took = time.monotonic() - started
        if reply.status != 504:
            problems.append(f"{what}: {reply.describe()}")
        elif took > ctx.timeout + 3:
            problems.append(f"{what}: 504, but after {took:.1f} s (--timeout {ctx.timeout:g})")
    fail_if(problems)
    return f"504 within --timeout ({ctx.timeout:g} s) for: {', '.join(cases)}"

"""Part C checks: the cache (35 points).

Theory of operation
-------------------
Every check fetches ``/c/...`` resources of the loopback origin with curl, each curl run a new
client connection, and reads the origin's counters: how many full (200) answers it gave, how
many conditional requests it received and how many 304s it sent. A fresh hit leaves the
counters alone; a revalidation adds one conditional request; a miss adds a full answer. The
query string of each URL sets the resource's caching fields (see ``checks.origins``), and every
check uses URLs of its own, so no check depends on what another one left in the cache.

One check (C7) waits for an entry to grow stale: 1.5 s, the only deliberate wait of the part.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, quote, urlsplit

from checks import Context, check, expect, fail_if
from checks.routes import resource_body
from checks.wire import CurlResult, HttpClient, curl, expect_status, get


def resource(name: str, **fields: str | int) -> str:
    """The target of a ``/c/`` resource with *fields* in its query (``cc`` is Cache-Control)."""
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in fields.items())
    return f"/c/{name}?{query}" if query else f"/c/{name}"


def fetch(ctx: Context, target: str, *options: str) -> CurlResult:
    """GET *target* from the origin through the proxy, with curl; check status and body."""
    result = curl(ctx, ctx.origins.url(target), *options)
    expect_status(result.reply(), 200, f"GET {target}")
    version = ctx.origins.http.resource(target).version
    size = int(parse_qs(urlsplit(target).query).get("size", ["200"])[0])
    expect(
        result.body == resource_body(target, version, size),
        f"GET {target}: the body is not the origin's current one ({result.body[:50]!r}...)",
    )
    return result


def origin_asked(ctx: Context, target: str) -> int:
    """How many requests for *target* reached the origin (full and conditional)."""
    return len(ctx.origins.http.requests_for(target))


@check("C1", 6, "a fresh response is served from the cache, with Age")
def fresh_hit(ctx: Context) -> str:
    """``max-age=600``: the second GET does not reach the origin and carries ``Age``."""
    target = resource("fresh", cc="max-age=600", size=5000)
    fetch(ctx, target)
    second = fetch(ctx, target)
    asked = origin_asked(ctx, target)
    expect(asked == 1, f"GET {target} twice: the origin was asked {asked} times, not once")
    age = second.headers.get("age")
    expect(
        age is not None and age.isdigit(),
        f"the cached response's Age is {age!r}; a response from a cache carries Age: SECONDS",
    )
    kept = resource("fresh-kept", cc="max-age=600", size=3000)
    with HttpClient(ctx) as client:
        for number in range(3):
            client.send(get(ctx.origins.url(kept)))
            what = f"GET {kept} ({number + 1} of 3 on one connection)"
            reply = client.read_reply(what)
            expect_status(reply, 200, what)
            expect(reply.body == resource_body(kept, 1, 3000), f"{what}: wrong body")
    asked = origin_asked(ctx, kept)
    expect(asked == 1, f"3 GETs of {kept} on one connection reached the origin {asked} times")
    return f"second GET answered by the cache (Age: {age}); hits keep the connection alive"


@check("C2", 4, "Age counts the time before arrival")
def age_before_arrival(ctx: Context) -> str:
    """An ``Age: 100`` from the origin counts; ``Age: 700`` with ``max-age=600`` is stale."""
    aged = resource("aged", cc="max-age=600", age=100)
    fetch(ctx, aged)
    hit = fetch(ctx, aged)
    problems = []
    if origin_asked(ctx, aged) != 1:
        problems.append(f"{aged}: not served from the cache the second time")
    age = hit.headers.get("age") or ""
    if not (age.isdigit() and 100 <= int(age) <= 130):
        problems.append(f"{aged}: Age {age!r} on the hit; the origin said Age: 100 already")
    stale = resource("too-old", cc="max-age=600", age=700)
    fetch(ctx, stale)
    fetch(ctx, stale)
    if origin_asked(ctx, stale) != 2:
        problems.append(f"{stale}: 700 s old with max-age=600 was served from the cache")
    fail_if(problems)
    return f"Age {age} on a hit of an Age: 100 response; an Age: 700 one was stale on arrival"


@check("C3", 4, "Expires, and max-age taking precedence over it")
def expires(ctx: Context) -> str:
    """``Expires`` in 600 s: fresh. In the past or invalid: stale. ``max-age`` wins over it."""
    cases = {
        resource("expires-later", expires=600): 1,
        resource("expires-past", expires=-600): 2,
        resource("expires-invalid", expires="invalid"): 2,
        resource("max-age-wins", cc="max-age=600", expires=-600): 1,
    }
    problems = []
    for target, wanted in cases.items():
        fetch(ctx, target)
        fetch(ctx, target)
        asked = origin_asked(ctx, target)
        if asked != wanted:
            verdict = "fresh" if wanted == 1 else "stale"
            problems.append(f"{target} should be {verdict}: the origin was asked {asked} times")
    fail_if(problems)
    return "Expires honoured (future fresh, past and invalid stale); max-age wins"


@check("C4", 5, "what must not be answered from the cache")
def not_from_cache(ctx: Context) -> str:
    """no-store, private, no-cache, max-age=0, Authorization and POST all reach the origin.

    A proxy with no cache at all sends all of them to the origin too, so a control resource
    (``max-age=600``) must first be answered from the cache: Part C is not credited for nothing.
    """
    control = resource("control", cc="max-age=600")
    fetch(ctx, control)
    fetch(ctx, control)
    expect(
        origin_asked(ctx, control) == 1,
        f"the control {control} reached the origin twice: with no cache at all, what must not "
        "be answered from the cache never is, which proves nothing",
    )
    cases: dict[str, tuple[str, tuple[str, ...]]] = {
        "no-store": (resource("no-store", cc="no-store, max-age=600"), ()),
        "private": (resource("private", cc="private, max-age=600"), ()),
        "no-cache": (resource("no-cache", cc="no-cache, max-age=600", etag="nc"), ()),
        "max-age=0": (resource("max-age-0", cc="max-age=0"), ()),
        "a request with Authorization": (
            resource("authorized", cc="max-age=600"),
            ("-H", "Authorization: Basic bGFiOmxhYg=="),
        ),
    }
    problems = []
    for what, (target, options) in cases.items():
        fetch(ctx, target, *options)
        fetch(ctx, target, *options)
        if origin_asked(ctx, target) != 2:
            problems.append(f"{what} ({target}): the second GET was answered from the cache")
    post = resource("posted", cc="max-age=600")
    for _ in range(2):
        result = curl(ctx, ctx.origins.url(post), "--data", "x=1")
        expect_status(result.reply(), 200, f"POST {post}")
    if origin_asked(ctx, post) != 2:
        problems.append(f"POST {post}: the second POST was answered from the cache")
    fail_if(problems)
    return (
        "no-store, private, no-cache, max-age=0, Authorization and POST went to the origin, "
        "while a max-age=600 control was served from the cache"
    )


@check("C5", 6, "revalidation with ETag: If-None-Match, 304, and a changed resource")
def etag_revalidation(ctx: Context) -> str:
    """A stale entry is revalidated; a 304 serves the stored body; a 200 replaces it."""
    target = resource("etag", cc="max-age=0", etag="e1", size=20000)
    fetch(ctx, target)
    second = fetch(ctx, target)
    counters = ctx.origins.http.resource(target)
    problems = []
    asked = ctx.origins.http.requests_for(target)
    validator = asked[-1].get("if-none-match") if len(asked) == 2 else None
    if validator != '"e1-v1"':
        problems.append(
            f"the second GET reached the origin with If-None-Match {validator!r}, "
            "not the stored ETag '\"e1-v1\"'"
        )
    if counters.not_modified != 1 or counters.full != 1:
        problems.append(
            f"the origin sent {counters.full} full answers and {counters.not_modified} 304s "
            "for two GETs (wanted 1 and 1)"
        )
    expect(second.status == 200, f"after a 304 the client got {second.status}, not 200")
    ctx.origins.http.bump(target)
    fetch(ctx, target)  # fetch() checks that this is the new version's body
    fetch(ctx, target)
    latest = ctx.origins.http.requests_for(target)[-1].get("if-none-match")
    if latest != '"e1-v2"':
        problems.append(f"after the resource changed, revalidation sent {latest!r}, not 'e1-v2'")
    fail_if(problems)
    return "If-None-Match sent; 304 answered with the stored body; the new version replaced it"


@check("C6", 3, "revalidation with Last-Modified: If-Modified-Since")
def last_modified_revalidation(ctx: Context) -> str:
    """Without an ETag, the stored ``Last-Modified`` is the validator."""
    target = resource("modified", cc="max-age=0", lm=3600)
    first = fetch(ctx, target)
    fetch(ctx, target)
    asked = ctx.origins.http.requests_for(target)
    sent = asked[-1].get("if-modified-since") if len(asked) == 2 else None
    stored = first.headers.get("last-modified")
    expect(
        sent is not None and sent == stored,
        f"the second GET carried If-Modified-Since {sent!r}; "
        f"the stored Last-Modified is {stored!r}",
    )
    counters = ctx.origins.http.resource(target)
    expect(counters.not_modified == 1, "the origin answered the revalidation with a full body")
    return f"If-Modified-Since: {sent}; 304; stored body served"


@check("C7", 3, "a fresh entry grows stale")
def grows_stale(ctx: Context) -> str:
    """``max-age=1``: 1.5 s later the entry must be revalidated, not served."""
    target = resource("short", cc="max-age=1", etag="s1")
    fetch(ctx, target)
    time.sleep(1.5)  # not synchronisation: the entry must age, which is what is tested
    fetch(ctx, target)
    counters = ctx.origins.http.resource(target)
    expect(
        counters.conditional == 1,
        f"1.5 s after a max-age=1 response the origin got {counters.conditional} conditional "
        f"requests and gave {counters.full} full answers (wanted one revalidation)",
    )
    return "revalidated once max-age had passed"


@check("C8", 4, "a byte budget with least-recently-used eviction")
def lru(ctx: Context) -> str:
    """Two 40 kB entries fit in the 100 kB budget, three do not; the LRU one goes first.

    A 150 kB response is relayed but not stored, and evicts nothing.
    """
    expect(ctx.cache_bytes == 100_000, f"C8 needs --cache-bytes 100000, not {ctx.cache_bytes}")
    a, b, c = (resource(f"lru-{name}", cc="max-age=600", size=40000) for name in "abc")
    huge = resource("lru-huge", cc="max-age=600", size=150000)
    for target in (a, b, a, c, huge, huge, a, c, b):
        fetch(ctx, target)
    entries = {"a": a, "b": b, "c": c, "H": huge}
    asked = {name: origin_asked(ctx, target) for name, target in entries.items()}
    wanted = {"a": 1, "b": 2, "c": 1, "H": 2}
    problems = []
    if asked["a"] != 1:
        problems.append("A was evicted although it was used more recently than B")
    if asked["b"] != 2:
        problems.append("B (the least recently used) was still cached after C needed its room")
    if asked["c"] != 1:
        problems.append("C was not kept")
    if asked["H"] != 2:
        problems.append("a 150 kB response was stored in a 100 kB cache")
    if problems:
        problems.append(f"origin requests per entry {asked}, wanted {wanted}")
    fail_if(problems)
    return "order A B A C H H A C B: B evicted, A and C kept, the 150 kB one never stored"

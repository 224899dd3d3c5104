"""Checkers for rung 10, blocking, hot reload and failures.

Theory of operation
-------------------
``10-predict-status`` injects each failure of the question for real: the real proxy in a thread,
origins on loopback that answer garbage, close at once or cut a body short, and raw requests
written byte for byte; the status the proxy sends is read off the wire and compared with the
prediction. ``10-rules`` parses the student's blocklist with the project's own
:func:`proxy.blocklist.parse` and tries URLs that must be blocked and URLs that must not, the
ones the task lists plus random subdomains it does not (so a list of exact hosts cannot pass).
``10-coalesce`` compares the student's reload schedule with :func:`reload_schedule`, the
worker loop of :mod:`proxy.blocklist.watch` written as a pure function, on named scenarios (an
editor's save, a steady drip of events) and on random event streams.
"""

from __future__ import annotations

import contextlib
import random
import socket
import string
import threading
from typing import Any

from .checks import Answer, Wrong, exercise
from .harness import HOST, running_proxy, status_of

STATUSES = {200, 400, 403, 408, 431, 501, 502, 504, 505, 508}


class _ScriptedOrigin:
    """A loopback origin that reads a request head, sends *reply* (or nothing) and closes."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="checker-origin", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2.0)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                if self.reply is not None:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def _request(port: int, extra: str = "", target: str | None = None, version: str = "1.1") -> bytes:
    target = target or f"http://origin.test:{port}/"
    return (
        f"GET {target} HTTP/{version}\r\nHost: origin.test\r\n{extra}Connection: close\r\n\r\n"
    ).encode()


CASES = {
    "no Host field": "a request head without the Host field",
    "a huge header field": "a request with a 200 KiB header field",
    "an ftp:// URL": "GET ftp://origin.test/file",
    "HTTP/2.0 in the request line": "GET http://origin.test/ HTTP/2.0, as text",
    "a request that went through us": "a request already carrying Via: 1.1 minireactor",
    "an origin that answers garbage": "the origin answers 'HELLO WORLD' instead of HTTP",
    "an origin that closes at once": "the origin reads the request and closes, answering nothing",
    "an origin that cuts its body": "the origin sends Content-Length: 100, 10 bytes, and closes",
}

HINTS = {
    "no Host field": "HTTP/1.1 makes Host mandatory (RFC 9112 section 3.2)",
    "a huge header field": "the parser has limits (rung 6): which 4xx names a head too large?",
    "an ftp:// URL": "the proxy parses the request fine, but cannot do what it asks",
    "HTTP/2.0 in the request line": "a 5xx code exists for exactly this (RFC 9110 section 15.6)",
    "a request that went through us": "the proxy finds its own name in Via: a loop (RFC 8586 "
    "gives the status used for it)",
    "an origin that answers garbage": "the proxy is a gateway, and its origin failed it",
    "an origin that closes at once": "a fresh connection that dies before answering is the "
    "origin's failure, not a timeout",
    "an origin that cuts its body": "by the time the body is cut short, what has the client "
    "already received?",
}


def _statuses() -> dict[str, int | None]:
    ok = _ScriptedOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    garbage = _ScriptedOrigin(b"HELLO WORLD\r\n\r\n")
    closer = _ScriptedOrigin(None)
    short = _ScriptedOrigin(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    try:
        raw = {
            "no Host field": f"GET http://origin.test:{ok.port}/ HTTP/1.1\r\n\r\n".encode(),
            "a huge header field": _request(ok.port, "X-Big: " + "a" * 200_000 + "\r\n"),
            "an ftp:// URL": _request(ok.port, target="ftp://origin.test/file"),
            "HTTP/2.0 in the request line": _request(ok.port, version="2.0"),
            "a request that went through us": _request(ok.port, "Via: 1.1 minireactor\r\n"),
            "an origin that answers garbage": _request(garbage.port),
            "an origin that closes at once": _request(closer.port),
            "an origin that cuts its body": _request(short.port),
        }
        found: dict[str, int | None] = {}
        with running_proxy({"origin.test": HOST}) as server:
            for case, request in raw.items():
                with socket.create_connection(server.address, timeout=5) as sock:
                    with contextlib.suppress(OSError):  # the proxy may refuse before the end
                        sock.sendall(request)
                    found[case] = status_of(sock)
        return found
    finally:
        for origin in (ok, garbage, closer, short):
            origin.close()


@exercise("10-predict-status", "Predict the status each failure earns", kind="predict")
def predict_status(answer: Answer) -> str:
    predicted = answer.value("predicted_status")
    if not isinstance(predicted, dict) or set(predicted) != set(CASES):
        raise Wrong(f"`predicted_status` should be a dict with the keys {list(CASES)}")
    for case, status in predicted.items():
        if status not in STATUSES:
            raise Wrong(f"predicted_status[{case!r}] should be one of {sorted(STATUSES)}")
    truth = _statuses()
    wrong = [case for case in CASES if predicted[case] != truth[case]]
    if wrong:
        raise Wrong(
            f"{len(wrong)} of {len(CASES)} wrong, the first: {wrong[0]!r} is not answered "
            f"{predicted[wrong[0]]}",
            HINTS[wrong[0]],
        )
    return (
        "all eight right: malformed or unsupported requests earn a 4xx or 5xx of their own, "
        "a failing origin 502, and a body cut short cannot change a status already sent"
    )


MUST = [
    "http://tracker.test/",
    "http://eu.tracker.test/pixel.gif",
    "tracker.test:443",
    "http://img.ads.test/banner.png",
    "http://a.b.ads.test/",
    "http://cdn.test/lib.js",
    "http://news.test/ads",
    "http://news.test/ads/2024/spring",
    "http://news.test/ads?page=2",
    "http://shop.test:8080/cart",
    "http://192.168.1.20/",
    "http://192.168.255.1/admin",
]
MUST_NOT = [
    "http://mytracker.test/",
    "http://tracker.test.example/",
    "http://ads.test/optout",
    "http://img.cdn.test/logo.png",
    "http://news.test/",
    "http://news.test/adsense",
    "http://news.test/ads-policy",
    "http://news.test/world/ads",
    "news.test:443",
    "http://shop.test/cart",
    "http://shop.test:8081/",
    "http://192.169.0.1/",
    "http://10.0.0.1/",
]


def _random_label(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(6))


@exercise("10-rules", "A blocklist that does not over-block", kind="implement")
def rules(answer: Answer) -> str:
    from proxy.blocklist import parse

    text = answer.value("RULES")
    if not isinstance(text, str):
        raise Wrong("`RULES` should be the text of a blocklist: a string, one rule per line")
    blocklist = parse(text)
    if blocklist.errors:
        error = blocklist.errors[0]
        raise Wrong(f"line {error.line} ({error.text!r}) is not a valid rule: {error.message}")
    if not blocklist.rules:
        raise Wrong("`RULES` holds no rule")
    rng = random.Random(10)
    hidden = [f"http://{_random_label(rng)}.tracker.test/" for _ in range(20)]
    hidden += [f"http://{_random_label(rng)}.{_random_label(rng)}.ads.test/x" for _ in range(20)]
    for url in MUST + hidden:
        if blocklist.match_url(url) is None:
            what = "a subdomain you were not shown: " if url in hidden else ""
            hint = (
                "a path prefix ending in `/` is a plain prefix: `/ads/` does not match `/ads` "
                "or `/ads?page=2`"
                if "/ads" in url
                else "a rule names whole labels; a host rule covers the host and its subdomains"
            )
            raise Wrong(f"{what}{url} is not blocked", hint)
    for url in MUST_NOT:
        match = blocklist.match_url(url)
        if match is not None:
            raise Wrong(
                f"{url} is blocked (by the rule {match.rule.text!r} on line {match.rule.line}): "
                "that is over-blocking",
                "rules match whole labels; `*.` means subdomains only and `=` the exact host; "
                "a path prefix that does not end in `/` also matches `?`, `;` or the end",
            )
    return (
        f"{len(blocklist.rules)} rules block all {len(MUST) + len(hidden)} URLs they should "
        f"(40 of them subdomains you were not shown) and none of the {len(MUST_NOT)} they "
        "should not"
    )


def reload_schedule(events: list[float], debounce: float, max_delay: float) -> list[float]:
    """When the watcher of ``proxy.blocklist.watch`` reloads, for file events at *events*.

    A burst starts with an event; it is read ``debounce`` after its last event, but never
    later than ``max_delay`` after its first; an event at or after that moment starts the next.
    """
    reloads: list[float] = []
    first: float | None = None
    last = 0.0
    for at in events:
        if first is not None:
            due = min(last + debounce, first + max_delay)
            if at >= due:
                reloads.append(due)
                first = None
        if first is None:
            first = at
        last = at
    if first is not None:
        reloads.append(min(last + debounce, first + max_delay))
    return reloads


def _scenarios(rng: random.Random) -> list[tuple[str, list[float], float, float]]:
    named = [
        ("no event at all", [], 0.05, 0.1),
        ("one event", [3.0], 0.05, 0.1),
        ("an editor's save: truncate, write, rename", [1.0, 1.002, 1.004], 0.05, 0.1),
        ("two saves a second apart", [1.0, 1.003, 2.0, 2.004], 0.05, 0.1),
        ("a steady drip, one event every 20 ms for 2 s", [i * 0.02 for i in range(100)], 0.05, 0.3),
        ("a script appending a line every 40 ms", [i * 0.04 for i in range(30)], 0.05, 0.1),
        ("an event exactly when a reload is due", [0.0, 0.05, 0.1], 0.05, 0.1),
    ]
    for _ in range(300):
        times = sorted(round(rng.uniform(0, 2), 3) for _ in range(rng.randint(1, 40)))
        named.append(("a random stream", times, rng.choice([0.02, 0.05, 0.1]), 0.25))
    return named


@exercise("10-coalesce", "When a watched file is read again", kind="implement", core=False)
def coalesce(answer: Answer) -> str:
    schedule = answer.function("reload_times")
    cases = _scenarios(random.Random(11))
    for what, events, debounce, max_delay in cases:
        got: Any = schedule(list(events), debounce, max_delay)
        want = reload_schedule(events, debounce, max_delay)
        if not isinstance(got, list | tuple):
            raise Wrong("reload_times() should return a list of times")
        if len(got) != len(want) or any(abs(g - w) > 1e-9 for g, w in zip(got, want, strict=False)):
            shown = "" if len(events) > 8 else f" {events}"
            raise Wrong(
                f"{what}{shown} (debounce {debounce:g} s, max_delay {max_delay:g} s): "
                f"{len(want)} reload(s) expected, at {[round(w, 4) for w in want][:6]}; yours "
                f"{[round(g, 4) for g in got][:6]}",
                "a burst is read `debounce` after its last event, but never later than "
                "`max_delay` after its first: otherwise a steady drip would starve the reload",
            )
    return (
        f"your schedule matched the watcher's on {len(cases)} event streams: a save read once, "
        "a steady drip still read every max_delay"
    )

"""Checkers for rung 8, the forward proxy and its cache.

Theory of operation
-------------------
The cache's rules are pure functions of header fields and timestamps (``proxy.cache``), so the
project's own implementation is the oracle and a check can try thousands of cases in a
fraction of a second. ``08-predict-age`` compares three predicted numbers with
:func:`proxy.cache.freshness.freshness_lifetime` and :func:`~proxy.cache.freshness.current_age`
on the question's response. ``08-freshness`` runs the student's two functions over every
combination of a grid of ``Cache-Control``, ``Expires``, ``Date``, ``Last-Modified``, status and
``Age`` values (valid, invalid, in the future, listed twice) and reports the first case that
differs with the rule it exercises. ``08-stale-on-error`` does the same with
:func:`proxy.cache.stale.stale_permission` over request and response directives, staleness and
the proxy's bound; ``08-ranges`` with :func:`proxy.cache.ranges.parse_range` and
:func:`~proxy.cache.ranges.satisfiable_ranges` over named and random ``Range`` values. A
function that calls an oracle by name, or is the project's own, is refused: the point is to
write the rule. The test reads only the student function's own names, so a helper that calls
the oracle for it goes unnoticed (the instructor guide says so): it discourages, it does not
prevent.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

from .checks import Answer, Wrong, exercise

ORACLES = {"freshness_lifetime", "current_age", "age_field_value", "date_value"}


def _own(function: Callable[..., Any], forbidden: set[str], name: str) -> None:
    """Refuse a function that hands the work to the project's implementation."""
    code = getattr(function, "__code__", None)
    names = set(code.co_names) if code is not None else set()
    used = sorted(names & forbidden)
    if used or getattr(function, "__module__", "").startswith("proxy."):
        raise Wrong(
            f"`{name}` calls the project's own {used[0] if used else 'function'}: write the "
            "rule yourself (reading the fields with Headers, CacheControl and parse_http_date "
            "is fine)"
        )


def _headers(pairs: list[tuple[str, str]]) -> Any:
    from proxy.http11 import Headers

    return Headers(pairs)


REQUEST_TIME, RESPONSE_TIME = 1000.0, 1003.0


def _question_headers() -> Any:
    from proxy.cache.directives import format_http_date

    return _headers(
        [
            ("Date", format_http_date(RESPONSE_TIME + 20)),
            ("Age", "10"),
            ("Cache-Control", "max-age=60, s-maxage=30"),
        ]
    )


@exercise("08-predict-age", "Predict a response's lifetime and age", kind="predict")
def predict_age(answer: Answer) -> str:
    from proxy.cache.freshness import current_age, freshness_lifetime

    lifetime = answer.number("predicted_lifetime")
    at_arrival = answer.number("predicted_age_at_arrival")
    stale_after = answer.number("predicted_stale_after")
    headers = _question_headers()
    real_lifetime = freshness_lifetime(200, headers, RESPONSE_TIME)
    real_age = current_age(headers, REQUEST_TIME, RESPONSE_TIME, RESPONSE_TIME)
    if lifetime != real_lifetime:
        raise Wrong(
            f"the freshness lifetime is not {lifetime:g} s",
            "the proxy is a shared cache: which of max-age and s-maxage does it obey "
            "(RFC 9111 section 4.2.1)?",
        )
    if at_arrival != real_age:
        raise Wrong(
            f"the age at arrival is not {at_arrival:g} s",
            "apparent_age = max(0, response_time - Date), and the origin's clock is ahead; "
            "corrected_age_value = Age + the time the request spent in flight",
        )
    if stale_after != real_lifetime - real_age:
        raise Wrong(
            f"it does not turn stale {stale_after:g} s after arrival",
            "fresh while lifetime > current age, and the age grows one second per second",
        )
    return (
        f"right: s-maxage gives {real_lifetime:g} s, the age starts at {real_age:g} s "
        "(a clock ahead cannot make it negative), so it is stale "
        f"{real_lifetime - real_age:g} s after arrival"
    )


def _lifetime_cases() -> list[tuple[int, list[tuple[str, str]]]]:
    from proxy.cache.directives import format_http_date

    day = 86400.0
    controls = [
        None,
        "max-age=60",
        "s-maxage=30, max-age=60",
        "max-age=60, s-maxage=90",
        "max-age=abc",
        "max-age=0",
        "public",
        "no-cache",
    ]
    dates = [None, RESPONSE_TIME - 5, RESPONSE_TIME + 20, "yesterday"]
    expires = [None, "+120", "-60", "0"]
    modified = [None, 5 * day, 30 * day, -600.0]  # seconds before the Date (or arrival)
    statuses = [200, 302, 404, 301]
    cases = []
    for control, date, expiry, lm, status in itertools.product(
        controls, dates, expires, modified, statuses
    ):
        pairs: list[tuple[str, str]] = []
        base = RESPONSE_TIME if not isinstance(date, float) else date
        if isinstance(date, float):
            pairs.append(("Date", format_http_date(date)))
        elif date is not None:
            pairs.append(("Date", date))
        if control is not None:
            pairs.append(("Cache-Control", control))
        if expiry == "0":
            pairs.append(("Expires", "0"))
        elif expiry is not None:
            pairs.append(("Expires", format_http_date(base + float(expiry))))
        if lm is not None:
            pairs.append(("Last-Modified", format_http_date(base - lm)))
        cases.append((status, pairs))
    return cases


def _lifetime_hint(status: int, pairs: list[tuple[str, str]]) -> str:
    fields = dict(pairs)
    control = fields.get("Cache-Control", "")
    if "s-maxage" in control or "max-age" in control:
        return (
            "s-maxage first (a shared cache), then max-age; a directive whose argument is not "
            "a number counts as 0"
        )
    if "Expires" in fields:
        return (
            "Expires minus Date, never below 0; an Expires that is not a date (such as 0) "
            "means already expired; with no valid Date, use the arrival time"
        )
    if "Last-Modified" in fields:
        return (
            "the heuristic: 10 % of (Date - Last-Modified), capped at one day, and only for "
            "a status in HEURISTICALLY_CACHEABLE or a response marked public"
        )
    return "with nothing to go by, the lifetime is 0"


def _age_cases() -> list[tuple[list[tuple[str, str]], float, float, float]]:
    from proxy.cache.directives import format_http_date

    dates = [None, RESPONSE_TIME - 5, RESPONSE_TIME + 20, RESPONSE_TIME - 100, "junk"]
    ages: list[list[str]] = [[], ["30"], ["7200, 0"], ["-5"], ["abc"], ["12", "600"], ["1.5"]]
    times = [(1000.0, 1003.0, 1003.0), (1000.0, 1003.0, 1090.0), (1000.0, 1000.0, 1500.0)]
    cases = []
    for date, age_values, (request_time, response_time, now) in itertools.product(
        dates, ages, times
    ):
        pairs: list[tuple[str, str]] = []
        if isinstance(date, float):
            pairs.append(("Date", format_http_date(date)))
        elif date is not None:
            pairs.append(("Date", date))
        pairs += [("Age", value) for value in age_values]
        cases.append((pairs, request_time, response_time, now))
    return cases


@exercise("08-freshness", "Freshness lifetime and current age (RFC 9111)", kind="implement")
def freshness(answer: Answer) -> str:
    from proxy.cache.freshness import current_age, freshness_lifetime

    lifetime_of = answer.function("freshness_lifetime_of")
    age_of = answer.function("current_age_of")
    _own(lifetime_of, ORACLES, "freshness_lifetime_of")
    _own(age_of, ORACLES, "current_age_of")
    lifetime_cases = _lifetime_cases()
    for status, pairs in lifetime_cases:
        want = freshness_lifetime(status, _headers(pairs), RESPONSE_TIME)
        got = lifetime_of(status, _headers(pairs), RESPONSE_TIME)
        if not isinstance(got, int | float) or abs(got - want) > 1e-6:
            raise Wrong(
                f"a {status} with {pairs}, arrived at t={RESPONSE_TIME:g}: the lifetime is "
                f"{want:g} s, yours {got!r}",
                _lifetime_hint(status, pairs),
            )
    age_cases = _age_cases()
    for pairs, request_time, response_time, now in age_cases:
        want = current_age(_headers(pairs), request_time, response_time, now)
        got = age_of(_headers(pairs), request_time, response_time, now)
        if not isinstance(got, int | float) or abs(got - want) > 1e-6:
            raise Wrong(
                f"{pairs}, requested at t={request_time:g}, arrived at t={response_time:g}: "
                f"at t={now:g} the age is {want:g} s, yours {got!r}",
                "max(apparent_age, corrected_age_value) + resident time; apparent_age is never "
                "negative; Age uses its first member, and an invalid one counts as 0",
            )
    return (
        f"your lifetime agreed with the project's on {len(lifetime_cases)} responses and your "
        f"age on {len(age_cases)}, clocks ahead, bad dates and Age lists included"
    )


STALE_ORACLES = {"stale_permission", "error_bound", "client_demands_validation"}


def _stale_cases() -> list[tuple[str, str, float, float, float]]:
    requests = [
        "",
        "max-age=10",
        "no-cache",
        "min-fresh=5",
        "stale-if-error=100",
        "max-age=10, stale-if-error=100",
        "stale-if-error=5",
        "max-stale=1000",
    ]
    responses = [
        "max-age=60",
        "max-age=60, must-revalidate",
        "max-age=60, proxy-revalidate",
        "s-maxage=60",
        "max-age=60, no-cache",
        "max-age=60, stale-if-error=30",
        "max-age=60, stale-if-error=3600",
        "max-age=60, stale-while-revalidate=30",
    ]
    ages = [70.0, 120.0, 5000.0, 90000.0]
    bounds = [86400.0, 600.0, 0.0]
    return [
        (request, response, 60.0, age, bound)
        for request, response, age, bound in itertools.product(requests, responses, ages, bounds)
    ]


def _stale_hint(request: str, response: str, max_stale: float) -> str:
    if max_stale <= 0:
        return "max_stale = 0 switches stale serving off"
    if any(d in response for d in ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")):
        return "some response directives forbid serving stale at all (RFC 9111 section 4.2.4)"
    if any(d in request for d in ("no-cache", "min-fresh", "max-age")):
        return (
            "a client that asked for a validated or younger answer gets a stale one only if "
            "its request also says stale-if-error (and the staleness is within bounds)"
        )
    return (
        "staleness = age - lifetime may reach max_stale, narrowed by every stale-if-error "
        "(of the response and of the request): each is an upper limit"
    )


@exercise("08-stale-on-error", "May a stale copy stand in for a failing origin?", kind="implement")
def stale_on_error(answer: Answer) -> str:
    from proxy.cache.directives import CacheControl
    from proxy.cache.stale import stale_permission

    decide = answer.function("may_serve_stale_on_error")
    _own(decide, STALE_ORACLES, "may_serve_stale_on_error")
    cases = _stale_cases()
    allowed = 0
    for request, response, lifetime, age, max_stale in cases:
        want = stale_permission(
            CacheControl.parse([request]), CacheControl.parse([response]), lifetime, age, max_stale
        ).on_error
        got = decide(request, response, lifetime, age, max_stale)
        if got is not want:
            raise Wrong(
                f"request Cache-Control {request!r}, stored response {response!r}, lifetime "
                f"{lifetime:g} s, age {age:g} s, max_stale {max_stale:g} s: the answer is "
                f"{want}, yours {got!r}",
                _stale_hint(request, response, max_stale),
            )
        allowed += want
    return (
        f"your rule agreed with the project's on all {len(cases)} cases ({allowed} allow the "
        "stale copy): the bound, the forbidding directives and the client's own demands"
    )


NAMED_RANGES = [
    ("bytes=0-499", 1000),
    ("bytes=500-", 1000),
    ("bytes=-200", 1000),
    ("bytes=-2000", 1000),
    ("bytes=900-1999", 1000),
    ("bytes=1000-", 1000),
    ("bytes=0-0,-1", 1000),
    ("bytes=0-499, 1000-, -200", 1000),
    ("BYTES=10-20", 1000),
    ("bytes=500-100", 1000),
    ("items=0-9", 1000),
    ("bytes=abc", 1000),
    ("bytes=", 1000),
    ("bytes=-0", 1000),
    ("bytes= 0-1 , , 5-6 ", 1000),
    ("bytes=0-1,x", 1000),
    ("bytes=0-", 0),
    ("bytes=-5", 0),
    ("bytes=1-2-3", 1000),
    ("bytes=+1-2", 1000),
    ("0-499", 1000),
]


def _random_range(rng: random.Random) -> tuple[str, int]:
    length = rng.choice([0, 1, 10, 1000, 4096])
    specs = []
    for _ in range(rng.randint(1, 4)):
        shape = rng.random()
        first, last = rng.randint(0, 5000), rng.randint(0, 5000)
        if shape < 0.4:
            specs.append(f"{min(first, last)}-{max(first, last)}")
        elif shape < 0.6:
            specs.append(f"{first}-")
        elif shape < 0.8:
            specs.append(f"-{last}")
        else:
            specs.append(f"{first}-{last}")
    return "bytes=" + ",".join(specs), length


@exercise("08-ranges", "Which bytes does a Range ask for?", kind="implement", core=False)
def ranges(answer: Answer) -> str:
    from proxy.cache.ranges import parse_range, satisfiable_ranges

    byte_ranges = answer.function("byte_ranges")
    _own(byte_ranges, {"parse_range", "satisfiable_ranges", "answer_range"}, "byte_ranges")
    rng = random.Random(8)
    cases = NAMED_RANGES + [_random_range(rng) for _ in range(500)]
    for value, length in cases:
        specs = parse_range(value)
        want = None if specs is None else satisfiable_ranges(specs, length)
        got = byte_ranges(value, length)
        if got is not None:
            try:
                got = [tuple(pair) for pair in got]
            except TypeError:
                raise Wrong(
                    "byte_ranges() should return a list of (first, last) pairs, or None"
                ) from None
        if got != want:
            if want is None:
                hint = (
                    "an invalid field is ignored whole (None): another unit, a last below its "
                    "first, anything that is not a range-spec"
                )
            elif not want:
                hint = "no range is satisfiable: [] (the 416 case), not None"
            else:
                hint = (
                    "first-last with last clipped to the end; first- to the end; -N the last N "
                    "bytes; ranges starting at or past the end are dropped; units ignore case"
                )
            raise Wrong(
                f"Range {value!r} on a {length}-byte body: {want}, yours {got!r}",
                hint,
            )
    return (
        f"your parser agreed with the project's on {len(cases)} Range values: suffixes, open "
        "ends, clipping, unsatisfiable and invalid fields"
    )

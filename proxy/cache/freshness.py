"""When a response may be stored, how long it stays fresh, and when it may be reused.

Theory of operation: a shared cache answers three questions, each a pure function of header
fields and a few timestamps, so each is one function here.

1. **May this response be stored?** (:func:`storable`, RFC 9111 section 3.) The request method
   is ``GET``; the status is final and one the cache understands (``206`` and ``304`` are not
   stored: this cache keeps no partial content, and a ``304`` only freshens, section 4.3.4);
   neither message says ``no-store`` (section 5.2.1.5, 5.2.2.5) unless ``must-understand`` is
   present and the status is understood (section 5.2.2.3); the response is not ``private``
   (section 5.2.2.7, qualified or not); a request with ``Authorization`` is only stored when the
   response says ``public``, ``s-maxage`` or ``must-revalidate`` (section 3.5); and the response
   is explicitly cacheable: ``s-maxage``, ``max-age`` or ``Expires``, or a status that is
   *heuristically cacheable* (RFC 9110 section 15.1), or ``public``. Such a response is
   *cacheable by default* even without a lifetime: with a ``Last-Modified`` it gets a heuristic
   one (section 4.2.2); with only an ``ETag`` it is stale at once and revalidated with it; with
   neither it is kept when stale serving is on (``proxy.cache.stale``), so the copy can
   stand in when the origin fails.
   Two choices go beyond the RFC: responses with ``Set-Cookie`` are not stored (a shared cache
   would hand one user's cookie to the next; nginx and Varnish make the same default choice), and
   ``Vary: *`` responses are not stored since they could never be reused (section 4.1).
2. **How long is it fresh?** (:func:`freshness_lifetime`, section 4.2.1.) The first of:
   ``s-maxage`` (shared caches only), ``max-age``, ``Expires`` minus ``Date``, or the heuristic:
   a fraction (typically 10 %) of the time since ``Last-Modified``, capped (section 4.2.2).
3. **How old is it now?** (:func:`current_age`, section 4.2.3.) Clocks disagree, so the age is
   estimated twice and the larger kept: the *apparent age* ``response_time - Date`` and the
   *corrected Age value*, the origin's ``Age`` (the first member when it is a list, section 5.1)
   plus the time the request spent in flight. Then the
   time the response has spent in this cache is added.

A stored response is *fresh* when its lifetime exceeds its current age (section 4.2). Whether it
may be reused without asking the origin also depends on the directives of both messages
(:func:`reuse_verdict`, sections 4, 4.2.4, 5.2.1 and 5.2.2).
"""

from __future__ import annotations

from proxy.cache.directives import CacheControl, parse_delta_seconds, parse_http_date
from proxy.cache.stale import forbidding_directive
from proxy.http11.headers import Headers

#: Status codes whose responses may get a heuristic freshness lifetime (RFC 9110 section 15.1).
#: RFC 9110 also lists 206; this cache never stores partial content, so it is left out.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})

#: Final status codes whose caching rules this cache implements (consulted for
#: ``must-understand``, RFC 9111 section 5.2.2.3): every code RFC 9110 defines except
#: 206 (partial content is not stored) and 304 (used for freshening, not stored).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | set(range(500, 506))
)


def request_directives(headers: Headers) -> CacheControl:
    """Return the request's cache directives, mapping ``Pragma: no-cache`` to ``no-cache``.

    ``Pragma`` is only consulted when the request has no ``Cache-Control`` field at all
    (RFC 9111 section 5.4).
    """
    directives = CacheControl.from_headers(headers)
    if "Cache-Control" not in headers and headers.has_token("Pragma", "no-cache"):
        directives.directives["no-cache"] = None
    return directives


def storable(
    method: str,
    status: int,
    request_headers: Headers,
    response_headers: Headers,
    max_object: int,
    keep_without_lifetime: bool = True,
) -> tuple[bool, str]:
    """Decide whether a shared cache may store a response (RFC 9111 section 3).

    :param keep_without_lifetime: whether to store a response that section 3 allows but that
        has no freshness lifetime and no validator (a plain ``200``): it is stale at once and
        can neither be reused nor revalidated, so it only helps when stale responses may be
        served on an origin error (the cache's ``max_stale`` is above zero); never kept when
        the request carried a ``Cookie``, being likely one user's page.
    :returns: ``(True, "")``, or ``(False, reason)`` where *reason* is a short token fit for a
        ``Cache-Status`` detail: ``method``, ``status``, ``no-store``, ``private``,
        ``authorization``, ``set-cookie``, ``vary-star``, ``too-large`` or ``no-freshness``.
    """
    if method.upper() != "GET":
        return False, "method"
    if status < 200 or status > 599 or status in (206, 304):
        return False, "status"
    request_cc = CacheControl.from_headers(request_headers)
    response_cc = CacheControl.from_headers(response_headers)
    if "no-store" in request_cc:
        return False, "no-store"
    if "must-understand" in response_cc:
        if status not in UNDERSTOOD_STATUSES:
            return False, "status"
    elif "no-store" in response_cc:
        return False, "no-store"
    if "private" in response_cc:
        return False, "private"
    if "Authorization" in request_headers and not any(
        directive in response_cc for directive in ("public", "s-maxage", "must-revalidate")
    ):
        return False, "authorization"
    if "Set-Cookie" in response_headers:
        return False, "set-cookie"
    if "*" in response_headers.get_list("Vary"):
        return False, "vary-star"
    length = (response_headers.get("Content-Length") or "").strip()
    if length.isdigit() and (len(length) > 18 or int(length) > max_object):
        return False, "too-large"
    if has_explicit_expiration(response_cc, response_headers):
        return True, ""
    if not heuristic_allowed(status, response_cc):
        return False, "no-freshness"  # section 3: no explicit permission for this status
    if _last_modified(response_headers) is not None or "ETag" in response_headers:
        return True, ""  # a heuristic lifetime, or at least a validator to revalidate with
    # Neither: the copy is only ever useful to serve stale on an origin error, so it is kept
    # only while that is on and no directive forbids it (no-cache, must-revalidate...). Not
    # for a request with a Cookie: a page with no caching fields at all, asked for with a
    # session cookie, is most likely that user's own, and would stand in for everyone's.
    if (
        keep_without_lifetime
        and forbidding_directive(response_cc) is None
        and "Cookie" not in request_headers
    ):
        return True, ""
    return False, "no-freshness"


def has_explicit_expiration(response_cc: CacheControl, response_headers: Headers) -> bool:
    """Tell whether the origin gave an explicit lifetime (RFC 9111 section 4.2.1).

    A present but invalid ``Expires`` counts: it means "already expired" (section 5.3).
    """
    return "s-maxage" in response_cc or "max-age" in response_cc or "Expires" in response_headers


def heuristic_allowed(status: int, response_cc: CacheControl) -> bool:
    """Tell whether a heuristic lifetime may be used (RFC 9111 section 4.2.2).

    Only for a heuristically cacheable status, or a response explicitly marked ``public``.
    """
    return status in HEURISTICALLY_CACHEABLE or "public" in response_cc


def date_value(headers: Headers, response_time: float) -> float:
    """The origin's ``Date``, or the time the response arrived when it has none or a bad one.

    RFC 9110 section 6.6.1 has a recipient add a missing ``Date``; the arrival time is the value
    it would add.
    """
    parsed = parse_http_date(headers.get("Date"))
    return response_time if parsed is None else parsed


def freshness_lifetime(
    status: int,
    headers: Headers,
    response_time: float,
    heuristic_fraction: float = 0.1,
    heuristic_cap: float = 86400.0,
) -> float:
    """Compute the freshness lifetime in seconds for a shared cache (RFC 9111 section 4.2.1).

    Precedence: ``s-maxage`` > ``max-age`` > ``Expires`` minus ``Date`` > heuristic
    (``heuristic_fraction`` of the time since ``Last-Modified``, at most ``heuristic_cap``
    seconds, section 4.2.2) > zero.
    """
    response_cc = CacheControl.from_headers(headers)
    for directive in ("s-maxage", "max-age"):
        seconds = response_cc.seconds(directive)
        if seconds is not None:
            return float(seconds)
    if "Expires" in headers:
        expires = parse_http_date(headers.get("Expires"))
        if expires is None:
            return 0.0  # an invalid Expires, such as "0", means already expired (section 5.3)
        return max(0.0, expires - date_value(headers, response_time))
    if heuristic_allowed(status, response_cc):
        last_modified = _last_modified(headers)
        if last_modified is not None:
            interval = date_value(headers, response_time) - last_modified
            return max(0.0, min(heuristic_cap, heuristic_fraction * interval))
    return 0.0


def current_age(headers: Headers, request_time: float, response_time: float, now: float) -> float:
    """Estimate the age of a stored response at time *now* (RFC 9111 section 4.2.3).

    ::

        apparent_age = max(0, response_time - date_value)
        response_delay = response_time - request_time
        corrected_age_value = age_value + response_delay
        corrected_initial_age = max(apparent_age, corrected_age_value)
        resident_time = now - response_time
        current_age = corrected_initial_age + resident_time
    """
    age_value = age_field_value(headers)
    apparent_age = max(0.0, response_time - date_value(headers, response_time))
    response_delay = response_time - request_time
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = now - response_time
    return corrected_initial_age + resident_time


def age_field_value(headers: Headers) -> int:
    """The ``Age`` a response arrived with, in seconds (RFC 9111 section 5.1).

    ``Age`` is a singleton field, but a cache that meets a list (``Age: 7200, 0``, or two
    ``Age`` lines) uses the first member and discards the rest; an invalid first member (not a
    non-negative integer, such as ``-5`` or ``7200.0``) means the field is ignored: ``0``.
    """
    members = headers.get_list("Age")
    return parse_delta_seconds(members[0]) if members else 0


def reuse_verdict(
    request_cc: CacheControl, response_cc: CacheControl, lifetime: float, age: float
) -> tuple[bool, str]:
    """Decide whether a selected stored response may be reused without validation.

    :param request_cc: the request's directives (see :func:`request_directives`).
    :param response_cc: the stored response's directives.
    :returns: ``(True, "")`` to reuse it, or ``(False, why)`` where *why* is ``"request"``
        when the client's directives demand a fresher answer, or ``"stale"`` when the stored
        response itself needs validation.

    The rules, in order: response ``no-cache`` always needs validation (RFC 9111 section
    5.2.2.4); so does request ``no-cache`` (5.2.1.4); request ``max-age`` bounds the age
    (5.2.1.1) and ``min-fresh`` asks for remaining freshness (5.2.1.3); a fresh response is
    reused (4.2). A stale one is reused only under request ``max-stale`` (5.2.1.2, 4.2.4), and
    never when the response says ``must-revalidate``, ``proxy-revalidate`` or ``s-maxage``
    (5.2.2.2, 5.2.2.8, 5.2.2.10).
    """
    if "no-cache" in request_cc:
        return False, "request"
    if "no-cache" in response_cc:
        return False, "stale"
    max_age = request_cc.seconds("max-age")
    if max_age is not None and age > max_age:
        return False, "request"
    min_fresh = request_cc.seconds("min-fresh")
    if min_fresh is not None and lifetime - age < min_fresh:
        return False, "request"
    if lifetime > age:
        return True, ""
    if any(d in response_cc for d in ("must-revalidate", "proxy-revalidate", "s-maxage")):
        return False, "stale"
    if "max-stale" in request_cc:
        argument = request_cc.argument("max-stale")
        if argument is None or age - lifetime <= parse_delta_seconds(argument):
            return True, ""
    return False, "stale"


def _last_modified(headers: Headers) -> float | None:
    return parse_http_date(headers.get("Last-Modified"))

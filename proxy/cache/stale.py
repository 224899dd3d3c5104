"""When a stale stored response may still be served: on an origin error, or while revalidating.

Theory of operation: a stored response past its freshness lifetime is normally *validated*
before it is used again (RFC 9111 section 4.3). Two situations let a cache use it anyway, and
both are decided here from plain values (the two messages' directives, the lifetime, the age
and the proxy's own bound), so every rule is a table row in a unit test.

* **Serving stale on error** (RFC 9111 section 4.2.4; RFC 5861 section 4, ``stale-if-error``).
  The cache forwarded the request and the origin could not answer: the connection was refused
  or timed out, it was reset before a response head, or the origin answered ``500``, ``502``,
  ``503`` or ``504``. Section 4.2.4 lets a *disconnected* cache generate a stale response,
  and lets configuration permit it; here the configuration is the proxy-wide ``max_stale``
  bound in seconds (``--max-stale``), and an origin's ``stale-if-error=N`` (in the response, or
  a client's in its request) narrows it further: RFC 5861 calls N "the upper limit to staleness".
* **Serving stale while revalidating** (RFC 5861 section 3, ``stale-while-revalidate=N``). The
  origin says a response up to N seconds stale may be served at once while the cache
  revalidates it in the background, so the client never waits for the round trip. It is an
  explicit permission from the origin, so nothing happens without it; ``max_stale`` bounds it
  too, so ``max_stale = 0`` switches every kind of stale serving off.

What forbids both, whatever the permissions (RFC 9111 section 4.2.4: "MUST NOT generate a
stale response if it is prohibited by an explicit in-protocol directive"): the response
directives ``no-cache`` (5.2.2.4), ``must-revalidate`` (5.2.2.2), ``proxy-revalidate``
(5.2.2.8) and ``s-maxage``, which implies ``proxy-revalidate`` for a shared cache (5.2.2.10);
and a client that asked for a validated or younger response with ``no-cache`` (5.2.1.4),
``max-age`` (5.2.1.1) or ``min-fresh`` (5.2.1.3), unless that same request also says
``stale-if-error`` (then the client has said what it accepts when the origin fails).

*Staleness* is ``current age - freshness lifetime``: how far past its lifetime the response is.
The result of a stale answer is marked in ``Cache-Status`` (RFC 9211): a response served stale
after a failed forward is ``fwd=stale`` (it was forwarded because it was stale) with the
origin's ``fwd-status`` when there was one, and one served at once under
``stale-while-revalidate`` is a ``hit`` (not forwarded) with a negative ``ttl``.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.cache.directives import CacheControl

#: Origin answers after which a stale response may stand in (RFC 5861 section 4).
ERROR_STATUSES = frozenset({500, 502, 503, 504})

#: Response directives that forbid serving the response stale (RFC 9111 section 4.2.4).
FORBIDDING_RESPONSE_DIRECTIVES = ("no-cache", "must-revalidate", "proxy-revalidate", "s-maxage")

#: Default proxy-wide bound on staleness, in seconds: one day. Long enough to carry a site
#: through a night-long origin outage (Squid's default ``max_stale`` is a week), short enough
#: that a forgotten dead origin does not keep serving content for weeks.
DEFAULT_MAX_STALE = 86400.0


@dataclass(frozen=True, slots=True)
class StalePermission:
    """What a stale stored response may be used for, as decided by :func:`stale_permission`.

    :ivar on_error: it may answer the request if the origin fails (connect failure, reset
        before the head, ``500``/``502``/``503``/``504``).
    :ivar while_revalidating: it may answer the request at once while the cache revalidates
        it in the background (``stale-while-revalidate``).
    :ivar why_not: when neither holds, the reason as a short token (``disabled``, the
        forbidding directive such as ``must-revalidate``, ``request``, ``too-stale``);
        empty otherwise.
    """

    on_error: bool = False
    while_revalidating: bool = False
    why_not: str = ""


NO_STALE = StalePermission(why_not="disabled")


def forbidding_directive(response_cc: CacheControl) -> str | None:
    """The response directive that forbids stale serving, or ``None`` (RFC 9111 §4.2.4)."""
    for directive in FORBIDDING_RESPONSE_DIRECTIVES:
        if directive in response_cc:
            return directive
    return None


def client_demands_validation(request_cc: CacheControl, lifetime: float, age: float) -> bool:
    """Tell whether the request's own directives rule a stale answer out (RFC 9111 §5.2.1).

    ``no-cache`` asks for validation; ``max-age`` below the current age asks for a younger
    response; ``min-fresh`` asks for remaining freshness, which a stale response has none of.
    """
    if "no-cache" in request_cc or "min-fresh" in request_cc:
        return True
    max_age = request_cc.seconds("max-age")
    return max_age is not None and age > max_age


def error_bound(request_cc: CacheControl, response_cc: CacheControl, max_stale: float) -> float:
    """How stale a response may be when served on error, in seconds (RFC 5861 section 4).

    The proxy's *max_stale*, narrowed by any ``stale-if-error`` of the response and of the
    request: each is an upper limit.
    """
    bound = max_stale
    for directives in (response_cc, request_cc):
        seconds = directives.seconds("stale-if-error")
        if seconds is not None:
            bound = min(bound, float(seconds))
    return bound


def stale_permission(
    request_cc: CacheControl,
    response_cc: CacheControl,
    lifetime: float,
    age: float,
    max_stale: float,
) -> StalePermission:
    """Decide whether a stored response that needs validation may still be served stale.

    :param request_cc: the request's directives (``Pragma: no-cache`` already mapped).
    :param response_cc: the stored response's directives.
    :param lifetime: its freshness lifetime in seconds (RFC 9111 section 4.2.1).
    :param age: its current age in seconds (section 4.2.3).
    :param max_stale: the proxy-wide bound in seconds; ``0`` disables stale serving.
    """
    if max_stale <= 0:
        return NO_STALE
    forbidden = forbidding_directive(response_cc)
    if forbidden is not None:
        return StalePermission(why_not=forbidden)
    staleness = age - lifetime
    if client_demands_validation(request_cc, lifetime, age):
        on_error = "stale-if-error" in request_cc and staleness <= error_bound(
            request_cc, response_cc, max_stale
        )
        return StalePermission(on_error=on_error, why_not="" if on_error else "request")
    on_error = staleness <= error_bound(request_cc, response_cc, max_stale)
    window = response_cc.seconds("stale-while-revalidate")
    while_revalidating = window is not None and 0 < staleness <= min(float(window), max_stale)
    why_not = "" if on_error or while_revalidating else "too-stale"
    return StalePermission(on_error, while_revalidating, why_not)


def is_origin_error(status: int | None) -> bool:
    """Tell whether an origin outcome allows serving stale: no response (``None``) or 5xx.

    ``None`` stands for every failure without a response head: refused or timed-out
    connection, reset or close before the head, no first byte within the deadline.
    """
    return status is None or status in ERROR_STATUSES


def error_cache_status(ttl: float, fwd_status: int | None, name: str = "minireactor") -> str:
    """``Cache-Status`` for a stale response served because the origin failed (RFC 9211).

    >>> error_cache_status(-30.4, 503)
    'minireactor; fwd=stale; fwd-status=503; ttl=-30; detail=stale-if-error'
    >>> error_cache_status(-30.4, None)
    'minireactor; fwd=stale; ttl=-30; detail=stale-if-error'
    """
    status = "" if fwd_status is None else f"; fwd-status={fwd_status}"
    return f"{name}; fwd=stale{status}; ttl={int(ttl)}; detail=stale-if-error"


def revalidating_cache_status(ttl: float, name: str = "minireactor") -> str:
    """``Cache-Status`` for a stale response served at once under ``stale-while-revalidate``.

    It was not forwarded, so it is a ``hit``; the negative ``ttl`` says it was stale (RFC 9211
    section 2.5).

    >>> revalidating_cache_status(-4.2)
    'minireactor; hit; ttl=-4; detail=stale-while-revalidate'
    """
    return f"{name}; hit; ttl={int(ttl)}; detail=stale-while-revalidate"

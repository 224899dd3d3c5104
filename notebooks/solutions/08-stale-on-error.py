# Exercise 08-stale-on-error: RFC 9111 section 4.2.4 and RFC 5861 section 4.
from proxy.cache.directives import CacheControl

FORBIDDING = ("no-cache", "must-revalidate", "proxy-revalidate", "s-maxage")


def may_serve_stale_on_error(request_cc, response_cc, lifetime, age, max_stale):
    """True if a stale stored response may answer when the origin fails."""
    request, response = CacheControl.parse([request_cc]), CacheControl.parse([response_cc])
    if max_stale <= 0 or any(d in response for d in FORBIDDING):
        return False  # switched off, or the origin said never stale
    bound = max_stale  # every stale-if-error is an upper limit on the staleness
    for directives in (response, request):
        seconds = directives.seconds("stale-if-error")
        if seconds is not None:
            bound = min(bound, seconds)
    within = age - lifetime <= bound
    max_age = request.seconds("max-age")
    demands_fresh = (
        "no-cache" in request or "min-fresh" in request or (max_age is not None and age > max_age)
    )
    if demands_fresh:  # unless the same client said what it accepts when the origin fails
        return "stale-if-error" in request and within
    return within

# Exercise 08-freshness: RFC 9111 sections 4.2.1 to 4.2.3, for a shared cache.
from proxy.cache.directives import CacheControl, parse_delta_seconds, parse_http_date
from proxy.cache.freshness import HEURISTICALLY_CACHEABLE


def _date(headers, response_time):
    """The origin's Date, or the arrival time when it has none (or a bad one)."""
    date = parse_http_date(headers.get("Date"))
    return response_time if date is None else date


def freshness_lifetime_of(status, headers, response_time):
    """Seconds the response stays fresh. `headers` is a proxy.http11.Headers."""
    directives = CacheControl.from_headers(headers)
    for name in ("s-maxage", "max-age"):  # a shared cache obeys s-maxage first
        seconds = directives.seconds(name)  # an invalid argument gives 0
        if seconds is not None:
            return float(seconds)
    if "Expires" in headers:
        expires = parse_http_date(headers.get("Expires"))
        if expires is None:  # "Expires: 0" and other non-dates mean "already expired"
            return 0.0
        return max(0.0, expires - _date(headers, response_time))
    if status in HEURISTICALLY_CACHEABLE or "public" in directives:
        modified = parse_http_date(headers.get("Last-Modified"))
        if modified is not None:  # 10 % of the time since it last changed, at most a day
            return max(0.0, min(86400.0, 0.1 * (_date(headers, response_time) - modified)))
    return 0.0


def current_age_of(headers, request_time, response_time, now):
    """The response's age at `now`, in seconds."""
    ages = headers.get_list("Age")
    age_value = parse_delta_seconds(ages[0]) if ages else 0  # the first member; invalid: 0
    apparent_age = max(0.0, response_time - _date(headers, response_time))
    corrected_age_value = age_value + (response_time - request_time)
    return max(apparent_age, corrected_age_value) + (now - response_time)

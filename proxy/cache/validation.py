"""Stored header fields and validation: what is kept, how it is revalidated and refreshed.

Theory of operation: a stale response need not be thrown away. If it carries a *validator* (an
``ETag`` or a ``Last-Modified`` date), the cache can ask the origin "has it changed?" with a
conditional request, and a ``304 Not Modified`` answer makes the stored copy usable again at
the price of a header-only round trip.

* **Storing** (RFC 9111 section 3.1): all header fields are kept except the hop-by-hop ones,
  which describe one connection and not the response (``Connection`` and the fields it names,
  RFC 9110 section 7.6.1). :func:`fields_for_storage` also fills in a missing ``Date`` (RFC 9110
  section 6.6.1). ``Set-Cookie`` never reaches the store (see :mod:`proxy.cache.freshness`).
* **Sending a validation request** (section 4.3.1): :func:`conditional_headers` turns the
  stored ``ETag`` into ``If-None-Match`` and ``Last-Modified`` into ``If-Modified-Since``;
  without either there is nothing to ask and the request is forwarded as it is.
* **Answering a client's conditional request** (section 4.3.2): a client holding its own copy
  sends ``If-None-Match`` or ``If-Modified-Since``; when the cache's fresh response satisfies it,
  the cache answers ``304`` itself (:func:`client_not_modified`). ``If-None-Match`` uses the weak
  comparison and accepts ``*``; ``If-Modified-Since`` is ignored when ``If-None-Match`` is
  present (RFC 9110 section 13.2.2), and compares against ``Last-Modified``, else ``Date``, else
  the time of receipt. Preconditions only apply to ``2xx`` responses (RFC 9110 section 13.2.1).
* **Freshening** (sections 3.2 and 4.3.4): a ``304`` first has to *select* the stored response,
  by carrying the same ``ETag`` (or ``Last-Modified``) (:func:`validator_selects`); then its header
  fields replace the stored ones, except ``Content-Length`` (which describes the 304's empty
  content) and the fields never stored (:func:`freshened_fields`).
"""

from __future__ import annotations

from proxy.cache.directives import format_http_date, parse_etags, parse_http_date, weak_match
from proxy.http11.headers import Headers

#: Hop-by-hop fields (RFC 9110 section 7.6.1) plus ``Proxy-Connection``: never stored.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

#: Fields a ``304`` must not overwrite in the stored response (RFC 9111 section 3.2).
NOT_UPDATED = frozenset({"content-length", "set-cookie"})

#: Fields a ``304`` generated from a stored response carries (RFC 9110 section 15.4.5).
NOT_MODIFIED_FIELDS = ("Cache-Control", "Content-Location", "Date", "ETag", "Expires", "Vary")


def _unstored_names(headers: Headers) -> set[str]:
    """Lower-cased names never stored: hop-by-hop ones and those listed in ``Connection``."""
    return set(HOP_BY_HOP) | {name.lower() for name in headers.get_list("Connection")}


def fields_for_storage(headers: Headers, response_time: float) -> Headers:
    """Return the header fields to store for a response (RFC 9111 section 3.1).

    Hop-by-hop fields and ``Set-Cookie`` are removed and a missing ``Date`` is added with the
    time of receipt. ``Content-Length`` is left for the caller to set to the stored body's length.
    """
    dropped = _unstored_names(headers) | {"set-cookie"}
    stored = Headers((name, value) for name, value in headers if name.lower() not in dropped)
    if parse_http_date(stored.get("Date")) is None:
        stored.set("Date", format_http_date(response_time))
    return stored


def conditional_headers(stored: Headers) -> Headers | None:
    """Build the validators to send when revalidating a stored response (RFC 9111 §4.3.1).

    :returns: ``If-None-Match`` from ``ETag`` and ``If-Modified-Since`` from ``Last-Modified``
        (both when both exist, as RFC 9110 section 13.1.3 recommends), or ``None`` when the
        stored response has no validator.
    """
    conditions = Headers()
    etag = stored.get("ETag")
    if etag:
        conditions.add("If-None-Match", etag.strip())
    last_modified = stored.get("Last-Modified")
    if last_modified and parse_http_date(last_modified) is not None:
        conditions.add("If-Modified-Since", last_modified.strip())
    return conditions if len(conditions) else None


def client_not_modified(
    status: int, stored: Headers, response_time: float, request_headers: Headers
) -> bool:
    """Tell whether a client's conditional GET/HEAD is satisfied by a stored response.

    RFC 9111 section 4.3.2 with RFC 9110 sections 13.1.2, 13.1.3 and 13.2.2. ``True`` means the
    cache should answer ``304 Not Modified``.
    """
    if not 200 <= status <= 299:
        return False
    if "If-None-Match" in request_headers:
        tags = parse_etags(",".join(request_headers.get_all("If-None-Match")))
        if "*" in tags:
            return True
        etag = stored.get("ETag")
        return etag is not None and any(weak_match(tag, etag) for tag in tags)
    if "If-Modified-Since" in request_headers:
        since = parse_http_date(request_headers.get("If-Modified-Since"))
        if since is None:
            return False  # an invalid date is ignored (RFC 9110 section 13.1.3)
        modified = parse_http_date(stored.get("Last-Modified"))
        if modified is None:
            modified = parse_http_date(stored.get("Date"))
        if modified is None:
            modified = response_time
        return modified <= since
    return False


def validator_selects(stored: Headers, new: Headers) -> bool:
    """Tell whether a ``304`` selects a stored response for update (RFC 9111 section 4.3.4).

    A ``304`` carrying an ``ETag`` selects a stored response with a matching one; failing that,
    one carrying ``Last-Modified`` selects a stored response with the same date; a ``304`` with
    no validator selects the response that was revalidated. This cache compares entity tags
    weakly for both cases (a simplification of the strong/weak split of section 4.3.4).
    """
    new_etag = new.get("ETag")
    if new_etag:
        stored_etag = stored.get("ETag")
        return stored_etag is not None and weak_match(new_etag, stored_etag)
    new_modified = parse_http_date(new.get("Last-Modified"))
    if new_modified is not None:
        return new_modified == parse_http_date(stored.get("Last-Modified"))
    return True


def freshened_fields(stored: Headers, new: Headers, response_time: float) -> Headers:
    """Merge the fields of a ``304`` into stored ones (RFC 9111 sections 3.2 and 4.3.4).

    Every field of *new* replaces all stored fields of the same name, except ``Content-Length``,
    hop-by-hop fields and ``Set-Cookie``, which are never taken from a ``304``. The stored
    ``Age`` goes when the 304 has none (it described the old response), and a 304 without
    ``Date`` dates the result from *response_time*, when it arrived.
    """
    skipped = _unstored_names(new) | NOT_UPDATED
    merged = stored.copy()
    seen: set[str] = set()
    for name, _ in new:
        lowered = name.lower()
        if lowered in skipped or lowered in seen:
            continue
        seen.add(lowered)
        merged.remove(name)
        for value in new.get_all(name):
            merged.add(name, value)
    if "Age" not in new:
        merged.remove("Age")
    if "Date" not in new:
        merged.set("Date", format_http_date(response_time))
    return merged


def not_modified_fields(stored: Headers) -> Headers:
    """Pick the fields of a stored response that a ``304`` answer carries (RFC 9110 §15.4.5)."""
    fields = Headers()
    for name in NOT_MODIFIED_FIELDS:
        for value in stored.get_all(name):
            fields.add(name, value)
    return fields

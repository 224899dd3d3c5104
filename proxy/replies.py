"""The short pages the proxy writes itself: errors, refusals and other local answers.

Theory of operation
-------------------
When the proxy cannot or will not forward a request, the user deserves to know why, in words
a browser shows and a log keeps: the status, its standard phrase, and one sentence naming the
cause. Every page is tiny and self-contained (no external assets) and escaped, because the cause
may quote the client's own input.
"""

from __future__ import annotations

import html

from .http11 import Headers, reason_phrase, serialize_response_head


def error_page(status: int, detail: str) -> bytes:
    """An HTML page naming *status* and the *detail* of what went wrong."""
    phrase = html.escape(reason_phrase(status))
    text = html.escape(detail)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{status} {phrase}</title></head>\n"
        f"<body><h1>{status} {phrase}</h1>\n<p>{text}</p>\n"
        "<hr><address>minireactor proxy</address></body></html>\n"
    ).encode()


def simple_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/html; charset=utf-8",
    close: bool = False,
    head_only: bool = False,
    extra: Headers | None = None,
) -> bytes:
    """Serialise a complete response with a fixed-length body."""
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    headers.add("Cache-Control", "no-store")
    if extra is not None:
        for name, value in extra:
            headers.add(name, value)
    if close:
        headers.add("Connection", "close")
    head = serialize_response_head(status, reason_phrase(status), headers)
    return head if head_only else head + body

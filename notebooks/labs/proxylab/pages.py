"""The proxy's own answers: short, complete error pages.

Theory of operation
-------------------
When the proxy cannot forward a request it answers by itself, and the answer must be a whole
message the client can frame: a status line, a ``Content-Length`` and a short body that says
what went wrong, so whoever reads curl's output (or a browser window) sees the cause.

Every error page closes the connection (``Connection: close``): after a malformed request the
proxy can no longer tell where the next request would start, and after a failed exchange there
is nothing worth keeping the connection for.

This file is given: you need not change it.
"""

from __future__ import annotations

import html

from proxy.http11 import Headers, reason_phrase, serialize_response_head


def error_page(status: int, detail: str) -> bytes:
    """Return a complete ``status`` response whose small HTML body explains *detail*."""
    reason = reason_phrase(status) or "Error"
    body = (
        "<!doctype html>\n"
        f"<title>{status} {reason}</title>\n"
        f"<h1>{status} {reason}</h1>\n"
        f"<p>{html.escape(detail)}</p>\n"
    ).encode()
    headers = Headers(
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return serialize_response_head(status, reason, headers) + body

"""The routes of the driver's HTTP origin, one function each.

Theory of operation
-------------------
All answers are HTTP/1.1. Every route outside ``/c/`` says ``Cache-Control: no-store``, so a
cache can never hide a relay bug.

``/hello`` ``/echo`` ``/hop``
    a short body; the request as the origin saw it, in JSON; a response carrying hop-by-hop
    fields that must not reach the client.
``/chunked`` ``/close`` ``/big?size=N&seed=S``
    a chunked body; a body that ends when the connection closes; N deterministic bytes.
``/bad`` ``/drop`` ``/silent`` ``/firehose``
    an invalid status line; a close without an answer; no answer at all (until the run ends);
    an endless body sent as fast as the proxy takes it (it counts what it sent).
``/c/NAME?cc=..&etag=..&lm=..&expires=..&age=..&size=..``
    a cacheable resource: ``cc`` is its ``Cache-Control``, ``etag`` and ``lm`` (seconds ago)
    its validators, ``expires`` seconds from now (or ``invalid``), ``age`` its ``Age``. It
    answers ``304`` to a matching ``If-None-Match`` or ``If-Modified-Since``, counts full and
    conditional requests, and changes its body and validators on
    :meth:`~checks.http_origin.HttpOrigin.bump`.
"""

from __future__ import annotations

import email.utils
import json
import time
from urllib.parse import parse_qs, urlsplit

from checks.http_origin import (
    CHUNKS,
    CLOSE_BODY,
    HELLO,
    ROUTES,
    OriginHandler,
    Recorded,
    Resource,
    big_body,
    send_forever,
    sha256,
)


def query(recorded: Recorded) -> dict[str, str]:
    """The query parameters of a recorded request, one value each."""
    return {key: values[0] for key, values in parse_qs(urlsplit(recorded.target).query).items()}


def hello(handler: OriginHandler, recorded: Recorded) -> None:
    """A short fixed body."""
    handler.reply(200, HELLO, [("Content-Type", "text/plain"), ("Cache-Control", "no-store")])


def echo(handler: OriginHandler, recorded: Recorded) -> None:
    """The request as the origin saw it, in JSON (the body as its length and hash)."""
    seen = {
        "method": recorded.method,
        "target": recorded.target,
        "version": recorded.version,
        "headers": recorded.headers,
        "body_length": len(recorded.body),
        "body_sha256": sha256(recorded.body),
    }
    handler.reply(200, json.dumps(seen).encode(), [("Content-Type", "application/json")])


def hop(handler: OriginHandler, recorded: Recorded) -> None:
    """A response with connection-specific fields, which the proxy must not pass on."""
    handler.reply(
        200,
        b"hop\n",
        [
            ("Connection", "X-Origin-Private"),
            ("X-Origin-Private", "secret"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("X-Origin-Public", "visible"),
            ("Cache-Control", "no-store"),
        ],
    )


def chunked(handler: OriginHandler, recorded: Recorded) -> None:
    """A chunked body, in four chunks."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    for piece in CHUNKS:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    handler.wfile.write(b"0\r\n\r\n")


def until_close(handler: OriginHandler, recorded: Recorded) -> None:
    """A body with no length: it ends when the origin closes the connection."""
    handler.send_response(200)
    handler.send_header("Cache-Control", "no-store")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(CLOSE_BODY)
    handler.close_connection = True


def big(handler: OriginHandler, recorded: Recorded) -> None:
    """``size`` deterministic bytes from ``seed``."""
    params = query(recorded)
    handler.reply(200, big_body(int(params.get("size", "1000")), int(params.get("seed", "0"))))


def bad(handler: OriginHandler, recorded: Recorded) -> None:
    """An invalid status line, then close."""
    handler.wfile.write(b"HTTP/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\nok")
    handler.close_connection = True


def drop(handler: OriginHandler, recorded: Recorded) -> None:
    """Close the connection without answering."""
    handler.close_connection = True


def silent(handler: OriginHandler, recorded: Recorded) -> None:
    """Never answer (until the run ends, or a minute has passed)."""
    handler.server.stopping.wait(60)
    handler.close_connection = True


def firehose(handler: OriginHandler, recorded: Recorded) -> None:
    """An endless body (a 16 GiB Content-Length), sent as fast as the proxy takes it."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(16 << 30))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    handler.close_connection = True
    send_forever(handler.connection, handler.server.firehose, handler.server.stopping)


def cache_route(handler: OriginHandler, recorded: Recorded) -> None:
    """A resource with caching fields, validators and 304 answers (see the module docstring)."""
    origin = handler.server
    params = query(recorded)
    with origin.lock:
        resource = origin.resources.setdefault(recorded.target, Resource())
        if resource.modified == 0.0:
            resource.modified = float(int(time.time()) - int(params.get("lm", "0")))
        version, modified = resource.version, resource.modified
    headers = [("Date", email.utils.formatdate(usegmt=True))]
    if "cc" in params:
        headers.append(("Cache-Control", params["cc"]))
    etag = f'"{params["etag"]}-v{version}"' if "etag" in params else None
    if etag:
        headers.append(("ETag", etag))
    if "lm" in params:
        headers.append(("Last-Modified", email.utils.formatdate(modified, usegmt=True)))
    if "expires" in params:
        offset = params["expires"]
        future = time.time() + int(offset) if offset != "invalid" else 0.0
        when = "0" if offset == "invalid" else email.utils.formatdate(future, usegmt=True)
        headers.append(("Expires", when))
    if "age" in params:
        headers.append(("Age", params["age"]))
    if_none_match = recorded.get("if-none-match")
    if_modified_since = recorded.get("if-modified-since")
    with origin.lock:
        if if_none_match is not None or if_modified_since is not None:
            resource.conditional += 1
        unchanged = False
        if if_none_match is not None:
            unchanged = etag is not None and etag in [t.strip() for t in if_none_match.split(",")]
        elif if_modified_since is not None and "lm" in params:
            unchanged = parsed_date(if_modified_since) >= modified
        if unchanged:
            resource.not_modified += 1
        else:
            resource.full += 1
    if unchanged:
        handler.send_response_only(304)
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        return
    size = int(params.get("size", "200"))
    handler.reply(200, resource_body(recorded.target, version, size), headers)


def parsed_date(text: str) -> float:
    """An HTTP date as a timestamp; minus infinity when it does not parse (never "unchanged")."""
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return float("-inf")


def resource_body(target: str, version: int, size: int) -> bytes:
    """The body of version *version* of the ``/c/`` resource *target*."""
    line = f"{target} version {version}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def register() -> None:
    """Put every route of this module in :data:`~checks.http_origin.ROUTES`."""
    ROUTES.update(
        {
            "/hello": hello,
            "/echo": echo,
            "/hop": hop,
            "/chunked": chunked,
            "/close": until_close,
            "/big": big,
            "/bad": bad,
            "/drop": drop,
            "/silent": silent,
            "/firehose": firehose,
            "/c/": cache_route,
        }
    )


register()

"""Part A, the pure half: request targets, and the heads a proxy rewrites both ways.

Theory of operation
-------------------
A client talking to a forward proxy names the whole URL, ``GET http://host:port/path?q
HTTP/1.1`` (*absolute-form*, RFC 9112 section 3.2.2); the origin expects ``GET /path?q`` with
the host in ``Host`` (*origin-form*). :func:`parse_target` will split the first into a
:class:`Target`; ``CONNECT`` names only ``host:port`` (*authority-form*), which
:func:`split_authority` will split for the tunnel of Part B.

Both heads are rewritten on the way through (RFC 9110 section 7.6): the request for the origin
(:func:`origin_request_head`) and the response for the client (:func:`client_response_head`),
which is also where the body's framing for the client is decided. The handout gives the rules
and the checks (A2, A3, A4, A5, A7, A8) that grade them.

Nothing here touches a socket: write these functions first and try them in a Python prompt
(``cd notebooks/labs/proxylab && python``, then ``from rewrite import parse_target``).

What you will need (import it when you use it)::

    from proxy.http11 import (BodyWriter, Headers, ProtocolError, Response, keep_alive,
                              serialize_request_head, serialize_response_head)
"""

from __future__ import annotations

from typing import NamedTuple

from proxy.http11 import BodyWriter, Request, Response

#: TODO(A3): the fields that concern one connection only (RFC 9110 section 7.6.1).
HOP_BY_HOP: frozenset[str] = frozenset()


class Target(NamedTuple):
    """Where a request goes: host, port and the origin-form path (with its query)."""

    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        """``host[:port]`` as it belongs in ``Host``: the default port 80 is left out."""
        return self.host if self.port == 80 else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The absolute URL, which is also the cache key."""
        return f"http://{self.authority}{self.path}"


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]``; without a port use *default_port* (None: the port is required).

    TODO(A2, A8): a bad port (not digits, 0, 65536 or more), an empty or strange host, or
    user information (``user@``) is a 400: ``raise ProtocolError("why", 400)``. Part B uses
    this function too, for ``CONNECT host:port``.
    """
    raise NotImplementedError("A2: split_authority() in rewrite.py")


def parse_target(target: str) -> Target:
    """Split an absolute-form target ``http://host[:port][/path][?query]``.

    TODO(A2, A8): anything else is a 400. ``http://host`` means the path ``/``, and
    ``http://host?q`` means ``/?q``; a fragment (``#...``) is not sent.
    """
    raise NotImplementedError("A2: parse_target() in rewrite.py")


def origin_request_head(
    request: Request,
    target: Target,
    pseudonym: str,
    body: bytes,
    validators: list[tuple[str, str]],
) -> bytes:
    """The head to send to the origin.

    TODO(A2): origin-form request line; ``Host`` from the URL, not from the client.
    TODO(A3): no hop-by-hop field, nor any field that ``Connection`` names
    (``request.connection`` holds its tokens, lower-cased).
    TODO(A4): append a ``Via`` entry such as ``1.1 labproxy`` (*pseudonym* is the name).
    TODO(A7): the body arrives whole (client.py collected it): send it with a Content-Length.
    TODO(C5): *validators* are the fields of a revalidation (``If-None-Match``...).
    """
    raise NotImplementedError("A2: origin_request_head() in rewrite.py")


def client_response_head(
    response: Response, request: Request, pseudonym: str
) -> tuple[bytes, BodyWriter, bool]:
    """The head to send to the client, the writer that frames the body, and keep-alive.

    TODO(A3, A4): no hop-by-hop field; a ``Via`` entry.
    TODO(A5, A7): ``response.framing`` is an int (a Content-Length: keep it) or a str
    (chunked, or until close). Decide how the *client* will find the end of the body, and
    whether its connection persists (``keep_alive(request.version, request.headers)``).
    """
    raise NotImplementedError("A5: client_response_head() in rewrite.py")

"""Part A, the pure half: request targets, and the heads a proxy rewrites both ways.

Theory of operation
-------------------
A client talking to a forward proxy names the whole URL, ``GET http://host:port/path?q
HTTP/1.1`` (*absolute-form*, RFC 9112 section 3.2.2); the origin expects ``GET /path?q`` with
the host in ``Host`` (*origin-form*). :func:`parse_target` splits the first into a
:class:`Target`; anything but an absolute ``http://`` URL is a 400, since a forward proxy cannot
guess where ``GET /path`` should go. ``CONNECT`` names only ``host:port`` (*authority-form*),
which :func:`split_authority` splits for the tunnel.

Rewriting heads, both ways (RFC 9110 section 7.6.1): the fields that describe one connection
rather than the message (:data:`HOP_BY_HOP`, and every field that ``Connection`` names) are
removed, or the client's private connection settings would reach a server that never agreed
to them. ``Host`` is taken from the URL, whatever the client sent (RFC 9112 section 3.2.2), and
``Via`` gets our entry (RFC 9110 section 7.6.3), so loops and intermediaries can be seen. The
origin connection carries this one request (``Connection: close``); keep-alive is between the
client and the proxy.

Re-framing: the body the client receives is framed for *its* connection. A ``Content-Length``
body keeps its length; a chunked or close-delimited body goes chunked to an HTTP/1.1 client, so
the connection can carry the next request, and close-delimited to an HTTP/1.0 client, which
does not know chunked (RFC 9112 section 6.1).

Nothing here touches a socket: every function is bytes and objects in, bytes and objects out,
and can be tried in a Python prompt.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from proxy.http11 import (
    BodyWriter,
    Headers,
    ProtocolError,
    Request,
    Response,
    keep_alive,
    serialize_request_head,
    serialize_response_head,
)

#: Fields that concern one connection only (RFC 9110 section 7.6.1), plus the framing field.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# A host name or an IPv4 address: letters, digits, dots, hyphens (and underscores, seen in
# the wild). Anything else (spaces, "/", "@", "%") would let a client reshape the URL.
_HOST = re.compile(r"[A-Za-z0-9._-]+")


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

    :raises ProtocolError: (400) the authority is malformed.
    """
    if "@" in authority:
        # Credentials in a URL end up in logs and Referer headers; proxies refuse them.
        raise ProtocolError(f"user information is not allowed in {authority!r}")
    host, colon, port_text = authority.partition(":")
    if not colon or not port_text:
        if default_port is None:
            raise ProtocolError(f"{authority!r} names no port")
        port = default_port
    elif port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ProtocolError(f"bad port in {authority!r}")
    if not _HOST.fullmatch(host):
        raise ProtocolError(f"bad host in {authority!r}")
    return host.lower(), port


def parse_target(target: str) -> Target:
    """Split an absolute-form target ``http://host[:port][/path][?query]``.

    :raises ProtocolError: (400) not an absolute ``http://`` URL, or a malformed one.
    """
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise ProtocolError(f"a forward proxy needs an absolute http:// URL, not {target[:80]!r}")
    # The authority ends at the first "/", "?" or "#" (RFC 3986 section 3.2).
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:].partition("#")[0]
    if not path.startswith("/"):
        path = "/" + path  # "http://host" and "http://host?q" mean "/" and "/?q"
    host, port = split_authority(authority, default_port=80)
    return Target(host, port, path)


def via_entry(version: str, pseudonym: str) -> str:
    """Our ``Via`` entry for a message received as *version*: ``1.1 labproxy``."""
    return f"{version.removeprefix('HTTP/')} {pseudonym}"


def origin_request_head(
    request: Request,
    target: Target,
    pseudonym: str,
    body: bytes,
    validators: list[tuple[str, str]],
) -> bytes:
    """The head to send to the origin: origin-form, ``Host`` from the URL, no hop-by-hop fields.

    The body was collected whole by the client connection, so it goes with a
    ``Content-Length`` however the client framed it. *validators* are the conditional fields
    of a revalidation (Part C).
    """
    drop = HOP_BY_HOP | request.connection | {"host", "content-length", "expect"}
    headers = Headers([("Host", target.authority), *request.headers.without(drop)])
    if body or request.framing != 0:
        headers.add("Content-Length", str(len(body)))
    headers.add("Via", via_entry(request.version, pseudonym))
    for name, value in validators:
        headers.set(name, value)
    headers.add("Connection", "close")
    return serialize_request_head(request.method, target.path, headers)


def client_response_head(
    response: Response, request: Request, pseudonym: str
) -> tuple[bytes, BodyWriter, bool]:
    """The head to send to the client, the writer that frames the body, and keep-alive.

    See the module docstring for the re-framing rules.
    """
    headers = response.headers.without(HOP_BY_HOP | response.connection)
    persist = keep_alive(request.version, request.headers)
    if isinstance(response.framing, int):
        chunked = False  # the Content-Length (or "no body") stays as the origin sent it
    elif request.version == "HTTP/1.1":
        chunked = True
        headers.add("Transfer-Encoding", "chunked")
    else:
        chunked, persist = False, False  # an HTTP/1.0 client knows only "until close"
    headers.add("Via", via_entry(response.version, pseudonym))
    if not persist:
        headers.add("Connection", "close")
    elif request.version == "HTTP/1.0":
        headers.add("Connection", "keep-alive")  # HTTP/1.0 closes unless told otherwise
    head = serialize_response_head(response.status, response.reason, headers)
    return head, BodyWriter(chunked), persist

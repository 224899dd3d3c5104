"""Request targets and the header rewriting a forward proxy owes the next hop.

Theory of operation
-------------------
A client talking to a proxy names the whole URL in the request line (RFC 9112 section 3.2.2,
*absolute-form*: ``GET http://example.com/a?b HTTP/1.1``), or, for ``CONNECT``, only
``host:port`` (*authority-form*, section 3.2.3). The origin expects *origin-form*
(``GET /a?b``) with the host in ``Host``. :func:`parse_target` splits the first two forms;
:class:`Target` rebuilds the third.

Some fields describe one connection, not the message: ``Connection`` and every field it names,
``Keep-Alive``, ``Proxy-Connection``, ``Proxy-Authorization``, ``TE``, ``Trailer``, ``Upgrade``
(RFC 9110 section 7.6.1). A proxy must remove them before forwarding, or the client's private
connection settings leak to a server that never agreed to them. ``Via`` (section 7.6.3) is
added on the way through, so loops and intermediaries can be seen.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from .http11.errors import ProtocolError
from .http11.headers import Headers

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80}
# Controls, space and the characters that would end or reshape an authority.
_BAD_HOST_CHAR = re.compile(r"[\x00-\x20/\\@?#%]")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Fields that concern one connection only (RFC 9110 section 7.6.1, plus framing)."""

HOP_BY_HOP_AND_HOST = HOP_BY_HOP | {"host"}
"""What a forwarded request drops before it gets the ``Host`` of its absolute URL."""


class Target(NamedTuple):
    """Where a request goes: scheme, host, port and the origin-form path with query.

    A named tuple, not a frozen dataclass: one is made per request, and a tuple is built in C.
    """

    scheme: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        """``host[:port]`` as it belongs in ``Host``, with the default port left out."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The effective request URI (RFC 9110 section 7.1), the cache key's base."""
        return f"{self.scheme}://{self.authority}{self.path}"


def _split_host_port(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ProtocolError(f"bad IPv6 literal in {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ProtocolError(f"bad IPv6 literal in {authority!r}") from None
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
    if port_text is None or (port_text and not port_text.isdigit()):
        raise ProtocolError(f"bad port in {authority!r}")
    if port_text:
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ProtocolError(f"{authority!r} names no port")
    if not host or not 0 < port < 65536:
        raise ProtocolError(f"bad authority {authority!r}")
    if _BAD_HOST_CHAR.search(host):
        raise ProtocolError(f"bad host in {authority!r}")
    return host.lower().rstrip("."), port


def parse_target(method: str, target: str) -> Target:
    """Split an absolute-form or authority-form request target; raise ProtocolError if bad."""
    if method == "CONNECT":
        host, port = _split_host_port(target, None)
        return Target("https", host, port, "")
    if "://" not in target:
        raise ProtocolError(
            f"a forward proxy needs an absolute URL, got {target[:80]!r}"
            " (origin-form is only for the proxy's own pages)"
        )
    scheme, _, rest = target.partition("://")
    scheme = scheme.lower()
    if scheme not in ("http", "ws"):
        status = 501 if scheme.isalpha() else 400
        raise ProtocolError(f"scheme {scheme!r} is not supported by this proxy", status)
    authority, slash, path = rest.partition("/")
    authority, _, _ = authority.partition("?")
    if "@" in authority:
        raise ProtocolError("user information in the URL is not allowed")
    path = slash + path
    if not path or path.startswith("?"):
        path = "/" + path
    path = path.split("#", 1)[0]
    host, port = _split_host_port(authority, DEFAULT_PORTS[scheme])
    return Target(scheme, host, port, path)


def strip_hop_by_hop(
    headers: Headers,
    connection: frozenset[str] | None = None,
    *,
    keep_upgrade: bool = False,
    also: frozenset[str] = HOP_BY_HOP,
) -> Headers:
    """Return a copy without hop-by-hop fields; with *keep_upgrade*, keep an ``Upgrade``.

    *connection* is the message's ``Connection`` tokens when its parser already read them;
    *also* is :data:`HOP_BY_HOP` plus any field the caller will write anew itself.
    """
    named = headers.tokens("connection") if connection is None else connection
    drop = also | named if named else also
    out = headers.without(drop)
    if keep_upgrade:
        for value in headers.get_all("upgrade"):
            out.add("Upgrade", value)
        out.add("Connection", "upgrade")
    return out


def add_via(headers: Headers, version: str, pseudonym: str) -> None:
    """Append our ``Via`` entry (RFC 9110 section 7.6.3), e.g. ``1.1 minireactor``."""
    received = version.removeprefix("HTTP/")
    headers.add("Via", f"{received} {pseudonym}")


def has_via_loop(headers: Headers, pseudonym: str) -> bool:
    """Whether *headers* already passed through a proxy calling itself *pseudonym*."""
    for entry in headers.get_list("via"):
        parts = entry.split()
        if len(parts) >= 2 and parts[1].lower() == pseudonym.lower():
            return True
    return False

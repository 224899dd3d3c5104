"""Request targets and the header rewriting a forward proxy owes the next hop.

Theory of operation
-------------------
A client talking to a proxy names the whole URL in the request line (RFC 9112 section 3.2.2,
*absolute-form*: ``GET http://example.com/a?b HTTP/1.1``), or, for ``CONNECT``, only
``host:port`` (*authority-form*, section 3.2.3). The origin expects *origin-form*
(``GET /a?b``) with the host in ``Host``. :func:`parse_target` splits the first two forms;
:class:`Target` rebuilds the third.

The host is checked here, once, and strictly, because every later layer trusts it: the
blocklist, the cache key, the resolver and the ``Host`` field sent on. It must be a DNS name
(labels of letters, digits, ``-`` and ``_``), a dotted-quad IPv4 address or a bracketed IPv6
literal; the port, if any, one to five digits after a single colon. Anything else is a
``400``: ``127.0.0.1:80:80``, a name ending in a numeric label that ``inet_aton`` would
read as an address (``2130706433``), a zone in an IPv6 literal.

Some fields describe one connection, not the message: ``Connection`` and every field it names,
``Keep-Alive``, ``Proxy-Connection``, ``Proxy-Authorization``, ``TE``, ``Trailer``, ``Upgrade``
(RFC 9110 section 7.6.1). A proxy must remove them before forwarding, or the client's private
connection settings leak to a server that never agreed to them. ``Via`` (section 7.6.3) is
added on the way through, so loops and intermediaries can be seen.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import NamedTuple

from .http11.errors import ProtocolError
from .http11.headers import Headers

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80}
# A host name as DNS can carry it: letters, digits, hyphens and underscores in dot-separated
# labels of 1 to 63 characters (RFC 1035 section 2.3.4, RFC 1123 section 2.1). Nothing else
# ever resolves, so anything else is refused here rather than half-understood further on.
_HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
# A last label that looks numeric makes the name an IPv4 address to inet_aton and to URL
# parsers (WHATWG URL "ends in a number"): 2130706433, 0x7f.1 and 0177.0.0.1 all mean
# 127.0.0.1 to getaddrinfo while a blocklist reads them as names. Only dotted-quad passes.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
MAX_HOST_NAME = 253

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


# A proxy sees the same few authorities over and over, and checking one (two patterns, and
# ipaddress for a literal) cost about 6 % of a keep-alive request's CPU. Only successes are
# remembered: a bad authority raises, and lru_cache does not store exceptions.
@functools.lru_cache(maxsize=1024)
def _split_host_port(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ProtocolError(f"bad IPv6 literal in {authority[:300]!r}")
        literal, rest = authority[1:end], authority[end + 1 :]
        try:
            # A zone (fe80::1%25eth0) names an interface of the client's host, not ours.
            host = str(ipaddress.IPv6Address(literal)) if "%" not in literal else ""
        except ValueError:
            host = ""
        if not host:
            raise ProtocolError(f"bad IPv6 literal in {authority[:300]!r}")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    else:
        host, sep, port_text = authority.partition(":")
        if not sep:
            port_text = ""
        elif not port_text:
            port_text = None  # "host:" with no port
        host = _host_name(host, authority)
    if port_text is None or (port_text and not (port_text.isascii() and port_text.isdigit())):
        raise ProtocolError(f"bad port in {authority[:300]!r}")
    if port_text:
        port = int(port_text) if len(port_text) <= 5 else 0
    elif default_port is not None:
        port = default_port
    else:
        raise ProtocolError(f"{authority[:300]!r} names no port")
    if not 0 < port < 65536:
        raise ProtocolError(f"bad port in {authority[:300]!r}")
    return host, port


def _host_name(text: str, authority: str) -> str:
    """*text* as a valid, lower-cased host name or dotted-quad IPv4 address; else 400."""
    host = text.lower()
    if host.endswith("."):
        host = host[:-1]  # the root label: "example.com." is "example.com"
    if len(host) > MAX_HOST_NAME or _HOST_NAME.fullmatch(host) is None:
        raise ProtocolError(f"bad host in {authority[:300]!r}")
    if _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ProtocolError(f"bad IPv4 address in {authority[:300]!r}") from None
    return host


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
    # The authority ends at the first "/", "?" or "#" (RFC 3986 section 3.2): in
    # "http://host?q=1" the query belongs to the path, which is "/?q=1", not "/".
    ends = [at for at in (rest.find("/"), rest.find("?"), rest.find("#")) if at >= 0]
    end = min(ends) if ends else len(rest)
    authority, path = rest[:end], rest[end:].split("#", 1)[0]
    if "@" in authority:
        raise ProtocolError("user information in the URL is not allowed")
    if not path.startswith("/"):
        path = "/" + path
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

"""Chaining to a parent proxy: where a request's first hop goes, and what it says there.

Theory of operation
-------------------
With ``--parent http://[user:password@]HOST:PORT`` the proxy does not reach origins itself: it
sends every request to another proxy, the way Squid's ``cache_peer ... parent`` with
``never_direct`` and tinyproxy's ``Upstream`` do. A request's *first hop* (:class:`Hop`) is then
the parent instead of the origin, and two things change on the wire:

* **Plain HTTP** is forwarded in absolute form (``GET http://origin/path HTTP/1.1``, RFC 9112
  section 3.2.2), since the parent needs the whole URL, with our own ``Proxy-Authorization``
  when the parent URL carries credentials. The client's own credentials for *us* are
  hop-by-hop and never travel on.
* **CONNECT** becomes two steps: connect to the parent, ask it ``CONNECT host:port`` and wait
  for its ``2xx``; only then is the client told ``200 Connection established``. What the parent
  answers otherwise (403, 407, 502...) becomes a 502 page that names the parent.

``--parent-bypass`` lists what still goes direct: domain names (a name matches itself and its
subdomains) and networks in CIDR notation (matching targets written as IP literals; a name is
never resolved just to decide, since the parent may be the only one that can resolve it). The
parent itself is the operator's choice, so ``--deny-private`` judges the targets the proxy
reaches directly, not the address of its parent.

The parent's password appears only in the ``Proxy-Authorization`` sent to the parent.
Wherever the URL is shown (errors at start, reload warnings in the journal, ``--print-config``)
it goes through :func:`redact_parent` first.

Everything here is pure: parsing the parent URL and the bypass list happens once at start-up,
and a hop is chosen per request from values.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from .target import Target

DEFAULT_PARENT_PORT = 3128
"""The port of a parent URL without one (Squid's)."""


class ParentProxy(NamedTuple):
    """Another proxy this one sends requests through."""

    host: str
    port: int
    authorization: str | None = None
    """The ``Proxy-Authorization`` value to send it (Basic, from the URL), or None."""

    @property
    def label(self) -> str:
        """How error pages and logs name it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"the parent proxy {host}:{self.port}"


REDACTED = "***"
"""What stands for the parent's password wherever its URL is shown."""


def redact_parent(url: str) -> str:
    """*url* with the password of its ``user:password@`` part replaced by :data:`REDACTED`.

    Error messages, the journal and ``--print-config`` show the parent's URL, and the password
    must reach none of them. The cut is made on the text, not on a parsed URL, so a URL too
    broken to parse (the one an error is about, say a password with a raw ``/``) is redacted
    too: everything between the first ``:`` after the scheme and the *last* ``@`` goes. That
    may hide more than the password of a URL that is wrong anyway, never less.
    """
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    userinfo, at, after = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url  # no password (a user alone is a name, not a secret)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:{REDACTED}@{after}"


def parse_parent(url: str) -> ParentProxy:
    """Read ``http://[user:password@]host[:port]``; raise ValueError naming what is wrong.

    The messages show the URL with its password redacted (:func:`redact_parent`).
    """
    shown = redact_parent(url)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme.lower() != "http":
        raise ValueError(f"a parent proxy is spoken to in plain HTTP: use http://, not {shown!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a parent proxy URL has no path or query: {shown!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in the parent proxy URL {shown!r}")
    try:
        port = parts.port or DEFAULT_PARENT_PORT
    except ValueError:
        raise ValueError(f"bad port in the parent proxy URL {shown!r}") from None
    authorization = None
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}"
    return ParentProxy(host.lower(), port, authorization)


class Bypass:
    """The targets that go direct although a parent is configured."""

    __slots__ = ("domains", "networks")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        domains: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.removeprefix("*.").removeprefix(".")
            if not name or any(not label for label in name.split(".")) or "/" in name:
                raise ValueError(f"not a domain or a CIDR network: {raw!r}")
            domains.add(name)
        self.domains = frozenset(domains)
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.domains or self.networks)

    def matches(self, host: str) -> bool:
        """Whether a request for *host* goes direct."""
        host = host.lower().rstrip(".").strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            labels = host.split(".")
            return any(".".join(labels[i:]) in self.domains for i in range(len(labels)))
        return any(address in network for network in self.networks)


class Hop(NamedTuple):
    """Where a request's connection goes first."""

    host: str
    port: int
    parent: ParentProxy | None = None
    """The parent proxy this hop is, or None when it is the origin itself."""


class Route:
    """Chooses each request's first hop: the origin, or the parent unless bypassed."""

    __slots__ = ("parent", "bypass")

    def __init__(self, parent: ParentProxy | None = None, bypass: Bypass | None = None) -> None:
        self.parent = parent
        self.bypass = bypass or Bypass()

    def hop_for(self, target: Target) -> Hop:
        """The first hop of a request for *target*."""
        parent = self.parent
        if parent is None or (self.bypass and self.bypass.matches(target.host)):
            return Hop(target.host, target.port)
        return Hop(parent.host, parent.port, parent)


def connect_head(authority: str, parent: ParentProxy, via: str) -> bytes:
    """The ``CONNECT`` request that asks *parent* for a tunnel to *authority*."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"Via: 1.1 {via}"]
    if parent.authorization is not None:
        lines.append(f"Proxy-Authorization: {parent.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

"""CHECKING_POLICY: the rules that decide whether a request may leave, and what it is told.

Theory of operation
-------------------
Before a byte goes to an origin the session asks :class:`PolicyStep`, in this order: is the
client authenticated (:meth:`~PolicyStep.authenticate`, 407)? Then :meth:`~PolicyStep.decide`:
has the request already passed through us (``Via``, 508)? Is it for the proxy itself (its own
pages)? Is the target well-formed (400)? Does CONNECT aim at an allowed port, and does the
blocklist name the host or path (403)? Should a ``TRACE`` or ``OPTIONS`` with
``Max-Forwards: 0`` be answered here? After resolving, the dialer asks one more question
(:func:`address_refusal`): does the name lead to an address that ``--deny-private`` forbids?

The answers are plain values, one class per outcome (:class:`Refusal`, :class:`OwnPage`,
:class:`LocalReply`, :class:`OpenTunnel`, :class:`Forward`), computed without I/O, so each rule
is tested without sockets and reads as the policy it is. The session turns each kind of answer
into one move of its state table. A rule costs only when it is configured: with no auth file
no credential is looked at, and an empty blocklist is not walked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Set
from typing import NamedTuple, Protocol

from minireactor.resolver import Address

from .auth import CHALLENGE, Authenticator
from .blocklist import Blocklist
from .config import Config
from .http11 import Headers, ProtocolError, Request, serialize_request_head
from .target import Target, has_via_loop, parse_target


class BlocklistHolder(Protocol):
    """Whoever holds the current blocklist (the server; it swaps it on every reload)."""

    @property
    def blocklist(self) -> Blocklist:
        """The blocklist in force now."""
        ...


class Refusal(NamedTuple):
    """A request the proxy will not forward: the status, why, and any header to add."""

    status: int
    detail: str
    extra: Headers | None = None
    result: str = "TCP_DENIED"


class OwnPage(NamedTuple):
    """A request addressed to the proxy itself (its dashboard, ``/stats.json``, the PAC file)."""

    request: Request


class LocalReply(NamedTuple):
    """A complete answer the proxy gives itself instead of forwarding."""

    status: int
    body: bytes
    content_type: str
    extra: Headers | None = None


class OpenTunnel(NamedTuple):
    """A CONNECT that may go to *target*."""

    target: Target


class Forward(NamedTuple):
    """A request that may go to *target*, as *request* (rewritten where a rule asks it)."""

    request: Request
    target: Target


Decision = Refusal | OwnPage | LocalReply | OpenTunnel | Forward
"""What :meth:`PolicyStep.decide` answers."""

ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT"
RESERVED_HOST = "proxy.local"
"""A host name that always means the proxy itself, wherever it listens."""


class PolicyStep:
    """The proxy's rules, applied to one request head at a time."""

    def __init__(
        self,
        config: Config,
        *,
        blocklist: BlocklistHolder,
        is_own_address: Callable[[str, int], bool],
        own_names: Callable[[], Set[str]] = frozenset,
        auth: Authenticator | None = None,
    ) -> None:
        self.config = config
        self.auth = auth
        # A holder, not a value: the watcher swaps the blocklist while requests come and go,
        # and each request is checked against the list current when its head arrived.
        self._blocklists = blocklist
        self._is_own_address = is_own_address
        self._own_names = own_names

    def authenticate(self, request: Request, client: str | None = None) -> str | Refusal | None:
        """The user *request* authenticates as, its 407, or None when no auth is configured.

        Authentication comes before every other rule: CONNECT and the proxy's own pages need
        it too. *client* (the client's IP) gives each client its own hashing budget, so a
        flood of wrong passwords slows only the client that sends it (:mod:`proxy.auth`).
        """
        if self.auth is None:
            return None
        if request.target.startswith("/"):
            # Sent to the proxy as to an origin (a browser on the dashboard, a Prometheus
            # scrape): those clients answer WWW-Authenticate with Authorization (RFC 9110
            # section 11.6), not Proxy-Authenticate.
            user = self.auth.user_for(request.headers, client, "authorization")
            if user is None:
                user = self.auth.user_for(request.headers, client)
            if user is not None:
                return user
            given = "authorization" in request.headers
            detail = "wrong credentials" if given else "the proxy's pages require authentication"
            return Refusal(401, detail, Headers([("WWW-Authenticate", CHALLENGE)]))
        user = self.auth.user_for(request.headers, client)
        if user is not None:
            return user
        given = "proxy-authorization" in request.headers
        detail = "wrong proxy credentials" if given else "this proxy requires authentication"
        return Refusal(407, detail, Headers([("Proxy-Authenticate", CHALLENGE)]))

    def decide(
        self, request: Request, local_host: Callable[[], str | None] | None = None
    ) -> Decision:
        """Apply the rules after authentication, in order; the first that speaks decides.

        *local_host* tells, when asked, the address the client reached us at (a name it may
        use for the proxy's own pages besides its configured ones).
        """
        if has_via_loop(request.headers, self.config.via_pseudonym):
            return Refusal(508, "forwarding loop: this request already passed through us")
        if request.target.startswith("/") or request.target == "*":
            return self._own_page(request, local_host)
        try:
            target = parse_target(request.method, request.target)
        except ProtocolError as exc:
            return Refusal(exc.status, exc.message, result="NONE")
        if target.host == RESERVED_HOST or self._is_own_address(target.host, target.port):
            return OwnPage(request)
        refusal = target_refusal(self.config, self._blocklists.blocklist, request, target)
        if refusal is not None:
            return refusal
        method = request.method
        if method == "CONNECT":
            return OpenTunnel(target)
        if method == "TRACE" or method == "OPTIONS":
            reply_or_request = max_forwards(request)
            if isinstance(reply_or_request, LocalReply):
                return reply_or_request
            request = reply_or_request
        return Forward(request, target)

    def _own_page(
        self, request: Request, local_host: Callable[[], str | None] | None
    ) -> OwnPage | Refusal:
        # An origin-form request is for the proxy itself, but only under one of its own names:
        # a page on evil.example whose name is re-bound to our address (DNS rebinding) sends
        # "Host: evil.example", and must not read the dashboard (RFC 9110 section 15.5.20).
        named = host_of_field(request.headers.get("host"))
        if named is None or named in self._own_names():
            return OwnPage(request)
        if local_host is not None and named == local_host():
            return OwnPage(request)
        return Refusal(
            421,
            f"this proxy shows its own pages under its own names only, not {named[:100]!r}",
        )


def host_of_field(value: str | None) -> str | None:
    """The host of a ``Host`` field value, lower case, without port, brackets or final dot."""
    if value is None:
        return None
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def target_refusal(
    config: Config, blocklist: Blocklist, request: Request, target: Target
) -> Refusal | None:
    """CONNECT port allow-list and the blocklist; None when the request may go on.

    A CONNECT carries no path (it is inside the encrypted tunnel), so only host rules apply.
    """
    if request.method == "CONNECT" and target.port not in config.connect_ports:
        allowed = ", ".join(str(p) for p in sorted(config.connect_ports))
        return Refusal(403, f"CONNECT to port {target.port} is not allowed (allowed: {allowed})")
    if not blocklist.rules:
        return None
    path = None if request.method == "CONNECT" else target.path
    try:
        match = blocklist.match(target.host, path, target.port, target.scheme)
    except ValueError as exc:
        return Refusal(400, f"invalid host {target.host!r}: {exc}", result="NONE")
    if match is not None:
        rule = match.rule
        return Refusal(403, f"blocked by rule '{rule.text}' (line {rule.line} of the blocklist)")
    return None


def address_refusal(config: Config, addresses: list[Address]) -> str | None:
    """With ``deny_private``, refuse targets with any resolved address not globally routable."""
    if not config.deny_private:
        return None
    for _family, sockaddr in addresses:
        ip = ipaddress.ip_address(sockaddr[0])
        if not is_globally_routable(ip):
            inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
            leads = f" (which leads to {inner})" if inner is not None else ""
            return (
                f"the target resolves to {ip}{leads}, an internal address"
                " (not globally routable) this proxy refuses"
            )
    return None


# The IPv6 prefixes that carry an IPv4 address in their last 32 bits and deliver to it.
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056: the IPv4 address is bits 16-47
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
# Where `is_global` is too generous, whatever the Python version (it follows the IANA
# registries as they were when the interpreter was released, and ignores multicast):
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")  # RFC 4291: all else is special
_IPV6_NOT_GLOBAL = (
    ipaddress.IPv6Network("3fff::/20"),  # documentation (RFC 9637, 2024)
    ipaddress.IPv6Network("2001:db8::/32"),  # documentation (RFC 3849)
)
_IPV4_NOT_GLOBAL = (
    ipaddress.IPv4Network("192.0.0.0/24"),  # IETF protocol assignments (RFC 6890), e.g. DS-Lite
    ipaddress.IPv4Network("100.64.0.0/10"),  # shared address space, cloud metadata (RFC 6598)
)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 (``64:ff9b::/96``) address leads to."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_globally_routable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether *ip* is a unicast address reachable on the public internet.

    ``ipaddress``'s ``is_global`` is the base, corrected where it errs: it says
    yes to multicast, to 6to4 and NAT64 addresses of loopback or private hosts, to the
    deprecated IPv4-compatible ``::a.b.c.d`` and site-local ``fec0::/10`` forms, to the
    local-use NAT64 prefix ``64:ff9b:1::/48`` and to documentation prefixes younger than the
    interpreter. So an IPv6 address must also lie in global unicast space (``2000::/3``),
    and an address that embeds an IPv4 address is judged by that address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_globally_routable(inner)
        if ip.scope_id is not None or ip not in _IPV6_GLOBAL_UNICAST:
            return False
        if any(ip in net for net in _IPV6_NOT_GLOBAL):
            return False
    elif any(ip in net for net in _IPV4_NOT_GLOBAL):
        return False
    return ip.is_global and not ip.is_multicast


def max_forwards(request: Request) -> Request | LocalReply:
    """RFC 9110 section 7.6.2: answer TRACE/OPTIONS at ``Max-Forwards: 0``, else decrement.

    Returns the reply to send here, or the request to forward (a copy with the field
    decremented, when it had one; events are never changed in place).
    """
    if request.method not in ("TRACE", "OPTIONS"):
        return request
    value = request.headers.get("max-forwards", "")
    if not (value is not None and value.isascii() and value.isdigit()):
        return request  # absent or malformed: forward as is
    # More hops than any path has: forward it as the largest count we keep (int() would
    # raise past 4,300 digits).
    hops = int(value) if len(value) <= 18 else 10**18
    if hops > 0:
        headers = Headers(request.headers)
        headers.set("Max-Forwards", str(hops - 1))
        return Request(
            request.method,
            request.target,
            request.version,
            headers,
            request.framing,
            request.connection,
        )
    if request.method == "OPTIONS":
        return LocalReply(200, b"", "text/plain", Headers([("Allow", ALLOWED_METHODS)]))
    # TRACE echoes the head it received, minus credentials (RFC 9110 section 9.3.8).
    echoed = Headers(
        (name, value)
        for name, value in request.headers
        if name.lower() not in ("proxy-authorization", "authorization", "cookie")
    )
    head = serialize_request_head(request.method, request.target, echoed, request.version)
    return LocalReply(200, head, "message/http")

"""CHECKING_POLICY: the rules that decide whether a request may leave, and what it is told.

Theory of operation
-------------------
Before a byte goes to an origin the session asks, in this order (see
:meth:`proxy.session.ClientSession.check_policy`): is the client authenticated
(:mod:`proxy.auth`, 407)? Has the request already passed through us (``Via``, 508)? Is it for
the proxy itself (its status pages)? Is the target well-formed? Does CONNECT aim at an allowed
port, and does the blocklist name the host or path (403)? Should a ``TRACE`` or ``OPTIONS`` with
``Max-Forwards: 0`` be answered here? After resolving, one more question: does the name lead
to an internal address that ``--deny-private`` forbids?

The answers are plain values (:class:`Refusal`, :class:`LocalReply`), computed by functions
that do no I/O, so each rule is tested without sockets and reads as the policy it is.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, NamedTuple

from minireactor.resolver import Address

from .config import Config
from .http11 import Headers, Request, serialize_request_head
from .target import Target

if TYPE_CHECKING:
    from .blocklist import Blocklist


class Refusal(NamedTuple):
    """A request the proxy will not forward: the status, why, and any header to add."""

    status: int
    detail: str
    extra: Headers | None = None


class LocalReply(NamedTuple):
    """A complete answer the proxy gives itself instead of forwarding."""

    status: int
    body: bytes
    content_type: str
    extra: Headers | None = None


ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT"


def target_refusal(
    config: Config, blocklist: Blocklist, request: Request, target: Target
) -> Refusal | None:
    """CONNECT port allow-list and the blocklist; None when the request may go on.

    A CONNECT carries no path (it is inside the encrypted tunnel), so only host rules apply.
    """
    if request.method == "CONNECT" and target.port not in config.connect_ports:
        allowed = ", ".join(str(p) for p in sorted(config.connect_ports))
        return Refusal(403, f"CONNECT to port {target.port} is not allowed (allowed: {allowed})")
    path = None if request.method == "CONNECT" else target.path
    try:
        match = blocklist.match(target.host, path, target.port, target.scheme)
    except ValueError as exc:
        return Refusal(400, f"invalid host {target.host!r}: {exc}")
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


def max_forwards_reply(request: Request) -> LocalReply | None:
    """RFC 9110 section 7.6.2: answer TRACE/OPTIONS at ``Max-Forwards: 0``, else decrement.

    Returns the reply to send, or None to forward (with the field decremented in place).
    """
    if request.method not in ("TRACE", "OPTIONS"):
        return None
    value = request.headers.get("max-forwards") or ""
    if not (value.isascii() and value.isdigit()):
        return None  # absent or malformed: forward as is
    hops = int(value)
    if hops > 0:
        request.headers.set("Max-Forwards", str(hops - 1))
        return None
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

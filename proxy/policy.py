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
    """With ``deny_private``, refuse targets that resolve to internal addresses."""
    if not config.deny_private:
        return None
    for _family, sockaddr in addresses:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            return f"the target resolves to {ip}, an internal address this proxy refuses"
    return None


def max_forwards_reply(request: Request) -> LocalReply | None:
    """RFC 9110 section 7.6.2: answer TRACE/OPTIONS at ``Max-Forwards: 0``, else decrement.

    Returns the reply to send, or None to forward (with the field decremented in place).
    """
    if request.method not in ("TRACE", "OPTIONS"):
        return None
    value = request.headers.get("max-forwards", "")
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

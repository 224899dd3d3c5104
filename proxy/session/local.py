"""The proxy's own pages: the live dashboard, ``/stats.json``, ``/metrics`` and ``/proxy.pac``.

Theory of operation
-------------------
A request whose target is origin-form (``GET / HTTP/1.1`` sent straight to the proxy's port) or
names the reserved host ``proxy.local`` (or the proxy's own address) is for the proxy itself,
not for an origin (:class:`~proxy.policy.OwnPage`). Such requests are answered here from
counters the reactor already keeps, so watching the proxy costs the hot path nothing extra.

:meth:`LocalPages.reply_for` is a plain function of the request and a snapshot of the
counters: it returns the reply (:class:`~proxy.policy.LocalReply`) or the refusal
(:class:`~proxy.policy.Refusal`) and the session writes it. Everything is read-only; only
clients allowed to use the proxy can reach it, since they pass the same admission checks as
any other request. The page itself is :mod:`proxy.dashboard`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Set
from typing import Any
from urllib.parse import urlsplit

from ..dashboard import DASHBOARD
from ..http11 import Request
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..policy import LocalReply, Refusal

_HOST_CHARS = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,255}")


def pac_file(host: str, port: int) -> str:
    """A proxy auto-config script sending every request through this proxy."""
    return f'function FindProxyForURL(url, host) {{\n  return "PROXY {host}:{port}";\n}}\n'


class LocalPages:
    """Answers the requests addressed to the proxy itself."""

    def __init__(
        self,
        snapshot: Callable[[str | None], dict[str, Any]],
        own_addresses: Callable[[], Set[tuple[str, int]]],
        *,
        private: bool = False,
        admins: Set[str] = frozenset(),
        metrics: Callable[[], str] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._own_addresses = own_addresses
        self._private = private
        self._admins = admins
        self._metrics = metrics

    def reply_for(self, request: Request, user: str | None = None) -> LocalReply | Refusal:
        """The page *request* (from the authenticated *user*, if any) asks for, or why not.

        With authentication on (*private*), a user sees only their own recent requests,
        unless they are one of the *admins*.
        """
        target = request.target
        path = target if target.startswith("/") else (urlsplit(target).path or "/")
        if request.method not in ("GET", "HEAD"):
            return Refusal(405, "the proxy's own pages are read-only", result="TCP_LOCAL")
        if path == "/stats.json":
            viewer = user if self._private and user not in self._admins else None
            body = json.dumps(self._snapshot(viewer), indent=1).encode()
            return LocalReply(200, body, "application/json")
        if path == "/proxy.pac":
            host, port = next(iter(sorted(self._own_addresses())))
            if host in ("0.0.0.0", "::"):
                host = (request.headers.get("host") or "127.0.0.1").rsplit(":", 1)[0]
                if not _HOST_CHARS.fullmatch(host):
                    host = "127.0.0.1"  # the Host field lands inside JavaScript: names only
            return LocalReply(
                200, pac_file(host, port).encode(), "application/x-ns-proxy-autoconfig"
            )
        if path == "/metrics" and self._metrics is not None:
            return LocalReply(200, self._metrics().encode(), METRICS_CONTENT_TYPE)
        if path in ("/", "/index.html"):
            return LocalReply(200, DASHBOARD.encode(), "text/html; charset=utf-8")
        return Refusal(404, f"the proxy has no page {path[:100]!r}", result="TCP_LOCAL")

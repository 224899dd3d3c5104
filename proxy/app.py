"""Wiring: one reactor, one listening socket, and everything a session needs to reach.

Theory of operation
-------------------
:class:`ProxyServer` builds the pieces and hands each :class:`~proxy.session.ClientSession` a
:class:`ProxyContext`, the narrow view of shared state a session may use: the reactor, the
settings, the resolver, the origin-connection pool, the cache step, the live counters and the
current blocklist. All of it belongs to the reactor thread.

Two other threads exist and neither touches that state: the resolver's pool (its answers come
back through ``call_soon_threadsafe``) and the blocklist watcher, whose new list arrives the same
way and replaces the old one in a single assignment on the loop (DESIGN rule 4). A request in
flight keeps the list it was checked against; the next request sees the new one.

Shutdown (Ctrl-C or SIGTERM) stops accepting, closes idle connections at once, lets exchanges in
flight finish for ``shutdown_grace`` seconds, then aborts what is left and stops the loop. A
second signal during the grace period aborts at once, as a user pressing Ctrl-C again expects.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from typing import Any

from minireactor import Reactor, Resolver, Server, Transport, listen, splice
from minireactor.resolver import ResolverLike

from .auth import Authenticator
from .auth import load as load_auth_file
from .blocklist import EMPTY, Blocklist, parse
from .blocklist.watch import BlocklistWatcher, ReloadReport
from .cachestep import CacheStep
from .config import Config
from .http11 import Limits, Request
from .replies import error_page, simple_response
from .session import ClientSession
from .stats import Stats
from .status import serve_status
from .tunnel import IdleSweep
from .upstream import UpstreamPool

log = logging.getLogger("proxy")


class ProxyContext:
    """Shared state a session may use; owned by the reactor thread."""

    def __init__(self, reactor: Reactor, config: Config, resolver: ResolverLike) -> None:
        self.reactor = reactor
        self.config = config
        self.resolver = resolver
        self.limits = Limits(
            max_request_line=config.max_request_line,
            max_header_bytes=config.max_header_bytes,
            max_header_fields=config.max_header_fields,
        )
        self.pool = UpstreamPool(
            reactor, config.upstream_idle_timeout, config.max_idle_upstreams_per_host
        )
        self.stats = Stats()
        self.tunnel_sweep = IdleSweep(reactor, config.idle_timeout)
        # One small pool of pipes for every tunnel of this process (None: recv/send only).
        self.pipes: splice.PipePool | None = (
            splice.PipePool() if config.splice and splice.AVAILABLE else None
        )
        self.blocklist: Blocklist = EMPTY
        self.cache_step: Any = None
        self.shutting_down = False
        self.sessions: set[ClientSession] = set()
        self.own_addresses: set[tuple[str, int]] = set()
        self.on_session_closed: Any = None
        # Read once at start-up (a blocking read is fine before the loop runs).
        self.auth: Authenticator | None = (
            load_auth_file(config.auth_file) if config.auth_file else None
        )

    # -- policy ----------------------------------------------------------------------------------

    def is_own_address(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is where this proxy listens (a request to itself)."""
        if (host, port) in self.own_addresses:
            return True
        return host == "localhost" and any(own == port for _, own in self.own_addresses)

    # -- local pages -----------------------------------------------------------------------------

    def serve_local(self, session: ClientSession, request: Request) -> None:
        """Answer a request addressed to the proxy itself."""
        serve_status(self, session, request)

    # -- lifecycle -------------------------------------------------------------------------------

    def session_closed(self, session: ClientSession) -> None:
        """A client connection ended."""
        self.sessions.discard(session)
        if self.on_session_closed is not None:
            self.on_session_closed()

    def set_blocklist(self, blocklist: Blocklist, report: ReloadReport | None = None) -> None:
        """Swap in a new blocklist (one assignment, on the loop thread)."""
        self.blocklist = blocklist
        self.stats.blocklist_rules = len(blocklist)
        if report is not None:
            self.stats.blocklist_reload = {
                "at": report.at,
                "ok": report.ok,
                "rules": report.rules,
                "added": report.added,
                "removed": report.removed,
                "message": report.message,
            }


class ProxyServer:
    """A complete proxy instance: reactor, listener, sessions, blocklist watcher."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        reactor: Reactor | None = None,
        resolver: ResolverLike | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.config = config or Config()
        self._own_reactor = reactor is None
        self.reactor = reactor or Reactor()
        self._own_resolver = resolver is None
        self.resolver = resolver or Resolver(self.reactor)
        self.ctx = ProxyContext(self.reactor, self.config, self.resolver)
        self.ctx.on_session_closed = self._session_closed
        self._sock = sock
        self.server: Server | None = None
        self.watcher: BlocklistWatcher | None = None
        self._thread: threading.Thread | None = None
        self._grace_timer: Any = None
        self.stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """Where the proxy listens."""
        assert self.server is not None
        return self.server.address

    def start(self) -> ProxyServer:
        """Bind, load the blocklist and start watching it; the loop is not run yet."""
        config = self.config
        if config.cache_enabled:
            self.ctx.cache_step = CacheStep(self.ctx)
        if config.trace:
            trace_log = logging.getLogger("minireactor.trace")
            self.reactor.set_trace(lambda event, info: trace_log.debug("%s %s", event, info))
        if self._sock is not None:
            self.server = Server(self.reactor, self._sock, self._accept)
        else:
            self.server = listen(
                self.reactor,
                config.host,
                config.port,
                self._accept,
                reuse_port=config.workers > 1,
            )
        host, port = self.server.address
        self.ctx.own_addresses.add((host, port))
        if host in ("0.0.0.0", "::"):
            self.ctx.own_addresses.update({("127.0.0.1", port), ("::1", port)})
        if config.watch_blacklist:
            self.watcher = BlocklistWatcher(config.blacklist, self._blocklist_from_thread)
            initial = self.watcher.start()
            self.ctx.set_blocklist(initial, self.watcher.last_report)
        else:
            try:
                with open(config.blacklist, encoding="utf-8") as handle:
                    self.ctx.set_blocklist(parse(handle.read()))
            except OSError:
                self.ctx.set_blocklist(EMPTY)
        return self

    def _blocklist_from_thread(self, blocklist: Blocklist, report: ReloadReport) -> None:
        # Runs on the watcher thread: hand over, touch nothing.
        self.reactor.call_soon_threadsafe(self.ctx.set_blocklist, blocklist, report)

    def reload_blocklist(self) -> None:
        """Ask the watcher to re-read the blocklist now (SIGHUP); safe from any thread."""
        if self.watcher is not None:
            self.watcher.reload_now()

    def _accept(self, sock: socket.socket, addr: Any) -> None:
        ctx = self.ctx
        if ctx.shutting_down:
            sock.close()
            return
        if not self._client_allowed(addr[0]):
            body = error_page(403, "your address is not allowed to use this proxy")
            try:
                sock.send(simple_response(403, body, close=True))
            except OSError:
                pass
            sock.close()
            return
        session = ClientSession(ctx)
        ctx.sessions.add(session)
        Transport(self.reactor, sock, session)
        if len(ctx.sessions) >= self.config.max_conns and self.server is not None:
            self.server.pause()

    def _client_allowed(self, ip: str) -> bool:
        if not self.config.allow:
            return True
        address = ipaddress.ip_address(ip.split("%", 1)[0])
        return any(address in ipaddress.ip_network(net, strict=False) for net in self.config.allow)

    def _session_closed(self) -> None:
        server = self.server
        below_cap = len(self.ctx.sessions) < self.config.max_conns
        if server is not None and server.paused and below_cap and not self.ctx.shutting_down:
            server.resume()
        if self.ctx.shutting_down and not self.ctx.sessions:
            self._finish_shutdown()

    # -- running ---------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM shut down gracefully, SIGHUP reloads the blocklist (main thread).

        Install them before announcing the address: a signal sent by someone who read the
        announcement must not meet the default action (which kills the process). The reactor
        runs them as loop callbacks, woken even when the signal lands on the watcher's thread.
        """
        for name, action in (
            ("SIGINT", self._stop_signalled),
            ("SIGTERM", self._stop_signalled),
            ("SIGHUP", self.reload_blocklist),
        ):
            if hasattr(signal, name):
                self.reactor.add_signal_handler(getattr(signal, name), action)

    def _stop_signalled(self) -> None:
        if not self.ctx.shutting_down:
            self.shutdown()
            return
        log.warning(
            "stop signal again: aborting %d connection(s) without waiting", len(self.ctx.sessions)
        )
        self._finish_shutdown()

    def run(self) -> None:
        """Install the signal handlers and run the loop in this thread until shut down."""
        self.install_signal_handlers()
        self._run_loop()

    def _run_loop(self) -> None:
        try:
            self.reactor.run_forever()
        finally:
            self._release()
            self.stopped.set()

    def start_in_thread(self) -> ProxyServer:
        """Start, then run the loop on a daemon thread (tests and notebooks)."""
        if self.server is None:
            self.start()
        self._thread = threading.Thread(target=self._run_loop, name="proxy-reactor", daemon=True)
        self._thread.start()
        return self

    def stop_from_thread(self, timeout: float = 10.0) -> None:
        """Shut down from another thread and wait for the loop to end."""
        self.reactor.call_soon_threadsafe(self.shutdown, 0.0)
        self.stopped.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let exchanges in flight finish for *grace* seconds, then stop."""
        ctx = self.ctx
        if ctx.shutting_down:
            return
        ctx.shutting_down = True
        grace = self.config.shutdown_grace if grace is None else grace
        log.info("shutting down: %d connection(s) open", len(ctx.sessions))
        if self.server is not None:
            self.server.close()
        for session in list(ctx.sessions):
            session.shutdown()
        if not ctx.sessions:
            self._finish_shutdown()
        else:
            self._grace_timer = self.reactor.call_later(grace, self._finish_shutdown)

    def _finish_shutdown(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        for session in list(self.ctx.sessions):
            session.abort()
        self.ctx.pool.close_all()
        self.reactor.call_soon(self.reactor.stop)

    def _release(self) -> None:
        if self.ctx.pipes is not None:
            self.ctx.pipes.close()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.server is not None:
            self.server.close()
        if self._own_resolver and isinstance(self.resolver, Resolver):
            self.resolver.close()
        if self._own_reactor:
            self.reactor.close()

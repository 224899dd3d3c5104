"""Wiring: one reactor, one listening socket, and the steps every session is built from.

Theory of operation
-------------------
:class:`ProxyServer` builds, once, what all its sessions share: the policy, the cache step, the
proxy's own pages, the pool of idle origin connections, the tunnels' idle sweep and pipe pool,
the live counters, and the network the sessions reach origins through. They go to each
:class:`~proxy.session.client.ClientSession` in one frozen
:class:`~proxy.session.client.SessionContext`, and the server itself is the session's
:class:`~proxy.session.context.SessionHost`. All of it belongs to the reactor thread.

Two other threads exist and neither touches that state: the resolver's pool (its answers come
back through ``call_soon_threadsafe``) and the blocklist watcher, whose new list arrives the same
way and replaces the old one in a single assignment on the loop (DESIGN rule 4). A request in
flight keeps the list it was checked against; the next request sees the new one.

Shutdown (Ctrl-C or SIGTERM) stops accepting, closes idle connections at once, lets exchanges in
flight finish for ``shutdown_grace`` seconds, then aborts what is left and stops the loop. A
second signal during the grace period aborts at once, as a user pressing Ctrl-C again expects.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from minireactor import Reactor, Resolver, Server, TimerHandle, Transport, listen, splice
from minireactor.resolver import ResolverLike

from .accesslog import FORMATS, AccessLog, Sink, open_access_log
from .auth import Authenticator, AuthFileError
from .auth import load as load_auth_file
from .blocklist import EMPTY, Blocklist, parse
from .blocklist.watch import BlocklistWatcher, ReloadReport
from .cache.disk import DiskStore
from .config import Config
from .configfile import ConfigReloader, ConfigSource, Reload
from .diskcache import DiskCache
from .http11 import Limits
from .metrics import MetricsSnapshot
from .metrics import render as render_metrics
from .network import ReactorNetwork
from .parent import Bypass, Route, parse_parent
from .policy import RESERVED_HOST, PolicyStep
from .replies import error_page, simple_response
from .session.cachestep import CacheStep
from .session.client import ClientSession, SessionContext, TunnelKit
from .session.local import LocalPages
from .sharedmetrics import LocalMetrics, MetricsPublisher, MetricsSource, SharedMetrics
from .stats import Stats
from .tunnel import IdleSweep
from .upstream import UpstreamPool

log = logging.getLogger("proxy")


def _networks(allow: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``--allow``'s networks, parsed (the flag's converter has checked each already)."""
    return tuple(ipaddress.ip_network(net, strict=False) for net in allow)


class ListenError(OSError):
    """The listening socket could not be made (port in use, address not here, no permission).

    An :class:`OSError` with the same ``errno`` and ``strerror``, told apart from the other
    failures of :meth:`ProxyServer.start` (the access log, the blocklist's folder) so that only
    this one is reported as "cannot listen".
    """


class ProxyServer:
    """A complete proxy instance: reactor, listener, sessions, blocklist watcher."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        reactor: Reactor | None = None,
        resolver: ResolverLike | None = None,
        sock: socket.socket | None = None,
        config_source: ConfigSource | None = None,
        shared_metrics: SharedMetrics | None = None,
        worker: int | None = None,
        access_sink: Sink | None = None,
    ) -> None:
        self.config = config = config or Config()
        self._own_reactor = reactor is None
        self.reactor = reactor = reactor or Reactor()
        self._own_resolver = resolver is None
        self.resolver = resolver or Resolver(reactor)
        self._sock = sock
        self.server: Server | None = None
        self.watcher: BlocklistWatcher | None = None
        self._thread: threading.Thread | None = None
        self._grace_timer: TimerHandle | None = None
        self.shutting_down = False
        """Whether the proxy is stopping (sessions read it: a plain attribute, no call)."""
        self.stopped = threading.Event()
        self.sessions: set[ClientSession] = set()
        self.own_addresses: set[tuple[str, int]] = set()
        # Names the proxy's own pages answer to; the listening address joins them at start.
        self.own_names: set[str] = {"localhost", RESERVED_HOST, "127.0.0.1", "::1"}
        self.own_names.add(socket.gethostname().lower())  # the machine's name, no DNS asked
        self.blocklist: Blocklist = EMPTY
        self.stats = Stats()
        self._allowed = _networks(config.allow)  # parsed once per configuration
        self.pool = UpstreamPool(
            reactor, config.upstream_idle_timeout, config.max_idle_upstreams_per_host
        )
        # One small pool of pipes for every tunnel of this process (None: recv/send only).
        self.pipes: splice.PipePool | None = (
            splice.PipePool() if config.splice and splice.AVAILABLE else None
        )
        # Read at start-up (a blocking read is fine before the loop runs); SIGHUP re-reads it
        # on a helper thread.
        self.auth: Authenticator | None = (
            load_auth_file(config.auth_file) if config.auth_file else None
        )
        self._auth_generation = 0
        """Counts the auth-file reads started; a read's result applies only if it is the last."""
        # The disk tier's thread opens its folder (a read the loop must not do).
        self.disk: DiskCache | None = None
        if config.cache_enabled and config.cache_dir:
            folder, size = config.cache_dir, config.cache_dir_size
            self.disk = DiskCache(reactor, lambda: DiskStore(folder, size))
        self.cache_step = (
            CacheStep(reactor, config, disk=self.disk) if config.cache_enabled else None
        )
        self.network = ReactorNetwork(reactor, self.resolver)
        self.tunnel_kit = TunnelKit(IdleSweep(reactor, config.idle_timeout), self.pipes)
        self.context = self._build_context(config)
        # Operating: the access log (opened at start), config reloads, metrics.
        self._access_sink = access_sink
        self.access_log: AccessLog | None = None
        # Lines of the access logs a reload replaced, so the counters never go backwards.
        self._old_access_log_lines = (0, 0)
        self._config_source = config_source
        self._reloader: ConfigReloader | None = None
        self._shared_metrics = shared_metrics
        self._worker = worker
        self._publisher: MetricsPublisher | None = None
        self.metrics: MetricsSource = LocalMetrics(self.metrics_snapshot)

    def _build_context(self, config: Config) -> SessionContext:
        """What sessions share, from *config*: at start, and again after a config reload."""
        return SessionContext(
            scheduler=self.reactor,
            config=config,
            limits=Limits(
                max_request_line=config.max_request_line,
                max_header_bytes=config.max_header_bytes,
                max_header_fields=config.max_header_fields,
            ),
            network=self.network,
            host=self,
            policy=PolicyStep(
                config,
                blocklist=self,
                is_own_address=self.is_own_address,
                own_names=lambda: self.own_names,
                auth=self.auth,
            ),
            pool=self.pool,
            stats=self.stats,
            tunnels=self.tunnel_kit,
            local=LocalPages(
                self.stats_document,
                lambda: self.own_addresses,
                private=self.auth is not None,
                admins=frozenset(config.admin_users),
                metrics=self.metrics_text,
            ),
            cache=self.cache_step,
            route=Route(
                parse_parent(config.parent) if config.parent else None,
                Bypass(config.parent_bypass),
            ),
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where the proxy listens."""
        assert self.server is not None
        return self.server.address

    # -- what sessions ask of the server (SessionHost) -------------------------------------------

    def session_closed(self, session: object) -> None:
        """A client connection ended: admit a waiting client, or finish stopping."""
        if isinstance(session, ClientSession):
            self.sessions.discard(session)
        server = self.server
        below_cap = len(self.sessions) < self.config.max_conns
        if server is not None and server.paused and below_cap and not self.shutting_down:
            server.resume()
        if self.shutting_down and not self.sessions:
            self._finish_shutdown()

    def is_own_address(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is where this proxy listens (a request to itself)."""
        if (host, port) in self.own_addresses:
            return True
        return host == "localhost" and any(own == port for _, own in self.own_addresses)

    def stats_document(self, viewer: str | None = None) -> dict[str, Any]:
        """Every number the dashboard shows, as JSON-ready data (``/stats.json``).

        With a *viewer*, the recent requests are that user's only.
        """
        doc = self.stats.snapshot(viewer)
        doc["cache"] = (
            self.cache_step.snapshot() if self.cache_step is not None else {"enabled": False}
        )
        doc["upstream_pool"] = {"idle": len(self.pool), "reuses": self.pool.reuses}
        return doc

    def metrics_snapshot(self) -> MetricsSnapshot:
        """This process's numbers for ``/metrics``: the counters plus the cache step's and the
        access log's."""
        snapshot = self.stats.metrics()
        written, dropped = self._old_access_log_lines
        if self.access_log is not None:
            written += self.access_log.written
            dropped += self.access_log.dropped
        snapshot = dataclasses.replace(
            snapshot, access_log_written=written, access_log_dropped=dropped
        )
        step = self.cache_step
        if step is None:
            return snapshot
        return dataclasses.replace(
            snapshot,
            cache_hits=step.hits,
            cache_misses=step.misses,
            cache_stale=step.revalidations,
        )

    def metrics_text(self) -> str:
        """``/metrics`` in the Prometheus text format, summed over workers with ``--workers``."""
        return render_metrics(self.metrics.current())

    # -- starting ------------------------------------------------------------------------------

    def start(self) -> ProxyServer:
        """Open the access log, bind, load the blocklist and start watching it.

        The loop is not run yet.

        :raises ListenError: the port cannot be bound.
        :raises OSError: the access log cannot be opened, or the blocklist's folder watched.
        """
        config = self.config
        self._open_access_log(config)
        if self._shared_metrics is not None and self._worker is not None:
            self._publisher = MetricsPublisher(
                self._shared_metrics, self._worker, self.metrics_snapshot, self.reactor
            )
            self._publisher.start()
            self.metrics = self._publisher
        if config.trace:
            self._set_trace(True)
        if self._sock is not None:
            self.server = Server(self.reactor, self._sock, self._accept)
        else:
            try:
                self.server = listen(
                    self.reactor,
                    config.host,
                    config.port,
                    self._accept,
                    reuse_port=config.workers > 1,
                )
            except OSError as exc:
                raise ListenError(exc.errno, exc.strerror) from exc
        host, port = self.server.address
        self.own_addresses.add((host, port))
        if host not in ("0.0.0.0", "::"):
            self.own_names.add(host.lower())
        if host in ("0.0.0.0", "::"):
            self.own_addresses.update({("127.0.0.1", port), ("::1", port)})
        if config.watch_blacklist:
            self.watcher = BlocklistWatcher(config.blacklist, self._blocklist_from_thread)
            initial = self.watcher.start()
            # Shown on the dashboard, but not counted: loading at start is not a reload, and a
            # fresh proxy with no blocklist file must not report a failed one.
            self.set_blocklist(initial, self.watcher.last_report, counted=False)
        else:
            try:
                with open(config.blacklist, encoding="utf-8") as handle:
                    self.set_blocklist(parse(handle.read()))
            except OSError:
                self.set_blocklist(EMPTY)
        return self

    def set_blocklist(
        self, blocklist: Blocklist, report: ReloadReport | None = None, *, counted: bool = True
    ) -> None:
        """Swap in a new blocklist (one assignment, on the loop thread).

        A *report* is shown on the status page, and counted as a reload unless not *counted*.
        """
        self.blocklist = blocklist
        self.stats.blocklist_rules = len(blocklist)
        if report is not None and counted:
            if report.ok:
                self.stats.blocklist_reloads += 1
            else:
                self.stats.blocklist_reload_failures += 1
        if report is not None:
            self.stats.blocklist_reload = {
                "at": report.at,
                "ok": report.ok,
                "rules": report.rules,
                "added": report.added,
                "removed": report.removed,
                "message": report.message,
                "reason": report.reason,
                "rejected": report.rejected,
            }

    def _blocklist_from_thread(self, blocklist: Blocklist, report: ReloadReport) -> None:
        # Runs on the watcher thread: hand over, touch nothing.
        self.reactor.call_soon_threadsafe(self.set_blocklist, blocklist, report)

    def reload_blocklist(self) -> None:
        """Ask the watcher to re-read the blocklist now (SIGHUP); safe from any thread."""
        if self.watcher is not None:
            self.watcher.reload_now()

    def _accept(self, sock: socket.socket, addr: Any) -> None:
        if self.shutting_down:
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
        session = ClientSession(self.context)
        self.sessions.add(session)
        Transport(self.reactor, sock, session)
        if len(self.sessions) >= self.config.max_conns and self.server is not None:
            self.server.pause()

    def _client_allowed(self, ip: str) -> bool:
        if not self._allowed:
            return True
        address = ipaddress.ip_address(ip.split("%", 1)[0])
        return any(address in network for network in self._allowed)

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
            ("SIGHUP", self.reload),
            ("SIGUSR1", self.reopen_access_log),
        ):
            if hasattr(signal, name):
                self.reactor.add_signal_handler(getattr(signal, name), action)

    # -- operating: reloads and the access log -------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the blocklist, the config file (if any) and the auth file."""
        self.reload_blocklist()
        if self._config_source is not None:
            if self._reloader is None:
                self._reloader = ConfigReloader(
                    self._config_source, self.reactor, lambda: self.config, self.apply_reload
                )
            self._reloader.request()
        elif self.config.auth_file:
            self._reload_auth(self.config)

    def apply_reload(self, result: Reload) -> None:
        """Run with what a config reload read: new sessions, and every request from now on."""
        level = logging.WARNING if result.error else logging.INFO
        log.log(level, "%s", result.summary())
        if result.error:
            return
        old, self.config = self.config, result.config
        self._allowed = _networks(result.config.allow)
        logging.getLogger().setLevel("DEBUG" if result.config.trace else result.config.log_level)
        if old.trace != result.config.trace:
            self._set_trace(result.config.trace)
        self._retime(result.config)
        if (old.access_log, old.access_log_format) != (
            result.config.access_log,
            result.config.access_log_format,
        ):
            previous = self.access_log
            try:
                self._open_access_log(result.config)
            except (OSError, KeyError) as exc:
                log.warning(
                    "access log: cannot open %r (%s); keeping the old one",
                    result.config.access_log,
                    exc,
                )
                self.access_log = previous
                self.stats.access_log = previous
            else:
                if previous is not None:
                    previous.close()
                    written, dropped = self._old_access_log_lines
                    self._old_access_log_lines = (
                        written + previous.written,
                        dropped + previous.dropped,
                    )
        if result.config.auth_file:
            self._reload_auth(result.config)
        else:
            self._auth_generation += 1  # a read still in flight must not turn auth back on
            self.auth = None
            self._use_context()

    def _retime(self, config: Config) -> None:
        # The timers that are not armed from the session context: the tunnels' one sweep, the
        # idle upstream pool and the cache's collapsed-request wait read these at each arming.
        self.tunnel_kit.sweep.retime(config.idle_timeout)
        self.pool.idle_timeout = config.upstream_idle_timeout
        if self.cache_step is not None:
            self.cache_step.collapse_wait = config.collapse_wait

    def _set_trace(self, on: bool) -> None:
        # Off means no hook at all: a hook whose events the logger drops still costs a trace
        # event built per callback.
        if on:
            trace_log = logging.getLogger("minireactor.trace")
            self.reactor.set_trace(lambda event, info: trace_log.debug("%s %s", event, info))
        else:
            self.reactor.set_trace(None)

    def _reload_auth(self, config: Config) -> None:
        # The auth file is read on a helper thread: the loop never reads a file.
        path = config.auth_file
        assert path is not None
        # Reads of two quick reloads may finish in either order: only the latest one counts, or
        # the proxy could check users against file A while its config says B.
        self._auth_generation += 1
        generation = self._auth_generation

        def read() -> None:
            try:
                loaded: Authenticator | Exception = load_auth_file(path)
            except (OSError, AuthFileError) as exc:
                loaded = exc
            self.reactor.call_soon_threadsafe(self._auth_loaded, generation, loaded)

        threading.Thread(target=read, name="proxy-auth-reload", daemon=True).start()

    def _auth_loaded(self, generation: int, loaded: Authenticator | Exception) -> None:
        if generation != self._auth_generation:
            return  # a later reload's read supersedes this one
        if isinstance(loaded, Exception):
            log.warning("auth file not reloaded, the old users stay: %s", loaded)
        else:
            self.auth = loaded
        self._use_context()

    def _use_context(self) -> None:
        """Rebuild what sessions share from the current config and hand it to every session."""
        self.context = self._build_context(self.config)
        for session in self.sessions:
            session.use(self.context)

    def _open_access_log(self, config: Config) -> None:
        access_log: AccessLog | None
        if self._access_sink is not None:  # a test or notebook collecting the lines
            formatter = FORMATS[config.access_log_format]
            access_log = AccessLog(self._access_sink, formatter, self.reactor)
        else:
            access_log = open_access_log(config.access_log, config.access_log_format, self.reactor)
        self.access_log = access_log
        self.stats.access_log = access_log

    def reopen_access_log(self) -> None:
        """SIGUSR1: reopen the access log file (after logrotate renamed it)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def _stop_signalled(self) -> None:
        if not self.shutting_down:
            self.shutdown()
            return
        log.warning(
            "stop signal again: aborting %d connection(s) without waiting", len(self.sessions)
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
        if self.shutting_down:
            return
        self.shutting_down = True
        grace = self.config.shutdown_grace if grace is None else grace
        log.info("shutting down: %d connection(s) open", len(self.sessions))
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            session.shutdown()
        if not self.sessions:
            self._finish_shutdown()
        else:
            self._grace_timer = self.reactor.call_later(grace, self._finish_shutdown)

    def _finish_shutdown(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        for session in list(self.sessions):
            session.abort()
        self.pool.close_all()
        self.reactor.call_soon(self.reactor.stop)

    def _release(self) -> None:
        # The sessions are gone by now (aborted or closed), so their lines are all buffered.
        # Every step runs even if one before it raised (a last metrics publish that outgrew its
        # slot must not cost the access log's last lines); the first error still propagates.
        steps: list[Callable[[], object]] = []
        if self._publisher is not None:
            steps.append(self._publisher.stop)
        if self.access_log is not None:
            steps.append(self.access_log.close)
        if self.disk is not None:
            steps.append(self.disk.close)  # joins its thread once the queued writes are done
        if self.pipes is not None:
            steps.append(self.pipes.close)
        if self.watcher is not None:
            steps.append(self._stop_watcher)
        if self.server is not None:
            steps.append(self.server.close)
        if self._own_resolver and isinstance(self.resolver, Resolver):
            steps.append(self.resolver.close)
        if self._own_reactor:
            steps.append(self.reactor.close)
        first_error: BaseException | None = None
        for step in steps:
            try:
                step()
            except Exception as exc:  # re-raised below, once the other steps have run
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

"""Every setting of the proxy, with its default, in one dataclass.

Theory of operation
-------------------
The command line (:mod:`proxy.__main__`), the tests and the notebooks all build a
:class:`Config`; nothing else reads flags or the environment. Keeping defaults here, each with the
reason it was chosen, makes the reference table in the docs a rendering of this file rather than
a second copy that can drift.

A running proxy can take some settings from a reloaded config file (SIGHUP, see
:mod:`proxy.configfile`) and not others: :data:`LIVE_SETTINGS` are read afresh for each new
request, connection or log line, so a new value simply applies from the next one;
:data:`RESTART_SETTINGS` shaped something built once at start-up (the listening socket, the
worker processes, the cache's memory, the blocklist watcher) and change only with a restart.
Every field is in exactly one of the two sets (a test checks it).
"""

from __future__ import annotations

import dataclasses
import resource
from dataclasses import dataclass, field

MiB = 1024 * 1024

RESERVED_FDS = 32
"""Descriptors kept for the process itself: standard streams, the selector, listening sockets,
the waker, the blocklist watcher, log files, resolver threads' sockets (a generous count)."""
SPLICE_PIPE_FDS = 2 * 64
"""Two descriptors per pipe the splice pool may lend (``PipePool``'s ``max_pipes``)."""
FDS_PER_CONNECTION = 2
"""A client socket plus the origin socket it may need (relay or tunnel)."""


def max_conns_for(fd_limit: int) -> int:
    """The ``--max-conns`` default for a process that may open *fd_limit* descriptors.

    ``(fd_limit - RESERVED_FDS - SPLICE_PIPE_FDS) // FDS_PER_CONNECTION``, at least 1: every
    client may hold an origin socket too, and what is left after the process's own descriptors
    and the splice pipes is shared by those pairs (Envoy's advice: keep connection limits under
    half the descriptor limit). 1,024 descriptors give 432 clients, 20,000 give 9,920.
    """
    return max(1, (fd_limit - RESERVED_FDS - SPLICE_PIPE_FDS) // FDS_PER_CONNECTION)


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit, as servers do at start-up.

    Return the soft limit in force afterwards (unchanged where raising is refused). An unlimited
    hard limit is capped at ``/proc/sys/fs/nr_open``'s usual default, 1,048,576, since the
    kernel refuses a soft limit above that anyway.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return current_fd_limit()


def current_fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process now (an unlimited one counted as 2**20)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_max_conns() -> int:
    """:func:`max_conns_for` this process's current soft descriptor limit."""
    return max_conns_for(current_fd_limit())


@dataclass
class Config:
    """Settings of one proxy instance; every field has a sensible default."""

    host: str = "127.0.0.1"
    """Address to listen on; loopback unless you mean to serve other machines."""
    port: int = 4095
    """TCP port (the original report's); 0 lets the kernel choose."""
    blacklist: str = "./blacklist.txt"
    """The blocklist file, hot-reloaded when it changes."""
    watch_blacklist: bool = True
    """Watch the blocklist for changes (tests may turn it off)."""

    cache_enabled: bool = True
    """Whether responses are cached at all (``--no-cache`` turns it off)."""
    cache_size: int = 64 * MiB
    """Total bytes the cache may hold (an LRU evicts beyond it)."""
    cache_max_object: int = 8 * MiB
    """Largest response body stored; bigger ones are relayed untouched."""
    max_stale: float = 86400.0
    """Seconds past its freshness a stored response may still stand in for a failing origin
    (RFC 9111 section 4.2.4; ``stale-if-error`` and ``stale-while-revalidate`` within it);
    0 turns stale serving off. A day rides out a night's outage without serving a dead
    origin's pages for weeks (Squid allows a week)."""
    cache_dir: str | None = None
    """A folder for a persistent cache shared by restarts and ``--workers``, behind the memory
    cache (SQLite index, bodies in files); None keeps the cache in memory only."""
    cache_dir_size: int = 1024 * MiB
    """Bytes the ``cache_dir`` may hold, over every process using it (LRU beyond)."""
    collapse_wait: float = 5.0
    """How long a request waits for an identical fetch in flight before going upstream."""

    max_request_line: int = 8 * 1024
    """Longest request line (414 beyond), as nginx's large_client_header_buffers."""
    max_header_bytes: int = 64 * 1024
    """Largest header section (431 beyond), as Squid's request_header_max_size."""
    max_header_fields: int = 100
    """Most header fields in one head (431 beyond), as Apache's LimitRequestFields."""

    head_timeout: float = 30.0
    """Seconds to receive a complete request head (408), as HAProxy's timeout http-request."""
    keepalive_timeout: float = 60.0
    """Seconds an idle client connection is kept between requests, as nginx's 75 s-ish."""
    connect_timeout: float = 10.0
    """Seconds to resolve and connect to an origin (504 beyond), as HAProxy's timeout connect."""
    first_byte_timeout: float = 60.0
    """Seconds to wait for the origin's response head (504), as nginx's proxy_read_timeout."""
    idle_timeout: float = 300.0
    """Seconds a relay or tunnel may see no bytes in either direction before it is closed."""
    upstream_idle_timeout: float = 30.0
    """Seconds an idle pooled origin connection is kept for reuse."""
    shutdown_grace: float = 5.0
    """Seconds in-flight exchanges get to finish on Ctrl-C/SIGTERM (a second signal: none)."""

    splice: bool = True
    """Move tunnel bytes with ``os.splice`` where the platform has it (``--no-splice``: never)."""
    workers: int = 1
    """Reactor processes sharing the port with ``SO_REUSEPORT``; each has its own cache."""
    max_conns: int = field(default_factory=default_max_conns)
    """Concurrent client connections; beyond it new clients wait in the listen backlog.

    The default follows the descriptor limit, ``(RLIMIT_NOFILE - 32 - 128) // 2`` (see
    ``max_conns_for`` in this module): each client may need an origin socket, 32 descriptors
    stay for the process itself and 128 for the splice pipes. ``python -m proxy`` first raises
    its soft limit to the hard one, so 20,000 descriptors give 9,920 clients; a ``Config()``
    built elsewhere reads the soft limit as it finds it. Idle pooled origin connections are not
    counted here: if they use up the headroom, an origin connection fails with ``EMFILE`` and
    its client gets a 502, the proxy keeps running."""
    max_idle_upstreams_per_host: int = 256
    """Idle origin connections kept per host:port; fewer than the busy clients means churn."""
    connect_ports: frozenset[int] = field(default_factory=lambda: frozenset({443}))
    """Ports CONNECT may reach (Squid's SSL_ports idea)."""
    allow: tuple[str, ...] = ()
    """Client networks allowed (CIDR); empty admits any client that can reach the socket."""
    deny_private: bool = False
    """Refuse targets that resolve to any address not globally routable (private, loopback,
    link-local, shared 100.64/10, multicast, documentation, and the IPv4-mapped, 6to4 and
    NAT64 forms of those)."""
    auth_file: str | None = None
    """File of ``user:hash`` lines enabling Basic proxy authentication."""
    admin_users: tuple[str, ...] = ()
    """With ``auth_file``: users whose status pages list every user's recent requests."""

    parent: str | None = None
    """Another proxy to send every request through: ``http://[user:password@]host[:port]``."""
    parent_bypass: tuple[str, ...] = ()
    """Domains and CIDR networks that go direct although a ``parent`` is set."""

    via_pseudonym: str = "minireactor"
    """Name written in ``Via``; seeing it on an incoming request means a forwarding loop (give
    two proxies chained on one machine different names)."""
    trace: bool = False
    """Print the reactor's trace events (ticks, fd events, callbacks) to the log."""
    log_level: str = "INFO"
    """Logging level for the console."""
    access_log: str = "stderr"
    """Where each finished request is logged: a file, ``-`` (stdout), ``stderr`` or ``none``."""
    access_log_format: str = "squid"
    """Access-log line format: ``squid`` (native), ``combined`` (Apache) or ``json``."""

    def replace(self, **changes: object) -> Config:
        """Return a copy with *changes* applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


LIVE_SETTINGS: frozenset[str] = frozenset(
    {
        # Policy: checked per request against the Config of the moment.
        "connect_ports",
        "allow",
        "deny_private",
        "auth_file",
        "admin_users",
        # Routing: each request picks its first hop from the Config of the moment.
        "parent",
        "parent_bypass",
        # Timeouts: each deadline is armed with the value current when it starts.
        "head_timeout",
        "keepalive_timeout",
        "connect_timeout",
        "first_byte_timeout",
        "idle_timeout",
        "upstream_idle_timeout",
        "shutdown_grace",
        "collapse_wait",
        # Output: the log level, the reactor trace and the access log can be swapped in place.
        "log_level",
        "trace",
        "access_log",
        "access_log_format",
    }
)
"""Fields a config reload applies to the running proxy, from the next request on."""

RESTART_SETTINGS: frozenset[str] = frozenset(
    {
        "host",  # the listening socket is bound once
        "port",
        "workers",  # the processes are forked once
        "max_conns",
        "splice",  # the pipe pool is made once
        "blacklist",  # the watcher watches one path
        "watch_blacklist",
        "cache_enabled",  # the cache's store is sized and allocated once
        "cache_size",
        "cache_max_object",
        "max_stale",  # the cache's rules are built once with it
        "cache_dir",  # the disk store is opened once
        "cache_dir_size",
        "max_request_line",  # the parser limits go into every session's shared context
        "max_header_bytes",
        "max_header_fields",
        "max_idle_upstreams_per_host",
        "via_pseudonym",  # loop detection must not change under requests in flight
    }
)
"""Fields that only change with a restart; a reload reports them and keeps the old values."""


def changed_settings(old: Config, new: Config) -> tuple[str, ...]:
    """Names of the fields whose values differ between *old* and *new*, in declaration order."""
    return tuple(
        f.name for f in dataclasses.fields(Config) if getattr(old, f.name) != getattr(new, f.name)
    )

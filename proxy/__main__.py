"""``python -m proxy``: the command line.

Theory of operation
-------------------
The parser is built by :func:`build_parser` so the docs can render it (the reference page is
generated from it and cannot drift). :func:`main` merges the defaults, the ``--config`` file and
the flags typed (in that order of precedence, see :mod:`proxy.configfile`) into a
:class:`~proxy.config.Config`, starts a :class:`~proxy.app.ProxyServer` and runs it until Ctrl-C
or SIGTERM. Every value is checked by the converter of its flag, whether it came from the
command line or the file. Mistakes end with one line and exit status 2 (argparse's for a flag,
``FILE:LINE: key: ...`` for the file); a port already in use ends with one line and status 1,
never a traceback. ``SIGHUP`` and ``SIGUSR1``, whose default action is to kill, are blocked
from the start until the handlers are installed, so one sent during start-up is handled then.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from . import __version__
from .accesslog import FORMATS
from .config import (
    FDS_PER_CONNECTION,
    RESERVED_FDS,
    SPLICE_PIPE_FDS,
    Config,
    MiB,
    current_fd_limit,
    default_max_conns,
    raise_fd_limit,
)
from .configfile import ConfigFileError, ConfigSource, dump
from .parent import redact_parent
from .sharedmetrics import SharedMetrics

if TYPE_CHECKING:
    from .app import ProxyServer


def _size(text: str) -> int:
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64M or 512k)") from None


def _size_text(size: int) -> str:
    """*size* as :func:`_size` reads it back: ``64M`` when it is a whole number of a unit."""
    for suffix, unit in (("G", 1024 * MiB), ("M", MiB), ("k", 1024)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"ports are 0-65535 (0: the kernel chooses): {text!r}")
    return port


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _access_log(text: str) -> str:
    if text in ("-", "stderr", "none"):
        return text
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a file, -, stderr or none")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"no such directory for {text!r}: {folder}")
    return text


def _blacklist(text: str) -> str:
    # A missing *file* is fine (the watcher loads it when it appears); a missing folder cannot
    # be watched, and would otherwise fail at start as an OSError far from the flag.
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give the blocklist file's path")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"no such directory for {text!r}: {folder}")
    return text


def _network(text: str) -> str:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address or network: {text!r}") from None
    return text.strip()


def _ports(text: str) -> frozenset[int]:
    try:
        ports = frozenset(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port list: {text!r}") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535: {text!r}")
    return ports


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _stale_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be 0 seconds or more")
    return value


def _parent(text: str) -> str:
    from .parent import parse_parent

    try:
        parse_parent(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _bypass_list(text: str) -> list[str]:
    from .parent import Bypass

    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    try:
        Bypass(entries)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return entries


def _auth_file(path: str) -> str:
    from .auth import AuthFileError, load

    try:
        load(path)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    except AuthFileError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from None
    return path


EPILOG = """\
Point a client at it: curl -x http://127.0.0.1:4095 http://example.com/

Config file: TOML whose keys are the long flag names; flags typed here override it.
  python -m proxy --config /etc/proxy/proxy.toml
      port = 3128
      host = "0.0.0.0"
      allow = ["10.0.0.0/8", "192.168.0.0/16"]
      connect-ports = [443, 8443]
      no-cache = true
      access-log = "/var/log/proxy/access.log"
  python -m proxy --config FILE --print-config   shows the merged settings as TOML
  A commented example with every key: docs/proxy.example.toml
Signals: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the blocklist and the config file,
SIGUSR1 reopens the access log (after logrotate renamed it).
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m proxy`` argument parser."""
    defaults = Config()
    reserved = RESERVED_FDS + SPLICE_PIPE_FDS
    parser = argparse.ArgumentParser(
        prog="python -m proxy",
        description="A forward HTTP/HTTPS proxy on a single-threaded reactor.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from this TOML file (keys: the long flag names); flags override it",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (defaults, file, flags) as TOML and exit",
    )
    net = parser.add_argument_group("listening")
    net.add_argument("--host", default=defaults.host, help="address to listen on (%(default)s)")
    net.add_argument("--port", type=_port, default=defaults.port, help="TCP port (%(default)s)")
    net.add_argument(
        "--workers",
        type=_at_least_one,
        default=defaults.workers,
        help="reactor processes sharing the port with SO_REUSEPORT (%(default)s)",
    )
    net.add_argument(
        "--max-conns",
        type=_at_least_one,
        default=None,
        metavar="N",
        help="concurrent client connections per process; more wait in the backlog "
        f"(default: derived from the descriptor limit, (RLIMIT_NOFILE - {reserved}) // "
        f"{FDS_PER_CONNECTION}, after raising the soft limit to the hard one: each client "
        f"may need an origin socket, {reserved} stay for the process and its splice pipes)",
    )
    parser.add_argument(
        "--no-splice",
        action="store_true",
        help="relay tunnel bytes with recv/send even where os.splice is available",
    )
    pol = parser.add_argument_group("policy")
    pol.add_argument(
        "--blacklist",
        type=_blacklist,
        default=defaults.blacklist,
        help="blocklist file, hot-reloaded; its folder must exist (%(default)s)",
    )
    pol.add_argument(
        "--connect-ports",
        type=_ports,
        default=defaults.connect_ports,
        metavar="PORTS",
        help="comma-separated ports CONNECT may reach (443)",
    )
    pol.add_argument(
        "--allow",
        action="append",
        type=_network,
        default=[],
        metavar="CIDR",
        help="client network allowed to use the proxy (repeatable; default: any)",
    )
    pol.add_argument(
        "--deny-private",
        action="store_true",
        help="refuse targets that resolve to an address not globally routable "
        "(private, loopback, link-local, shared, multicast...)",
    )
    pol.add_argument(
        "--auth-file",
        type=_auth_file,
        metavar="FILE",
        help="require Basic proxy authentication against FILE's user:hash lines "
        "(make lines with: python -m proxy.auth hash USER)",
    )
    pol.add_argument(
        "--admin-user",
        action="append",
        default=[],
        metavar="USER",
        dest="admin_users",
        help="with --auth-file: a user whose status pages list everyone's recent requests "
        "(repeatable; others see only their own)",
    )
    hops = parser.add_argument_group("parent proxy")
    hops.add_argument(
        "--parent",
        type=_parent,
        metavar="URL",
        help="send every request through this proxy: http://[user:password@]HOST[:PORT]",
    )
    hops.add_argument(
        "--parent-bypass",
        type=_bypass_list,
        action="extend",
        default=[],
        metavar="LIST",
        help="comma-separated domains and CIDR networks that go direct (repeatable)",
    )
    hops.add_argument(
        "--via-name",
        default=defaults.via_pseudonym,
        metavar="NAME",
        dest="via_pseudonym",
        help="name in Via, used to detect loops; chained proxies need different ones (%(default)s)",
    )
    cache = parser.add_argument_group("cache")
    cache.add_argument("--no-cache", action="store_true", help="turn the HTTP cache off")
    cache.add_argument(
        "--cache-size", type=_size, default=defaults.cache_size, help="total cache bytes (64M)"
    )
    cache.add_argument(
        "--cache-max-object",
        type=_size,
        default=defaults.cache_max_object,
        help="largest response stored (8M)",
    )
    cache.add_argument(
        "--max-stale",
        type=_stale_seconds,
        default=defaults.max_stale,
        metavar="S",
        help="how stale a stored response may be to stand in for a failing origin; 0: never "
        "(%(default)s)",
    )
    cache.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep the cache on disk in DIR too, shared by restarts and --workers",
    )
    cache.add_argument(
        "--cache-dir-size",
        type=_size,
        default=defaults.cache_dir_size,
        help="bytes the --cache-dir may hold (1G)",
    )
    lim = parser.add_argument_group("limits and timeouts (seconds)")
    for flag, field, text in (
        ("--head-timeout", "head_timeout", "to receive a whole request head (408)"),
        ("--keepalive-timeout", "keepalive_timeout", "idle client connection between requests"),
        ("--connect-timeout", "connect_timeout", "to resolve and connect to an origin (504)"),
        ("--first-byte-timeout", "first_byte_timeout", "for the origin's response head (504)"),
        ("--idle-timeout", "idle_timeout", "a relay or tunnel with no bytes moving"),
        ("--shutdown-grace", "shutdown_grace", "for requests in flight after Ctrl-C or SIGTERM"),
    ):
        lim.add_argument(
            flag,
            type=_seconds,
            default=getattr(defaults, field),
            metavar="S",
            help=f"{text} (%(default)s)",
        )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--log-level",
        default=defaults.log_level,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="console log level (%(default)s)",
    )
    out.add_argument("--trace", action="store_true", help="log the reactor's ticks and callbacks")
    out.add_argument(
        "--access-log",
        type=_access_log,
        default=defaults.access_log,
        metavar="DEST",
        help="a line per request to this file, - (stdout), stderr or none (%(default)s); "
        "SIGUSR1 reopens the file",
    )
    out.add_argument(
        "--access-log-format",
        choices=sorted(FORMATS),
        default=defaults.access_log_format,
        help="squid (native), combined (Apache) or json (%(default)s)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Turn parsed flags into a :class:`~proxy.config.Config`."""
    return Config(
        host=args.host,
        port=args.port,
        blacklist=args.blacklist,
        max_conns=args.max_conns if args.max_conns is not None else default_max_conns(),
        workers=args.workers,
        splice=not args.no_splice,
        connect_ports=args.connect_ports,
        allow=tuple(args.allow),
        deny_private=args.deny_private,
        auth_file=args.auth_file,
        admin_users=tuple(args.admin_users),
        parent=args.parent,
        parent_bypass=tuple(args.parent_bypass),
        via_pseudonym=args.via_pseudonym,
        cache_enabled=not args.no_cache,
        cache_size=args.cache_size,
        cache_max_object=args.cache_max_object,
        max_stale=args.max_stale,
        cache_dir=args.cache_dir,
        cache_dir_size=args.cache_dir_size,
        head_timeout=args.head_timeout,
        keepalive_timeout=args.keepalive_timeout,
        connect_timeout=args.connect_timeout,
        first_byte_timeout=args.first_byte_timeout,
        idle_timeout=args.idle_timeout,
        shutdown_grace=args.shutdown_grace,
        log_level=args.log_level,
        trace=args.trace,
        access_log=args.access_log,
        access_log_format=args.access_log_format,
    )


HELD_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1})
"""Signals blocked from start-up until the process has its handlers for them."""


def main(argv: list[str] | None = None) -> int:
    """Run the proxy until interrupted; return the exit status."""
    # SIGHUP and SIGUSR1 kill a process by default, and a reload or a logrotate postrotate may
    # land while it starts (or forks its workers). Held until the handlers are in place, such a
    # signal is delivered to them then instead; threads started meanwhile keep them blocked, so
    # the main thread is the one that takes them.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        return _main(argv)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _release_held_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def _main(argv: list[str] | None) -> int:
    source = ConfigSource.from_argv(build_parser, config_from_args, argv)
    parser = build_parser()
    try:
        args = source.namespace()
    except ConfigFileError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.workers > 1 and args.port == 0:
        # Checked before --print-config too: a file it passes must also start.
        parser.exit(
            2,
            f"{parser.prog}: error: {source.where('workers')}: needs a fixed port, and "
            f"{source.where('port')} is 0: each worker binds it with SO_REUSEPORT\n",
        )
    raise_fd_limit()  # before the --max-conns default is derived from it
    if args.print_config:
        origin = "defaults, then " + (f"{source.path}, then " if source.path else "") + "flags"
        sizes = {n: _size_text for n in ("cache_size", "cache_max_object", "cache_dir_size")}
        # Shown, but as a comment: a file made from this output must go on deriving it.
        rule = (
            f"(RLIMIT_NOFILE {current_fd_limit()} - {RESERVED_FDS + SPLICE_PIPE_FDS}) "
            f"// {FDS_PER_CONNECTION}"
        )
        derived = {"max_conns": (default_max_conns(), rule)}
        sys.stdout.write(dump(args, parser, origin, sizes, derived, {"parent": redact_parent}))
        return 0
    config = config_from_args(args)
    level = "DEBUG" if config.trace else config.log_level
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if config.host in ("0.0.0.0", "::") and not config.allow:
        logging.getLogger("proxy").warning(
            "listening on %s with no --allow: anyone who can reach this machine may use the proxy",
            config.host,
        )
    if config.workers > 1:
        return _run_workers(config, source)
    return _serve(config, source)


def _say(line: str) -> None:
    # One write per line: print() writes the text and its newline apart, and with --workers
    # the lines of two processes sharing stderr then run into each other.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _serve(
    config: Config,
    source: ConfigSource | None = None,
    worker: int | None = None,
    lifeline: int | None = None,
    shared: SharedMetrics | None = None,
) -> int:
    from .app import ListenError, ProxyServer

    server = ProxyServer(config, config_source=source, shared_metrics=shared, worker=worker)
    who = f" worker {worker}" if worker is not None else ""
    try:
        server.start()
    except ListenError as exc:
        _say(f"proxy{who}: cannot listen on {config.host}:{config.port}: {exc.strerror}")
        return 1
    except OSError as exc:
        if server.access_log is None and config.access_log not in ("none", "-", "stderr"):
            _say(f"proxy{who}: cannot open the access log {config.access_log}: {exc.strerror}")
        else:
            # The blocklist's folder vanished since the flag was checked, a disk cache folder...
            where = f" {exc.filename}" if exc.filename else ""
            _say(f"proxy{who}: cannot start:{where} {exc.strerror or exc}")
        return 1
    server.install_signal_handlers()
    _release_held_signals()
    if lifeline is not None:
        _stop_with_parent(server, lifeline)
    host, port = server.address
    rules = len(server.blocklist)
    _say(
        f"proxy {__version__}{who} listening on http://{host}:{port} "
        f"(blocklist {config.blacklist}: {rules} rules, cache "
        f"{'on' if config.cache_enabled else 'off'}); Ctrl-C stops"
    )
    server.run()
    _say(f"proxy{who} stopped")
    return 0


def _stop_with_parent(server: ProxyServer, lifeline: int) -> None:
    """Shut *server* down when the parent's end of the *lifeline* pipe closes, however it died."""

    def parent_gone() -> None:
        server.reactor.remove_reader(lifeline)
        logging.getLogger("proxy").warning("the parent process is gone: shutting down")
        server.shutdown()

    server.reactor.add_reader(lifeline, parent_gone)


def _run_workers(config: Config, source: ConfigSource | None = None) -> int:
    """Fork one single-threaded reactor per worker; the kernel spreads connections over them.

    Only the parent holds the write end of a pipe that each worker watches: when the parent
    ends, even by SIGKILL, the kernel closes it and the workers read end-of-file and stop,
    rather than keep the port for ever.
    """
    children: list[int] = []
    lifeline, parent_end = os.pipe()
    # Made before the fork, so every worker maps the same memory: /metrics sums their slots.
    shared = SharedMetrics(config.workers)
    for worker in range(config.workers):
        pid = os.fork()
        if pid == 0:
            os.close(parent_end)
            # A group of its own: a terminal's Ctrl-C reaches the parent alone, which relays it
            # once. Sent to the whole group as well, it would arrive twice, and a second stop
            # signal means "abort now".
            os.setpgid(0, 0)
            code = 1
            try:
                code = _serve(config, source, worker, lifeline, shared)
            finally:
                os._exit(code)
        children.append(pid)
    os.close(lifeline)

    relayed = {signal.SIGHUP, signal.SIGUSR1}  # reload, reopen: each worker does its own
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum not in relayed
        for pid in children:
            try:
                os.kill(pid, signum if signum in relayed else signal.SIGTERM)
            except ProcessLookupError:
                pass

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1"):
        signal.signal(getattr(signal, name), forward)
    # A SIGHUP held since start-up reaches each worker now, and waits in a worker that is
    # still starting until that one has its handlers.
    _release_held_signals()
    status = 0
    worker_of = {pid: worker for worker, pid in enumerate(children)}
    while worker_of:
        pid, code = os.wait()  # whichever ends first: a crash must not wait behind a live one
        if pid not in worker_of:
            continue
        worker = worker_of.pop(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        status = status or exit_code
        shared.mark_dead(worker)  # its counters stay in /metrics, its open connections do not
        if not stopping:
            how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited ({exit_code})"
            logging.getLogger("proxy").error(
                "worker %d (pid %d) %s; %d worker(s) still serve", worker, pid, how, len(worker_of)
            )
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The lab proxy's entry point: parse the command line, listen, run the reactor.

Theory of operation
-------------------
``python labproxy.py --port 0`` makes one :class:`~minireactor.Reactor`, a resolver, the cache
and a :class:`~context.ProxyContext`, listens with :func:`minireactor.listen` and wraps every
accepted socket in a :class:`~minireactor.Transport` driven by a
:class:`~client.ClientConnection`. Then the reactor runs until ``SIGTERM`` or ``SIGINT``.

The first line on standard output is ``labproxy listening on HOST:PORT``, with the port the
kernel picked when ``--port 0`` was asked for: the driver reads it to know where to connect.
Logs go to standard error.

``--resolve NAME=IP`` (repeatable) swaps the real resolver for a
:class:`~minireactor.StaticResolver`: names in the table resolve to their address and every
other name fails as an unknown name would, without asking any name server. The driver uses it
so that grading never depends on DNS.

This file is given: you need not change it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

from cache import Cache
from client import ClientConnection
from context import ProxyContext

from minireactor import Reactor, Resolver, StaticResolver, Transport, listen
from minireactor.resolver import ResolverLike


def build_parser() -> argparse.ArgumentParser:
    """The command line of the lab proxy."""
    parser = argparse.ArgumentParser(description="The proxy lab's proxy, on minireactor.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=4096, help="port to listen on (0: any)")
    parser.add_argument(
        "--cache-bytes", type=int, default=1 << 20, help="cache budget in bytes (Part C)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to connect to an origin, then to wait for its first byte",
    )
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="NAME=IP",
        help="resolve NAME to IP and no other name (repeatable; no DNS is asked)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every error page")
    return parser


def make_resolver(reactor: Reactor, table: list[str]) -> Resolver | StaticResolver:
    """A :class:`StaticResolver` for ``NAME=IP`` entries, else the real one."""
    if not table:
        return Resolver(reactor)
    pairs = dict(entry.split("=", 1) for entry in table if "=" in entry)
    return StaticResolver(reactor, pairs)


def main(argv: list[str] | None = None) -> int:
    """Run the lab proxy until SIGTERM or SIGINT; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    reactor = Reactor()
    resolver = make_resolver(reactor, args.resolve)
    typed_resolver: ResolverLike = resolver
    ctx = ProxyContext(reactor, typed_resolver, Cache(args.cache_bytes), timeout=args.timeout)

    def accept(sock: socket.socket, _address: object) -> None:
        Transport(reactor, sock, ClientConnection(ctx))

    try:
        server = listen(reactor, args.host, args.port, accept)
    except OSError as error:
        print(f"labproxy: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    host, port = server.address
    print(f"labproxy listening on {host}:{port}", flush=True)
    reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
    reactor.add_signal_handler(signal.SIGINT, reactor.stop)
    try:
        reactor.run_forever()
    finally:
        server.close()
        resolver.close()
        reactor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

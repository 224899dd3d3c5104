"""Both far ends of the idle-tunnel benchmark, as processes of their own: holder and client shard.

Usage (started by :func:`perf_load.idle_tunnels`, not by hand)::

    python bench/perf_hold.py origin --port P [--lifetime S]
    python bench/perf_hold.py client --target HOST:PORT [--proxy PORT] --count N [--hold S]

Theory of operation
-------------------
Every idle tunnel costs a descriptor in three processes: the client's socket, the proxy's two
(client side and origin side) and the origin's. With a hard ``RLIMIT_NOFILE`` of 20,000 that no
unprivileged process can raise, one process cannot play client *and* origin for 10,000
tunnels, so each role runs apart:

* ``origin`` accepts and holds every connection (reading and dropping whatever arrives), so
  nothing on the origin side closes an idle tunnel (nginx would, after its header timeout).
* ``client`` opens *count* ``CONNECT`` tunnels in batches of 250, each batch waiting (bounded)
  for its answers; it stops at the first batch with a failure, prints one JSON line (how many
  it attempted, how many succeeded, why it stopped, the failures by reason) and holds the
  tunnels until its standard input closes or ``--hold`` seconds pass.

Both raise their soft descriptor limit to the hard one and end by themselves after a bounded
time, so a benchmark killed half-way leaves nothing running for long.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import selectors
import socket
import sys
import time


def raise_nofile() -> int:
    """Soft ``RLIMIT_NOFILE`` raised to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def origin(port: int, lifetime: float) -> None:
    """Accept and hold connections on 127.0.0.1:*port* for at most *lifetime* seconds."""
    raise_nofile()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                for _ in range(256):  # bounded accept burst
                    try:
                        conn, _ = listener.accept()
                    except OSError:  # EAGAIN, or EMFILE: the client reports the failure
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()


def _await_heads(socks: list[socket.socket], wait: float, why: collections.Counter) -> int:
    """Wait up to *wait* seconds for each socket's response head; count ``200``s, note the rest."""
    sel = selectors.DefaultSelector()
    heads: dict[socket.socket, bytes] = {}
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        heads[sock] = b""
    good = 0
    deadline = time.monotonic() + wait
    while heads and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError as exc:
                why[f"reset before an answer ({exc.strerror})"] += 1
                data = None
            if data:
                heads[sock] += data
                if b"\r\n\r\n" not in heads[sock]:
                    continue
                line = heads[sock].split(b"\r\n", 1)[0].decode("latin-1")
                if line.split(" ")[1:2] == ["200"]:
                    good += 1
                else:
                    why[f"answered {line[:60]!r}"] += 1
            elif data is not None:
                why["closed without an answer"] += 1
            sel.unregister(sock)
            del heads[sock]
    if heads:
        why[f"no answer within {wait:g} s"] += len(heads)
    sel.close()
    return good


def client(target: tuple[str, int], proxy: int | None, count: int, hold: float) -> None:
    """Open *count* tunnels (plain connections without *proxy*), report, hold, close."""
    nofile = raise_nofile()
    held: list[socket.socket] = []
    why: collections.Counter[str] = collections.Counter()
    ok = attempted = 0
    stopped = "all attempted"
    started = time.monotonic()
    request = f"CONNECT {target[0]}:{target[1]} HTTP/1.1\r\nHost: {target[0]}:{target[1]}\r\n\r\n"
    while attempted < count:
        batch: list[socket.socket] = []
        for _ in range(min(250, count - attempted)):
            attempted += 1
            try:
                sock = socket.create_connection(("127.0.0.1", proxy or target[1]), timeout=5)
                if proxy is not None:
                    sock.sendall(request.encode())
            except OSError as exc:
                why[f"connect failed ({exc.strerror or exc})"] += 1
                continue
            batch.append(sock)
        held += batch
        ok += len(batch) if proxy is None else _await_heads(batch, 20.0, why)
        if why:
            stopped = "stopped at the first batch with a failure"
            break
        if time.monotonic() - started > hold / 2:
            stopped = "stopped at the time limit"
            break
    report = {
        "attempted": attempted,
        "ok": ok,
        "failed": attempted - ok,
        "stopped": stopped,
        "reasons": dict(why),
        "open_s": time.monotonic() - started,
        "client_nofile": nofile,
    }
    print(json.dumps(report), flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    sel.select(timeout=max(1.0, hold - (time.monotonic() - started)))  # until stdin closes
    for sock in held:
        sock.close()


def main() -> None:
    """Parse the role and run it."""
    parser = argparse.ArgumentParser(prog="python bench/perf_hold.py")
    sub = parser.add_subparsers(dest="role", required=True)
    o = sub.add_parser("origin")
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--lifetime", type=float, default=1800.0)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--proxy", type=int, default=None)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--hold", type=float, default=300.0)
    args = parser.parse_args()
    if args.role == "origin":
        origin(args.port, args.lifetime)
    else:
        host, port = args.target.rsplit(":", 1)
        client((host, int(port)), args.proxy, args.count, args.hold)


if __name__ == "__main__":
    main()

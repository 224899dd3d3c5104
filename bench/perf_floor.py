"""The floor: the least Python a keep-alive forward relay can run per request. Not a proxy.

Theory of operation
-------------------
``python bench/perf_floor.py PORT`` relays absolute-form ``GET`` requests to their origin over
pooled keep-alive connections, on one ``selectors`` loop, with a ``Content-Length`` response
read whole and sent in one ``send``. It checks nothing, has no timeouts, no limits and no
error pages, and handles neither chunked bodies nor request bodies: it exists only to measure,
beside the real proxy in one run, what the interpreter itself costs per request. Whatever our
proxy spends above this floor is the price of doing the job properly (and of its structure);
whatever Squid saves below it is the price of Python. The benchmark runs it only on the 100-byte
scenarios (it sends a whole response at once), and it stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys

_DROPPED = ("connection", "proxy-connection", "keep-alive")


class Client:
    """One client connection: finds a head, rewrites it, lends it to a pooled upstream."""

    def __init__(self, relay: Relay, sock: socket.socket) -> None:
        self.relay, self.sock, self.buf = relay, sock, b""

    def readable(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.relay.forget(self.sock)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
        lines = head.split("\r\n")
        method, target, version = lines[0].split(" ")
        authority, _, path = target.partition("://")[2].partition("/")
        host, _, port = authority.partition(":")
        fields = [line.partition(":") for line in lines[1:]]
        out = [f"{method} /{path} HTTP/1.1", f"Host: {authority}"]
        out += [f"{n}:{v}" for n, _, v in fields if n.lower() not in (*_DROPPED, "host")]
        out.append("Via: 1.1 floor\r\n\r\n")
        keep = version == "HTTP/1.1" or "keep-alive" in head.lower()
        self.relay.upstream((host, int(port or 80))).send(self, keep, "\r\n".join(out))


class Upstream:
    """One origin connection; reads a Content-Length response whole, then rejoins the pool."""

    def __init__(self, relay: Relay, key: tuple[str, int]) -> None:
        self.relay, self.key, self.buf = relay, key, b""
        self.sock = socket.create_connection(key)
        self.sock.setblocking(False)
        self.client: Client | None = None
        self.keep = True
        relay.selector.register(self.sock, selectors.EVENT_READ, self.readable)

    def send(self, client: Client, keep: bool, head: str) -> None:
        self.client, self.keep = client, keep
        self.sock.send(head.encode("latin-1"))

    def readable(self) -> None:
        data = self.sock.recv(262144)
        if not data:  # the origin closed (nginx does after 1,000 requests): leave the pool
            idle = self.relay.pool.get(self.key, [])
            if self in idle:
                idle.remove(self)
            if self.client is not None:
                self.relay.forget(self.client.sock)
            self.relay.forget(self.sock)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.client is None:
            return
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        length, out, reusable = 0, [lines[0]], True
        for name, _, value in (line.partition(":") for line in lines[1:]):
            lower = name.lower()
            if lower == "content-length":
                length = int(value)
            elif lower == "connection" and "close" in value.lower():
                reusable = False
            if lower not in _DROPPED:
                out.append(f"{name}:{value}")
        if len(self.buf) < end + 4 + length:
            return
        body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
        out.append("Via: 1.1 floor")
        out.append("Connection: keep-alive\r\n\r\n" if self.keep else "Connection: close\r\n\r\n")
        client, self.client = self.client, None
        client.sock.sendall("\r\n".join(out).encode("latin-1") + body)
        if not self.keep:
            self.relay.forget(client.sock)
        if reusable:
            self.relay.pool.setdefault(self.key, []).append(self)
        else:
            self.relay.forget(self.sock)


class Relay:
    """The loop, the listening socket and the pool."""

    def __init__(self, port: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.pool: dict[tuple[str, int], list[Upstream]] = {}
        self.listener = socket.create_server(("127.0.0.1", port), backlog=1024)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, self.accept)
        self.running = True

    def accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, Client(self, sock).readable)

    def upstream(self, key: tuple[str, int]) -> Upstream:
        idle = self.pool.get(key)
        return idle.pop() if idle else Upstream(self, key)

    def forget(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass  # already forgotten
        sock.close()

    def run(self) -> None:
        while self.running:
            for key, _ in self.selector.select(0.5):
                try:
                    key.data()
                except OSError:  # a peer reset or vanished (wrk closes abruptly): drop it
                    if key.fileobj is not self.listener:
                        self.forget(key.fileobj)  # type: ignore[arg-type]


def main() -> None:
    relay = Relay(int(sys.argv[1]))

    def stop(*_: object) -> None:
        relay.running = False

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    relay.run()


if __name__ == "__main__":
    main()

# Exercise 11-loadgen: every client of a load test on one reactor thread.
import socket

from minireactor import Protocol, Transport


class EchoClient(Protocol):
    """Sends the message, counts a round trip when its whole echo is back, sends again."""

    def __init__(self, reactor, message, deadline):
        self.reactor, self.message, self.deadline = reactor, message, deadline
        self.round_trips = 0
        self.pending = 0  # bytes of the current echo still to come
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        self.pending = len(self.message)
        self.transport.write(self.message)

    def data_received(self, data):
        self.pending -= len(data)  # an echo may arrive in pieces
        if self.pending > 0:
            return
        self.round_trips += 1
        if self.reactor.time() < self.deadline:
            self.send()
        else:
            self.transport.close()

    def connection_lost(self, exc):
        self.closed = True


def reactor_load(reactor, port, clients, seconds, message):
    """Run `clients` closed-loop echo clients against 127.0.0.1:`port` for `seconds`."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(clients)]
    deadline = reactor.time() + seconds
    protocols = [EchoClient(reactor, message, deadline) for _ in socks]
    for sock, protocol in zip(socks, protocols, strict=True):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Transport(reactor, sock, protocol)
    reactor.run_until(lambda: all(p.closed for p in protocols), timeout=seconds + 5)
    return [p.round_trips for p in protocols]

# Exercise 09-relay: one side of a tunnel; two of them, back to back, make the tunnel.
from minireactor import Protocol, Transport


class TunnelSide(Protocol):
    """What this side's connection reads goes out through the other side's transport."""

    def __init__(self):
        self.transport = None  # this side's Transport
        self.peer = None  # the other TunnelSide
        self.eof = False  # whether this side has sent end-of-stream

    def data_received(self, data):
        self.peer.transport.write(data)

    def eof_received(self):
        self.eof = True
        self.peer.transport.write_eof()  # sent once what is buffered has left
        if self.peer.eof:  # both directions are over
            self.peer.transport.close()
            return False  # and close ours
        return True  # keep the connection: the other direction still flows

    def pause_writing(self):
        self.peer.transport.pause_reading()  # the bytes wait in the kernel; TCP slows the sender

    def resume_writing(self):
        if not self.peer.eof:  # a side that ended has nothing more to read
            self.peer.transport.resume_reading()

    def connection_lost(self, exc):
        if exc is None:
            self.peer.transport.close()  # after it flushes what it holds
        else:
            self.peer.transport.abort()  # a reset here: a reset there, never a clean end


def tunnel(reactor, left_sock, right_sock, high_water=64 * 1024):
    """Join two connected sockets back to back; return their transports (left, right)."""
    left, right = TunnelSide(), TunnelSide()
    left.peer, right.peer = right, left
    left.transport = Transport(reactor, left_sock, left, high_water=high_water)
    right.transport = Transport(reactor, right_sock, right, high_water=high_water)
    return left.transport, right.transport

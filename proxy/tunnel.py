"""CONNECT tunnels (and upgraded connections): opaque bytes, both ways, with crossed backpressure.

Theory of operation
-------------------
After ``200 Connection established`` (RFC 9110 section 9.3.6) the proxy stops speaking HTTP on
that connection: whatever the client sends, usually a TLS handshake, goes to the origin
unchanged, and back. TLS therefore stays end to end; the proxy sees only ciphertext, which is
why path rules of the blocklist cannot apply to HTTPS. The shape is Twisted's
``portforward.py``:

* **Don't read before the other end exists.** The session stops reading from the client when it
  sees ``CONNECT``; bytes the client sent early (a TLS ClientHello right behind the request)
  sit in the parser's buffer and are the first thing written to the origin.
* **Zero copy where the kernel allows it.** On Linux each end is a
  :class:`~minireactor.splice.Splicer`: bytes go ``socket -> pipe -> socket`` with
  ``os.splice`` and never enter Python; a pipe is borrowed from a small pool only while a
  chunk is on its way, so an idle tunnel holds none. Elsewhere, or with ``--no-splice``, the
  same ends relay with ``recv`` and ``write``.
* **Crossed backpressure.** Each side's ``pause_writing`` pauses *reading* on the other side, so
  a fast origin and a slow client cannot fill our memory: the bytes stay in the kernel buffers
  and TCP slows the sender down. A chunk held in a pipe pauses its source the same way.
* **Half-close.** EOF from one side becomes ``write_eof`` on the other, and the tunnel keeps
  relaying the opposite direction until that side finishes too (a client may shut down its
  sending side and still wait for the reply).
* **Close both.** When one side is lost, the other is closed after it flushes what it holds; a
  side that would lose bytes still held in a pipe is reset instead, so a cut stream never looks
  complete.
* **Idle timeout.** A tunnel with no bytes either way for ``idle_timeout`` seconds is closed. One
  :class:`IdleSweep` per proxy compares each tunnel's byte counter with its last value four
  times per ``idle_timeout``: no timer per tunnel, the hot path costs one integer addition,
  and a tunnel is closed at most a quarter period late.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from minireactor import Clock, TransportLike
from minireactor.splice import PipePool, Splicer
from minireactor.timers import TimerHandle


class TunnelOwner(TypingProtocol):
    """Who hears, once, that a tunnel ended (the client session)."""

    def tunnel_closed(self, tunnel: Tunnel, exc: BaseException | None) -> None:
        """Both sides are closed; *exc* is the first error, None for a clean end."""


class TunnelEnd(Splicer):
    """One side of a tunnel: what it receives goes to the peer end's transport."""

    __slots__ = ("tunnel", "transport", "peer", "eof", "lost")

    def __init__(self, tunnel: Tunnel, transport: TransportLike) -> None:
        super().__init__()
        self.tunnel = tunnel
        self.transport: TransportLike | None = transport
        self.peer: TunnelEnd | None = None
        self.eof = False
        self.lost = False
        transport.set_protocol(self)

    def sink(self) -> TransportLike | None:
        """The peer's transport: where this side's bytes go."""
        peer = self.peer
        return peer.transport if peer is not None else None

    def connection_made(self, transport: TransportLike) -> None:
        """Used when the end's transport is created for the tunnel (the origin side)."""
        self.transport = transport

    def eof_received(self) -> bool:
        """Half-close the other side; keep our own direction open."""
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write_eof()
        if peer is None or peer.eof:
            self.tunnel.close()
            return False
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """Close the other side after it flushes."""
        self.lost = True
        self.tunnel.side_lost(self, exc)

    def pause_writing(self) -> None:
        """Our outgoing buffer is full: stop reading from the other side."""
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        """Our buffer drained: read from the other side again."""
        peer = self.peer
        if peer is None or peer.transport is None or peer.eof:
            return
        if not peer.pipe_pending:  # a chunk still in the peer's pipe resumes it once sent
            peer.transport.resume_reading()


class Tunnel:
    """Two transports joined back to back."""

    # Slots, and no bound methods or timers kept per tunnel: 10,000 idle tunnels is a target.
    __slots__ = (
        "client_end",
        "upstream_end",
        "sweep",
        "_owner",
        "_closing",
        "_closed",
        "_seen",
        "_quiet_sweeps",
    )

    def __init__(
        self,
        client: TransportLike,
        upstream: TransportLike,
        *,
        owner: TunnelOwner,
        sweep: IdleSweep,
        pipes: PipePool | None = None,
    ) -> None:
        self.client_end = TunnelEnd(self, client)
        self.upstream_end = TunnelEnd(self, upstream)
        self.client_end.peer = self.upstream_end
        self.upstream_end.peer = self.client_end
        if pipes is not None:
            self.client_end.use_pipes(pipes)
            self.upstream_end.use_pipes(pipes)
        self.sweep = sweep
        self._owner = owner
        self._closing = False
        self._closed = False
        self._seen = -1
        self._quiet_sweeps = 0  # a small int, not a timestamp: no float per idle tunnel
        sweep.add(self)

    def start(self, early_up: bytes, early_down: bytes = b"") -> None:
        """Relay bytes that arrived before the tunnel existed, then read both sides.

        *early_up* came from the client behind its request; *early_down* from the origin
        behind its ``101`` head. They go through the transports' buffers, so spliced bytes
        can only follow them.
        """
        assert self.upstream_end.transport is not None and self.client_end.transport is not None
        if early_up:
            self.client_end.data_received(early_up)
        if early_down:
            self.upstream_end.data_received(early_down)
        self.client_end.transport.resume_reading()
        self.upstream_end.transport.resume_reading()

    @property
    def bytes_up(self) -> int:
        """Bytes relayed from the client to the origin."""
        return self.client_end.received

    @property
    def bytes_down(self) -> int:
        """Bytes relayed from the origin to the client."""
        return self.upstream_end.received

    def idle_check(self, quiet_limit: int) -> None:
        """Called by the sweep: close once no byte moved for *quiet_limit* sweeps in a row.

        A tunnel still open *quiet_limit* sweeps after that close is stuck flushing to a peer
        that reads nothing: it is aborted.
        """
        moved = self.client_end.received + self.upstream_end.received
        if moved != self._seen:
            self._seen = moved
            self._quiet_sweeps = 0
            return
        self._quiet_sweeps += 1
        if self._quiet_sweeps >= quiet_limit:
            if self._closing:
                self.abort()
            else:
                self._quiet_sweeps = 0  # the flush gets one more period
                self.close()

    def restart_idle_count(self) -> None:
        """Count quiet sweeps from zero again (the sweep's period changed under it)."""
        self._quiet_sweeps = 0

    def side_lost(self, end: TunnelEnd, exc: BaseException | None) -> None:
        """One side is gone: close the other after it flushes, and report once."""
        other = end.peer
        assert other is not None
        # A chunk on its way to the lost side can no longer be delivered.
        other.drop_pipe()
        if other.transport is not None and not other.lost:
            if end.pipe_pending:
                # Bytes from the lost side are stuck in a pipe: the other side must not see a
                # clean end of stream without them.
                end.drop_pipe()
                other.transport.abort(ConnectionAbortedError("peer lost with bytes in a pipe"))
            elif exc is None:
                other.transport.close()
            else:
                other.transport.abort()
        if end.lost and other.lost:
            self._finish(exc)

    def close(self) -> None:
        """Close both sides after flushing (reset a side whose incoming pipe still holds bytes)."""
        self._closing = True
        for end in (self.client_end, self.upstream_end):
            transport = end.transport
            peer = end.peer
            if transport is None:
                continue
            if peer is not None and peer.pipe_pending:
                peer.drop_pipe()
                transport.abort(ConnectionAbortedError("tunnel closed with bytes in a pipe"))
            else:
                transport.close()

    def abort(self) -> None:
        """Close both sides now."""
        for end in (self.client_end, self.upstream_end):
            end.drop_pipe()
            if end.transport is not None:
                end.transport.abort()

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.client_end.drop_pipe()
        self.upstream_end.drop_pipe()
        self.sweep.discard(self)
        self._owner.tunnel_closed(self, exc)


class IdleSweep:
    """Close tunnels that moved no byte for ``idle_timeout``: one timer for all of them.

    The sweep runs every quarter of ``idle_timeout``; each tunnel compares its byte counter
    with the value seen at the previous sweep and counts the sweeps in a row that saw no
    change. A tunnel idle since time *t* is therefore closed after four quiet sweeps, between
    ``t + idle_timeout`` and ``t + 1.25 * idle_timeout``, for the price of four quick checks
    per period (a check is one addition and one comparison). The timer runs only while some
    tunnel is open.
    """

    SWEEPS_PER_TIMEOUT = 4

    def __init__(self, reactor: Clock, idle_timeout: float) -> None:
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self._tunnels: set[Tunnel] = set()
        self._timer: TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._tunnels)

    def add(self, tunnel: Tunnel) -> None:
        """Watch *tunnel* until :meth:`discard`."""
        # Its first sweep sees a change (nothing was seen yet) and starts the count, so a
        # tunnel added just before a sweep is not cut a quarter period early.
        self._tunnels.add(tunnel)
        if self._timer is None:
            self._schedule()

    def discard(self, tunnel: Tunnel) -> None:
        """Stop watching *tunnel*; the timer stops with the last one."""
        self._tunnels.discard(tunnel)
        if not self._tunnels and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def retime(self, idle_timeout: float) -> None:
        """Sweep with a new *idle_timeout* from now on (a config reload changed it).

        Quiet sweeps counted at the old period say nothing in the new one, so every open
        tunnel starts counting again: a tunnel is closed no earlier than *idle_timeout* after
        the change, nor more than 1.25 times that after it (a longer timeout never cuts a
        tunnel early, a shorter one does not wait for the old period's pending sweep).
        """
        if idle_timeout == self.idle_timeout:
            return
        self.idle_timeout = idle_timeout
        for tunnel in self._tunnels:
            tunnel.restart_idle_count()
        if self._timer is not None:
            self._timer.cancel()
            self._schedule()

    def _schedule(self) -> None:
        period = self.idle_timeout / self.SWEEPS_PER_TIMEOUT
        self._timer = self.reactor.call_at(self.reactor.time() + period, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        # A closed tunnel stays watched until both sides are lost (a close may need a flush),
        # and closing changes the set: iterate over a copy.
        for tunnel in list(self._tunnels):
            tunnel.idle_check(self.SWEEPS_PER_TIMEOUT)
        if self._tunnels and self._timer is None:
            self._schedule()

"""ClientSession: one state machine per accepted client connection.

Theory of operation
-------------------
The session is the protocol object of the client's transport. Bytes go into a sans-IO
:class:`~proxy.http11.RequestParser`; the session pulls events out only when its state says it
is ready for them, which is how pipelined requests wait their turn and how a request body is
read exactly as fast as the origin takes it.

Every change of state goes through :meth:`ClientSession.fire`, which looks the move up in
:data:`proxy.states.TRANSITIONS` and raises on a move the table does not list. Methods are named
after the steps of one request (see the data flow in the docs' architecture page)::

    READING_REQUEST -> CHECKING_POLICY -> [LOOKING_UP_CACHE] -> RESOLVING -> CONNECTING
      -> FORWARDING -> RELAYING_RESPONSE -> READING_REQUEST (keep-alive) or CLOSING -> CLOSED

The steps live where they are explained: CHECKING_POLICY's rules in :mod:`proxy.policy`,
RESOLVING/CONNECTING in :mod:`proxy.dialer`, the cache states in :mod:`proxy.cachestep`,
FORWARDING/RELAYING_RESPONSE in :mod:`proxy.forward`, and tunnels, the proxy's own answers
and every ending in :mod:`proxy.outcomes`, a mixin this class inherits. Callbacks from outside
the client's transport are wrapped by :func:`proxy.guard.guarded`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from minireactor import Deadline, Protocol, Transport

from .dialer import Dialer
from .forward import Exchange
from .guard import guarded
from .http11 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Headers,
    ProtocolError,
    Request,
    RequestParser,
)
from .outcomes import Outcomes
from .policy import max_forwards_reply, target_refusal
from .states import INITIAL_STATE, TRANSITIONS, SessionState, next_state
from .target import Target, has_via_loop, parse_target
from .tunnel import Tunnel
from .upstream import Upstream

if TYPE_CHECKING:
    from .app import ProxyContext
    from .cachestep import BodySender, CachePlan

log = logging.getLogger("proxy.session")
S = SessionState
# Bytes of a pipelined next request we hold while the current one is answered.
PIPELINE_BUFFER_LIMIT = 256 * 1024


class ClientSession(Outcomes, Protocol):
    """The proxy's side of one client connection (the endings are in :class:`Outcomes`)."""

    # Slots, not a __dict__: every open connection, idle tunnels included, holds one session.
    __slots__ = (
        "ctx",
        "reactor",
        "config",
        "state",
        "parser",
        "transport",
        "client",
        "client_eof",
        "request",
        "request_fully_read",
        "target",
        "exchange",
        "tunnel",
        "cache_plan",
        "body_sender",
        "on_state_change",
        "dialer",
        "started",
        "status",
        "result",
        "bytes_sent",
        "response_started",
        "logged",
        "cache_status",
        "deadline",
        "_waiting_for_head",
        "_retried",
    )

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.config = ctx.config
        self.state = INITIAL_STATE
        ctx.stats.moved(None, self.state)
        self.parser = RequestParser(ctx.limits)
        self.transport: Transport | None = None
        self.client = "-"
        self.client_eof = False
        self.request: Request | None = None
        self.request_fully_read = False
        self.target: Target | None = None
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.cache_plan: CachePlan | None = None
        self.body_sender: BodySender | None = None
        self.on_state_change: Callable[[SessionState, str, SessionState], None] | None = None
        # One timeout at a time, whatever the state waits for: the next request, the rest of
        # a head, the origin's first byte or its next bytes (the exchange arms it then).
        self.deadline = Deadline(ctx.reactor)
        self._waiting_for_head = False
        self.dialer: Dialer | None = None
        self._retried = False
        self._begin_request_bookkeeping()

    def _begin_request_bookkeeping(self) -> None:
        self.started = self.reactor.time()
        self.status = 0
        self.result = "NONE"
        self.bytes_sent = 0
        self.response_started = False
        self.logged = False
        self.cache_status: str | None = None

    # -- the one way to change state -----------------------------------------------------------

    def fire(self, trigger: str) -> SessionState:
        """Move to the state :data:`~proxy.states.TRANSITIONS` names for *trigger*."""
        old = self.state
        new = TRANSITIONS.get((old, trigger)) or next_state(old, trigger)  # which raises
        self.state = new
        self.ctx.stats.moved(old, new)
        if self.on_state_change is not None:
            self.on_state_change(old, trigger, new)
        return new

    # -- transport callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        """Start waiting for the first request."""
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = f"{peer[0]}:{peer[1]}"
        self._arm_request_timer()

    @guarded
    def data_received(self, data: bytes) -> None:
        """Feed the parser and let the current state take what it is ready for."""
        self.ctx.stats.bytes_from_clients += len(data)
        self.parser.feed(data)
        # Answers written now (cache hits, pipelined requests) leave in one send.
        transport = self.transport
        assert transport is not None
        transport.cork()
        try:
            self._client_bytes_arrived()
        finally:
            transport.uncork()

    @guarded
    def eof_received(self) -> bool:
        """The client half-closed: finish what is in flight, then close."""
        self.client_eof = True
        self.parser.feed_eof()
        self._client_bytes_arrived()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """Release everything this connection held."""
        self.deadline.close()
        if self.dialer is not None:
            self.dialer.cancel()
            self.dialer = None
        if self.exchange is not None:
            self.exchange.client_lost()
            self.exchange = None
        self.body_sender = None
        if self.request is not None and not self.logged:
            self.result += "_ABORTED"
            self.log_request()
        if self.state is S.CLOSING:
            self.fire("closed")
        elif self.state is not S.CLOSED:
            self.fire("client_gone")
        self.ctx.session_closed(self)

    def pause_writing(self) -> None:
        """The client reads slower than the origin sends: stop reading from the origin."""
        if self.exchange is not None:
            self.exchange.client_paused(True)
        elif self.body_sender is not None:
            self.body_sender.client_paused(True)

    def resume_writing(self) -> None:
        """The client caught up."""
        if self.exchange is not None:
            self.exchange.client_paused(False)
        elif self.body_sender is not None:
            self.body_sender.client_paused(False)

    def _client_bytes_arrived(self) -> None:
        if self.state is S.READING_REQUEST:
            self.read_request()
        elif self.exchange is not None and self.exchange.wants_request_body:
            self.exchange.pump_request_body()
        elif self.parser.buffered > PIPELINE_BUFFER_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    # -- READING_REQUEST -------------------------------------------------------------------------

    def read_request(self) -> None:
        """Pull the next request head out of the parser, if a whole one has arrived."""
        if self.state is not S.READING_REQUEST:
            return
        try:
            event = self.parser.next_event()
            if event is PAUSED:
                # The previous request asked to upgrade and the origin declined: plain HTTP goes on.
                self.parser.resume()
                event = self.parser.next_event()
        except ProtocolError as exc:
            self._cancel_timer()
            self.fire("bad_request")
            self.answer_error(exc.status, exc.message, close=True)
            return
        if event is NEED_DATA:
            if self.parser.buffered and not self._waiting_for_head:
                self._waiting_for_head = True
                self._arm_timer(self.config.head_timeout, self._head_timed_out)
            if self.transport is not None and not self.client_eof:
                self.transport.resume_reading()
            return
        if isinstance(event, ConnectionClosed):
            self._close()
            return
        if not isinstance(event, Request):
            raise RuntimeError(f"unexpected {event!r} while reading a request head")
        self._cancel_timer()
        self._waiting_for_head = False
        self._begin_request_bookkeeping()
        self.request = event
        self.request_fully_read = event.method == "CONNECT"
        self.target = None
        self._retried = False
        self.fire("head_received")
        self.check_policy(event)

    def _arm_request_timer(self) -> None:
        self._waiting_for_head = False
        self._arm_timer(self.config.keepalive_timeout, self._idle_timed_out)

    @guarded
    def _idle_timed_out(self) -> None:
        if self.state is S.READING_REQUEST:
            self.fire("idle_timeout")
            self._close()

    @guarded
    def _head_timed_out(self) -> None:
        if self.state is S.READING_REQUEST:
            self.fire("head_timeout")
            self.request = None
            self.answer_error(408, "the request head did not arrive in time", close=True)

    # -- CHECKING_POLICY -------------------------------------------------------------------------

    def check_policy(self, request: Request) -> None:
        """Decide whether and how to serve *request*, in the order :mod:`proxy.policy` gives."""
        ctx = self.ctx
        # Authentication comes first: CONNECT and the proxy's own pages need it too.
        denial = ctx.auth.refusal(request.headers) if ctx.auth is not None else None
        if denial is not None:
            self._refuse(*denial)
            return
        if has_via_loop(request.headers, self.config.via_pseudonym):
            self._refuse(508, "forwarding loop: this request already passed through us")
            return
        if request.target.startswith("/") or request.target == "*":
            self.fire("local_page")
            ctx.serve_local(self, request)
            return
        try:
            target = parse_target(request.method, request.target)
        except ProtocolError as exc:
            self.fire("denied")
            self.answer_error(exc.status, exc.message)
            return
        self.target = target
        if ctx.is_own_address(target.host, target.port) or target.host == "proxy.local":
            self.fire("local_page")
            ctx.serve_local(self, request)
            return
        refusal = target_refusal(self.config, ctx.blocklist, request, target)
        if refusal is not None:
            self._refuse(*refusal)
            return
        reply = max_forwards_reply(request)
        if reply is not None:
            self.fire("local_page")
            self.answer(
                reply.status,
                reply.body,
                content_type=reply.content_type,
                result="TCP_LOCAL",
                extra=reply.extra,
            )
            return
        if request.method == "CONNECT":
            # Don't read what the client sends next until the tunnel exists.
            assert self.transport is not None
            self.transport.pause_reading()
            self.fire("allowed")
            self.resolve()
            return
        if ctx.cache_step is not None and request.method in ("GET", "HEAD"):
            self.fire("cacheable")
            ctx.cache_step.look_up(self)
            return
        self.find_upstream("allowed")

    def _refuse(self, status: int, detail: str, extra: Headers | None = None) -> None:
        self.fire("denied")
        self.answer_error(status, detail, result="TCP_DENIED", extra=extra)

    # -- RESOLVING and CONNECTING ----------------------------------------------------------------

    def find_upstream(self, trigger: str) -> None:
        """Borrow an idle origin connection, or fire *trigger* (towards RESOLVING) and dial."""
        assert self.target is not None
        upstream = self.ctx.pool.acquire((self.target.host, self.target.port))
        if upstream is not None:
            self.fire("pooled_upstream")
            self.start_exchange(upstream)
            return
        self.fire(trigger)
        self.resolve()

    def resolve(self) -> None:
        """Reach the target (RESOLVING, then CONNECTING) with a :class:`~proxy.dialer.Dialer`."""
        self.dialer = Dialer(self)
        self.dialer.dial()

    def origin_connected(self, sock: socket.socket) -> None:
        """The dialer reached the origin: open the tunnel, or forward the request."""
        assert self.target is not None and self.request is not None
        if self.request.method == "CONNECT":
            self._open_tunnel(sock)
            return
        upstream = Upstream((self.target.host, self.target.port), self.ctx.limits, self.ctx.pool)
        # Set now, not in connection_made (next tick): the request head is written right away.
        upstream.transport = Transport(self.reactor, sock, upstream)
        self.fire("connected")
        self.start_exchange(upstream)

    # -- FORWARDING and RELAYING_RESPONSE (see proxy.forward) ------------------------------------

    def start_exchange(self, upstream: Upstream) -> None:
        """Forward the current request over *upstream* (FORWARDING)."""
        assert self.request is not None and self.target is not None
        plan = self.cache_plan
        if plan is not None:
            plan.request_time = self.ctx.stats.clock()
        self.exchange = Exchange(
            self, upstream, self.request, self.target, plan.conditional if plan else None
        )
        if self.ctx.cache_step is not None:
            self.exchange.on_head = self.ctx.cache_step.on_response_head
        self.exchange.start()

    def retry_on_fresh_connection(self) -> bool:
        """A reused origin connection died before answering: dial a new one, once."""
        if self._retried:
            return False
        self._retried = True
        self.exchange = None
        self.fire("retry_fresh_connection")
        self.resolve()
        return True

    # -- timers ----------------------------------------------------------------------------------

    def _arm_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self.deadline.arm(delay, callback)

    def _cancel_timer(self) -> None:
        self.deadline.disarm()

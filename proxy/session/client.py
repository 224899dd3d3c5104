"""ClientSession: one state machine per accepted client connection, and the steps it drives.

Theory of operation
-------------------
The session is the protocol object of the client's transport, and the conductor of one
connection: the only code that moves its :class:`~proxy.session.states.StateMachine`, and the
one that calls each step in turn. Bytes go into a sans-IO
:class:`~proxy.http11.RequestParser`; the session pulls events out only when its state says it
is ready for them, which is how pipelined requests wait their turn and how a request body is
read exactly as fast as the origin takes it.

The steps know nothing of the state table. Each is built with what it needs and answers with
a value or reports back through a ``Protocol`` of its own module, which this class
implements; on each report the session makes one move of the table and tells the next step
what to do::

    IDLE -> READING_HEAD -> CHECKING_POLICY        policy: PolicyStep.decide -> a value
      -> [LOOKING_UP_CACHE -> WAITING_FOR_CACHE]    cache: CacheStep.look_up -> a value
      -> RESOLVING -> CONNECTING                    dial: Dialer -> DialOwner reports
      -> FORWARDING -> RELAYING_RESPONSE            relay: Exchange -> ExchangeOwner reports
      -> IDLE (keep-alive) or CLOSING -> CLOSED
    CONNECT: ... CONNECTING -> TUNNEL_OPEN          tunnel: Tunnel -> TunnelOwner report
    the proxy's own answers: ANSWERING              local pages: LocalPages.reply_for

The session also owns what belongs to the connection rather than to a step: the one
:class:`~minireactor.Deadline` (the keep-alive wait, the head timeout, the origin's first byte,
the relay's idle check), the one request-done flag (:attr:`ClientSession.request_complete`),
and the access-log record of the request in hand (:class:`RequestLog`). Callbacks that come
from outside the client's transport are wrapped by :func:`~proxy.session.guard.guarded`, so a
bug becomes a 500 (or a reset) for this client alone.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from minireactor import Deadline, TransportLike
from minireactor import Protocol as StreamProtocol
from minireactor.splice import PipePool

from ..accesslog import AccessRecord
from ..cache.ranges import answer_range
from ..cache.store import StoredResponse
from ..config import Config
from ..http11 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    Limits,
    ProtocolError,
    Request,
    RequestParser,
    Response,
)
from ..http11.framing import persists
from ..parent import Hop, Route, connect_head
from ..policy import Forward, LocalReply, OwnPage, PolicyStep, Refusal
from ..replies import error_page, simple_response
from ..stats import Stats
from ..target import Target
from ..tunnel import IdleSweep, Tunnel
from ..upstream import Upstream, UpstreamPool
from .cachestep import (
    SLICE,
    AskingDisk,
    BodySender,
    CachePlan,
    CacheStep,
    Hit,
    Miss,
    OnlyIfCachedMiss,
    Refreshed,
    StaleHit,
    StandIn,
    Wait,
)
from .context import Attach, Network, Scheduler, SessionHost
from .dialer import Dialer, DialError, DialFailure
from .exchange import Exchange, OriginFailure, RelayPlan
from .guard import guarded
from .local import LocalPages
from .revalidate import BackgroundRevalidation
from .states import Observer, SessionState, StateMachine, Trigger

log = logging.getLogger("proxy.session")
S = SessionState
T = Trigger

PIPELINE_BUFFER_LIMIT = 256 * 1024
"""Bytes of a pipelined next request held while the current one is answered."""

# A disk look-up takes milliseconds; one still out after this is a disk in trouble, and the
# request is better served as a miss than held (the memory tier alone answers meanwhile).
DISK_LOOKUP_TIMEOUT = 2.0

_DIAL_TRIGGERS = {
    DialError.NO_ADDRESS: T.RESOLVE_FAILED,
    DialError.FORBIDDEN_ADDRESS: T.DENIED,
    DialError.CONNECT_FAILED: T.CONNECT_FAILED,
    DialError.TIMED_OUT: T.DIAL_TIMEOUT,
}

# What a session holds once its connection is a tunnel: a parser that has seen EOF (feeding it
# raises, it buffers nothing) and an empty header list. Shared, never written to.
SPENT_PARSER = RequestParser()
SPENT_PARSER.feed_eof()
NO_HEADERS = Headers()


@dataclass(frozen=True, slots=True)
class TunnelKit:
    """What opening a tunnel needs: the idle sweep and, where splice works, the pipe pool."""

    sweep: IdleSweep
    pipes: PipePool | None


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Everything one proxy's sessions share; built once by :class:`~proxy.app.ProxyServer`."""

    scheduler: Scheduler
    config: Config
    limits: Limits
    network: Network
    host: SessionHost
    policy: PolicyStep
    pool: UpstreamPool
    stats: Stats
    tunnels: TunnelKit
    local: LocalPages
    cache: CacheStep | None = None
    route: Route = Route()
    observers: tuple[Observer, ...] = ()
    """Told every move of every session, after the live counters' ``moved``, which is always
    first (an observer given here, a trace or a test, must not silence the counters)."""

    def __post_init__(self) -> None:
        if self.stats.moved not in self.observers:
            object.__setattr__(self, "observers", (self.stats.moved, *self.observers))


@dataclass(slots=True)
class RequestLog:
    """What the access log will say of the request in hand; filled in as it is served."""

    started: float
    status: int = 0
    result: str = "NONE"
    bytes_sent: int = 0
    bytes_received: int = 0
    cache_status: str | None = None
    user: str | None = None
    content_type: str | None = None
    response_started: bool = False
    logged: bool = False


class ClientSession(StreamProtocol):
    """The proxy's side of one client connection."""

    # Slots, not a __dict__: every open connection, idle tunnels included, holds one session.
    __slots__ = (
        "ctx",
        "machine",
        "parser",
        "transport",
        "peer",
        "client_eof",
        "request",
        "target",
        "request_complete",
        "log",
        "deadline",
        "dialer",
        "exchange",
        "tunnel",
        "cache_plan",
        "body_sender",
        "retried",
        "hop",
        "progress",
        "_quiet_since",
        "_seen_progress",
    )

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        ctx.stats.opened()
        self.machine = StateMachine(ctx.observers)
        self.parser = RequestParser(ctx.limits)
        self.transport: TransportLike | None = None
        self.peer: tuple[str, int] = ("-", 0)  # the client's address, as the transport gave it
        self.client_eof = False
        self.request: Request | None = None
        self.target: Target | None = None
        self.request_complete = False
        """The one request-done flag: the request's end has been read from the client."""
        self.log = RequestLog(ctx.scheduler.time())
        # One timeout at a time, whatever the state waits for: the next request, the rest of
        # a head, the origin's first byte, or progress of the relay.
        self.deadline = Deadline(ctx.scheduler)
        self.dialer: Dialer | None = None
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.cache_plan: CachePlan | None = None
        self.body_sender: BodySender | None = None
        self.retried = False
        self.hop: Hop | None = None  # where the connection for the request in hand goes
        self.progress = 0  # bytes moved for the request in hand, for the relay's idle check
        self._quiet_since = 0.0
        self._seen_progress = (-1, -1)

    @property
    def state(self) -> SessionState:
        """Where the connection stands."""
        return self.machine.state

    def use(self, ctx: SessionContext) -> None:
        """Serve with *ctx* from now on (a config reload: policy, timeouts, routes)."""
        self.ctx = ctx

    # -- transport callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: TransportLike) -> None:
        """Start waiting for the first request."""
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer
        if self.machine.state is S.CLOSING:
            # Shutdown came between accept and this tick (connection_made is a call_soon):
            # nothing was read, so there is nothing to finish.
            transport.close()
            return
        self._arm_keepalive()

    @guarded
    def data_received(self, data: bytes) -> None:
        """Feed the parser and let the current state take what it is ready for."""
        size = len(data)
        self.ctx.stats.bytes_from_clients += size
        self.log.bytes_received += size  # pipelined bytes count for the request in hand
        self.parser.feed(data)
        transport = self.transport
        assert transport is not None
        # Answers written now (cache hits, pipelined requests) leave in one send.
        transport.cork()
        try:
            self._client_bytes_arrived()
        finally:
            transport.uncork()

    def eof_received(self) -> bool:
        """The client half-closed: finish what is in flight, then close."""
        self.client_eof = True
        self.parser.feed_eof()
        self._client_eof_arrived()
        return True

    @guarded
    def _client_eof_arrived(self) -> None:
        self._client_bytes_arrived()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Release everything this connection held, then end in CLOSED."""
        if self.tunnel is not None:
            # The client went while its tunnel opened (the 200 or the 101's tail failed to
            # send): the notice was addressed to us before the tunnel took the transport
            # over. The tunnel's client end takes it, and tunnel_closed() ends the session.
            self.tunnel.client_end.connection_lost(exc)
            return
        try:
            self.deadline.close()
            if self.dialer is not None:
                self.dialer.cancel()
                self.dialer = None
            if self.exchange is not None:
                self.exchange.abandon()
                self.exchange = None
            self.body_sender = None
            if self.request is not None and not self.log.logged:
                self.log.result += "_ABORTED"
                self._write_log()
            if self.machine.state is S.CLOSING:
                self.machine.fire(T.CLOSED)
            elif self.machine.state is not S.CLOSED:
                self.machine.fire(T.CLIENT_GONE)
        finally:
            # Whatever went wrong above, the server must hear of it: the session holds a
            # --max-conns slot, and a stopping proxy waits for it.
            self.ctx.host.session_closed(self)

    def pause_writing(self) -> None:
        """The client reads slower than we send: stop reading from the origin."""
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
        state = self.machine.state
        if state is S.IDLE or state is S.READING_HEAD:
            self._read_request()
        elif self.exchange is not None and self.exchange.wants_request_body:
            self.exchange.pump_request_body()
        elif self.parser.buffered > PIPELINE_BUFFER_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    # -- IDLE and READING_HEAD -------------------------------------------------------------------

    def _read_request(self) -> None:
        """Pull the next request head out of the parser, if a whole one has arrived."""
        try:
            event = self.parser.next_event()
            if event is PAUSED:
                # The previous request asked to upgrade and the origin declined: plain HTTP goes on.
                self.parser.resume()
                event = self.parser.next_event()
        except ProtocolError as exc:
            self.deadline.disarm()
            self.machine.fire(T.BAD_REQUEST)
            self.answer_error(exc.status, exc.message, close=True)
            return
        if event is NEED_DATA:
            if self.machine.state is S.IDLE and self.parser.head_started:
                self.machine.fire(T.HEAD_STARTED)
                self.deadline.arm(self.ctx.config.head_timeout, self._head_timed_out)
            if self.transport is not None and not self.client_eof:
                self.transport.resume_reading()
            return
        if isinstance(event, ConnectionClosed):
            self.machine.fire(T.CLIENT_DONE)
            self._close()
            return
        if not isinstance(event, Request):
            raise RuntimeError(f"unexpected {event!r} while reading a request head")
        self._begin(event)

    def _begin(self, request: Request) -> None:
        self.deadline.disarm()
        # Bytes counted since the last request was logged are this request's head (and more).
        self.log = RequestLog(self.ctx.scheduler.time(), bytes_received=self.log.bytes_received)
        self.request = request
        self.request_complete = request.method == "CONNECT"  # the rest is the tunnel's
        self.target = None
        self.hop = None  # else a refusal after a forwarded request logs that request's hop
        self.retried = False
        self.progress = 0
        self.machine.fire(T.HEAD_RECEIVED)
        self._check_policy(request)

    def _arm_keepalive(self) -> None:
        self.deadline.arm(self.ctx.config.keepalive_timeout, self._idle_timed_out)

    @guarded
    def _idle_timed_out(self) -> None:
        if self.machine.state is S.IDLE:
            self.machine.fire(T.IDLE_TIMEOUT)
            self._close()

    @guarded
    def _head_timed_out(self) -> None:
        if self.machine.state is S.READING_HEAD:
            self.machine.fire(T.HEAD_TIMEOUT)
            self.answer_error(408, "the request head did not arrive in time", close=True)

    # -- CHECKING_POLICY -------------------------------------------------------------------------

    def _check_policy(self, request: Request) -> None:
        policy = self.ctx.policy
        if policy.auth is not None:
            who = policy.authenticate(request, self.peer[0])
            if isinstance(who, Refusal):
                self._refuse(who)
                return
            self.log.user = who
        decision = policy.decide(request, self._local_host)
        if isinstance(decision, Forward):  # the usual case first
            self._forward(decision)
        elif isinstance(decision, Refusal):
            self._refuse(decision)
        elif isinstance(decision, OwnPage):
            self.machine.fire(T.LOCAL_PAGE)
            reply = self.ctx.local.reply_for(decision.request, self.log.user)
            if isinstance(reply, Refusal):
                self.answer_error(reply.status, reply.detail, result=reply.result)
            else:
                self._answer_reply(reply)
        elif isinstance(decision, LocalReply):
            self.machine.fire(T.LOCAL_PAGE)
            self._answer_reply(decision)
        else:  # OpenTunnel
            self.target = decision.target
            assert self.transport is not None
            self.transport.pause_reading()  # nothing the client sends is read before the tunnel
            self.machine.fire(T.ALLOWED)
            self._dial()

    def _local_host(self) -> str | None:
        """The address the client connected to (asked only for the proxy's own pages)."""
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        return str(sockname[0]).lower() if sockname else None

    def _forward(self, decision: Forward) -> None:
        request = self.request = decision.request
        target = self.target = decision.target
        cache = self.ctx.cache
        if cache is not None and request.method in ("GET", "HEAD"):
            self.machine.fire(T.CACHEABLE)
            self.cache_plan = CachePlan(target.url, self)
            self._look_up_cache()
        else:
            self._find_upstream(T.ALLOWED)

    def _refuse(self, refusal: Refusal) -> None:
        self.machine.fire(T.DENIED)
        self.answer_error(
            refusal.status, refusal.detail, result=refusal.result, extra=refusal.extra
        )

    # -- LOOKING_UP_CACHE, WAITING_FOR_CACHE -----------------------------------------------------

    def _look_up_cache(self) -> None:
        cache, plan, request = self.ctx.cache, self.cache_plan, self.request
        assert cache is not None and plan is not None and request is not None
        outcome = cache.look_up(plan, request)
        if isinstance(outcome, Hit):
            self.machine.fire(T.FRESH_HIT)
            self._serve_stored(outcome.entry, outcome.status, outcome.cache_status, outcome.result)
        elif isinstance(outcome, StaleHit):
            self.machine.fire(T.STALE_HIT)
            if outcome.revalidate is not None:
                self._revalidate_in_background(outcome.answer.entry, outcome.revalidate)
            answer = outcome.answer
            self._serve_stored(answer.entry, answer.status, answer.cache_status, "TCP_STALE_HIT")
        elif isinstance(outcome, AskingDisk):
            # Still LOOKING_UP_CACHE: cache_lookup_ready follows, unless the disk thread is
            # wedged (a lock, a slow disk) or closed; then the request goes on as a miss.
            self.deadline.arm(DISK_LOOKUP_TIMEOUT, self._disk_lookup_timed_out)
        elif isinstance(outcome, Wait):
            self.machine.fire(T.FETCH_IN_PROGRESS)
        elif isinstance(outcome, OnlyIfCachedMiss):
            self.machine.fire(T.ONLY_IF_CACHED_MISS)
            self.log.cache_status = outcome.cache_status
            extra = Headers([("Cache-Status", outcome.cache_status)])
            self.answer_error(
                504, "only-if-cached: the cache holds no usable response", extra=extra
            )
        else:
            assert isinstance(outcome, Miss)
            self.log.cache_status = outcome.cache_status
            self.log.result = outcome.result
            self._find_upstream(T.MISS)

    def _revalidate_in_background(self, entry: StoredResponse, conditional: Headers) -> None:
        request, target = self.request, self.target
        assert request is not None and target is not None
        BackgroundRevalidation(self.ctx, request, target, entry, conditional).start()

    @guarded
    def cache_wait_over(self, expired: bool) -> None:
        """The identical fetch finished, or the wait expired: look the request up again."""
        if self.machine.state is S.WAITING_FOR_CACHE:
            self.machine.fire(T.WAIT_EXPIRED if expired else T.FETCH_FINISHED)
            self._look_up_cache()

    @guarded
    def cache_lookup_ready(self) -> None:
        """The disk tier answered: look up again, the memory store now holds what it found."""
        if self.machine.state is S.LOOKING_UP_CACHE:
            self.deadline.disarm()
            self._look_up_cache()

    @guarded
    def _disk_lookup_timed_out(self) -> None:
        cache, plan = self.ctx.cache, self.cache_plan
        if self.machine.state is S.LOOKING_UP_CACHE and cache is not None and plan is not None:
            cache.abandon_disk_lookup(plan)
            self._look_up_cache()  # the disk was asked once: now a memory miss, so MISS

    def _stand_in(self) -> bool:
        """The origin failed before its head: serve the stale copy if it may (stale-if-error)."""
        cache, request = self.ctx.cache, self.request
        if cache is None or request is None:
            return False
        answer = cache.stand_in(self.cache_plan, request)
        if answer is None:
            return False
        self.machine.fire(T.STALE_ON_ERROR)
        self._serve_stored(answer.entry, answer.status, answer.cache_status, "TCP_REFRESH_FAIL_OLD")
        return True

    # -- RESOLVING and CONNECTING ----------------------------------------------------------------

    def _find_upstream(self, trigger: Trigger) -> None:
        """Borrow an idle connection to the first hop, or fire *trigger* and dial it."""
        target = self.target
        assert target is not None
        hop = self.hop = self.ctx.route.hop_for(target)
        upstream = self.ctx.pool.acquire(hop)
        if upstream is not None:
            self.machine.fire(T.POOLED_UPSTREAM)
            self._start_exchange(upstream)
            return
        self.machine.fire(trigger)
        self._dial()

    def _dial(self) -> None:
        target, request = self.target, self.request
        assert target is not None and request is not None
        ctx = self.ctx
        hop = self.hop = ctx.route.hop_for(target)
        tunnel_head = None
        if hop.parent is not None and request.method == "CONNECT":
            host = f"[{target.host}]" if ":" in target.host else target.host
            tunnel_head = connect_head(
                f"{host}:{target.port}", hop.parent, ctx.config.via_pseudonym
            )
        self.dialer = Dialer(ctx.scheduler, ctx.network, ctx.config, self)
        self.dialer.dial(hop.host, hop.port, parent=hop.parent, tunnel_head=tunnel_head)

    def dial_resolved(self) -> None:
        """The name resolved (RESOLVING -> CONNECTING)."""
        self.machine.fire(T.RESOLVED)

    def dial_connected(self, attach: Attach, early: bytes) -> None:
        """The first hop accepted: open the tunnel, or forward the request."""
        self.dialer = None
        request, hop = self.request, self.hop
        assert request is not None and hop is not None
        if request.method == "CONNECT":
            upstream_transport = attach(StreamProtocol())
            self.machine.fire(T.TUNNEL_CONNECTED)
            self.log.status = 200
            self.log.result = "TCP_TUNNEL"
            self.send_to_client(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._start_tunnel(upstream_transport, self.parser.take_trailing_data(), early)
            return
        ctx = self.ctx
        upstream = Upstream(hop, ctx.limits, ctx.pool)
        # Set now, not in connection_made (next tick): the request head is written right away.
        upstream.transport = attach(upstream)
        self.machine.fire(T.CONNECTED)
        self._start_exchange(upstream)

    def dial_failed(self, failure: DialFailure) -> None:
        """The origin cannot be reached: a stale copy stands in, or say why."""
        self.dialer = None
        if failure.error is not DialError.FORBIDDEN_ADDRESS and self._stand_in():
            return
        self.machine.fire(_DIAL_TRIGGERS[failure.error])
        self.answer_error(failure.status, failure.detail, result=failure.result)

    # -- FORWARDING and RELAYING_RESPONSE (the Exchange's reports) -------------------------------

    def _start_exchange(self, upstream: Upstream) -> None:
        request, target, plan = self.request, self.target, self.cache_plan
        assert request is not None and target is not None
        if plan is not None and self.ctx.cache is not None:
            plan.request_time = self.ctx.cache.clock()
        config = self.ctx.config
        assert self.transport is not None
        self.exchange = Exchange(
            self,
            self.transport,
            upstream,
            request,
            target,
            via_pseudonym=config.via_pseudonym,
            conditional=plan.conditional if plan is not None else None,
            parent=self.hop.parent if self.hop is not None else None,
        )
        self.deadline.arm(config.first_byte_timeout, self._first_byte_timed_out)
        self.exchange.start()

    def next_body_event(self) -> Data | EndOfMessage | None:
        """Hand the exchange the next piece of the request body (None: wait for bytes)."""
        event = self.parser.next_event()
        if isinstance(event, Data):
            self.progress += len(event.data)
            if self.machine.state is S.FORWARDING:
                # An upload in progress is not an origin that fails to answer.
                self.deadline.arm(self.ctx.config.first_byte_timeout, self._first_byte_timed_out)
            return event
        if isinstance(event, EndOfMessage):
            self.request_complete = True
            return event
        if event is NEED_DATA:
            if self.transport is not None and not self.client_eof:
                self.transport.resume_reading()
            return None
        raise RuntimeError(f"unexpected {event!r} in a request body")

    def pause_client_reading(self) -> None:
        """The origin is slow to take the body: stop reading from the client."""
        if self.transport is not None:
            self.transport.pause_reading()

    def response_head(self, response: Response) -> RelayPlan | None:
        """The origin's final head arrived: relay it, or serve the stored response it refreshed."""
        request, target = self.request, self.target
        assert request is not None and target is not None
        cache_status = self.log.cache_status
        cache = self.ctx.cache
        plan = RelayPlan(None, cache_status)
        if cache is not None:
            outcome = cache.on_response_head(
                self.cache_plan, request, target, response, cache_status
            )
            if isinstance(outcome, Refreshed):
                self.machine.fire(T.NOT_MODIFIED)
                self.deadline.disarm()
                exchange, self.exchange = self.exchange, None
                assert exchange is not None
                exchange.discard_response()
                self._serve_stored(
                    outcome.entry, outcome.status, outcome.cache_status, outcome.result
                )
                return None
            if isinstance(outcome, StandIn):
                # A 5xx, and the stale copy may stand in: the error's body is not read.
                self.machine.fire(T.STALE_ON_ERROR)
                self.deadline.disarm()
                exchange, self.exchange = self.exchange, None
                assert exchange is not None
                exchange.abandon()
                answer = outcome.answer
                cache.stood_in()
                result = "TCP_REFRESH_FAIL_OLD"
                self._serve_stored(answer.entry, answer.status, answer.cache_status, result)
                return None
            if outcome.result is not None:
                self.log.result = outcome.result
            plan = RelayPlan(outcome.writer, outcome.cache_status)
        self.machine.fire(T.RESPONSE_HEAD)
        self.log.status = response.status
        self.log.content_type = response.headers.get("content-type")
        if self.log.result == "NONE":
            self.log.result = "TCP_MISS"
        self._watch_relay()
        return plan

    def response_finished(self, client_reusable: bool) -> None:
        """The response was relayed whole."""
        self.exchange = None
        self.finish_request(client_reusable)

    def origin_failed(self, failure: OriginFailure) -> None:
        """The origin broke: retry, answer with an error page, or reset a relay under way."""
        self.exchange = None
        if self.machine.state is S.FORWARDING:
            if failure.retryable and not self.retried:
                # A reused connection the origin had closed just as we sent: dial a new one, once.
                self.retried = True
                self.deadline.disarm()
                self.machine.fire(T.RETRY)
                self._dial()
                return
            if self._stand_in():
                return
            self.machine.fire(T.UPSTREAM_FAILED)
            self.answer_error(failure.status, failure.detail, close=not self.request_complete)
            return
        self.machine.fire(T.UPSTREAM_FAILED)
        self._reset_midway("origin closed mid-response")

    def client_sent_garbage(self, error: ProtocolError) -> None:
        """The request body was malformed: nothing more of it reaches the origin."""
        self.exchange = None
        self.machine.fire(T.BAD_REQUEST)
        if self.machine.state is S.ANSWERING:
            self.answer_error(error.status, error.message, close=True)
        else:
            self._reset_midway("malformed request body")

    def upgraded(self, upstream: TransportLike, early_down: bytes) -> None:
        """The origin switched protocols: the connection becomes a tunnel."""
        self.exchange = None
        self.machine.fire(T.UPGRADED)
        self.log.result = "TCP_UPGRADE"
        self._start_tunnel(upstream, self.parser.take_trailing_data(), early_down)

    def _reset_midway(self, why: str) -> None:
        # Too late for an error page: the client must not take a cut message for a whole one.
        self.log.result += "_ABORTED"
        self._write_log()
        if self.transport is not None:
            self.transport.uncork()  # what the client was promised so far goes out first
            self.transport.abort(ConnectionAbortedError(why))

    @guarded
    def _first_byte_timed_out(self) -> None:
        if self.machine.state is not S.FORWARDING or self.exchange is None:
            return
        self.exchange.abandon()
        self.exchange = None
        if self._stand_in():
            return
        self.machine.fire(T.FIRST_BYTE_TIMEOUT)
        timeout = self.ctx.config.first_byte_timeout
        hop = self.hop
        who = hop.parent.label if hop is not None and hop.parent is not None else "the origin"
        self.answer_error(
            504, f"{who} sent no response within {timeout:g} s", close=not self.request_complete
        )

    def _watch_relay(self) -> None:
        # Progress is bytes sent to the client or drained by it: a slow reader pausing the
        # origin is not a stalled relay, but a relay where neither moves is. Checked four
        # times per idle timeout, so a stall is cut between one and 1.25 timeouts after it
        # began, never two.
        self._seen_progress = (-1, -1)
        self._quiet_since = self.ctx.scheduler.time()
        self.deadline.arm(self.ctx.config.idle_timeout / 4, self._check_relay)

    @guarded
    def _check_relay(self) -> None:
        if self.machine.state is not S.RELAYING_RESPONSE or self.exchange is None:
            return
        transport = self.transport
        progress = (self.progress, transport.get_write_buffer_size() if transport else 0)
        now = self.ctx.scheduler.time()
        idle_timeout = self.ctx.config.idle_timeout
        if progress != self._seen_progress:
            self._seen_progress = progress
            self._quiet_since = now
        elif now - self._quiet_since >= idle_timeout:
            self.exchange.abandon()
            self.exchange = None
            self.machine.fire(T.RELAY_STALLED)
            self._reset_midway("the response stopped moving for the idle timeout")
            return
        left = self._quiet_since + idle_timeout - now
        self.deadline.arm(min(idle_timeout / 4, max(left, 0.001)), self._check_relay)

    # -- TUNNEL_OPEN -----------------------------------------------------------------------------

    def _start_tunnel(
        self, upstream: TransportLike, early_up: bytes, early_down: bytes = b""
    ) -> None:
        assert self.transport is not None
        kit = self.ctx.tunnels
        self.tunnel = Tunnel(self.transport, upstream, owner=self, sweep=kit.sweep, pipes=kit.pipes)
        self._shed_http_state()
        self.tunnel.start(early_up, early_down)

    def _shed_http_state(self) -> None:
        # From here on the connection carries opaque bytes: what served HTTP only costs memory,
        # and 10,000 idle tunnels multiply it. The parser (its buffers) goes; the request
        # becomes what the access-log line needs: the method and version interned, the URL as
        # it will be logged (so the parsed target can go too), and a shared empty header list.
        self.parser = SPENT_PARSER
        self.hop = None
        self.deadline.close()  # the tunnel's idle sweep takes over: no heap entry left behind
        request = self.request
        if request is None:
            return
        url = self._logged_url()
        self.request = Request(
            sys.intern(request.method), url, sys.intern(request.version), NO_HEADERS
        )
        self.target = None

    @guarded
    def tunnel_closed(self, tunnel: Tunnel, exc: BaseException | None) -> None:
        """Both sides of the tunnel are closed: count its bytes, log the request, end."""
        self.log.bytes_sent += tunnel.bytes_down
        self.log.bytes_received += tunnel.bytes_up
        stats = self.ctx.stats
        stats.bytes_to_clients += tunnel.bytes_down
        stats.bytes_from_clients += tunnel.bytes_up
        self.tunnel = None
        self._write_log()
        self.machine.fire(T.TUNNEL_CLOSED if self.machine.state is S.TUNNEL_OPEN else T.CLOSED)
        self.ctx.host.session_closed(self)

    # -- SERVING_FROM_CACHE ----------------------------------------------------------------------

    def _serve_stored(
        self, entry: StoredResponse, status: int, cache_status: str, result: str
    ) -> None:
        request, cache = self.request, self.ctx.cache
        assert request is not None and cache is not None
        reusable = self._finish_reading_request() and self.client_keeps_alive()
        if not reusable:
            connection = "close"
        else:
            connection = "keep-alive" if request.version == "HTTP/1.0" else ""
        record = self.log
        record.status = status
        record.result = result
        record.cache_status = cache_status
        record.content_type = entry.headers.get("content-type")
        body: bytes | memoryview = entry.body
        ranged = None
        if status == 200 and "range" in request.headers:
            ranged = answer_range(
                request.method, request.headers, status, entry.headers, entry.body
            )
        if ranged is not None and ranged.status == 206:
            record.status = 206
            self.send_to_client(cache.range_head(entry, ranged, cache_status, connection))
            body = ranged.body
        elif ranged is not None:  # 416: the range is not in the stored body
            record.status = 416
            record.content_type = "text/html; charset=utf-8"  # the page sent, not the entry
            page = error_page(416, "the requested range is not in the resource")
            extra = ranged.fields.copy()
            extra.add("Cache-Status", cache_status)
            self.send_to_client(simple_response(416, page, close=not reusable, extra=extra))
            self.finish_request(reusable)
            return
        else:
            self.send_to_client(cache.head_for(entry, status, cache_status, connection))
        if request.method == "HEAD" or status == 304 or not body:
            self.finish_request(reusable)
            return
        if len(body) <= SLICE:
            self.send_to_client(body)  # small bodies need no pacing
            self.finish_request(reusable)
            return
        self.body_sender = BodySender(self, body, reusable)
        self.body_sender.send_more()

    @property
    def client_closing(self) -> bool:
        """Whether the client connection is closing."""
        return self.transport is None or self.transport.is_closing

    def stored_body_sent(self, reusable: bool) -> None:
        """A paced stored body went out whole."""
        if self.body_sender is None:
            return
        self.body_sender = None
        self.finish_request(reusable)

    # -- ANSWERING: responses the proxy writes itself --------------------------------------------

    def _answer_reply(self, reply: LocalReply) -> None:
        self.answer(
            reply.status,
            reply.body,
            content_type=reply.content_type,
            result="TCP_LOCAL",
            extra=reply.extra,
        )

    def answer(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "text/html; charset=utf-8",
        close: bool = False,
        result: str = "NONE",
        extra: Headers | None = None,
    ) -> None:
        """Write a complete local response and finish the request (ANSWERING)."""
        request = self.request
        reusable = (
            not close
            and request is not None
            and request.method != "CONNECT"
            and self._finish_reading_request()
            and self.client_keeps_alive()
        )
        self.log.status = status
        self.log.result = result
        self.log.content_type = content_type
        head_only = request is not None and request.method == "HEAD"
        self.send_to_client(
            simple_response(
                status,
                body,
                content_type=content_type,
                close=not reusable,
                head_only=head_only,
                extra=extra,
            )
        )
        self.finish_request(reusable)

    def answer_error(
        self,
        status: int,
        detail: str,
        *,
        close: bool = False,
        result: str = "NONE",
        extra: Headers | None = None,
    ) -> None:
        """Answer with a short error page naming *detail*; it is logged too."""
        if status >= 500 or status == 408:
            log.info("%s %s: %d %s", self._client_label(), self._request_label(), status, detail)
        self.answer(status, error_page(status, detail), close=close, result=result, extra=extra)

    def _finish_reading_request(self) -> bool:
        """Consume what is left of the current request; False if it has not all arrived.

        Idempotent: once the request's end was seen (here or by the exchange forwarding its
        body) it returns True without touching the parser, which may already hold the next
        pipelined request.
        """
        while not self.request_complete:
            try:
                event = self.parser.next_event()
            except ProtocolError:
                return False
            if isinstance(event, EndOfMessage):
                self.request_complete = True
            elif not isinstance(event, Data):
                return False
        return True

    def client_keeps_alive(self) -> bool:
        """Whether the client connection may carry another request after this one."""
        request = self.request
        # After the client's EOF, requests it pipelined before it are still answered.
        return (
            request is not None
            and persists(request.version, request.connection)
            and (not self.client_eof or self.parser.buffered > 0)
            and not self.ctx.host.shutting_down
        )

    def send_to_client(self, data: bytes | memoryview) -> None:
        """Write response bytes to the client, counting them."""
        transport = self.transport
        if transport is not None and data:
            size = len(data)
            self.log.response_started = True
            self.log.bytes_sent += size
            self.progress += size
            self.ctx.stats.bytes_to_clients += size
            transport.write(data)

    # -- the end of a request --------------------------------------------------------------------

    def finish_request(self, reusable: bool) -> None:
        """Log the request, then wait for the next one (keep-alive) or close."""
        self._write_log()
        if reusable:
            self.machine.fire(T.RESPONSE_DONE)
            self.request = None
            # A new record at once: a 400 or 408 before the next head is this connection's
            # next line, not a write into the one just logged (which would be skipped).
            self.log = RequestLog(self.ctx.scheduler.time())
            self._arm_keepalive()
            assert self.transport is not None
            self.transport.resume_reading()
            if self.parser.buffered:
                self.ctx.scheduler.call_soon(self._continue_pipeline)
        else:
            self.machine.fire(T.RESPONSE_DONE_CLOSE)
            self._close()

    @guarded
    def _continue_pipeline(self) -> None:
        if self.machine.state is S.IDLE:
            self._read_request()

    def _write_log(self) -> None:
        """Hand the finished request to the access log (once) and release its cache plan."""
        entry = self.log
        if entry.logged:
            return
        entry.logged = True
        plan, self.cache_plan = self.cache_plan, None
        ctx = self.ctx
        if plan is not None and ctx.cache is not None:
            ctx.cache.request_ended(plan)
        request, hop = self.request, self.hop
        access_log = ctx.stats.access_log
        referer = user_agent = None
        if request is not None and access_log is not None and access_log.wants_request_fields:
            referer = request.headers.get("referer")
            user_agent = request.headers.get("user-agent")
        if hop is None or entry.result.startswith(("TCP_HIT", "TCP_IMS_HIT", "TCP_LOCAL")):
            hierarchy, peer = "HIER_NONE", None
        else:
            hierarchy = "FIRSTUP_PARENT" if hop.parent is not None else "HIER_DIRECT"
            peer = hop.host
        stats = ctx.stats
        stats.finished(
            AccessRecord(
                stats.clock(),
                ctx.scheduler.time() - entry.started,
                self.peer[0],
                self.peer[1],
                request.method if request is not None else "-",
                self._logged_url(),
                entry.status,
                entry.bytes_sent,
                entry.bytes_received,
                entry.result,
                request.version if request is not None else "-",
                entry.user,
                hierarchy,
                peer,
                entry.content_type,
                referer,
                user_agent,
            )
        )
        entry.bytes_received = 0

    def _logged_url(self) -> str:
        request, target = self.request, self.target
        if target is None:
            return request.target if request is not None else "-"
        if request is not None and request.method == "CONNECT":
            return f"{target.host}:{target.port}"
        return target.url

    def _client_label(self) -> str:
        host, port = self.peer[0], self.peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _request_label(self) -> str:
        if self.request is None:
            return "-"
        return f"{self.request.method} {self.request.target[:200]}"

    def _close(self) -> None:
        self.deadline.disarm()
        if self.transport is not None:
            self.transport.close()

    # -- the end of a connection -----------------------------------------------------------------

    def shutdown(self) -> None:
        """The proxy is stopping: close now if idle; a request in hand finishes, then closes."""
        if self.machine.state is S.IDLE and not self.parser.buffered:
            self.machine.fire(T.SHUTDOWN)
            self._close()

    def abort(self) -> None:
        """Drop the connection now (the end of the shutdown grace period)."""
        if self.tunnel is not None:
            self.tunnel.abort()
        elif self.transport is not None:
            self.transport.abort()

    def internal_error(self, exc: BaseException) -> None:
        """A bug surfaced while serving this client: 500 if we can, else reset."""
        who, what = self._client_label(), self._request_label()
        log.error("internal error serving %s %s", who, what, exc_info=exc)
        if self.dialer is not None:
            self.dialer.cancel()
            self.dialer = None
        if self.exchange is not None:
            self.exchange.abandon()
            self.exchange = None
        self.body_sender = None
        state = self.machine.state
        if state is S.CLOSED or state is S.CLOSING:
            return
        self.machine.fire(T.INTERNAL_ERROR)
        if state is S.TUNNEL_OPEN:
            if self.tunnel is not None:
                self.tunnel.abort()  # its report of the close ends the session
            else:
                self.machine.fire(T.CLOSED)  # the bug came with that report: end here
                self.ctx.host.session_closed(self)
            return
        transport = self.transport
        if transport is None:
            return
        if not self.log.response_started:
            self.log.status = 500
            self.send_to_client(
                simple_response(500, error_page(500, "internal error in the proxy"), close=True)
            )
            self._write_log()
            self._close()
        else:
            self._write_log()
            transport.abort(exc)

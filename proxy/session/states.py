"""The client session's states, its triggers, and the one table of moves between them.

Theory of operation
-------------------
A proxy connection is a small machine: it waits for a request, reads its head, decides what to
do with it, perhaps answers from the cache, perhaps resolves and connects to an origin, relays
the answer, and then waits for the next request or closes. Written as nested callbacks, that
machine hides in the code; here it is data, in the manner of h11's ``_state.py``:

* :class:`SessionState` names every state a connection can be in, waiting ones and passing
  ones alike. Nothing about "where the connection stands" is kept anywhere else.
* :class:`Trigger` names every event that moves a connection.
* :data:`TABLE` gives, for each state, the triggers it accepts and where each one leads. A
  state's whole future is one block of the table; a student asking "what can happen while we
  wait for the origin's answer?" reads the ``FORWARDING`` block and nothing else.
* :class:`StateMachine` holds one connection's state and is the only code that changes it:
  :meth:`StateMachine.fire` looks the move up and raises :class:`IllegalTransition` for a move
  the table does not list, so a stray callback cannot leave a connection in a state nobody
  designed (the session turns the exception into a 500, or a reset if the answer had begun).

The same table feeds the tests (every state reachable, every state with an exit, every move
made by some scripted path), the docs' diagram and notebook 07's, both drawn from it by
:mod:`proxy.session.diagram`, so the picture cannot drift from the code.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType


class SessionState(enum.Enum):
    """Where one client connection stands."""

    IDLE = "waiting for a request"
    READING_HEAD = "reading a request head"
    CHECKING_POLICY = "checking policy"
    LOOKING_UP_CACHE = "looking up the cache"
    WAITING_FOR_CACHE = "waiting for an identical fetch"
    SERVING_FROM_CACHE = "serving from the cache"
    RESOLVING = "resolving"
    CONNECTING = "connecting"
    FORWARDING = "forwarding"
    RELAYING_RESPONSE = "relaying the response"
    TUNNEL_OPEN = "tunnel open"
    ANSWERING = "answering"
    CLOSING = "closing"
    CLOSED = "closed"

    # Members are singletons compared by identity, so identity hashing is exact. Enum's own
    # __hash__ is Python code, and a request hashes states and triggers two dozen times (the
    # table, the live counters): this halves what a move costs (see the performance page).
    __hash__ = object.__hash__


class Trigger(enum.Enum):
    """What happened: the name of one move in the table."""

    HEAD_STARTED = "the first bytes of a head arrived"
    HEAD_RECEIVED = "a whole request head arrived"
    BAD_REQUEST = "the client sent something that is not HTTP/1.1"
    HEAD_TIMEOUT = "the head did not arrive in time"
    IDLE_TIMEOUT = "no request came within the keep-alive timeout"
    CLIENT_DONE = "the client closed between requests"
    SHUTDOWN = "the proxy is stopping"
    DENIED = "the policy refuses the request"
    LOCAL_PAGE = "the request is for the proxy itself"
    CACHEABLE = "a GET or HEAD the cache may answer"
    ALLOWED = "the request may go to its origin"
    POOLED_UPSTREAM = "an idle connection to the origin was reused"
    FRESH_HIT = "the cache holds a fresh response"
    STALE_HIT = "a stale response may be served while it is revalidated in the background"
    ONLY_IF_CACHED_MISS = "only-if-cached, and nothing usable is stored"
    FETCH_IN_PROGRESS = "an identical request is at the origin"
    FETCH_FINISHED = "the identical request finished"
    WAIT_EXPIRED = "waited long enough for the identical request"
    MISS = "the cache cannot answer"
    RESOLVED = "the name resolved"
    RESOLVE_FAILED = "the name did not resolve"
    DIAL_TIMEOUT = "resolving and connecting took too long"
    CONNECTED = "the origin accepted the connection"
    TUNNEL_CONNECTED = "the CONNECT target accepted the connection"
    CONNECT_FAILED = "the origin refused the connection"
    RESPONSE_HEAD = "the origin's response head arrived"
    NOT_MODIFIED = "the origin confirmed the stored response"
    RETRY = "a reused origin connection died before answering"
    UPSTREAM_FAILED = "the origin failed"
    STALE_ON_ERROR = "the origin failed, and a stored response may stand in"
    FIRST_BYTE_TIMEOUT = "the origin sent no response in time"
    RELAY_STALLED = "no byte moved for the idle timeout"
    UPGRADED = "the origin switched protocols"
    RESPONSE_DONE = "the response is complete; the connection stays open"
    RESPONSE_DONE_CLOSE = "the response is complete; the connection closes"
    TUNNEL_CLOSED = "both sides of the tunnel closed"
    CLIENT_GONE = "the client connection was lost"
    INTERNAL_ERROR = "a bug surfaced while serving this connection"
    CLOSED = "the client connection is closed"

    __hash__ = object.__hash__  # as SessionState's


class IllegalTransition(RuntimeError):
    """A trigger fired in a state where the table does not allow it."""

    def __init__(self, state: SessionState, trigger: Trigger) -> None:
        super().__init__(f"trigger {trigger.name} is not allowed in state {state.name}")
        self.state = state
        self.trigger = trigger


S = SessionState
T = Trigger

TABLE: Mapping[SessionState, Mapping[Trigger, SessionState]] = MappingProxyType(
    {
        S.IDLE: {
            T.HEAD_STARTED: S.READING_HEAD,
            T.HEAD_RECEIVED: S.CHECKING_POLICY,
            T.BAD_REQUEST: S.ANSWERING,
            T.IDLE_TIMEOUT: S.CLOSING,
            T.CLIENT_DONE: S.CLOSING,
            T.SHUTDOWN: S.CLOSING,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.READING_HEAD: {
            T.HEAD_RECEIVED: S.CHECKING_POLICY,
            T.BAD_REQUEST: S.ANSWERING,
            T.HEAD_TIMEOUT: S.ANSWERING,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.CHECKING_POLICY: {
            T.DENIED: S.ANSWERING,
            T.LOCAL_PAGE: S.ANSWERING,
            T.CACHEABLE: S.LOOKING_UP_CACHE,
            T.ALLOWED: S.RESOLVING,
            T.POOLED_UPSTREAM: S.FORWARDING,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.LOOKING_UP_CACHE: {
            T.FRESH_HIT: S.SERVING_FROM_CACHE,
            T.STALE_HIT: S.SERVING_FROM_CACHE,
            T.ONLY_IF_CACHED_MISS: S.ANSWERING,
            T.FETCH_IN_PROGRESS: S.WAITING_FOR_CACHE,
            T.MISS: S.RESOLVING,
            T.POOLED_UPSTREAM: S.FORWARDING,
            T.CLIENT_GONE: S.CLOSED,  # while the disk tier looks
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.WAITING_FOR_CACHE: {
            T.FETCH_FINISHED: S.LOOKING_UP_CACHE,
            T.WAIT_EXPIRED: S.LOOKING_UP_CACHE,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.SERVING_FROM_CACHE: {
            T.RESPONSE_DONE: S.IDLE,
            T.RESPONSE_DONE_CLOSE: S.CLOSING,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.RESOLVING: {
            T.RESOLVED: S.CONNECTING,
            T.RESOLVE_FAILED: S.ANSWERING,
            T.DENIED: S.ANSWERING,
            T.DIAL_TIMEOUT: S.ANSWERING,
            T.STALE_ON_ERROR: S.SERVING_FROM_CACHE,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.CONNECTING: {
            T.CONNECTED: S.FORWARDING,
            T.TUNNEL_CONNECTED: S.TUNNEL_OPEN,
            T.CONNECT_FAILED: S.ANSWERING,
            T.DIAL_TIMEOUT: S.ANSWERING,
            T.STALE_ON_ERROR: S.SERVING_FROM_CACHE,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.FORWARDING: {
            T.RESPONSE_HEAD: S.RELAYING_RESPONSE,
            T.NOT_MODIFIED: S.SERVING_FROM_CACHE,
            T.RETRY: S.RESOLVING,
            T.UPSTREAM_FAILED: S.ANSWERING,
            T.FIRST_BYTE_TIMEOUT: S.ANSWERING,
            T.STALE_ON_ERROR: S.SERVING_FROM_CACHE,
            T.BAD_REQUEST: S.ANSWERING,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.RELAYING_RESPONSE: {
            T.RESPONSE_DONE: S.IDLE,
            T.RESPONSE_DONE_CLOSE: S.CLOSING,
            T.UPGRADED: S.TUNNEL_OPEN,
            T.UPSTREAM_FAILED: S.CLOSING,
            T.RELAY_STALLED: S.CLOSING,
            T.BAD_REQUEST: S.CLOSING,
            T.CLIENT_GONE: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.TUNNEL_OPEN: {
            T.TUNNEL_CLOSED: S.CLOSED,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.ANSWERING: {
            T.RESPONSE_DONE: S.IDLE,
            T.RESPONSE_DONE_CLOSE: S.CLOSING,
            T.INTERNAL_ERROR: S.CLOSING,
        },
        S.CLOSING: {
            T.CLOSED: S.CLOSED,
        },
        S.CLOSED: {},
    }
)
"""For each state, the triggers it accepts and the state each leads to: the single source."""

INITIAL_STATE = S.IDLE
"""Every accepted connection starts here."""

FINAL_STATE = S.CLOSED
"""Where every connection ends; no trigger leaves it."""

_FLAT: dict[tuple[SessionState, Trigger], SessionState] = {
    (state, trigger): target for state, moves in TABLE.items() for trigger, target in moves.items()
}
TRANSITIONS: Mapping[tuple[SessionState, Trigger], SessionState] = MappingProxyType(_FLAT)
"""The same table flattened: ``(state, trigger) -> next state``."""


def next_state(state: SessionState, trigger: Trigger) -> SessionState:
    """The state *trigger* leads to from *state*; raise :class:`IllegalTransition` if none."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise IllegalTransition(state, trigger) from None


Observer = Callable[[SessionState, Trigger, SessionState], None]
"""Told ``(old, trigger, new)`` after every move."""


class StateMachine:
    """One connection's state: the only place it changes, always by a move of the table."""

    __slots__ = ("state", "_observers")

    def __init__(self, observers: tuple[Observer, ...] = ()) -> None:
        self.state = INITIAL_STATE
        # Shared by every connection of a proxy (10,000 idle tunnels hold 10,000 machines):
        # the tuple and its bound methods are built once, not per connection.
        self._observers = observers

    def watch(self, observer: Observer) -> None:
        """Call *observer* after every move from now on (tests, notebooks, the trace)."""
        self._observers = (*self._observers, observer)

    def fire(self, trigger: Trigger) -> SessionState:
        """Make the move *trigger* names from the current state and return the new state."""
        old = self.state
        new = _FLAT.get((old, trigger))  # the plain dict behind TRANSITIONS: one C call
        if new is None:
            raise IllegalTransition(old, trigger)
        self.state = new
        for observer in self._observers:
            observer(old, trigger, new)
        return new

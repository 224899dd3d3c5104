"""The client session's states and the one table of moves between them.

Theory of operation
-------------------
A proxy connection is a small machine: it reads a request, decides what to do with it, perhaps
answers from the cache, perhaps resolves and connects to an origin, relays the answer, and then
reads the next request or closes. Written as nested callbacks, that machine hides in the code;
here it is data. :class:`SessionState` names every state, and :data:`TRANSITIONS` maps
``(state, trigger)`` to the next state. :meth:`proxy.session.ClientSession.fire` is the only way
to change state and it consults this table, so a move the table does not list raises
:class:`IllegalTransition` instead of silently leaving the connection in a state nobody
designed (the connection then gets a 500, or is closed if the answer had begun).

The same table feeds the tests, the notebooks and the state diagram in the docs, which are drawn
from it at build time, so the picture cannot drift from the code (the habit of h11's
``_state.py``).
"""

from __future__ import annotations

import enum


class SessionState(enum.Enum):
    """Where one client connection stands."""

    READING_REQUEST = "reading request"
    CHECKING_POLICY = "checking policy"
    LOOKING_UP_CACHE = "looking up cache"
    WAITING_FOR_CACHE = "waiting for cache"
    SERVING_FROM_CACHE = "serving from cache"
    RESOLVING = "resolving"
    CONNECTING = "connecting"
    FORWARDING = "forwarding"
    RELAYING_RESPONSE = "relaying response"
    TUNNEL_OPEN = "tunnel open"
    ANSWERING = "answering"
    CLOSING = "closing"
    CLOSED = "closed"

    # Members are singletons, so identity hashing is exact; Enum's own __hash__ is Python code,
    # and states are hashed several times per request (the table, the counters).
    __hash__ = object.__hash__


class IllegalTransition(RuntimeError):
    """A trigger fired in a state where the table does not allow it."""

    def __init__(self, state: SessionState, trigger: str) -> None:
        super().__init__(f"trigger {trigger!r} is not allowed in state {state.name}")
        self.state = state
        self.trigger = trigger


S = SessionState

_MOVES: list[tuple[SessionState, str, SessionState]] = [
    (S.READING_REQUEST, "head_received", S.CHECKING_POLICY),
    (S.READING_REQUEST, "bad_request", S.ANSWERING),
    (S.READING_REQUEST, "head_timeout", S.ANSWERING),
    (S.READING_REQUEST, "idle_timeout", S.CLOSING),
    (S.CHECKING_POLICY, "denied", S.ANSWERING),
    (S.CHECKING_POLICY, "local_page", S.ANSWERING),
    (S.CHECKING_POLICY, "cacheable", S.LOOKING_UP_CACHE),
    (S.CHECKING_POLICY, "allowed", S.RESOLVING),
    (S.CHECKING_POLICY, "pooled_upstream", S.FORWARDING),
    (S.LOOKING_UP_CACHE, "fresh_hit", S.SERVING_FROM_CACHE),
    (S.LOOKING_UP_CACHE, "only_if_cached_miss", S.ANSWERING),
    (S.LOOKING_UP_CACHE, "fetch_in_progress", S.WAITING_FOR_CACHE),
    (S.LOOKING_UP_CACHE, "miss", S.RESOLVING),
    (S.LOOKING_UP_CACHE, "pooled_upstream", S.FORWARDING),
    (S.WAITING_FOR_CACHE, "fetch_finished", S.LOOKING_UP_CACHE),
    (S.WAITING_FOR_CACHE, "wait_expired", S.LOOKING_UP_CACHE),
    (S.RESOLVING, "resolved", S.CONNECTING),
    (S.RESOLVING, "resolve_failed", S.ANSWERING),
    (S.CONNECTING, "connected", S.FORWARDING),
    (S.CONNECTING, "tunnel_connected", S.TUNNEL_OPEN),
    (S.CONNECTING, "connect_failed", S.ANSWERING),
    (S.FORWARDING, "response_head", S.RELAYING_RESPONSE),
    (S.FORWARDING, "not_modified", S.SERVING_FROM_CACHE),
    (S.FORWARDING, "retry_fresh_connection", S.RESOLVING),
    (S.FORWARDING, "upstream_failed", S.ANSWERING),
    (S.RELAYING_RESPONSE, "response_done", S.READING_REQUEST),
    (S.RELAYING_RESPONSE, "response_done_close", S.CLOSING),
    (S.RELAYING_RESPONSE, "upgraded", S.TUNNEL_OPEN),
    (S.RELAYING_RESPONSE, "upstream_failed", S.CLOSING),
    (S.SERVING_FROM_CACHE, "response_done", S.READING_REQUEST),
    (S.SERVING_FROM_CACHE, "response_done_close", S.CLOSING),
    (S.ANSWERING, "response_done", S.READING_REQUEST),
    (S.ANSWERING, "response_done_close", S.CLOSING),
    (S.TUNNEL_OPEN, "tunnel_closed", S.CLOSING),
    (S.CLOSING, "closed", S.CLOSED),
]

# Any live connection can lose its client, hit an internal error, or be told to shut down.
_FROM_ANYWHERE = [("client_gone", S.CLOSED), ("internal_error", S.CLOSING), ("shutdown", S.CLOSING)]

TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (state, trigger): target for state, trigger, target in _MOVES
}
"""``(state, trigger) -> next state``: the single source for code, tests and docs."""
for _state in SessionState:
    if _state is not S.CLOSED:
        for _trigger, _target in _FROM_ANYWHERE:
            TRANSITIONS.setdefault((_state, _trigger), _target)

INITIAL_STATE = S.READING_REQUEST
"""Every accepted connection starts here."""


def next_state(state: SessionState, trigger: str) -> SessionState:
    """Look up the move for *trigger* in *state*; raise :class:`IllegalTransition` if none."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise IllegalTransition(state, trigger) from None


def triggers() -> list[str]:
    """Every trigger the table knows, sorted (for docs and tests)."""
    return sorted({trigger for _, trigger in TRANSITIONS})

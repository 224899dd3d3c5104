"""Checkers for rung 7, the session state machine.

Theory of operation
-------------------
Everything here runs the project's own session on the fake world of ``tests/support.py``
(virtual time, fake transports, no socket), so the checks are exact and take milliseconds.
``07-predict-story`` plays the question's story on a fresh :class:`FakeWorld` and compares the
moves each request made with the predicted trigger names. ``07-audit`` compares the student's
graph check with :func:`audit_table` (forwards search from the initial state, backwards search
from the final one) on the real table, on hand-made broken tables and on a few hundred random
ones. ``07-add-state`` reads the student's new table by *names* (the student makes new enums):
every old move is kept or redirected into ``AUTHENTICATING``, no request reaches the policy
without it, the new state has the exits every waiting state has, the whole table still passes
the audit, and the project's diagram code draws it with the new state above the policy.
``07-retry-504`` hands the student's script a fresh world and compares the moves it produced
with the target path, then checks the world agrees (two origin connections, a 504 written to
the client, thirty virtual seconds gone), so the path was lived, not fired by hand.
"""

from __future__ import annotations

import collections
import enum
import random
from collections.abc import Hashable, Mapping
from typing import Any

from .checks import Answer, Wrong, exercise
from .harness import import_support

GET = "GET http://origin.test/page HTTP/1.1\r\nHost: origin.test\r\n\r\n"
CACHEABLE_200 = (
    b'HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: "v1"\r\n'
    b"Content-Length: 6\r\n\r\nhello\n"
)
NOT_MODIFIED = b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\n\r\n"


def _trigger_names() -> set[str]:
    from proxy.session.states import Trigger

    return {trigger.name for trigger in Trigger}


def _story() -> dict[str, list[str]]:
    """The question's story, on a fresh fake world: each part's triggers."""
    world = import_support().FakeWorld()
    first = world.client()
    first.send(GET)
    world.origin().feed(CACHEABLE_200)
    first.moves.clear()
    first.send(GET)
    second_request = first.triggers()
    first.moves.clear()
    world.clock.advance(61.0)
    silence = first.triggers()
    other = world.client()
    other.send(GET)
    world.origin().feed(NOT_MODIFIED)
    return {
        "predicted_second": second_request,
        "predicted_silence": silence,
        "predicted_third": other.triggers(),
        "connections": [str(len(world.network.connections))],
    }


_STORY_HINTS = {
    "predicted_second": "the copy is fresh (max-age=60, a moment old): read the "
    "LOOKING_UP_CACHE and SERVING_FROM_CACHE blocks of TABLE",
    "predicted_silence": "the first client sends nothing for 61 s, longer than "
    "keepalive_timeout (60 s): what does IDLE do then, and how does a closing connection end?",
    "predicted_third": "two questions: is a 61-second-old copy with max-age=60 still fresh, and "
    "what can a cache do with a stale copy that carries an ETag? Is the pooled origin "
    "connection still there after 61 s, with upstream_idle_timeout 30 s?",
}


@exercise("07-predict-story", "Predict the moves of a cached story", kind="predict")
def predict_story(answer: Answer) -> str:
    predicted = {name: answer.value(name) for name in _STORY_HINTS}
    connections = answer.number("predicted_origin_connections")
    known = _trigger_names()
    for name, value in predicted.items():
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise Wrong(f"`{name}` should be a list of trigger names, like ['HEAD_RECEIVED', ...]")
        unknown = [v for v in value if v not in known]
        if unknown:
            raise Wrong(f"`{name}` holds {unknown[0]!r}, which is not a Trigger name")
    truth = _story()
    for name, hint in _STORY_HINTS.items():
        if list(predicted[name]) != truth[name]:
            raise Wrong(f"`{name}` is not what the session did", hint)
    if connections != int(truth["connections"][0]):
        raise Wrong(
            f"the proxy did not open {connections:g} origin connection(s) in all",
            "request 2 needed none; request 3 found no pooled connection left",
        )
    return (
        "right: a fresh hit never leaves the cache, the keep-alive timeout closed the first "
        "client, and the stale copy was revalidated (304) on a new origin connection"
    )


def audit_table(
    table: Mapping[Any, Mapping[Any, Any]], initial: Any, final: Any
) -> tuple[set[Any], set[Any]]:
    """The states *initial* cannot reach, and the states that cannot reach *final*."""
    seen, todo = {initial}, [initial]
    while todo:
        for target in table.get(todo.pop(), {}).values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    predecessors: dict[Any, set[Any]] = collections.defaultdict(set)
    for state, row in table.items():
        for target in row.values():
            predecessors[target].add(state)
    closes, todo = {final}, [final]
    while todo:
        for state in predecessors[todo.pop()]:
            if state not in closes:
                closes.add(state)
                todo.append(state)
    states = set(table)
    return states - seen, states - closes


def _table(name: str, rows: dict[str, dict[str, str]]) -> tuple[dict[Any, Any], Any, Any]:
    """A table over a new enum from ``{state: {trigger: target}}`` written with names."""
    states = enum.Enum(name, list(rows))  # type: ignore[misc]
    triggers = enum.Enum(  # type: ignore[misc]
        name + "Trigger", sorted({t for row in rows.values() for t in row}) or ["NOTHING"]
    )
    table = {states[s]: {triggers[t]: states[n] for t, n in row.items()} for s, row in rows.items()}
    return table, states[next(iter(rows))], states[list(rows)[-1]]


_BROKEN = {
    "a trap: B and C lead only to each other": {
        "A": {"go": "B", "quit": "Z"},
        "B": {"go": "C"},
        "C": {"back": "B"},
        "Z": {},
    },
    "a state nothing leads to": {"A": {"quit": "Z"}, "D": {"quit": "Z"}, "Z": {}},
    "a dead end that is not the final state": {"A": {"go": "B", "quit": "Z"}, "B": {}, "Z": {}},
    "a state that only loops on itself": {"A": {"go": "B", "quit": "Z"}, "B": {"go": "B"}, "Z": {}},
    "a trap behind a state that can still close": {
        "A": {"go": "B"},
        "B": {"quit": "Z", "go": "C"},
        "C": {"go": "D"},
        "D": {"go": "C"},
        "Z": {},
    },
    "a final state nobody reaches": {"A": {"go": "B"}, "B": {"back": "A"}, "Z": {}},
}


def _random_rows(rng: random.Random) -> dict[str, dict[str, str]]:
    names = [chr(ord("A") + i) for i in range(rng.randint(2, 9))] + ["Z"]
    rows: dict[str, dict[str, str]] = {}
    for state in names[:-1]:
        rows[state] = {f"t{k}": rng.choice(names) for k in range(rng.choice([0, 1, 1, 2, 3]))}
    rows["Z"] = {}
    return rows


def _as_set(value: Any, what: str) -> set[Any]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise Wrong(f"{what} should be a set of states, not {type(value).__name__}")
    return set(value)


def _names(states: set[Any]) -> list[str]:
    return sorted(getattr(state, "name", str(state)) for state in states)


@exercise("07-audit", "Check a state table as a graph", kind="implement")
def audit(answer: Answer) -> str:
    check_table = answer.function("audit")
    from proxy.session.states import FINAL_STATE, INITIAL_STATE, TABLE

    cases: list[tuple[str, dict[Any, Any], Any, Any]] = [
        ("the session's TABLE", dict(TABLE), INITIAL_STATE, FINAL_STATE)
    ]
    for index, (what, rows) in enumerate(_BROKEN.items()):
        cases.append((what, *_table(f"Broken{index}", rows)))
    rng = random.Random(7)
    for index in range(300):
        cases.append(("a random table", *_table(f"Random{index}", _random_rows(rng))))
    for what, table, initial, final in cases:
        result = check_table(table, initial, final)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise Wrong(
                "audit() should return a pair: (unreachable states, states that cannot close)"
            )
        unreachable = _as_set(result[0], "the first member (unreachable states)")
        stuck = _as_set(result[1], "the second member (states that cannot close)")
        want_unreachable, want_stuck = audit_table(table, initial, final)
        rows = {s.name: {t.name: n.name for t, n in row.items()} for s, row in table.items()}
        shown = "" if what == "the session's TABLE" or len(rows) > 6 else f" {rows}"
        if unreachable != want_unreachable:
            raise Wrong(
                f"on {what}{shown}: unreachable should be {_names(want_unreachable)}, "
                f"not {_names(unreachable)}",
                "search forwards from the initial state along the moves, and keep what you saw",
            )
        if stuck != want_stuck:
            raise Wrong(
                f"on {what}{shown}: the states that cannot close are {_names(want_stuck)}, "
                f"not {_names(stuck)}",
                "a state with moves can still be stuck (a loop with no way out): search "
                "backwards from the final state, following the moves in reverse",
            )
    return (
        f"audit() agreed on the session's table (nothing unreachable, nothing stuck), on "
        f"{len(_BROKEN)} broken tables (traps, dead ends, orphans) and on 300 random ones"
    )


AUTH = "AUTHENTICATING"


def _reachable_names(rows: Mapping[str, Mapping[str, str]], start: str, skip: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for target in rows.get(todo.pop(), {}).values():
            if target not in seen and target != skip:
                seen.add(target)
                todo.append(target)
    return seen


@exercise("07-add-state", "Add an AUTHENTICATING state to a copy of the table", kind="design")
def add_state(answer: Answer) -> str:
    make = answer.function("authenticating_table")
    from proxy.session import diagram
    from proxy.session.states import TABLE

    table = make()
    if not isinstance(table, Mapping):
        raise Wrong("authenticating_table() should return a dict: state -> {trigger: state}")
    for state, row in table.items():
        if not (isinstance(state, Hashable) and hasattr(state, "name")):
            raise Wrong(f"{state!r} has no `.name`: make the states members of a new Enum")
        if not isinstance(row, Mapping):
            raise Wrong(f"the row of {state.name} should be a dict {{trigger: state}}")
        for trigger, target in row.items():
            if not hasattr(trigger, "name"):
                raise Wrong(f"{trigger!r} has no `.name`: make the triggers members of an Enum")
            if target not in table:
                raise Wrong(
                    f"{state.name} --{trigger.name}--> {getattr(target, 'name', target)}: "
                    "that target is not a state of your table",
                    "build every row from your new enum, not from SessionState",
                )
    by_name = {state.name: state for state in table}
    old_names = {state.name for state in TABLE}
    if AUTH not in by_name:
        raise Wrong(f"your table has no state named {AUTH}")
    missing = sorted(old_names - set(by_name))
    extra = sorted(set(by_name) - old_names - {AUTH})
    if missing or extra:
        raise Wrong(
            f"the states should be the old ones plus {AUTH}: missing {missing}, extra {extra}"
        )
    rows = {s.name: {t.name: n.name for t, n in row.items()} for s, row in table.items()}
    for state, row in TABLE.items():
        for trigger, target in row.items():
            got = rows[state.name].get(trigger.name)
            move = f"{state.name} --{trigger.name}--> {target.name}"
            if got is None:
                raise Wrong(f"the move {move} was dropped", "copy every old move first")
            allowed = (target.name, AUTH) if target.name == "CHECKING_POLICY" else (target.name,)
            if got not in allowed:
                raise Wrong(
                    f"the move {move} now leads to {got}",
                    f"keep every other move: only a move into CHECKING_POLICY may now lead to "
                    f"{AUTH}",
                )
        for trigger_name, target_name in rows[state.name].items():
            if trigger_name not in {t.name for t in row} and target_name != AUTH:
                raise Wrong(
                    f"{state.name} gained the move --{trigger_name}--> {target_name}",
                    f"old states need new moves only into {AUTH}",
                )
    if "CHECKING_POLICY" in _reachable_names(rows, "IDLE", skip=AUTH):
        raise Wrong(
            f"a request can still reach CHECKING_POLICY without passing through {AUTH}",
            "every move that brought a whole request head to the policy must now lead to "
            f"{AUTH} instead (look for HEAD_RECEIVED in every row)",
        )
    exits = rows[AUTH]
    if "CHECKING_POLICY" not in exits.values():
        raise Wrong(f"{AUTH} has no move to CHECKING_POLICY: accepted credentials go nowhere")
    if "ANSWERING" not in exits.values():
        raise Wrong(f"{AUTH} has no move to ANSWERING: who answers 407 to wrong credentials?")
    for trigger_name, target_name in (("CLIENT_GONE", "CLOSED"), ("INTERNAL_ERROR", "CLOSING")):
        if exits.get(trigger_name) != target_name:
            raise Wrong(
                f"{AUTH} lacks {trigger_name} -> {target_name}",
                "checking a password takes time (a thread, rung 4): the client may leave, and "
                "a bug may surface, as in every other state that waits",
            )
    unreachable, stuck = audit_table(table, by_name["IDLE"], by_name["CLOSED"])
    if unreachable or stuck:
        raise Wrong(
            f"the table fails the audit: unreachable {_names(unreachable)}, stuck {_names(stuck)}"
        )
    picture = diagram.svg(table, by_name["IDLE"])
    if f">{AUTH}<" not in picture:
        raise Wrong(f"diagram.svg() of your table draws no box for {AUTH}")
    drawn, _ = diagram.split_background(table)
    rank, _ = diagram.ranks(drawn, list(table), by_name["IDLE"])
    if not rank[by_name[AUTH]] < rank[by_name["CHECKING_POLICY"]]:
        raise Wrong(f"the diagram does not draw {AUTH} above CHECKING_POLICY")
    new_moves = len(exits) + sum(1 for s in TABLE for t in rows[s.name] if rows[s.name][t] == AUTH)
    return (
        f"{AUTH} sits between every request head and the policy ({new_moves} moves into or out "
        f"of it), every state still reaches CLOSED, and the diagram draws it in row "
        f"{rank[by_name[AUTH]]}, above CHECKING_POLICY"
    )


RETRY_TARGET = [
    "HEAD_RECEIVED",
    "ALLOWED",
    "RESOLVED",
    "CONNECTED",
    "RESPONSE_HEAD",
    "RESPONSE_DONE",
    "HEAD_RECEIVED",
    "POOLED_UPSTREAM",
    "RETRY",
    "RESOLVED",
    "CONNECTED",
    "FIRST_BYTE_TIMEOUT",
    "RESPONSE_DONE",
]


def _last_status(sent: bytes) -> str:
    start = sent.rfind(b"HTTP/1.1 ")
    return sent[start:].split(b"\r\n", 1)[0].decode("latin-1") if start >= 0 else ""


@exercise(
    "07-retry-504", "Drive a session through a retry into a 504", kind="implement", core=False
)
def retry_504(answer: Answer) -> str:
    script = answer.function("retry_then_504")
    world: Any = import_support().FakeWorld(cache_enabled=False, first_byte_timeout=30.0)
    started = world.clock.now
    client = script(world)
    if not hasattr(client, "moves") or id(getattr(client, "world", None)) != id(world):
        raise Wrong("retry_then_504(world) should return the client it made with world.client()")
    got = client.triggers()
    for index, (want, made) in enumerate(zip(RETRY_TARGET, got, strict=False)):
        if want != made:
            raise Wrong(
                f"move {index + 1} should be {want}, your session fired {made} "
                f"(the moves so far: {got[:index]})",
                "a RETRY needs a request on a *pooled* origin connection that dies before it "
                "answers (origin.lose()); the 504 needs the new origin to stay silent while "
                "world.clock.advance() moves time",
            )
    if len(got) != len(RETRY_TARGET):
        extra = got[len(RETRY_TARGET) :]
        more = f"went on: {extra}" if extra else "stopped early"
        raise Wrong(f"your session made {len(got)} moves instead of {len(RETRY_TARGET)}: it {more}")
    status = _last_status(bytes(client.transport.sent))
    if not status:
        raise Wrong("the client got no answer at all; the story ends with a 504 written to it")
    if not status.startswith("HTTP/1.1 504"):
        raise Wrong(f"the last answer the client got was {status!r}, not a 504")
    connections = world.network.connections
    if len(connections) != 2 or not connections[0].closed:
        raise Wrong(
            f"the world saw {len(connections)} origin connection(s); a retry needs two, the "
            "first one dead",
            "drive the session only through client.send, origin.feed/lose and clock.advance: "
            "never call session.machine.fire yourself",
        )
    waited = world.clock.now - started
    if waited < 30.0:
        raise Wrong(f"only {waited:g} virtual seconds passed: a first-byte timeout takes 30")
    return (
        f"the session served one request, reused its pooled connection, retried on a fresh one "
        f"when it died, and answered 504 after {waited:g} virtual seconds: all {len(got)} moves"
    )

"""The session state machine on its own: the table, and the real session driven without sockets.

The first part checks the table as a graph: every state reachable, every state with an exit
and a way to CLOSED, and every move the table lacks refused. The second part drives the real
:class:`~proxy.session.client.ClientSession`, with its real steps, in the fake world of
``tests/support.py`` (virtual time, fake transports, scripted origins): each entry of
:data:`PATHS` is one story a connection can live, with the moves it must make. The last test
runs every story and checks that together they make every move of the table, so the table has
no row the code never takes, and the code takes no move the table lacks (it would raise).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support import FakeClient, FakeWorld

from proxy.session.cachestep import SLICE
from proxy.session.states import (
    FINAL_STATE,
    INITIAL_STATE,
    TABLE,
    TRANSITIONS,
    IllegalTransition,
    SessionState,
    StateMachine,
    Trigger,
)

S = SessionState
T = Trigger
REPO = Path(__file__).resolve().parent.parent

GET = "GET http://origin.test/page HTTP/1.1\r\nHost: origin.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# -- the table as a graph ------------------------------------------------------------------------


def reachable(start: SessionState) -> set[SessionState]:
    seen, todo = {start}, [start]
    while todo:
        for target in TABLE[todo.pop()].values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_state_has_a_block_in_the_table() -> None:
    assert set(TABLE) == set(SessionState)


def test_every_state_is_reachable_from_the_initial_state() -> None:
    assert reachable(INITIAL_STATE) == set(SessionState)


def test_every_state_but_the_last_has_an_exit_and_a_way_to_the_end() -> None:
    for state in SessionState:
        if state is FINAL_STATE:
            assert TABLE[state] == {}, "CLOSED is final"
        else:
            assert TABLE[state], f"{state.name} has no exit"
            assert FINAL_STATE in reachable(state), f"{state.name} can never close"


def test_every_trigger_moves_something() -> None:
    assert {trigger for _, trigger in TRANSITIONS} == set(Trigger)


ILLEGAL = [(s, t) for s in SessionState for t in Trigger if (s, t) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL, ids=lambda x: x.name)
def test_a_move_the_table_lacks_raises_and_changes_nothing(
    state: SessionState, trigger: Trigger
) -> None:
    machine = StateMachine()
    machine.state = state
    with pytest.raises(IllegalTransition) as caught:
        machine.fire(trigger)
    assert caught.value.state is state and caught.value.trigger is trigger
    assert machine.state is state


def test_observers_hear_every_move_in_order() -> None:
    heard: list[tuple[SessionState, Trigger, SessionState]] = []
    machine = StateMachine((lambda *move: heard.append(move),))
    machine.fire(T.HEAD_STARTED)
    machine.fire(T.HEAD_TIMEOUT)
    assert heard == [
        (S.IDLE, T.HEAD_STARTED, S.READING_HEAD),
        (S.READING_HEAD, T.HEAD_TIMEOUT, S.ANSWERING),
    ]


def _source(module: str) -> str:
    return (REPO / module).read_text(encoding="utf-8")


def test_only_the_state_machine_changes_a_state_and_only_the_session_fires() -> None:
    """Read from the code: who assigns a state, and who makes moves."""
    assigners, firers = set(), set()
    for path in sorted((REPO / "proxy").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in targets):
                    assigners.add(path.relative_to(REPO).as_posix())
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "fire"
            ):
                firers.add(path.relative_to(REPO).as_posix())
    assert assigners == {"proxy/session/states.py"}
    assert firers == {"proxy/session/client.py"}


def test_every_trigger_the_session_names_is_in_the_table() -> None:
    tree = ast.parse(_source("proxy/session/client.py"))
    named = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "T"
    }
    assert named, "the session names its triggers as T.NAME"
    assert named <= {trigger.name for _, trigger in TRANSITIONS}


# -- stories: the real session in a fake world ---------------------------------------------------

Story = Callable[[], list[FakeClient]]
PATHS: dict[str, Story] = {}


def story(function: Story) -> Story:
    PATHS[function.__name__] = function
    return function


def moves_of(client: FakeClient) -> list[tuple[str, str, str]]:
    return [(old.name, trigger.name, new.name) for old, trigger, new in client.moves]  # type: ignore[attr-defined]


def answer(world: FakeWorld, body: bytes = b"hello", index: int = -1) -> None:
    world.origin(index).feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@story
def get_relay() -> list[FakeClient]:
    """A GET forwarded to a new origin connection and relayed back (cache off)."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send(GET)  # the look-up and the connect complete on the ticks that follow
    assert client.state is S.FORWARDING
    assert world.origin().take().startswith(b"GET /page HTTP/1.1\r\n")
    answer(world)
    assert client.path() == [
        "IDLE",
        "CHECKING_POLICY",
        "RESOLVING",
        "CONNECTING",
        "FORWARDING",
        "RELAYING_RESPONSE",
        "IDLE",
    ]
    assert client.transport.take().endswith(b"\r\n\r\nhello")
    return [client]


@story
def get_relay_through_the_cache() -> list[FakeClient]:
    """With the cache on, a GET first asks it, and the miss goes on to the origin."""
    world = FakeWorld()
    client = world.client()
    client.send(GET)
    world.clock.run()
    answer(world)
    assert client.triggers()[:3] == ["HEAD_RECEIVED", "CACHEABLE", "MISS"]
    assert client.state is S.IDLE
    return [client]


@story
def keep_alive_reuse() -> list[FakeClient]:
    """A second request on the same connection reuses the pooled origin connection."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send(GET)
    world.clock.run()
    answer(world)
    client.moves.clear()
    client.send(GET)
    assert len(world.network.connections) == 1, "no second dial"
    answer(world)
    assert client.triggers() == [
        "HEAD_RECEIVED",
        "POOLED_UPSTREAM",
        "RESPONSE_HEAD",
        "RESPONSE_DONE",
    ]
    return [client]


@story
def keep_alive_reuse_through_the_cache() -> list[FakeClient]:
    """An uncacheable answer, asked again: the cache misses and the pooled connection is used."""
    world = FakeWorld()
    client = world.client()
    for _ in range(2):
        client.send(GET)
        world.clock.run()
        world.origin().feed(
            b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\nok"
        )
    assert ("LOOKING_UP_CACHE", "POOLED_UPSTREAM", "FORWARDING") in moves_of(client)
    return [client]


@story
def pipelined_pair() -> list[FakeClient]:
    """Two requests in one send: the second waits its turn and is answered after the first."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send(GET + GET.replace("/page", "/other"))
    world.clock.run()
    origin = world.origin()
    assert origin.take().startswith(b"GET /page "), "only the first request is forwarded"
    answer(world, b"first")
    world.clock.run()  # the pipelined request is picked up on the next tick
    assert origin.take().startswith(b"GET /other ")
    answer(world, b"second")
    sent = client.transport.take()
    assert sent.index(b"first") < sent.index(b"second")
    assert client.triggers().count("RESPONSE_DONE") == 2
    return [client]


@story
def connect_tunnel() -> list[FakeClient]:
    """CONNECT: 200, opaque bytes both ways, and one move to CLOSED when both sides are gone."""
    world = FakeWorld()
    client = world.client()
    client.send("CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    world.clock.run()
    assert client.state is S.TUNNEL_OPEN
    assert client.transport.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    origin = world.origin()
    client.send(b"\x16\x03\x01 client hello")
    assert origin.take() == b"\x16\x03\x01 client hello"
    origin.feed(b"\x16\x03\x03 server hello")
    assert client.transport.take() == b"\x16\x03\x03 server hello"
    origin.lose()
    world.clock.run()
    assert client.state is S.CLOSED
    assert moves_of(client)[-1] == ("TUNNEL_OPEN", "TUNNEL_CLOSED", "CLOSED")
    assert world.stats.results["TCP_TUNNEL"] == 1
    return [client]


@story
def client_lost_as_the_tunnel_opens() -> list[FakeClient]:
    """The 200 of a CONNECT fails to send (the client reset): the tunnel still closes both
    sides, and the server hears that the session ended, so its --max-conns slot is free."""
    world = FakeWorld()
    client = world.client()
    client.transport.fail_next_write = ConnectionResetError("reset by peer")
    client.send("CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    world.clock.run()
    assert client.state is S.CLOSED
    assert world.origin().closed, "the origin side of the tunnel is closed too"
    assert world.host.closed == [client.session]
    assert moves_of(client)[-1] == ("TUNNEL_OPEN", "TUNNEL_CLOSED", "CLOSED")
    assert "INTERNAL_ERROR" not in client.triggers()
    return [client]


@story
def cache_hit() -> list[FakeClient]:
    """A stored fresh response is served without asking the origin."""
    world = FakeWorld()
    first = world.client()
    first.send(GET)
    world.clock.run()
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello"
    )
    second = world.client()
    second.send(GET)
    assert second.triggers() == ["HEAD_RECEIVED", "CACHEABLE", "FRESH_HIT", "RESPONSE_DONE"]
    assert second.transport.take().endswith(b"hello")
    assert len(world.network.connections) == 1
    return [first, second]


@story
def forbidden_403() -> list[FakeClient]:
    """The blocklist refuses: 403 with the rule named, and the connection stays open."""
    world = FakeWorld(blocklist="origin.test\n")
    client = world.client()
    client.send(GET)
    assert client.triggers() == ["HEAD_RECEIVED", "DENIED", "RESPONSE_DONE"]
    assert client.transport.status_line() == "HTTP/1.1 403 Forbidden"
    assert b"blocked by rule" in client.transport.sent
    return [client]


@story
def keep_alive_refusals_are_logged_as_their_own() -> list[FakeClient]:
    """After a forwarded request, a 403 is logged with no hop, and a 400 is logged at all."""
    world = FakeWorld(blocklist="blocked.test\n", hosts={"blocked.test": "127.0.0.1"})
    client = world.client()
    client.send(GET)
    answer(world)
    client.transport.take()
    client.send("GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
    assert client.transport.status_line() == "HTTP/1.1 403 Forbidden"
    client.transport.take()
    client.send("NOT A REQUEST\r\n\r\n")
    assert client.transport.status_line() == "HTTP/1.1 400 Bad Request"
    world.clock.run()
    logged = [(r.status, r.hierarchy, r.peer) for r in world.stats.recent]
    assert logged == [
        (200, "HIER_DIRECT", "origin.test"),
        (403, "HIER_NONE", None),
        (400, "HIER_NONE", None),
    ]
    return [client]


@story
def forbidden_with_close() -> list[FakeClient]:
    """A refusal to a client that asked to close: the answer, then the close."""
    world = FakeWorld(blocklist="origin.test\n")
    client = world.client()
    client.send(GET.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"))
    world.clock.run()
    assert client.path()[-3:] == ["ANSWERING", "CLOSING", "CLOSED"]
    return [client]


@story
def head_timeout_408() -> list[FakeClient]:
    """Half a head, then silence: 408 after the head timeout, then the close."""
    world = FakeWorld(head_timeout=5.0)
    client = world.client()
    client.send("GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n")
    assert client.state is S.READING_HEAD, "a head that ends at a line end has still begun"
    world.clock.advance(4.9)
    assert client.state is S.READING_HEAD
    world.clock.advance(0.2)
    assert client.transport.status_line() == "HTTP/1.1 408 Request Timeout"
    assert client.path() == ["IDLE", "READING_HEAD", "ANSWERING", "CLOSING", "CLOSED"]
    return [client]


@story
def head_in_pieces() -> list[FakeClient]:
    """A head that arrives a piece at a time is read when its last piece comes."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    for piece in ("GET http://origin.te", "st/page HTTP/1.1\r\nHost: or", "igin.test\r\n", "\r\n"):
        client.send(piece)
    assert client.triggers()[:2] == ["HEAD_STARTED", "HEAD_RECEIVED"]
    assert world.origin().take().startswith(b"GET /page HTTP/1.1\r\n")
    return [client]


@story
def first_byte_504() -> list[FakeClient]:
    """The origin takes the request and never answers: 504 after the first-byte timeout."""
    world = FakeWorld(cache_enabled=False, first_byte_timeout=30.0)
    client = world.client()
    client.send(GET)
    world.clock.run()
    world.clock.advance(31)
    assert client.transport.status_line() == "HTTP/1.1 504 Gateway Timeout"
    assert ("FORWARDING", "FIRST_BYTE_TIMEOUT", "ANSWERING") in moves_of(client)
    assert client.state is S.IDLE and world.origin().closed
    return [client]


@story
def client_gone_mid_relay() -> list[FakeClient]:
    """The client vanishes while the body streams: the origin connection is dropped too."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send(GET)
    world.clock.run()
    origin = world.origin()
    origin.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
    assert client.state is S.RELAYING_RESPONSE
    client.transport.lose(ConnectionResetError())
    assert moves_of(client)[-1] == ("RELAYING_RESPONSE", "CLIENT_GONE", "CLOSED")
    assert origin.closed and world.stats.results["TCP_MISS_ABORTED"] == 1
    return [client]


@story
def shutdown_grace() -> list[FakeClient]:
    """Stopping: an idle connection closes at once, a busy one finishes its request first."""
    world = FakeWorld(cache_enabled=False)
    idle, busy = world.client(), world.client()
    busy.send(GET)
    world.clock.run()
    world.host.shutting_down = True
    for client in (idle, busy):
        client.session.shutdown()
    world.clock.run()
    assert idle.path() == ["IDLE", "CLOSING", "CLOSED"]
    assert busy.state is S.FORWARDING, "a request in hand is not cut"
    answer(world)
    world.clock.run()
    assert busy.transport.take().endswith(b"hello")
    assert busy.path()[-3:] == ["RELAYING_RESPONSE", "CLOSING", "CLOSED"]
    return [idle, busy]


@story
def shutdown_grace_expires() -> list[FakeClient]:
    """At the end of the grace period what is left is aborted."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send(GET)
    world.clock.run()
    world.host.shutting_down = True
    client.session.shutdown()
    client.session.abort()
    world.clock.run()
    assert moves_of(client)[-1] == ("FORWARDING", "CLIENT_GONE", "CLOSED")
    assert world.origin().closed
    return [client]


@story
def bad_requests() -> list[FakeClient]:
    """Garbage at once, and garbage after a head has begun: 400 and close, from either state."""
    world = FakeWorld()
    at_once, later = world.client(), world.client()
    at_once.send("NOT HTTP AT ALL\r\n\r\n")
    later.send("GET http://origin.test/ HTTP/1.1\r\n")
    later.send("no colon here\r\n\r\n")
    world.clock.run()
    for client in (at_once, later):
        assert client.transport.status_line() == "HTTP/1.1 400 Bad Request"
        assert client.state is S.CLOSED
    assert moves_of(later)[1] == ("READING_HEAD", "BAD_REQUEST", "ANSWERING")
    return [at_once, later]


@story
def idle_timeout_and_client_done() -> list[FakeClient]:
    """An idle connection times out; another is closed by its client between requests."""
    world = FakeWorld(keepalive_timeout=60.0)
    quiet, leaving = world.client(), world.client()
    leaving.transport.feed_eof()
    world.clock.advance(61)
    assert quiet.path() == ["IDLE", "CLOSING", "CLOSED"]
    assert quiet.triggers() == ["IDLE_TIMEOUT", "CLOSED"]
    assert leaving.triggers() == ["CLIENT_DONE", "CLOSED"]
    return [quiet, leaving]


@story
def clients_gone_while_waiting() -> list[FakeClient]:
    """A client lost while idle, or halfway through its head."""
    world = FakeWorld()
    idle, halfway = world.client(), world.client()
    halfway.send("GET http://origin.test/ HT")
    idle.transport.lose()
    halfway.transport.lose()
    assert idle.triggers() == ["CLIENT_GONE"]
    assert halfway.triggers() == ["HEAD_STARTED", "CLIENT_GONE"]
    return [idle, halfway]


@story
def own_pages() -> list[FakeClient]:
    """Requests for the proxy itself, and a Max-Forwards: 0 that the proxy answers."""
    world = FakeWorld()
    client = world.client()
    client.send("GET /stats.json HTTP/1.1\r\nHost: 127.0.0.1:4095\r\n\r\n")
    assert client.transport.status_line() == "HTTP/1.1 200 OK"
    client.send(
        "OPTIONS http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nMax-Forwards: 0\r\n\r\n"
    )
    assert b"Allow: GET" in client.transport.sent
    assert client.triggers() == ["HEAD_RECEIVED", "LOCAL_PAGE", "RESPONSE_DONE"] * 2
    rebound = world.client()  # a web page whose name was re-bound to the proxy's address
    rebound.send("GET /stats.json HTTP/1.1\r\nHost: evil.example:4095\r\n\r\n")
    assert rebound.transport.status_line() == "HTTP/1.1 421 Misdirected Request"
    assert rebound.triggers() == ["HEAD_RECEIVED", "DENIED", "RESPONSE_DONE"]
    assert world.network.dialed == []
    return [client, rebound]


@story
def only_if_cached_miss() -> list[FakeClient]:
    world = FakeWorld()
    client = world.client()
    client.send(GET.replace("\r\n\r\n", "\r\nCache-Control: only-if-cached\r\n\r\n"))
    assert client.transport.status_line() == "HTTP/1.1 504 Gateway Timeout"
    assert ("LOOKING_UP_CACHE", "ONLY_IF_CACHED_MISS", "ANSWERING") in moves_of(client)
    return [client]


def _cacheable(world: FakeWorld, index: int = -1) -> None:
    world.origin(index).feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello"
    )


@story
def collapsed_forwarding() -> list[FakeClient]:
    """An identical request waits for the one at the origin and becomes a hit."""
    world = FakeWorld()
    leader, follower = world.client(), world.client()
    leader.send(GET)
    world.clock.run()
    follower.send(GET)
    assert follower.state is S.WAITING_FOR_CACHE
    _cacheable(world)
    world.clock.run()
    assert follower.triggers()[-3:] == ["FETCH_FINISHED", "FRESH_HIT", "RESPONSE_DONE"]
    assert len(world.network.connections) == 1
    return [leader, follower]


@story
def collapsed_wait_expires() -> list[FakeClient]:
    """A wait is bounded: after collapse_wait the follower goes to the origin itself."""
    world = FakeWorld(collapse_wait=5.0)
    leader, follower, quitter = world.client(), world.client(), world.client()
    leader.send(GET)
    world.clock.run()
    follower.send(GET)
    quitter.send(GET)
    quitter.transport.lose()
    assert moves_of(quitter)[-1] == ("WAITING_FOR_CACHE", "CLIENT_GONE", "CLOSED")
    world.clock.advance(5.1)
    assert follower.triggers()[-4:] == ["WAIT_EXPIRED", "MISS", "RESOLVED", "CONNECTED"]
    return [leader, follower, quitter]


@story
def stored_body_paced_by_a_slow_client() -> list[FakeClient]:
    """A large stored body goes out in slices while the client keeps up; then it vanishes."""
    world = FakeWorld()
    first = world.client()
    first.send(GET)
    world.clock.run()
    body = b"x" * (SLICE * 3)
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    slow = world.client()
    slow.transport.window = SLICE  # the client's buffer fills after one slice
    slow.send(GET)
    assert slow.state is S.SERVING_FROM_CACHE
    assert len(slow.transport.sent) < len(body), "the body waits for the client"
    while slow.state is S.SERVING_FROM_CACHE:
        slow.transport.drain()
    assert slow.state is S.IDLE and slow.transport.take().endswith(body)
    gone = world.client()
    gone.transport.window = SLICE
    gone.send(GET)
    gone.transport.lose()
    assert moves_of(gone)[-1] == ("SERVING_FROM_CACHE", "CLIENT_GONE", "CLOSED")
    closer = world.client()
    closer.send(GET.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"))
    world.clock.run()
    assert closer.path()[-3:] == ["SERVING_FROM_CACHE", "CLOSING", "CLOSED"]
    return [first, slow, gone, closer]


@story
def unreachable_origins() -> list[FakeClient]:
    """No such name (502), a private address with --deny-private (403), a refused port (502)."""
    world = FakeWorld(cache_enabled=False)
    nowhere = world.client()
    nowhere.send(GET.replace("origin.test", "nowhere.test"))
    world.clock.run()
    world.network.refusing.add(("127.0.0.1", 80))
    refused = world.client()
    refused.send(GET)
    world.clock.run()
    private_world = FakeWorld(cache_enabled=False, deny_private=True)
    private = private_world.client()
    private.send(GET)
    private_world.clock.run()
    assert nowhere.transport.status_line() == "HTTP/1.1 502 Bad Gateway"
    assert refused.transport.status_line() == "HTTP/1.1 502 Bad Gateway"
    assert private.transport.status_line() == "HTTP/1.1 403 Forbidden"
    assert ("RESOLVING", "RESOLVE_FAILED", "ANSWERING") in moves_of(nowhere)
    assert ("CONNECTING", "CONNECT_FAILED", "ANSWERING") in moves_of(refused)
    assert ("RESOLVING", "DENIED", "ANSWERING") in moves_of(private)
    assert private_world.network.dialed == []
    return [nowhere, refused, private]


@story
def dial_timeouts() -> list[FakeClient]:
    """One deadline covers the look-up and the handshake: 504 from either."""
    world = FakeWorld(cache_enabled=False, connect_timeout=10.0)
    world.network.slow_names.add("slow.test")
    world.network.hosts["silent.test"] = "127.0.0.2"
    world.network.silent.add(("127.0.0.2", 80))
    looking, shaking = world.client(), world.client()
    looking.send(GET.replace("origin.test", "slow.test"))
    shaking.send(GET.replace("origin.test", "silent.test"))
    world.clock.advance(10.1)
    for client, state in ((looking, "RESOLVING"), (shaking, "CONNECTING")):
        assert client.transport.status_line() == "HTTP/1.1 504 Gateway Timeout"
        assert (state, "DIAL_TIMEOUT", "ANSWERING") in moves_of(client)
    return [looking, shaking]


@story
def clients_gone_while_dialing() -> list[FakeClient]:
    world = FakeWorld(cache_enabled=False)
    world.network.slow_names.add("slow.test")
    world.network.hosts["silent.test"] = "127.0.0.2"
    world.network.silent.add(("127.0.0.2", 80))
    looking, shaking, forwarding = world.client(), world.client(), world.client()
    looking.send(GET.replace("origin.test", "slow.test"))
    shaking.send(GET.replace("origin.test", "silent.test"))
    forwarding.send(GET)
    world.clock.run()
    for client in (looking, shaking, forwarding):
        client.transport.lose()
    assert [moves_of(c)[-1][0] for c in (looking, shaking, forwarding)] == [
        "RESOLVING",
        "CONNECTING",
        "FORWARDING",
    ]
    return [looking, shaking, forwarding]


def _stale_copy(world: FakeWorld, cache_control: str = "max-age=1") -> FakeClient:
    """Store a response that goes stale in a second, on a connection the origin closes."""
    first = world.client()
    first.send(GET)
    world.clock.run()
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: %s\r\nConnection: close\r\n"
        b"Content-Length: 5\r\n\r\nhello" % cache_control.encode()
    )
    world.clock.advance(5)
    return first


@story
def stale_copies_stand_in_for_a_failing_origin() -> list[FakeClient]:
    """Unresolvable, refused, a 503, a silent origin: the stale copy answers instead."""
    clients = []
    for failure in ("resolve", "refuse", "503", "silent"):
        world = FakeWorld(first_byte_timeout=10.0)
        clients.append(_stale_copy(world))
        if failure == "resolve":
            world.network.hosts.pop("origin.test")
        elif failure == "refuse":
            world.network.refusing.add(("127.0.0.1", 80))
        client = world.client()
        clients.append(client)
        client.send(GET)
        if failure == "503":
            world.origin().feed(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        elif failure == "silent":
            world.clock.advance(11)
        sent = client.transport.take()
        assert sent.startswith(b"HTTP/1.1 200 OK") and sent.endswith(b"hello"), (failure, sent)
        assert b"fwd=stale" in sent
        state = {"resolve": "RESOLVING", "refuse": "CONNECTING"}.get(failure, "FORWARDING")
        assert (state, "STALE_ON_ERROR", "SERVING_FROM_CACHE") in moves_of(client), failure
    return clients


@story
def stale_while_revalidate_answers_at_once() -> list[FakeClient]:
    """The stale copy goes out at once; one background request refreshes it."""
    world = FakeWorld()
    first = _stale_copy(world, "max-age=1, stale-while-revalidate=600")
    quick, quicker = world.client(), world.client()
    quick.send(GET)
    quicker.send(GET)
    for client in (quick, quicker):
        assert client.triggers()[:3] == ["HEAD_RECEIVED", "CACHEABLE", "STALE_HIT"]
        assert client.transport.take().endswith(b"hello")
    assert len(world.network.connections) == 2, "one revalidation for both clients"
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\r\nfresh"
    )
    later = world.client()
    later.send(GET)
    assert later.triggers()[2] == "FRESH_HIT" and later.transport.take().endswith(b"fresh")
    return [first, quick, quicker, later]


@story
def the_disk_tier_serves_what_a_restarted_proxy_stored() -> list[FakeClient]:
    """What one world stored on its disk, a second world (same disk) serves as a hit."""
    before = FakeWorld(disk=True)
    writer = before.client()
    writer.send(GET)
    before.disk.answer()  # not on disk yet: forward
    before.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\r\nsaved"
    )
    after = FakeWorld(disk=before.disk)
    reader, leaver = after.client(), after.client()
    reader.send(GET)
    leaver.send(GET.replace("/page", "/other"))
    assert reader.state is S.LOOKING_UP_CACHE, "waiting for the disk"
    leaver.transport.lose()
    after.disk.answer()
    assert reader.triggers() == ["HEAD_RECEIVED", "CACHEABLE", "FRESH_HIT", "RESPONSE_DONE"]
    assert reader.transport.take().endswith(b"saved") and after.network.dialed == []
    assert moves_of(leaver)[-1] == ("LOOKING_UP_CACHE", "CLIENT_GONE", "CLOSED")
    return [writer, reader, leaver]


@story
def a_disk_that_never_answers_is_a_miss() -> list[FakeClient]:
    """A wedged (or closed) disk tier holds a request only DISK_LOOKUP_TIMEOUT: then MISS."""
    from proxy.session.client import DISK_LOOKUP_TIMEOUT

    world = FakeWorld(disk=True)
    client = world.client()
    client.send(GET)
    assert client.state is S.LOOKING_UP_CACHE
    world.clock.advance(DISK_LOOKUP_TIMEOUT + 0.1)
    assert client.triggers() == ["HEAD_RECEIVED", "CACHEABLE", "MISS", "RESOLVED", "CONNECTED"]
    answer(world, b"origin")
    assert client.transport.take().endswith(b"origin")
    world.disk.answer()  # late: dropped, the request is long served
    assert client.state is S.IDLE
    return [client]


@story
def a_range_is_cut_from_the_stored_copy() -> list[FakeClient]:
    world = FakeWorld()
    first = world.client()
    first.send(GET)
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 10\r\n\r\n0123456789"
    )
    ranged, beyond = world.client(), world.client()
    ranged.send(GET.replace("\r\n\r\n", "\r\nRange: bytes=2-5\r\n\r\n"))
    beyond.send(GET.replace("\r\n\r\n", "\r\nRange: bytes=20-\r\n\r\n"))
    sent = ranged.transport.take()
    assert sent.startswith(b"HTTP/1.1 206 ") and b"Content-Range: bytes 2-5/10" in sent
    assert sent.endswith(b"\r\n\r\n2345")
    assert beyond.transport.status_line().startswith("HTTP/1.1 416 ")
    return [first, ranged, beyond]


@story
def revalidated_not_modified() -> list[FakeClient]:
    """A stale stored response with an ETag: the origin says 304, the stored body is served."""
    world = FakeWorld()
    first = world.client()
    first.send(GET)
    world.clock.run()
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1\r\n"
        b'ETag: "v1"\r\nContent-Length: 5\r\n\r\nhello'
    )
    world.clock.advance(5)
    second = world.client()
    second.send(GET)
    origin = world.origin()
    assert b'If-None-Match: "v1"' in origin.take()
    origin.feed(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
    assert ("FORWARDING", "NOT_MODIFIED", "SERVING_FROM_CACHE") in moves_of(second)
    assert second.transport.status_line() == "HTTP/1.1 200 OK"
    assert second.transport.take().endswith(b"hello") and second.state is S.IDLE
    return [first, second]


@story
def retry_on_a_fresh_connection() -> list[FakeClient]:
    """A pooled connection the origin had closed: the GET is sent again on a new one, once."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send(GET)
    world.clock.run()
    answer(world)
    client.send(GET)
    world.origin().lose()
    world.clock.run()
    assert len(world.network.connections) == 2
    answer(world)
    assert ("FORWARDING", "RETRY", "RESOLVING") in moves_of(client)
    assert client.transport.take().count(b"hello") == 2, "both answers reached the client"
    return [client]


@story
def origin_failures() -> list[FakeClient]:
    """Before the head: a 502 page. After it: too late for a page, the client is reset."""
    world = FakeWorld(cache_enabled=False)
    early, midway = world.client(), world.client()
    early.send(GET)
    world.clock.run()
    world.origin().lose()
    midway.send(GET)
    world.clock.run()
    world.origin().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
    world.origin().lose()
    world.clock.run()
    assert early.transport.status_line() == "HTTP/1.1 502 Bad Gateway"
    assert ("FORWARDING", "UPSTREAM_FAILED", "ANSWERING") in moves_of(early)
    assert ("RELAYING_RESPONSE", "UPSTREAM_FAILED", "CLOSING") in moves_of(midway)
    assert "abort" in midway.transport.calls and midway.state is S.CLOSED
    return [early, midway]


@story
def relay_stalls() -> list[FakeClient]:
    """A response that stops moving is cut after the idle timeout."""
    world = FakeWorld(cache_enabled=False, idle_timeout=20.0)
    client = world.client()
    client.send(GET)
    world.clock.run()
    world.origin().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
    world.clock.advance(45)
    assert ("RELAYING_RESPONSE", "RELAY_STALLED", "CLOSING") in moves_of(client)
    assert client.state is S.CLOSED and world.origin().closed
    return [client]


CHUNKED_POST = (
    "POST http://origin.test/upload HTTP/1.1\r\nHost: origin.test\r\n"
    "Transfer-Encoding: chunked\r\n\r\n"
)


@story
def malformed_request_bodies() -> list[FakeClient]:
    """A bad chunk before the origin answered (400), and after it began answering (reset)."""
    world = FakeWorld(cache_enabled=False)
    early, late = world.client(), world.client()
    early.send(CHUNKED_POST)
    world.clock.run()
    early.send("zz\r\n")
    late.send(CHUNKED_POST + "5\r\nhello\r\n")
    world.clock.run()
    origin = world.origin()
    assert b"hello" in origin.take()
    origin.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nstarted")
    late.send("zz\r\n")
    world.clock.run()
    assert early.transport.status_line() == "HTTP/1.1 400 Bad Request"
    assert ("FORWARDING", "BAD_REQUEST", "ANSWERING") in moves_of(early)
    assert ("RELAYING_RESPONSE", "BAD_REQUEST", "CLOSING") in moves_of(late)
    assert world.origin(0).closed and origin.closed
    return [early, late]


@story
def upgraded_to_a_tunnel() -> list[FakeClient]:
    """A request asking to Upgrade, and the origin's 101: both connections become one relay."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send(
        "GET http://origin.test/chat HTTP/1.1\r\nHost: origin.test\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    world.clock.run()
    origin = world.origin()
    origin.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert client.state is S.TUNNEL_OPEN
    client.send(b"frame up")
    assert origin.take().endswith(b"frame up")
    return [client]


@story
def unasked_switch_is_refused() -> list[FakeClient]:
    """A 101 to a request that asked for no upgrade is a 502, and the connection stays HTTP."""
    world = FakeWorld(cache_enabled=False)
    plain, other = world.client(), world.client()
    plain.send(GET)
    world.origin().feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n\r\n")
    other.send(
        "GET http://origin.test/chat HTTP/1.1\r\nHost: origin.test\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    world.origin().feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
    for client in (plain, other):
        assert client.transport.status_line() == "HTTP/1.1 502 Bad Gateway"
        assert ("FORWARDING", "UPSTREAM_FAILED", "ANSWERING") in moves_of(client)
    assert world.origin(0).closed and world.origin(1).closed
    return [plain, other]


@pytest.mark.parametrize("kind", ["relay", "tunnel"])
def test_an_idle_timeout_cuts_between_one_and_a_quarter_more_periods(kind: str) -> None:
    world = FakeWorld(cache_enabled=False, idle_timeout=20.0)
    client = world.client()
    if kind == "relay":
        client.send(GET)
        world.origin().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
        waiting = S.RELAYING_RESPONSE
    else:
        client.send("CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        waiting = S.TUNNEL_OPEN
    assert client.state is waiting
    started = world.clock.now
    while client.state is waiting and world.clock.now - started < 100:
        world.clock.advance(0.25)
    assert 20.0 <= world.clock.now - started <= 25.25


def test_a_tunnel_opened_just_before_a_sweep_still_gets_its_whole_idle_timeout() -> None:
    world = FakeWorld(idle_timeout=20.0)
    connect = "CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    world.client().send(connect)  # starts the sweep's timer: every 5 s from now
    world.clock.advance(4.99)
    late = world.client()
    late.send(connect)
    started = world.clock.now
    while late.state is S.TUNNEL_OPEN and world.clock.now - started < 100:
        world.clock.advance(0.05)
    assert 20.0 <= world.clock.now - started <= 25.05


@story
def close_after_the_relay() -> list[FakeClient]:
    """An HTTP/1.0 client without keep-alive: the relayed response ends with a close."""
    world = FakeWorld(cache_enabled=False)
    client = world.client()
    client.send("GET http://origin.test/ HTTP/1.0\r\n\r\n")
    world.clock.run()
    answer(world)
    world.clock.run()
    assert client.path()[-3:] == ["RELAYING_RESPONSE", "CLOSING", "CLOSED"]
    return [client]


def _boom(*_args: object) -> object:
    raise RuntimeError("a bug, planted by the test")


@story
def internal_errors() -> list[FakeClient]:
    """A bug in any state costs that client a 500 (or a reset), never the proxy."""
    clients = []

    def fresh(**config: object) -> tuple[FakeWorld, FakeClient]:
        world = FakeWorld(**config)
        client = world.client()
        clients.append(client)
        return world, client

    # Planted in a step: the session's guard turns it into internal_error.
    world, client = fresh()
    world.context.policy.decide = _boom  # type: ignore[method-assign]
    client.send(GET)
    world, client = fresh()
    assert world.cache is not None
    world.cache.look_up = _boom  # type: ignore[method-assign]
    client.send(GET)
    world, client = fresh()
    world.context.local.reply_for = _boom  # type: ignore[method-assign]
    client.send("GET / HTTP/1.1\r\nHost: 127.0.0.1:4095\r\n\r\n")
    # Reported by a guarded callback while the session waits in each state.
    waiting = {
        "IDLE": lambda w, c: None,
        "READING_HEAD": lambda w, c: c.send("GET http://origin.test/ HT"),
        "RESOLVING": lambda w, c: (w.network.slow_names.add("origin.test"), c.send(GET)),
        "CONNECTING": lambda w, c: (w.network.silent.add(("127.0.0.1", 80)), c.send(GET)),
        "FORWARDING": lambda w, c: (c.send(GET), w.clock.run()),
        "RELAYING_RESPONSE": lambda w, c: (
            c.send(GET),
            w.clock.run(),
            w.origin().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf"),
        ),
        "TUNNEL_OPEN": lambda w, c: (
            c.send("CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test\r\n\r\n"),
            w.clock.run(),
        ),
    }
    for state, bring in waiting.items():
        world, client = fresh(cache_enabled=False)
        world.network.slow_names.discard("origin.test")
        bring(world, client)
        assert client.state.name == state
        client.session.internal_error(RuntimeError(f"a bug in {state}"))
        world.clock.run()
    world, client = fresh()
    leader = world.client()
    leader.send(GET)
    world.clock.run()
    client.send(GET)
    assert client.state is S.WAITING_FOR_CACHE
    client.session.internal_error(RuntimeError("a bug while waiting"))
    world, client = fresh()
    filler = world.client()  # stores a large body for the client that follows
    filler.send(GET.replace("/page", "/big"))
    world.clock.run()
    body = b"x" * (SLICE * 2)
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    client.transport.window = SLICE
    client.send(GET.replace("/page", "/big"))
    assert client.state is S.SERVING_FROM_CACHE
    client.session.internal_error(RuntimeError("a bug while serving"))
    for victim in clients:
        victim.world.clock.run()
        assert "INTERNAL_ERROR" in victim.triggers()
        assert victim.state is S.CLOSED, victim.path()
        sent, calls = bytes(victim.transport.sent), victim.transport.calls
        assert (
            b"500 Internal Server Error" in sent
            or "abort" in calls
            or victim.moves[-2][0] is S.TUNNEL_OPEN
        )
    return [*clients, leader, filler]


def _run_story(name: str) -> list[FakeClient]:
    """Run story *name*; fail if a client met an INTERNAL_ERROR the story did not cause.

    ``@guarded`` turns any exception in a callback, an IllegalTransition included, into
    ``internal_error``, and INTERNAL_ERROR is a legal move: without this check an illegal move
    would show only as a 500 the story might not look at.
    """
    clients = PATHS[name]()
    if name != "internal_errors":
        for client in clients:
            assert "INTERNAL_ERROR" not in client.triggers(), (name, client.path())
    return clients


@pytest.mark.parametrize("name", sorted(PATHS))
def test_story(name: str) -> None:
    _run_story(name)


def test_the_stories_make_every_move_of_the_table_and_no_other() -> None:
    made: set[tuple[SessionState, Trigger, SessionState]] = set()
    for name in PATHS:
        for client in _run_story(name):
            made.update(client.moves)  # type: ignore[arg-type]
    table = {(state, trigger, target) for (state, trigger), target in TRANSITIONS.items()}
    assert made <= table, "a move outside the table would have raised"
    missing = sorted(f"{s.name} --{t.name}--> {n.name}" for s, t, n in table - made)
    assert not missing, "moves no story makes:\n" + "\n".join(missing)


def test_the_ten_paths_the_course_relies_on_are_stories() -> None:
    assert {
        "get_relay",
        "keep_alive_reuse",
        "pipelined_pair",
        "connect_tunnel",
        "cache_hit",
        "forbidden_403",
        "head_timeout_408",
        "first_byte_504",
        "client_gone_mid_relay",
        "shutdown_grace",
    } <= set(PATHS)


def test_the_docs_and_notebook_07_draw_the_table_itself() -> None:
    """The docs extension and notebook 07 render ``states.TABLE`` through ``diagram``, and
    name no state by hand, so a state added to the table shows up in both."""
    state_names = {state.name for state in SessionState}
    extension = _source("docs/_ext/proxydocs.py")
    assert "states.TABLE" in extension and "diagram.svg()" in extension
    literals = {
        node.value
        for node in ast.walk(ast.parse(extension))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert not literals & state_names, "a state named by hand in the docs extension"
    notebook = json.loads(_source("notebooks/07_session_state_machine.ipynb"))
    code = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    assert "diagram.svg()" in code and "from proxy.session import diagram" in code


def test_a_connection_accepted_just_before_shutdown_is_closed_at_once() -> None:
    """shutdown() can reach a session before its connection_made (a call_soon after the
    accept): the connection is closed then, not held open until the grace period ends."""
    from support import FakeTransport

    from proxy.session.client import ClientSession

    world = FakeWorld()
    session = ClientSession(world.context)
    session.shutdown()
    transport = FakeTransport(world.clock, session, ("127.0.0.1", 50000))
    world.clock.run()
    assert transport.closed and session.state is S.CLOSED
    assert world.host.closed == [session]


def test_a_copy_kept_only_to_stand_in_stays_off_the_disk() -> None:
    """A 200 with no lifetime and no validator is re-stored on every request for it: kept in
    memory (it stands in when the origin fails), never written to the disk tier."""
    world = FakeWorld(disk=True)
    plain = world.client()
    plain.send(GET)
    world.disk.answer()
    world.origin().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
    assert plain.transport.take().endswith(b"plain")
    assert world.disk.entries == {}
    fresh = world.client()
    fresh.send(GET.replace("/page", "/fresh"))
    world.disk.answer()
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nfresh"
    )
    assert list(world.disk.entries) == ["http://origin.test/fresh"]


def test_an_observer_given_to_the_context_does_not_silence_the_live_counters() -> None:
    import dataclasses

    world = FakeWorld()
    seen: list[object] = []
    world.context = dataclasses.replace(
        world.context, observers=(lambda old, trigger, new: seen.append(trigger),)
    )
    client = world.client()
    client.send(GET)
    assert seen and seen[0] is T.HEAD_RECEIVED
    assert world.context.observers[0] == world.stats.moved
    assert world.stats.states[client.state] == 1, "the live counters still saw the moves"


def test_stale_served_counts_only_copies_a_client_got() -> None:
    """A 5xx to a background revalidation keeps the stale copy but serves nobody: not counted;
    a 5xx to a client's own revalidation serves the copy in its place: counted."""
    world = FakeWorld()
    first = world.client()
    first.send(GET)
    world.clock.run()
    world.origin().feed(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-while-revalidate=60, "
        b'stale-if-error=600\r\nETag: "v1"\r\nContent-Length: 5\r\n\r\nhello'
    )
    world.clock.advance(5)
    background = world.client()
    background.send(GET)  # served stale at once; one background revalidation goes out
    assert background.transport.take().endswith(b"hello")
    world.clock.run()
    world.origin().feed(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    cache = world.cache
    assert cache is not None and cache.stale_served == 1  # the one stale-while-revalidate copy
    world.clock.advance(120)  # past stale-while-revalidate, within stale-if-error
    own = world.client()
    own.send(GET)
    world.clock.run()
    world.origin().feed(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    assert own.transport.take().endswith(b"hello") and "STALE_ON_ERROR" in own.triggers()
    assert cache.stale_served == 2

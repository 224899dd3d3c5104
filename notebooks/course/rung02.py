"""Checkers for rung 2, non-blocking sockets and selectors.

Theory of operation
-------------------
``02-predict-recv`` replays the five ``recv()`` calls of the question on a fresh connection and
compares step by step. The two servers are handed the selector they must use, a
:class:`CountingSelector`, so the checker can see how often ``select()`` returns: a loop that
spins (a zero timeout, or ``EVENT_WRITE`` left registered on an empty buffer) returns thousands
of times while nobody speaks, where a correct one returns once per timeout. The servers are
served real clients: two at once, a crowd of silent ones, and for ``02-echo-buffered`` a client
that sends 4 MiB while not reading, to see that the server stops reading from it (bounded
memory) and still echoes every byte, in order, once the client reads.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from typing import Any

from .checks import Answer, Wrong, exercise
from .harness import (
    HOST,
    Background,
    Serving,
    connect,
    echoed,
    receive_exactly,
    sees_eof,
    threads_settle,
    wait_until,
)


class CountingSelector(selectors.DefaultSelector):
    """The default selector, counting how often ``select()`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.calls += 1
        return super().select(timeout)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    return client, server


def _recv_outcomes() -> list[Any]:
    """The five recv() calls of the question, on a real connection."""
    client, server = _tcp_pair()
    outcomes: list[Any] = []

    def attempt() -> None:
        try:
            outcomes.append(server.recv(1024))
        except BlockingIOError:
            outcomes.append("BlockingIOError")

    with server, selectors.DefaultSelector() as selector:
        server.setblocking(False)
        selector.register(server, selectors.EVENT_READ)
        attempt()
        client.sendall(b"ping")
        selector.select(timeout=5)
        attempt()
        attempt()
        client.close()
        selector.select(timeout=5)
        attempt()
        attempt()
    return outcomes


_RECV_HINTS = {
    0: "nothing has been sent yet, and the socket is non-blocking",
    1: "the bytes arrived (select() said so); recv(1024) takes what is there",
    2: "the four bytes were consumed by the previous call, and the peer is still connected",
    3: "the peer closed its socket: how does recv() report end-of-stream?",
    4: "end-of-stream does not go away once it has been reported",
}


@exercise("02-predict-recv", "Predict what five recv() calls return", kind="predict")
def predict_recv(answer: Answer) -> str:
    predicted = answer.value("predicted_outcomes")
    if not isinstance(predicted, list | tuple) or len(predicted) != 5:
        raise Wrong("`predicted_outcomes` should be a list of five outcomes")
    for step, outcome in enumerate(predicted):
        if outcome != "BlockingIOError" and not isinstance(outcome, bytes):
            raise Wrong(
                f"outcome {step + 1} is {outcome!r}",
                'write each outcome as "BlockingIOError" or as the bytes returned, like b"x"',
            )
    truth = _recv_outcomes()
    for step, (mine, real) in enumerate(zip(predicted, truth, strict=True)):
        if mine != real:
            raise Wrong(f"call {step + 1} is not what you predicted", _RECV_HINTS[step])
    return (
        "right: BlockingIOError means 'nothing yet', b'' means 'the peer closed', "
        "and end-of-stream is reported again on every later call"
    )


def _idle_calls(selector: CountingSelector, seconds: float = 0.3) -> int:
    before = selector.calls
    time.sleep(seconds)  # nothing happens: we count what the loop does meanwhile
    return selector.calls - before


def _not_spinning(selector: CountingSelector, what: str) -> None:
    calls = _idle_calls(selector)
    if calls > 40:
        raise Wrong(
            f"select() returned {calls} times in 0.3 s while {what}: the loop spins",
            "select() should sleep: give it a timeout such as 0.05 s, and register "
            "EVENT_WRITE only while there is something to send",
        )


@exercise("02-echo-two", "Echo many clients from one thread with selectors", kind="implement")
def echo_two(answer: Answer) -> str:
    serve = answer.function("serve_echo")
    baseline = threading.active_count()
    selector = CountingSelector()
    with (
        selector,
        Serving(serve, selector) as address,
        connect(address) as first,
        connect(address) as second,
    ):
        if not echoed(first, b"first, hello"):
            raise Wrong("the first client got no echo")
        if not echoed(second, b"second, hello", timeout=2.0):
            raise Wrong(
                "the second client was not answered while the first stayed connected",
                "register every accepted socket with the selector and go back to select(): "
                "never loop on one client's recv()",
            )
        if not echoed(first, b"first again"):
            raise Wrong("the first client was not answered after the second spoke")
        extra = threading.active_count() - baseline - 1
        if extra > 0:
            raise Wrong(
                f"your server runs {extra} thread(s) besides its own",
                "one thread, one selector: no threading here",
            )
        silent = [connect(address) for _ in range(20)]
        try:
            with connect(address) as talker:
                if not echoed(talker, b"behind twenty silent ones", timeout=2.0):
                    raise Wrong("a talker behind 20 silent clients was not answered")
            _not_spinning(selector, "21 clients were silent")
        finally:
            for sock in silent:
                sock.close()
        first.close()
        if not wait_until(lambda: len(selector.get_map()) <= 2, timeout=2.0):
            raise Wrong(
                f"{len(selector.get_map())} sockets are still registered although only "
                "one client is left (plus the listener)",
                "when recv() returns b'' the client has gone: unregister its socket and close it",
            )
        if not echoed(second, b"still here"):
            raise Wrong("the second client stopped being served after the first left")
        serving = second.dup()
    with serving:
        if not sees_eof(serving, timeout=2.0):
            raise Wrong("on stop, the remaining client socket was not closed")
    if not threads_settle(baseline):
        raise Wrong("a thread was left running after the server returned")
    return (
        "two clients at once, twenty silent ones and a talker, from one thread; select() "
        "slept while nobody spoke, and a client that left was unregistered"
    )


PAYLOAD = bytes(range(256)) * (4 * 4096)  # 4 MiB
PIECE = 64 * 1024
KERNEL_BUFFER = 64 * 1024


def _sender(sock: socket.socket, counter: list[int]) -> None:
    view = memoryview(PAYLOAD)
    for start in range(0, len(PAYLOAD), PIECE):
        sock.sendall(view[start : start + PIECE])
        counter[0] += PIECE


@exercise("02-echo-buffered", "Echo to slow readers, memory bounded", kind="design", core=False)
def echo_buffered(answer: Answer) -> str:
    serve = answer.function("serve_echo_buffered")
    baseline = threading.active_count()
    selector = CountingSelector()
    with selector, Serving(serve, selector, buffer_size=KERNEL_BUFFER) as address:
        big = socket.socket()
        big.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
        big.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
        big.settimeout(20)
        try:
            big.connect(address)
            sent = [0]
            sender = Background(_sender, big, sent, name="checker-sender").start()
            time.sleep(0.4)  # the client sends and does not read: the server must stop reading
            accepted = sent[0]
            with connect(address) as other:
                if not echoed(other, b"am I served meanwhile?", timeout=2.0):
                    raise Wrong(
                        "while one client was not reading, another was not answered",
                        "never wait on one client: keep its bytes in a buffer and send them "
                        "when select() says the socket is writable",
                    )
            if accepted >= 3 * 1024 * 1024:
                raise Wrong(
                    f"the server took {accepted // 1024} KiB from a client that read nothing",
                    "stop reading from a client (unregister EVENT_READ) while more than 1 MiB "
                    "waits to be sent to it, and read again when its buffer drains",
                )
            echo = receive_exactly(big, len(PAYLOAD), timeout=20)
            sender.join(5, "the checker's sender")
            if echo != PAYLOAD:
                same = next(
                    (i for i, (a, b) in enumerate(zip(echo, PAYLOAD, strict=False)) if a != b),
                    min(len(echo), len(PAYLOAD)),
                )
                raise Wrong(
                    f"of 4 MiB sent, {len(echo)} bytes came back, the first {same} of them right",
                    "send() on a non-blocking socket may take only part of the data: keep the "
                    "rest in the client's buffer, in order",
                )
            _not_spinning(selector, "every buffer was empty")
            serving = big.dup()
        finally:
            with contextlib.suppress(OSError):
                big.shutdown(socket.SHUT_RDWR)  # wakes the sender if it is blocked
            big.close()
    with serving:
        if not sees_eof(serving, timeout=2.0):
            raise Wrong("on stop, the client socket was not closed")
    if not threads_settle(baseline):
        raise Wrong("a thread was left running after the server returned")
    return (
        f"4 MiB echoed intact to a client that read late; the server held back after "
        f"{accepted // 1024} KiB, kept serving others, and slept when there was nothing to send"
    )

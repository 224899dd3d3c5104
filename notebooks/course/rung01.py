"""Checkers for rung 1, blocking sockets and a thread per connection.

Theory of operation
-------------------
Each checker measures on loopback instead of comparing with a stored number: the prediction
of ``01-predict-stall`` is compared with a stall the checker provokes now, with its own copy of
the notebook's one-at-a-time server; ``01-backlog`` is compared with a count of handshakes the
checker makes itself; ``01-idle-timeout`` is served real clients (squatters, a talker, a slow
but honest client) and must free the slots that silent clients hold.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from .checks import Answer, Wrong, exercise
from .harness import (
    HOST,
    Serving,
    connect,
    echoed,
    fds_left_open,
    open_fds,
    sees_eof,
    threads_settle,
)


def _serve_one_at_a_time(listener: socket.socket, stop: threading.Event, timeout: float) -> None:
    """The notebook's blocking echo server, one client at a time."""
    listener.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(timeout)
            try:
                data = conn.recv(1024)
                conn.sendall(data)
            except OSError:
                continue


def _measure_stall(silent_clients: int, read_timeout: float) -> float:
    """Seconds from the first silent client's arrival until a talker behind them is answered."""
    with Serving(_serve_one_at_a_time, read_timeout) as address:
        silent = []
        try:
            arrived = time.monotonic()
            silent = [connect(address) for _ in range(silent_clients)]
            with connect(address, timeout=10 * read_timeout * silent_clients + 5) as talker:
                if not echoed(talker, b"me next", timeout=10 * read_timeout * silent_clients + 5):
                    raise RuntimeError("the reference server did not answer")
            return time.monotonic() - arrived
        finally:
            for sock in silent:
                sock.close()


@exercise("01-predict-stall", "Predict the stall behind two silent clients", kind="predict")
def predict_stall(answer: Answer) -> str:
    predicted = answer.number("predicted_wait")
    measured = _measure_stall(silent_clients=2, read_timeout=0.4)
    tolerance = max(0.15, 0.25 * measured)
    if predicted < measured - tolerance:
        raise Wrong(
            f"{predicted:.2f} s is too short: the talker waited longer than that",
            "the server takes the queued connections in order, one at a time: how long does "
            "it spend on each silent client before it gives up and accepts the next?",
        )
    if predicted > measured + tolerance:
        raise Wrong(
            f"{predicted:.2f} s is too long: the talker was answered sooner than that",
            "the talker is served as soon as the clients ahead of it are dropped; "
            "nothing else waits",
        )
    return (
        f"the talker waited {measured:.2f} s: one read timeout (0.4 s) per silent client "
        "ahead of it in the listen backlog, one after the other"
    )


def _count_handshakes(backlog: int, limit: int = 64) -> int:
    """Connect to a listener that never accepts until a connect() times out; count."""
    clients: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(backlog)
        try:
            for _ in range(limit):
                client = socket.socket()
                clients.append(client)
                client.settimeout(0.2)
                try:
                    client.connect(listener.getsockname())
                except OSError:  # TimeoutError included: the kernel did not complete it
                    return len(clients) - 1
            return limit
        finally:
            for client in clients:
                client.close()


@contextlib.contextmanager
def _counting_connects() -> Iterator[list[int]]:
    """Count the ``connect()``/``connect_ex()`` calls on any socket while the block runs.

    The count is the evidence that a measurement was made: a function that returns the right
    numbers (``backlog + 1`` on Linux) without connecting measured nothing.
    """
    attempts = [0]
    originals = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex")}

    def counting(name: str) -> Any:
        original = originals[name]

        def call(self: socket.socket, address: Any) -> Any:
            attempts[0] += 1
            return original(self, address)

        return call

    for name in originals:
        setattr(socket.socket, name, counting(name))
    try:
        yield attempts
    finally:
        for name, original in originals.items():
            setattr(socket.socket, name, original)


@exercise(
    "01-backlog", "Measure how many handshakes the kernel completes unaccepted", kind="measure"
)
def backlog(answer: Answer) -> str:
    measure = answer.function("handshakes_before_stall")
    fds = open_fds()
    counted: dict[int, Any] = {}
    for size in (1, 4):
        started = time.monotonic()
        with _counting_connects() as attempts:
            counted[size] = measure(size)
        elapsed = time.monotonic() - started
        if isinstance(counted[size], bool) or not isinstance(counted[size], int):
            raise Wrong(f"handshakes_before_stall({size}) returned {counted[size]!r}, not a count")
        if attempts[0] < counted[size] + 1:
            raise Wrong(
                f"handshakes_before_stall({size}) returned {counted[size]} after "
                f"{attempts[0]} connect() call(s): counting {counted[size]} completed "
                "handshakes takes that many connects, and one more that times out",
                "measure it: open clients one by one, each with a short connect() timeout",
            )
        if elapsed > 10:
            raise Wrong(
                f"handshakes_before_stall({size}) took {elapsed:.1f} s",
                "give each connect() a short timeout, such as 0.2 s: one that times out is "
                "the first the kernel did not complete",
            )
    if left_open := fds_left_open(fds):
        raise Wrong(
            f"your function left {left_open} descriptor(s) open",
            "close every client socket and the listener before returning (`with`, `finally`)",
        )
    for size, got in counted.items():
        truth = _count_handshakes(size)
        if got != truth:
            raise Wrong(
                f"with backlog={size} you counted {got} completed handshakes; the checker "
                "counts a different number on this machine",
                "keep every client open while you count (a closed one frees its place in the "
                "queue), never call accept(), and stop at the first connect() that times out",
            )
    return (
        f"backlog=1 let {counted[1]} clients connect and backlog=4 let {counted[4]}, with no "
        "accept(): the kernel completes handshakes by itself, up to the listen queue's length"
    )


IDLE, SLOTS = 0.5, 2


@exercise(
    "01-idle-timeout", "Free the slots that silent clients hold", kind="implement", core=False
)
def idle_timeout(answer: Answer) -> str:
    serve = answer.function("serve_with_idle_timeout")
    baseline = threading.active_count()
    with Serving(serve, SLOTS, IDLE) as address:
        squatters = [connect(address) for _ in range(SLOTS)]
        try:
            started = time.monotonic()
            with connect(address) as talker:
                if not echoed(talker, b"let me in", timeout=2.5):
                    raise Wrong(
                        f"{SLOTS} silent clients held both slots and a talker was never answered",
                        "give each connection a read timeout (`conn.settimeout(idle_timeout)`) "
                        "and close it when recv() times out, so its slot is released",
                    )
            waited = time.monotonic() - started
            if waited < 0.5 * IDLE:
                raise Wrong(
                    f"the talker was answered after {waited * 1000:.0f} ms although "
                    f"{SLOTS} clients held the {SLOTS} slots",
                    "keep the cap: at most `max_conns` clients are served at once",
                )
            for squatter in squatters:
                if not sees_eof(squatter, timeout=2.0):
                    raise Wrong("a silent client was never disconnected")
        finally:
            for squatter in squatters:
                squatter.close()

        with connect(address) as slow, connect(address) as other:
            if not (echoed(slow, b"first", timeout=2.0) and echoed(other, b"me too", 2.0)):
                raise Wrong("two clients connected at once were not both served")
            for i in range(5):  # one byte every IDLE / 5: slow, but never silent for IDLE
                time.sleep(IDLE / 5)
                if not echoed(slow, b"%d" % i, timeout=2.0):
                    raise Wrong(
                        f"a slow but honest client (one byte every {IDLE / 5:.1f} s) was dropped",
                        "the timeout is for silence: restart it on every recv() that got data",
                    )
    if not threads_settle(baseline):
        raise Wrong(
            f"{threading.active_count() - baseline} thread(s) still running after your "
            "server returned",
            "on stop, shut the client sockets down (wakes their threads) and join the threads",
        )
    return (
        f"silent clients were dropped after {IDLE} s, the talker got their slot, a slow "
        "client that kept talking was served, and every thread stopped"
    )

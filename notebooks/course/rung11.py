"""Checkers for rung 11, measuring.

Theory of operation
-------------------
``11-predict-idle`` starts the notebook's two echo servers in processes of their own, opens 200
idle connections to each (each served once), and reads their threads and address space from
``/proc/<pid>/status``: the prediction is compared with that measurement, the address space by
the nearest of the offered orders of magnitude, which no load can blur.

``11-workers`` cannot repeat the student's measurement in its time budget, and a 2-core machine
shared with other work gives any ratio from below 1 to nearly 2. So it checks what can be
checked: that the samples look measured (several per setting, positive, not all equal), that the
speed-up is the ratio of their medians, that it is physically possible on this machine (no more
than its cores allow), and that the explanation talks about processes and names this machine's
cores. A person still reads the explanation.

``11-loadgen`` runs the student's reactor load generator against a reactor echo server in its
own process that counts the bytes it received and reports them when its stdin closes; it
watches the thread count while the generator runs, and checks the counts against the server's
tally, the time bound, fairness between clients, and that no descriptor is left.
"""

from __future__ import annotations

import math
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from minireactor import Reactor

from .checks import Answer, Wrong, exercise
from .harness import HOST, fds_left_open, open_fds

THREAD_SERVER = """
import socket, threading

def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

REACTOR_SERVER = """
import os
from minireactor import Protocol, Reactor, Transport, listen

received = 0

class Echo(Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        global received
        received += len(data)
        self.transport.write(data)

def stdin_readable():
    if not os.read(0, 4096):  # the checker closed our stdin: report and stop
        print(received, flush=True)
        reactor.stop()

reactor = Reactor()
server = listen(reactor, "127.0.0.1", 0, lambda sock, _: Transport(reactor, sock, Echo()),
                backlog=4096)
reactor.add_reader(0, stdin_readable)
print(server.address[1], flush=True)
reactor.run_forever()
"""


@contextmanager
def _server(source: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A Python process running *source*, which prints its port; stopped by PID on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", source], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        if proc.poll() is None:
            proc.terminate()  # only the process we started
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmSize", "Threads"):
                fields[key] = int(value.split()[0])
    return fields


IDLE = 200
RESERVED_CHOICES = (8, 80, 800, 8_000, 80_000)


def _idle_costs() -> dict[str, tuple[int, float]]:
    """Per server: (threads it grew by for IDLE idle connections, kB reserved per connection)."""
    found = {}
    for name, source in (("threads", THREAD_SERVER), ("reactor", REACTOR_SERVER)):
        with _server(source) as (proc, port):
            before = _status(proc.pid)
            sockets = []
            try:
                for _ in range(IDLE):
                    sock = socket.create_connection((HOST, port), timeout=5)
                    sockets.append(sock)
                    sock.sendall(b"?")
                    if sock.recv(1) != b"?":
                        raise RuntimeError("the echo server did not answer")
                after = _status(proc.pid)
            finally:
                for sock in sockets:
                    sock.close()
        found[name] = (after["Threads"], (after["VmSize"] - before["VmSize"]) / IDLE)
    return found


@exercise("11-predict-idle", "Predict what 200 idle connections cost", kind="predict")
def predict_idle(answer: Answer) -> str:
    threads = answer.value("predicted_threads")
    reserved = answer.number("predicted_reserved_kib")
    if not isinstance(threads, dict) or set(threads) != {"threads", "reactor"}:
        raise Wrong('`predicted_threads` should be a dict with the keys "threads" and "reactor"')
    if reserved not in RESERVED_CHOICES:
        raise Wrong(f"`predicted_reserved_kib` should be one of {RESERVED_CHOICES}")
    truth = _idle_costs()
    for name in ("threads", "reactor"):
        if threads[name] != truth[name][0]:
            raise Wrong(
                f"the {name} server does not have {threads[name]} threads with {IDLE} idle "
                "connections",
                "count every thread of the process, the one that accepts included",
            )
    measured = truth["threads"][1]
    nearest = min(RESERVED_CHOICES, key=lambda c: abs(math.log(c) - math.log(max(measured, 1))))
    if reserved != nearest:
        raise Wrong(
            f"one idle connection of the thread server reserves nearer {nearest:,} kB than "
            f"{reserved:,.0f} kB of address space",
            "a thread gets a whole stack of its own, reserved at once (ulimit -s), even if "
            "it touches only a page of it",
        )
    return (
        f"right: {truth['threads'][0]} threads against {truth['reactor'][0]}, and "
        f"{measured:,.0f} kB of address space per idle thread, mostly its stack"
    )


NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 6: "six", 8: "eight", 16: "sixteen"}
CORE_COUNT = re.compile(
    r"\b(?:\d+|" + "|".join(NUMBER_WORDS.values()) + r")(?:[\s-]+[\w'’]+)?[\s-]+cores?\b"
)
"""A number of cores in prose: "2 cores", "8 logical cores", "a two-core machine"."""
MIN_RATE = 100.0
"""Requests/s below which a sample is not a measurement: cache hits on loopback run thousands."""


@exercise("11-workers", "Measure what --workers 2 changes, and explain it", kind="measure")
def workers(answer: Answer) -> str:
    samples = answer.value("samples")
    speedup = answer.number("speedup")
    explanation = answer.value("explanation")
    if not isinstance(samples, dict) or set(samples) != {1, 2}:
        raise Wrong("`samples` should be a dict {1: [...], 2: [...]}: requests per second")
    for workers_count, values in samples.items():
        if not (isinstance(values, list | tuple) and len(values) >= 3):
            raise Wrong(f"samples[{workers_count}] should be a list of at least 3 measurements")
        if not all(isinstance(v, int | float) and v > 0 for v in values):
            raise Wrong(f"samples[{workers_count}] should hold positive numbers (requests/s)")
        if min(values) < MIN_RATE:
            raise Wrong(
                f"samples[{workers_count}] has {min(values):g} requests/s: cache hits over "
                f"loopback run at thousands a second, so under {MIN_RATE:g} is not a measurement",
                "each sample is the round trips counted, divided by the seconds they took",
            )
    every = [float(v) for values in samples.values() for v in values]
    if len(set(every)) == 1:
        raise Wrong("all the samples are equal: they look typed in, not measured")
    expected = statistics.median(samples[2]) / statistics.median(samples[1])
    if abs(speedup - expected) > 0.01 * expected:
        raise Wrong(
            f"`speedup` is {speedup:.3g}, but the medians of your samples give {expected:.3g}",
            "speedup = median(samples[2]) / median(samples[1])",
        )
    # The notebook is executed again on the grading machine, so the samples (and this bound)
    # are that machine's, while the prose stays as the student wrote it: the prose is asked
    # for a number of cores, not for this machine's, unless the student interpolated it.
    cores = os.cpu_count() or 1
    if not 0.2 < speedup < max(cores, 2) + 0.75:
        raise Wrong(
            f"a speed-up of {speedup:.2f} is not possible with two reactor processes on "
            f"{cores} core(s): check how the rates are computed"
        )
    if not isinstance(explanation, str) or len(explanation.split()) < 20:
        raise Wrong("`explanation` should be a few sentences (20 words at least)")
    text = explanation.lower()
    if "core" not in text:
        raise Wrong(
            "the explanation does not mention the cores",
            "each worker is one single-threaded process: how many can run at once here?",
        )
    if not CORE_COUNT.search(text):
        raise Wrong(
            "the explanation does not say how many cores the machine has",
            'write os.cpu_count() into it with an f-string, f"... {os.cpu_count()} cores ...", '
            "so it stays true on the machine that grades it",
        )
    if "process" not in text and "worker" not in text:
        raise Wrong("the explanation should say what a worker is (a process of its own)")
    return (
        f"the speed-up {speedup:.2f} is the ratio of your medians and possible on {cores} "
        "core(s), and the explanation names them (read it yourself)"
    )


CLIENTS = 50
SECONDS = 0.5
MESSAGE = b"m" * 64


@exercise("11-loadgen", "A load generator on one reactor thread", kind="design", core=False)
def loadgen(answer: Answer) -> str:
    generate = answer.function("reactor_load")
    fds = open_fds()
    with _server(REACTOR_SERVER) as (proc, port):
        reactor = Reactor()
        most = {"threads": 0}
        running = threading.Event()

        def watch() -> None:
            while not running.is_set():
                most["threads"] = max(most["threads"], threading.active_count())
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, name="checker-thread-count", daemon=True)
        watcher.start()
        baseline = threading.active_count()
        try:
            started = time.monotonic()
            counts: Any = generate(reactor, port, CLIENTS, SECONDS, MESSAGE)
            took = time.monotonic() - started
        finally:
            running.set()
            watcher.join(2)
            ticks = reactor.ticks
            registered = reactor.registered_fds
            reactor.close()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdin = None
        received = int(proc.stdout.readline() or -1)
    if most["threads"] > baseline:
        raise Wrong(
            f"{most['threads'] - baseline} more thread(s) ran during your load",
            "one reactor thread drives every client: transports and callbacks, no threads",
        )
    if not ticks:
        raise Wrong("the reactor you were given never ran a tick: drive the clients with it")
    if not (isinstance(counts, list | tuple) and len(counts) == CLIENTS):
        raise Wrong(f"reactor_load() should return a list of {CLIENTS} counts, one per client")
    if not all(isinstance(c, int) and c >= 0 for c in counts):
        raise Wrong("each count should be a whole number of round trips")
    if min(counts) == 0:
        raise Wrong(f"{counts.count(0)} client(s) made no round trip at all")
    if not SECONDS * 0.9 <= took <= SECONDS + 2.0:
        raise Wrong(f"the load lasted {took:.2f} s instead of {SECONDS} s")
    low, high = sum(counts) * len(MESSAGE), (sum(counts) + CLIENTS) * len(MESSAGE)
    if not low <= received <= high:
        raise Wrong(
            f"your counts add up to {low:,} bytes echoed, but the server received {received:,}",
            "count a round trip only once its whole echo came back",
        )
    if min(counts) * 4 < max(counts):
        raise Wrong(
            f"unfair: one client made {max(counts)} round trips, another {min(counts)}",
            "every client sends its next message as soon as its echo is back",
        )
    if registered or fds_left_open(fds):
        raise Wrong(
            "connections were left open after the load",
            "close every transport before returning, and let the loop run once more",
        )
    rate = sum(counts) / took
    return (
        f"{CLIENTS} clients made {sum(counts):,} round trips ({rate:,.0f}/s) on one thread, "
        f"within {min(counts)}-{max(counts)} each, and the server's byte count agrees"
    )

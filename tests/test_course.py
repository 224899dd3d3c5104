"""The course's exercises, checked without Jupyter: every checker against stub, wrong, solution.

A check that passes on the shipped stub would grade an empty answer as done; one that passes on
a wrong answer grades nothing; one that fails on the solution grades the checker. So for every
exercise cell in the notebooks, this module runs the check three ways, exactly as the notebook
would (the cell's source is executed in a fresh namespace, then ``course.checks.run`` reads it):

* the stub, taken from the notebook itself, must be reported "not done" (``todo``);
* each wrong answer below must be reported wrong (``fail``), never "not done";
* the solution from ``notebooks/solutions/<id>.py`` must pass.

It also checks the plumbing the grader relies on: every exercise cell is followed by its check
cell, ids are unique and registered, every exercise has a solution and a line in the instructor
guide, and ``check`` records a JSON line for ``notebooks/grade.py`` and never raises.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
sys.path.insert(0, str(NOTEBOOKS))

from course import checks  # noqa: E402
from course.harness import threads_settle  # noqa: E402

NOTEBOOK_NUMBERS = tuple(f"{n:02d}" for n in range(1, 12))


def _cells() -> list[tuple[str, int, dict[str, Any]]]:
    found = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        found += [(path.name, index, cell) for index, cell in enumerate(notebook["cells"])]
    return found


CELLS = _cells()
EXERCISE_CELLS = {
    cell["metadata"]["exercise"]: (name, index, "".join(cell["source"]))
    for name, index, cell in CELLS
    if "exercise" in cell["metadata"].get("tags", [])
}


def _run_source(exercise_id: str, source: str, label: str) -> checks.Result:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, f"<{exercise_id} {label}>", "exec"), namespace)
    return checks.run(exercise_id, namespace)


WRONG: dict[str, list[str]] = {
    "01-predict-stall": [
        """\
predicted_wait = 0.4
""",
    ],
    "01-backlog": [
        """\
def handshakes_before_stall(backlog):
    return backlog
""",
        """\
def handshakes_before_stall(backlog):
    return backlog + 1  # what Linux gives, written down instead of measured
""",
    ],
    "01-idle-timeout": [
        """\
import contextlib
import socket
import threading


def _echo(conn, done):
    with conn:
        try:
            while data := conn.recv(1024):
                conn.sendall(data)
        except OSError:
            pass
    done.release()


def serve_with_idle_timeout(listener, stop, max_conns, idle_timeout):
    listener.settimeout(0.05)
    slots = threading.BoundedSemaphore(max_conns)
    threads, conns = [], []
    try:
        while not stop.is_set():
            if not slots.acquire(timeout=0.05):
                continue
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                slots.release()
                continue
            conns.append(conn)
            thread = threading.Thread(target=_echo, args=(conn, slots))
            thread.start()
            threads.append(thread)
    finally:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=2)
""",
    ],
    "02-predict-recv": [
        """\
B = "BlockingIOError"
predicted_outcomes = [B, b"ping", B, B, B]
""",
    ],
    "02-echo-two": [
        """\
import socket


def serve_echo(listener, stop, selector):
    listener.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(0.05)
            while not stop.is_set():
                try:
                    data = conn.recv(1024)
                except TimeoutError:
                    continue
                if not data:
                    break
                conn.sendall(data)
""",
    ],
    "02-echo-buffered": [
        """\
import selectors


def serve_echo_buffered(listener, stop, selector):
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, data="listener")
    try:
        while not stop.is_set():
            for key, _mask in selector.select(timeout=0.05):
                if key.data == "listener":
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ, data="client")
                    continue
                data = key.fileobj.recv(65536)
                if data:
                    try:
                        key.fileobj.send(data)  # whatever does not fit is lost
                    except BlockingIOError:
                        pass
                else:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
    finally:
        for key in list(selector.get_map().values()):
            if key.data == "client":
                key.fileobj.close()
""",
    ],
    "03-predict-ticks": [
        """\
predicted_log = [(1, "timer"), (1, "a"), (1, "b"), (2, "c")]
""",
    ],
    "03-select-timeout": [
        """\
def select_timeout(ready, next_deadline, now, cap):
    if ready:
        return 0.0
    if next_deadline is not None:
        return next_deadline - now
    return cap
""",
    ],
    "03-every": [
        """\
class Every:
    def __init__(self, reactor, interval, callback):
        self.reactor, self.interval, self.callback = reactor, interval, callback
        self.timer = reactor.call_later(interval, self._run)
        self.cancelled = False

    def _run(self):
        self.callback()
        if not self.cancelled:
            self.timer = self.reactor.call_later(self.interval, self._run)  # drifts

    def cancel(self):
        self.cancelled = True
        self.timer.cancel()


def call_every(reactor, interval, callback):
    return Every(reactor, interval, callback)
""",
        '''\
class Every:
    """Drift-free, but it fires every missed beat in a burst."""

    def __init__(self, reactor, interval, callback):
        self.reactor, self.interval, self.callback = reactor, interval, callback
        self.start, self.beat, self.cancelled = reactor.time(), 1, False
        self.timer = reactor.call_at(self.start + interval, self._run)

    def _run(self):
        self.callback()
        if not self.cancelled:
            self.beat += 1
            self.timer = self.reactor.call_at(self.start + self.beat * self.interval, self._run)

    def cancel(self):
        self.cancelled = True
        self.timer.cancel()


def call_every(reactor, interval, callback):
    return Every(reactor, interval, callback)
''',
    ],
    "03-debounce": [
        """\
class Debouncer:
    def __init__(self, reactor, delay, callback):
        self.reactor, self.delay, self.callback = reactor, delay, callback
        self.timer = None

    def poke(self):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.reactor.call_later(self.delay, self.callback)  # a timer per poke

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()
""",
    ],
    "04-predict-unsafe": [
        """\
predicted_delay = 0.0
""",
    ],
    "04-waker": [
        """\
import socket


class SelfPipe:
    def __init__(self):
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)  # but the write end blocks when full

    def fileno(self):
        return self._reader.fileno()

    def wake(self):
        try:
            self._writer.send(b"\\0")
        except OSError:
            pass

    def drain(self):
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self):
        self._reader.close()
        self._writer.close()
""",
    ],
    "04-offload": [
        """\
def run_in_thread(reactor, executor, work, on_done):
    def worker():
        try:
            on_done(work(), None)  # on the worker thread: touches loop state from outside
        except Exception as error:
            on_done(None, error)

    executor.submit(worker)
""",
    ],
    "04-call-and-wait": [
        """\
def call_and_wait(reactor, fn, timeout):
    return fn()  # runs on the caller's thread, not the loop's
""",
    ],
    "05-predict-pause": [
        """\
predicted_first_pause = 4
predicted_pause_calls = 2
""",
    ],
    "05-producer": [
        """\
from minireactor import Protocol


class ChunkProducer(Protocol):
    def __init__(self, reactor, chunks):
        self.reactor, self.chunks = reactor, chunks

    def connection_made(self, transport):
        self.transport = transport
        self.reactor.call_soon(self.produce)

    def produce(self):
        if self.transport.is_closing:
            return
        chunk = next(self.chunks, None)
        if chunk is None:
            self.transport.close()
            return
        self.transport.write(chunk)  # pause_writing() or not
        self.reactor.call_soon(self.produce)
""",
        '''\
from minireactor import Protocol


class ChunkProducer(Protocol):
    """Respects pause_writing(), but every resume starts one more chain of writes."""

    def __init__(self, reactor, chunks):
        self.reactor, self.chunks, self.paused = reactor, chunks, False

    def connection_made(self, transport):
        self.transport = transport
        self.reactor.call_soon(self.produce)

    def produce(self):
        if self.transport.is_closing or self.paused:
            return
        chunk = next(self.chunks, None)
        if chunk is None:
            self.transport.close()
            return
        self.transport.write(chunk)
        self.reactor.call_soon(self.produce)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self.reactor.call_soon(self.produce)
        self.reactor.call_soon(self.produce)
''',
    ],
    "05-pipe": [
        """\
from minireactor import Protocol, Transport


class Copy(Protocol):
    def __init__(self):
        self.sink = None

    def data_received(self, data):
        self.sink.write(data)

    def eof_received(self):
        self.sink.close()
        return False


def pipe(reactor, source_sock, sink_sock, high_water):
    copy = Copy()
    source = Transport(reactor, source_sock, copy)
    sink = Transport(reactor, sink_sock, Protocol(), high_water=high_water)  # nobody listens
    copy.sink = sink
    return source, sink
""",
    ],
    "06-predict-events": [
        """\
predicted_first = ["Request", "EndOfMessage", "Request"]
predicted_second = ["Data", "EndOfMessage"]
""",
    ],
    "06-framing": [
        """\
def body_framing(method, status, version, headers):
    if "chunked" in headers.get_list("transfer-encoding"):
        return "chunked"
    if "content-length" in headers:
        return int(headers.get("content-length"))
    return "until-close"
""",
    ],
    "06-chunked": [
        '''\
from proxy.http11 import NEED_DATA, Data, EndOfMessage, Headers


class ChunkedDecoder:
    """Right only when the whole body is fed at once: it never waits for more."""

    def __init__(self):
        self.buffer = b""
        self.done = False

    def feed(self, data):
        self.buffer += data

    def next_event(self):
        if self.done or not self.buffer:
            return NEED_DATA
        size_line, _, rest = self.buffer.partition(b"\\r\\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            self.done = True
            return EndOfMessage(Headers())
        self.buffer = rest[size + 2 :]
        return Data(rest[:size])
''',
    ],
    "06-forward-head": [
        """\
from urllib.parse import urlsplit

from proxy.http11 import serialize_request_head


def origin_head(request, pseudonym):
    url = urlsplit(request.target)
    headers = request.headers.copy()
    headers.set("Host", url.netloc)
    headers.add("Via", "1.1 " + pseudonym)
    return serialize_request_head(request.method, url.path or "/", headers)
""",
    ],
    "07-predict-story": [
        """\
predicted_second = ["HEAD_RECEIVED", "CACHEABLE", "FRESH_HIT", "RESPONSE_DONE"]
predicted_silence = ["IDLE_TIMEOUT", "CLOSED"]
predicted_third = ["HEAD_RECEIVED", "CACHEABLE", "STALE_HIT", "RESPONSE_DONE"]
predicted_origin_connections = 1
""",
    ],
    "07-audit": [
        """\
def audit(table, initial, final):
    reached, todo = {initial}, [initial]
    while todo:
        for target in table[todo.pop()].values():
            if target not in reached:
                reached.add(target)
                todo.append(target)
    dead_ends = {s for s, row in table.items() if not row and s is not final}
    return set(table) - reached, dead_ends
""",
    ],
    "07-add-state": [
        """\
import enum

from proxy.session.states import TABLE, SessionState, Trigger

State = enum.Enum("State", {s.name: s.value for s in SessionState} | {"AUTHENTICATING": "auth"})
Event = enum.Enum("Event", {t.name: t.value for t in Trigger} | {"AUTHENTICATED": "ok"})


def authenticating_table():
    table = {
        State[s.name]: {Event[t.name]: State[n.name] for t, n in row.items()}
        for s, row in TABLE.items()
    }
    table[State.IDLE][Event.HEAD_RECEIVED] = State.AUTHENTICATING  # READING_HEAD forgotten
    table[State.AUTHENTICATING] = {
        Event.AUTHENTICATED: State.CHECKING_POLICY,
        Event.DENIED: State.ANSWERING,
        Event.CLIENT_GONE: State.CLOSED,
        Event.INTERNAL_ERROR: State.CLOSING,
    }
    return table
""",
        """\
import enum

from proxy.session.states import TABLE, SessionState, Trigger

State = enum.Enum("State", {s.name: s.value for s in SessionState} | {"AUTHENTICATING": "auth"})
Event = enum.Enum("Event", {t.name: t.value for t in Trigger} | {"AUTHENTICATED": "ok"})


def authenticating_table():
    table = {
        State[s.name]: {Event[t.name]: State[n.name] for t, n in row.items()}
        for s, row in TABLE.items()
    }
    for waiting in (State.IDLE, State.READING_HEAD):
        table[waiting][Event.HEAD_RECEIVED] = State.AUTHENTICATING
    table[State.IDLE][Event.IDLE_TIMEOUT] = State.AUTHENTICATING  # an old move redirected
    table[State.AUTHENTICATING] = {
        Event.AUTHENTICATED: State.CHECKING_POLICY,
        Event.DENIED: State.ANSWERING,
        Event.CLIENT_GONE: State.CLOSED,
        Event.INTERNAL_ERROR: State.CLOSING,
    }
    return table
""",
    ],
    "07-retry-504": [
        """\
GET = "GET http://origin.test/page HTTP/1.1\\r\\nHost: origin.test\\r\\n\\r\\n"


def retry_then_504(world):
    client = world.client()
    client.send(GET)
    world.origin().feed(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nhi\\n")
    client.send(GET)
    world.clock.advance(30.0)  # the pooled connection simply stays silent: no retry
    return client
""",
        """\
GET = "GET http://origin.test/page HTTP/1.1\\r\\nHost: origin.test\\r\\n\\r\\n"


def retry_then_504(world):
    client = world.client()
    client.send(GET)
    world.origin().feed(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nhi\\n")
    client.send(GET)
    world.origin().lose()
    world.clock.advance(30.0)
    client.transport.sent.clear()  # the right moves, but the client is left with no answer
    return client
""",
    ],
    "09-predict-log": [
        """\
predicted = {
    "plain GET": ("GET", True),
    "TLS in a tunnel": ("CONNECT", False),
    "plain HTTP in a tunnel": ("GET", True),
}
""",
    ],
    "09-relay": [
        '''\
from minireactor import Protocol, Transport


class TunnelSide(Protocol):
    """Closes the whole tunnel at the first end-of-stream: the answer is lost."""

    def __init__(self):
        self.transport = None
        self.peer = None

    def data_received(self, data):
        self.peer.transport.write(data)

    def eof_received(self):
        self.peer.transport.close()
        return False

    def pause_writing(self):
        self.peer.transport.pause_reading()

    def resume_writing(self):
        self.peer.transport.resume_reading()

    def connection_lost(self, exc):
        self.peer.transport.close()


def tunnel(reactor, left_sock, right_sock, high_water=64 * 1024):
    left, right = TunnelSide(), TunnelSide()
    left.peer, right.peer = right, left
    left.transport = Transport(reactor, left_sock, left, high_water=high_water)
    right.transport = Transport(reactor, right_sock, right, high_water=high_water)
    return left.transport, right.transport
''',
        '''\
from minireactor import Protocol, Transport


class TunnelSide(Protocol):
    """Half-close right, but no backpressure: a fast side fills the other's buffer."""

    def __init__(self):
        self.transport = None
        self.peer = None
        self.eof = False

    def data_received(self, data):
        self.peer.transport.write(data)

    def eof_received(self):
        self.eof = True
        self.peer.transport.write_eof()
        if self.peer.eof:
            self.peer.transport.close()
            return False
        return True

    def connection_lost(self, exc):
        self.peer.transport.close()


def tunnel(reactor, left_sock, right_sock, high_water=64 * 1024):
    left, right = TunnelSide(), TunnelSide()
    left.peer, right.peer = right, left
    left.transport = Transport(reactor, left_sock, left, high_water=high_water)
    right.transport = Transport(reactor, right_sock, right, high_water=high_water)
    return left.transport, right.transport
''',
        '''\
from minireactor import Protocol, Transport


class TunnelSide(Protocol):
    """Everything but the reset: a lost side leaves the other open."""

    def __init__(self):
        self.transport = None
        self.peer = None
        self.eof = False

    def data_received(self, data):
        self.peer.transport.write(data)

    def eof_received(self):
        self.eof = True
        self.peer.transport.write_eof()
        if self.peer.eof:
            self.peer.transport.close()
            return False
        return True

    def pause_writing(self):
        self.peer.transport.pause_reading()

    def resume_writing(self):
        if not self.peer.eof:
            self.peer.transport.resume_reading()


def tunnel(reactor, left_sock, right_sock, high_water=64 * 1024):
    left, right = TunnelSide(), TunnelSide()
    left.peer, right.peer = right, left
    left.transport = Transport(reactor, left_sock, left, high_water=high_water)
    right.transport = Transport(reactor, right_sock, right, high_water=high_water)
    return left.transport, right.transport
''',
    ],
    "09-idle-sweep": [
        '''\
class IdleSweep:
    """One sweep per idle_timeout: a tunnel can stay open almost twice as long."""

    def __init__(self, clock, idle_timeout):
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.seen = {}
        self.timer = None

    def add(self, tunnel):
        self.seen[tunnel] = None
        if self.timer is None:
            self.timer = self.clock.call_later(self.idle_timeout, self._sweep)

    def discard(self, tunnel):
        self.seen.pop(tunnel, None)
        if not self.seen and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _sweep(self):
        self.timer = None
        for tunnel, moved in list(self.seen.items()):
            if tunnel.moved == moved:
                tunnel.close()
            else:
                self.seen[tunnel] = tunnel.moved
        if self.seen:
            self.timer = self.clock.call_later(self.idle_timeout, self._sweep)
''',
        '''\
class IdleSweep:
    """Exact, but a timer per tunnel, re-armed at every byte it sees."""

    def __init__(self, clock, idle_timeout):
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.timers = {}

    def add(self, tunnel):
        self._arm(tunnel, tunnel.moved)

    def _arm(self, tunnel, moved):
        delay = self.idle_timeout / 4
        self.timers[tunnel] = self.clock.call_later(delay, self._check, tunnel, moved)

    def _check(self, tunnel, moved):
        self.timers.pop(tunnel, None)
        if tunnel.moved == moved:
            tunnel.close()
        else:
            self._arm(tunnel, tunnel.moved)

    def discard(self, tunnel):
        timer = self.timers.pop(tunnel, None)
        if timer is not None:
            timer.cancel()
''',
    ],
    "10-predict-status": [
        """\
predicted_status = {
    "no Host field": 400,
    "a huge header field": 431,
    "an ftp:// URL": 400,
    "HTTP/2.0 in the request line": 505,
    "a request that went through us": 508,
    "an origin that answers garbage": 502,
    "an origin that closes at once": 504,
    "an origin that cuts its body": 502,
}
""",
    ],
    "10-rules": [
        '''\
RULES = """
tracker.test
ads.test
cdn.test
news.test/ads/
shop.test:8080
192.168.0.0/16
"""
''',
        '''\
RULES = """
tracker.test
*.ads.test
=cdn.test
news.test
shop.test:8080
192.168.0.0/16
"""
''',
    ],
    "10-coalesce": [
        '''\
def reload_times(events, debounce, max_delay):
    """Debounce only: a steady drip of events is never read."""
    reloads = []
    last = None
    for at in events:
        if last is not None and at >= last + debounce:
            reloads.append(last + debounce)
        last = at
    if last is not None:
        reloads.append(last + debounce)
    return reloads
''',
    ],
    "11-predict-idle": [
        """\
predicted_threads = {"threads": 200, "reactor": 1}
predicted_reserved_kib = 80
""",
        """\
predicted_threads = {"threads": 201, "reactor": 1}
predicted_reserved_kib = 80
""",
    ],
    "11-workers": [
        """\
samples = {1: [7800.0, 7900.0, 8000.0], 2: [12000.0, 12500.0, 13000.0]}
speedup = 12500.0 / 7900.0
explanation = (
    "Two workers are faster than one because there are two of them, so each request waits "
    "half as long in the queue and the proxy answers about one and a half times as fast."
)
""",
        """\
samples = {1: [7800.0, 7900.0, 8000.0], 2: [12000.0, 12500.0, 13000.0]}
speedup = 13000.0 / 7800.0  # the best of each, not the medians
explanation = (
    "Each worker is a process of its own with one reactor thread, and this machine has 2 "
    "cores, so two workers can run at the same time on both cores where one uses one core."
)
""",
        """\
samples = {1: [1, 2, 3], 2: [1, 2, 3.1]}  # typed in: no proxy answers three requests a second
speedup = 2 / 2
explanation = (
    "Each worker is a process of its own with one reactor thread, and this machine has 2 "
    "cores, so two workers can run at the same time on both cores where one uses one core."
)
""",
    ],
    "11-loadgen": [
        '''\
import socket
import threading
import time


def reactor_load(reactor, port, clients, seconds, message):
    """A thread per client, as in the notebook: the reactor is never used."""
    counts = [0] * clients

    def client(i):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sock.sendall(message)
                got = 0
                while got < len(message):
                    got += len(sock.recv(65536))
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts
''',
        '''\
import socket

from minireactor import Protocol, Transport


class EchoClient(Protocol):
    """Counts every piece of echo as a round trip, and never closes."""

    def __init__(self, reactor, message, deadline):
        self.reactor, self.message, self.deadline = reactor, message, deadline
        self.round_trips = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.message * 4)  # four messages in flight

    def data_received(self, data):
        self.round_trips += 1
        if self.reactor.time() < self.deadline:
            self.transport.write(self.message)


def reactor_load(reactor, port, clients, seconds, message):
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(clients)]
    deadline = reactor.time() + seconds
    protocols = [EchoClient(reactor, message, deadline) for _ in socks]
    for sock, protocol in zip(socks, protocols, strict=True):
        Transport(reactor, sock, protocol)
    reactor.run_until(lambda: False, timeout=seconds + 0.1)
    return [p.round_trips for p in protocols]
''',
    ],
    "08-predict-age": [
        """\
predicted_lifetime = 60
predicted_age_at_arrival = 10
predicted_stale_after = 50
""",
    ],
    "08-freshness": [
        '''\
from proxy.cache.directives import CacheControl, parse_delta_seconds, parse_http_date
from proxy.cache.freshness import HEURISTICALLY_CACHEABLE


def freshness_lifetime_of(status, headers, response_time):
    """max-age before s-maxage: a private cache's order."""
    directives = CacheControl.from_headers(headers)
    for name in ("max-age", "s-maxage"):
        seconds = directives.seconds(name)
        if seconds is not None:
            return float(seconds)
    date = parse_http_date(headers.get("Date")) or response_time
    if "Expires" in headers:
        expires = parse_http_date(headers.get("Expires"))
        return 0.0 if expires is None else max(0.0, expires - date)
    modified = parse_http_date(headers.get("Last-Modified"))
    if modified is not None and (status in HEURISTICALLY_CACHEABLE or "public" in directives):
        return max(0.0, min(86400.0, 0.1 * (date - modified)))
    return 0.0


def current_age_of(headers, request_time, response_time, now):
    ages = headers.get_list("Age")
    age_value = parse_delta_seconds(ages[0]) if ages else 0
    date = parse_http_date(headers.get("Date")) or response_time
    return max(response_time - date, age_value + response_time - request_time) + now - response_time
''',
        '''\
from proxy.cache.directives import CacheControl, parse_delta_seconds, parse_http_date
from proxy.cache.freshness import HEURISTICALLY_CACHEABLE


def _date(headers, response_time):
    date = parse_http_date(headers.get("Date"))
    return response_time if date is None else date


def freshness_lifetime_of(status, headers, response_time):
    directives = CacheControl.from_headers(headers)
    for name in ("s-maxage", "max-age"):
        seconds = directives.seconds(name)
        if seconds is not None:
            return float(seconds)
    if "Expires" in headers:
        expires = parse_http_date(headers.get("Expires"))
        return 0.0 if expires is None else max(0.0, expires - _date(headers, response_time))
    if status in HEURISTICALLY_CACHEABLE or "public" in directives:
        modified = parse_http_date(headers.get("Last-Modified"))
        if modified is not None:
            return max(0.0, min(86400.0, 0.1 * (_date(headers, response_time) - modified)))
    return 0.0


def current_age_of(headers, request_time, response_time, now):
    """Forgets the time the request spent in flight."""
    ages = headers.get_list("Age")
    age_value = parse_delta_seconds(ages[0]) if ages else 0
    apparent_age = max(0.0, response_time - _date(headers, response_time))
    corrected_age_value = age_value
    return max(apparent_age, corrected_age_value) + (now - response_time)
''',
    ],
    "08-stale-on-error": [
        '''\
from proxy.cache.directives import CacheControl


def may_serve_stale_on_error(request_cc, response_cc, lifetime, age, max_stale):
    """Forgets that s-maxage implies proxy-revalidate, and the client's own demands."""
    request, response = CacheControl.parse([request_cc]), CacheControl.parse([response_cc])
    if max_stale <= 0 or any(d in response for d in ("no-cache", "must-revalidate")):
        return False
    bound = max_stale
    for directives in (response, request):
        seconds = directives.seconds("stale-if-error")
        if seconds is not None:
            bound = min(bound, seconds)
    return age - lifetime <= bound
''',
    ],
    "08-ranges": [
        '''\
def byte_ranges(value, length):
    """Keeps ranges that start past the end, and does not clip them."""
    unit, _, specs = value.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    ranges = []
    for item in specs.split(","):
        first, _, last = item.strip().partition("-")
        if not first:
            ranges.append((max(0, length - int(last)), length - 1))
        else:
            ranges.append((int(first), int(last) if last else length - 1))
    return ranges
''',
    ],
}


def test_every_exercise_cell_is_followed_by_its_check_cell() -> None:
    by_position = {(name, index): cell for name, index, cell in CELLS}
    seen = []
    for name, index, cell in CELLS:
        if "exercise" not in cell["metadata"].get("tags", []):
            continue
        exercise_id = cell["metadata"].get("exercise")
        seen.append(exercise_id)
        assert exercise_id in checks.EXERCISES, f"{name} cell {index}: no checker"
        assert name.startswith(exercise_id.split("-")[0] + "_"), f"{exercise_id} is in {name}"
        following = by_position.get((name, index + 1))
        assert following is not None and following["metadata"].get("check") == exercise_id
        assert "check" in following["metadata"].get("tags", [])
        assert "".join(following["source"]) == (
            f'from course import check\n\ncheck("{exercise_id}", globals())'
        )
        for part in (cell, following):
            assert part["outputs"] == [] and part["execution_count"] is None, "commit no outputs"
    assert len(seen) == len(set(seen)), "exercise ids are unique"
    assert set(seen) == set(checks.EXERCISES), "every registered checker has its cell"


def test_each_exercise_is_introduced_with_its_kind_and_level() -> None:
    by_position = {(name, index): cell for name, index, cell in CELLS}
    for exercise_id, (name, index, _) in EXERCISE_CELLS.items():
        registered = checks.EXERCISES[exercise_id]
        level = "core" if registered.core else "stretch"
        intro = by_position[(name, index - 1)]
        assert intro["cell_type"] == "markdown"
        heading = f"### Exercise {exercise_id} ({registered.kind}, {level})"
        assert "".join(intro["source"]).startswith(heading), (exercise_id, heading)


def test_every_notebook_has_at_least_three_exercises() -> None:
    assert len(checks.EXERCISES) >= 30, "the course promises thirty exercises at least"
    for number in NOTEBOOK_NUMBERS:
        mine = [i for i in checks.EXERCISES if i.startswith(number + "-")]
        assert len(mine) >= 3, (number, mine)
        kinds = {checks.EXERCISES[i].kind for i in mine}
        assert "predict" in kinds and kinds - {"predict"}, "from easy to harder, in each"
        assert any(checks.EXERCISES[i].core for i in mine)
        assert any(not checks.EXERCISES[i].core for i in mine), "a stretch exercise each"


def test_solutions_match_exercises_one_to_one() -> None:
    files = {path.stem for path in SOLUTIONS.glob("*.py")}
    assert files == set(checks.EXERCISES)


def test_the_instructor_guide_names_every_exercise() -> None:
    guide = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    missing = [i for i in checks.EXERCISES if f"`{i}`" not in guide]
    assert not missing, f"notebooks/README.md does not list {missing}"


def test_every_exercise_has_a_wrong_answer() -> None:
    assert set(WRONG) == set(checks.EXERCISES)


@pytest.mark.parametrize("exercise_id", sorted(checks.EXERCISES))
def test_check_reports_the_stub_as_not_done(exercise_id: str) -> None:
    _, _, stub = EXERCISE_CELLS[exercise_id]
    baseline = threading.active_count()
    result = _run_source(exercise_id, stub, "stub")
    assert result.status == "todo", result.render()
    assert result.message.startswith("not done yet")
    assert threads_settle(baseline), "the check left a thread running"


@pytest.mark.parametrize(
    ("exercise_id", "variant"),
    [(i, n) for i in sorted(WRONG) for n in range(len(WRONG[i]))],
)
def test_check_fails_a_wrong_answer(exercise_id: str, variant: int) -> None:
    baseline = threading.active_count()
    result = _run_source(exercise_id, WRONG[exercise_id][variant], f"wrong {variant}")
    assert result.status == "fail", result.render()
    assert result.message
    assert threads_settle(baseline, timeout=5), "the check left a thread running"


@pytest.mark.parametrize("exercise_id", sorted(checks.EXERCISES))
def test_check_passes_the_solution(exercise_id: str) -> None:
    source = (SOLUTIONS / f"{exercise_id}.py").read_text(encoding="utf-8")
    baseline = threading.active_count()
    result = _run_source(exercise_id, source, "solution")
    assert result.status == "pass", result.render()
    assert threads_settle(baseline), "the check left a thread running"


def test_check_prints_and_records_one_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(checks.RESULTS_ENV, str(results))
    checks.check("03-predict-ticks", {"predicted_log": ...})
    checks.check("03-select-timeout", {"select_timeout": lambda *_: 1 / 0})
    checks.check("no-such-exercise", {})
    printed = capsys.readouterr().out
    assert "[NOT DONE] 03-predict-ticks" in printed
    assert "[FAIL] 03-select-timeout: your code raised ZeroDivisionError" in printed
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(line["exercise"], line["status"]) for line in lines] == [
        ("03-predict-ticks", "todo"),
        ("03-select-timeout", "fail"),
        ("no-such-exercise", "fail"),
    ]


def test_grade_refuses_a_command_line_without_notebooks() -> None:
    done = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "grade.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2 and "name the notebooks" in done.stderr


def test_grade_scores_a_submission_folder(tmp_path: Path) -> None:
    """One small notebook, graded for real: a wrong answer fails, a right one passes."""
    pytest.importorskip("nbclient", reason="grade.py needs the notebooks extra")
    pytest.importorskip("ipykernel", reason="grade.py needs the notebooks extra")
    cells = []
    for exercise_id, source in [
        ("06-predict-events", WRONG["06-predict-events"][0]),
        ("03-predict-ticks", (SOLUTIONS / "03-predict-ticks.py").read_text()),
    ]:
        cells += [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": exercise_id,
                "metadata": {"tags": ["exercise"], "exercise": exercise_id},
                "outputs": [],
                "source": source,
            },
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"{exercise_id}-check",
                "metadata": {"tags": ["check"], "check": exercise_id},
                "outputs": [],
                "source": f'from course import check\n\ncheck("{exercise_id}", globals())',
            },
        ]
    cells.append(
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "broken",
            "metadata": {},
            "outputs": [],
            "source": "raise RuntimeError('a cell of the student that fails')",
        }
    )
    submission = tmp_path / "alice"
    submission.mkdir()
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (submission / "99_mixed.ipynb").write_text(json.dumps(notebook))
    table = tmp_path / "grades.csv"
    done = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "grade.py"), "--csv", str(table), str(submission)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  06-predict-events" in done.stdout
    assert "pass  03-predict-ticks" in done.stdout
    assert "raised RuntimeError: a cell of the student that fails" in done.stdout
    rows = table.read_text().splitlines()
    assert rows[0] == "submission,notebook,exercise,level,status,message"
    assert rows[1].startswith("alice,99_mixed.ipynb,06-predict-events,core,fail,")
    assert rows[2].startswith("alice,99_mixed.ipynb,03-predict-ticks,core,pass,")
    assert rows[3].startswith("alice,99_mixed.ipynb,,,error,cell 4 raised RuntimeError")


def test_grade_reports_deleted_exercises_as_missing(tmp_path: Path) -> None:
    """The exercises to expect come from the registry, not the submission's tags: a notebook
    with its exercise cells deleted fails, each lost id gets a ``missing`` row, and a check run
    under an answer in a new, untagged cell still counts."""
    pytest.importorskip("nbclient", reason="grade.py needs the notebooks extra")
    pytest.importorskip("ipykernel", reason="grade.py needs the notebooks extra")
    answered = "03-predict-ticks"
    untagged_answer = {
        "cell_type": "code",
        "execution_count": None,
        "id": "my-answer",
        "metadata": {},
        "outputs": [],
        "source": (SOLUTIONS / f"{answered}.py").read_text(),
    }
    its_check = {
        "cell_type": "code",
        "execution_count": None,
        "id": "its-check",
        "metadata": {},
        "outputs": [],
        "source": f'from course import check\n\ncheck("{answered}", globals())',
    }
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    name = "03_reactor_loop.ipynb"
    for folder, cells in [(alice, [untagged_answer, its_check]), (bob, [])]:
        notebook = {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}
        (folder / name).write_text(json.dumps(notebook))
    table = tmp_path / "grades.csv"
    done = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "grade.py"), "--csv", str(table), str(alice), str(bob)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    expected = [i for i in checks.EXERCISES if i.startswith("03-")]
    rows = [row.split(",")[:5] for row in table.read_text().splitlines()[1:]]
    statuses = {(row[0], row[2]): row[4] for row in rows}
    assert set(statuses) == {(who, i) for who in ("alice", "bob") for i in expected}, rows
    for exercise_id in expected:
        assert statuses[("bob", exercise_id)] == "missing"
        assert statuses[("alice", exercise_id)] == (
            "pass" if exercise_id == answered else "missing"
        )
    assert f"MISS  {expected[-1]}" in done.stdout
    assert f"pass  {answered}" in done.stdout
    emptied = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "grade.py"), str(bob)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert emptied.returncode == 1, "a notebook with every exercise deleted does not pass"


def test_grade_fails_a_notebook_over_its_time_budget(tmp_path: Path) -> None:
    """--expect-stubs fails a notebook slower than --notebook-seconds (60 s by default), and
    says which; a budget of 0.5 s stands in for a minute here."""
    pytest.importorskip("nbclient", reason="grade.py needs the notebooks extra")
    pytest.importorskip("ipykernel", reason="grade.py needs the notebooks extra")
    exercise_id = "03-predict-ticks"
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "slow",
            "metadata": {},
            "outputs": [],
            "source": "import time\n\ntime.sleep(1)",
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "id": exercise_id,
            "metadata": {"tags": ["exercise"], "exercise": exercise_id},
            "outputs": [],
            "source": EXERCISE_CELLS[exercise_id][2],
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "check",
            "metadata": {"tags": ["check"], "check": exercise_id},
            "outputs": [],
            "source": f'from course import check\n\ncheck("{exercise_id}", globals())',
        },
    ]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "99_slow.ipynb"
    path.write_text(json.dumps(notebook))
    command = [sys.executable, str(NOTEBOOKS / "grade.py"), "--expect-stubs", str(path)]
    slow = subprocess.run(
        [*command, "--notebook-seconds", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "99_slow.ipynb" in slow.stdout and "over the 0.5 s a notebook may take" in slow.stdout
    assert "todo  03-predict-ticks" in slow.stdout
    in_time = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert in_time.returncode == 0, in_time.stdout + in_time.stderr


def test_grade_runs_notebook_07_from_a_submission_folder(tmp_path: Path) -> None:
    """The real notebook 07 imports the fake world from ``tests/``, which is not beside
    ``submissions/alice/``: the grader's kernel must find it, or every cell after the import
    fails whatever the student wrote."""
    pytest.importorskip("nbclient", reason="grade.py needs the notebooks extra")
    pytest.importorskip("ipykernel", reason="grade.py needs the notebooks extra")
    name = "07_session_state_machine.ipynb"
    submission = tmp_path / "submissions" / "alice"
    submission.mkdir(parents=True)
    (submission / name).write_bytes((NOTEBOOKS / name).read_bytes())
    table = tmp_path / "grades.csv"
    done = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "grade.py"), "--csv", str(table), str(submission)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the stubs are not done
    assert "error" not in done.stdout.replace("0 error(s)", ""), done.stdout
    rows = table.read_text().splitlines()[1:]
    expected = sorted(i for i in checks.EXERCISES if i.startswith("07-"))
    assert sorted(row.split(",")[2] for row in rows) == expected
    assert all(row.split(",")[4] == "todo" for row in rows), rows


def test_handout_has_the_stubs_and_no_solutions(tmp_path: Path) -> None:
    pytest.importorskip("nbformat", reason="grade.py needs the notebooks extra")
    pytest.importorskip("nbclient", reason="grade.py needs the notebooks extra")
    handout = tmp_path / "handout"
    done = subprocess.run(
        [sys.executable, str(NOTEBOOKS / "grade.py"), "--handout", str(handout)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    given = handout / "notebooks"
    assert not (given / "solutions").exists()
    assert (given / "course" / "checks.py").is_file() and (given / "README.md").is_file()
    shipped = sorted(path.name for path in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(path.name for path in given.glob("*.ipynb")) == shipped
    # Notebook 07 and the harness find the fake world in ../tests, as in a clone; the
    # import runs from the handout alone (the repository is not on the path).
    imported = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys; sys.path[:0] = ['.', '../tests']; "
            "import support, course.harness; print(support.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=given,
    )
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).resolve() == (handout / "tests" / "support.py").resolve()
    for name, index, stub in EXERCISE_CELLS.values():
        cells = json.loads((given / name).read_text(encoding="utf-8"))["cells"]
        assert "".join(cells[index]["source"]) == stub
        assert all(cell.get("outputs", []) == [] for cell in cells)

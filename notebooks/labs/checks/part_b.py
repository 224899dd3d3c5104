"""Part B checks: CONNECT tunnels (30 points).

Theory of operation
-------------------
Tunnels are checked with curl (HTTPS to a loopback origin whose certificate comes from a CA
made by trustme for this run, and ``--proxytunnel``) and with raw sockets to raw TCP origins:
an echo, a server that answers only after the client's FIN, one that says bye and closes, one
that just holds the connection, and a firehose that sends as fast as it is allowed to.

Backpressure is measured, not assumed: a client with a small receive buffer reads slowly from
the firehose (through a tunnel, then through the relay) while the driver samples the proxy's
resident memory (``VmRSS``). A proxy that keeps reading from the fast side piles the
difference up in memory; a proxy that pauses the fast side's reading stays flat.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable

from checks import CheckFailed, Context, check, expect, fail_if
from checks.http_origin import HELLO, PATTERN, Firehose, big_body, sha256
from checks.part_a import seen_by_origin
from checks.wire import (
    WAIT,
    ask,
    curl,
    expect_status,
    get,
    open_descriptors,
    open_tunnel,
    read_until_eof,
    rss,
    wait_until,
)
from proxy.http11 import NEED_DATA, Data, ProtocolError, Response, ResponseParser

MiB = 1 << 20
#: How much the proxy may grow while a client reads slowly from a fast origin.
GROWTH_LIMIT = 24 * MiB
#: How long the slow reader reads, how much at a time, and how long it waits between reads.
SLOW_SECONDS, SLOW_STEP, SLOW_PAUSE = 2.0, 16 * 1024, 0.01


@check("B1", 6, "HTTPS through CONNECT, with curl")
def https_with_curl(ctx: Context) -> str:
    """curl verifies the origin's own certificate, through the tunnel, and gets its bytes."""
    port = ctx.origins.https.port
    ca = ("--cacert", str(ctx.ca_pem))
    small = curl(ctx, f"https://origin.test:{port}/hello", *ca)
    expect_status(small.reply(), 200, "curl https://origin.test/hello")
    expect(small.body == HELLO, f"curl https://origin.test/hello: wrong body {small.body[:60]!r}")
    large = curl(ctx, f"https://origin.test:{port}/big?size=1000000&seed=3", *ca)
    expect(
        large.body == big_body(1000000, 3),
        f"1 MB over HTTPS: got {len(large.body)} bytes (sha256 {sha256(large.body)[:12]})",
    )
    return "TLS end to end (certificate checked against the lab CA); 1 MB intact"


@check("B2", 3, "curl --proxytunnel to a plain http:// origin")
def proxytunnel(ctx: Context) -> str:
    """With ``--proxytunnel`` curl speaks HTTP *inside* a tunnel: the proxy must not touch it."""
    result = curl(ctx, ctx.origins.url("/echo"), "--proxytunnel", "-H", "X-Lab-Check: B2")
    expect_status(result.reply(), 200, "curl --proxytunnel /echo")
    seen = seen_by_origin(ctx, "B2")
    expect(seen.target == "/echo", f"the origin saw target {seen.target!r}")
    via = seen.get_all("via")
    expect(not via, f"a tunnel rewrote the bytes it carried: the origin saw Via {via}")
    return "curl's own request went through the tunnel untouched"


@check("B3", 3, "the answer to CONNECT, early bytes, and failures")
def connect_answer(ctx: Context) -> str:
    """``200`` without framing fields; bytes sent behind the request arrive; 502 and 400 pages."""
    authority = f"127.0.0.1:{ctx.origins.echo.port}"
    sock, head, rest = open_tunnel(ctx, authority, early=b"early bytes|")
    with sock:
        problems = []
        lower = head.lower()
        if "content-length:" in lower or "transfer-encoding:" in lower:
            problems.append("the 200 to CONNECT carries Content-Length or Transfer-Encoding")
        received = bytearray(rest)
        sock.sendall(b"later bytes")
        try:
            while len(received) < len(b"early bytes|later bytes"):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except TimeoutError:
            pass
        if bytes(received) != b"early bytes|later bytes":
            problems.append(
                f"through the tunnel to an echo came back {bytes(received)!r}, not "
                "b'early bytes|later bytes' (bytes sent right behind CONNECT are the first "
                "bytes of the tunnel)"
            )
    failures = {
        f"CONNECT 127.0.0.1:{ctx.origins.refused_port} (refused)": (
            f"127.0.0.1:{ctx.origins.refused_port}",
            502,
        ),
        "CONNECT nosuch.test:443 (unknown name)": ("nosuch.test:443", 502),
        "CONNECT 127.0.0.1 (no port)": ("127.0.0.1", 400),
    }
    for what, (target, status) in failures.items():
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        reply = ask(ctx, request, what, method="CONNECT")
        if reply.status != status:
            problems.append(f"{what}: expected {status}, got {reply.describe()}")
    fail_if(problems)
    return "200 Connection established; early bytes first; 502, 502, 400 for the bad ones"


@check("B4", 3, "bytes both ways at once, intact")
def both_ways(ctx: Context) -> str:
    """4 MiB of random bytes to an echo while reading the echo back: the same bytes return."""
    payload = random.Random(4).randbytes(4 * MiB)
    sock, _, rest = open_tunnel(ctx, f"127.0.0.1:{ctx.origins.echo.port}")
    sock.settimeout(20)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            errors.append(error)

    writer = threading.Thread(target=write, name="B4-writer", daemon=True)
    started = time.monotonic()
    with sock:
        writer.start()
        received = rest + read_until_eof(sock, "4 MiB through an echo tunnel")
        writer.join(20)
    took = time.monotonic() - started
    expect(not errors, f"sending through the tunnel failed: {errors[:1]}")
    expect(
        hashlib.sha256(received).digest() == hashlib.sha256(payload).digest(),
        f"sent 4 MiB, received {len(received)} bytes that differ",
    )
    return f"4 MiB each way in {took:.2f} s, identical"


@check("B5", 4, "half-close through the tunnel")
def half_close(ctx: Context) -> str:
    """The client's FIN reaches the origin, whose answer still comes back, then EOF."""
    sock, _, rest = open_tunnel(ctx, f"127.0.0.1:{ctx.origins.shout.port}")
    with sock:
        sock.sendall(b"hello ")
        sock.sendall(b"through the tunnel")
        sock.shutdown(socket.SHUT_WR)  # "I have finished", not "goodbye"
        answer = rest + read_until_eof(sock, "waiting for the answer after the client's FIN")
    expect(
        answer == b"you said: HELLO THROUGH THE TUNNEL",
        f"after the client's FIN the tunnel delivered {answer!r} "
        "(the origin answers only once it has seen EOF)",
    )
    return "FIN passed on; the answer came back; then EOF"


class PatternReader:
    """Checks that a stream is the firehose's pattern (byte *i* is ``i % 256``)."""

    def __init__(self) -> None:
        self.offset = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Check the next bytes of the stream."""
        start = self.offset % 256
        if bytes(data) != PATTERN[start : start + len(data)]:
            raise CheckFailed(f"the stream was corrupted at byte {self.offset}")
        self.offset += len(data)


def read_slowly(
    ctx: Context,
    sock: socket.socket,
    firehose: Firehose,
    baseline: int,
    payload: Callable[[bytes], list[bytes | memoryview]],
    pattern: PatternReader,
) -> str:
    """Read for :data:`SLOW_SECONDS`, slowly, watching the proxy's memory; return a summary.

    *pattern* checks the stream; it has seen what arrived before (behind a CONNECT's 200).
    """
    peak = baseline
    deadline = time.monotonic() + SLOW_SECONDS
    while time.monotonic() < deadline:
        try:
            data = sock.recv(SLOW_STEP)
        except TimeoutError as error:
            raise CheckFailed(
                f"nothing to read for {WAIT:g} s after {pattern.offset} bytes"
            ) from error
        if not data:
            raise CheckFailed(f"the connection ended after {pattern.offset} bytes")
        for piece in payload(data):
            pattern.feed(piece)
        peak = max(peak, rss(ctx.pid))
        if peak - baseline > GROWTH_LIMIT:
            raise CheckFailed(
                f"the proxy grew by {(peak - baseline) / MiB:.0f} MiB while the client had read "
                f"{pattern.offset / MiB:.1f} MiB (the origin sent {firehose.sent / MiB:.0f} MiB): "
                "it buffers what the client cannot take yet"
            )
        time.sleep(SLOW_PAUSE)  # the slowness of this reader is what is being tested
    expect(pattern.offset > 0, "the slow reader received nothing")
    return (
        f"grew {max(0, peak - baseline) / MiB:.1f} MiB (limit {GROWTH_LIMIT // MiB}) while the "
        f"client read {pattern.offset / MiB:.1f} MiB and the origin got to send "
        f"{firehose.sent / MiB:.1f} MiB"
    )


def slow_socket() -> socket.socket:
    """A client socket with a small receive buffer: the kernel holds little for it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(WAIT)
    return sock


@check("B6", 5, "backpressure across a tunnel: a slow reader")
def tunnel_backpressure(ctx: Context) -> str:
    """A fast origin, a slow client: the proxy must pause the origin, not buffer for it."""
    warm, _, _ = open_tunnel(ctx, f"127.0.0.1:{ctx.origins.echo.port}")
    with warm:
        warm.sendall(b"x" * 65536)
        warm.shutdown(socket.SHUT_WR)
        read_until_eof(warm, "a warm-up tunnel")
    firehose = ctx.origins.firehose.firehose
    firehose.halt.clear()
    baseline = rss(ctx.pid)
    try:
        sock, _, rest = open_tunnel(ctx, f"127.0.0.1:{ctx.origins.firehose.port}", rcvbuf=64 * 1024)
        with sock:
            pattern = PatternReader()
            pattern.feed(rest)  # the firehose may speak before the 200 has been read
            return read_slowly(ctx, sock, firehose, baseline, lambda data: [data], pattern)
    finally:
        firehose.halt.set()


@check("B7", 3, "backpressure in the relay: a slow reader of a large GET")
def relay_backpressure(ctx: Context) -> str:
    """The same for ``GET /firehose`` (16 GiB announced): the relay must not buffer it either."""
    warm = ask(ctx, get(ctx.origins.url("/big?size=1000000&seed=8")), "a warm-up GET")
    expect_status(warm, 200, "a warm-up GET of 1 MB")
    firehose = ctx.origins.http.firehose
    firehose.halt.clear()
    baseline = rss(ctx.pid)
    parser = ResponseParser()
    parser.expect("GET")

    def body_of(data: bytes) -> list[bytes | memoryview]:
        parser.feed(data)
        pieces: list[bytes | memoryview] = []
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as error:
                raise CheckFailed(f"GET /firehose: invalid HTTP from the proxy: {error}") from error
            if event is NEED_DATA:
                return pieces
            if isinstance(event, Response) and event.status != 200:
                raise CheckFailed(f"GET /firehose: expected 200, got {event.status}")
            if isinstance(event, Data):
                pieces.append(event.data)

    try:
        sock = slow_socket()
        with sock:
            try:
                sock.connect(ctx.proxy)
            except OSError as error:
                raise CheckFailed(f"cannot connect to the proxy: {error}") from error
            sock.sendall(get(ctx.origins.url("/firehose")))
            return read_slowly(ctx, sock, firehose, baseline, body_of, PatternReader())
    finally:
        firehose.halt.set()


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the client vanished, it did not finish politely."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@check("B8", 3, "close both sides, leak nothing")
def close_both(ctx: Context) -> str:
    """Origin closes: the client sees EOF. Client resets: the origin side is closed too.

    Afterwards the proxy holds no more descriptors than before.
    """
    holder = ctx.origins.holder
    ended_before = holder.ended
    warm, _, _ = open_tunnel(ctx, f"127.0.0.1:{holder.port}")
    reset(warm)
    expect(
        holder.wait_ended(ended_before + 1, WAIT),
        f"a client reset its tunnel; the origin side was still open {WAIT:g} s later",
    )
    baseline = open_descriptors(ctx.pid)
    sock, _, rest = open_tunnel(ctx, f"127.0.0.1:{ctx.origins.bye.port}")
    with sock:
        said = rest + read_until_eof(sock, "an origin that says bye and closes")
    expect(said == b"bye\n", f"from an origin that says bye and closes came {said!r}")
    ended_before = holder.ended
    tunnels = [open_tunnel(ctx, f"127.0.0.1:{holder.port}")[0] for _ in range(10)]
    for tunnel in tunnels:
        reset(tunnel)
    expect(
        holder.wait_ended(ended_before + 10, WAIT),
        f"10 clients reset their tunnels; only {holder.ended - ended_before} origin connections "
        f"were closed within {WAIT:g} s",
    )
    settled = wait_until(lambda: open_descriptors(ctx.pid) <= baseline, WAIT)
    expect(
        settled,
        f"the proxy holds {open_descriptors(ctx.pid) - baseline} more descriptors than before "
        "11 tunnels came and went",
    )
    return "EOF passed on; resets closed the origin side; no descriptor leaked"

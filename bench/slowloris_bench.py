"""Benchmark: memory and latency of the proxy under a slowloris crowd.

Theory of operation
-------------------
Run by hand: ``python bench/slowloris_bench.py [--connections 1000] [--seconds 20]``.
It starts a loopback origin (``tests/support.py``) and ``python -m proxy`` in a subprocess with
``--head-timeout`` longer than the run, so no slow client is cut off and the proxy must simply
hold them all. It reads the proxy's resident memory (``VmRSS`` in ``/proc/PID/status``), opens
N connections that each send one byte of a request head per second, and meanwhile times one
well-behaved request per 100 ms through the same proxy. At the end it reads the RSS again and
prints the growth per connection and the latency percentiles of the good client.

What it shows: a slowloris connection costs the reactor a socket, a session, a parser buffer and
one timer, a few KiB, not a thread and its stack; and since the loop never blocks on a slow
peer, a good client's latency stays that of an idle proxy. The deadline that finally ends such
connections (``head_timeout``, 408) is exercised by the test suite, not here. Every loop is
bounded by ``--seconds``; the descriptor limit is raised to the hard limit if needed.
"""

from __future__ import annotations

import argparse
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support import OriginServer, read_response  # noqa: E402


def raise_nofile(wanted: int) -> int:
    """Raise this process's descriptor limit towards *wanted* (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """Resident set size of *pid* in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


def start_proxy(blacklist: Path, head_timeout: float) -> tuple[subprocess.Popen, int]:
    """Start ``python -m proxy`` on port 0 and return it with the port it printed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--port",
            "0",
            "--blacklist",
            str(blacklist),
            "--head-timeout",
            str(head_timeout),
            "--max-conns",
            "100000",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"listening on http://[\d.]+:(\d+)", line)
        if match:
            # Keep draining stderr so the child never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError("the proxy did not start")


def good_request(port: int, origin_port: int) -> float:
    """One complete request through the proxy; returns its latency in seconds."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET http://127.0.0.1:{origin_port}/hello HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        status, _headers, _body = read_response(sock)
    if status != 200:
        raise RuntimeError(f"good request got {status}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    limit = raise_nofile(args.connections * 2 + 256)
    if limit < args.connections + 64:
        print(f"descriptor limit {limit} is too low for {args.connections} connections")
        return 1
    origin = OriginServer().start()
    with tempfile.TemporaryDirectory() as tmp:
        blacklist = Path(tmp) / "blacklist.txt"
        blacklist.write_text("")
        proc, port = start_proxy(blacklist, head_timeout=args.seconds * 3 + 60)
        socks: list[socket.socket] = []
        try:
            baseline = []
            for _ in range(20):  # paced like the loaded run below, for a like-for-like figure
                baseline.append(good_request(port, origin.port))
                time.sleep(0.1)
            rss_before = rss_kib(proc.pid)
            opened = time.monotonic()
            for _ in range(args.connections):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            open_seconds = time.monotonic() - opened
            head = f"GET http://127.0.0.1:{origin.port}/hello HTTP/1.1\r\nX-Pad: ".encode()
            latencies: list[float] = []
            started, sent, next_trickle = time.monotonic(), 0, 0.0
            while time.monotonic() - started < args.seconds:
                now = time.monotonic() - started
                if now >= next_trickle:  # one byte per connection per second
                    piece = head[sent % len(head) : sent % len(head) + 1]
                    for sock in socks:
                        sock.send(piece)
                    sent += 1
                    next_trickle += 1.0
                latencies.append(good_request(port, origin.port))
                time.sleep(0.1)
            rss_after = rss_kib(proc.pid)
            alive = sum(1 for sock in socks if _alive(sock))
        finally:
            for sock in socks:
                sock.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            origin.stop()
    growth = rss_after - rss_before
    ms = sorted(x * 1000 for x in latencies)
    base_ms = sorted(x * 1000 for x in baseline)
    print(f"slowloris connections : {args.connections} ({alive} still open at the end)")
    print(f"bytes trickled        : {sent} per connection over {args.seconds:g} s")
    print(f"opening them took     : {open_seconds:.2f} s")
    print(f"proxy RSS before      : {rss_before / 1024:.1f} MiB")
    print(f"proxy RSS after       : {rss_after / 1024:.1f} MiB")
    each = growth / args.connections
    print(f"RSS growth            : {growth / 1024:.1f} MiB ({each:.1f} KiB per connection)")
    print(f"good client, idle     : median {statistics.median(base_ms):.2f} ms")
    print(
        f"good client, loaded   : {len(ms)} requests, median {statistics.median(ms):.2f} ms, "
        f"p95 {ms[int(len(ms) * 0.95) - 1]:.2f} ms, max {ms[-1]:.2f} ms"
    )
    return 0


def _alive(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())

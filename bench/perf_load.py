"""Load generators of the performance benchmark; each returns a dict of figures or a skip reason.

Theory of operation
-------------------
Throughput is measured by real, fast clients written in C: ``ab`` (HTTP/1.0, with ``-k`` for
keep-alive, ``-X`` to go through a proxy), ``wrk`` (HTTP/1.1 keep-alive; a Lua script puts the
absolute URL in the request line, which is what a client of a forward proxy sends) and ``curl``
(one large download, through ``CONNECT`` for HTTPS). Each runs under a count *and* a time
limit, and as a subprocess with a timeout on top.

Memory is measured from the proxy's ``VmRSS``. The memory scenarios need our own clients:
:func:`idle_tunnels` opens many ``CONNECT`` tunnels from client processes of :mod:`perf_hold`
(one descriptor per tunnel each, so they are split across processes) and holds them;
:func:`slow_reader` downloads through the proxy with a tiny receive buffer at a
capped rate while a thread samples the proxy's RSS, so a proxy that buffers instead of pausing
its origin shows it in the peak.
"""

from __future__ import annotations

import collections
import json
import re
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from perf_procs import clean_env, fd_limit, open_fds, rss_kib

Result = dict[str, Any]


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return -1, out + f"\n(timed out after {timeout:g} s)"
    return done.returncode, done.stdout + done.stderr


def _num(pattern: str, text: str, default: float | None = None) -> float | None:
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else default


def ab(url: str, proxy: int | None, *, keepalive: bool, requests: int, limit: float) -> Result:
    """``ab [-k] -c 50`` on *url*, at most *requests* requests and *limit* seconds."""
    if not shutil.which("ab"):
        return {"skipped": "skipped (ab not installed)"}
    argv = ["ab", "-q", "-r", "-s", "30", "-c", "50", "-t", f"{limit:g}", "-n", str(requests)]
    if keepalive:
        argv.append("-k")
    if proxy is not None:
        argv += ["-X", f"127.0.0.1:{proxy}"]
    code, out = _run([*argv, url], limit + 60)
    rps = _num(r"^Requests per second:\s+([\d.]+)", out)
    if rps is None:
        return {"error": f"ab failed ({code}): {out.strip()[-300:]}"}
    return {
        "rps": rps,
        "p99_ms": _num(r"^\s+99%\s+(\d+)", out),
        "done": _num(r"^Complete requests:\s+(\d+)", out),
        "failed": _num(r"^Failed requests:\s+(\d+)", out, 0.0),
        "non2xx": _num(r"^Non-2xx responses:\s+(\d+)", out, 0.0),
    }


_WRK_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(url: str, proxy: int | None, *, duration: float, script_dir: str) -> Result:
    """``wrk -t2 -c50 --latency``; through a proxy the request line carries the absolute URL."""
    if not shutil.which("wrk"):
        return {"skipped": "skipped (wrk not installed)"}
    argv = ["wrk", "-t2", "-c50", f"-d{max(1, round(duration))}s", "--timeout", "10s", "--latency"]
    if proxy is not None:
        script = f"{script_dir}/absolute-{abs(hash(url))}.lua"
        with open(script, "w") as handle:
            # wrk runs this after setting wrk.path from the command line URL, so it wins.
            handle.write(f'wrk.path = "{url}"\n')
        argv += ["-s", script, f"http://127.0.0.1:{proxy}/"]
    else:
        argv.append(url)
    code, out = _run(argv, duration + 60)
    rps = _num(r"^Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        return {"error": f"wrk failed ({code}): {out.strip()[-300:]}"}
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "done": _num(r"^\s+(\d+) requests in", out),
        "p99_ms": float(p99.group(1)) * _WRK_UNIT[p99.group(2)] if p99 else None,
        "non2xx": _num(r"Non-2xx or 3xx responses:\s+(\d+)", out, 0.0),
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def curl_download(url: str, proxy: int | None, *, cacert: str, limit: float) -> Result:
    """One download to ``/dev/null`` with curl; MB/s from ``%{speed_download}`` (10^6 B/s)."""
    if not shutil.which("curl"):
        return {"skipped": "skipped (curl not installed)"}
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", f"{limit:g}", "--cacert", cacert]
    argv += ["-w", "%{speed_download} %{size_download} %{http_code}"]
    if proxy is not None:
        argv += ["-x", f"http://127.0.0.1:{proxy}"]
    code, out = _run([*argv, url], limit + 30)
    figures = re.match(r"([\d.]+) (\d+) (\d{3})", out)  # -w goes to stdout, ahead of stderr
    if figures is None:
        return {"error": f"curl failed ({code}): {out.strip()[-300:]}"}
    speed, size, status = float(figures[1]), int(figures[2]), figures[3]
    if code == 28 and status == "200" and size:
        return {"mbps": speed / 1e6, "bytes": size, "timed_out": True}  # partial, yet telling
    if code != 0 or status != "200":
        return {"error": f"curl exit {code}, HTTP {status}, {size} bytes: {out.strip()[-200:]}"}
    return {"mbps": speed / 1e6, "bytes": size}


SHARD = 9000
"""Tunnels per client process: well under its 20,000 descriptors, with room to spare."""
HOLD = str(Path(__file__).resolve().parent / "perf_hold.py")


def idle_tunnels(
    proxy: int | None, pid: int | None, target: tuple[str, int], *, count: int, limit: float
) -> Result:
    """Open *count* idle tunnels (plain connections when *proxy* is None) and hold them.

    Client processes of :mod:`perf_hold` open the tunnels, at most :data:`SHARD` each, one
    after the other; the first that stops short (a failure, the time limit) ends the ramp and
    its reason is reported. The proxy's RSS (summed over its worker processes) is read before
    and once all are open, which gives the memory per tunnel; its descriptors are counted too,
    since the hard ``RLIMIT_NOFILE`` caps a process at about half of it in tunnels.
    """
    deadline = time.monotonic() + limit
    before = rss_kib(pid) if pid else 0
    fds_before = open_fds(pid) if pid else 0
    shards: list[subprocess.Popen[str]] = []
    reasons: collections.Counter[str] = collections.Counter()
    got = {"attempted": 0, "ok": 0, "failed": 0}
    stopped = "all attempted"
    started = time.monotonic()
    try:
        while got["attempted"] < count:
            if time.monotonic() > deadline:
                stopped = f"stopped at the {limit:g} s limit"
                break
            argv = [sys.executable, HOLD, "client", "--target", f"{target[0]}:{target[1]}"]
            argv += ["--count", str(min(SHARD, count - got["attempted"]))]
            argv += ["--hold", f"{limit + 60:g}"] + (["--proxy", str(proxy)] if proxy else [])
            child = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env()
            )
            shards.append(child)
            report = _report_line(child, deadline - time.monotonic())
            if report is None:
                stopped = "a client process gave no report in time"
                break
            for key in got:
                got[key] += report[key]
            reasons.update(report["reasons"])
            if report["stopped"] != "all attempted":
                stopped = report["stopped"]
                break
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # let the proxy finish its bookkeeping for the last batch
        after = max(rss_kib(pid) for _ in range(3)) if pid else 0
        fds_after = open_fds(pid) if pid else 0
    finally:
        for child in shards:
            if child.stdin is not None:
                child.stdin.close()  # the shard closes its tunnels and exits
        for child in shards:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
            if child.stdout is not None:
                child.stdout.close()
    result: Result = {**got, "open_s": elapsed, "stopped": stopped, "reasons": dict(reasons)}
    result["client_processes"] = len(shards)
    if pid:
        result.update(proxy_fds_before=fds_before, proxy_fds_after=fds_after)
        result["proxy_fd_limit"] = fd_limit(pid)
    if pid and got["ok"]:
        result.update(rss_before_kib=before, rss_after_kib=after)
        result["kib_per_tunnel"] = (after - before) / got["ok"]
    return result


def _report_line(child: subprocess.Popen[str], wait: float) -> dict[str, Any] | None:
    """The one JSON line a client shard prints once its tunnels are open (None on timeout)."""
    assert child.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout=max(1.0, wait))
    sel.close()
    line = child.stdout.readline() if ready else ""
    try:
        return json.loads(line) if line else None
    except json.JSONDecodeError:
        return None


def slow_reader(
    proxy: int | None,
    pid: int | None,
    url: str,
    *,
    tunnel: tuple[str, int] | None,
    total: int,
    rate: float,
    limit: float,
) -> Result:
    """Download *url* through the proxy at most *rate* bytes/s with a 4 KiB receive buffer.

    With *tunnel*, a ``CONNECT`` to that address comes first and the ``GET`` goes through it.
    A thread samples the proxy's RSS every 20 ms; the peak is the figure of interest.
    """
    peak = [rss_kib(pid) if pid else 0]
    base = peak[0]
    stop = threading.Event()

    def sample() -> None:
        while pid and not stop.wait(0.02):
            peak[0] = max(peak[0], rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    got = 0
    started = time.monotonic()
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        origin_port = int(url.split("/")[2].rsplit(":", 1)[1])
        sock.connect(("127.0.0.1", proxy or origin_port))
        path = url if proxy else "/" + url.split("/", 3)[3]
        if tunnel is not None and proxy:
            host = f"{tunnel[0]}:{tunnel[1]}"
            sock.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = sock.recv(1)  # byte by byte: nothing after the head may be consumed
                if not chunk:
                    return {"error": "the proxy closed the tunnel"}
                head += chunk
            path = "/" + url.split("/", 3)[3]
        get = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(get.encode())
        deadline = started + limit
        while got < total and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += len(chunk)
            ahead = got / rate - (time.monotonic() - started)
            if ahead > 0.002:
                time.sleep(ahead)
    except OSError as exc:
        return {"error": f"slow reader: {exc!r} after {got} bytes"}
    finally:
        sock.close()
        stop.set()
        sampler.join(5)
    elapsed = time.monotonic() - started
    if not pid:
        return {"read_mib": got / (1 << 20), "seconds": elapsed, "mbps": got / elapsed / 1e6}
    return {
        "peak_rss_mib": peak[0] / 1024,
        "base_rss_mib": base / 1024,
        "growth_mib": (peak[0] - base) / 1024,
        "read_mib": got / (1 << 20),
        "seconds": elapsed,
        "mbps": got / elapsed / 1e6,
    }

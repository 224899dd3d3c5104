"""``python -m proxy`` as a user runs it: a real child process, real flags, real signals."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import require_program

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    # Bound and closed again: a tiny race with other programs, acceptable on a test machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_through(port: int, url: str, *fields: str) -> bytes:
    """GET *url* through the proxy on *port*; read until the proxy closes the connection."""
    head = "".join(f"{line}\r\n" for line in (f"GET {url} HTTP/1.1", "Host: x", *fields))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"{head}\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("python -m proxy ")


def test_help():
    out = run_cli("--help")
    assert out.returncode == 0
    for flag in ("--port", "--blacklist", "--no-cache", "--connect-timeout"):
        assert flag in out.stdout


@pytest.mark.parametrize(
    "args",
    [["--no-such-flag"], ["--port", "eighty"], ["--cache-size", "lots"], ["--idle-timeout", "0"]],
)
def test_bad_flag_exits_2_with_one_line_error(args):
    out = run_cli(*args)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, out.stderr
    assert "Traceback" not in out.stderr


class Child:
    """A proxy process whose stderr lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        # Ends when every process holding the stderr pipe has exited (workers included).
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} on stderr: {self.seen}")

    def all_lines(self) -> list[str]:
        """Every line read so far, waited for or not."""
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return self.seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_proxy(tmp_path: Path, *flags: str, rules: str = "") -> tuple[Child, int]:
    """``python -m proxy`` on a free port with a blocklist of *rules* in *tmp_path*."""
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text(rules)
    port = free_port()
    return Child("--port", str(port), "--blacklist", str(blacklist), *flags), port


def test_serves_then_stops_on_sigterm(origin, tmp_path):
    curl = require_program("curl")
    child, port = start_proxy(tmp_path)
    try:
        line = child.wait_for("listening on")
        assert f"http://127.0.0.1:{port}" in line
        out = subprocess.run(
            [
                curl,
                "-sS",
                "--max-time",
                "20",
                "-x",
                f"http://127.0.0.1:{port}",
                origin.url("/hello"),
            ],
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"hello from the origin\n"
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(10) == 0
    finally:
        child.stop()


def test_port_in_use_exits_1_with_one_line(tmp_path):
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = run_cli("--port", str(port), "--blacklist", str(blacklist))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"proxy: cannot listen on 127.0.0.1:{port}: "), lines[0]
    assert "Traceback" not in out.stderr


def test_sigterm_lets_an_exchange_in_flight_finish(origin, tmp_path):
    child, port = start_proxy(tmp_path)
    try:
        child.wait_for("listening on")
        answers: queue.Queue[bytes] = queue.Queue()

        def slow_request() -> None:
            answers.put(request_through(port, origin.url("/slow?delay=1&cc=no-store")))

        thread = threading.Thread(target=slow_request, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while origin.hits["/slow"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the origin's counter: the request is in flight
        assert origin.hits["/slow"] == 1
        child.proc.send_signal(signal.SIGTERM)
        reply = answers.get(timeout=20)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b"representation #1" in reply
        assert b"Connection: close" in reply  # shutting down: no keep-alive offered
        assert child.proc.wait(20) == 0
    finally:
        child.stop()


def test_sighup_forces_a_blocklist_reload(tmp_path):
    child, _ = start_proxy(tmp_path, rules="ads.example\n")
    try:
        child.wait_for("listening on")
        # No file event at all: only the signal can cause this reload.
        child.proc.send_signal(signal.SIGHUP)
        line = child.wait_for("blocklist reloaded")
        assert "rules: 1" in line
        assert child.proc.poll() is None
    finally:
        child.proc.send_signal(signal.SIGTERM)
        child.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc/PID/task")
def test_sighup_landing_on_a_helper_thread_still_reloads(tmp_path):
    # kill() aimed at a thread's id hands the signal to that thread. The main thread, asleep in
    # select with no timer due, then gets no EINTR: this failed in CI before the reactor pointed
    # signal.set_wakeup_fd at its waker.
    child, _ = start_proxy(tmp_path, rules="ads.example\n")
    try:
        child.wait_for("listening on")
        helpers = [int(tid) for tid in os.listdir(f"/proc/{child.proc.pid}/task")]
        helpers.remove(child.proc.pid)
        assert helpers  # the watcher's observer and worker threads
        for tid in helpers:
            os.kill(tid, signal.SIGHUP)
            assert "rules: 1" in child.wait_for("blocklist reloaded")
        assert child.proc.poll() is None
    finally:
        child.proc.send_signal(signal.SIGTERM)
        child.stop()


def test_a_second_sigterm_aborts_the_grace_period(origin, tmp_path):
    child, port = start_proxy(tmp_path, "--shutdown-grace", "60")
    try:
        child.wait_for("listening on")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            url = origin.url("/slow?delay=30&cc=no-store")
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            deadline = time.monotonic() + 20
            while origin.hits["/slow"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # polling the origin's counter: the request is in flight
            assert origin.hits["/slow"] == 1
            child.proc.send_signal(signal.SIGTERM)
            assert "1 connection(s) open" in child.wait_for("shutting down")
            started = time.monotonic()
            child.proc.send_signal(signal.SIGTERM)
            assert child.proc.wait(20) == 0
            # Well inside the 60 s grace (and the origin's 30 s): the second signal cut it short.
            assert time.monotonic() - started < 20
            child.wait_for("without waiting")
            try:
                reply = sock.recv(65536)
            except ConnectionResetError:
                reply = b""
            assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
    finally:
        child.stop()


def _children_of(pid: int) -> list[int]:
    """The PIDs whose parent is *pid*, from ``/proc/*/stat`` (``children`` is not always built)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                # The command name in parentheses may hold spaces: the fields follow its ")".
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue  # it ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc/PID/task")
def test_workers_share_the_port_and_stop_together(origin, tmp_path):
    child, port = start_proxy(tmp_path, "--workers", "2")
    try:
        announced = {
            child.wait_for("listening on").split()[3],
            child.wait_for("listening on").split()[3],
        }
        assert announced == {"0", "1"}
        workers = _children_of(child.proc.pid)
        assert len(workers) == 2
        # Each worker leads a process group of its own, so a terminal's Ctrl-C reaches the
        # parent alone and arrives at each worker once, relayed.
        assert all(os.getpgid(pid) == pid for pid in workers)
        for _ in range(4):
            reply = request_through(port, origin.url("/hello"), "Connection: close")
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(20) == 0
        stopped = {child.wait_for("stopped").split()[2], child.wait_for("stopped").split()[2]}
        assert stopped == {"0", "1"}
    finally:
        _stop_workers(child, tmp_path)


def _stop_workers(child: Child, marker: Path) -> None:
    """After a failure, kill the workers still running: only those whose command names *marker*."""
    workers = _children_of(child.proc.pid) if child.proc.poll() is None else []
    child.stop()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in workers:
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if str(marker).encode() in handle.read():
                        workers.append(int(entry))
            except OSError:
                continue
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc/PID/task")
def test_workers_stop_when_their_parent_is_killed(tmp_path):
    child, _ = start_proxy(tmp_path, "--workers", "2")
    try:
        child.wait_for("listening on")
        child.wait_for("listening on")
        assert len(_children_of(child.proc.pid)) == 2
        child.proc.kill()  # SIGKILL: no handler runs, nothing is relayed
        child.proc.wait(10)
        # The workers still hold the stderr pipe: the pump reads end-of-file once both are gone.
        child.pump.join(timeout=30)
        assert not child.pump.is_alive(), child.all_lines()
        lines = child.all_lines()
        assert sum("parent process is gone" in line for line in lines) == 2, lines
        assert sum(line.endswith(" stopped\n") for line in lines) == 2, lines
    finally:
        _stop_workers(child, tmp_path)


EARLY_SIGNALS = """
import os
import signal
import sys

from proxy import app
from proxy.__main__ import main

real_start = app.ProxyServer.start


def start(self):
    # A systemctl reload or a logrotate postrotate landing while the proxy starts.
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGUSR1)
    if self._worker is not None:
        os.kill(os.getppid(), signal.SIGHUP)  # the parent, maybe still forking
    return real_start(self)


app.ProxyServer.start = start
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_or_reopen_signal_during_start_up_is_held_not_fatal(tmp_path, workers):
    """Their default action kills; held until the handlers exist, they are then handled."""
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", EARLY_SIGNALS, "--port", str(port), "--workers", str(workers)]
        + ["--blacklist", str(blacklist)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        listening = reloads = 0
        seen: list[str] = []
        deadline = time.monotonic() + 30
        # Every process that started announces itself, and each held SIGHUP is then a reload.
        while (listening < workers or reloads < workers) and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            listening += "listening on" in line
            reloads += "blocklist reloaded" in line
        assert listening >= workers and reloads >= workers, (proc.poll(), seen)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

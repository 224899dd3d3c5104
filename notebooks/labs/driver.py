"""The proxy lab's driver: start a student's proxy, grade it with real clients, print a score.

Theory of operation
-------------------
``python notebooks/labs/driver.py DIR`` grades the proxy in ``DIR`` (its entry point is
``DIR/labproxy.py``; a path to a ``.py`` file works too). For each part it starts the proxy as a
subprocess, ``python labproxy.py --host 127.0.0.1 --port 0 --timeout 2 --cache-bytes 100000
--resolve origin.test=127.0.0.1 --resolve localhost=127.0.0.1``, reads ``listening on
HOST:PORT`` from its standard output, and runs the part's checks (``checks/part_*.py``) against
it with curl and raw sockets, towards loopback origins running in this process. Each check
prints PASS or FAIL, with its points and a reason; each part and the whole run get a score.

Robustness is the point of a driver, since what it runs is unfinished work:

* a fresh proxy per part, so a crash in Part A costs nothing in Part C; a proxy that dies
  during a check is restarted before the next one, and the failure says it exited;
* every wait has a timeout (sockets, curl, the start-up line, the stop), so a proxy that hangs
  earns FAILs, not a hung driver;
* the proxy is stopped by its PID (SIGTERM, then SIGKILL) at the end of each part and in a
  ``finally``, whatever happens, Ctrl-C and SIGTERM included;
* no name is looked up: origins are on 127.0.0.1, and the proxy resolves through its static
  ``--resolve`` table.

The exit status is 0 when the run completed, whatever the score; 2 when the driver could not
run (no curl, no trustme, no ``/proc``, no such implementation) or failed itself; 130 or 143 if
it was interrupted. ``--json`` prints the whole result as one JSON document on standard output
(progress goes to standard error). The driver also lists imports that break the lab's rules.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LABS = Path(__file__).resolve().parent
REPO = LABS.parent.parent
sys.path.insert(0, str(LABS))
if (REPO / "minireactor").is_dir():
    sys.path.insert(1, str(REPO))

from checks import PARTS, Check, CheckFailed, Context, all_checks  # noqa: E402
from checks.origins import Origins  # noqa: E402

from proxy.http11 import ProtocolError  # noqa: E402

#: The proxy's command line, besides host and port.
TIMEOUT = 2.0
CACHE_BYTES = 100_000
PROXY_OPTIONS = [
    "--timeout",
    f"{TIMEOUT:g}",
    "--cache-bytes",
    str(CACHE_BYTES),
    "--resolve",
    "origin.test=127.0.0.1",
    "--resolve",
    "localhost=127.0.0.1",
]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
_LISTENING = re.compile(rb"listening on \[?([0-9a-fA-F.:]+|localhost)\]?:(\d+)")
#: Exceptions a misbehaving proxy can cause inside a check: a FAIL, not a driver error.
STUDENT_FAULTS = (CheckFailed, OSError, ProtocolError, subprocess.TimeoutExpired, ValueError)

#: What a lab proxy may import besides the standard library and its own modules.
ALLOWED_PROJECT = ("minireactor", "proxy.http11")
#: Standard modules that would sidestep the reactor (threads, another loop, another HTTP stack).
FORBIDDEN_STDLIB = (
    "threading",
    "_thread",
    "asyncio",
    "concurrent",
    "multiprocessing",
    "socketserver",
    "http.server",
    "http.client",
    "urllib.request",
)


class StartFailed(Exception):
    """The proxy did not start listening."""


class ProxyProcess:
    """The student's proxy, run as a subprocess and stopped by PID."""

    def __init__(self, entry: Path, port: int, log_path: Path) -> None:
        self.entry = entry
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.address: tuple[str, int] | None = None
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> tuple[str, int]:
        """Start the proxy and wait for its ``listening on HOST:PORT`` line."""
        self.stop()
        self._listening.clear()
        self.address = None
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        environment = dict(os.environ)
        if (REPO / "minireactor").is_dir():
            paths = [str(REPO), environment.get("PYTHONPATH", "")]
            environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
        command = [sys.executable, "-u", str(self.entry), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), *PROXY_OPTIONS]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.entry.parent,
            env=environment,
            start_new_session=True,  # Ctrl-C in the terminal reaches the driver, which stops it
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True, name="stdout")
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening.wait(0.05):
            if self.process.poll() is not None:
                self._reader.join(1)
                if self._listening.is_set():
                    break
                raise StartFailed(
                    f"the proxy exited with status {self.process.returncode} before listening"
                    f"{self.log_excerpt()}"
                )
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"the proxy did not print 'listening on HOST:PORT' within "
                    f"{START_TIMEOUT:g} s{self.log_excerpt()}"
                )
        assert self.address is not None
        return self.address

    def _read_stdout(self) -> None:
        # Drain standard output for the proxy's whole life (a full pipe would block it), copy
        # it to the log, and note the first "listening on" line.
        process, log = self.process, self._log
        assert process is not None and process.stdout is not None and log is not None
        for line in process.stdout:
            if not self._listening.is_set():
                found = _LISTENING.search(line)
                if found:
                    self.address = (found.group(1).decode(), int(found.group(2)))
                    self._listening.set()
            try:
                log.write(line)
                log.flush()
            except ValueError:
                return  # the log was closed: the proxy is being stopped

    @property
    def pid(self) -> int:
        """The proxy's process id."""
        assert self.process is not None
        return self.process.pid

    def exit_status(self) -> int | None:
        """None while it runs, else its exit status."""
        return None if self.process is None else self.process.poll()

    def log_size(self) -> int:
        """How many bytes the log holds now."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_lines(self, since: int, limit: int = 6) -> list[str]:
        """The last *limit* lines the proxy wrote after byte *since* of its log."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as log:
            log.seek(since)
            text = log.read().decode("utf-8", "replace")
        return [line for line in text.splitlines() if line.strip()][-limit:]

    def log_excerpt(self) -> str:
        """``: last log lines`` for a start-up failure, or nothing."""
        lines = self.log_lines(0, 4)
        return (": " + " | ".join(lines)) if lines else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; always reaped."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(STOP_TIMEOUT)
            if process.stdout is not None:
                process.stdout.close()
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
            self._reader = None
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Result:
    """The outcome of one check."""

    check: Check
    passed: bool
    message: str
    seconds: float
    log: list[str] = field(default_factory=list)
    driver_error: bool = False

    @property
    def score(self) -> int:
        """Its points if passed, else 0."""
        return self.check.points if self.passed else 0

    def as_json(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "id": self.check.id,
            "part": self.check.part,
            "title": self.check.title,
            "points": self.score,
            "max": self.check.points,
            "passed": self.passed,
            "message": self.message,
            "seconds": round(self.seconds, 2),
            "log": self.log,
        }


def find_entry(path: Path) -> Path:
    """``labproxy.py`` in *path*, or *path* itself if it is a ``.py`` file."""
    if path.is_dir():
        path = path / "labproxy.py"
    if path.suffix != ".py" or not path.is_file():
        raise FileNotFoundError(f"no lab proxy at {path} (give a directory with labproxy.py)")
    return path.resolve()


def rule_breaks(directory: Path) -> list[str]:
    """Imports in the lab's ``.py`` files that the handout's rules forbid."""
    local = {path.stem for path in directory.glob("*.py")}
    found = []
    for path in sorted(directory.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError) as error:
            found.append(f"{path.name}: cannot be parsed ({error})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                allowed = any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_PROJECT)
                if root == "proxy" and not allowed:
                    found.append(f"{path.name} imports {name} (only proxy.http11 of the project)")
                elif root not in local and any(
                    name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_STDLIB
                ):
                    found.append(f"{path.name} imports {name} (the reactor, not threads)")
    return found


def run_check(check: Check, proxy: ProxyProcess, make_context: Any, say: Any) -> Result:
    """Run one check against a running proxy (restarting it first if it died)."""
    before = proxy.log_size()
    started = time.monotonic()
    passed, driver_error = False, False
    if proxy.exit_status() is not None:
        status = proxy.exit_status()
        try:
            proxy.start()
            note = f" (the proxy had exited with status {status}; restarted)"
        except StartFailed as error:
            return Result(check, False, f"the proxy is down and did not restart: {error}", 0.0)
    else:
        note = ""
    try:
        message = check.run(make_context(proxy))
        passed = True
    except STUDENT_FAULTS as error:
        message = str(error)
        if not isinstance(error, CheckFailed):
            message = f"{type(error).__name__}: {message}"
    except Exception as error:  # a bug of the driver itself: reported, and the run fails
        message = f"driver error: {type(error).__name__}: {error}"
        driver_error = True
    status = proxy.exit_status()
    if status is not None:
        passed = False
        message += f" (the proxy exited with status {status} during this check)"
    result = Result(check, passed, message + note, time.monotonic() - started, [], driver_error)
    if not passed:
        result.log = proxy.log_lines(before)
    say(result)
    return result


def print_result(result: Result, stream: IO[str]) -> None:
    """One report line (and the proxy's log lines, for a FAIL)."""
    verdict = "PASS" if result.passed else "FAIL"
    points = f"{result.score}/{result.check.points}"
    print(
        f"  {verdict} {result.check.id:<3} {points:>5}  {result.check.title}: {result.message}",
        file=stream,
        flush=True,
    )
    for line in result.log:
        print(f"         proxy log: {line[:200]}", file=stream, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The driver's command line."""
    parser = argparse.ArgumentParser(
        description="Grade a proxy lab implementation with real clients over loopback."
    )
    parser.add_argument("implementation", type=Path, help="directory holding labproxy.py")
    parser.add_argument("--port", type=int, default=0, help="port for the proxy (default: any)")
    parser.add_argument("--parts", default="ABC", help="parts to grade, e.g. A or AB (default ABC)")
    parser.add_argument("--only", default="", help="comma-separated check ids, e.g. A3,B5")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Grade; return the exit status (0 when the run completed, whatever the score)."""
    args = build_parser().parse_args(argv)
    report = sys.stderr if args.json else sys.stdout
    try:
        entry = find_entry(args.implementation)
    except FileNotFoundError as error:
        print(f"driver: {error}", file=sys.stderr)
        return 2
    curl_program = shutil.which("curl")
    problems = []
    if curl_program is None:
        problems.append("curl is not installed (Debian: apt-get install curl)")
    try:
        import trustme  # noqa: F401  (the HTTPS origin's certificate)
    except ImportError:
        problems.append("trustme is not installed (pip install trustme)")
    if not Path("/proc/self/status").exists():
        problems.append("no /proc: the driver measures the proxy's memory there (Linux)")
    if problems:
        print("driver: cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    assert curl_program is not None
    wanted_parts = [part for part in PARTS if part in args.parts.upper()]
    only = {item.strip().upper() for item in args.only.split(",") if item.strip()}
    checks = [c for c in all_checks() if c.part in wanted_parts and (not only or c.id in only)]
    if not checks:
        selection = f"--parts {args.parts} --only {args.only}"
        print(f"driver: no checks selected by {selection}", file=sys.stderr)
        return 2

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks below

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    results: list[Result] = []
    breaks = rule_breaks(entry.parent)
    print(f"Grading {entry} ({len(checks)} checks)", file=report, flush=True)
    for line in breaks:
        print(f"  RULE {line}", file=report, flush=True)
    with tempfile.TemporaryDirectory(prefix="proxylab-") as scratch:
        workdir = Path(scratch)
        origins = Origins(workdir).start()
        try:
            for part in wanted_parts:
                part_checks = [c for c in checks if c.part == part]
                if not part_checks:
                    continue
                print(f"Part {part}: {PARTS[part]}", file=report, flush=True)
                proxy = ProxyProcess(entry, args.port, workdir / f"proxy-{part}.log")

                def make_context(running: ProxyProcess) -> Context:
                    assert running.address is not None
                    return Context(
                        running.address,
                        running.pid,
                        origins,
                        curl_program,
                        origins.ca_pem,
                        workdir,
                        TIMEOUT,
                        CACHE_BYTES,
                    )

                try:
                    proxy.start()
                except StartFailed as error:
                    for check in part_checks:
                        result = Result(check, False, str(error), 0.0)
                        print_result(result, report)
                        results.append(result)
                    proxy.stop()
                    continue
                try:
                    for check in part_checks:
                        results.append(
                            run_check(check, proxy, make_context, lambda r: print_result(r, report))
                        )
                finally:
                    proxy.stop()
                score = sum(r.score for r in results if r.check.part == part)
                top = sum(c.points for c in part_checks)
                print(f"Part {part}: {score}/{top}", file=report, flush=True)
        finally:
            origins.stop()
    elapsed = time.monotonic() - started
    total = sum(result.score for result in results)
    top = sum(check.points for check in checks)
    print(f"Total: {total}/{top}  ({elapsed:.1f} s)", file=report, flush=True)
    if args.json:
        parts = {
            part: {
                "title": PARTS[part],
                "score": sum(r.score for r in results if r.check.part == part),
                "max": sum(c.points for c in checks if c.part == part),
            }
            for part in wanted_parts
            if any(c.part == part for c in checks)
        }
        document = {
            "implementation": str(entry),
            "total": total,
            "max": top,
            "seconds": round(elapsed, 2),
            "parts": parts,
            "checks": [result.as_json() for result in results],
            "rules": breaks,
        }
        print(json.dumps(document, indent=2))
    if any(result.driver_error for result in results):
        print("driver: the driver itself failed in a check (see 'driver error')", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

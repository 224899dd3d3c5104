"""The proxy lab (notebooks/labs): the driver grades the solution 100, the skeleton 0, and survives.

The driver is run the way a student runs it, as a program (``python notebooks/labs/driver.py
DIR --json``), and its JSON is read back. The reference solution must score 100/100 and the
shipped skeleton exactly 0/100, each within a time bound; parts are graded independently; a
proxy that does not start, or hangs and ignores SIGTERM, costs FAILs and is still killed by PID;
a driver stopped with SIGTERM stops its proxy too. Like every end-to-end test here, these need
curl: they skip without it locally and fail without it under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_program

REPO = Path(__file__).resolve().parent.parent
LABS = REPO / "notebooks" / "labs"
DRIVER = LABS / "driver.py"
SOLUTION = LABS / "solution"
SKELETON = LABS / "proxylab"
GIVEN = ("labproxy.py", "context.py", "pages.py", "client.py")


@pytest.fixture(autouse=True)
def driver_needs() -> None:
    """curl (skip locally, fail under CI) and trustme, as the driver itself requires."""
    require_program("curl")
    pytest.importorskip("trustme")


def environment() -> dict[str, str]:
    """The test's environment, with this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def grade(implementation: Path, *options: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Run the driver with ``--json``; return its document and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(implementation), "--json", *options],
        capture_output=True,
        timeout=timeout,
        env=environment(),
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(done.stdout), elapsed


def failures(document: dict[str, Any]) -> dict[str, str]:
    """Check id -> message of every failed check."""
    return {c["id"]: c["message"] for c in document["checks"] if not c["passed"]}


@pytest.mark.slow
def test_the_reference_solution_scores_100() -> None:
    document, elapsed = grade(SOLUTION, timeout=240)
    assert failures(document) == {}
    assert (document["total"], document["max"]) == (100, 100)
    assert {part: p["score"] for part, p in document["parts"].items()} == {
        "A": 35,
        "B": 30,
        "C": 35,
    }
    assert len(document["checks"]) == 26
    assert document["rules"] == []
    assert elapsed < 120, f"the solution took {elapsed:.0f} s to grade"


def test_the_shipped_skeleton_scores_0_quickly() -> None:
    document, elapsed = grade(SKELETON, timeout=180)
    assert (document["total"], document["max"]) == (0, 100)
    failed = failures(document)
    assert len(failed) == 26, "every check ran, and failed"
    # Each failure says what is missing: the skeleton's 501 "not implemented yet" pages.
    for check_id, message in failed.items():
        assert "501" in message, (check_id, message)
    assert "not implemented yet: Part A: forward() in forward.py" in failed["A1"]
    assert "not implemented yet: Part B: open_tunnel() in tunnel.py" in failed["B3"]
    assert document["rules"] == []
    assert elapsed < 60, f"the skeleton took {elapsed:.0f} s to grade"


def test_the_given_files_are_the_same_in_skeleton_and_solution() -> None:
    for name in GIVEN:
        assert (SKELETON / name).read_bytes() == (SOLUTION / name).read_bytes(), name
    assert {p.name for p in SKELETON.glob("*.py")} == {p.name for p in SOLUTION.glob("*.py")}


@pytest.mark.slow
def test_parts_are_graded_independently(tmp_path: Path) -> None:
    """The solution with the skeleton's tunnel.py: all of Part A, of Part B only B7.

    B7 (a slow reader of a large GET) is the relay's backpressure, which lives in forward.py.
    """
    mixed = tmp_path / "mixed"
    shutil.copytree(SOLUTION, mixed)
    shutil.copy(SKELETON / "tunnel.py", mixed / "tunnel.py")
    document, _ = grade(mixed, "--parts", "AB", timeout=240)
    assert (document["total"], document["max"]) == (38, 65)
    assert (document["parts"]["A"]["score"], document["parts"]["B"]["score"]) == (35, 3)
    assert set(failures(document)) == {f"B{n}" for n in range(1, 9)} - {"B7"}


def test_a_proxy_with_no_cache_scores_0_in_part_c(tmp_path: Path) -> None:
    """The solution with a cache that never answers: every Part C check fails, C4 included.

    C4 (what must not come from the cache) would pass on a proxy with no cache at all, which
    sends everything to the origin; its control resource stops that.
    """
    uncached = tmp_path / "uncached"
    shutil.copytree(SOLUTION, uncached)
    cache = uncached / "cache.py"
    source = cache.read_text()
    refuse = '    if request.method != "GET":\n        return False\n'
    assert source.count(refuse) == 1, "cacheable_request() changed: update this test"
    cache.write_text(source.replace(refuse, "    return False  # no cache at all\n"))
    document, _ = grade(uncached, "--parts", "C", timeout=180)
    assert (document["total"], document["max"]) == (0, 35)
    assert "the control" in failures(document)["C4"]


def write_proxy(directory: Path, source: str) -> Path:
    directory.mkdir()
    (directory / "labproxy.py").write_text(textwrap.dedent(source))
    return directory


def test_a_proxy_that_never_starts_scores_0_and_breaking_the_rules_is_reported(
    tmp_path: Path,
) -> None:
    broken = write_proxy(
        tmp_path / "broken",
        """
        import sys
        import threading
        from proxy.target import parse_target
        print("starting, then giving up", file=sys.stderr)
        sys.exit(3)
        """,
    )
    document, elapsed = grade(broken, timeout=60)
    assert document["total"] == 0
    for message in failures(document).values():
        assert "exited with status 3 before listening" in message
        assert "giving up" in message, "the proxy's last log lines are shown"
    assert document["rules"] == [
        "labproxy.py imports threading (the reactor, not threads)",
        "labproxy.py imports proxy.target (only proxy.http11 of the project)",
    ]
    assert elapsed < 30


HUNG = """
    # Listens, never accepts, ignores SIGTERM: the worst a student's proxy can do.
    import signal, socket, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(50)
    open(sys.argv[0] + ".pid", "w").write(str(__import__("os").getpid()))
    print("labproxy listening on 127.0.0.1:%d" % sock.getsockname()[1], flush=True)
    while True:
        time.sleep(1)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_hung_proxy_fails_within_the_timeouts_and_is_killed(tmp_path: Path) -> None:
    hung = write_proxy(tmp_path / "hung", HUNG)
    document, elapsed = grade(hung, "--only", "A2", timeout=120)
    assert document["total"] == 0
    assert "no complete response within 5 s" in failures(document)["A2"]
    assert elapsed < 60
    pid = int((hung / "labproxy.py.pid").read_text())
    assert gone(pid), "the driver killed the proxy that ignored SIGTERM"


def test_a_driver_stopped_by_sigterm_stops_its_proxy(tmp_path: Path) -> None:
    hung = write_proxy(tmp_path / "hung", HUNG)
    pid_file = hung / "labproxy.py.pid"
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(hung), "--only", "A2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
    )
    try:
        # Once the proxy has written its PID file it is about to listen, and the driver then
        # spends 5 s in check A2 waiting for an answer: stop the driver in the middle of it.
        deadline = time.monotonic() + 30
        while not pid_file.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_file.exists(), "the driver never started the proxy"
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(30) == 128 + signal.SIGTERM
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
    assert gone(int(pid_file.read_text()))


def test_a_missing_implementation_is_a_one_line_error() -> None:
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(LABS / "no-such-lab")],
        capture_output=True,
        timeout=60,
        env=environment(),
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode().strip().count("\n") == 0
    assert b"no lab proxy at" in done.stderr

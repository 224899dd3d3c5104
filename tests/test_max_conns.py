"""The ``--max-conns`` default: derived from ``RLIMIT_NOFILE``, with headroom for origin sockets."""

from __future__ import annotations

import inspect
import os
import resource
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minireactor.splice import PipePool
from proxy.__main__ import build_parser, config_from_args
from proxy.config import (
    FDS_PER_CONNECTION,
    RESERVED_FDS,
    SPLICE_PIPE_FDS,
    Config,
    max_conns_for,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("fd_limit", "expected"),
    [(1024, 432), (4096, 1968), (20000, 9920), (65536, 32688), (1 << 20, 524208)],
)
def test_formula_leaves_the_reserve_and_halves_the_rest(fd_limit, expected):
    assert max_conns_for(fd_limit) == expected == (fd_limit - 160) // 2


@pytest.mark.parametrize("fd_limit", [162, 500, 1024, 9999, 20000, 65536])
def test_every_client_with_its_origin_socket_fits_beside_the_reserve(fd_limit):
    conns = max_conns_for(fd_limit)
    assert conns * FDS_PER_CONNECTION + RESERVED_FDS + SPLICE_PIPE_FDS <= fd_limit
    # ...and no more than one pair of descriptors is left unused.
    assert (conns + 1) * FDS_PER_CONNECTION + RESERVED_FDS + SPLICE_PIPE_FDS > fd_limit


@pytest.mark.parametrize("fd_limit", [0, 1, 48, 160])
def test_a_tiny_limit_still_admits_one_client(fd_limit):
    assert max_conns_for(fd_limit) == 1


def test_nine_thousand_tunnels_fit_under_the_usual_20000_descriptors():
    assert max_conns_for(20000) >= 9000


def test_the_pipe_reserve_matches_the_splice_pool():
    max_pipes = inspect.signature(PipePool.__init__).parameters["max_pipes"].default
    assert 2 * max_pipes == SPLICE_PIPE_FDS


def test_config_and_command_line_follow_the_current_soft_limit():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert Config().max_conns == max_conns_for(soft)
    assert config_from_args(build_parser().parse_args([])).max_conns == max_conns_for(soft)
    assert config_from_args(build_parser().parse_args(["--max-conns", "7"])).max_conns == 7


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_max_conns_exits_2_with_one_line(value):
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--max-conns", value],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    assert [line for line in out.stderr.splitlines() if "error:" in line], out.stderr
    assert "Traceback" not in out.stderr


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one():
    # In a child: the test process keeps its own limits.
    code = (
        "import resource\n"
        "from proxy.config import raise_fd_limit\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    returned, soft, hard = (int(x) for x in out.stdout.split())
    assert returned == soft == min(hard, 1 << 20)


def _soft_fd_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except OSError:
        pass
    return None


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs Linux /proc")
def test_the_proxy_raises_its_soft_limit_at_start_up(tmp_path):
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 300))

    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--port", "0", "--blacklist", str(blacklist)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=low_soft_limit,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            # The listening line comes once the limit has been raised.
            while "listening on" not in seen and time.monotonic() < deadline:
                if sel.select(timeout=deadline - time.monotonic()):
                    chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
                    if not chunk:
                        break
                    seen += chunk
        assert "listening on" in seen, seen
        assert _soft_fd_limit(proc.pid) == 300
    finally:
        proc.kill()
        proc.wait(10)

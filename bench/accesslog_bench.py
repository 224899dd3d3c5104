"""Micro-benchmark: cost per access-log line, buffered writer vs ``logging`` with a FileHandler.

Theory of operation
-------------------
Run by hand: ``python bench/accesslog_bench.py [--lines N] [--repeat R]``.
Both sides start from the same prebuilt :class:`~proxy.accesslog.AccessRecord` objects and
write to a real file in a temporary folder, so each line pays its formatting and its share of
the system calls:

* ``logging``: what the proxy did before (issue 15): ``logger.info("%s", line)`` on a logger
  with a :class:`logging.FileHandler` and the console's format
  (``%(asctime)s %(levelname)s %(name)s: %(message)s``), the line made by the same
  :func:`~proxy.accesslog.squid_line`; the handler writes and flushes once per line.
* ``AccessLog``: :meth:`~proxy.accesslog.AccessLog.log` buffering the line, with a flush
  scheduled once per tick. A tick here is every *K* lines (K = 1, 8, 64): K = 1 is an idle
  proxy finishing one request per tick, larger K a loaded one finishing many.

Each figure is the best of R runs of N lines (the least disturbed by other processes), and
the ratios are taken within the same run of the script, on the same machine state.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.accesslog import FORMATS, AccessLog, AccessRecord, FdSink, squid_line  # noqa: E402


def records(count: int) -> list[AccessRecord]:
    """Distinct records, as a session would fill them."""
    now = time.time()
    return [
        AccessRecord(
            at=now + i * 0.0001,
            duration=0.0031,
            client_ip="127.0.0.1",
            client_port=40000 + i % 20000,
            method="GET",
            url=f"http://127.0.0.1:8080/item/{i}",
            status=200,
            bytes_sent=426,
            bytes_received=93,
            result="TCP_MISS",
            hierarchy="HIER_DIRECT",
            peer="127.0.0.1",
            content_type="text/plain",
        )
        for i in range(count)
    ]


class Ticks:
    """Runs the scheduled flush every *per_tick* lines, as a reactor would at the tick's end."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> object:
        self.ready.append(callback)
        return None

    def tick(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def time_logging(batch: list[AccessRecord], folder: Path) -> float:
    path = folder / "logging.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("bench.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        started = time.perf_counter()
        for record in batch:
            logger.info("%s", squid_line(record))
        elapsed = time.perf_counter() - started
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert path.read_text().count("\n") == 2 * len(batch)  # the line's own "\n" and the handler's
    path.unlink()
    return elapsed


def time_access_log(batch: list[AccessRecord], folder: Path, per_tick: int, fmt: str) -> float:
    path = folder / "accesslog.log"
    ticks = Ticks()
    access = AccessLog(FdSink.open(str(path)), FORMATS[fmt], ticks)
    log = access.log
    started = time.perf_counter()
    for start in range(0, len(batch), per_tick):
        for record in batch[start : start + per_tick]:
            log(record)
        ticks.tick()
    access.close()
    elapsed = time.perf_counter() - started
    assert path.read_text().count("\n") == len(batch)
    path.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    batch = records(args.lines)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        best_logging = min(time_logging(batch, folder) for _ in range(args.repeat))
        rows.append(("logging FileHandler, squid line", best_logging))
        for per_tick in (1, 8, 64):
            best = min(
                time_access_log(batch, folder, per_tick, "squid") for _ in range(args.repeat)
            )
            rows.append((f"AccessLog squid, {per_tick} line(s) per tick", best))
        for fmt in ("combined", "json"):
            best = min(time_access_log(batch, folder, 8, fmt) for _ in range(args.repeat))
            rows.append((f"AccessLog {fmt}, 8 lines per tick", best))
    print(f"{args.lines} lines, best of {args.repeat}, Python {sys.version.split()[0]}")
    print(f"{'writer':42} {'us/line':>8} {'vs logging':>11}")
    for name, seconds in rows:
        per_line = seconds / args.lines * 1e6
        print(f"{name:42} {per_line:8.2f} {best_logging / seconds:10.1f}x")


if __name__ == "__main__":
    main()

"""Benchmark of the blocklist: parse time, memory, lookup cost and reload latency.

Theory of operation
-------------------
Run by hand: ``python bench/blocklist_bench.py [--domains N] [--lookups M]``.
It builds an N-domain list in memory (default 1,000,000), times :func:`parse`,
measures the snapshot's memory twice (RSS growth during the timed parse, and the
:mod:`tracemalloc` peak of a second, traced parse, which is slower and not timed),
then times M hits and M misses of :meth:`Blocklist.match` (hosts with 4 labels).
Finally it saves a small file 20 times by rename through a real
:class:`~proxy.blocklist.watch.BlocklistWatcher`, for the native and the polling observer,
and reports the save-to-deliver latency.  Every wait is bounded.
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.blocklist import parse  # noqa: E402
from proxy.blocklist.watch import BlocklistWatcher  # noqa: E402


def rss_bytes() -> int:
    """Return the resident set size of this process (Linux), or 0 if unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def reload_latency(use_polling: bool, saves: int = 20) -> list[float]:
    """Save a small file *saves* times by rename; return save-to-deliver times in ms."""
    got: queue.Queue[float] = queue.Queue()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "blacklist.txt"
        path.write_text("start.example\n")
        watcher = BlocklistWatcher(
            path, lambda bl, rep: got.put(time.perf_counter()), use_polling=use_polling
        )
        watcher.start()
        times = []
        try:
            for i in range(saves):
                tmp = path.with_name("blacklist.txt.tmp")
                t0 = time.perf_counter()
                tmp.write_text(f"start.example\nsave{i}.example\n")
                os.replace(tmp, path)
                times.append((got.get(timeout=10) - t0) * 1000)
                while not got.empty():  # a split burst: drain before the next save
                    got.get_nowait()
        finally:
            watcher.stop()
    return times


def main() -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    args = ap.parse_args()
    n, m = args.domains, args.lookups
    rng = random.Random(1)
    domains = [f"site{i}-{rng.randrange(10**6)}.example{i % 50}.com" for i in range(n)]
    text = "\n".join(domains) + "\n"
    rows: list[tuple[str, str]] = [
        ("domains in list", f"{n:,}"),
        ("text size", f"{len(text) / 1e6:.1f} MB"),
    ]

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    bl = parse(text)
    parse_s = time.perf_counter() - t0
    rss_delta = rss_bytes() - rss0
    assert len(bl) == n and not bl.errors
    rows += [("parse time", f"{parse_s:.2f} s ({parse_s / n * 1e6:.2f} us/rule)")]
    rows += [("RSS growth during parse", f"{rss_delta / 2**20:.0f} MiB")]

    hits = [f"www.a.{rng.choice(domains)}" for _ in range(m)]  # 5-6 labels
    misses = [f"www.a.nothere{i}.example{i % 50}.com" for i in range(m)]
    for name, hosts, expect in (("hit", hits, True), ("miss", misses, False)):
        match = bl.match
        t0 = time.perf_counter()
        for h in hosts:
            match(h, "/index.html")
        per = (time.perf_counter() - t0) / m * 1e6
        assert (match(hosts[0], "/") is not None) == expect
        rows.append((f"match() {name}", f"{per:.2f} us ({m:,} lookups)"))

    del bl
    gc.collect()
    tracemalloc.start()
    bl = parse(text)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows += [
        ("tracemalloc: Blocklist kept", f"{current / 2**20:.0f} MiB ({current / n:.0f} B/rule)")
    ]
    rows += [("tracemalloc: parse peak", f"{peak / 2**20:.0f} MiB")]
    del bl, text

    for kind, polling in (("native", False), ("polling", True)):
        lat = reload_latency(polling)
        rows.append(
            (
                f"reload latency, {kind} (20 saves)",
                f"median {statistics.median(lat):.0f} ms, worst {max(lat):.0f} ms",
            )
        )

    width = max(len(k) for k, _ in rows)
    print(f"python {sys.version.split()[0]}, blocklist benchmark")
    print("-" * (width + 40))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()

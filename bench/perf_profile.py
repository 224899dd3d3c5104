"""Profile our proxy on its hot path: ``ab -k`` on the 100-byte file, under cProfile.

Theory of operation
-------------------
The proxy runs as ``python -m cProfile -o FILE -m proxy ...``. After the load, SIGINT asks it to
shut down; it stops its loop cleanly, so cProfile's ``atexit``-free path still writes *FILE*
when ``main`` returns. The report shows the top 15 functions by own time (where the CPU goes)
and by cumulative time (which call chains cost most), beside the direct and unprofiled
figures so the profiler's own overhead is visible.
"""

from __future__ import annotations

import io
import pstats
import sys
from pathlib import Path
from typing import Any

import perf_load as load
from perf_procs import Stack, raise_nofile, start_origin
from perf_proxies import start_ours


def profile_ours(cfg: dict[str, Any], tmp: Path, stack: Stack, out: Path, own_origin: bool) -> str:
    """Run ab -k through a profiled proxy; write ``out.prof`` and ``out.txt``; return the text."""
    raise_nofile()
    origin = start_origin(stack, tmp, force_own=own_origin)
    url = origin.url("small.bin")
    count, limit = cfg["requests"], cfg["ab_limit"] * 3

    def ab(port: int | None) -> dict[str, Any]:
        return load.ab(url, port, keepalive=True, requests=count, limit=limit)

    direct = ab(None)
    with Stack() as sub:
        plain = ab(start_ours(sub, tmp, origin, cache=False).port)
    prof = out.with_suffix(".prof")
    prefix = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m"]
    with Stack() as sub:
        proc = start_ours(sub, tmp, origin, cache=False, argv_prefix=prefix)
        profiled = ab(proc.port)
        proc.stop(timeout=30)  # SIGINT: clean shutdown, then cProfile writes the file
    lines = [
        f"ab -k -c 50 -n {count} {url}",
        f"direct: {direct.get('rps')} req/s; ours: {plain.get('rps')} req/s; "
        f"ours under cProfile: {profiled.get('rps')} req/s",
    ]
    if not prof.exists():
        lines.append(f"no profile written ({prof}); proxy log: {proc.log_tail()}")
        return "\n".join(lines)
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats = pstats.Stats(str(prof), stream=buf)
        # The cumulative list opens with ~10 frames of runpy and the loop: show a few more.
        stats.strip_dirs().sort_stats(order).print_stats(15 if order == "tottime" else 30)
        text = buf.getvalue()
        lines += [f"\n=== top 15 by {order} ===", text[text.find("   ncalls") :]]
    report = "\n".join(lines)
    out.with_suffix(".txt").write_text(report)
    return report

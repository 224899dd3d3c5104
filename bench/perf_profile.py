"""Profile our proxy on its hot path: ``ab -k`` on the 100-byte file, under cProfile.

Theory of operation
-------------------
The proxy runs as ``python -m cProfile -o FILE -m proxy ...`` with the benchmark's default
flags (access log on, to a file, unless ``--access-logs off``). After the load, SIGINT asks it
to shut down; it stops its loop cleanly, so cProfile writes *FILE* when ``main`` returns.

A profile of a server is only readable per request: the report divides every figure by the
requests ``ab`` completed. It gives the Python calls per request (``total_calls``), then the
top functions by own time (where the CPU goes) and by cumulative time (which call chains cost
most), each with its calls, own and cumulative microseconds per request, beside the direct
and unprofiled rates so the profiler's own overhead is visible. cProfile's raw listing follows
for anything the summary leaves out.
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

# The cumulative list opens with runpy, the loop and the dispatcher: frames every request is
# under, which say nothing. They are dropped from the per-request summary (not from the raw one).
_FRAMES = ("runpy", "cProfile", "<built-in method builtins.exec>", "run_loop", "run_once")


def _name(func: tuple[str, int, str]) -> str:
    path, line, name = func
    return f"{Path(path).name}:{line}({name})" if line else name


def per_request(prof: Path, requests: float, order: str, top: int) -> str:
    """The *top* functions of *prof* by *order*, figures per request."""
    stats = pstats.Stats(str(prof))
    entries = stats.stats  # type: ignore[attr-defined]
    key = 2 if order == "tottime" else 3
    ranked = sorted(entries.items(), key=lambda item: item[1][key], reverse=True)
    lines = [f"{'calls/req':>9} {'own us/req':>10} {'cum us/req':>10}  function"]
    for func, (_, ncalls, tottime, cumtime, _) in ranked:
        name = _name(func)
        if order == "cumulative" and any(frame in name for frame in _FRAMES):
            continue
        lines.append(
            f"{ncalls / requests:9.2f} {tottime / requests * 1e6:10.2f} "
            f"{cumtime / requests * 1e6:10.2f}  {name}"
        )
        if len(lines) > top:
            break
    return "\n".join(lines)


def profile_ours(cfg: dict[str, Any], tmp: Path, stack: Stack, out: Path, own_origin: bool) -> str:
    """Run ab -k through a profiled proxy; write ``out.prof`` and ``out.txt``; return the text."""
    raise_nofile()
    origin = start_origin(stack, tmp, force_own=own_origin)
    url = origin.url("small.bin")
    count, limit = cfg["requests"], cfg["ab_limit"] * 3
    logs = cfg.get("access_logs", True)

    def ab(port: int | None) -> dict[str, Any]:
        return load.ab(url, port, keepalive=True, requests=count, limit=limit)

    direct = ab(None)
    with Stack() as sub:
        plain = ab(start_ours(sub, tmp, origin, cache=False, access_log=logs).port)
    prof = out.with_suffix(".prof")
    prefix = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m"]
    with Stack() as sub:
        proc = start_ours(sub, tmp, origin, cache=False, access_log=logs, argv_prefix=prefix)
        profiled = ab(proc.port)
        proc.stop(timeout=30)  # SIGINT: clean shutdown, then cProfile writes the file
    lines = [
        f"ab -k -c 50 -n {count} {url}; ours with default flags, access log "
        f"{'on (stderr to a file)' if logs else 'off'}",
        f"direct: {direct.get('rps')} req/s; ours: {plain.get('rps')} req/s; "
        f"ours under cProfile: {profiled.get('rps')} req/s",
    ]
    done = profiled.get("done") or 0
    if not prof.exists() or not done:
        lines.append(f"no profile written ({prof}, {done} requests); log: {proc.log_tail()}")
        return "\n".join(lines)
    stats = pstats.Stats(str(prof))
    total_calls = stats.total_calls  # type: ignore[attr-defined]
    total_time = stats.total_tt  # type: ignore[attr-defined]
    lines.append(
        f"{done:.0f} requests profiled: {total_calls / done:.0f} Python calls and "
        f"{total_time / done * 1e6:.0f} us of profiled time per request"
    )
    for order, top in (("tottime", 25), ("cumulative", 30)):
        lines += [
            f"\n=== top {top} by {order}, per request ===",
            per_request(prof, done, order, top),
        ]
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        raw = pstats.Stats(str(prof), stream=buf)
        raw.strip_dirs().sort_stats(order).print_stats(15 if order == "tottime" else 30)
        text = buf.getvalue()
        lines += [f"\n=== cProfile: top by {order} ===", text[text.find("   ncalls") :]]
    report = "\n".join(lines)
    out.with_suffix(".txt").write_text(report)
    return report

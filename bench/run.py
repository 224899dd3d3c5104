"""Performance benchmark: our proxy beside no proxy, squid, tinyproxy and proxy.py, on loopback.

Usage::

    python bench/run.py                      # full run, 3 repetitions (~15 min on 2 cores)
    python bench/run.py --quick              # 1 repetition, fewer requests (~2 min)
    python bench/run.py --scenarios ab-k,wrk-64k --proxies ours,squid --reps 5
    python bench/run.py --scenarios tunnels --tunnels 9000
    python bench/run.py --access-logs off    # every proxy with its access log off
    python bench/run.py --profile            # ab -k through our proxy under cProfile
    git worktree add /tmp/before HEAD~3      # then, before and after side by side:
    python bench/run.py --scenarios ab-k,wrk-64k --proxies ours --baseline /tmp/before

Theory of operation
-------------------
An origin that is not the bottleneck (nginx if installed, else :mod:`perf_origin`) serves a
100-byte, a 64 KiB, a 256 MiB and a 1 GiB file over HTTP and TLS. Each selected proxy runs as a
subprocess on its own port (:mod:`perf_proxies`); every figure is taken beside a *direct* run
(no proxy) in the same invocation, so the ratios compare like with like on a noisy machine.
Every proxy runs in its default configuration, access log on as it ships (``--access-logs
off`` turns them all off; ``ours-nolog`` is ours without it in any run), and the report sets
each of our variants beside direct and beside every peer of the same run, then checks the
project's targets (:mod:`perf_report`).

Throughput scenarios run first, with repetitions interleaved across targets (direct, then each
proxy, then again) so drift in the machine's speed hits every target alike; the table shows
medians. The memory scenarios then run once per proxy against a *fresh* instance, so the RSS
baseline is not inflated by earlier transfers. Every child is stopped by PID in a ``finally``,
Ctrl-C included. A missing tool or proxy only turns its row into "skipped (...)".

Results go to ``bench/results/`` (gitignored): ``perf-<time>.json`` (raw figures),
``perf-<time>.png`` (plot) and, with ``--profile``, ``profile-<time>.txt``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf_load as load  # noqa: E402
from perf_procs import (  # noqa: E402
    FILES,
    Origin,
    Proc,
    Stack,
    cpu_seconds,
    raise_nofile,
    start_holder,
    start_origin,
)
from perf_proxies import PROXIES, start_proxy  # noqa: E402
from perf_report import SCENARIOS, THROUGHPUT, plot, report, summarize, write_json  # noqa: E402

MEMORY = ("tunnels", "slow-http", "slow-connect")
CACHING = ("ours-cache", "ours-cachedir", "squid-cache")  # the hit path, not the big transfers
RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python bench/run.py``."""
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__.split("Theory of operation")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scenarios: " + ", ".join(f"{k} ({v[0]})" for k, v in SCENARIOS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition, small counts")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument(
        "--proxies", default=None, help=f"comma-separated of {','.join(PROXIES)} (default all)"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (3; quick: 1)")
    parser.add_argument("--requests", type=int, default=None, help="ab -n (20000; quick: 4000)")
    parser.add_argument("--ab-limit", type=float, default=None, help="ab -t seconds (6; quick 4)")
    parser.add_argument("--duration", type=float, default=None, help="wrk -d seconds (4; quick 2)")
    parser.add_argument("--tunnels", type=int, default=None, help="idle tunnels (9000; quick 500)")
    parser.add_argument(
        "--access-logs",
        choices=("on", "off"),
        default="on",
        help="every proxy's access log as it ships, or all off (%(default)s)",
    )
    parser.add_argument(
        "--slow-seconds", type=float, default=None, help="slow reader time cap (12; quick 5)"
    )
    parser.add_argument(
        "--slow-rate", type=float, default=96.0, help="slow reader rate, MiB/s (%(default)s)"
    )
    parser.add_argument("--own-origin", action="store_true", help="use perf_origin, not nginx")
    parser.add_argument("--proxypy-path", default=None, help="folder with PyPI's proxy.py")
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="DIR",
        help="a checkout of another commit, run beside ours (cache off) as 'baseline'",
    )
    parser.add_argument("--profile", action="store_true", help="profile ours under ab -k instead")
    parser.add_argument("--out", default=str(RESULTS), help="results folder (%(default)s)")
    return parser


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the quick/full defaults into one dict (also stored in the JSON)."""
    quick = args.quick

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    default_proxies = (
        "ours,ours-cache,squid" if quick else ",".join(p for p in PROXIES if p != "baseline")
    )
    chosen = [p for p in (args.proxies or default_proxies).split(",") if p in PROXIES]
    if args.baseline and "baseline" not in chosen:
        chosen.insert(chosen.index("ours") + 1 if "ours" in chosen else 0, "baseline")
    return {
        "quick": quick,
        "scenarios": [s for s in args.scenarios.split(",") if s in SCENARIOS],
        "proxies": chosen,
        "reps": pick(args.reps, 3, 1),
        "requests": pick(args.requests, 20000, 4000),
        "ab_limit": pick(args.ab_limit, 6.0, 4.0),
        "duration": pick(args.duration, 4.0, 2.0),
        "tunnels": pick(args.tunnels, 9000, 500),
        "access_logs": args.access_logs == "on",
        "slow_seconds": pick(args.slow_seconds, 12.0, 5.0),
        "slow_rate": args.slow_rate * (1 << 20),
        "curl_limit": pick(None, 20.0, 10.0),
    }


def throughput(
    scenario: str, origin: Origin, proxy: Proc | None, cfg: dict[str, Any], tmp: Path
) -> dict[str, Any]:
    """One repetition of a throughput scenario through *proxy* (None: direct)."""
    port = proxy.port if proxy else None
    if scenario.endswith("256m"):
        # The proxy's CPU time tells what a relay costs even when the client is the bottleneck.
        cpu = cpu_seconds(proxy.pid) if proxy else 0.0
        url = origin.url("big.bin", tls=scenario == "connect-256m")
        result = load.curl_download(url, port, cacert=str(origin.ca), limit=cfg["curl_limit"])
        if proxy and "mbps" in result:
            result["proxy_cpu_s"] = cpu_seconds(proxy.pid) - cpu
        return result
    small = origin.url("small.bin")
    # CPU per request is the steadiest figure on a shared machine: a proxy's share of the CPU
    # varies with the load beside it, the work it does per request much less.
    cpu = cpu_seconds(proxy.pid) if proxy else 0.0
    if scenario in ("ab-k", "ab"):
        keep = scenario == "ab-k"
        count = cfg["requests"] if keep else cfg["requests"] // 2
        result = load.ab(small, port, keepalive=keep, requests=count, limit=cfg["ab_limit"])
    else:
        url = small if scenario == "wrk-small" else origin.url("mid.bin")
        result = load.wrk(url, port, duration=cfg["duration"], script_dir=str(tmp))
    if proxy and result.get("done"):
        result["proxy_cpu_us"] = (cpu_seconds(proxy.pid) - cpu) / result["done"] * 1e6
    return result


def memory(
    scenario: str, origin: Origin, proxy: Proc | None, cfg: dict[str, Any], holder: int | None
) -> dict[str, Any]:
    """One run of a memory scenario through *proxy* (None: direct, no RSS to read)."""
    port, pid = (proxy.port, proxy.pid) if proxy else (None, None)
    if scenario == "tunnels":
        # The holder keeps idle connections open as long as asked (nginx would time them out).
        target = ("127.0.0.1", holder or origin.tls_port)
        return load.idle_tunnels(port, pid, target, count=cfg["tunnels"], limit=240.0)
    tunnel = ("127.0.0.1", origin.http_port) if scenario == "slow-connect" else None
    return load.slow_reader(
        port,
        pid,
        origin.url("huge.bin"),
        tunnel=tunnel,
        total=FILES["huge.bin"],
        rate=cfg["slow_rate"],
        limit=cfg["slow_seconds"],
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_all(cfg: dict[str, Any], args: argparse.Namespace, tmp: Path, stack: Stack) -> dict:
    """Every selected scenario against direct and every selected proxy; return raw figures."""
    nofile = raise_nofile()
    origin = start_origin(stack, tmp, force_own=args.own_origin)
    _say(f"origin: {origin.kind} on {origin.http_port} (TLS {origin.tls_port}); nofile {nofile}")
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for tls in (False, True):  # warm the page cache and nginx before anything is timed
        load.curl_download(origin.url("big.bin", tls), None, cacert=str(origin.ca), limit=30)

    def start(name: str, sub: Stack) -> Proc | str:
        return start_proxy(
            name,
            sub,
            tmp,
            origin,
            nofile=nofile,
            tunnels=cfg["tunnels"],
            proxypy=args.proxypy_path,
            baseline=args.baseline,
            access_logs=cfg["access_logs"],
        )

    tput = [s for s in cfg["scenarios"] if s in THROUGHPUT]
    if tput:
        with Stack() as sub:
            procs: dict[str, Proc | str] = {name: start(name, sub) for name in cfg["proxies"]}
            for rep in range(cfg["reps"]):
                for scenario in tput:
                    for name, proc in [("direct", None), *procs.items()]:
                        if name in CACHING and scenario.endswith("256m"):
                            continue  # bigger than the cache's largest object: same as no cache
                        if name == "ours-nosplice" and scenario != "connect-256m":
                            continue  # splice only changes how tunnel bytes move
                        if name == "floor" and scenario not in ("ab-k", "ab", "wrk-small"):
                            continue  # it sends a whole response at once: 100 B ones only
                        if name in ("ours-nolog", "ours-logbeside") and scenario.endswith("256m"):
                            continue  # one log line per 256 MiB: the log costs nothing there
                        runs = raw.setdefault(scenario, {}).setdefault(name, [])
                        if isinstance(proc, str):
                            runs.append({"skipped": proc})
                            continue
                        _say(f"[rep {rep + 1}/{cfg['reps']}] {scenario} via {name}")
                        runs.append(throughput(scenario, origin, proc, cfg, tmp))
            # Proof that the logs were on (or off): the lines each wrote while it was measured.
            cfg["access_log_lines"] = {
                name: proc.access_log_lines()
                for name, proc in procs.items()
                if isinstance(proc, Proc)
            }
    holder = start_holder(stack, tmp) if "tunnels" in cfg["scenarios"] else None
    origin.hold_port = holder
    for scenario in [s for s in cfg["scenarios"] if s in MEMORY]:
        # A memory scenario caches nothing and logs a line or none.
        skip = (*CACHING, "floor", "ours-nolog", "ours-logbeside")
        names = ["direct"] + [p for p in cfg["proxies"] if p not in skip]
        reps = cfg["reps"] if scenario == "tunnels" else 1
        if scenario != "tunnels":
            names = [n for n in names if n not in ("ours-2w", "ours-nosplice", "proxypy-1w")]
        if scenario == "slow-connect":
            names = ["direct", "ours"]  # one variant of the slow reader is enough for the others
        for rep in range(reps):
            for name in names:
                _say(f"[rep {rep + 1}/{reps}] {scenario} via {name}")
                with Stack() as sub:  # a fresh proxy each time: its RSS baseline is clean
                    proc = None if name == "direct" else start(name, sub)
                    if isinstance(proc, str):
                        figures: dict[str, Any] = {"skipped": proc}
                    else:
                        figures = memory(scenario, origin, proc, cfg, holder)
                raw.setdefault(scenario, {}).setdefault(name, []).append(figures)
    return raw


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON and plot. Exit status 0 unless Ctrl-C."""
    args = build_parser().parse_args(argv)
    cfg = settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    began = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="perf-") as folder, Stack() as stack:
        tmp = Path(folder)
        try:
            if args.profile:
                from perf_profile import profile_ours

                print(profile_ours(cfg, tmp, stack, out / f"profile-{stamp}", args.own_origin))
                return 0
            raw = run_all(cfg, args, tmp, stack)
        except KeyboardInterrupt:
            _say("interrupted: stopping every process this run started")
            return 130
    rows = summarize(raw)
    meta = {**cfg, "command": " ".join(sys.argv), "seconds": time.monotonic() - began}
    meta.update(load_before=load_before, load_after=os.getloadavg(), cpus=os.cpu_count())
    print(report(rows))
    logs = cfg.get("access_log_lines") or {}
    if logs:
        written = ", ".join(f"{k} {'off' if n is None else f'{n:,}'}" for k, n in logs.items())
        print(f"\naccess-log lines written during the throughput scenarios: {written}")
    print(
        f"\nload average before/after: {load_before[0]:.1f} / {meta['load_after'][0]:.1f} "
        f"on {os.cpu_count()} CPUs (other work on the machine skews every figure)"
    )
    write_json(out / f"perf-{stamp}.json", meta, raw, rows)
    print(f"\nraw figures written to {out / f'perf-{stamp}.json'}")
    print(plot(out / f"perf-{stamp}.png", rows))
    print(f"total time {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

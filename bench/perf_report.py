"""Summaries of the performance benchmark: the table, the JSON of raw figures, the plot.

Theory of operation
-------------------
Raw results are ``{scenario: {target: [one dict per repetition]}}``. A repetition is a dict of
figures, or ``{"skipped": reason}`` / ``{"error": message}``. The table shows, per scenario and
target, the median of the scenario's main figure over the successful repetitions, its ratio to
the direct run of the same scenario (for throughput), and a few side figures. The JSON keeps
everything, so another script can redo the statistics; the plot is drawn with matplotlib's Agg
backend (no display needed) and skipped with a note if matplotlib is missing.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

SCENARIOS: dict[str, tuple[str, str, str]] = {
    "ab-k": ("ab -k -c50, 100 B (keep-alive)", "rps", "req/s"),
    "ab": ("ab -c50, 100 B (new conn/request)", "rps", "req/s"),
    "wrk-small": ("wrk -t2 -c50, 100 B", "rps", "req/s"),
    "wrk-64k": ("wrk -t2 -c50, 64 KiB", "rps", "req/s"),
    "connect-256m": ("256 MiB via CONNECT (TLS)", "mbps", "MB/s"),
    "http-256m": ("256 MiB plain HTTP", "mbps", "MB/s"),
    "tunnels": ("idle CONNECT tunnels", "kib_per_tunnel", "KiB/tun"),
    "slow-http": ("1 GiB HTTP to a slow reader", "peak_rss_mib", "peak MiB"),
    "slow-connect": ("1 GiB CONNECT to a slow reader", "peak_rss_mib", "peak MiB"),
}
"""Scenario name -> (label, main figure key, unit)."""

FULL = "all attempted"
THROUGHPUT = ("ab-k", "ab", "wrk-small", "wrk-64k", "connect-256m", "http-256m")


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median of *key* over the repetitions that have it."""
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def _side(scenario: str, runs: list[dict[str, Any]]) -> str:
    notes = [r["error"] for r in runs if "error" in r and "run(s) failed" in r["error"]]
    if scenario in ("ab-k", "ab", "wrk-small", "wrk-64k"):
        p99 = median_of(runs, "p99_ms")
        if p99 is not None:
            notes.append(f"p99 {p99:.1f} ms")
        bad = sum((r.get("failed") or 0) + (r.get("non2xx") or 0) for r in runs)
        bad += sum(r.get("socket_errors") or 0 for r in runs)
        if bad:
            notes.append(f"{bad:.0f} errors")
        cpu = median_of(runs, "proxy_cpu_us")
        if cpu is not None:
            notes.append(f"CPU {cpu:.0f} us/req")
    elif scenario.endswith("256m"):
        cpu = median_of(runs, "proxy_cpu_s")
        if cpu is not None:
            notes.append(f"proxy CPU {cpu:.2f} s")
        cut = sum(bool(r.get("timed_out")) for r in runs)
        if cut:
            notes.append(f"{cut} run(s) hit the time limit: partial download")
    elif scenario == "tunnels":
        ok = median_of(runs, "ok")
        tried = median_of(runs, "attempted")
        if ok is not None:
            notes.append(f"{ok:.0f} of {tried or ok:.0f} open")
        after = median_of(runs, "rss_after_kib")
        if after is not None:
            notes.append(f"RSS {after / 1024:.0f} MiB")
        fds, limit = median_of(runs, "proxy_fds_after"), median_of(runs, "proxy_fd_limit")
        if fds is not None and limit is not None:
            notes.append(f"proxy fds {fds:.0f} (limit {limit:.0f}/process)")
        stops = sorted({r["stopped"] for r in runs if r.get("stopped", "all attempted") != FULL})
        reasons = sorted({why for r in runs for why in r.get("reasons", {})})
        if stops:
            notes.append("; ".join(stops) + (": " + "; ".join(reasons) if reasons else ""))
    elif scenario.startswith("slow"):
        read = median_of(runs, "read_mib")
        rate = median_of(runs, "mbps")
        base = median_of(runs, "base_rss_mib")
        if read is not None:
            notes.append(f"read {read:.0f} MiB at {rate:.0f} MB/s")
        if base is not None:
            notes.append(f"base {base:.0f} MiB")
    return ", ".join(notes)


def _mostly_failed(run: dict[str, Any]) -> bool:
    done = run.get("done") or 0
    bad = (run.get("failed") or 0) + (run.get("non2xx") or 0) + (run.get("socket_errors") or 0)
    return bool(done) and bad > done / 100


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per (scenario, target): median, ratio to direct, side notes, or the skip."""
    rows = []
    for scenario, targets in raw.items():
        label, key, unit = SCENARIOS[scenario]
        direct = median_of(targets.get("direct", []), key)
        for target, all_runs in targets.items():
            row: dict[str, Any] = {"scenario": scenario, "label": label, "target": target}
            # A run whose requests mostly failed measured the failures, not the proxy (ab
            # counts refused connections as fast requests): its rate is left out.
            runs = [r for r in all_runs if not _mostly_failed(r)]
            if len(runs) < len(all_runs):
                runs.append({"error": f"{len(all_runs) - len(runs)} run(s) failed"})
            value = median_of(runs, key)
            if value is None:
                reasons = [r.get("skipped") or r.get("error") for r in runs]
                row["note"] = next((r for r in reasons if r), None) or _side(scenario, runs)
            else:
                row.update(value=value, unit=unit, runs=sum(key in r for r in runs))
                if scenario in THROUGHPUT and direct and target != "direct":
                    row["ratio"] = value / direct
                row["note"] = _side(scenario, runs)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarize`'s rows."""
    lines = [
        f"{'scenario':34} {'target':11} {'median':>10} {'unit':8} {'x direct':>8} {'n':>2}  notes",
        "-" * 100,
    ]
    last = None
    for row in rows:
        label = row["label"] if row["scenario"] != last else ""
        last = row["scenario"]
        if "value" not in row:
            lines.append(f"{label:34} {row['target']:11} {row['note']}")
            continue
        value = row["value"]
        shown = f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        lines.append(
            f"{label:34} {row['target']:11} {shown:>10} {row['unit']:8} {ratio:>8} "
            f"{row['runs']:>2}  {row['note']}"
        )
    return "\n".join(lines)


def write_json(path: Path, meta: dict[str, Any], raw: dict[str, Any], rows: list[Any]) -> None:
    """Everything measured, with the run's settings, as JSON."""
    path.write_text(json.dumps({"meta": meta, "summary": rows, "raw": raw}, indent=1))


def plot(path: Path, rows: list[dict[str, Any]]) -> str:
    """Throughput ratios and memory figures as a PNG; return a note on what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped (matplotlib not installed)"
    ratios = [r for r in rows if "ratio" in r]
    memory = [r for r in rows if r["scenario"] not in THROUGHPUT and "value" in r]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    scenarios = [s for s in THROUGHPUT if any(r["scenario"] == s for r in ratios)]
    targets = sorted({r["target"] for r in ratios})
    width = 0.8 / max(1, len(targets))
    for i, target in enumerate(targets):
        ys = [
            next((r["ratio"] for r in ratios if r["scenario"] == s and r["target"] == target), 0)
            for s in scenarios
        ]
        ax.bar([x + i * width for x in range(len(scenarios))], ys, width, label=target)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(scenarios))])
    ax.set_xticklabels(scenarios, rotation=20)
    ax.set_ylabel("throughput / direct (median)")
    ax.set_title("Throughput relative to no proxy")
    if ax.get_legend_handles_labels()[0]:  # a run of memory scenarios only has no bars here
        ax.legend(fontsize=8)
    ax = axes[1]
    labels = [f"{r['scenario']}\n{r['target']}" for r in memory]
    ax.barh(labels, [r["value"] for r in memory], color="tab:orange")
    for y, r in enumerate(memory):
        ax.text(r["value"], y, f" {r['value']:.1f} {r['unit']}", va="center", fontsize=8)
    ax.set_title("Memory (KiB per idle tunnel; peak RSS MiB with a slow reader)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"

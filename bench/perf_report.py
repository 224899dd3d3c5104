"""Summaries of the performance benchmark: the table, the JSON of raw figures, the plot.

Theory of operation
-------------------
Raw results are ``{scenario: {target: [one dict per repetition]}}``. A repetition is a dict of
figures, or ``{"skipped": reason}`` / ``{"error": message}``. The table shows, per scenario and
target, the median of the scenario's main figure over the successful repetitions, its ratio to
the direct run of the same scenario (for throughput), and a few side figures.

Every target is also set beside every other of the same run: each row's ``vs`` maps the other
targets to the ratio of the two medians, and :func:`matrix` prints, per scenario, our variants
(rows) against direct, ours and each peer (columns), so "ours / Squid" is read off one
invocation rather than divided across two. :func:`targets` checks the project's goals (at least
Squid on small requests, 2x Squid on 64 KiB, 0.95x direct through ``CONNECT``...) from the
same figures. Ratios are computed from the medians stored in each row, so a JSON written before
``vs`` existed renders the same way.

The JSON keeps everything, so another script can redo the statistics; the plot is drawn with
matplotlib's Agg backend (no display needed) and skipped with a note if matplotlib is missing.
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

GOALS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("ab -k 100 B, one process: at least Squid", "ab-k", "ours", "squid", 1.0),
    ("ab 100 B, new connection each: at least Squid", "ab", "ours", "squid", 1.0),
    ("--workers 2 on two cores, ab -k (x one process)", "ab-k", "ours-2w", "ours", None),
    ("--workers 2 on two cores, ab (x one process)", "ab", "ours-2w", "ours", None),
    ("wrk 64 KiB: at least 2x Squid", "wrk-64k", "ours", "squid", 2.0),
    ("256 MiB through CONNECT: at least 0.95x direct", "connect-256m", "ours", "direct", 0.95),
    ("256 MiB plain HTTP: at least 0.5x direct", "http-256m", "ours", "direct", 0.5),
    ("cache hit, ab -k: at least Squid's memory cache", "ab-k", "ours-cache", "squid-cache", 1.0),
    ("access log on / off, ab -k", "ab-k", "ours", "ours-nolog", None),
)
"""(what, scenario, target, reference, least ratio or None for a figure without a verdict)."""
TUNNEL_GOAL = (9000, 3.0)
"""Idle tunnels that must all open with default flags, and the most KiB of RSS each."""


def is_ours(target: str) -> bool:
    """Whether *target* is a variant of our proxy (a row of the matrix) rather than a peer."""
    return target.startswith("ours") or target == "baseline"


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
                if scenario == "tunnels":
                    row.update(ok=median_of(runs, "ok"), attempted=median_of(runs, "attempted"))
                row["note"] = _side(scenario, runs)
            rows.append(row)
    for row in rows:
        if "value" in row:
            values = _values_of(rows, row["scenario"])
            row["vs"] = {t: row["value"] / v for t, v in values.items() if t != row["target"] and v}
    return rows


def _values_of(rows: list[dict[str, Any]], scenario: str) -> dict[str, float]:
    return {r["target"]: r["value"] for r in rows if r["scenario"] == scenario and "value" in r}


def _ratio_text(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:,.0f}x"


def matrix(rows: list[dict[str, Any]]) -> str:
    """Per scenario: each of our variants (rows) over direct, ours and every peer (columns)."""
    lines = [
        "Ratios within this run: row / column, medians "
        "(throughput: above 1 is faster; memory: below 1 is smaller)"
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        values = _values_of(rows, scenario)
        ours = [t for t in values if is_ours(t)]
        # Peers and direct; ours as well when other variants of ours are rows beside it.
        columns = [t for t in values if not is_ours(t) or (t == "ours" and len(ours) > 1)]
        if not ours or not columns:
            continue
        label = SCENARIOS[scenario][0]
        width = max(11, *(len(c) + 2 for c in columns))
        lines.append("")
        lines.append(f"{label:34}" + "".join(f"{c:>{width}}" for c in columns))
        for target in ours:
            cells = [
                _ratio_text(values[target] / values[c] if c != target and values[c] else None)
                for c in columns
            ]
            lines.append(f"  {target:32}" + "".join(f"{cell:>{width}}" for cell in cells))
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The project's goals checked against this run: one dict per goal with a verdict."""
    found = []
    for what, scenario, target, reference, least in GOALS:
        values = _values_of(rows, scenario)
        if target not in values or not values.get(reference):
            continue
        ratio = values[target] / values[reference]
        verdict = "-" if least is None else ("met" if ratio >= least else "not met")
        found.append({"goal": what, "measured": f"{ratio:.2f}x {reference}", "verdict": verdict})
    need, most_kib = TUNNEL_GOAL
    for row in rows:
        if row["scenario"] != "tunnels" or not is_ours(row["target"]) or "value" not in row:
            continue
        ok, tried = row.get("ok") or 0, row.get("attempted") or 0
        measured = f"{row['value']:.2f} KiB each"
        if tried:  # a JSON written before these were kept in the row has the KiB only
            measured = f"{ok:,.0f} of {tried:,.0f} open, " + measured
        if tried < need:
            verdict = f"not measured at {need:,} (--tunnels {need})"
        else:
            verdict = "met" if ok >= need and row["value"] <= most_kib else "not met"
        what = f"{need:,} idle tunnels, at most {most_kib:g} KiB each: {row['target']}"
        found.append({"goal": what, "measured": measured, "verdict": verdict})
    return found


def targets_table(found: list[dict[str, Any]]) -> str:
    """:func:`targets` as plain text."""
    if not found:
        return "Targets: none measured by this run"
    lines = [f"{'Targets, from this run':56} {'measured':36} verdict", "-" * 110]
    lines += [f"{t['goal']:56} {t['measured']:36} {t['verdict']}" for t in found]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarize`'s rows."""
    lines = [
        f"{'scenario':34} {'target':14} {'median':>10} {'unit':8} {'x direct':>8} {'n':>2}  notes",
        "-" * 100,
    ]
    last = None
    for row in rows:
        label = row["label"] if row["scenario"] != last else ""
        last = row["scenario"]
        if "value" not in row:
            lines.append(f"{label:34} {row['target']:14} {row['note']}")
            continue
        value = row["value"]
        shown = f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        lines.append(
            f"{label:34} {row['target']:14} {shown:>10} {row['unit']:8} {ratio:>8} "
            f"{row['runs']:>2}  {row['note']}"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]]) -> str:
    """The whole text report: the table, the ratio matrix and the targets."""
    return "\n\n".join([table(rows), matrix(rows), targets_table(targets(rows))])


def write_json(path: Path, meta: dict[str, Any], raw: dict[str, Any], rows: list[Any]) -> None:
    """Everything measured, with the run's settings and the targets' verdicts, as JSON."""
    run = {"meta": meta, "summary": rows, "targets": targets(rows), "raw": raw}
    path.write_text(json.dumps(run, indent=1))


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

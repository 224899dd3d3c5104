"""Render a benchmark run (a JSON file written by ``bench/run.py``) as a table and a plot.

Theory of operation
-------------------
Benchmark figures come from a real run on real hardware, so they cannot be computed while the
docs build; but the picture must not be a pasted image that drifts from its data. The run's
JSON is committed as plain text (``docs/data/bench-results.json``); at ``builder-inited`` this
extension writes ``docs/_generated/bench-table.txt`` and ``bench-plot.png`` from it with the
benchmark's own report functions (:mod:`bench.perf_report`): the table, the matrix of ratios
between our variants and every peer, and the targets' verdicts, all recomputed from the
medians in the JSON's summary, so a JSON written before the matrix existed renders too. The
performance page includes both files. Rerun the benchmark, copy its JSON over, rebuild: table
and plot follow.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

DOCS = pathlib.Path(__file__).resolve().parent.parent
DATA = DOCS / "data" / "bench-results.json"
OUT = DOCS / "_generated"


def render(app: Any) -> None:
    """Write the table and the plot of the committed run."""
    sys.path.insert(0, str(DOCS.parent / "bench"))
    import perf_report

    run = json.loads(DATA.read_text())
    OUT.mkdir(exist_ok=True)
    meta = run.get("meta", {})
    before = meta.get("load_before", ["?"])[0]
    after = meta.get("load_after", ["?"])[0]
    header = (
        f"python {meta.get('command', 'bench/run.py')}   "
        f"({meta.get('reps', '?')} repetitions, {meta.get('seconds', 0):.0f} s, "
        f"{meta.get('cpus', '?')} CPUs, load average {before:.1f} -> {after:.1f})"
    )
    # Runs before the access-log option existed ran every proxy with its log off.
    logs = "on" if meta.get("access_logs", False) else "off"
    header += f"\naccess logs {logs} for every proxy"
    text = perf_report.report(run["summary"])
    (OUT / "bench-table.txt").write_text(header + "\n\n" + text + "\n")
    perf_report.plot(OUT / "bench-plot.png", run["summary"])


def setup(app: Any) -> dict[str, Any]:
    """Register the hook."""
    app.connect("builder-inited", render)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""The benchmark's report: ratios to direct and to every peer, and the targets, from raw figures.

No benchmark runs here: the figures are made up, the arithmetic and the text are what is tested
(the docs' performance page renders a committed run with the same functions).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import perf_report  # noqa: E402


def _ab(rps: float) -> dict[str, float]:
    return {"rps": rps, "done": 1000.0, "failed": 0.0, "non2xx": 0.0, "p99_ms": 3.0}


RAW = {
    "ab-k": {
        "direct": [_ab(100_000), _ab(90_000), _ab(110_000)],
        "ours": [_ab(6_000), _ab(5_000), _ab(7_000)],
        "ours-nolog": [_ab(7_500)],
        "ours-cache": [_ab(12_000)],
        "squid": [_ab(10_000), _ab(12_000), _ab(11_000)],
        "squid-cache": [_ab(24_000)],
        "proxypy": [_ab(4_000)],
        "tinyproxy": [{"skipped": "skipped (tinyproxy not installed)"}],
    },
    "connect-256m": {"direct": [{"mbps": 1000.0}], "ours": [{"mbps": 960.0}]},
    "tunnels": {
        "direct": [{"attempted": 9000, "ok": 9000, "failed": 0}],
        "ours": [{"attempted": 9000, "ok": 9000, "kib_per_tunnel": 2.5, "rss_after_kib": 1}],
        "squid": [{"attempted": 9000, "ok": 9000, "kib_per_tunnel": 31.0, "rss_after_kib": 1}],
    },
}


@pytest.fixture
def rows():
    return perf_report.summarize(json.loads(json.dumps(RAW)))


def _row(rows, scenario, target):
    return next(r for r in rows if r["scenario"] == scenario and r["target"] == target)


def test_every_row_is_set_beside_every_other_target_of_its_scenario(rows):
    ours = _row(rows, "ab-k", "ours")
    assert ours["value"] == 6_000
    assert ours["ratio"] == pytest.approx(0.06)
    assert ours["vs"]["squid"] == pytest.approx(6_000 / 11_000)
    assert ours["vs"]["proxypy"] == pytest.approx(1.5)
    assert ours["vs"]["direct"] == pytest.approx(0.06)
    assert "tinyproxy" not in ours["vs"]  # skipped: nothing to divide by
    assert "ours" not in ours["vs"]
    assert _row(rows, "tunnels", "ours")["vs"]["squid"] == pytest.approx(2.5 / 31.0)


def test_matrix_has_our_variants_as_rows_and_peers_as_columns(rows):
    text = perf_report.matrix(rows)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("ab -k"))
    assert header.split()[-5:] == ["direct", "ours", "squid", "squid-cache", "proxypy"]
    ours_cache = next(line for line in lines if line.strip().startswith("ours-cache"))
    # ours-cache / direct, / ours, / squid, / squid-cache, / proxypy
    assert ours_cache.split()[1:] == ["0.12x", "2.00x", "1.09x", "0.50x", "3.00x"]
    nolog = next(line for line in lines if line.strip().startswith("ours-nolog"))
    assert nolog.split()[2] == "1.25x"
    ours = next(line for line in lines if line.strip().startswith("ours "))
    assert ours.split()[2] == "-"  # no ratio of a target to itself


def test_targets_give_a_verdict_from_the_same_run(rows):
    found = {t["goal"]: t for t in perf_report.targets(rows)}
    assert found["ab -k 100 B, one process: at least Squid"]["verdict"] == "not met"
    assert found["256 MiB through CONNECT: at least 0.95x direct"]["verdict"] == "met"
    assert (
        found["cache hit, ab -k: at least Squid's memory cache"]["measured"] == "0.50x squid-cache"
    )
    assert found["access log on / off, ab -k"]["verdict"] == "-"
    tunnels = found["9,000 idle tunnels, at most 3 KiB each: ours"]
    assert tunnels["verdict"] == "met"
    assert tunnels["measured"] == "9,000 of 9,000 open, 2.50 KiB each"
    assert not any("squid" in goal and "tunnels" in goal for goal in found)


def test_too_few_tunnels_are_not_a_verdict(rows):
    raw = json.loads(json.dumps(RAW))
    raw["tunnels"]["ours"] = [{"attempted": 500, "ok": 500, "kib_per_tunnel": 2.0}]
    found = perf_report.targets(perf_report.summarize(raw))
    assert [t["verdict"] for t in found if "tunnels" in t["goal"]] == [
        "not measured at 9,000 (--tunnels 9000)"
    ]


def test_the_committed_run_still_renders():
    data = Path(__file__).resolve().parent.parent / "docs" / "data" / "bench-results.json"
    run = json.loads(data.read_text())
    text = perf_report.report(run["summary"])
    assert "Ratios within this run" in text and "Targets, from this run" in text
    assert "x direct" in text

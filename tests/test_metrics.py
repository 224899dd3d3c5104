"""Prometheus metrics: the text format checked by prometheus_client's own parser, the histogram,
merging workers, and the shared-memory slots read while real forked processes write them."""

from __future__ import annotations

import math
import os
import time

import pytest

from minireactor import Reactor
from proxy.metrics import (
    CONTENT_TYPE,
    DURATION_BUCKETS,
    Histogram,
    HistogramSnapshot,
    MetricsSnapshot,
    escape_label_value,
    format_value,
    merge,
    method_label,
    render,
    status_class,
)
from proxy.sharedmetrics import HEADER, MetricsPublisher, SharedMetrics, decode, encode

parser = pytest.importorskip("prometheus_client.parser")


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in parser.text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def busy_snapshot() -> MetricsSnapshot:
    histogram = Histogram()
    for value in (0.001, 0.005, 0.0051, 0.3, 2.0, 45.0):
        histogram.observe(value)
    return MetricsSnapshot(
        requests={("GET", "2xx"): 5, ("CONNECT", "2xx"): 1, ("OTHER", "4xx"): 2},
        cache_hits=3,
        cache_misses=2,
        cache_stale=1,
        bytes_received=1000,
        bytes_sent=50_000,
        connections_open={"IDLE": 2, "TUNNEL_OPEN": 1},
        connections_total=9,
        tunnels_open=1,
        tunnels_total=4,
        blocklist_rules=12,
        blocklist_reloads=3,
        blocklist_reload_failures=1,
        errors={"connect_refused": 2, 'odd "kind" \\ with\nnewline': 1},
        request_duration=histogram.snapshot(),
        access_log_written=8,
        access_log_dropped=2,
        workers=1,
    )


# -- the text format ------------------------------------------------------------------------


def test_every_family_parses_with_its_type_and_help():
    parsed = families(render(busy_snapshot()))
    expected = {
        "proxy_info": "gauge",
        "proxy_workers": "gauge",
        "proxy_requests": "counter",
        "proxy_cache_lookups": "counter",
        "proxy_received_bytes": "counter",
        "proxy_sent_bytes": "counter",
        "proxy_connections_open": "gauge",
        "proxy_connections": "counter",
        "proxy_tunnels_open": "gauge",
        "proxy_tunnels": "counter",
        "proxy_blocklist_rules": "gauge",
        "proxy_blocklist_reloads": "counter",
        "proxy_errors": "counter",
        "proxy_access_log_lines": "counter",
        "proxy_request_duration_seconds": "histogram",
    }
    assert {name: family.type for name, family in parsed.items()} == expected
    assert all(family.documentation for family in parsed.values())


def test_sample_values_and_labels():
    found = samples(render(busy_snapshot()))
    assert found[("proxy_requests_total", (("code", "2xx"), ("method", "GET")))] == 5
    assert found[("proxy_requests_total", (("code", "4xx"), ("method", "OTHER")))] == 2
    assert found[("proxy_cache_lookups_total", (("result", "stale"),))] == 1
    assert found[("proxy_sent_bytes_total", ())] == 50_000
    assert found[("proxy_connections_open", (("state", "TUNNEL_OPEN"),))] == 1
    assert found[("proxy_tunnels_total", ())] == 4
    assert found[("proxy_blocklist_reloads_total", (("outcome", "failed"),))] == 1
    assert found[("proxy_errors_total", (("kind", 'odd "kind" \\ with\nnewline'),))] == 1
    assert found[("proxy_access_log_lines_total", (("outcome", "written"),))] == 8
    assert found[("proxy_access_log_lines_total", (("outcome", "dropped"),))] == 2


def test_label_values_are_escaped_exactly():
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    line = next(
        line for line in render(busy_snapshot()).splitlines() if line.startswith("proxy_errors")
        and "odd" in line
    )  # fmt: skip
    assert line == 'proxy_errors_total{kind="odd \\"kind\\" \\\\ with\\nnewline"} 1'


def test_the_histogram_is_cumulative_and_ends_with_inf_sum_and_count():
    text = render(busy_snapshot())
    lines = [line for line in text.splitlines() if line.startswith("proxy_request_duration")]
    assert lines[:3] == [
        'proxy_request_duration_seconds_bucket{le="0.005"} 2',  # 0.001 and 0.005 (le: <=)
        'proxy_request_duration_seconds_bucket{le="0.01"} 3',
        'proxy_request_duration_seconds_bucket{le="0.025"} 3',
    ]
    assert lines[-4:] == [
        'proxy_request_duration_seconds_bucket{le="30.0"} 5',
        'proxy_request_duration_seconds_bucket{le="+Inf"} 6',
        f"proxy_request_duration_seconds_sum {format_value(0.001 + 0.005 + 0.0051 + 0.3 + 2 + 45)}",
        "proxy_request_duration_seconds_count 6",
    ]
    family = families(text)["proxy_request_duration_seconds"]
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets][-1] == "+Inf"
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    values = [s.value for s in buckets]
    assert values == sorted(values)


def test_help_then_type_then_samples_and_a_final_newline():
    text = render(busy_snapshot())
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[i + 1].startswith(f"# TYPE {name} ")
    names_in_order = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(names_in_order) == len(set(names_in_order))


def test_an_idle_proxy_renders_zeros_and_empty_families():
    found = samples(render(MetricsSnapshot()))
    assert found[("proxy_cache_lookups_total", (("result", "hit"),))] == 0
    assert found[("proxy_request_duration_seconds_count", ())] == 0
    assert not any(name == "proxy_requests_total" for name, _ in found)
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_value_spelling():
    assert format_value(3) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"


# -- labels from fixed sets --------------------------------------------------------------------


def test_methods_and_statuses_become_bounded_labels():
    assert method_label("GET") == "GET" and method_label("CONNECT") == "CONNECT"
    assert method_label("BREW") == "OTHER" and method_label("get") == "OTHER"
    assert [status_class(s) for s in (101, 200, 304, 404, 503, 0, 600)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "none",
        "none",
    ]


# -- histogram ---------------------------------------------------------------------------------


def test_histogram_buckets_are_inclusive_upper_bounds():
    histogram = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 2.5):
        histogram.observe(value)
    snap = histogram.snapshot()
    assert snap.counts == (2, 2, 1)
    assert snap.count == 5 and snap.sum == 7.5


@pytest.mark.parametrize("bounds", [(2.0, 1.0), (1.0, 1.0), (1.0, math.inf)])
def test_histogram_refuses_bad_bounds(bounds):
    with pytest.raises(ValueError):
        Histogram(bounds)


def test_histogram_snapshot_checks_its_shape():
    with pytest.raises(ValueError):
        HistogramSnapshot((1.0,), (1, 2, 3), 0.0)


# -- merging workers ---------------------------------------------------------------------------


def test_merge_sums_and_takes_the_largest_blocklist_figures():
    one = busy_snapshot()
    other = MetricsSnapshot(
        requests={("GET", "2xx"): 1, ("POST", "5xx"): 1},
        connections_open={"IDLE": 1},
        blocklist_rules=12,
        blocklist_reloads=2,
        errors={"connect_refused": 1},
        request_duration=HistogramSnapshot(counts=(1,) + (0,) * len(DURATION_BUCKETS), sum=0.001),
        access_log_written=1,
        access_log_dropped=1,
    )
    total = merge([one, other])
    assert total.requests == {("GET", "2xx"): 6, ("CONNECT", "2xx"): 1, ("OTHER", "4xx"): 2,
                              ("POST", "5xx"): 1}  # fmt: skip
    assert total.connections_open == {"IDLE": 3, "TUNNEL_OPEN": 1}
    assert total.errors["connect_refused"] == 3
    assert (total.blocklist_rules, total.blocklist_reloads) == (12, 3)
    assert total.request_duration.count == 7
    assert total.request_duration.counts[0] == one.request_duration.counts[0] + 1
    assert (total.access_log_written, total.access_log_dropped) == (9, 3)
    assert total.workers == 2


def test_merge_refuses_nothing_and_mismatched_buckets():
    with pytest.raises(ValueError):
        merge([])
    odd = MetricsSnapshot(request_duration=Histogram((1.0,)).snapshot())
    with pytest.raises(ValueError):
        merge([MetricsSnapshot(), odd])


# -- shared memory ------------------------------------------------------------------------------


def test_encode_decode_round_trip():
    snapshot = busy_snapshot()
    assert decode(encode(snapshot)) == snapshot


def test_slots_publish_and_read_in_one_process():
    shared = SharedMetrics(3)
    try:
        assert shared.read(1) is None
        assert shared.total() == MetricsSnapshot(workers=0)
        shared.publish(1, busy_snapshot())
        shared.publish(2, busy_snapshot())
        assert shared.read(1) == busy_snapshot()
        assert shared.total().bytes_sent == 100_000 and shared.total().workers == 2
        with pytest.raises(IndexError):
            shared.publish(3, MetricsSnapshot())
    finally:
        shared.close()


def test_a_dead_workers_slot_keeps_its_counters_and_drops_its_gauges():
    shared = SharedMetrics(3)
    try:
        shared.publish(0, busy_snapshot())
        shared.publish(1, MetricsSnapshot(connections_open={"IDLE": 1}, connections_total=2))
        shared.mark_dead(0)
        shared.mark_dead(2)  # died before it ever published: nothing to drop
        total = shared.total()
        assert total.workers == 1
        assert total.connections_open == {"IDLE": 1}
        assert total.tunnels_open == 0
        assert total.connections_total == 9 + 2
        assert total.requests == busy_snapshot().requests
    finally:
        shared.close()


def test_a_snapshot_too_big_for_its_slot_is_refused():
    shared = SharedMetrics(1, slot_size=HEADER.size + 64)
    try:
        with pytest.raises(ValueError, match="exceeds the slot"):
            shared.publish(0, busy_snapshot())
        assert shared.read(0) is None
    finally:
        shared.close()


def test_a_torn_slot_falls_back_to_the_last_good_copy():
    shared = SharedMetrics(1)
    try:
        shared.publish(0, busy_snapshot())
        assert shared.read(0) == busy_snapshot()
        # Scribble over the payload without a new header, as a torn concurrent write would.
        shared._map[HEADER.size : HEADER.size + 8] = b"XXXXXXXX"
        assert shared.read(0) == busy_snapshot()  # checksum mismatch: the last good copy
        # A writer that died mid-write leaves an odd sequence: readers keep the last good copy
        # and the slot's next publish starts afresh.
        sequence = HEADER.unpack_from(shared._map, 0)[0]
        HEADER.pack_into(shared._map, 0, sequence + 1, 0, 0)
        assert shared.read(0) == busy_snapshot()
        shared.publish(0, MetricsSnapshot(cache_hits=7))
        assert shared.read(0) == MetricsSnapshot(cache_hits=7)
    finally:
        shared.close()


def consistent(snapshot: MetricsSnapshot) -> int:
    """The writer below keeps four counters equal; return their common value."""
    n = snapshot.connections_total
    assert snapshot.requests.get(("GET", "2xx"), 0) == n
    assert snapshot.request_duration.count == n
    assert snapshot.bytes_sent == 100 * n
    return n


def test_forked_workers_write_while_the_reader_sums(tmp_path):
    workers, rounds = 3, 400
    shared = SharedMetrics(workers)
    children = []
    try:
        for slot in range(workers):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    histogram = Histogram()
                    for n in range(1, rounds + 1):
                        histogram.observe(0.01 * slot)
                        shared.publish(
                            slot,
                            MetricsSnapshot(
                                requests={("GET", "2xx"): n},
                                connections_total=n,
                                bytes_sent=100 * n,
                                request_duration=histogram.snapshot(),
                                errors={f"worker{slot}": 1},
                            ),
                        )
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
        # Read while they write: every copy must be whole, and never go backwards.
        last = [0] * workers
        reads = 0
        deadline = time.monotonic() + 60
        while any(n < rounds for n in last) and time.monotonic() < deadline:
            for slot in range(workers):
                snapshot = shared.read(slot)
                if snapshot is None:
                    continue
                n = consistent(snapshot)
                assert n >= last[slot]
                last[slot] = n
                reads += 1
        statuses = [os.waitpid(pid, 0)[1] for pid in children]
        children = []
        assert all(os.waitstatus_to_exitcode(s) == 0 for s in statuses)
        assert reads > 0
        total = shared.total()
        assert total.workers == workers
        assert total.connections_total == workers * rounds
        assert total.requests == {("GET", "2xx"): workers * rounds}
        assert total.errors == {f"worker{slot}": 1 for slot in range(workers)}
        assert total.request_duration.count == workers * rounds
        assert samples(render(total))[("proxy_sent_bytes_total", ())] == 100 * workers * rounds
    finally:
        for pid in children:
            os.waitpid(pid, 0)
        shared.close()


def test_the_publisher_refreshes_on_a_timer_and_before_answering(reactor: Reactor):
    shared = SharedMetrics(2)
    counter = {"n": 0}

    def snapshot() -> MetricsSnapshot:
        return MetricsSnapshot(connections_total=counter["n"])

    publisher = MetricsPublisher(shared, 1, snapshot, reactor, interval=0.05)
    try:
        shared.publish(0, MetricsSnapshot(connections_total=100))  # the other worker
        publisher.start()
        assert shared.read(1) == MetricsSnapshot(connections_total=0)
        counter["n"] = 5
        assert reactor.run_until(lambda: shared.read(1).connections_total == 5, timeout=20)
        counter["n"] = 6
        assert publisher.current().connections_total == 106  # its own numbers are fresh
        counter["n"] = 7
        publisher.stop()
        assert shared.read(1).connections_total == 7  # the last numbers stay in the sum
        assert reactor.pending_timers == 0
    finally:
        shared.close()


def test_the_operator_guide_lists_exactly_the_error_kinds():
    """Operators write alerts from that table: it must name what /metrics really counts."""
    import re
    from pathlib import Path

    from proxy.stats import ERROR_TRIGGERS

    guide = Path(__file__).resolve().parent.parent / "docs" / "howto" / "operator.md"
    text = guide.read_text(encoding="utf-8")
    table = text.split("| `kind` | Counted when |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert documented == {trigger.name.lower() for trigger in ERROR_TRIGGERS}


def test_loading_the_blocklist_at_start_is_not_counted_as_a_reload(tmp_path):
    """A fresh proxy with no blocklist file yet must not report a failed reload."""
    from minireactor import StaticResolver
    from proxy.app import ProxyServer
    from proxy.config import Config

    reactor = Reactor()
    server = ProxyServer(
        Config(host="127.0.0.1", port=0, blacklist=str(tmp_path / "not-yet.txt")),
        reactor=reactor,
        resolver=StaticResolver(reactor, {}),
        access_sink=None,
    )
    server.start()
    try:
        assert server.watcher is not None
        snapshot = server.metrics_snapshot()
        assert (snapshot.blocklist_reloads, snapshot.blocklist_reload_failures) == (0, 0)
        assert server.stats.blocklist_reload["ok"] is False  # the dashboard still shows why
    finally:
        server._release()
        reactor.close()

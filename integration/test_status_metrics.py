"""Request duration histograms, responses by status class and the history, against a real
bridge driven with raw FastCGI: the OpenMetrics exposition read by a real parser (the
`prometheus_client` package's strict OpenMetrics parser), the JSON percentiles checked
against the buckets of that exposition, a worker crash and a request-timeout counted, and
`?json&history` filling up sample by sample."""
from __future__ import annotations

import json
import math
import urllib.request

import pytest

from harness import APPS, free_ports, make_bridge, wait_until

parser = pytest.importorskip("prometheus_client.openmetrics.parser",
                             reason="pip install prometheus_client (integration/requirements.txt)")

POOL_FAMILY = "fcgibridge_pool_request_duration_seconds"
LISTENER_FAMILY = "fcgibridge_listener_request_duration_seconds"


@pytest.fixture(scope="module")
def mb(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("status-metrics")
    fport, sport = free_ports(2)
    pools = {
        "quick": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 2},
        "slow": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, "request-timeout": "2s"},
    }
    listeners = {"front": {"fastcgi": f"127.0.0.1:{fport}",
                           "routes": [{"prefix": "/slow", "pool": "slow"}, {"pool": "quick"}]}}
    b = make_bridge(workdir, pools, listeners,
                    bridge_extra={"status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    b.status_url = f"http://127.0.0.1:{sport}"
    try:
        b.start()
        b.wait_ready([("front", "/health", "x"), ("front", "/slow/health", "x")])
        yield b
    finally:
        b.stop()


def get(b, path):
    with urllib.request.urlopen(b.status_url + path, timeout=30) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def metrics(b):
    """{family name: family} of the exposition, parsed strictly (a malformed histogram, a
    missing # EOF or an unknown line raises)."""
    ctype, body = get(b, "/metrics")
    assert ctype.startswith("application/openmetrics-text")
    return {f.name: f for f in parser.text_string_to_metric_families(body)}


def histogram(fams, family, label, value):
    """(cumulative buckets as [(le, count)], count, sum) of one labelled histogram."""
    fam = fams[family]
    assert fam.type == "histogram" and fam.unit == "seconds", (fam.type, fam.unit)
    samples = [s for s in fam.samples if s.labels.get(label) == value]
    buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")]
    count = next(s.value for s in samples if s.name.endswith("_count"))
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    return buckets, count, total


def counter(fams, family, **labels):
    return next(s.value for s in fams[family].samples
                if s.name == family + "_total" and all(s.labels.get(k) == v for k, v in labels.items()))


def quantile(q, buckets):
    """Prometheus' histogram_quantile over cumulative buckets (linear inside a bucket; the
    +Inf bucket reports the highest finite bound) — written here independently of the
    daemon's code."""
    total = buckets[-1][1]
    if total == 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > prev_count:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def pool_json(doc, name):
    return next(p for p in doc["pools"] if p["name"] == name)


def status(b, query="json"):
    return json.loads(get(b, "/status?" + query)[1])


def test_histograms_parse_and_count_every_request(mb):
    before = metrics(mb)
    for _ in range(20):
        assert mb.request("/health", listener="front").status == 200
    for _ in range(6):
        assert mb.request("/slow/sleep", query="s=0.3", listener="front").status == 200
    for _ in range(3):
        assert mb.request("/raise-before", listener="front").status == 500
    after = metrics(mb)

    b_slow, c_slow, s_slow = histogram(before, POOL_FAMILY, "pool", "slow")
    a_slow, n_slow, t_slow = histogram(after, POOL_FAMILY, "pool", "slow")
    assert [le for le, _ in a_slow][-1] == math.inf and len(a_slow) == 15
    assert n_slow - c_slow == 6
    # Every one of the six took 0.3 s or more: none below the 0.25 bucket's bound.
    below = dict(a_slow)[0.25] - dict(b_slow)[0.25]
    assert below == 0, a_slow
    assert t_slow - s_slow >= 1.8

    _, c_quick, _ = histogram(before, POOL_FAMILY, "pool", "quick")
    _, n_quick, _ = histogram(after, POOL_FAMILY, "pool", "quick")
    assert n_quick - c_quick == 23
    five = counter(after, "fcgibridge_pool_responses", pool="quick", **{"class": "5xx"}) - \
        counter(before, "fcgibridge_pool_responses", pool="quick", **{"class": "5xx"})
    assert five == 3
    two = counter(after, "fcgibridge_pool_responses", pool="slow", **{"class": "2xx"}) - \
        counter(before, "fcgibridge_pool_responses", pool="slow", **{"class": "2xx"})
    assert two == 6

    _, c_front, _ = histogram(before, LISTENER_FAMILY, "listener", "front")
    _, n_front, _ = histogram(after, LISTENER_FAMILY, "listener", "front")
    assert n_front - c_front == 29
    assert counter(after, "fcgibridge_listener_responses", listener="front", **{"class": "5xx"}) >= 3


def test_json_percentiles_are_those_of_the_buckets(mb):
    for _ in range(4):
        assert mb.request("/slow/sleep", query="s=0.3", listener="front").status == 200
    # Nothing else reaches the pools between the two reads below.
    fams = metrics(mb)
    doc = status(mb)
    for name in ("quick", "slow"):
        buckets, count, _ = histogram(fams, POOL_FAMILY, "pool", name)
        since = pool_json(doc, name)["latency_seconds"]["since_start"]
        assert since["count"] == count
        for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            assert since[key] == pytest.approx(quantile(q, buckets), abs=2e-6), (name, key, buckets)
    buckets, count, _ = histogram(fams, LISTENER_FAMILY, "listener", "front")
    front = doc["listeners"][0]
    assert front["latency_seconds"]["since_start"]["count"] == count
    assert front["latency_seconds"]["since_start"]["p99"] == pytest.approx(quantile(0.99, buckets), abs=2e-6)
    # The last minute of the slow pool: mostly its 0.3 s requests (a health probe or two
    # beside them), so its median is in the (0.25, 0.5] bucket.
    slow = pool_json(doc, "slow")
    last = slow["latency_seconds"]["last_minute"]
    assert last["count"] >= 4 and 0.25 <= last["p50"] <= 0.5, last
    assert slow["responses"]["2xx"] >= 10
    assert pool_json(doc, "quick")["responses"]["5xx"] >= 3
    assert pool_json(doc, "quick")["last_minute"]["server_errors"] >= 3


def test_crash_and_timeout_are_counted(mb):
    before = pool_json(status(mb), "quick")
    r = mb.request("/die/exit", listener="front")
    assert r.status == 502
    quick = wait_until(lambda: (p := pool_json(status(mb), "quick"))["worker_crashes"] > before["worker_crashes"]
                       and p["idle_workers"] == 1 and p,
                       60, what="the crash counted and the worker replaced")
    assert quick["worker_exits"] == before["worker_exits"] + 1
    assert quick["last_minute"]["worker_crashes"] >= 1

    slow_before = pool_json(status(mb), "slow")
    r = mb.request("/slow/sleep", query="s=30", listener="front")
    assert r.status == 504
    slow = wait_until(lambda: (p := pool_json(status(mb), "slow"))["worker_exits"] > slow_before["worker_exits"]
                      and p["idle_workers"] == 1 and p,
                      60, what="the timed-out worker replaced")
    assert slow["request_timeouts"] == slow_before["request_timeouts"] + 1
    assert slow["responses"]["5xx"] == slow_before["responses"]["5xx"] + 1
    # Replaced on purpose: an exit, not a crash.
    assert slow["worker_crashes"] == slow_before["worker_crashes"]
    fams = metrics(mb)
    assert counter(fams, "fcgibridge_pool_worker_crashes", pool="quick") == quick["worker_crashes"]
    assert counter(fams, "fcgibridge_pool_request_timeouts", pool="slow") == slow["request_timeouts"]


def test_history_fills_sample_by_sample(mb):
    def filled():
        h = status(mb, "json&history")["history"]
        pools = {p["name"]: p for p in h["pools"]}
        quick, slow = pools.get("quick"), pools.get("slow")
        return (quick and slow and len(quick["time"]) >= 2 and any(v > 0 for v in quick["requests_per_second"])
                and sum(slow["request_timeouts"]) == 1 and h)
    h = wait_until(filled, 60, 0.5, what="history with requests and the 504 of the previous test")
    assert h["interval_seconds"] == 5 and h["window_seconds"] == 900
    assert {p["name"] for p in h["pools"]} == {"quick", "slow"}
    assert [l["name"] for l in h["listeners"]] == ["front"]
    for p in h["pools"]:
        n = len(p["time"])
        for column in ("requests_per_second", "p50_seconds", "p95_seconds", "p99_seconds", "queue_length",
                       "busy_workers", "idle_workers", "server_errors_per_second", "rejected_requests",
                       "request_timeouts", "worker_exits", "worker_crashes"):
            assert len(p[column]) == n, column
        assert p["time"] == sorted(p["time"])
        assert all(4.5 <= b - a <= 10 for a, b in zip(p["time"], p["time"][1:])), p["time"]
    slow = next(p for p in h["pools"] if p["name"] == "slow")
    assert sum(slow["request_timeouts"]) == 1 and sum(slow["worker_exits"]) >= 1
    # Without `history` the document has none (it stays small for `fcgibridge status`).
    assert "history" not in status(mb)

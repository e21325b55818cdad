"""scripts/bench runs end to end: every kind of row it reports starts, measures and comes
out in its JSON (throughput against a peer, fairness, memory per backend, the bridge's
memory, the ratios), and an ASGI row this build cannot serve is reported, not a crash.
No figure is asserted beyond "the answers were 2xx": timings belong to the bench itself,
run on a quiet machine, never to a test."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import REPO, bridge_binary

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None or importlib.util.find_spec("granian") is None
    or importlib.util.find_spec("fastapi") is None,
    reason="wrk, granian or fastapi missing (scripts/install-test-deps installs them)")


def test_quick_bench_reports_every_row(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    cmd = [sys.executable, str(REPO / "scripts" / "bench"), "--quick", "--pool", "1x1",
           "--backends", "fcgibridge,fcgibridge-direct,granian", "--apps", "hello,fastapi", "--connections", "8",
           "--duration", "1", "--fairness-duration", "2", "--idle-connections", "100",
           "--no-static", "--settle", "0.2", "--fcgibridge", str(bridge_binary()),
           "--json", str(out), "--markdown", str(md)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, RUST_LOG="warn"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())

    rows = {(x["backend"], x["app"], x["pool"]): x for x in report["results"]}
    for key in [("fcgibridge", "hello", "1x1"), ("fcgibridge-direct", "hello", "1x1"),
                ("granian", "hello", "1x1"),
                ("granian", "fastapi", "1xasync")]:
        row = rows[key]
        assert "failed" not in row, row
        assert row["ok_rps"] > 0 and row["non2xx"] == 0 and row["errors"] == 0, row
    for ours in ("fcgibridge", "fcgibridge-direct"):
        asgi = rows[(ours, "fastapi", "1xasync")]
        if "failed" in asgi:
            assert asgi["failed"].startswith("not supported by this build"), asgi
        else:
            assert asgi["ok_rps"] > 0 and asgi["non2xx"] == 0, asgi

    fair = {(f["backend"], f["starts"]): f for f in report["fairness"]}
    assert set(fair) == {(b, s) for b in ("fcgibridge", "fcgibridge-direct", "granian")
                         for s in ("staggered", "together")}
    for f in fair.values():
        assert "failed" not in f, f
        assert f["fast"] > 0 and f["slow"] > 0 and f["non2xx"] == 0 and f["errors"] == 0, f

    memory = {(m["backend"], m["app"]) for m in report["memory"]}
    assert {("fcgibridge", "hello"), ("granian", "hello")} <= memory
    states = [row["state"] for row in report["bridge_memory"]["rows"]]
    assert len(states) == 4 and all(row["rss_kb"] for row in report["bridge_memory"]["rows"])
    direct = report["bridge_memory"]["rows"][1]
    assert direct["connections"] >= 100, direct

    for ours in ("fcgibridge", "fcgibridge-direct"):
        assert any(x[:2] == [ours, "hello"] and x[4] == "granian" for x in report["ratios"])
    text = md.read_text()
    assert text.index("### Throughput and latency") < text.index("### Ratios")


def test_a_direct_pool_without_kept_connections(tmp_path):
    """--no-keep-conn-for: nginx opens a FastCGI connection per request to a direct pool,
    as it does to uWSGI (the processes then share one queue, the socket's), and the
    report says so."""
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    cmd = [sys.executable, str(REPO / "scripts" / "bench"), "--quick", "--pool", "2x1",
           "--backends", "fcgibridge-direct", "--apps", "hello", "--connections", "8",
           "--parts", "throughput", "--duration", "1", "--no-static", "--settle", "0.2",
           "--no-keep-conn-for", "fcgibridge-direct", "--fcgibridge", str(bridge_binary()),
           "--json", str(out), "--markdown", str(md)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, RUST_LOG="warn"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["ok_rps"] > 0 and row["non2xx"] == 0 and row["errors"] == 0, row
    text = md.read_text()
    assert "fcgibridge-direct: a new FastCGI connection per request" in text, text
    assert "; fcgibridge: fastcgi_keep_conn on" in text, text


def load_bench():
    """scripts/bench as a module (its name has no .py)."""
    from importlib.machinery import SourceFileLoader
    loader = SourceFileLoader("bench_script", str(REPO / "scripts" / "bench"))
    spec = importlib.util.spec_from_loader("bench_script", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_latencies_of_several_wrk_processes_are_merged_by_their_requests():
    """The bench runs one wrk process per client thread and merges their latencies: a
    percentile of all requests together, not of one process or the mean of theirs."""
    bench = load_bench()

    def report(requests, us_at):
        grid = [i / 10 for i in range(900)] + [i / 100 for i in range(9000, 10001)]
        return {"requests": requests, "cdf": [(p, us_at(p)) for p in grid]}

    quick = report(900, lambda p: 1000)
    slow = report(100, lambda p: 5000)
    # 90 % of all requests took 1 ms: the median is 1 ms, the 99th percentile 5 ms.
    assert bench.merged_percentile([quick, slow], 50) == 1000
    assert bench.merged_percentile([quick, slow], 89) == 1000
    assert bench.merged_percentile([quick, slow], 99) == 5000
    # One process whose latencies spread from 1 to 11 ms, evenly over its percentiles.
    spread = report(1000, lambda p: 1000 + int(p * 100))
    assert bench.merged_percentile([spread], 50) == 6000
    assert bench.merged_percentile([spread, report(1000, lambda p: 1000)], 99) == 10800
    # A process all of whose requests passed wrk's --timeout has no latency recorded
    # (wrk reports zeros): it does not make the others' requests look quick.
    timed_out = report(200, lambda p: 0)
    assert bench.merged_percentile([slow, timed_out], 50) == 5000


def test_a_ratio_just_below_its_target_does_not_print_as_the_target():
    """Rounded to two decimals, 1.195x would read as a 1.20x that is not met: near its
    target a ratio gets a third decimal, elsewhere two."""
    bench = load_bench()
    assert bench.fmt_ratio(1.195, 1.2) == "1.195x"
    assert bench.fmt_ratio(1.2, 1.2) == "1.20x"
    assert bench.fmt_ratio(1.214, 1.2) == "1.21x"
    assert bench.fmt_ratio(0.996, 1.0) == "0.996x"
    assert bench.fmt_ratio(1.195) == "1.20x"
    assert bench.fmt_ratio(None, 1.2) == "-"

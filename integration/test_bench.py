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

"""dist/grafana/fcgibridge.json and dist/prometheus/fcgibridge-rules.yml: both parse, every
metric and label value they name is in a real bridge's OpenMetrics output (read with
prometheus_client's parser), and promtool (Debian package `prometheus`) accepts the rules,
runs their unit tests (integration/promtool/) and accepts every dashboard query as PromQL."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request

import pytest
import yaml

from harness import APPS, REPO, free_ports, make_bridge

parser = pytest.importorskip("prometheus_client.openmetrics.parser",
                             reason="pip install prometheus_client (integration/requirements.txt)")

DASHBOARD = REPO / "dist" / "grafana" / "fcgibridge.json"
RULES = REPO / "dist" / "prometheus" / "fcgibridge-rules.yml"
RULE_TESTS = REPO / "integration" / "promtool" / "fcgibridge-rules.test.yml"

METRIC = re.compile(r"\b(fcgibridge_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
# Labels Prometheus adds at scrape time, not the daemon.
TARGET_LABELS = {"job", "instance"}


def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dash):
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    exprs = []
    for panel in dash["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q))
    return exprs


def rule_exprs():
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def exposition(tmp_path_factory):
    """The samples of a real bridge's /metrics after a few requests, by name."""
    workdir = tmp_path_factory.mktemp("status-dist")
    fport, sport = free_ports(2)
    b = make_bridge(workdir, {"app": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 2}},
                    {"front": {"fastcgi": f"127.0.0.1:{fport}", "pool": "app"}},
                    bridge_extra={"status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    try:
        b.start()
        b.wait_ready([("front", "/health", "x")])
        assert b.request("/health", listener="front").status == 200
        assert b.request("/raise-before", listener="front").status == 500
        with urllib.request.urlopen(f"http://127.0.0.1:{sport}/metrics", timeout=30) as r:
            body = r.read().decode()
    finally:
        b.stop()
    samples = {}
    for fam in parser.text_string_to_metric_families(body):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s.labels)
    return samples


def check_references(expr, samples, where):
    names = METRIC.findall(expr)
    for name, selector in names:
        assert name in samples, f"{where}: {name} is not in the daemon's OpenMetrics output: {expr}"
        for label, op, value in MATCHER.findall(selector or ""):
            if label in TARGET_LABELS or "$" in value:
                continue
            assert any(label in l for l in samples[name]), f"{where}: {name} has no label {label}: {expr}"
            if op == "=":
                assert any(l.get(label) == value for l in samples[name]), \
                    f"{where}: no {name} sample with {label}={value!r}: {expr}"
    return [n for n, _ in names]


def test_dashboard_uses_only_real_metrics(exposition):
    dash = dashboard()
    used = set()
    for expr in dashboard_queries(dash):
        used.update(check_references(expr, exposition, "dashboard"))
    # What the issue asks the dashboard to show.
    for needed in ("fcgibridge_pool_request_duration_seconds_count", "fcgibridge_pool_request_duration_seconds_bucket",
                   "fcgibridge_pool_queue_length", "fcgibridge_pool_workers", "fcgibridge_pool_responses_total",
                   "fcgibridge_pool_rejected_requests_total", "fcgibridge_pool_request_timeouts_total"):
        assert needed in used, needed
    assert sum("histogram_quantile" in e for e in dashboard_queries(dash)) >= 3


def test_dashboard_is_well_formed():
    dash = dashboard()
    assert dash["uid"] == "fcgibridge" and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance", "pool"} <= variables
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), f"{p['title']}: ${var} is not defined"


def test_rules_use_only_real_metrics(exposition):
    used = set()
    for expr in rule_exprs():
        used.update(check_references(expr, exposition, "rules"))
    for needed in ("fcgibridge_pool_worker_crashes_total", "fcgibridge_pool_queue_length",
                   "fcgibridge_pool_responses_total", "fcgibridge_pool_idle_slots"):
        assert needed in used, needed
    # "daemon down" is Prometheus' own `up` of the scrape job.
    assert any(re.match(r"up\{", e) for e in rule_exprs())


def test_promtool_checks_and_unit_tests_the_rules():
    tool = promtool()
    r = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([tool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120,
                       cwd=RULE_TESTS.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_accepts_every_dashboard_query(tmp_path):
    """Each query, with Grafana's variables filled in, as a recording rule: promtool parses
    it as PromQL."""
    tool = promtool()
    fill = {"$__rate_interval": "5m", "$job": "fcgibridge", "$instance": ".*", "$pool": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_queries(dashboard())):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"fcgibridge:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

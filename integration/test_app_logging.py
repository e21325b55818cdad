"""The app's Python logging records and wsgi.errors reach the bridge's log with their
level, logger name, pool, pid and request id (JSON log format, so fields are exact)."""
from __future__ import annotations

import json
import re

import pytest

from harness import APPS, free_ports, make_bridge, wait_until


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("applog")
    port, = free_ports(1)
    b = make_bridge(workdir, {"shop": {"app": str(APPS / "logging_app.py"), "processes": 1, "threads": 2}},
                    {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "shop"}},
                    bridge_extra={"log-format": "json", "access-log": str(workdir / "access.log")})
    try:
        b.start()
        b.wait_ready([("front", "/", "x")])
        yield b
    finally:
        b.stop()


def events(b, since):
    out = []
    for line in b.log.lines(since):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_logging_records_keep_level_logger_and_request_id(lb):
    mark = lb.log.mark()
    r = lb.request("/log", listener="front", request_id=1)
    assert r.status == 200
    lb.log.wait_for("could not compute", since=mark)
    recs = [e for e in events(lb, mark) if e.get("target") == "app"]
    by_msg = {e["fields"]["message"].split("\n")[0]: e for e in recs}
    info = by_msg["order 42 placed"]
    assert info["level"] == "INFO"
    assert info["fields"]["logger"] == "shop.views"
    assert info["fields"]["pool"] == "shop" and info["fields"]["pid"] > 0
    rid = info["fields"]["request_id"]
    assert rid.isdigit()
    assert by_msg["stock low for widget"]["level"] == "WARN"
    err = by_msg["could not compute"]
    assert err["level"] == "ERROR" and "ZeroDivisionError" in err["fields"]["message"]
    # The same request id as the access log's line for this request (written by the
    # access log's own thread after the response went out: waited for).
    # The built-in line starts with the client and the time (UTC, RFC 3339).
    line = re.compile(rf'^127\.0\.0\.1 \[\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*Z\] "GET /log" 200 .* id={rid}$', re.M)
    wait_until(lambda: line.search((lb.workdir / "access.log").read_text()), 30, what=f"the access line of request {rid}")


def test_wsgi_errors_carry_the_request_id(lb):
    mark = lb.log.mark()
    assert lb.request("/errors", listener="front").status == 200
    lines = lb.log.wait_for("note via wsgi.errors", since=mark)
    e = json.loads(lines[0])
    assert e["fields"]["pool"] == "shop" and e["fields"].get("request_id") not in (None, "", "-")

"""The app's Python logging records and wsgi.errors reach the bridge's log with their
level, logger name, pool, pid and request id (JSON log format, so fields are exact)."""
from __future__ import annotations

import json
import re
import urllib.parse

import pytest

import fcgi_client
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
    assert "app_request_id" not in info["fields"]
    # An id the app put on its record is kept beside the bridge's, escaped.
    paid = by_msg["paid"]["fields"]
    assert (paid["request_id"], paid["app_request_id"]) == (rid, "app-7\\n[fake] line"), paid
    assert by_msg["stock low for widget"]["level"] == "WARN"
    err = by_msg["could not compute"]
    assert err["level"] == "ERROR"
    # JSON escapes newlines: the traceback stays in the record's message, one event.
    assert err["fields"]["message"].startswith("could not compute\nTraceback (most recent call last):\n"), err
    assert err["fields"]["message"].endswith("ZeroDivisionError: division by zero"), err
    assert [e for e in recs if "ZeroDivisionError" in e["fields"]["message"]] == [err]
    # The same request id as the access log's line for this request (written by the
    # access log's own thread after the response went out: waited for).
    # The built-in line starts with the client and the time (UTC, RFC 3339).
    line = re.compile(rf'^127\.0\.0\.1 \[\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*Z\] "GET /log" 200 .* id={rid}$', re.M)
    wait_until(lambda: line.search((lb.workdir / "access.log").read_text()), 30, what=f"the access line of request {rid}")


def test_a_failed_requests_traceback_is_one_json_event(lb):
    mark = lb.log.mark()
    assert lb.request("/boom", listener="front").status == 500
    lb.log.wait_for("ZeroDivisionError: division by zero", since=mark)
    tb = [e for e in events(lb, mark) if "ZeroDivisionError" in e["fields"].get("message", "")]
    assert len(tb) == 1, tb
    (e,) = tb
    assert e["level"] == "ERROR" and e["fields"]["uri"] == "/boom" and e["fields"]["request_id"].isdigit(), e
    msg = e["fields"]["message"]
    assert msg.startswith("Traceback (most recent call last):\n") and 'return {"x": 1 / 0}' in msg, msg


def test_del_c1_and_line_separators_are_escaped_in_the_json_log(lb):
    """JSON leaves DEL, the C1 controls (\\x9b starts a terminal escape) and U+2028/U+2029
    raw inside its strings; the log writes them as \\u escapes: same value, no raw byte."""
    raw = "/boom?x=\x7f\xc2\x9b[2J\xe2\x80\xa8"  # bytes as latin-1: DEL, U+009B, U+2028
    params = [(k, raw if k == "REQUEST_URI" else v) for k, v in fcgi_client.cgi_params("/boom", "GET", "x=1")]
    mark = lb.log.mark()
    with lb.fcgi("front") as conn:
        conn.begin(1, params)
        assert conn.wait(1).status == 500
    lb.log.wait_for("ZeroDivisionError", since=mark)
    data = lb.log.path.read_bytes()[mark:]
    for bad in (b"\x7f", b"\xc2\x9b", b"\xe2\x80\xa8"):
        assert bad not in data, (bad, data[-2000:])
    uris = [e["fields"]["uri"] for e in events(lb, mark) if "uri" in e.get("fields", {})]
    assert "/boom?x=\x7f\x9b[2J\u2028" in uris, uris


def test_wsgi_errors_carry_the_request_id(lb):
    mark = lb.log.mark()
    assert lb.request("/errors", listener="front").status == 200
    lines = lb.log.wait_for("note via wsgi.errors", since=mark)
    e = json.loads(lines[0])
    assert e["fields"]["pool"] == "shop" and e["fields"].get("request_id") not in (None, "", "-")


@pytest.fixture(scope="module")
def text_log(tmp_path_factory):
    """The same app, the default text log format (the one an app's text could forge)."""
    workdir = tmp_path_factory.mktemp("applog-text")
    port, = free_ports(1)
    b = make_bridge(workdir, {"shop": {"app": str(APPS / "logging_app.py"), "processes": 1, "threads": 2},
                              "other": {"app": str(APPS / "logging_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"127.0.0.1:{port}", "routes": [{"host": "other", "pool": "other"},
                                                                          {"pool": "shop"}]}})
    try:
        b.start()
        b.wait_ready([("front", "/", "x"), ("front", "/", "other")])
        yield b
    finally:
        b.stop()


TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def test_an_apps_text_never_starts_a_log_line_of_its_own(text_log):
    b = text_log
    fake = '2001-01-01T00:00:00.000000Z ERROR fcgibridge::supervise::worker: forged pool="victim"'
    mark = b.log.mark()
    r = b.request("/forge", listener="front", query=urllib.parse.quote(fake), headers={"Host": "x"})
    assert r.status == 200
    lines = b.log.wait_for("nul", since=mark)
    # The logging record comes over the worker's stderr pipe, wsgi.errors over FastCGI:
    # either may be logged first.
    b.log.wait_for([" app: ", "forged"], since=mark)
    assert "carriage\\rreturn\\x00nul\\x1b[2Jesc" in lines[-1] and 'pool="shop"' in lines[-1], lines[-1]
    text = b.log.text(mark)
    assert "\r" not in text and "\x00" not in text and "\x1b" not in text
    for line in text.splitlines():
        assert TIME.match(line) and not line.startswith("2001-"), line
    (forged,) = [ln for ln in text.splitlines() if " app: " in ln and "forged" in ln]
    assert 'pool="shop"' in forged and 'logger="shop.views"' in forged


def test_a_traceback_in_the_text_log_is_a_line_per_line(text_log):
    b = text_log
    mark = b.log.mark()
    assert b.request("/boom", listener="front", headers={"Host": "x"}).status == 500
    lines = b.log.wait_for("ZeroDivisionError: division by zero", since=mark)
    assert TIME.match(lines[-1]) and "ERROR" in lines[-1] and 'uri="/boom"' in lines[-1], lines[-1]
    first = [ln for ln in b.log.text(mark).splitlines() if "Traceback (most recent call last):" in ln]
    assert len(first) == 1 and TIME.match(first[0]) and 'uri="/boom"' in first[0], first


def test_an_app_that_floods_its_log_is_held_to_a_budget(text_log):
    """A worker logs at most a burst of 5000 lines, then 200 a second; what is held back
    is counted in a line of its own. Other pools log as usual."""
    b = text_log
    mark = b.log.mark()
    assert b.request("/flood", listener="front", query="20000", headers={"Host": "x"}).status == 200
    assert b.request("/errors", listener="front", headers={"Host": "other"}).status == 200
    b.log.wait_for('note via wsgi.errors.*pool="other"', since=mark)
    # Each STDERR line takes its turn; the held-back count is logged with the next line
    # the budget lets through.
    wait_until(lambda: b.request("/errors", listener="front", headers={"Host": "x"}).status == 200
               and re.search(r"\d+ lines of the app's output not logged \(more than 200 a second\)", b.log.text(mark)),
               30, what="the count of the lines held back")
    logged = len(re.findall(r"flood line \d+", b.log.text(mark)))
    assert 5000 <= logged < 20000, logged


def test_a_worker_that_floods_and_crashes_gets_no_fresh_budget(tmp_path):
    """The budget is the pool's: an app that floods its log and then crashes its worker,
    again and again, is held to one burst and the rate, not a burst per new worker."""
    import time
    port, = free_ports(1)
    b = make_bridge(tmp_path, {"shop": {"app": str(APPS / "logging_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "shop"}})
    try:
        b.start()
        b.wait_ready([("front", "/", "x")])
        mark, started = b.log.mark(), time.monotonic()
        for _ in range(3):
            assert b.request("/flood", listener="front", query="6000").status == 200
            b.request("/crash", listener="front")
            wait_until(lambda: b.request("/", listener="front").status == 200, 60, what="a new worker")
        elapsed = time.monotonic() - started
        b.log.wait_for("worker exited", since=mark)
        logged = len(re.findall(r"flood line \d+", b.log.text(mark)))
        # a fresh burst per worker would be 3 x 5000
        assert logged <= 5000 + 200 * elapsed + 500, (logged, elapsed)
    finally:
        b.stop()


def test_json_access_events_say_where_the_time_went(tmp_path):
    """`access-log: "-"` with the JSON log: the access event's times are milliseconds to
    the microsecond (no float noise), with the queue, the worker and the web server's id."""
    port, = free_ports(1)
    b = make_bridge(tmp_path, {"shop": {"app": str(APPS / "logging_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "shop"}},
                    bridge_extra={"log-format": "json", "access-log": "-"})
    try:
        b.start()
        b.wait_ready([("front", "/", "x")])
        mark = b.log.mark()
        assert b.request("/errors", query="timed=1", listener="front", extra=[("REQUEST_ID", "abc-123")]).status == 200
        (line,) = b.log.wait_for(r"/errors\?timed=1", since=mark, access=True)
        for key in ("duration_ms", "queue_ms", "app_ms"):
            assert re.search(rf'"{key}":\d+(\.\d{{1,3}})?[,}}]', line), (key, line)
        f = json.loads(line)["fields"]
        assert f["web_request_id"] == "abc-123" and f["pid"] > 0 and f["app_ms"] <= f["duration_ms"], f
    finally:
        b.stop()

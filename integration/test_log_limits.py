"""Log lines a client can cause once per request or connection are rate-limited
(bridge/src/logging/ratelimit.rs): the first in full, then one summary line per second per
pool (or listener) and reason with the count, so an overload does not also fill the disk.
Nothing is lost: the full lines and the summaries' counts add up to what the clients saw,
and the status page still counts every 503."""
import json
import re
import socket
import threading
import time

import pytest

import fcgi_client
import harness
import respond_servers

FULL_503 = re.compile(r"WARN .*answering 503: queue full")
SUMMARY_503 = re.compile(r"pool one: (\d+) more requests answered 503 \(queue full\) in the last \d+\.\ds")
FULL_PROTOCOL = re.compile(r"WARN .*FastCGI protocol error, closing the connection")
SUMMARY_PROTOCOL = re.compile(r"listener fcgi: (\d+) more connections closed \(FastCGI protocol error\) in the last \d+\.\ds")
FULL_ABANDONED = re.compile(r"INFO .*connection closed before its PARAMS was complete; the request is abandoned")
SUMMARY_ABANDONED = re.compile(
    r"listener fcgi: (\d+) more requests abandoned \(connection closed before the request was complete\) in the last \d+\.\ds")
FULL_OVERLOADED = re.compile(r"WARN .*request refused with FCGI_OVERLOADED: the connection already has 1 requests in flight")
SUMMARY_OVERLOADED = re.compile(
    r"listener fcgi: (\d+) more requests refused with FCGI_OVERLOADED \(FCGI_MAX_REQS requests in flight on the "
    r"connection\) in the last \d+\.\ds")
# Full lines of a client error kept per second before the rest is counted (CLIENT_BURST).
CLIENT_BURST = 5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("loglimits")
    (port,) = harness.free_ports(1)
    pools = {
        # one thread, no queue: while it is held, every request is a 503 at once
        "one": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=1, **{"queue-size": 0}),
    }
    listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "routes": [{"prefix": "/busy", "pool": "one"}],
                          "status-path": "/fcgibridge-status"}}
    # Probed through the status path, and the pool's readiness read from the status page: a
    # probe sent to the pool while its worker starts would be a 503 of its own, and put the
    # test's first 503 into a window already open.
    bridge = respond_servers.start_bridge(work, pools, listeners, [("fcgi", "/fcgibridge-status", "any")])
    try:
        harness.wait_until(lambda: pool_status(bridge)["idle_slots"] == 1, 60, what="pool one ready")
        yield bridge, work
    finally:
        bridge.stop()


def pool_status(bridge) -> dict:
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/fcgibridge-status", query="json")
    assert r.status == 200
    return next(p for p in json.loads(r.body)["pools"] if p["name"] == "one")


def rejected(bridge) -> int:
    return pool_status(bridge)["rejected_requests"]


def logged(bridge, mark, full_re, summary_re):
    """The full lines and the summaries' counts in the daemon's log since `mark`."""
    lines = [ln for ln in bridge.log.lines(mark) if not harness.is_access_line(ln)]
    full = [ln for ln in lines if full_re.search(ln)]
    counts = [int(m.group(1)) for ln in lines for m in [summary_re.search(ln)] if m]
    return lines, full, counts


def wait_accounted(bridge, mark, full_re, summary_re, total):
    """Wait (the last window's summary comes from the flusher, up to a second later) until
    the log accounts for `total` occurrences; fails if it counts more."""
    def done():
        _, full, counts = logged(bridge, mark, full_re, summary_re)
        assert len(full) + sum(counts) <= total, (len(full), counts, total)
        return len(full) + sum(counts) == total

    try:
        harness.wait_until(done, 30, 0.1, what=f"{total} occurrences accounted for in the log")
    except TimeoutError:
        _, full, counts = logged(bridge, mark, full_re, summary_re)
        raise AssertionError(f"{len(full)} full lines and summaries {counts} for {total} occurrences; log tail:\n"
                             + "\n".join(bridge.log.lines(mark)[-40:]))
    return logged(bridge, mark, full_re, summary_re)


def test_a_flood_of_503s_is_one_full_line_then_a_summary_per_second(env):
    bridge, work = env
    addr = bridge.listener_address("fcgi")
    before = rejected(bridge)
    holder = threading.Thread(target=fcgi_client.fcgi_request, args=(addr, "/busy/hold"),
                              kwargs={"query": "mark=flood"}, daemon=True)
    holder.start()
    harness.wait_until(lambda: (work / "flood.started.mark").exists(), 60, what="the pool's only thread held")
    mark = bridge.log.mark()
    seen = 0
    t0 = time.monotonic()
    try:
        with fcgi_client.FcgiConnection(addr) as c:
            # Long enough for several windows, however fast the machine.
            while seen < 2000 or time.monotonic() - t0 < 2.5:
                r = c.request("/busy/health", query=f"n={seen + 1}")
                assert r.status == 503, r.stdout[:300]
                seen += 1
    finally:
        (work / "flood.release").write_text("")
        holder.join(60)
    elapsed = time.monotonic() - t0

    lines, full, counts = wait_accounted(bridge, mark, FULL_503, SUMMARY_503, seen)
    # The first one in full, with its pool, request id and URI.
    assert len(full) == 1, full
    assert re.search(r"pool=\"?one\b", full[0]) and re.search(r"request_id=\"?\d+", full[0]), full[0]
    assert re.search(r"uri=\"?/busy/health\?n=1\b", full[0]), full[0]
    # Then at most one summary per second (plus the one the flusher writes at the end).
    assert 2 <= len(counts) <= elapsed + 2, (counts, elapsed)
    assert len(lines) < seen / 50, f"{len(lines)} log lines for {seen} requests"
    # The status page still counts every one.
    assert rejected(bridge) - before == seen
    # The pool works again.
    assert fcgi_client.fcgi_request(addr, "/busy/health").status == 200


def test_a_flood_of_protocol_errors_keeps_a_few_lines_and_counts_the_rest(env):
    bridge, _ = env
    addr = bridge.listener_address("fcgi")
    mark = bridge.log.mark()
    total = 300
    t0 = time.monotonic()
    bad = fcgi_client.record(fcgi_client.BEGIN_REQUEST, 1, fcgi_client.begin_body(), version=2)
    for _ in range(total):
        with socket.create_connection(addr, timeout=30) as s:
            s.sendall(bad)
            while s.recv(4096):
                pass
    elapsed = time.monotonic() - t0

    lines, full, counts = wait_accounted(bridge, mark, FULL_PROTOCOL, SUMMARY_PROTOCOL, total)
    assert 1 <= len(full) and all("version" in ln and "peer=" in ln for ln in full), full
    # A few in full each second the flood is new, one summary a second while it goes on.
    assert len(full) + len(counts) <= (CLIENT_BURST + 1) * (elapsed + 2), (len(full), counts, elapsed)
    assert len(lines) < total / 5, f"{len(lines)} log lines for {total} bad connections"
    assert fcgi_client.fcgi_request(addr, "/busy/health").status == 200


def test_a_flood_of_abandoned_and_overloaded_requests_keeps_a_few_lines_and_counts_the_rest(env):
    """A client that begins requests and leaves (one INFO line per request before) and one that
    begins more than FCGI_MAX_REQS on a connection (here 1: pool one takes one request) are
    summarised like the other lines a client causes."""
    bridge, _ = env
    addr = bridge.listener_address("fcgi")
    mark = bridge.log.mark()
    total = 300
    t0 = time.monotonic()
    two = b"".join(fcgi_client.record(fcgi_client.BEGIN_REQUEST, rid, fcgi_client.begin_body()) for rid in (1, 2))
    for _ in range(total):
        with socket.create_connection(addr, timeout=30) as s:
            s.sendall(two)
            s.shutdown(socket.SHUT_WR)
            got = harness.read_until_closed(s, timeout=30)
            ends = [(rid, c[4]) for rt, rid, c in fcgi_client.parse_records(got) if rt == fcgi_client.END_REQUEST]
            assert ends == [(2, fcgi_client.OVERLOADED)], ends
    elapsed = time.monotonic() - t0

    for full_re, summary_re in ((FULL_ABANDONED, SUMMARY_ABANDONED), (FULL_OVERLOADED, SUMMARY_OVERLOADED)):
        lines, full, counts = wait_accounted(bridge, mark, full_re, summary_re, total)
        assert 1 <= len(full) and all("peer=" in ln and re.search(r"request=[12]\b", ln) for ln in full), full
        assert len(full) + len(counts) <= (CLIENT_BURST + 1) * (elapsed + 2), (len(full), counts, elapsed)
    assert len(bridge.log.lines(mark)) < total / 5, f"{len(bridge.log.lines(mark))} log lines for {total} connections"
    assert fcgi_client.fcgi_request(addr, "/busy/health").status == 200

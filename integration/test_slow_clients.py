"""Clients that start a request and stall, or open connections and hold them: the limits
`body-timeout`, `header-timeout`, `keepalive-timeout`, `header-memory` and `max-connections` (docs/configuration.md),
against the real daemon and through a real nginx with `fastcgi_request_buffering off`."""
import re
import socket
import threading
import time

import pytest
import requests

import fcgi_client as fc
import harness
from harness import read_until_closed
import respond_servers

THREADS = 2  # the pool's worker threads: as many stalled requests fill it
BODY_TIMEOUT = "2s"
HEADER_TIMEOUT = "2s"
SEND_TIMEOUT = "2s"
KEEPALIVE_TIMEOUT = 6  # seconds: longer than the 4 s test_an_idle_kept_connection_is_not_a_slow_header waits
BUDGET = 3 << 20  # header-memory: three 900 KB header blocks fit, a fourth does not
STALLED_PARAMS = 900_000
CAP = 3  # max-connections of the `capped` listener


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("slow")
    ports = harness.free_ports(5)
    quick = {"body-timeout": BODY_TIMEOUT, "header-timeout": HEADER_TIMEOUT, "send-timeout": SEND_TIMEOUT}
    listeners = {
        "fast": dict(fastcgi=f"127.0.0.1:{ports[0]}", pool="app", **quick,
                     **{"keepalive-timeout": f"{KEEPALIVE_TIMEOUT}s"}),
        "scgi": dict(scgi=f"127.0.0.1:{ports[1]}", pool="app", **quick),
        # headers may take their time here: the budget, not the timeout, stops them
        "patient": {"fastcgi": f"127.0.0.1:{ports[2]}", "pool": "app", "header-timeout": "10m"},
        "scgi-patient": {"scgi": f"127.0.0.1:{ports[4]}", "pool": "app", "header-timeout": "10m"},
        "capped": {"fastcgi": f"127.0.0.1:{ports[3]}", "pool": "app", "max-connections": CAP},
    }
    # Before the limits existed a stalled request held its thread until queue-timeout
    # made the next one a 503.
    pools = {"app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=THREADS,
                                 **{"queue-timeout": "20s"})}
    bridge = harness.make_bridge(work, pools, listeners, bridge_extra={"header-memory": BUDGET})
    bridge.start()
    nginx = None
    try:
        bridge.wait_ready([(name, "/health", "any") for name in listeners])
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fast"), work).start()
        yield bridge, nginx, work
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def connect(bridge, listener):
    s = socket.create_connection(bridge.listener_address(listener), timeout=60)
    return s


def fcgi_stall(bridge, listener, declared, sent=10, mark="stall"):
    """A POST to /echo declaring `declared` body bytes of which `sent` come, then silence."""
    conn = fc.FcgiConnection(bridge.listener_address(listener), timeout=60)
    params = fc.cgi_params("/echo", "POST", f"mark={mark}", content_length=declared)
    conn.begin(1, params, b"b" * sent, terminate_stdin=False)
    return conn


def scgi_stall(bridge, listener, declared, sent=10, mark="stall"):
    s = connect(bridge, listener)
    head = fc.scgi_headers("/echo", "POST", f"mark={mark}", body=b"b" * declared)
    s.sendall(fc.netstring(head) + b"b" * sent)
    return s


def status_of(cgi: bytes) -> int:
    return fc.Response(0, stdout=bytearray(cgi)).status


def stalled_answer(stall, protocol) -> int:
    """The status a stalled request got (it must get one, and its connection must say so)."""
    if protocol == "fastcgi":
        resp = stall.wait(1)
        return resp.status
    return status_of(read_until_closed(stall))


def close(stall):
    stall.close()


# ------------------------------------------------------------------ body-timeout

@pytest.mark.parametrize("protocol", ["fastcgi", "scgi"])
def test_stalled_large_bodies_are_ended_with_408_and_free_the_workers(env, protocol):
    """As many stalled uploads as the pool has threads, each dispatched (the body is larger
    than what goes out with the request): after body-timeout each gets 408, the app's read
    raises, the threads come back, and a request queued behind them is served."""
    bridge, _, work = env
    listener = "fast" if protocol == "fastcgi" else "scgi"
    stall = fcgi_stall if protocol == "fastcgi" else scgi_stall
    mark = bridge.log.mark()
    marks = [f"large-{protocol}-{i}" for i in range(THREADS)]
    stalls = [stall(bridge, listener, 200_000, mark=m) for m in marks]
    try:
        for m in marks:  # every thread is reading a body that does not come
            harness.wait_until(lambda: (work / f"{m}.started.mark").exists(), 60, what=f"{m} started")
        resp = fc.fcgi_request(bridge.listener_address("fast"), "/health")
        assert (resp.status, resp.body) == (200, b"ok")
        for s in stalls:
            assert stalled_answer(s, protocol) == 408
    finally:
        for s in stalls:
            close(s)
    for m in marks:
        kind, is_oserror, read = harness.wait_until(
            lambda: (work / f"{m}.mark").exists() and (work / f"{m}.mark").read_text().split(), 60,
            what=f"{m}: the app's read ended")
        assert kind != "complete" and is_oserror == "True", (kind, is_oserror, read)
    lines = bridge.log.wait_for([r"WARN", r"request body stalled", r"request aborted in the worker, answering 408",
                                 rf"listener=\"?{listener}", r"pool=\"?app", r"pid=\d+", r"request_id=\"?\d+",
                                 r"uri=\"?/echo\?mark=large", r"received=10", r"declared=\"?200000"], since=mark)
    harness.wait_until(lambda: len([ln for ln in bridge.log.lines(mark) if "request body stalled" in ln]) == THREADS,
                       30, what="one line per stalled request")
    assert len(lines) >= 1
    # the slots came back clean: the whole pool serves again at once
    both = [fc.FcgiConnection(bridge.listener_address("fast")) for _ in range(THREADS)]
    try:
        for i, c in enumerate(both):
            c.begin(1, fc.cgi_params("/echo", "POST", f"mark=after-{protocol}-{i}", content_length=5), b"12345")
        for c in both:
            r = c.wait(1)
            assert r.status == 200 and b'"read": 5' in r.body, r.stdout[:300]
    finally:
        for c in both:
            c.close()


@pytest.mark.parametrize("protocol", ["fastcgi", "scgi"])
def test_stalled_small_bodies_never_take_a_worker(env, protocol):
    """A small body of known length is read whole before a worker is taken: twice as many
    stalled clients as threads leave the pool free, and they get 408 after body-timeout."""
    bridge, _, work = env
    listener = "fast" if protocol == "fastcgi" else "scgi"
    stall = fcgi_stall if protocol == "fastcgi" else scgi_stall
    mark = bridge.log.mark()
    marks = [f"small-{protocol}-{i}" for i in range(2 * THREADS)]
    stalls = [stall(bridge, listener, 1000, mark=m) for m in marks]
    try:
        # more requests than threads, one after the other: none waits behind the stalls
        for _ in range(THREADS * 2):
            resp = fc.fcgi_request(bridge.listener_address("fast"), "/health")
            assert (resp.status, resp.body) == (200, b"ok")
        for s in stalls:
            assert stalled_answer(s, protocol) == 408
    finally:
        for s in stalls:
            close(s)
    bridge.log.wait_for([r"WARN", r"request body stalled", r"before a worker was taken, answering 408",
                         rf"listener=\"?{listener}", r"pool=\"?app", r"request_id=\"?\d+", r"uri=\"?/echo\?mark=small",
                         r"received=10", r"declared=1000"], since=mark)
    for m in marks:
        assert not (work / f"{m}.started.mark").exists(), f"{m}: the app ran for a body that never came"


def test_a_body_dripped_inside_body_timeout_is_ended_by_body_min_rate(env):
    """A byte every 1.5 s never trips the 2 s body-timeout; once the bridge has waited the
    body-timeout in all, body-min-rate (500 bytes/s by default) ends it with 408, the app's
    read raises and its thread serves again."""
    bridge, _, work = env
    mark = bridge.log.mark()
    done = threading.Event()
    c = fc.FcgiConnection(bridge.listener_address("fast"), timeout=60)

    def drip():
        while not done.wait(1.5):
            try:
                c.send(fc.record(fc.STDIN, 1, b"d"))
            except OSError:
                return

    dripper = threading.Thread(target=drip)
    try:
        c.begin(1, fc.cgi_params("/echo", "POST", "mark=dripped", content_length=200_000), b"b" * 10,
                terminate_stdin=False)
        harness.wait_until(lambda: (work / "dripped.started.mark").exists(), 60, what="the app reading the body")
        dripper.start()
        assert c.wait(1).status == 408
    finally:
        done.set()
        if dripper.is_alive():
            dripper.join(30)
        c.close()
    bridge.log.wait_for([r"WARN", r"request body too slow: \d+ bytes while the bridge waited \d+s for them, below body-min-rate \(500 bytes/s",
                         r"request aborted in the worker, answering 408", r"pool=\"?app",
                         r"uri=\"?/echo\?mark=dripped"], since=mark)
    kind, is_oserror, _ = harness.wait_until(
        lambda: (work / "dripped.mark").exists() and (work / "dripped.mark").read_text().split(), 60,
        what="the app's read ended")
    assert kind != "complete" and is_oserror == "True"
    resp = fc.fcgi_request(bridge.listener_address("fast"), "/health")
    assert (resp.status, resp.body) == (200, b"ok")


def test_a_small_body_in_pieces_is_served_whole(env):
    """A small body read ahead in several pieces reaches the app whole."""
    bridge, _, _ = env
    with bridge.fcgi("fast") as c:
        c.begin(1, fc.cgi_params("/echo", "POST", "mark=pieces", content_length=30), b"a" * 10, terminate_stdin=False)
        for piece in (b"b" * 10, b"c" * 10, b""):
            c.send(fc.record(fc.STDIN, 1, piece))
        r = c.wait(1)
    assert r.status == 200 and b'"read": 30' in r.body, r.stdout[:300]


@pytest.mark.parametrize("size", [1000, 200_000])
def test_stalled_uploads_through_nginx_unbuffered(env, size):
    """nginx with `fastcgi_request_buffering off` passes a slow uploader straight through:
    the stalled ones get 408, and the pool keeps serving."""
    bridge, nginx, work = env
    mark = bridge.log.mark()
    clients = []
    try:
        for i in range(THREADS):
            s = socket.create_connection(("127.0.0.1", nginx.port), timeout=60)
            s.sendall((f"POST /stream/echo?mark=nginx-{size}-{i} HTTP/1.1\r\nHost: any\r\n"
                       f"Content-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
                      + b"n" * 10)
            clients.append(s)
        r = requests.get(nginx.url("/health"), timeout=60)
        assert (r.status_code, r.text) == (200, "ok")
        for s in clients:
            s.settimeout(60)
            head = b""
            while b"\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, f"nginx closed without a status line ({head!r})"
                head += chunk
            assert re.match(rb"HTTP/1\.1 408 ", head), head[:200]
    finally:
        for s in clients:
            s.close()
    bridge.log.wait_for([r"WARN", r"request body stalled", r"listener=\"?fast", r"pool=\"?app",
                         rf"uri=\"?/stream/echo\?mark=nginx-{size}", rf"declared=\"?{size}"], since=mark)
    r = requests.post(nginx.url("/stream/echo"), data=b"x" * 5000, timeout=60)
    assert r.status_code == 200 and r.json()["read"] == 5000


# ------------------------------------------------------------------ send-timeout

@pytest.mark.parametrize("protocol", ["fastcgi", "scgi"])
def test_clients_that_stop_reading_free_their_workers_after_send_timeout(env, protocol):
    """As many clients as the pool has threads ask for a large response and read none of
    it: each connection is closed at send-timeout, the workers are let go, and the next
    request is served (before, it waited for a worker until queue-timeout: 503)."""
    bridge, _, _ = env
    mark = bridge.log.mark()
    listener = "fast" if protocol == "fastcgi" else "scgi"
    readers = []
    for i in range(THREADS):
        s = connect(bridge, listener)
        if protocol == "fastcgi":
            params = fc.cgi_params("/big", "GET", f"mib=32&n={i}")
            s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN))
                      + fc.stream(fc.PARAMS, 1, fc.encode_pairs(params)) + fc.record(fc.STDIN, 1, b""))
        else:
            s.sendall(fc.netstring(fc.scgi_headers("/big", "GET", f"mib=32&n={i}")))
        readers.append(s)
    try:
        def timed_out():
            lines = [ln for ln in bridge.log.lines(mark)
                     if re.search(r"WARN.*took no response bytes within send-timeout \(2s\)", ln)
                     and re.search(rf"listener=\"?{listener}\b", ln)]
            return len(lines) >= THREADS
        harness.wait_until(timed_out, 60, what="every reader's connection closed at send-timeout")
        if protocol == "fastcgi":
            assert fc.fcgi_request(bridge.listener_address(listener), "/health").status == 200
        else:
            status, _, body = fc.scgi_request(bridge.listener_address(listener), "/health")
            assert status == 200, body
        for s in readers:
            got = read_until_closed(s, timeout=60)
            assert len(got) < 32 << 20, "the whole response went out to a client that read none of it"
    finally:
        for s in readers:
            s.close()


# ------------------------------------------------------------------ header-timeout

def stalled_params(bridge, listener, size=STALLED_PARAMS):
    """BEGIN and `size` bytes of PARAMS, without the empty record that ends them."""
    s = connect(bridge, listener)
    params = fc.cgi_params("/health", headers={"X-Big": "p" * size})
    s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN))
              + fc.stream(fc.PARAMS, 1, fc.encode_pairs(params)[:size], terminate=False))
    return s


def test_stalled_fastcgi_params_are_closed_after_header_timeout(env):
    bridge, _, _ = env
    mark = bridge.log.mark()
    stalls = [stalled_params(bridge, "fast") for _ in range(2)]
    try:
        resp = fc.fcgi_request(bridge.listener_address("fast"), "/health")
        assert resp.status == 200
        for s in stalls:
            assert read_until_closed(s) == b""
    finally:
        for s in stalls:
            s.close()
    lines = bridge.log.wait_for([r"WARN", r"no complete FastCGI request headers within header-timeout \(2s",
                                 r"listener=\"?fast", r"peer=\"?127\.0\.0\.1:\d+"], since=mark)
    assert any(re.search(r"\b9\d\d\d\d\d bytes held", ln) for ln in lines), lines


def test_a_trickled_begin_on_an_idle_connection_is_closed_after_header_timeout(env):
    """The clock starts with an idle connection's first byte, before a whole record."""
    bridge, _, _ = env
    mark = bridge.log.mark()
    s = connect(bridge, "fast")
    try:
        s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body())[:5])
        assert read_until_closed(s) == b""
    finally:
        s.close()
    bridge.log.wait_for([r"no complete FastCGI request headers within header-timeout", r"5 bytes held"], since=mark)


def test_a_new_connection_that_sends_nothing_is_closed_after_header_timeout(env):
    """Silent connections cannot fill max-connections for good: the clock starts at accept."""
    bridge, _, _ = env
    mark = bridge.log.mark()
    s = connect(bridge, "fast")
    try:
        assert read_until_closed(s) == b""
    finally:
        s.close()
    bridge.log.wait_for([r"WARN", r"a new connection sent nothing within header-timeout \(2s\)",
                         r"listener=\"?fast"], since=mark)


def test_an_idle_kept_connection_is_not_a_slow_header(env):
    """Between requests nothing is pending: a kept connection may wait longer than
    header-timeout for its next request."""
    bridge, _, _ = env
    with bridge.fcgi("fast") as c:
        assert c.request("/health").status == 200
        mark = bridge.log.mark()
        with pytest.raises(socket.timeout):
            c.read_until_closed(4)  # twice header-timeout: still open
        c.sock.settimeout(60)
        c.responses.clear()
        assert c.request("/health", request_id=2).status == 200
    assert "no complete FastCGI request headers" not in bridge.log.text(mark)


def test_a_kept_connection_with_no_request_is_closed_after_keepalive_timeout(env):
    """A request that runs longer than keepalive-timeout is not cut; the clock starts when
    the connection has nothing left to do, and then the bridge closes it."""
    bridge, _, _ = env
    with bridge.fcgi("fast") as c:
        r = c.request("/sleep", query=f"s={KEEPALIVE_TIMEOUT + 1}")
        assert r.status == 200 and r.body == b"slept", r.stdout[:200]
        c.responses.clear()
        c.sock.settimeout(60)
        assert c.request("/health", request_id=2).status == 200  # still open after the long request
        idle_from = time.monotonic()
        assert c.read_until_closed(60) == b""
        assert time.monotonic() - idle_from >= KEEPALIVE_TIMEOUT - 0.5


def test_a_body_sent_after_an_early_response_is_not_a_slow_header(env):
    """The app answered before the body ended; the web server goes on sending it, in
    records split across reads, for longer than header-timeout. Those are no request's
    headers: the kept connection stays and serves the next request."""
    import time
    bridge, _, _ = env
    mark = bridge.log.mark()
    with bridge.fcgi("fast") as c:
        c.begin(1, fc.cgi_params("/health", "POST", content_length=200_000), b"x" * 1000, terminate_stdin=False)
        assert c.wait(1).status == 200
        rest = fc.stream(fc.STDIN, 1, b"y" * 6000, chunk=1000)
        deadline = time.monotonic() + 4  # twice header-timeout, a piece every 0.25 s
        i = 0
        while time.monotonic() < deadline and i < len(rest):
            c.send(rest[i:i + 300])  # never a whole number of records: one is always partial
            i += 300
            time.sleep(0.25)
        c.send(rest[i:])
        c.responses.clear()
        assert c.request("/health", request_id=2).status == 200
    assert "no complete FastCGI request headers" not in bridge.log.text(mark)


def test_scgi_header_timeout_is_the_listeners(env):
    bridge, _, _ = env
    mark = bridge.log.mark()
    s = connect(bridge, "scgi")
    try:
        s.sendall(b"70:CONTENT_LENGTH\x000\x00")
        assert read_until_closed(s, timeout=30) == b""
    finally:
        s.close()
    bridge.log.wait_for([r"no complete SCGI request headers within header-timeout \(2s", r"listener=\"?scgi"], since=mark)


# ------------------------------------------------------------------ header-memory

def test_header_memory_budget(env):
    """Stalled 900 KB header blocks fill the daemon's budget: the connections that would pass
    it are closed with a line naming the budget, the others finish their requests, and a
    normal request is served meanwhile."""
    bridge, _, _ = env
    mark = bridge.log.mark()
    conns = []
    try:
        for _ in range(5):
            s = connect(bridge, "patient")
            conns.append(s)
            params = fc.encode_pairs(fc.cgi_params("/health", headers={"X-Big": "p" * STALLED_PARAMS}))
            try:
                s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN))
                          + fc.stream(fc.PARAMS, 1, params, terminate=False))
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed for the budget while sending
        # three fit in 3 MiB, a fourth does not: two of the five are closed
        harness.wait_until(lambda: sum(map(is_closed, conns)) == 2, 60, what="two connections closed")
        lines = bridge.log.wait_for([r"WARN", rf"header-memory budget of {BUDGET} bytes reached", r"closing the connection",
                                     r"listener=\"?patient", r"peer=\"?127\.0\.0\.1:\d+"], since=mark)
        assert len(lines) == 2, lines
        resp = fc.fcgi_request(bridge.listener_address("patient"), "/health")
        assert (resp.status, resp.body) == (200, b"ok")
        # the connections within the budget carry on: their requests complete
        held = [s for s in conns if not is_closed(s)]
        assert len(held) == 3
        for s in held:
            s.setblocking(True)
            s.settimeout(60)
            s.sendall(fc.record(fc.PARAMS, 1, b"") + fc.record(fc.STDIN, 1, b""))
            got = b""
            while not any(rt == fc.END_REQUEST for rt, _, _ in fc.parse_records(got)):
                chunk = s.recv(65536)
                assert chunk, "closed before END_REQUEST"
                got += chunk
            assert b"Status: 200" in got, got[:300]
    finally:
        for s in conns:
            s.close()


def test_requests_waiting_for_a_worker_count_against_header_memory(env):
    """Multiplexed requests whose headers are complete and whose small bodies stall wait
    before a worker (the body is read ahead, for body-timeout): their headers count against
    header-memory until a worker takes them. A connection that would pass the budget is
    closed, as for unfinished headers, so the daemon's memory stays bounded however many
    such requests are sent (before, 8 connections x 1000 requests of 50 KB held 400 MB);
    requests within the budget carry on."""
    bridge, _, _ = env
    mark = bridge.log.mark()
    before = bridge.status_of(bridge.pid, "VmRSS")
    victim = fc.FcgiConnection(bridge.listener_address("patient"), timeout=60)
    attackers = []
    try:
        for rid in (1, 2):
            victim.begin(rid, fc.cgi_params("/echo", "POST", f"mark=victim-{rid}", content_length=10), b"",
                         terminate_stdin=False)
        params = fc.encode_pairs(fc.cgi_params("/echo", "POST", content_length=10, headers={"X-Pad": "a" * 50_000}))
        for _ in range(8):
            s = connect(bridge, "patient")
            attackers.append(s)
            try:
                for rid in range(1, 1001):
                    s.sendall(fc.record(fc.BEGIN_REQUEST, rid, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN))
                              + fc.stream(fc.PARAMS, rid, params))
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed for the budget while sending
        # VmHWM: the peak, however short
        grew = bridge.status_of(bridge.pid, "VmHWM") - before
        assert grew < BUDGET + (100 << 20), f"RSS grew by {grew >> 20} MiB"
        harness.wait_until(lambda: all(map(is_closed, attackers)), 60, what="every attacking connection closed")
        bridge.log.wait_for([r"WARN", rf"header-memory budget of {BUDGET} bytes reached", r"closing the connection",
                             r"listener=\"?patient", r"peer=\"?127\.0\.0\.1:\d+"], since=mark)
        # the requests that fit carry on once their bodies come
        victim.send(fc.stream(fc.STDIN, 1, b"0123456789") + fc.stream(fc.STDIN, 2, b"0123456789"))
        for rid in (1, 2):
            resp = victim.wait(rid)
            assert resp.status == 200 and b'"read": 10' in resp.body, resp.stdout[:300]
    finally:
        victim.close()
        for s in attackers:
            s.close()


def test_scgi_requests_waiting_for_their_body_count_against_header_memory(env):
    """An SCGI netstring that is complete, waiting for its small body before a worker is
    taken, counts against header-memory as it did while it arrived: the connections that
    would pass the budget are closed unanswered, the others are served once their body comes."""
    bridge, _, _ = env
    mark = bridge.log.mark()
    head = fc.netstring(fc.scgi_headers("/echo", "POST", "mark=scgi-waits", body=b"b" * 10,
                                        headers={"X-Big": "p" * STALLED_PARAMS}))
    conns = []
    try:
        for _ in range(5):
            s = connect(bridge, "scgi-patient")
            conns.append(s)
            try:
                s.sendall(head)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed for the budget while sending
        # three fit in 3 MiB, a fourth does not: two of the five are closed
        harness.wait_until(lambda: sum(map(is_closed, conns)) == 2, 60, what="two connections closed")
        lines = bridge.log.wait_for([r"WARN", rf"header-memory budget of {BUDGET} bytes reached",
                                     r"closing the connection", r"listener=\"?scgi-patient"], since=mark)
        assert len(lines) == 2, lines
        for s in [s for s in conns if not is_closed(s)]:
            s.setblocking(True)
            s.sendall(b"b" * 10)
            assert status_of(read_until_closed(s)) == 200
    finally:
        for s in conns:
            s.close()


def is_closed(s) -> bool:
    """Whether the bridge closed (or reset) `s`, without waiting."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.settimeout(60)


# ------------------------------------------------------------------ max-connections

def test_connections_beyond_max_connections_are_refused(env):
    bridge, _, _ = env
    mark = bridge.log.mark()
    addr = bridge.listener_address("capped")
    held = [socket.create_connection(addr, timeout=60) for _ in range(CAP)]
    extra = []
    try:
        # the held ones are accepted and counted (a GET_VALUES answer proves each is served)
        for s in held:
            s.sendall(fc.record(fc.GET_VALUES, 0, fc.encode_pairs([("FCGI_MAX_CONNS", "")])))
            s.settimeout(60)
            got = b""
            while not fc.parse_records(got):
                chunk = s.recv(4096)
                assert chunk, "a connection within the cap was closed"
                got += chunk
            assert fc.decode_pairs(fc.parse_records(got)[0][2]) == {"FCGI_MAX_CONNS": str(CAP)}
        for _ in range(10):
            extra.append(socket.create_connection(addr, timeout=60))
        for s in extra:
            assert read_until_closed(s, timeout=30) == b""
        bridge.log.wait_for([r"WARN", rf"max-connections \({CAP}\) reached: refusing a new connection",
                             r"listener=\"?capped", r"peer=\"?127\.0\.0\.1:\d+"], since=mark)
        # the rest of the burst: summarized by the log limiter like the other client-caused
        # lines (first line + summaries account for every refusal)
        def counted():
            lines = [ln for ln in bridge.log.lines(mark) if "max-connections" in ln]
            total = 0
            for ln in lines:
                m = re.search(r"listener capped: (\d+) more connections refused \(max-connections reached\)", ln)
                total += int(m.group(1)) if m else 1
            return total == len(extra) and lines
        lines = harness.wait_until(counted, 30, what="every refusal accounted for in the log")
        assert len(lines) < len(extra), lines
    finally:
        for s in extra:
            s.close()
        for s in held:
            s.close()

    def serves():
        return fc.fcgi_request(addr, "/health").status == 200
    harness.wait_until(serves, 60, 0.2, what="capped serving again once the held connections closed")

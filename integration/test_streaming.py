"""Streaming both ways with bounded memory: 50 MiB uploads (streamed chunked through
nginx, buffered by nginx, over SCGI, straight FastCGI), responses from generators,
and back-pressure from a client that stops reading.

These tests run against their own bridge so its memory high-water mark (VmHWM) is
not raised by other tests."""
import hashlib
import os
import time

import pytest
import requests

import fcgi_client
from harness import APPS, POOL_HOSTS, Nginx, free_ports, main_listeners, make_bridge, pool

MiB = 1 << 20
UPLOAD = 50 * MiB
# The bridge may hold bounded buffers, never the body: "far below 50 MiB".
GROWTH_LIMIT = 20 * MiB

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stream-bridge")
    pools = {
        "edge": pool(str(APPS / "edge_app.py"), processes=1, threads=4),
        "flask": pool(str(APPS / "flask_app.py"), processes=1, threads=2),
        "one": pool(str(APPS / "edge_app.py"), processes=1, threads=1),
    }
    listeners = main_listeners(workdir, free_ports(6))
    for spec in listeners.values():
        if "routes" in spec:
            spec["routes"] = [{"host": POOL_HOSTS["flask"], "pool": "flask"}, {"host": "one.test", "pool": "one"},
                              {"pool": "edge"}]
    b = make_bridge(workdir, pools, listeners)
    n = None
    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/health", "edge.test"), ("fcgi-tcp", "/health", "flask.test"),
                      ("scgi-tcp", "/health", "edge.test"), ("fcgi-unix", "/health", "edge.test")])
        n = Nginx(tmp_path_factory.mktemp("stream-nginx"), b).start().wait_ready()
        # warm up every path once so the baseline includes steady-state allocations
        for transport in Nginx.TRANSPORTS:
            requests.post(n.url(transport, "/upload"), data=b"w" * MiB, headers={"Host": "edge.test"}, timeout=60)
        yield b, n
    finally:
        if n:
            n.stop()
        b.stop()


@pytest.fixture(scope="module")
def payload():
    data = os.urandom(UPLOAD)
    return data, hashlib.sha256(data).hexdigest()


def chunks(data, size=256 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def worker_baseline(b):
    resp = b.request("/mem", pool="edge")
    assert resp.status == 200
    import json
    return json.loads(resp.body)


def check_memory(b, rss_before, result, worker_before):
    hwm = b.status_of(b.pid, "VmHWM")
    assert hwm - rss_before < GROWTH_LIMIT, \
        f"bridge VmHWM {hwm / MiB:.1f} MiB vs RSS {rss_before / MiB:.1f} MiB before the 50 MiB upload"
    assert hwm < 50 * MiB, f"bridge VmHWM {hwm / MiB:.1f} MiB"
    if result.get("pid") == worker_before["pid"]:
        growth = result["hwm_after"] - worker_before["VmHWM"]
        assert growth < 2 * GROWTH_LIMIT, f"the worker's VmHWM grew by {growth / MiB:.1f} MiB: wsgi.input buffered?"


def test_50mib_chunked_upload_streams_through_nginx(stack, payload):
    b, n = stack
    data, digest = payload
    rss_before = b.status_of(b.pid, "VmRSS")
    worker_before = worker_baseline(b)
    r = requests.post(n.url("fcgi-stream", "/upload"), data=chunks(data),
                      headers={"Host": "edge.test", "Content-Type": "application/octet-stream"}, timeout=300)
    assert r.status_code == 200, r.text[:500]
    result = r.json()
    assert result["size"] == UPLOAD
    assert result["sha256"] == digest
    # nginx streams a chunked body with CONTENT_LENGTH empty: the app reads to EOF
    assert result["content_length"] in ("", None)
    assert result["input_terminated"]
    assert result["reads"] > 10
    check_memory(b, rss_before, result, worker_before)


@pytest.mark.parametrize("transport", ["fcgi-tcp", "fcgi-unix", "scgi"])
def test_50mib_upload_buffered_by_nginx(stack, payload, transport):
    b, n = stack
    data, digest = payload
    rss_before = b.status_of(b.pid, "VmRSS")
    worker_before = worker_baseline(b)
    r = requests.post(n.url(transport, "/upload"), data=data,
                      headers={"Host": "edge.test", "Content-Type": "application/octet-stream"}, timeout=300)
    assert r.status_code == 200, r.text[:500]
    result = r.json()
    assert result["size"] == UPLOAD
    assert result["sha256"] == digest
    assert result["content_length"] == str(UPLOAD)
    check_memory(b, rss_before, result, worker_before)


def test_50mib_upload_direct_fastcgi(stack, payload):
    b, _ = stack
    data, digest = payload
    rss_before = b.status_of(b.pid, "VmRSS")
    worker_before = worker_baseline(b)
    with b.fcgi("fcgi-tcp", timeout=300) as conn:
        params = fcgi_client.cgi_params("/upload", "POST", headers={"Host": "edge.test"},
                                        content_length=len(data))
        conn.begin(1, params, stdin=None)
        for piece in chunks(data, 0xFFF8 * 4):
            conn.send(fcgi_client.stream(fcgi_client.STDIN, 1, piece, terminate=False))
        conn.send(fcgi_client.record(fcgi_client.STDIN, 1, b""))
        resp = conn.wait(1)
    assert resp.protocol_status == fcgi_client.REQUEST_COMPLETE
    assert resp.status == 200
    import json
    result = json.loads(resp.body)
    assert result["size"] == UPLOAD and result["sha256"] == digest
    check_memory(b, rss_before, result, worker_before)


def test_50mib_upload_to_flask_streams(stack, payload):
    b, n = stack
    data, digest = payload
    r = requests.post(n.url("fcgi-stream", "/upload"), data=chunks(data),
                      headers={"Host": POOL_HOSTS["flask"], "Content-Type": "application/octet-stream"},
                      timeout=300)
    assert r.status_code == 200, r.text[:500]
    assert r.json() == {"size": UPLOAD, "sha256": digest}


def test_response_streamed_from_generator_through_nginx(stack):
    _, n = stack
    start = time.monotonic()
    r = requests.get(n.url("fcgi-tcp", "/stream?n=3&delay=2"), headers={"Host": "edge.test"},
                     stream=True, timeout=60)
    assert r.status_code == 200
    arrivals = []
    buf = b""
    for piece in r.iter_content(chunk_size=None):
        buf += piece
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            arrivals.append((time.monotonic() - start, line))
    assert [line.split()[1] for _, line in arrivals] == [b"0", b"1", b"2"]
    total = arrivals[-1][0]
    assert total >= 3.9
    # the first chunk left the app ~4 s before the last: it must not wait for it
    assert arrivals[0][0] < total - 2.5, arrivals


def test_complete_response_is_not_held_by_a_slow_close(stack):
    """The worker holds a body that reached its Content-Length for the END_REQUEST that
    follows the iterable's close() (one write instead of two), but a close() that takes
    long must not hold the response: the body reaches the web server while close() runs."""
    b, _ = stack
    with b.fcgi("fcgi-tcp") as conn:
        resp = conn.request("/slow-close", query="s=3", headers={"Host": "edge.test"})
    assert (resp.status, resp.body) == (200, b"complete")
    body_at = next(t for t, n in resp.stdout_times if n > 0)
    end_at = resp.stdout_times[-1][0]
    assert end_at - body_at > 1.5, resp.stdout_times


def test_response_streamed_direct_fastcgi(stack):
    b, _ = stack
    with b.fcgi("fcgi-tcp") as conn:
        start = time.monotonic()
        resp = conn.request("/stream", query="n=3&delay=1.5", headers={"Host": "edge.test"})
    assert resp.status == 200
    assert resp.body.count(b"chunk") == 3
    first, last = resp.stdout_times[0][0] - start, resp.stdout_times[-1][0] - start
    assert last - first > 2.0, resp.stdout_times


def test_slow_reader_back_pressure(stack):
    """A client that stops reading a 64 MiB response must not make the bridge buffer it."""
    b, _ = stack
    rss_before = b.status_of(b.pid, "VmRSS")
    with b.fcgi("fcgi-tcp", timeout=120) as conn:
        conn.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 64 * 1024)
        params = fcgi_client.cgi_params("/big", query="mib=64", headers={"Host": "edge.test"})
        conn.begin(1, params, b"")
        got = 0
        while got < MiB:
            conn.pump()
            got = len(conn.responses[1].stdout)
        time.sleep(3)  # the app keeps producing; only back-pressure stops it
        hwm = b.status_of(b.pid, "VmHWM")
        resp = conn.wait(1)
    assert resp.status == 200
    assert len(resp.body) == 64 * MiB
    assert hwm - rss_before < GROWTH_LIMIT, f"bridge grew to {hwm / MiB:.1f} MiB with a stalled reader"


def test_upload_waiting_in_the_queue_is_not_buffered(stack, payload):
    """While a request waits for a worker thread, the bridge must not read its whole body
    into memory: the client is held back (back-pressure) until a worker takes it."""
    import threading
    import uuid
    from harness import wait_until
    b, _ = stack
    data, digest = payload
    tag = "hold-" + uuid.uuid4().hex[:8]
    holder = {}

    def hold():
        holder["resp"] = b.request("/sleep", pool="one.test", query=f"s=6&tag={tag}")

    t_hold = threading.Thread(target=hold)
    t_hold.start()
    wait_until(lambda: (b.workdir / f"{tag}.pid").exists(), 30, what="the only thread busy")
    rss_before = b.status_of(b.pid, "VmRSS")
    result = {}

    def upload():
        with b.fcgi("fcgi-tcp", timeout=300) as conn:
            conn.begin(1, fcgi_client.cgi_params("/upload", "POST", headers={"Host": "one.test"},
                                                 content_length=len(data)), stdin=None)
            for piece in chunks(data, 0xFFF8 * 4):
                conn.send(fcgi_client.stream(fcgi_client.STDIN, 1, piece, terminate=False))
            conn.send(fcgi_client.record(fcgi_client.STDIN, 1, b""))
            result["resp"] = conn.wait(1)

    t_up = threading.Thread(target=upload)
    t_up.start()
    time.sleep(3)  # the upload pushes as fast as the bridge reads; only back-pressure stops it
    hwm_queued = b.status_of(b.pid, "VmHWM")
    t_hold.join(60)
    t_up.join(300)
    assert holder["resp"].status == 200
    import json
    out = json.loads(result["resp"].body)
    assert out["size"] == UPLOAD and out["sha256"] == digest
    assert hwm_queued - rss_before < GROWTH_LIMIT, \
        f"the bridge grew by {(hwm_queued - rss_before) / MiB:.1f} MiB holding a queued upload"


def test_waiting_on_wsgi_input_releases_the_gil(stack):
    """One worker process (the edge pool here), one thread blocked reading a slow upload:
    the process's other threads keep serving (the GIL is released while waiting on input)."""
    import json
    b, _ = stack
    import uuid
    from harness import wait_until
    marker = b.workdir / f"gil-{uuid.uuid4().hex}"
    # Larger than the 64 KiB the bridge reads ahead before taking a worker: the app starts
    # reading while the upload is still arriving.
    size = 100_000
    with b.fcgi("fcgi-tcp", timeout=120) as slow:
        slow.begin(1, fcgi_client.cgi_params("/upload-watch", "POST", f"marker={marker}",
                                             headers={"Host": "edge.test"}, content_length=size), stdin=None)
        slow.send(fcgi_client.record(fcgi_client.STDIN, 1, b"s" * 1000))
        # the app has started reading: it is (or is about to be) blocked in wsgi.input.read()
        wait_until(marker.exists, 30, what="the app reading the slow upload")
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            resp = b.request("/pid", pool="edge")
            times.append(time.monotonic() - t0)
            assert resp.status == 200
        assert max(times) < 2.0, times
        slow.send(fcgi_client.stream(fcgi_client.STDIN, 1, b"s" * (size - 1000)))
        out = json.loads(slow.wait(1).body)
    assert out == {"size": size, "outcome": "eof"}
    # (the stack's edge pool is one process: /pid answered from the same process)


def test_no_memory_growth_over_many_requests(stack):
    """A leak check: thousands of requests through nginx (all transports) leave the bridge's
    resident memory where it was after a warm-up."""
    _, n = stack
    b = stack[0]
    sessions = {t: requests.Session() for t in ("fcgi-unix", "fcgi-tcp", "scgi")}

    def burst(count):
        for i in range(count):
            for t, s in sessions.items():
                r = s.post(n.url(t, f"/upload?i={i}"), data=b"p" * 2000, headers={"Host": "edge.test"}, timeout=60)
                assert r.status_code == 200

    burst(300)
    rss_before = b.status_of(b.pid, "VmRSS")
    burst(1200)
    rss_after = b.status_of(b.pid, "VmRSS")
    assert rss_after - rss_before < 8 * MiB, \
        f"bridge RSS grew {(rss_after - rss_before) / MiB:.1f} MiB over 3600 requests"

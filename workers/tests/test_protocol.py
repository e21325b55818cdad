"""FastCGI-level behaviour: keep-conn, roles, GET_VALUES, multiplexing, aborts."""
import json
import struct
import threading
import time

import fcgi
from fcgi import base_params


def events(w):
    with w.client() as c:
        return json.loads(c.request("/events").body)


def test_keep_conn_many_requests(worker):
    with worker.client() as c:
        for i in range(50):
            r = c.request("/hello")
            assert r.body == b"Hello, World!"
        r = c.request("/read", method="POST", query="all", body=b"x" * 100000)
        assert r.body.endswith(b"x" * 100000)
        assert c.request("/hello").body == b"Hello, World!"


def test_no_keep_conn_closes(worker):
    with worker.client() as c:
        r = c.request("/hello", keep_conn=False)
        assert r.body == b"Hello, World!"
        assert c.sock.recv(1) == b""


def test_unread_body_is_skipped(worker):
    """The app ignores a large body; the next request on the connection still works."""
    with worker.client() as c:
        r = c.request("/hello", method="POST", body=b"z" * 500000)
        assert r.body == b"Hello, World!"
        assert c.request("/hello").body == b"Hello, World!"


def test_unknown_role(worker):
    """FILTER (and any role number we don't know) is refused; AUTHORIZER is served
    (docs/authorizer.md)."""
    with worker.client() as c:
        c.begin(role=fcgi.FILTER)
        c.params(base_params("/hello"))
        c.stdin_end()
        r = c.read_response()
        assert r.protocol_status == fcgi.UNKNOWN_ROLE
        assert r.stdout == b""
        assert c.request("/hello").body == b"Hello, World!"


def test_authorizer_role_is_served(worker):
    """An authorizer request reaches the app (FCGI_ROLE in environ) and may carry no STDIN."""
    with worker.client() as c:
        c.begin(role=fcgi.AUTHORIZER)
        c.params(base_params("/hello"))
        r = c.read_response()
        assert r.protocol_status == 0
        assert b"Hello, World!" in r.stdout


def test_get_values(spawn):
    w = spawn(threads=3)
    with w.client() as c:
        values = c.get_values([b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS", b"OTHER"])
        assert values == {b"FCGI_MAX_CONNS": b"3", b"FCGI_MAX_REQS": b"3", b"FCGI_MPXS_CONNS": b"0"}
        assert c.request("/hello").body == b"Hello, World!"


def test_unknown_management_type(worker):
    with worker.client() as c:
        c.send(fcgi.record(42, 0, b"whatever"))
        rtype, rid, content = c.read_record()
        assert (rtype, rid) == (fcgi.UNKNOWN_TYPE, 0)
        assert content[0] == 42


def wait_event(w, wanted, timeout=30.0):
    """Poll the app's events (which reading clears) until `wanted` is among them; needs
    a second worker thread to answer /events."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        seen += events(w)
        if wanted in seen:
            return
        time.sleep(0.02)
    raise AssertionError("no event %r within %ss (saw %r)" % (wanted, timeout, seen))


def test_second_request_while_busy_gets_cant_mpx(spawn):
    worker = spawn(threads=2)
    with worker.client() as c:
        c.begin(req_id=1)
        c.params(base_params("/read", method="POST", query="all-noted"), req_id=1)
        c.stdin(b"first half ", req_id=1)
        wait_event(worker, "read:waiting")  # the app now waits for the rest of the body
        c.begin(req_id=2)
        c.params(base_params("/hello"), req_id=2)
        c.stdin_end(req_id=2)
        r2 = c.read_response(req_id=2)
        assert r2.protocol_status == fcgi.CANT_MPX_CONN
        c.stdin(b"second half", req_id=1)
        c.stdin_end(req_id=1)
        r1 = c.read_response(req_id=1)
        assert r1.code == 200 and r1.protocol_status == 0
        assert r1.body.endswith(b"first half second half")
        assert c.request("/hello").body == b"Hello, World!"


def test_abort_mid_upload_raises_client_disconnected(spawn):
    worker = spawn(threads=2)
    with worker.client() as c:
        c.begin()
        c.params(base_params("/upload_abort", method="POST", query="progress", CONTENT_LENGTH="1000000"))
        c.stdin(b"u" * 5000)
        wait_event(worker, "upload:read:5000")
        c.abort()
        r = c.read_response()
        assert r.app_status != 0
        assert r.stdout == b""
        assert b"Traceback" not in r.stderr  # a disconnect is not an app error
        assert c.request("/hello").body == b"Hello, World!"
    evs = events(worker)
    assert evs == ["upload:ClientDisconnected:True:5000"]


def test_eof_mid_upload_raises_client_disconnected(spawn):
    worker = spawn(threads=2)
    c = worker.client()
    c.begin()
    c.params(base_params("/upload_abort", method="POST", query="progress", CONTENT_LENGTH="1000000"))
    c.stdin(b"u" * 3000)
    wait_event(worker, "upload:read:3000")
    c.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        evs = events(worker)
        if evs:
            break
        time.sleep(0.05)
    assert evs == ["upload:ClientDisconnected:True:3000"]


def test_abort_stops_streaming_response(worker):
    with worker.client() as c:
        c.begin()
        c.params(base_params("/slow_stream"))
        c.stdin_end()
        got = b""
        while got.count(b"tick") < 5:
            rtype, rid, content = c.read_record()
            if rtype == fcgi.STDOUT:
                got += content
        c.abort()
        t0 = time.time()
        while True:
            rtype, rid, content = c.read_record()
            if rtype == fcgi.END_REQUEST:
                break
        assert time.time() - t0 < 5.0  # the whole stream would take 10 s
        assert struct.unpack(">I", content[:4])[0] != 0
        assert c.request("/hello").body == b"Hello, World!"
    assert "closed:slow" in events(worker)


def test_abort_before_params(worker):
    with worker.client() as c:
        c.begin()
        c.abort()
        r = c.read_response()
        assert r.stdout == b""
        assert c.request("/hello").body == b"Hello, World!"


def test_threads_serve_concurrently(spawn):
    w = spawn(threads=4)
    results = []

    def one():
        with w.client() as c:
            results.append(c.request("/barrier", query="4"))

    # each request waits in the app until all four are there: only threads serving at once
    # can answer (no timing involved)
    ts = [threading.Thread(target=one) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert [r.code for r in results] == [200] * 4, [r.stderr for r in results]
    assert len({r.body for r in results}) == 4  # four different worker threads


def test_sys_exit_in_a_view_is_that_requests_500_and_the_worker_serves_on(worker):
    """SystemExit raised by the app is an error of its request like any other (as in the
    ASGI worker): the worker and its other requests go on."""
    with worker.client() as c:
        r = c.request("/exit")
        assert r.code == 500
        assert b"SystemExit: 7" in r.stderr, r.stderr
        assert c.request("/hello").code == 200, "the same connection serves on"
    assert worker.proc.poll() is None, "the worker exited"


def test_sigterm_exits_promptly(spawn):
    worker = spawn(threads=2)
    c = worker.client()
    c.begin()
    c.params(base_params("/nap", query="10"))
    c.stdin_end()
    wait_event(worker, "nap:start")
    t0 = time.time()
    worker.proc.terminate()
    worker.proc.wait(30)
    assert time.time() - t0 < 5.0, "SIGTERM waited for the running request (10 s)"
    c.close()


def test_malformed_input_closes_connection(worker):
    with worker.client() as c:
        c.send(b"\x07" * 64)  # bad version
        assert c.sock.recv(100) == b""
    assert worker.get("/hello").body == b"Hello, World!"


def test_concurrent_mixed_load(spawn):
    import hashlib
    import os
    w = spawn(threads=4)
    errors = []

    def client(k):
        try:
            with w.client() as c:
                for i in range(60):
                    body = os.urandom((i * 7919 + k * 131) % 150000)
                    if i % 3 == 0:
                        r = c.request("/read", method="POST", query="sized4096", body=body, chunk=9000)
                        assert r.body.split(b"\n", 1)[1] == body
                    elif i % 3 == 1:
                        r = c.request("/thread_read", method="POST", body=body, chunk=30000)
                        assert hashlib.sha1(r.body).digest() == hashlib.sha1(body).digest()
                    else:
                        assert c.request("/generator").body.endswith(b"c")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []

"""FastCGI features straight against the bridge's listener with the raw client:
keep-conn, multiplexing, GET_VALUES, ABORT_REQUEST, unknown roles and record types."""
import hashlib
import json
import re
import time
import uuid


import fcgi_client as fc
from harness import wait_until


def params(path, host="edge.test", query="", method="GET", length=None):
    return fc.cgi_params(path, method, query, headers={"Host": host}, content_length=length)


def test_keep_conn_serves_many_requests_on_one_connection(bridge):
    with bridge.fcgi() as conn:
        for i in range(20):
            resp = conn.request("/environ", query=f"i={i}", headers={"Host": "edge.test"}, request_id=1)
            assert resp.protocol_status == fc.REQUEST_COMPLETE and resp.app_status == 0
            assert json.loads(resp.body)["QUERY_STRING"] == f"i={i}"
            conn.responses.clear()


def test_without_keep_conn_the_bridge_closes_after_the_request(bridge):
    with bridge.fcgi() as conn:
        resp = conn.request("/health", headers={"Host": "edge.test"}, keep_conn=False)
        assert resp.body == b"ok"
        assert conn.read_until_closed(timeout=10) == b""


def test_get_values(bridge):
    with bridge.fcgi() as conn:
        values = conn.get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "FCGI_NO_SUCH_VALUE"])
        assert values.get("FCGI_MPXS_CONNS") == "1", values
        assert int(values["FCGI_MAX_CONNS"]) > 0
        assert int(values["FCGI_MAX_REQS"]) > 0
        assert "FCGI_NO_SUCH_VALUE" not in values
        # the connection is still good for requests
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"


def test_unknown_management_type_gets_unknown_type(bridge):
    with bridge.fcgi() as conn:
        conn.send(fc.record(42, 0, b"whatever"))
        rtype, content = conn.wait_management()
        assert rtype == fc.UNKNOWN_TYPE
        assert content[0] == 42
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"


def test_unknown_role_gets_unknown_role(bridge):
    with bridge.fcgi() as conn:
        conn.begin(1, params("/health"), b"", role=9)
        resp = conn.wait(1)
        assert resp.protocol_status == fc.UNKNOWN_ROLE
        assert not resp.stdout
        conn.responses.clear()
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"


def test_multiplexed_requests_run_concurrently(bridge):
    ids = [1, 2, 3, 4, 5]
    with bridge.fcgi() as conn:
        start = time.monotonic()
        # interleave the records of five requests
        begins = [fc.record(fc.BEGIN_REQUEST, i, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN)) for i in ids]
        ps = {i: fc.encode_pairs(params("/sleep", query=f"s=1.5&n={i}")) for i in ids}
        halves = {i: (ps[i][: len(ps[i]) // 2], ps[i][len(ps[i]) // 2:]) for i in ids}
        data = b"".join(begins)
        data += b"".join(fc.record(fc.PARAMS, i, halves[i][0]) for i in ids)
        data += b"".join(fc.record(fc.PARAMS, i, halves[i][1]) for i in reversed(ids))
        data += b"".join(fc.record(fc.PARAMS, i, b"") + fc.record(fc.STDIN, i, b"") for i in ids)
        for i in ids:
            conn.responses[i] = fc.Response(i)
        conn.send(data)
        for i in ids:
            conn.wait(i)
        elapsed = time.monotonic() - start
    for i in ids:
        assert conn.responses[i].status == 200
        assert conn.responses[i].protocol_status == fc.REQUEST_COMPLETE
    assert elapsed < 5.0, f"five 1.5 s requests took {elapsed:.1f} s: not run concurrently"


def test_multiplexed_uploads_with_interleaved_stdin(bridge):
    bodies = {i: (f"body-{i}-".encode() * (5000 * i)) for i in (1, 2, 3)}
    with bridge.fcgi() as conn:
        for i, body in bodies.items():
            conn.begin(i, params("/upload", method="POST", length=len(body)), stdin=None)
        # interleave the STDIN streams record by record
        pieces = {i: [b[k:k + 4096] for k in range(0, len(b), 4096)] for i, b in bodies.items()}
        while any(pieces.values()):
            for i in bodies:
                if pieces[i]:
                    conn.send(fc.record(fc.STDIN, i, pieces[i].pop(0)))
        for i in bodies:
            conn.send(fc.record(fc.STDIN, i, b""))
        for i in bodies:
            conn.wait(i)
    for i, body in bodies.items():
        result = json.loads(conn.responses[i].body)
        assert result["size"] == len(body) and result["sha256"] == hashlib.sha256(body).hexdigest(), i


def test_params_split_across_many_records_and_long_values(bridge):
    """One PARAMS stream cut at arbitrary byte positions (as h2o does), with a value over
    64 KiB (four-byte length) and repeated names (the last value wins: a fastcgi_param
    override; repeated cookies are joined)."""
    long_value = "L" * 70000
    pairs = params("/environ") + [("HTTP_X_LONG", long_value), ("HTTP_X_DUP", "first"), ("HTTP_X_DUP", "last"),
                                  ("HTTP_COOKIE", "a=1"), ("HTTP_COOKIE", "b=2")]
    raw = fc.encode_pairs(pairs)
    with bridge.fcgi() as conn:
        conn.responses[1] = fc.Response(1)
        data = fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN))
        for k in range(0, len(raw), 7777):
            data += fc.record(fc.PARAMS, 1, raw[k:k + 7777])
        data += fc.record(fc.PARAMS, 1, b"") + fc.record(fc.STDIN, 1, b"")
        conn.send(data)
        resp = conn.wait(1)
    env = json.loads(resp.body)
    assert env["HTTP_X_LONG"] == long_value
    assert env["HTTP_X_DUP"] == "last"
    assert env["HTTP_COOKIE"] == "a=1; b=2"


def test_abort_request_ends_it_promptly_and_closes_the_iterable(bridge, log):
    marker = bridge.workdir / f"tick-{uuid.uuid4().hex}"
    with bridge.fcgi() as conn:
        conn.begin(1, params("/tick", query=f"marker={marker}&n=600"), b"")
        wait_until(lambda: conn.pump() and b"tick 1" in conn.responses[1].stdout, 30, 0, what="first ticks")
        start = time.monotonic()
        conn.abort(1)
        resp = conn.wait(1)
        assert time.monotonic() - start < 10
        assert resp.complete
        # the app's iterable was closed (PEP 3333 close()) soon after the abort
        wait_until(lambda: marker.exists() and "closed" in marker.read_text(), 15, what="close() after abort")
        # and the connection serves the next request
        conn.responses.clear()
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"


def test_aborts_do_not_leak_worker_slots(bridge):
    """The `single` pool has one thread in total: every abort must free or replace it."""
    for i in range(5):
        marker = bridge.workdir / f"tick-single-{uuid.uuid4().hex}"
        with bridge.fcgi() as conn:
            conn.begin(1, params("/tick", host="single.test", query=f"marker={marker}&n=600"), b"")
            wait_until(lambda: conn.pump() and b"tick 0" in conn.responses[1].stdout, 30, 0, what="a tick")
            conn.abort(1)
            conn.wait(1)
    start = time.monotonic()
    resp = bridge.request("/health", pool="single")
    assert resp.status == 200 and resp.body == b"ok"
    assert time.monotonic() - start < 10


def test_abort_of_a_queued_request(bridge):
    """Abort a request that is still waiting for the single pool's only thread."""
    tag = "busy-" + uuid.uuid4().hex[:8]
    with bridge.fcgi() as busy, bridge.fcgi() as queued:
        busy.begin(1, params("/sleep", host="single.test", query=f"s=8&tag={tag}"), b"")
        pid_path = bridge.workdir / f"{tag}.pid"
        wait_until(pid_path.exists, 30, what="the first request holding the only thread")
        queued.begin(1, params("/environ", host="single.test", query="queued=1"), b"")
        wait_until(lambda: bridge.pool_status("single")["queue_length"] == 1, 30, what="the second request queued")
        start = time.monotonic()
        queued.abort(1)
        resp = queued.wait(1)
        assert time.monotonic() - start < 4, "an aborted queued request must end without waiting for a worker"
        assert resp.complete
        assert b"queued=1" not in resp.stdout, "the aborted request was served anyway"
        assert busy.wait(1).status == 200
    assert bridge.request("/health", pool="single").status == 200


def test_abort_unknown_request_id_is_harmless(bridge):
    with bridge.fcgi() as conn:
        conn.abort(7)
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"


def test_stdin_after_response_started_and_early_response(bridge):
    """The app may answer before reading the body (here it never reads it): the bridge must
    not deadlock waiting for the rest of stdin, and the connection stays usable."""
    with bridge.fcgi() as conn:
        conn.begin(1, params("/health", method="POST", length=200000), stdin=b"x" * 1000, terminate_stdin=False)
        resp_started = wait_until(lambda: conn.pump() and b"ok" in conn.responses[1].stdout, 30, 0,
                                  what="a response before stdin ended")
        assert resp_started
        conn.send(fc.stream(fc.STDIN, 1, b"y" * 199000))
        resp = conn.wait(1)
        assert resp.status == 200
        conn.responses.clear()
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"


def test_idle_kept_alive_connections_do_not_pin_workers(bridge):
    """The `single` pool has one worker thread; ten kept-alive front connections that each
    served a request and then sit idle must not hold it."""
    conns = [bridge.fcgi() for _ in range(10)]
    try:
        for c in conns:
            assert c.request("/health", headers={"Host": "single.test"}).body == b"ok"
        start = time.monotonic()
        resp = bridge.request("/health", pool="single")
        assert resp.body == b"ok"
        # a pinned thread would make it wait queue-timeout (30 s) for a 503
        assert time.monotonic() - start < 15
        # and the idle connections are still usable
        for c in conns[:3]:
            c.responses.clear()
            assert c.request("/health", headers={"Host": "single.test"}).body == b"ok"
    finally:
        for c in conns:
            c.close()


def test_latin1_param_bytes_reach_the_app_as_latin1_str(bridge):
    with bridge.fcgi() as conn:
        pairs = fc.cgi_params("/environ", headers={"Host": "edge.test"})
        pairs.append(("HTTP_X_LATIN", b"caf\xe9 \xff"))
        conn.begin(1, pairs, b"")
        env = json.loads(conn.wait(1).body)
    assert env["HTTP_X_LATIN"] == "caf\u00e9 \u00ff"


def test_request_id_in_environ_matches_the_access_log(bridge, log):
    resp = bridge.request("/environ", query=f"rid={uuid.uuid4().hex}")
    env = json.loads(resp.body)
    rid = str(env["fcgibridge.request_id"])
    assert rid
    lines = log.wait_for([re.escape(env["QUERY_STRING"])], access=True)
    assert any(re.search(rf'request_id\W+{re.escape(rid)}\b', ln) for ln in lines), (rid, lines)


def test_begin_request_reusing_a_running_id_closes_the_connection(bridge, log):
    """A BEGIN_REQUEST for the id of a request still running on the connection (its
    END_REQUEST not sent yet, so the id is still active): a protocol error like the others.
    The connection closes with a line naming the listener, peer and id; nothing is answered
    for either request (before, both were dropped without a word and the connection stayed)."""
    tag = "reuse-" + uuid.uuid4().hex[:8]
    with bridge.fcgi() as conn:
        conn.begin(1, params("/sleep", query=f"s=3&tag={tag}"), b"")
        wait_until((bridge.workdir / f"{tag}.pid").exists, 30, what="the first request on a worker")
        conn.begin(1, params("/health", query="second=1"), b"")
        assert conn.read_until_closed(timeout=30) == b""
    lines = log.wait_for([r"WARN", r"FastCGI protocol error, closing the connection: request 1: "
                          r"FCGI_BEGIN_REQUEST for a request id that is still active",
                          r"listener=\"?fcgi-tcp", r"peer=\"?127\.0\.0\.1:\d+", r"request=1\b"])
    assert len(lines) == 1, lines
    assert bridge.request("/health").status == 200

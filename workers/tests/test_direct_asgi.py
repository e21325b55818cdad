"""Direct mode of the ASGI worker (FCGIBRIDGE_DIRECT=1; docs/worker-contract.md, "Direct
mode"): its event loop accepts the web server's connections on fd 0 itself, one slot of the
scoreboard per request in flight. As in test_direct.py the worker runs without a bridge: the
test is the web server and the bridge's scoreboard reader. The app is `app` below (this file
is imported by the worker too)."""
import asyncio
import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import BOOT, worker_python
from fcgi import ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, Client, record
from test_direct import (TIMED_OUT, Scoreboard, assert_refused, assert_unrun_requests_close_only_without_keep_conn,
                         nginx_params, read_until_closed, request,
                         send_whole_post, serve_until_closed, serve_until_quiet, split_records, wait_until)
from test_direct import send as send_request

HERE = Path(__file__).resolve().parent
MARKER = "\x1ffcgibridge-log "


async def app(scope, receive, send):
    """Routes by path; the query string is the route's argument."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                print("lifespan shutdown ran", flush=True)
            await send({"type": message["type"] + ".complete"})
    arg = urllib.parse.unquote(scope["query_string"].decode())
    route = scope["path"].rsplit("/", 1)[-1]
    rid = scope["fcgibridge.request_id"]
    status, body = 200, b"ok"
    if route == "scope":
        plain = {k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in scope.items()
                 if isinstance(v, (str, bytes, bool)) or v is None}
        body = json.dumps(plain).encode()
    elif route == "sleep":
        await asyncio.sleep(float(arg))
    elif route == "hold":
        while not os.path.exists(arg):
            await asyncio.sleep(0.01)
        body = b"released"
    elif route == "turn":
        print("turn %s" % os.path.basename(arg), flush=True)
        while not os.path.exists(arg):
            await asyncio.sleep(0.01)
    elif route == "block":  # the whole loop, as a synchronous call in an async view
        while not os.path.exists(arg):
            time.sleep(0.01)
        body = b"released"
    elif route == "status":
        status = int(arg)
    elif route == "raise":
        raise RuntimeError("direct asgi app failed")
    elif route == "stuck":
        if arg == "streaming":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"begun", "more_body": True})
        try:
            await asyncio.sleep(3600)
        finally:
            print("cancelled %s" % rid, flush=True)
    elif route == "raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"partial-", "more_body": True})
        raise RuntimeError("direct asgi app failed after the head")
    elif route == "read-length":
        body, more = b"", True
        print("reading %s" % rid, flush=True)
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                print("disconnected %s" % rid, flush=True)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        body = b"read %d bytes" % len(body)
    elif route in ("short-length", "long-length"):  # a Content-Length the body does not keep
        length, body = (b"10", b"abc") if route == "short-length" else (b"3", b"abcdef")
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", length)]})
        for _ in range(int(arg or 1)):  # the body sent `arg` times
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    elif route == "bodiless":  # no body of its own (a status, HEAD, a file hand-off): its Content-Length is no promise
        status = 200 if arg in ("", "handoff") else int(arg)
        headers = [(b"content-length", b"10")] + ([(b"x-accel-redirect", b"/files/a")] if arg == "handoff" else [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    elif route == "wait-disconnect":
        print("waiting %s" % rid, flush=True)
        while (await receive())["type"] != "http.disconnect":
            pass
        print("disconnected %s" % rid, flush=True)
        return
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["asyncio", "uvloop"])
def direct(request, spawn):
    """Start a direct ASGI worker (on each event loop): (worker, scoreboard)."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    boards = []

    def _start(concurrency=4, env=None):
        board = Scoreboard(concurrency)
        boards.append(board)
        full_env = {"FCGIBRIDGE_DIRECT": "1", "FCGIBRIDGE_SCOREBOARD_FD": str(board.fd), "FCGIBRIDGE_PDEATHSIG": "0",
                    "FCGIBRIDGE_INTERFACE": "asgi", "FCGIBRIDGE_CONCURRENCY": str(concurrency),
                    "FCGIBRIDGE_ASGI_LOOP": request.param}
        full_env.update(env or {})
        w = spawn(app="test_direct_asgi:app", env=full_env, pass_fds=(board.fd,), cwd=HERE, wait_ready=False)
        assert w.ready_line == "READY asgi\n", w.stderr
        wait_until(lambda: board.threads() == concurrency, "a slot per request in flight")
        return w, board

    yield _start
    for board in boards:
        board.close()


def timeouts(board):
    return struct.unpack_from("=I", board.map, 12)[0]


def running(board):
    """The lines of the requests the scoreboard shows running."""
    return sorted(board.slot(i)[2] for i in range(board.threads()) if board.slot(i)[2] is not None)


def log_records(w):
    """The worker's marked log lines (asgi.log_line) as dicts."""
    return [json.loads(line[len(MARKER):]) for line in w.stderr.splitlines() if line.startswith(MARKER)]


def closed(c):
    """Whether the worker has closed the connection (a write to it fails)."""
    try:
        c.sock.send(record(STDIN, 9, b"x"))
    except (BrokenPipeError, ConnectionResetError):
        return True
    return False


def test_a_kept_connection_serves_request_after_request_and_another_closes_after_its_one(direct):
    w, board = direct()
    with w.client() as c:
        for i in range(3):
            r = request(c, "/scope?%d" % i)
            assert (r.code, r.protocol_status) == (200, 0)
            assert json.loads(r.body)["query_string"] == str(i)
    with w.client() as c:
        r = request(c, "/scope", keep_conn=False)
        assert r.code == 200
        assert c.sock.recv(1) == b"", "closed after END_REQUEST"
    wait_until(lambda: board.served() == 4, "four requests served")
    assert board.responses()["2xx"] == 4


def test_the_scope_has_the_mount_and_the_workers_request_id_not_the_web_servers_params(direct):
    w, _ = direct(env={"FCGIBRIDGE_MOUNT": "/app"})
    with w.client() as c:
        r = request(c, "/app/scope?a=1", FCGIBRIDGE_FILE_ROOTS="/", FCGIBRIDGE_REQUEST_ID="from-the-web",
                    FCGIBRIDGE_READY_CHECK="1")
        scope = json.loads(r.body)
        assert (scope["root_path"], scope["path"], scope["query_string"]) == ("/app", "/app/scope", "a=1")
        assert scope["fcgibridge.request_id"] == "%d-1" % w.proc.pid
        assert "fcgibridge.ready_check" not in scope
        # A path outside the mount point: no root_path, as the bridge does.
        scope = json.loads(request(c, "/scope").body)
        assert (scope["root_path"], scope["path"]) == ("", "/scope")
        assert scope["fcgibridge.request_id"] == "%d-2" % w.proc.pid


def test_the_scoreboard_shows_each_request_in_flight_and_counts_by_class(direct, tmp_path):
    w, board = direct(concurrency=4)
    assert board.accepting() == 1
    gates = [tmp_path / "a", tmp_path / "b"]
    clients = [w.client(timeout=60) for _ in gates]
    try:
        for c, gate in zip(clients, gates):
            send_request(c, "/hold?%s" % gate)
        # Each led by the worker's own id for it (<pid>-<n>), which its log lines carry.
        ids = {b"%d-%d" % (w.proc.pid, n) for n in (1, 2)}
        lines = sorted(b"GET /hold?%s" % str(g).encode() for g in gates)
        split = lambda: [line.split(b" ", 1) for line in running(board)]  # noqa: E731
        wait_until(lambda: sorted(rest for _, rest in split()) == lines, "both requests on the scoreboard")
        assert {rid for rid, _ in split()} == ids, running(board)
        for c, gate in zip(clients, gates):
            gate.touch()
            assert c.read_response().body == b"released"
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: running(board) == [] and board.served() == 2, "both served, none running")
    with w.client() as c:
        assert request(c, "/status?404").code == 404
        assert request(c, "/raise").code == 500
        assert request(c, "/status?302", method="HEAD").code == 302
    assert board.responses() == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1}
    wait_until(lambda: board.served() == 5, "five served")  # counted once its END_REQUEST is written


def test_one_process_serves_twenty_waiting_requests_at_once(direct):
    w, board = direct(concurrency=20)
    clients = [w.client(timeout=60) for _ in range(20)]
    try:
        started = time.monotonic()
        for c in clients:
            send_request(c, "/sleep?0.5")
        assert [c.read_response().code for c in clients] == [200] * 20
        took = time.monotonic() - started
    finally:
        for c in clients:
            c.close()
    assert took < 4, "20 requests of 0.5 s took %.1fs (serially 10 s)" % took
    wait_until(lambda: board.served() == 20, "twenty served")


def test_a_connection_without_a_complete_request_is_closed_after_the_header_timeout(direct):
    w, board = direct(env={"FCGIBRIDGE_HEADER_TIMEOUT": "0.5"})
    with w.client(timeout=30) as silent, w.client(timeout=30) as partial:
        partial.begin(keep_conn=True)
        partial.send(record(PARAMS, 1, b"\x0e\x03REQUEST_METHODGET"))  # PARAMS, never their end
        # Opened only now: its own header timeout runs from its accept.
        with w.client(timeout=30) as kept:
            assert request(kept, "/scope").code == 200
            for c in (silent, partial, kept):
                assert c.sock.recv(1) == b""
    wait_until(lambda: TIMED_OUT % "0.5" in w.stderr, "the header-timeout line")
    assert w.stderr.count(TIMED_OUT % "0.5") == 1, "rate-limited"
    assert w.proc.poll() is None
    # A request that runs longer than the header timeout is not cut.
    with w.client(timeout=30) as c:
        assert request(c, "/sleep?1").code == 200


def test_an_answer_before_the_input_end_lets_the_web_server_send_it(direct):
    # Apache's mod_proxy_fcgi: BEGIN (no FCGI_KEEP_CONN) and PARAMS in one write, the STDIN
    # apart; here a body the app never reads, more than the socket buffers hold.
    w, _ = direct()
    with w.client(timeout=30) as c:
        c.begin(keep_conn=False)
        c.params(nginx_params("/scope", method="POST", CONTENT_LENGTH=str(1 << 20)))
        assert c.read_response().code == 200
        assert c.sock.recv(1) == b"", "the worker's side is shut down after the response"
        c.stdin(b"x" * (1 << 20))  # BrokenPipeError if the worker had closed the connection
        c.stdin_end()
        wait_until(lambda: closed(c), "the connection closed once the input ended")
    # nginx sends it all at once: nothing to wait for.
    with w.client(timeout=30) as c:
        assert request(c, "/scope", keep_conn=False).code == 200
        assert c.sock.recv(1) == b""
    assert w.proc.poll() is None


def test_request_timeout_answers_504_cancels_the_task_and_the_worker_serves_on(direct):
    w, board = direct(env={"FCGIBRIDGE_REQUEST_TIMEOUT": "1"})
    pid = w.proc.pid
    with w.client(timeout=60) as stuck, w.client(timeout=60) as streaming, w.client(timeout=60) as other:
        send_request(stuck, "/stuck")
        wait_until(lambda: len(running(board)) == 1, "the first on the scoreboard")  # ids in this order
        send_request(streaming, "/stuck?streaming")
        assert request(other, "/sleep?0.1").code == 200, "served meanwhile"
        r = stuck.read_response()
        assert (r.code, r.headers["content-type"], r.body) == (504, "text/plain; charset=utf-8", b"504 Gateway Timeout\n")
        # Its response had begun: it is cut off (no END_REQUEST).
        with pytest.raises(EOFError):
            streaming.read_response()
        assert request(other, "/scope").code == 200
        assert request(stuck, "/scope").code == 200, "the kept connection serves on"
    wait_until(lambda: "cancelled %d-1" % pid in w.stdout and "cancelled %d-2" % pid in w.stdout, "tasks cancelled")
    assert timeouts(board) == 2
    assert board.responses()["5xx"] == 1
    lines = {r["request_id"]: r["msg"] for r in log_records(w) if r["msg"].startswith("request-timeout")}
    assert lines["%d-1" % pid].startswith("request-timeout (1s): GET /stuck ran 1.")
    assert lines["%d-1" % pid].endswith(": answering 504, cancelling its task; its coroutine stack follows")
    assert lines["%d-2" % pid].endswith(": cutting its response off, cancelling its task; its coroutine stack follows")
    wait_until(lambda: "[stack request_id=%d-1 task=" % pid in w.stderr, "the coroutine stack")
    assert re.search(r"\[stack request_id=%d-1 task=\d+\] coroutine stack of GET /stuck, most recent" % pid, w.stderr)
    assert any("test_direct_asgi.py" in line for line in w.stderr.splitlines()
               if line.startswith("[stack request_id=%d-1 " % pid))
    assert w.proc.poll() is None


def test_a_retiring_worker_serves_its_kept_connections_until_each_is_quiet_for_a_second(direct, tmp_path):
    w, board = direct(env={"FCGIBRIDGE_HEADER_TIMEOUT": "300"})  # not what closes them
    gate = tmp_path / "release"
    with w.client(timeout=30) as idle, w.client(timeout=60) as busy:
        assert request(idle, "/scope").code == 200
        send_request(busy, "/hold?%s" % gate)
        wait_until(lambda: running(board), "the held request on the scoreboard")
        board.drain()
        wait_until(lambda: board.accepting() == 0, "accepting 0")
        assert w.proc.poll() is None, "a request still runs"
        gate.touch()
        r = busy.read_response()
        assert (r.code, r.body) == (200, b"released")
        # Not closed after its response: nginx writes its next request to it at once.
        quiet, n = serve_until_quiet(busy, "/scope", 3)
        assert quiet >= 0.5, "closed %.2fs after its last response, not once quiet for a second" % quiet
        assert idle.sock.recv(1) == b"", "the idle kept connection is closed too"
    assert w.proc.wait(30) == 0
    assert "lifespan shutdown ran" in w.stdout
    assert board.served() == 2 + n


def test_a_retiring_worker_closes_a_kept_connection_never_quiet_after_a_response(direct):
    # Steady traffic: the connection is closed after a response 5 s into the retirement
    # rather than the worker being killed at graceful-timeout.
    w, board = direct()
    with w.client(timeout=60) as c:
        assert request(c, "/scope").code == 200
        board.drain()
        took = serve_until_closed(c, "/scope")
        assert took >= 3, "closed after %.1fs of requests: not from a second's quiet" % took
    assert w.proc.wait(30) == 0
    assert "lifespan shutdown ran" in w.stdout


def test_a_stopping_bridge_has_the_queued_connections_served_first(direct, tmp_path):
    # A request blocks the loop: the next connection waits in the socket's queue, unaccepted,
    # when the bridge stops (drain word 2).
    w, board = direct()
    gate = tmp_path / "release"
    with w.client(timeout=60) as busy:
        send_request(busy, "/block?%s" % gate)
        wait_until(lambda: running(board), "the blocking request on the scoreboard")
        queued = w.client(timeout=60)
        send_request(queued, "/scope", keep_conn=False)
        struct.pack_into("=I", board.map, 0, 2)
        gate.touch()
        assert busy.read_response().body == b"released"
        assert queued.read_response().code == 200
        assert queued.sock.recv(1) == b"", "closed after its request (no FCGI_KEEP_CONN)"
        queued.close()
        wait_until(lambda: board.accepting() == 0, "accepting 0")
        assert busy.sock.recv(1) == b"", "the kept one closed once quiet"
    assert w.proc.wait(30) == 0


def backlog(w):
    """Connections waiting in the listening socket's queue, not accepted yet (its Recv-Q)."""
    return int(os.popen("ss -xlH src %s" % w.sock_path).read().split()[2])


def turns(w):
    return [line.split()[1] for line in w.stdout.splitlines() if line.startswith("turn ")]


def test_requests_past_concurrency_wait_their_turn_and_new_connections_are_still_accepted(direct, tmp_path):
    # nginx's kept connections: four each send a request to a worker of concurrency 2.
    w, board = direct(concurrency=2)
    gates = [tmp_path / ("held%d" % i) for i in range(4)]
    kept = [w.client(timeout=60) for _ in gates]
    try:
        for c in kept:
            assert request(c, "/scope").code == 200
        for i, (c, gate) in enumerate(zip(kept, gates)):
            send_request(c, "/turn?%s" % gate)
            if i < 2:
                wait_until(lambda: len(turns(w)) == i + 1, "held%d running" % i)
        # Two run, two wait; a new connection is accepted meanwhile, its request after them.
        with w.client(timeout=60) as new:
            (tmp_path / "new").touch()
            send_request(new, "/turn?%s" % (tmp_path / "new"))
            wait_until(lambda: backlog(w) == 0, "the new connection accepted")
            gates[0].touch()
            assert kept[0].read_response().code == 200
            wait_until(lambda: len(turns(w)) == 3, "a waiting one started")
            assert turns(w)[:2] == ["held0", "held1"] and turns(w)[2] in ("held2", "held3"), "two at a time"
            gates[1].touch()
            assert kept[1].read_response().code == 200
            wait_until(lambda: len(turns(w)) == 4, "the other waiting one started")
            assert sorted(turns(w)[2:]) == ["held2", "held3"], "the new connection's request comes after them"
            gates[2].touch()
            assert kept[2].read_response().code == 200
            assert new.read_response().code == 200, "the new connection's request answered in its turn"
            assert turns(w)[4:] == ["new"]
        gates[3].touch()
        assert kept[3].read_response().code == 200
    finally:
        for c in kept:
            c.close()
    wait_until(lambda: board.served() == 9, "nine served")


def test_an_app_error_goes_to_the_workers_stderr_not_to_the_web_server(direct):
    w, _ = direct()
    with w.client() as c:
        r = request(c, "/raise")
        assert (r.code, r.stderr) == (500, b""), "no FCGI_STDERR: the web server's log is not the bridge's"
        assert r.body == b"500 Internal Server Error\n"
    rid = "%d-1" % w.proc.pid
    wait_until(lambda: any(rec["request_id"] == rid for rec in log_records(w)), "the traceback's line")
    (rec,) = [rec for rec in log_records(w) if rec["request_id"] == rid]
    assert rec["level"] == "ERROR"
    assert rec["msg"].startswith("[GET /raise] Traceback (most recent call last):"), "the request line leads"
    assert rec["msg"].endswith("RuntimeError: direct asgi app failed")


@pytest.mark.parametrize("uri, sent", [("/raise-after", b"partial-"), ("/short-length", b"abc")])
@pytest.mark.parametrize("keep_conn", [True, False], ids=["kept", "not-kept"])
def test_a_response_cut_off_after_its_head_never_ends_like_a_complete_one(direct, uri, sent, keep_conn):
    """As the WSGI worker's: no END_REQUEST, the connection closed, an invalid record before
    the close where EOF alone would be the normal end (a unix socket, not kept). A body
    shorter than its Content-Length is such a response, as through the bridge."""
    w, _ = direct()
    with w.client() as c:
        send_request(c, uri, keep_conn=keep_conn)
        records, rest = split_records(read_until_closed(c))
    assert sent in b"".join(content for rtype, content in records if rtype == STDOUT)
    assert END_REQUEST not in [rtype for rtype, _ in records], "ended like a complete response"
    assert rest == (b"" if keep_conn else bytes([0, 6, 0, 0, 0, 0, 0, 0])), rest
    wait_until(lambda: any("the response was cut off after its head" in rec["msg"] for rec in log_records(w)),
               "the cut-off in the log")
    if uri == "/short-length":
        assert re.search(r"\[request_id=\d+-1 GET /short-length\] fcgibridge worker: the application failed: "
                         r"the response is shorter than its Content-Length \(3 of 10 bytes\)", w.stderr), w.stderr
    with w.client() as c:
        assert request(c, "/scope").code == 200, "the worker serves on"


def test_body_past_the_content_length_is_dropped_and_logged_once(direct):
    w, _ = direct()
    with w.client() as c:
        r = request(c, "/long-length?5")
        assert (r.code, r.body, r.protocol_status) == (200, b"abc", 0), r.stdout
        assert request(c, "/scope").code == 200, "the connection serves on"
    said = "the application failed: the app wrote more body than its Content-Length (3); 3 bytes past it were dropped"
    wait_until(lambda: said in w.stderr, "the failure on stderr")
    assert w.stderr.count("more body than its Content-Length") == 1, w.stderr


@pytest.mark.parametrize("uri, method", [("/bodiless?204", "GET"), ("/bodiless?304", "GET"),
                                         ("/bodiless", "HEAD"), ("/bodiless?handoff", "GET")])
def test_a_response_without_a_body_is_not_short_of_its_content_length(direct, uri, method):
    w, _ = direct()
    with w.client() as c:
        r = request(c, uri, method=method)
        assert (r.body, r.protocol_status) == (b"", 0), r.stdout
        assert request(c, "/scope").code == 200, "the connection serves on"
    assert "Content-Length" not in w.stderr, w.stderr


@pytest.mark.parametrize("length, body", [("10", b"abc"), ("abc", b""), ("-5", b""), ("+3", b"abc")])
def test_a_body_shorter_than_its_content_length_or_a_bad_length_is_a_400(direct, length, body):
    """As the bridge answers (and the WSGI worker): 400 without running the app."""
    w, _ = direct()
    with w.client() as c:
        assert_refused(c, length, body, then="/scope")
    wait_until(lambda: any("answering 400 without running the app" in rec["msg"] for rec in log_records(w)),
               "the refusal in the log")
    assert "reading" not in w.stdout, "the app ran"


def test_a_request_refused_at_its_params_lets_the_web_server_send_the_rest_of_it(direct):
    """Refused before its body came, on a connection the web server does not keep: the
    worker reads the rest of the input before it closes (a close at once would fail the
    web server's write, a 502 rather than the 400)."""
    w, _ = direct()
    with w.client(timeout=30) as c:
        c.begin(keep_conn=False)
        c.params(nginx_params("/read-length", method="POST", CONTENT_LENGTH="1O"))
        r = c.read_response()
        assert (r.code, r.body) == (400, b"400 Bad Request\n"), r.stdout
        c.stdin(b"x" * (1 << 20))  # BrokenPipeError if the worker had closed the connection
        c.stdin_end()
        wait_until(lambda: closed(c), "the connection closed once the input ended")
    assert "reading" not in w.stdout, "the app ran"


def test_a_declared_body_absent_altogether_reaches_the_app(direct):
    """nginx keeps the client's CONTENT_LENGTH on requests it sends without their body (an
    error_page redirect, auth_request): no short body, the app answers."""
    w, _ = direct()
    with w.client() as c:
        send_whole_post(c, "10", b"")
        r = c.read_response()
        assert (r.code, r.body) == (200, b"read 0 bytes"), r.stdout
    assert "answering 400" not in w.stderr


def test_body_past_the_content_length_never_reaches_the_app(direct):
    """As the WSGI worker does, and as the scope's content-length says."""
    w, _ = direct()
    with w.client() as c:
        send_whole_post(c, "3", b"abcdef")
        r = c.read_response()
        assert (r.code, r.body) == (200, b"read 3 bytes"), r.stdout


@pytest.mark.parametrize("how", ["aborted", "unknown role"])
def test_a_request_ended_before_the_app_ran_closes_a_connection_without_keep_conn(direct, how):
    w, _ = direct(env={"FCGIBRIDGE_HEADER_TIMEOUT": "600"})
    assert_unrun_requests_close_only_without_keep_conn(w, how)


def test_a_body_that_ends_short_while_the_app_reads_it_is_http_disconnect(direct):
    """The app is reading when the web server ends the body early: it is told the client
    went away, and the web server gets 400, as from the bridge."""
    w, _ = direct()
    with w.client() as c:
        c.begin()
        c.params(nginx_params("/read-length", method="POST", CONTENT_LENGTH="10"))
        wait_until(lambda: "reading %d-1" % w.proc.pid in w.stdout, "the app reading")
        c.stdin(b"abc")
        c.stdin_end()
        r = c.read_response()
        assert (r.code, r.body) == (400, b"400 Bad Request\n"), r.stdout
        wait_until(lambda: "disconnected %d-1" % w.proc.pid in w.stdout, "http.disconnect")
        assert request(c, "/scope").code == 200, "the kept connection serves on"
    assert any("the request body ended before its CONTENT_LENGTH (3 of 10 bytes)" in rec["msg"]
               for rec in log_records(w))


def test_an_abort_or_a_closed_connection_is_http_disconnect_for_the_app(direct):
    w, _ = direct()
    pid = w.proc.pid
    with w.client(timeout=30) as c:
        send_request(c, "/wait-disconnect")
        wait_until(lambda: "waiting %d-1" % pid in w.stdout, "the app waiting")
        c.send(record(ABORT_REQUEST, 1))
        assert c.read_response().protocol_status == 0
        wait_until(lambda: "disconnected %d-1" % pid in w.stdout, "http.disconnect")
        assert request(c, "/scope").code == 200, "the connection serves on"
    # The web server closes the connection when its client leaves: no request-timeout suspect.
    c = w.client(timeout=30)
    send_request(c, "/wait-disconnect")
    wait_until(lambda: "waiting %d-3" % pid in w.stdout, "the app waiting")
    c.close()
    wait_until(lambda: "disconnected %d-3" % pid in w.stdout, "http.disconnect")
    assert "request-timeout?" not in w.stderr and "[stack " not in w.stderr
    assert w.proc.poll() is None


def test_the_listening_sockets_backlog_is_left_alone(direct):
    # asyncio's servers call listen() again, which would replace the operator's backlog.
    w, _ = direct(concurrency=200)
    with w.client() as c:
        assert request(c, "/scope").code == 200
    out = os.popen("ss -xlH src %s" % w.sock_path).read().split()
    assert out[3:4] == ["64"], out  # start_worker's listen(64); a listener's Send-Q is its backlog


def read_line(fd, timeout=60):
    line = b""
    while not line.endswith(b"\n") and select.select([fd], [], [], timeout)[0]:
        more = os.read(fd, 4096)
        if not more:
            break
        line += more
    return line


def test_a_preloaded_templates_forks_give_request_ids_of_their_own(runtime_dir, tmp_path):
    # preload: true: the template reads the settings (its pid too) before it forks workers.
    board = Scoreboard(2)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "w.sock"))
    listener.listen(64)
    ctl, template_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ready_r, ready_w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(FCGIBRIDGE_APP="test_direct_asgi:app", FCGIBRIDGE_TEMPLATE="1", FCGIBRIDGE_READY_FD="3",
               FCGIBRIDGE_DIRECT="1", FCGIBRIDGE_PDEATHSIG="0", FCGIBRIDGE_INTERFACE="asgi",
               FCGIBRIDGE_CONCURRENCY="2", FCGIBRIDGE_ASGI_LOOP="asyncio", FCGIBRIDGE_POOL="test")

    def onto_3_and_4():
        """The template's readiness pipe on fd 3, its control socket on fd 4."""
        ready, control = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (ready_w, template_ctl.fileno()))
        os.dup2(ready, 3)
        os.dup2(control, 4)

    with open(tmp_path / "out", "ab") as out, open(tmp_path / "err", "ab") as err:
        template = subprocess.Popen([worker_python(), "-u", "-c", BOOT, str(runtime_dir / "python")],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(3, 4),
                                    preexec_fn=onto_3_and_4, cwd=HERE, env=env)
        os.close(ready_w)
        template_ctl.close()
        fork = None
        try:
            assert read_line(ready_r) == b"READY\n", (tmp_path / "err").read_text()
            fork_r, fork_w = os.pipe()
            socket.send_fds(ctl, [b"SPAWN"], [listener.fileno(), out.fileno(), err.fileno(), fork_w, board.fd])
            os.close(fork_w)
            reply = ctl.recv(64)
            assert reply.startswith(b"PID "), reply
            fork = int(reply.split()[1])
            assert read_line(fork_r) == b"READY asgi\n", (tmp_path / "err").read_text()
            wait_until(lambda: board.threads() == 2, "the fork's slots")
            with Client(str(tmp_path / "w.sock")) as c:
                scope = json.loads(request(c, "/scope").body)
            assert scope["fcgibridge.request_id"] == "%d-1" % fork, "not the template's pid %d" % template.pid
        finally:
            if fork is not None:
                os.kill(fork, signal.SIGTERM)
            ctl.close()  # the template reaps its forks and exits after the last
            assert template.wait(30) == 0
            board.close()

"""Direct mode (FCGIBRIDGE_DIRECT=1): the worker accepts the web server's connections on
fd 0 itself, keeps a scoreboard for the bridge and retires when its drain word is set
(docs/worker-contract.md, "Direct mode"). The worker runs here without a bridge: the test
is the web server and the bridge's scoreboard reader."""
import json
import mmap
import os
import select
import struct
import time

import pytest

from fcgi import END_REQUEST, FILTER, PARAMS, REQUEST_COMPLETE, STDOUT, UNKNOWN_ROLE, record

HEADER, SLOT, DURATIONS = 64, 256, 128
TIMED_OUT = "fcgibridge worker: closed a connection that sent no complete request within header-timeout (%ss)"


class Scoreboard:
    """The memfd the bridge would give the worker, read and written as the bridge does."""

    def __init__(self, threads):
        size = -(-(HEADER + threads * SLOT + DURATIONS) // 4096) * 4096
        self.fd = os.memfd_create("scoreboard", 0)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)

    def drain(self):
        struct.pack_into("=I", self.map, 0, 1)

    def threads(self):
        return struct.unpack_from("=I", self.map, 4)[0]

    def accepting(self):
        return struct.unpack_from("=I", self.map, 8)[0]

    def responses(self):
        """Responses sent by status class: {"1xx": n, ..., "5xx": n}."""
        return dict(zip(("1xx", "2xx", "3xx", "4xx", "5xx"), struct.unpack_from("=5Q", self.map, 16)))

    def moved(self):
        """Kept connections the worker moved to the relay for the pool's balance."""
        return struct.unpack_from("=Q", self.map, 56)[0]

    def slot(self, i):
        """(served, started, the running request's line or None)."""
        base = HEADER + i * SLOT
        served, started, length = struct.unpack_from("=QQI", self.map, base)
        line = bytes(self.map[base + 24:base + 24 + length])
        again = struct.unpack_from("=Q", self.map, base + 8)[0]
        return served, started, (line if started and started == again else None)

    def served(self):
        return sum(self.slot(i)[0] for i in range(self.threads()))

    def durations(self):
        """(requests timed per bucket, +Inf last; their sum in ns): the mapping's last 128 bytes."""
        *counts, total = struct.unpack_from("=16Q", self.map, len(self.map) - DURATIONS)
        return counts, total

    def close(self):
        self.map.close()
        os.close(self.fd)


def wait_until(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)


def nginx_params(uri, method="GET", **extra):
    """nginx's stock fastcgi_params: the path in SCRIPT_NAME and DOCUMENT_URI, no PATH_INFO."""
    path, _, query = uri.partition("?")
    params = {
        "QUERY_STRING": query, "REQUEST_METHOD": method, "CONTENT_TYPE": "", "CONTENT_LENGTH": "",
        "SCRIPT_NAME": path, "REQUEST_URI": uri, "DOCUMENT_URI": path, "DOCUMENT_ROOT": "/srv/www",
        "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_SCHEME": "http", "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "nginx", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
        "SERVER_ADDR": "127.0.0.1", "SERVER_PORT": "80", "SERVER_NAME": "localhost",
    }
    params.update(extra)
    return params


def send(c, uri, keep_conn=True, **extra):
    """The whole request in one write, as nginx sends it: a worker that answers and closes
    at once (a cut-off response) has read all of it, so the close is not a reset."""
    c.corked = b""
    c.begin(keep_conn=keep_conn)
    c.params(nginx_params(uri, **extra))
    c.stdin_end()
    data, c.corked = c.corked, None
    c.send(data)


def send_whole_post(c, length, body, uri="/read-length"):
    """A POST with CONTENT_LENGTH `length` and body `body`, in one write, as nginx sends a
    small one (the worker has all of it before it runs the app)."""
    c.corked = b""
    c.begin()
    c.params(nginx_params(uri, method="POST", CONTENT_LENGTH=length))
    if body:
        c.stdin(body)
    c.stdin_end()
    data, c.corked = c.corked, None
    c.sock.sendall(data)


def assert_refused(c, length, body, then):
    """The POST is answered 400, and the kept connection then serves `then`."""
    send_whole_post(c, length, body)
    r = c.read_response()
    assert (r.code, r.body) == (400, b"400 Bad Request\n"), r.stdout
    assert request(c, then).code == 200, "the kept connection serves on"


def request(c, uri, **extra):
    send(c, uri, **extra)
    return c.read_response()


def serve_until_quiet(c, uri, seconds):
    """Send request after request on `c` for `seconds` (as nginx reusing the connection it
    got a response on last); then how long the worker took to close it once quiet, and how
    many were served."""
    n, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        r = request(c, uri)
        assert (r.code, r.protocol_status) == (200, 0), "served while the worker retires"
        n += 1
    quiet_from = time.monotonic()
    assert c.sock.recv(1) == b"", "closed once quiet"
    return time.monotonic() - quiet_from, n


def serve_until_closed(c, uri, timeout=30):
    """Send a request 0.2 s after each response (never a second's quiet) until the worker
    closes the connection after one; then how long that took."""
    started = time.monotonic()
    while True:
        assert time.monotonic() - started < timeout, "still open after %ss of requests" % timeout
        try:
            r = request(c, uri)
        except (BrokenPipeError, ConnectionResetError):
            # Closed after the last whole response, later than the look below (a loaded
            # machine): as good.
            return time.monotonic() - started
        assert (r.code, r.protocol_status) == (200, 0)
        if select.select([c.sock], [], [], 0.2)[0]:
            assert c.sock.recv(1) == b"", "closed after a whole response"
            return time.monotonic() - started


@pytest.fixture
def direct(spawn):
    """Start a direct worker: (worker, scoreboard)."""
    boards = []

    def _start(threads=1, env=None):
        board = Scoreboard(threads)
        boards.append(board)
        full_env = {"FCGIBRIDGE_DIRECT": "1", "FCGIBRIDGE_SCOREBOARD_FD": str(board.fd),
                    "FCGIBRIDGE_PDEATHSIG": "0"}
        full_env.update(env or {})
        w = spawn(app="direct_app:application", threads=threads, env=full_env, pass_fds=(board.fd,))
        wait_until(lambda: board.threads() == threads, "every thread's scoreboard slot")
        return w, board

    yield _start
    for board in boards:
        board.close()


def test_stock_nginx_params_get_the_bridges_path_split(direct):
    w, board = direct()
    with w.client() as c:
        r = request(c, "/environ?a=1", FCGIBRIDGE_FILE_ROOTS="/", FCGIBRIDGE_REQUEST_ID="from-the-web")
        env = json.loads(r.body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("", "/environ", "a=1")
        # The web server cannot give the worker the bridge's instructions.
        assert not [k for k in env if k.startswith("FCGIBRIDGE_")], env
        assert env["fcgibridge.request_id"] == "%d-1" % w.proc.pid
        assert r.stderr == b""
        r = request(c, "/a%20b/../environ")
        env = json.loads(r.body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/environ")
        assert env["fcgibridge.request_id"] == "%d-2" % w.proc.pid
    wait_until(lambda: board.slot(0)[:2] == (2, 0), "two requests served, the thread idle")


def test_a_mount_splits_script_name_and_path_info(direct):
    w, _ = direct(env={"FCGIBRIDGE_MOUNT": "/app"})
    with w.client() as c:
        env = json.loads(request(c, "/app/environ").body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/environ")
        # A path outside the mount point: the whole path is PATH_INFO, as the bridge does.
        env = json.loads(request(c, "/environ").body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/environ")


def test_keep_path_info_leaves_the_web_servers_split(direct):
    w, _ = direct(env={"FCGIBRIDGE_MOUNT": "/app", "FCGIBRIDGE_KEEP_PATH_INFO": "1"})
    with w.client() as c:
        env = json.loads(request(c, "/app/environ", SCRIPT_NAME="/app/environ", PATH_INFO="/environ").body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app/environ", "/environ")


def test_an_idle_worker_exits_0_when_drained(direct):
    w, board = direct(threads=2)
    wait_until(lambda: board.accepting() == 2, "both threads accepting")
    with w.client() as c:
        assert request(c, "/environ").code == 200
    board.drain()
    assert w.proc.wait(30) == 0
    assert board.accepting() == 0, "no thread takes a connection any more"
    assert "direct_app: atexit ran" in w.stdout


def test_a_drain_closes_an_idle_kept_connection(direct):
    # The header timeout (60 s by default) does not delay the drain's one-second look.
    w, board = direct()
    with w.client(timeout=60) as c:
        assert request(c, "/environ").code == 200
        board.drain()
        assert c.sock.recv(1) == b"", "the idle kept connection is closed"
    assert w.proc.wait(30) == 0


def test_a_busy_worker_finishes_its_request_then_exits(direct, tmp_path):
    w, board = direct(threads=2)
    gate = tmp_path / "release"
    uri = "/hold?%s" % gate
    tasks = "/proc/%d/task" % w.proc.pid
    with w.client(timeout=60) as c:
        send(c, uri, keep_conn=True)
        running = lambda: [board.slot(i) for i in range(2) if board.slot(i)[2] is not None]  # noqa: E731
        wait_until(lambda: running(), "the held request on the scoreboard")
        (served, started, line), = running()
        # Led by the worker's own id for the request, which its log lines carry.
        assert (served, line) == (0, b"%d-1 GET %s" % (w.proc.pid, uri.encode()))
        assert abs(time.clock_gettime_ns(time.CLOCK_MONOTONIC) - started) < 60e9, "CLOCK_MONOTONIC"
        threads_before = len(os.listdir(tasks))
        board.drain()
        # The idle thread stops accepting; the busy one keeps the process alive.
        wait_until(lambda: len(os.listdir(tasks)) == threads_before - 1, "the idle thread to stop")
        assert w.proc.poll() is None
        gate.touch()
        r = c.read_response()
        assert (r.code, r.body, r.protocol_status) == (200, b"released", 0)
        # A kept connection is closed after its current request.
        assert c.sock.recv(1) == b""
    assert w.proc.wait(30) == 0
    assert board.served() == 1
    # Timed too: it ran from before the scoreboard showed it until the release, above 0.
    counts, total = board.durations()
    assert sum(counts) == 1 and total > 0, (counts, total)
    assert "direct_app: atexit ran" in w.stdout


def test_a_retiring_worker_serves_a_kept_connection_until_it_is_quiet_for_a_second(direct, tmp_path):
    # nginx's keepalive cache is last-in first-out: the connection it got a response on last
    # is the next one it writes a request to; a close then would meet that request.
    w, board = direct(env={"FCGIBRIDGE_HEADER_TIMEOUT": "300"})  # not what closes it
    gate = tmp_path / "release"
    with w.client(timeout=60) as c:
        send(c, "/hold?%s" % gate)
        wait_until(lambda: board.slot(0)[2] is not None, "the held request on the scoreboard")
        board.drain()
        gate.touch()
        assert c.read_response().body == b"released"
        quiet, n = serve_until_quiet(c, "/environ", 3)
        assert quiet >= 0.5, "closed %.2fs after its last response, not once quiet for a second" % quiet
    assert w.proc.wait(30) == 0
    assert board.accepting() == 0 and board.served() == 1 + n


def test_a_retiring_worker_closes_a_kept_connection_never_quiet_after_a_response(direct):
    # Steady traffic: the connection is closed after a response 5 s into the retirement
    # rather than the worker being killed at graceful-timeout.
    w, board = direct()
    with w.client(timeout=60) as c:
        assert request(c, "/environ").code == 200
        board.drain()
        took = serve_until_closed(c, "/environ")
        assert took >= 3, "closed after %.1fs of requests: not from a second's quiet" % took
    assert w.proc.wait(30) == 0


def test_errors_and_tracebacks_go_to_the_workers_stderr(direct):
    w, _ = direct()
    pid = w.proc.pid
    with w.client() as c:
        r = request(c, "/raise")
        assert r.code == 500 and r.stderr == b"", "no FCGI_STDERR: the web server's log is not the bridge's"
        r = request(c, "/errors")
        assert r.body == b"logged" and r.stderr == b""
    tag = "[request_id=%d-1 GET /raise] " % pid
    wait_until(lambda: tag + "RuntimeError: direct app failed" in w.stderr, "the traceback on stderr")
    assert tag + "Traceback (most recent call last):" in w.stderr
    assert not [line for line in w.stderr.splitlines() if "direct_app.py" in line and not line.startswith(tag)]
    tag = "[request_id=%d-2 GET /errors] " % pid
    wait_until(lambda: tag + "second half" in w.stderr, "wsgi.errors on stderr")
    assert tag + "first line" in w.stderr


def read_until_closed(c):
    data = c.buf
    while True:
        more = c.sock.recv(65536)
        if not more:
            return data
        data += more


def split_records(data):
    """[(type, content)] of the valid records at the start of `data`, and what follows them."""
    records = []
    while len(data) >= 8:
        version, rtype, _, clen, plen = struct.unpack(">BBHHBx", data[:8])
        if version != 1:
            break
        records.append((rtype, data[8:8 + clen]))
        data = data[8 + clen + plen:]
    return records, data


@pytest.mark.parametrize("uri", ["/raise-after", "/short-length"])
@pytest.mark.parametrize("keep_conn", [True, False], ids=["kept", "not-kept"])
def test_a_response_cut_off_after_its_head_never_ends_like_a_complete_one(direct, uri, keep_conn):
    """The web server must see a failed response, not a short one that looks complete: no
    END_REQUEST, the connection closed; where EOF alone would be the normal end (the web
    server does not keep connections) an invalid record before it (a unix socket)."""
    w, board = direct()
    with w.client() as c:
        send(c, uri, keep_conn=keep_conn)
        records, rest = split_records(read_until_closed(c))
    stdout = b"".join(content for rtype, content in records if rtype == STDOUT)
    assert stdout.startswith(b"Status: 200 OK\r\n") or b"200" in stdout.split(b"\r\n")[0], stdout
    assert END_REQUEST not in [rtype for rtype, _ in records], "ended like a complete response"
    assert rest == (b"" if keep_conn else bytes([0, 6, 0, 0, 0, 0, 0, 0])), rest
    wait_until(lambda: "the response was cut off after its head" in w.stderr, "the cut-off on stderr")
    with w.client() as c:
        assert request(c, "/environ").code == 200, "the worker serves on"


@pytest.mark.parametrize("length, body", [("10", b"abc"), ("abc", b""), ("-5", b""), ("+3", b"abc")])
def test_a_body_shorter_than_its_content_length_or_a_bad_length_is_a_400(direct, length, body):
    """As the bridge answers: 400 without running the app, and the worker serves on."""
    w, _ = direct()
    with w.client() as c:
        assert_refused(c, length, body, then="/environ")
    wait_until(lambda: "answering 400 without running the app" in w.stderr, "the refusal on stderr")


def test_a_declared_body_that_is_absent_altogether_reaches_the_app(direct):
    """nginx keeps the client's CONTENT_LENGTH on requests it sends without their body (an
    error_page redirect, auth_request): no short body, the app answers."""
    w, _ = direct()
    with w.client() as c:
        send(c, "/environ", method="POST", CONTENT_LENGTH="10")
        r = c.read_response()
        assert r.code == 200, r.stdout
    assert "answering 400" not in w.stderr


def test_a_body_that_ends_short_while_the_app_reads_it_raises(direct):
    """The app is reading when the web server ends the body early: its read raises rather
    than return the bytes that came."""
    w, board = direct()
    with w.client() as c:
        c.begin()
        c.params(nginx_params("/read-length", method="POST", CONTENT_LENGTH="10"))
        wait_until(lambda: board.slot(0)[2] is not None, "the app running")
        c.stdin(b"abc")
        c.stdin_end()
        r = c.read_response()
        assert r.code == 500 and b"read 3 bytes" not in r.body, r.stdout
    wait_until(lambda: "ClientDisconnected" in w.stderr, "the app's read raising")


def test_responses_are_counted_by_status_class(direct):
    w, board = direct()
    with w.client() as c:
        assert request(c, "/environ").code == 200
        assert request(c, "/raise").code == 500
        assert request(c, "/environ", method="HEAD").code == 200
    assert board.responses() == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1}


def test_a_connection_sending_no_complete_request_is_closed_after_the_header_timeout(direct):
    # One thread: a connection that pins it holds up every other one.
    w, board = direct(env={"FCGIBRIDGE_HEADER_TIMEOUT": "0.5"})
    with w.client(timeout=30) as silent, w.client(timeout=30) as other:
        send(other, "/environ")
        assert other.read_response().code == 200, "served once the silent connection is closed"
        assert silent.sock.recv(1) == b""
    # A partial request: BEGIN and some PARAMS, never their end.
    with w.client(timeout=30) as partial, w.client(timeout=30) as other:
        partial.begin(keep_conn=True)
        partial.send(record(PARAMS, 1, b"\x0e\x03REQUEST_METHODGET"))
        send(other, "/environ")
        assert other.read_response().code == 200
        assert partial.sock.recv(1) == b""
    # A kept connection idle after its request, while another waits.
    with w.client(timeout=30) as kept:
        assert request(kept, "/environ").code == 200
        with w.client(timeout=30) as other:
            send(other, "/environ")
            assert other.read_response().code == 200
        assert kept.sock.recv(1) == b""
    assert w.proc.poll() is None
    assert board.responses()["2xx"] == 4
    # One line for three closes within seconds (at most one per 10 s).
    wait_until(lambda: TIMED_OUT % "0.5" in w.stderr, "the header-timeout line")
    assert 1 <= w.stderr.count(TIMED_OUT % "0.5") <= 2, w.stderr


def test_an_answer_before_the_input_end_lets_the_web_server_send_it(direct):
    # Apache's mod_proxy_fcgi: BEGIN (no FCGI_KEEP_CONN) and PARAMS in one write, the empty
    # STDIN in another, after the response may already have come.
    w, board = direct()
    with w.client(timeout=30) as c:
        c.begin(keep_conn=False)
        c.params(nginx_params("/environ"))
        assert c.read_response().code == 200
        assert c.sock.recv(1) == b"", "the worker's side is shut down after the response"
        c.stdin_end()  # BrokenPipeError if the worker had closed the connection
    # The lingering close ended with the input: the one thread serves the next connection.
    with w.client(timeout=30) as c:
        assert request(c, "/environ").code == 200
    # nginx sends it all at once: nothing to wait for.
    with w.client(timeout=30) as c:
        assert request(c, "/environ", keep_conn=False).code == 200
        assert c.sock.recv(1) == b""
    assert w.proc.poll() is None


def test_bad_input_names_the_web_server_and_the_request(direct):
    w, _ = direct()
    with w.client(timeout=30) as c:
        c.corked = b""
        c.begin()
        c.params(nginx_params("/environ"))
        c.send(record(STDOUT, 1, b"not for a worker"))  # only an application sends it
        data, c.corked = c.corked, None
        c.send(data)
        assert c.sock.recv(4096) == b"", "the connection is closed, the request not run"
    line = "fcgibridge worker: bad FastCGI input from the web server (request_id=%d-1 GET /environ), " \
           "closing the connection: request 1: unexpected FCGI_STDOUT" % w.proc.pid
    wait_until(lambda: line in w.stderr, "the protocol error line")
    assert "the bridge" not in w.stderr


def is_open_and_quiet(c):
    """Neither closed nor sent anything: the worker keeps the connection and waits."""
    import select
    return not select.select([c.sock], [], [], 0)[0]


def test_one_thread_serves_kept_connections_in_turn(direct):
    # nginx's fastcgi_keep_conn: a connection idle between its requests holds no thread.
    w, board = direct()
    with w.client(timeout=20) as a, w.client(timeout=20) as b:
        assert request(a, "/environ").code == 200
        assert request(b, "/environ").code == 200, "served while the first connection stays open"
        assert request(a, "/environ").code == 200
        assert request(b, "/environ").code == 200
        assert is_open_and_quiet(a) and is_open_and_quiet(b)
        ids = [json.loads(request(c, "/environ").body)["fcgibridge.request_id"] for c in (a, b)]
        assert ids == ["%d-5" % w.proc.pid, "%d-6" % w.proc.pid]
        # Input arriving on a parked connection that is not a whole request (here the end of
        # one already answered, then half of the next) does not hold the thread either.
        a.begin()
        a.params(nginx_params("/environ"))
        assert a.read_response().code == 200
        a.stdin_end()
        a.begin()
        assert request(b, "/environ").code == 200
        a.params(nginx_params("/environ"))
        a.stdin_end()
        assert a.read_response().code == 200
    wait_until(lambda: board.slot(0)[:2] == (9, 0), "nine requests served by the one thread")


def assert_unrun_requests_close_only_without_keep_conn(w, how):
    """A request that ends before the app runs (`how`: aborted, or a role no app plays):
    the connection stays for the next request with FCGI_KEEP_CONN, and closes right after
    the END_REQUEST without it, as FastCGI says (not at the header timeout, set long)."""
    for keep_conn in (True, False):
        with w.client(timeout=30) as c:
            c.corked = b""
            if how == "aborted":
                c.begin(keep_conn=keep_conn)
                c.abort()
            else:
                c.begin(role=FILTER, keep_conn=keep_conn)
            data, c.corked = c.corked, None
            c.send(data)
            r = c.read_response()
            assert r.protocol_status == (REQUEST_COMPLETE if how == "aborted" else UNKNOWN_ROLE)
            if keep_conn:
                assert request(c, "/environ").code == 200, "kept for the next request"
            else:
                assert c.sock.recv(1) == b"", "closed after its END_REQUEST"


@pytest.mark.parametrize("how", ["aborted", "unknown role"])
def test_a_request_ended_before_the_app_ran_closes_a_connection_without_keep_conn(direct, how):
    w, _ = direct(env={"FCGIBRIDGE_HEADER_TIMEOUT": "600"})
    assert_unrun_requests_close_only_without_keep_conn(w, how)


def test_a_kept_connection_idle_past_the_header_timeout_is_closed(direct):
    w, board = direct(env={"FCGIBRIDGE_HEADER_TIMEOUT": "3"})
    with w.client(timeout=30) as a, w.client(timeout=30) as b:
        assert request(a, "/environ").code == 200
        idle_since = time.monotonic()
        assert request(b, "/environ").code == 200
        assert is_open_and_quiet(a), "the first connection is kept while the second is served"
        assert a.sock.recv(1) == b"" and b.sock.recv(1) == b"", "both closed once idle too long"
        assert time.monotonic() - idle_since >= 2.9, "not before the header timeout"
    wait_until(lambda: TIMED_OUT % "3" in w.stderr, "the header-timeout line")
    with w.client(timeout=30) as c:
        assert request(c, "/environ").code == 200
    assert w.proc.poll() is None


def test_a_drain_closes_every_parked_connection(direct):
    w, board = direct()
    with w.client(timeout=20) as a, w.client(timeout=20) as b:
        assert request(a, "/environ").code == 200
        assert request(b, "/environ").code == 200
        board.drain()
        assert a.sock.recv(1) == b"" and b.sock.recv(1) == b""
    assert w.proc.wait(30) == 0
    assert board.accepting() == 0 and board.served() == 2


def test_a_stopping_bridge_has_a_queued_connection_served_and_parked_ones_closed(direct, tmp_path):
    w, board = direct()
    gate = tmp_path / "release"
    with w.client(timeout=60) as idle, w.client(timeout=60) as busy:
        assert request(idle, "/environ").code == 200
        send(busy, "/hold?%s" % gate)
        wait_until(lambda: board.slot(0)[2] is not None, "the held request on the scoreboard", timeout=20)
        with w.client(timeout=60) as queued:
            send(queued, "/environ")
            struct.pack_into("=I", board.map, 0, 2)  # the bridge stops
            gate.touch()
            assert busy.read_response().body == b"released"
            assert busy.sock.recv(1) == b"", "a kept connection is closed after its request"
            assert queued.read_response().code == 200, "the queued connection is still served"
            assert queued.sock.recv(1) == b""
        assert idle.sock.recv(1) == b""
    assert w.proc.wait(30) == 0
    assert board.served() == 3


@pytest.fixture
def relayed_pair(spawn, tmp_path):
    """Two one-thread direct workers sharing one listening socket and one relay, as the
    bridge starts a pool of two processes: (listening socket's path, [(worker, board)],
    the relay's receiving end)."""
    yield from pool_pair(spawn, tmp_path, balance=False)


@pytest.fixture
def balanced_pair(spawn, tmp_path):
    """relayed_pair with the pool's balance page, as the bridge gives it, and the page
    mapped: (path, pair, relay, page)."""
    yield from pool_pair(spawn, tmp_path, balance=True)


def pool_pair(spawn, tmp_path, balance):
    import socket
    path = str(tmp_path / "pool.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(64)
    relay = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in relay:
        end.setblocking(False)
    fds = tuple(end.fileno() for end in relay)
    if balance:
        page = os.memfd_create("balance")
        os.ftruncate(page, 4096)
        fds += (page,)
    pair = []
    for _ in range(2):
        board = Scoreboard(1)
        env = {"FCGIBRIDGE_DIRECT": "1", "FCGIBRIDGE_SCOREBOARD_FD": str(board.fd), "FCGIBRIDGE_PDEATHSIG": "0",
               "FCGIBRIDGE_RELAY_FDS": ",".join(map(str, fds))}
        w = spawn(app="direct_app:application", env=env, pass_fds=(board.fd,) + fds, listener=(lsock, path))
        wait_until(lambda: board.threads() == 1, "the thread's scoreboard slot")
        pair.append((w, board))
    if balance:
        yield path, pair, relay[1], mmap.mmap(page, 4096)
    else:
        yield path, pair, relay[1]
    lsock.close()
    for end in relay:
        end.close()
    if balance:
        os.close(fds[2])
    for _, board in pair:
        board.close()


def served_by(c, uri="/environ"):
    """The pid of the worker that answered a request on kept connection `c`."""
    r = request(c, uri)
    assert r.code == 200
    return int(json.loads(r.body)["fcgibridge.request_id"].split("-")[0])


def holder(pair, gate):
    """The pid of the worker whose thread runs /hold?<gate>, once one does."""
    line = ("/hold?%s" % gate).encode()
    busy = lambda: [w.proc.pid for w, board in pair if line in (board.slot(0)[2] or b"")]  # noqa: E731
    wait_until(busy, "the held request running")
    return busy()[0]


def hold_with_another_kept(path, pair, gate, opened, others=1):
    """Open kept connections (each answered once), then hold a request on one of two kept by
    the same process: that connection, the other one, and the now busy process's pid. A
    request that comes as its worker ends the one before may already be handed to the
    other worker, so which one holds it is read from the scoreboards, and tried again until
    another connection is known to be kept by that worker."""
    from fcgi import Client
    # Enough that, however the two workers shared them, one keeps `others` + 1.
    for _ in range(2 * (others + 1)):
        opened.append(Client(path, timeout=60))
    owner = {c: served_by(c) for c in opened}
    for _ in range(10):
        pid = max(owner.values(), key=list(owner.values()).count)
        slow = next(c for c in opened if owner[c] == pid)
        send(slow, "/hold?%s" % gate)
        pid = holder(pair, gate)
        quick = [c for c in opened if c is not slow and owner[c] == pid]
        if len(quick) >= others:
            return (slow, quick[0], pid) if others == 1 else (slow, quick[:others], pid)
        gate.touch()
        assert slow.read_response().body == b"released"
        gate.unlink()
        owner[slow] = served_by(slow)
    raise AssertionError("no second connection kept by the busy worker")


def test_a_request_on_a_kept_connection_of_a_busy_process_is_served_by_a_free_one(relayed_pair, tmp_path):
    # The fairness a connection per request gives (whichever process waits in accept takes
    # it), kept with nginx's fastcgi_keep_conn: the busy process hands the connection over.
    path, pair, relay = relayed_pair
    gate = tmp_path / "release"
    opened = []
    try:
        slow, quick, busy_pid = hold_with_another_kept(path, pair, gate, opened)
        other = served_by(quick)
        assert other != busy_pid, "served by the free process, not after the slow request"
        assert is_open_and_quiet(slow), "the slow request still runs"
        assert served_by(quick) == other, "the connection stays with the process it went to"
        gate.touch()
        assert slow.read_response().body == b"released"
    finally:
        for c in opened:
            c.close()


def both_busy(path, pair, gates, opened, others=1):
    """Hold a request in each worker (`gates`: the first's, the second's): the first holds it
    on a connection it keeps beside `others` more; the second on a new connection, which
    the busy first one does not accept. (slow, the first's other connection(s), its pid,
    the second's connection, its pid)."""
    from fcgi import Client
    slow, quick, first = hold_with_another_kept(path, pair, gates[0], opened, others)
    other = Client(path, timeout=60)
    opened.append(other)
    send(other, "/hold?%s" % gates[1])
    second = holder(pair, gates[1])
    assert second != first
    return slow, quick, first, other, second


def test_with_every_process_busy_the_first_to_be_free_serves_the_waiting_request(relayed_pair, tmp_path):
    path, pair, relay = relayed_pair
    gates = tmp_path / "first", tmp_path / "second"
    opened = []
    try:
        slow, quick, first_pid, other, second_pid = both_busy(path, pair, gates, opened)
        send(quick, "/environ")
        gates[1].touch()
        assert other.read_response().body == b"released"
        r = quick.read_response()
        assert int(json.loads(r.body)["fcgibridge.request_id"].split("-")[0]) == second_pid
        assert is_open_and_quiet(slow), "served before the first process's slow request ended"
        gates[0].touch()
        assert slow.read_response().body == b"released"
    finally:
        for c in opened:
            c.close()


def test_a_retiring_worker_hands_its_kept_connections_to_the_others(relayed_pair):
    # A restart (max-requests, a reload) closes no kept connection: nginx may be writing a
    # request to it that instant (a 502 for a POST); the pool's other worker takes them.
    from fcgi import Client
    path, pair, relay = relayed_pair
    opened = [Client(path, timeout=60) for _ in range(4)]
    try:
        owner = {c: served_by(c) for c in opened}
        retiring, board = next((w, board) for w, board in pair if w.proc.pid in owner.values())
        other = next(w.proc.pid for w, _ in pair if w is not retiring)
        board.drain()
        assert retiring.proc.wait(30) == 0, "it leaves once its connections are handed over"
        for c in opened:
            assert served_by(c) == other, "the connection stayed open, served by the other worker"
    finally:
        for c in opened:
            c.close()


def test_a_request_held_while_the_relay_was_occupied_goes_once_it_is_free(relayed_pair, tmp_path):
    # Both processes busy: the first quick request waits in the relay, the second in the
    # busy process's hand; once the other process is free it takes both, one after the
    # other, while the first process's slow request still runs.
    path, pair, relay = relayed_pair
    gates = tmp_path / "first", tmp_path / "second"
    opened = []
    try:
        slow, quick, first, other, second = both_busy(path, pair, gates, opened, others=2)
        for c in quick:
            send(c, "/environ")
        gates[1].touch()
        assert other.read_response().body == b"released"
        for c in quick:
            r = c.read_response()
            assert int(json.loads(r.body)["fcgibridge.request_id"].split("-")[0]) == second
        assert is_open_and_quiet(slow), "both served before the first process's slow request ended"
        gates[0].touch()
        assert slow.read_response().body == b"released"
    finally:
        for c in opened:
            c.close()


def test_a_stop_serves_the_requests_waiting_in_the_relay(relayed_pair, tmp_path):
    path, pair, relay = relayed_pair
    gates = tmp_path / "first", tmp_path / "second"
    opened = []
    try:
        slow, quick, first, other, second = both_busy(path, pair, gates, opened)
        send(quick, "/environ")  # to the relay: no thread of the pool is free
        import fcntl
        import termios
        queued = lambda: struct.unpack("=i", fcntl.ioctl(relay, termios.FIONREAD, b"\0" * 4))[0] > 0  # noqa: E731
        wait_until(queued, "the quick request's connection in the relay")
        for _, board in pair:
            struct.pack_into("=I", board.map, 0, 2)  # the bridge stops
        gates[1].touch()
        assert other.read_response().body == b"released"
        r = quick.read_response()
        assert int(json.loads(r.body)["fcgibridge.request_id"].split("-")[0]) == second, "served within the stop"
        gates[0].touch()
        assert slow.read_response().body == b"released"
        for w, _ in pair:
            assert w.proc.wait(30) == 0
    finally:
        for c in opened:
            c.close()


def test_a_process_the_scheduler_slows_hands_kept_connections_to_a_quicker_one(balanced_pair):
    # Each kept connection stays with the process that accepted it, and the web server
    # keeps one request waiting on each: a process that serves slower (here its app takes
    # 0.5 ms a request; on a busy machine, one that shares a core with the web server)
    # would keep its share of the queue and make each of its requests wait longer. With
    # the balance page it moves connections to the quicker process until its share of them
    # follows its share of the pace. (The relay's watcher moves some too, when a process
    # has been busy 1 ms; the page counts only the balance's moves.)
    import selectors
    from fcgi import Client
    path, pair, relay, page = balanced_pair
    conns = [Client(path, timeout=60) for _ in range(64)]
    try:
        owner = {c: served_by(c) for c in conns}
        counts = {w.proc.pid: list(owner.values()).count(w.proc.pid) for w, _ in pair}
        slow = max(counts, key=counts.get)
        start = counts[slow]
        assert start >= 32
        # As nginx under load: a request waiting on every connection, the next one written
        # as its response comes (whichever connection that is: each process's pace, not
        # the client's order, sets how many requests it serves).
        ready = selectors.DefaultSelector()
        for c in conns:
            ready.register(c.sock, selectors.EVENT_READ, c)
            send(c, "/pace?%d" % slow)
        deadline = time.monotonic() + 90
        while balance_slot(page, slow)["moved"] < 8 or list(owner.values()).count(slow) > start - 4:
            assert time.monotonic() < deadline, (start, list(owner.values()).count(slow), balance_slot(page, slow))
            for key, _ in ready.select(timeout=10):
                c = key.data
                r = c.read_response()
                assert r.code == 200, r.body
                owner[c] = int(r.body)
                send(c, "/pace?%d" % slow)
        for c in conns:
            assert c.read_response().code == 200
        slot = balance_slot(page, slow)
        assert balance_slot(page, next(p for p in counts if p != slow))["moved"] < slot["moved"]
        # The bridge reads the same count from the worker's scoreboard (the status page's).
        boards = {w.proc.pid: board for w, board in pair}
        assert boards[slow].moved() == slot["moved"]
        # Every connection, moved or not, is served on.
        assert {served_by(c) for c in conns} <= set(counts)
    finally:
        for c in conns:
            c.close()


def balance_slot(page, pid):
    """The balance page's line of process `pid` (docs/worker-contract.md)."""
    for off in range(64, 4096, 64):
        slot_pid, conns, served, moved = struct.unpack_from("<IIQQ", page, off)
        if slot_pid == pid:
            return {"conns": conns, "served": served, "moved": moved}
    raise AssertionError("no line for pid %d" % pid)

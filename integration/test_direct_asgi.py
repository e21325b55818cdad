"""ASGI pools behind a `direct: true` listener (docs/direct.md, docs/asgi.md): each worker's
event loop accepts nginx's connections itself and keeps them (`fastcgi_keep_conn on` with
an upstream keepalive, as the docs configure it), many requests in flight per process; the
bridge supervises from the scoreboards. FastAPI and a bare ASGI app, through real nginx."""
import concurrent.futures
import re
import signal
import socket
import subprocess
import time

import pytest
import requests

from harness import (APPS, LogFile, free_ports, make_bridge, nginx_conf, nginx_etc, pool, raw_http_get, start_nginx,
                     stop_process, to_yaml, wait_until)
from supervision_support import Background

pytestmark = pytest.mark.timeout(300)

FASTAPI = f"{APPS / 'asgi_app.py'}:app"
RAW = f"{APPS / 'asgi_raw_app.py'}:app"


class Front:
    """nginx on one port: /raw/ to the `raw` listener's socket, the rest to `fast`'s, both
    with kept connections (`keep`) or a connection per request."""

    def __init__(self, workdir, sockets, keep=True):
        self.port = free_ports(1)[0]
        upstreams = "".join(
            f"    upstream {name} {{\n        server unix:{path};\n        keepalive 32;\n    }}\n"
            for name, path in sockets.items())
        keep_line = "fastcgi_keep_conn on;" if keep else ""

        def location(prefix, name):
            return (f"        location {prefix} {{\n            include {nginx_etc()}/fastcgi_params;\n"
                    f"            fastcgi_param SCRIPT_NAME \"\";\n            fastcgi_param PATH_INFO $uri;\n"
                    f"            {keep_line}\n            fastcgi_read_timeout 120s;\n"
                    f"            fastcgi_pass {name};\n        }}\n")
        http = (upstreams + f"    server {{\n        listen 127.0.0.1:{self.port};\n"
                + location("/raw/", "raw") + location("/", "fast") + "    }\n")
        (workdir / "nginx.conf").write_text(nginx_conf(workdir, http))
        self.error_log = LogFile(workdir / "nginx-error.log")
        self.proc = start_nginx(workdir, workdir / "nginx.conf")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, **kw):
        return requests.get(self.url(path), timeout=kw.pop("timeout", 60), **kw)

    def stop(self):
        stop_process(self.proc, timeout=20)


def start(tmp_path_factory, name, keep=True, fast=None, raw=None):
    """A bridge with the FastAPI pool `fast` and the bare pool `raw`, each behind a direct
    listener on a unix socket, and nginx in front; both answer before this returns."""
    workdir = tmp_path_factory.mktemp(name)
    sport = free_ports(1)[0]
    sockets = {"fast": workdir / "fast.sock", "raw": workdir / "raw.sock"}
    env = {"FCGIBRIDGE_TEST_DIR": str(workdir)}
    pools = {
        "fast": pool(FASTAPI, interface="asgi", processes=1, concurrency=50, env=env, **(fast or {})),
        "raw": pool(RAW, interface="asgi", processes=1, concurrency=16, env=env,
                    **{"asgi-loop": "asyncio", **(raw or {})}),
    }
    listeners = {n: {"fastcgi": f"unix:{s}", "pool": n, "direct": True} for n, s in sockets.items()}
    b = make_bridge(workdir, pools, listeners,
                    bridge_extra={"status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    b.start()
    b.wait_ready([("fast", "/health", "any"), ("raw", "/raw/health", "any")])
    front = Front(tmp_path_factory.mktemp(name + "-nginx"), sockets, keep)
    wait_until(lambda: ok(front, "/health") and ok(front, "/raw/health"), 60, 0.1,
               what="nginx answering through both direct listeners")
    return b, front


def ok(front, path):
    """Whether `path` answers 200 through nginx (a name shared with test_direct.py, whose
    module name workers/tests/test_direct.py shadows in a whole-suite run)."""
    try:
        return front.get(path, timeout=10).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    b, front = start(tmp_path_factory, "direct-asgi", raw={"request-timeout": "2s"})
    try:
        yield b, front
    finally:
        front.stop()
        b.stop()


def accepted_connections(sock_path) -> int:
    """Connections the workers hold on the listener's socket (accepted, not yet closed)."""
    out = subprocess.run(["ss", "-xH", "state", "connected", "src", str(sock_path)], capture_output=True, text=True,
                         check=True).stdout
    return len([ln for ln in out.splitlines() if ln.strip()])


def pid_of(b, pool_name):
    (w,) = b.pool_status(pool_name)["workers"]
    return w["pid"]


def test_fastapi_answers_and_nginx_keeps_its_connections(stack):
    b, front = stack
    r = front.get("/items/7?q=x")
    assert (r.status_code, r.json()) == (200, {"item_id": 7, "q": "x"}), r.text
    r = requests.post(front.url("/form"), data={"name": "a"}, files={"upload": ("f.txt", b"x" * 50000)}, timeout=60)
    assert r.status_code == 200 and r.json()["size"] == 50000, r.text
    r = front.get("/chunks")
    assert r.status_code == 200 and r.text.count("chunk") >= 3, r.text
    for i in range(30):
        assert front.get("/health").status_code == 200, i
    # Kept: idle connections stay open in the worker after their requests (each request on
    # its own connection would leave none, as with `direct` WSGI workers).
    held = accepted_connections(b.workdir / "fast.sock")
    assert 1 <= held <= 32, held


def test_forty_slow_requests_run_at_once_in_one_process(stack):
    b, front = stack
    with concurrent.futures.ThreadPoolExecutor(40) as ex:
        started = time.monotonic()
        statuses = list(ex.map(lambda _: front.get("/sleep?s=2").status_code, range(40)))
        took = time.monotonic() - started
    assert statuses == [200] * 40
    # One at a time they would take 80 s, ten at a time 8 s.
    assert took < 8.0, f"40 concurrent 2 s requests took {took:.2f}s"


def test_the_status_page_shows_requests_in_flight_and_counts_what_was_served(stack):
    b, front = stack
    before = b.pool_status("fast")["accepted_requests"]
    slow = [Background(lambda: front.get("/sleep?s=4")) for _ in range(3)]

    def running():
        return [c for w in b.pool_status("fast")["workers"] for c in w["current"] if c["uri"] == "/sleep?s=4"]
    shown = wait_until(lambda: len(running()) == 3 and running(), 30, what="three requests in flight on one worker")
    assert {c["method"] for c in shown} == {"GET"}
    assert all(bg.result().status_code == 200 for bg in slow)
    wait_until(lambda: b.pool_status("fast")["accepted_requests"] >= before + 3 and not running(), 30,
               what="the three requests counted, none running")


def test_request_timeout_cancels_the_task_answers_504_and_the_worker_serves_on(stack):
    b, front = stack
    before = pid_of(b, "raw")
    mark = b.log.mark()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        stuck = ex.submit(front.get, "/raw/sleep?60", timeout=120)
        quick = ex.submit(front.get, "/raw/sleep?1", timeout=120)
        assert quick.result().status_code == 200
        assert stuck.result().status_code == 504
    (line,) = b.log.wait_for([r"request-timeout \(2s\): GET /raw/sleep\?60 ran"], since=mark, timeout=30)
    rid = re.search(r"request_id=\"?(\d+-\d+)", line).group(1)
    b.log.wait_for([rf"\[stack request_id={rid} task=", r"asgi_raw_app.py"], since=mark, timeout=30)
    log = b.workdir / "cancelled.log"
    wait_until(lambda: log.exists() and f"cancelled {rid}" in log.read_text(), 30, what="the app's task cancelled")
    assert pid_of(b, "raw") == before, "the same worker serves on"
    assert front.get("/raw/health").text == "ok"
    wait_until(lambda: b.pool_status("raw")["request_timeouts"] >= 1, 30, what="the timeout on the status page")


def test_a_client_that_leaves_is_http_disconnect_for_the_app(stack):
    b, front = stack
    before = b.wait_counts_agree("raw")["responses"]
    token = f"direct-{time.monotonic_ns()}"
    conn = socket.create_connection(("127.0.0.1", front.port), timeout=30)
    conn.sendall(f"GET /raw/wait-disconnect?{token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    log = b.workdir / "disconnect.log"
    wait_until(lambda: log.exists() and f"waiting {token}" in log.read_text(), 30, what="the app waiting")
    conn.close()
    wait_until(lambda: f"disconnected {token}" in log.read_text(), 30, what="the app to see http.disconnect")
    assert front.get("/raw/health").text == "ok"
    # Counted as nginx logs it (499), as the bridge counts an abort it sees.
    wait_until(lambda: b.pool_status("raw")["responses"]["4xx"] == before["4xx"] + 1, 30,
               what="the abandoned request counted in 4xx")
    assert b.wait_counts_agree("raw")["responses"]["5xx"] == before["5xx"]


def test_a_204_has_no_content_length(stack):
    # RFC 9110 8.6: the app's content-length: 0 is not passed on with a 204
    _, front = stack
    r = front.get("/raw/no-content")
    assert r.status_code == 204
    assert "Content-Length" not in r.headers, r.headers


def test_a_response_shorter_than_its_content_length_fails_and_is_logged_as_an_error(stack):
    """What the bridge does to such a response, the direct worker does: the client gets
    fewer bytes than the Content-Length it was promised (never a response that looks
    whole), and the operator an ERROR naming the request."""
    b, front = stack
    raw = raw_http_get(front.port, "/raw/short-length")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 10" in head.lower(), raw
    assert body == b"abc", raw
    b.log.wait_for([r"ERROR", r'pool="?raw', re.escape("GET /raw/short-length] fcgibridge worker: the application "
                                                        "failed: the response is shorter than its Content-Length "
                                                        "(3 of 10 bytes)")])
    assert ok(front, "/raw/health"), "the worker serves on"


def test_without_kept_connections_each_request_closes_its_own(tmp_path_factory):
    b, front = start(tmp_path_factory, "direct-asgi-nokeep", keep=False)
    try:
        for i in range(10):
            r = front.get(f"/items/{i}")
            assert r.status_code == 200 and r.json()["item_id"] == i, r.text
        wait_until(lambda: accepted_connections(b.workdir / "fast.sock") == 0, 30,
                   what="every connection closed by the worker after its request")
    finally:
        front.stop()
        b.stop()


def test_max_requests_recycles_with_lifespan_shutdown_and_no_failed_request(tmp_path_factory):
    b, front = start(tmp_path_factory, "direct-asgi-recycle", raw={"max-requests": 10})
    try:
        mark = b.log.mark()
        first = str(pid_of(b, "raw"))
        pids = set()
        for i in range(40):
            r = front.get("/raw/version")
            assert r.status_code == 200, (i, r.status_code, r.text)
            pids.add(r.text.split()[1])
        b.log.wait_for([r"retiring the worker: .*max-requests"], since=mark, timeout=60)
        wait_until(lambda: len(pids | {front.get("/raw/version").text.split()[1]}) >= 2, 60,
                   what="a new worker after max-requests")
        b.log.wait_for([r"worker stopped \(.*max-requests.*\): exit status 0"], since=mark, timeout=60)
        # It drained by itself: the app's lifespan shutdown ran in it.
        lifespan = b.workdir / "raw-lifespan.log"
        assert f"shutdown {first}" in lifespan.read_text().splitlines(), lifespan.read_text()
    finally:
        front.stop()
        b.stop()


def test_a_graceful_stop_lets_a_running_request_finish(tmp_path_factory):
    b, front = start(tmp_path_factory, "direct-asgi-stop")
    try:
        held = Background(lambda: front.get("/raw/sleep?3"))
        wait_until(lambda: [c for w in b.pool_status("raw")["workers"] for c in w["current"]], 30,
                   what="the request running")
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGTERM)
        (line,) = b.log.wait_for([r"graceful stop: draining in-flight requests"], since=mark, timeout=30)
        assert "direct_in_flight=1" in line, line  # the held request, which the daemon never saw
        r = held.result()
        assert (r.status_code, r.text) == (200, "slept")
        b.log.wait_for([r"worker stopped \(the bridge is stopping\): exit status 0"], since=mark, timeout=60)
        assert b.proc.wait(timeout=60) == 0
    finally:
        front.stop()
        if b.proc.poll() is None:
            b.stop()


def test_a_worker_whose_event_loop_is_blocked_past_request_timeout_is_replaced(tmp_path_factory):
    """A synchronous call in an async view: the worker's own timer cannot fire, so the
    bridge, seeing the request still running well past request-timeout on the scoreboard,
    replaces the worker (gunicorn's --timeout does the same to a stuck uvicorn worker)."""
    b, front = start(tmp_path_factory, "direct-asgi-blocked", raw={"request-timeout": "2s"})
    try:
        stuck = pid_of(b, "raw")
        before = b.pool_status("raw")
        mark = b.log.mark()
        r = front.get("/raw/block?60", timeout=120)
        assert r.status_code == 502, (r.status_code, r.text)  # its connection closed as it was killed
        b.log.wait_for([r"request-timeout \(2s\): GET /raw/block\?60 ran .* which did not end it: its event loop is "
                        r"blocked"], since=mark, timeout=30)
        wait_until(lambda: ok(front, "/raw/health") and pid_of(b, "raw") != stuck, 60,
                   what="a replacement worker serving")
        # The request each killed worker ran had no head: a 5xx (nginx's 502; nginx may have
        # sent the GET again on another kept connection, to the replacement), timed to the kill.
        # Each is a request timeout too (its blocked loop could count none).
        def counted():
            kills = len([ln for ln in b.log.lines(mark) if "worker stopped (request-timeout" in ln])
            after = b.pool_status("raw")
            moved = (after["responses"]["5xx"] - before["responses"]["5xx"],
                     after["request_timeouts"] - before["request_timeouts"])
            return kills >= 1 and moved == (kills, kills)
        wait_until(counted, 30, what="each killed request counted a 5xx and a request timeout")
        b.wait_counts_agree("raw")
    finally:
        front.stop()
        b.stop()


def test_a_reload_that_changes_request_timeout_restarts_the_workers_that_apply_it(tmp_path_factory):
    b, front = start(tmp_path_factory, "direct-asgi-reload", raw={"request-timeout": "30s"})
    try:
        before = pid_of(b, "raw")
        b.config["pools"]["raw"]["request-timeout"] = "1s"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGHUP)
        b.log.wait_for([r"rolling restart.*pool=\"?raw"], since=mark, timeout=30)
        wait_until(lambda: pid_of(b, "raw") != before, 60, what="the raw pool's worker replaced")
        assert front.get("/raw/sleep?10", timeout=60).status_code == 504, "the new request-timeout applies"
    finally:
        front.stop()
        b.stop()

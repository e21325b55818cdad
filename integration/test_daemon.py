"""The daemon's own behaviour: bounded queue and queue timeout (503), graceful SIGTERM,
unix socket files (mode, stale file replaced, live one never stolen)."""
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid

import pytest

import fcgi_client as fc
from harness import APPS, can_connect, free_ports, make_bridge, pool, wait_until


def edge_pool(**kw):
    return pool(str(APPS / "edge_app.py"), **kw)


@pytest.fixture
def tiny(tmp_path):
    """One worker thread, a queue of one request, waiting at most 2 s."""
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"tiny": edge_pool(processes=1, threads=1, **{"queue-size": 1, "queue-timeout": "2s"})},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "tiny", "status-path": "/fcgibridge-status"}})
    try:
        b.start().wait_ready([("fcgi-tcp", "/health", "x")])
        yield b
    finally:
        b.stop()


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_queue_full_is_503_at_once_and_queue_timeout_is_503_with_retry_after(tiny):
    tag = "busy-" + uuid.uuid4().hex[:8]
    busy_t, busy = _in_thread(lambda: tiny.request("/sleep", query=f"s=8&tag={tag}"))
    wait_until(lambda: (tiny.workdir / f"{tag}.pid").exists(), 30, what="the only thread busy")
    # two more requests: the first waits in the queue and gives up after queue-timeout
    # (2 s) with Retry-After; the second, sent once the first is queued, finds the queue
    # full: 503 at once
    def timed():
        t0 = time.monotonic()
        resp = tiny.request("/health")
        return resp, time.monotonic() - t0

    def queued():
        r = fc.fcgi_request(tiny.listener_address("fcgi-tcp"), "/fcgibridge-status", query="json")
        return json.loads(r.body)["pools"][0]["queue_length"]

    a_t, a = _in_thread(timed)
    wait_until(lambda: queued() == 1, 30, what="the first request in the queue")
    b_t, b = _in_thread(timed)
    a_t.join(30)
    b_t.join(30)
    (slow, slow_s), (fast, fast_s) = a["value"], b["value"]
    assert fast.status == 503, fast.stdout[:300]
    assert fast_s < 1.5, f"a full queue must answer 503 at once, took {fast_s:.1f}s"
    assert slow.status == 503, slow.stdout[:300]
    assert slow.header("Retry-After"), slow.split()[1]
    assert 1.5 < slow_s < 5.5, f"queue-timeout is 2s, the queued request waited {slow_s:.1f}s"
    busy_t.join(30)
    assert busy["value"].status == 200
    # and the pool serves normally afterwards
    assert tiny.request("/health").body == b"ok"


def test_sigterm_lets_in_flight_requests_finish(tmp_path):
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}},
                    bridge_extra={"shutdown-timeout": "20s"})
    try:
        b.start().wait_ready([("fcgi-tcp", "/health", "x")])
        tag = "drain-" + uuid.uuid4().hex[:8]
        t, out = _in_thread(lambda: b.request("/sleep", query=f"s=3&tag={tag}"))
        worker_pid = int(wait_until(lambda: (b.workdir / f"{tag}.pid").exists()
                                    and (b.workdir / f"{tag}.pid").read_text(), 30))
        b.proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert "value" in out, out
        assert out["value"].status == 200, "the in-flight request was cut by SIGTERM"
        assert b.proc.wait(30) == 0
        # the workers went with it
        wait_until(lambda: not os.path.exists(f"/proc/{worker_pid}") or
                   open(f"/proc/{worker_pid}/stat").read().split()[2] == "Z", 30, what="worker gone")
        # and no new connection is accepted any more
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        b.stop()


def test_unix_socket_mode_and_stale_file(tmp_path):
    path = tmp_path / "front.sock"
    # a stale socket file: bound, then its owner went away without unlinking it
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    assert path.exists()
    b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=1)},
                    {"front": {"fastcgi": f"unix:{path}", "pool": "p", "socket-mode": "0660"}})
    try:
        b.start().wait_ready([("front", "/health", "x")])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        b.stop()


def test_a_live_socket_is_never_taken_over(tmp_path):
    path = tmp_path / "live.sock"
    first = make_bridge(tmp_path / "first", {"p": edge_pool(processes=1, threads=1)},
                        {"front": {"fastcgi": f"unix:{path}", "pool": "p"}}, name="first")
    try:
        first.start().wait_ready([("front", "/health", "x")])
        second_dir = tmp_path / "second"
        second = make_bridge(second_dir, {"p": edge_pool(processes=1, threads=1)},
                             {"front": {"fastcgi": f"unix:{path}", "pool": "p"}}, name="second")
        second.start()
        try:
            rc = second.proc.wait(60)
        except subprocess.TimeoutExpired:
            second.stop()
            pytest.fail("a second bridge kept running on a socket path a live bridge listens on")
        finally:
            second.stop()
        assert rc != 0
        assert "in use" in second.log.text().lower() or "running" in second.log.text().lower(), second.log.text()
        # the first one still owns and serves the socket
        resp = fc.fcgi_request(str(path), "/health")
        assert resp.body == b"ok"
    finally:
        first.stop()


def test_unix_socket_directory_check_and_run_agree(tmp_path):
    """A listener's socket in the runtime-dir, which does not exist yet: `check` accepts it
    and `run` creates the directory before the listeners bind. In any other directory that
    does not exist: `check` and `run` both refuse the configuration with the same line,
    naming file, line, column, key and the directory."""
    run_dir = tmp_path / "run"  # make_bridge's runtime-dir
    b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=1)},
                    {"front": {"fastcgi": f"unix:{run_dir / 'front.sock'}", "pool": "p"}})
    assert not run_dir.exists()
    r = subprocess.run([str(b.binary), "check", "--config", str(b.confdir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sock = str(run_dir / "front.sock")
    try:
        b.start()
        # Listening, or gone (a bind error ends it at once).
        wait_until(lambda: b.proc.poll() is not None or can_connect(sock), 120, what="the listener or an exit")
        b.assert_running()
        b.wait_ready([("front", "/health", "x")])
        assert fc.fcgi_request(sock, "/health").body == b"ok"
    finally:
        b.stop()

    missing = tmp_path / "missing"
    other = make_bridge(tmp_path / "other", {"p": edge_pool(processes=1, threads=1)},
                        {"front": {"fastcgi": f"unix:{missing / 'front.sock'}", "pool": "p"}}, name="other")
    conf = other.confdir / "50-test.yaml"
    line_no, line = next((n, ln) for n, ln in enumerate(conf.read_text().splitlines(), 1) if "front.sock" in ln)
    want = (f"{conf}:{line_no}:{line.index('fastcgi') + 1}: listeners.front.fastcgi: "
            f"directory {missing} does not exist: create it before the bridge starts")
    r = subprocess.run([str(other.binary), "check", "--config", str(other.confdir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith(want), r.stderr
    assert "runtime-dir" in r.stderr, r.stderr
    other.start()
    try:
        rc = other.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("run started with a listener socket in a directory that does not exist")
    finally:
        other.stop()
    assert rc != 0
    assert want in other.log.text(), other.log.text()
    assert not missing.exists()


def test_tcp_port_in_use_fails_clearly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=1)},
                        {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}})
        b.start()
        try:
            rc = b.proc.wait(60)
        finally:
            b.stop()
        assert rc != 0
        text = b.log.text()
        assert str(port) in text and "front" in text, text
        assert "panicked" not in text


def test_a_pool_needs_only_its_app(tmp_path):
    """Defaults: `app:` alone makes a working pool (2 processes × 4 threads by default)."""
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"p": {"app": str(APPS / "edge_app.py")}},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}})
    try:
        b.start().wait_ready([("l", "/health", "x")])
        import json
        env = json.loads(b.request("/environ", listener="l").body)
        assert env["wsgi.multithread"] and env["wsgi.multiprocess"]
    finally:
        b.stop()


def test_access_log_file_and_json_log(tmp_path):
    import json
    port = free_ports(1)[0]
    access = tmp_path / "access.log"
    b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=1)},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}},
                    bridge_extra={"access-log": str(access), "log-format": "json"})
    try:
        b.start().wait_ready([("l", "/health", "x")])
        tag = uuid.uuid4().hex
        assert b.request("/environ", listener="l", query=f"tag={tag}").status == 200
        line = wait_until(lambda: next((ln for ln in access.read_text().splitlines() if tag in ln), None)
                          if access.exists() else None, 15, what="the access-log line")
        assert "200" in line and "/environ" in line
        # the main log is JSON, one object per line
        records = [json.loads(ln) for ln in b.log.text().splitlines() if ln.strip()]
        assert records and all(isinstance(r, dict) for r in records)
        assert any("running" in json.dumps(r) for r in records)
        # access lines went to the file, not to the main log
        assert tag not in b.log.text()
    finally:
        b.stop()


def test_unix_socket_group(tmp_path):
    import grp
    try:
        gid = grp.getgrnam("www-data").gr_gid
    except KeyError:
        pytest.skip("no www-data group on this machine")
    if os.geteuid() != 0:
        pytest.skip("changing a socket's group to www-data needs root here")
    path = tmp_path / "grp.sock"
    b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=1)},
                    {"front": {"fastcgi": f"unix:{path}", "pool": "p", "socket-group": "www-data",
                               "socket-mode": "0660"}})
    try:
        b.start().wait_ready([("front", "/health", "x")])
        st = os.stat(path)
        assert st.st_gid == gid
        assert stat.S_IMODE(st.st_mode) == 0o660
    finally:
        b.stop()


def test_inherited_listening_socket_on_fd0(tmp_path):
    """Spawned mode (lighttpd bin-path, mod_fcgid, h2o): the daemon is started with a
    listening socket as fd 0 and a `fastcgi: fd:0` listener."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        addr = lsock.getsockname()
        b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=2)},
                        {"spawned": {"fastcgi": "fd:0", "pool": "p"}})
        try:
            b.start(stdin=lsock.fileno())
            b.config["listeners"]["spawned"]["address"] = addr  # for the readiness probe only
            b.wait_ready([("spawned", "/health", "x")])
            resp = fc.fcgi_request(addr, "/environ", headers={"Host": "x"})
            assert resp.status == 200
        finally:
            b.stop()


def test_a_second_daemon_on_the_same_runtime_dir_is_refused_and_leaves_it_alone(tmp_path):
    """Worker socket names repeat in every daemon: a second one on the same runtime-dir
    must stop before it touches the first one's files (lock: <runtime-dir>/daemon.lock)."""
    first = make_bridge(tmp_path / "first", {"p": edge_pool(processes=2, threads=1)},
                        {"front": {"fastcgi": f"127.0.0.1:{free_ports(1)[0]}", "pool": "p"}}, name="first")
    run_dir = first.workdir / "run"
    try:
        first.start().wait_ready([("front", "/health", "x")])
        def worker_sockets():
            return {p: os.stat(p).st_ino for p in sorted((run_dir / "pools").rglob("*.sock"))}
        before = wait_until(lambda: len(worker_sockets()) == 2 and worker_sockets(), 60, what="both worker sockets")
        second = make_bridge(tmp_path / "second", {"p": edge_pool(processes=2, threads=1)},
                             {"front": {"fastcgi": f"127.0.0.1:{free_ports(1)[0]}", "pool": "p"}},
                             bridge_extra={"runtime-dir": str(run_dir)}, name="second")
        second.start()
        try:
            rc = second.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("a second daemon kept running on the runtime-dir of a live one")
        finally:
            second.stop()
        assert rc == 1, second.log.text()
        want = (f"runtime-dir {run_dir} is in use by the daemon pid {first.pid}; "
                "stop it, or give this one its own runtime-dir")
        assert want in second.log.text(), second.log.text()
        assert worker_sockets() == before, "the second daemon replaced or removed the first one's worker sockets"
        assert (run_dir / "control.sock").exists()
        # the first daemon still serves, and its control socket still answers
        assert first.request("/health", listener="front").body == b"ok"
        assert first.status_json()["pools"][0]["name"] == "p"
        # `check` on the same configuration does not need the lock
        r = subprocess.run([str(second.binary), "check", "--config", str(second.confdir)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    finally:
        first.stop()


@pytest.mark.parametrize("fails", ["listener", "status"])
def test_a_failed_start_removes_the_socket_files_it_bound(tmp_path, fails):
    """A unix listener bound, then a later step fails (the next listener's port, or the
    status listener's, is taken): the start removes the socket file it made."""
    path = tmp_path / "front.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        listeners = {"front": {"fastcgi": f"unix:{path}", "pool": "p"}}
        extra = {}
        if fails == "listener":
            listeners["taken"] = {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}
        else:
            extra["status"] = {"listen": f"127.0.0.1:{port}"}
        b = make_bridge(tmp_path, {"p": edge_pool(processes=1, threads=1)}, listeners, bridge_extra=extra)
        b.start()
        try:
            rc = b.proc.wait(60)
        finally:
            b.stop()
    assert rc == 1, b.log.text()
    assert str(port) in b.log.text(), b.log.text()
    assert not path.exists(), "the socket file of the failed start was left behind"

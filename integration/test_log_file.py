"""`log-file:` puts the daemon's log in a file; after logrotate moves it, SIGUSR1 makes
the daemon write to a new file at the configured path. An error that stops the start is
on stderr as well, where whoever started the daemon (a terminal, systemd's journal) looks."""
from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from harness import APPS, free_ports, make_bridge, wait_until


def test_log_file_is_reopened_on_sigusr1(tmp_path):
    port, = free_ports(1)
    logfile = tmp_path / "fcgibridge.log"
    b = make_bridge(tmp_path, {"p": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}},
                    bridge_extra={"log-file": str(logfile), "access-log": "-"})
    try:
        b.start()
        b.wait_ready([("front", "/health", "x")])
        text = lambda p: p.read_text() if p.exists() else ""  # noqa: E731
        wait_until(lambda: "worker ready" in text(logfile), 30, what="start-up lines in the log file")
        # Nothing of the daemon's own log on stderr any more (the harness captures stderr).
        assert "worker ready" not in b.log.text()

        rotated = tmp_path / "fcgibridge.log.1"
        os.rename(logfile, rotated)
        os.kill(b.pid, signal.SIGUSR1)
        wait_until(lambda: "SIGUSR1: reopening log files" in text(logfile), 30, what="the reopened log file")
        assert b.request("/health", listener="front", query="rotated=1").status == 200
        wait_until(lambda: "rotated=1" in text(logfile), 30, what="an access line in the new file")
        assert "rotated=1" not in rotated.read_text()
        assert "SIGUSR1" not in rotated.read_text()
    finally:
        b.stop()


def run_failing(tmp_path, bridge_extra, env_extra=None):
    """`fcgibridge run` on a configuration that cannot start: its exit status, its stderr
    (stdout and stderr kept apart) and its log file's text, if it has one."""
    b = make_bridge(tmp_path, {"p": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"unix:{tmp_path / 'front.sock'}", "pool": "p"}},
                    bridge_extra=bridge_extra)
    env = dict(os.environ, NO_COLOR="1", **(env_extra or {}))
    r = subprocess.run([str(b.binary), "run", "--config", str(b.confdir)], env=env, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    logfile = bridge_extra.get("log-file")
    return r.returncode, r.stderr, open(logfile).read() if logfile and os.path.exists(logfile) else ""


@pytest.fixture
def taken_port():
    """A loopback port another process listens on."""
    port, = free_ports(1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    try:
        yield port
    finally:
        s.close()


@pytest.mark.parametrize("to_file", [True, False], ids=["log-file", "stderr"])
def test_a_failed_start_is_on_stderr_once(tmp_path, taken_port, to_file):
    logfile = tmp_path / "fcgibridge.log"
    extra = {"status": {"listen": f"127.0.0.1:{taken_port}"}}
    if to_file:
        extra["log-file"] = str(logfile)
    code, stderr, logged = run_failing(tmp_path, extra)
    assert code == 1, stderr
    error = f"status listener 127.0.0.1:{taken_port}: bind: Address already in use"
    ours = [ln for ln in stderr.splitlines() if error in ln]
    assert len(ours) == 1, stderr
    if to_file:
        # One plain line on stderr; the log keeps its own line, and only the log the rest.
        assert ours[0].startswith(f"fcgibridge: {error}"), stderr
        assert error in logged and "ERROR" in logged, logged
        assert stderr.strip() == ours[0], stderr


def test_a_missing_worker_module_is_on_stderr_with_a_log_file(tmp_path):
    logfile = tmp_path / "fcgibridge.log"
    missing = tmp_path / "no" / "libfcgibridge_worker.so"
    code, stderr, logged = run_failing(tmp_path, {"log-file": str(logfile)},
                                       {"FCGIBRIDGE_WORKER_LIB": str(missing)})
    assert code == 1, stderr
    error = f"the native worker module was not found at {missing}"
    assert [ln.startswith(f"fcgibridge: {error}") for ln in stderr.splitlines()] == [True], stderr
    assert error in logged, logged


@pytest.mark.parametrize("taken", ["status", "control"])
def test_a_failed_start_is_logged_under_the_module_that_met_it(tmp_path, taken_port, taken):
    """The status listener's and the control socket's start-up errors carry their own
    modules' targets, as a listener's carries fcgibridge::listen: a log filter or reader by
    target finds them with the module's other lines."""
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if taken == "status":
            extra = {"status": {"listen": f"127.0.0.1:{taken_port}"}}
            want = f"ERROR fcgibridge::status::http: status listener 127.0.0.1:{taken_port}: bind: Address already in use"
        else:
            # Another daemon's live control socket at the path.
            path = tmp_path / "control.sock"
            holder.bind(str(path))
            holder.listen(1)
            extra = {"control-socket": str(path)}
            want = f"ERROR fcgibridge::control: control socket {path}: "
        code, stderr, _ = run_failing(tmp_path, extra)
    finally:
        holder.close()
    assert code == 1, stderr
    assert [ln for ln in stderr.splitlines() if want in ln], stderr


def test_access_lines_dropped_by_a_slow_access_log_are_counted_and_told(tmp_path):
    """The access log's writer falls behind (a pipe nobody reads): lines are dropped, not
    waited for, and counted on the status page and in one line of the main log."""
    import fcntl
    import json
    import threading

    import fcgi_client as fc

    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    # Our read end lets the daemon open the FIFO; read nothing until the queue overflows.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
        port, = free_ports(1)
        b = make_bridge(tmp_path, {"p": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1}},
                        {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "p", "ping-path": "/ping",
                                   "status-path": "/status"}},
                        bridge_extra={"access-log": str(fifo)})
        try:
            b.start().wait_ready([("front", "/ping", "x")])
            # 4096 queued lines, a few in the pipe: well past that with 6000 pings.
            with fc.FcgiConnection(("127.0.0.1", port), timeout=60) as c:
                for _ in range(6000):
                    c.request("/ping")
            dropped = b.status_json()["access_log_dropped_lines"]
            assert dropped > 0
            metrics = fc.fcgi_request(("127.0.0.1", port), "/status", query="openmetrics").body.decode()
            total = next(ln for ln in metrics.splitlines()
                         if ln.startswith("fcgibridge_access_log_dropped_lines_total "))
            assert int(total.split()[1]) >= dropped
            assert "access-log lines dropped" not in b.log.text(), "told before the writer caught up"

            stop = threading.Event()

            def drain():
                while not stop.is_set():
                    try:
                        if not os.read(reader, 65536):
                            stop.wait(0.05)
                    except BlockingIOError:
                        stop.wait(0.05)

            t = threading.Thread(target=drain)
            t.start()
            try:
                line = wait_until(lambda: next((ln for ln in b.log.lines()
                                                if "access-log lines dropped" in ln), None), 60,
                                  what="the dropped lines told in the main log")
            finally:
                stop.set()
                t.join(10)
            told = int(line.split("access-log lines dropped")[0].split()[-1])
            assert line.rstrip().endswith("access-log lines dropped: the access log could not keep up"), line
            assert told == b.status_json()["access_log_dropped_lines"], line
            assert json.dumps(b.status_json())  # still answers
        finally:
            b.stop()
    finally:
        os.close(reader)


def test_a_failed_reopen_is_an_event_in_the_log_s_own_format(tmp_path):
    """SIGUSR1 while the log's directory is gone (rotated as a whole): the daemon keeps
    writing to the file it had open, and says so there as a JSON event like every other
    line (not as a raw text line), and on stderr."""
    import json

    port, = free_ports(1)
    logdir = tmp_path / "logs"
    logdir.mkdir()
    b = make_bridge(tmp_path, {"p": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}},
                    bridge_extra={"log-file": str(logdir / "bridge.log"), "log-format": "json"})
    try:
        b.start().wait_ready([("front", "/health", "x")])
        moved = tmp_path / "logs.1"
        os.rename(logdir, moved)
        os.kill(b.pid, signal.SIGUSR1)
        text = lambda: (moved / "bridge.log").read_text()  # noqa: E731
        wait_until(lambda: "cannot reopen log file" in text() and "SIGUSR1" in text(), 30,
                   what="the failed reopen told in the file still open")
        records = [json.loads(ln) for ln in text().splitlines() if ln.strip()]
        told = [r for r in records if "cannot reopen log file" in json.dumps(r)]
        assert len(told) == 1 and told[0]["level"] == "ERROR", told
        assert f"fcgibridge: cannot reopen log file {logdir / 'bridge.log'}" in b.log.text(), b.log.text()
        # and the daemon goes on, logging where it can
        assert b.request("/health", listener="front").status == 200
    finally:
        b.stop()

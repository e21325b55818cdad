"""Stopping and restarting as an operator does it (docs/operator-guide.md#upgrading-and-restarting):
`fcgibridge stop --wait` returns once the daemon has exited, or fails after its timeout;
with no control socket configured, the control commands that have a signal (reload,
restart, stop) send it to systemd's $MAINPID, as docs/systemd.md says."""
import json
import os
import subprocess
import threading
import uuid

from harness import LogFile, free_ports, make_bridge, to_yaml, wait_until
from supervision_support import get, lc_pool, pid_of, start


def control(b, *args):
    return [str(b.binary), *args, "--config", str(b.confdir)]


def held_request(b, tmp_path):
    """A request the worker holds until `<mark>.release` exists: (mark, thread, its result)."""
    mark = "held-" + uuid.uuid4().hex[:8]
    out = {}
    t = threading.Thread(target=lambda: out.update(r=get(b, "a", "/hold", query=f"mark={mark}")))
    t.start()
    wait_until(lambda: (tmp_path / f"{mark}.started").exists(), 60, what="the held request in a worker")
    return mark, t, out


def background(cmd, tmp_path, env=None):
    """`cmd` running, its stdout and stderr in files: (process, stdout LogFile, stderr LogFile)."""
    tag = uuid.uuid4().hex[:8]
    out, err = LogFile(tmp_path / f"{tag}.out"), LogFile(tmp_path / f"{tag}.err")
    with open(out.path, "w") as o, open(err.path, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env)
    return proc, out, err


def test_stop_wait_returns_once_the_daemon_has_exited(tmp_path):
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=2)}, bridge_extra={"shutdown-timeout": "120s"})
    client = None
    try:
        mark, t, out = held_request(b, tmp_path)
        client, stdout, stderr = background(control(b, "stop", "--wait"), tmp_path)
        # shutdown-timeout + graceful-timeout (30s) + a minute, as docs/operator-guide.md says
        wait_until(lambda: f"waiting up to 3m30s for the daemon (pid {b.pid}) to exit" in stderr.text(), 60,
                   what="the command waiting")
        b.log.wait_for(r"graceful stop: draining in-flight requests")
        # The daemon finishes the held request before it exits, and the command waits for it.
        assert client.poll() is None and b.proc.poll() is None, stderr.text()
        (tmp_path / f"{mark}.release").touch()
        assert client.wait(120) == 0, stderr.text()
        assert stdout.text().startswith("stop requested\n"), stdout.text()
        assert f"the daemon (pid {b.pid}) exited after" in stdout.text(), stdout.text()
        # Exited by then (a zombie until its parent, this test, reaps it), with status 0.
        assert b.proc.wait(10) == 0
        t.join(30)
        assert out["r"].status == 200, "the held request was cut by the stop"
    finally:
        if client and client.poll() is None:
            client.kill()
        b.stop()


def test_stop_wait_waits_as_long_as_the_running_configuration_needs_not_the_one_on_disk(tmp_path):
    """The daemon tells the bound of its graceful stop in its answer to `stop`: that of the
    configuration it runs (the last reload's), not an edit on disk not reloaded yet."""
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=2)}, bridge_extra={"shutdown-timeout": "120s"})
    try:
        b.config["bridge"]["shutdown-timeout"] = "5m"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        r = subprocess.run(control(b, "reload"), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # Edited again, not reloaded: 1s + 30s + 1m on disk.
        b.config["bridge"]["shutdown-timeout"] = "1s"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        r = subprocess.run(control(b, "stop", "--wait"), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (r.stdout, r.stderr)
        # 5m + graceful-timeout (30s) + a minute: the daemon's; the answer's line is not shown.
        assert f"waiting up to 6m30s for the daemon (pid {b.pid}) to exit" in r.stderr, r.stderr
        assert r.stdout.startswith("stop requested\nthe daemon"), r.stdout
        assert b.proc.wait(10) == 0
    finally:
        b.stop()


def test_stop_wait_fails_when_the_daemon_outlives_it(tmp_path):
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=2)}, bridge_extra={"shutdown-timeout": "120s"})
    try:
        mark, t, _ = held_request(b, tmp_path)
        r = subprocess.run(control(b, "stop", "--wait=1s"), capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"the daemon (pid {b.pid}) is still running after 1s" in r.stderr, r.stderr
        assert f"`kill -INT {b.pid}`" in r.stderr, r.stderr
        assert b.proc.poll() is None
        (tmp_path / f"{mark}.release").touch()
        assert b.proc.wait(60) == 0
        t.join(30)
    finally:
        b.stop()


def test_with_no_control_socket_the_commands_signal_mainpid(tmp_path):
    """docs/systemd.md: neither runtime-dir nor control-socket set, so no control socket;
    under systemd (`ExecReload=fcgibridge reload`, $MAINPID set) reload sends SIGHUP,
    --restart-workers SIGUSR2, stop SIGTERM (and --wait waits for that pid)."""
    b = make_bridge(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "v1"})},
                    {"l-a": {"fastcgi": f"127.0.0.1:{free_ports(1)[0]}", "pool": "a"}})
    del b.config["bridge"]["runtime-dir"]
    (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
    b.start().wait_ready([("l-a", "/health", "x")])
    try:
        systemd = {**os.environ, "MAINPID": str(b.pid)}
        # Without $MAINPID there is nothing to reach.
        r = subprocess.run(control(b, "reload"), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "no control socket: set bridge.control-socket" in r.stderr, r.stderr

        b.config["pools"]["a"]["env"]["LIFECYCLE_TAG"] = "v2"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        r = subprocess.run(control(b, "reload"), capture_output=True, text=True, timeout=60, env=systemd)
        assert r.returncode == 0, r.stderr
        assert f"sent SIGHUP to the bridge (pid {b.pid}, $MAINPID) instead" in r.stderr, r.stderr
        wait_until(lambda: json.loads(get(b, "a", "/pid").body)["tag"] == "v2", 60, what="the SIGHUP's reload")

        # What no signal does is refused with why, not sent as a signal that does less.
        for args, why in [(("--restart-workers", "a"), "restarting named pools needs the control socket"),
                          (("--wait",), "--wait (the outcome of the reload) needs the control socket")]:
            for env in (None, systemd):
                r = subprocess.run(control(b, "reload", *args), capture_output=True, text=True, timeout=60, env=env)
                assert r.returncode != 0 and why in r.stderr and "set bridge.control-socket" in r.stderr, r.stderr
                assert "sent SIG" not in r.stderr, r.stderr

        before = pid_of(get(b, "a", "/pid"))
        r = subprocess.run(control(b, "reload", "--restart-workers"), capture_output=True, text=True, timeout=60,
                           env=systemd)
        assert r.returncode == 0 and "sent SIGUSR2" in r.stderr, r.stderr
        wait_until(lambda: pid_of(get(b, "a", "/pid")) != before, 60, what="a new worker after SIGUSR2")

        r = subprocess.run(control(b, "stop", "--wait"), capture_output=True, text=True, timeout=120, env=systemd)
        assert r.returncode == 0, r.stderr
        assert f"sent SIGTERM to the bridge (pid {b.pid}, $MAINPID) instead" in r.stderr, r.stderr
        assert f"the daemon (pid {b.pid}) exited after" in r.stdout, r.stdout
        assert b.proc.wait(10) == 0
    finally:
        b.stop()

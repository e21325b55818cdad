"""systemd integration without systemd: the daemon is started the way systemd starts a
Type=notify service behind a .socket unit — listening sockets inherited from fd 3 on,
LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES naming them, and a NOTIFY_SOCKET datagram
socket on which the test reads READY=1, WATCHDOG=1 and STOPPING=1."""
from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from harness import APPS, LogFile, bridge_binary, free_ports, stop_process, to_yaml, wait_until
import fcgi_client

# CI runs as root, and the bridge refuses root workers unless a pool allows them
ROOT_OK = {"allow-root": True} if os.geteuid() == 0 else {}


class Notifications:
    """A NOTIFY_SOCKET: collects every datagram the daemon sends."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def poll(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return

    def wait_for(self, prefix: str, timeout: float):
        def seen():
            self.poll()
            return [m for m in self.messages if m.startswith(prefix) or f"\n{prefix}" in m]
        return wait_until(seen, timeout, 0.05, what=f"{prefix!r} on NOTIFY_SOCKET (got {self.messages})")

    def close(self):
        self.sock.close()


def run_with_notify(tmp_path, conf):
    """The daemon on `conf`, with a NOTIFY_SOCKET of the test's own and no socket activation."""
    notify = Notifications(tmp_path / "notify.sock")
    log = LogFile(tmp_path / "bridge.log")
    env = dict(os.environ, NO_COLOR="1", NOTIFY_SOCKET=notify.path)
    for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(v, None)
    with open(log.path, "ab") as logf:
        proc = subprocess.Popen([str(bridge_binary()), "run", "--config", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tmp_path)
    return proc, notify, log


@pytest.fixture
def activated(tmp_path):
    """A bridge with two listeners on systemd-passed sockets (TCP and unix) and a pool."""
    port, = free_ports(1)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(64)
    unix_path = str(tmp_path / "web.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(64)

    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "50-test.yaml").write_text(to_yaml({
        "bridge": {"log-level": "info", "runtime-dir": str(tmp_path / "run")},
        "pools": {"edge": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 2, **ROOT_OK}},
        "listeners": {
            "front-tcp": {"fastcgi": "systemd:web-tcp", "pool": "edge"},
            "front-unix": {"scgi": "systemd:web-unix", "pool": "edge"},
        },
    }))
    notify = Notifications(tmp_path / "notify.sock")
    log = LogFile(tmp_path / "bridge.log")
    env = dict(os.environ, NO_COLOR="1", LISTEN_FDS="2", LISTEN_FDNAMES="web-tcp:web-unix",
               NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
    env.pop("LISTEN_PID", None)
    tcp_fd, unix_fd = tcp.fileno(), unix.fileno()

    def place_fds():
        # In the child: the sockets become fds 3 and 4, as systemd passes them.
        hi_tcp, hi_unix = os.dup(tcp_fd), os.dup(unix_fd)
        os.dup2(hi_tcp, 3)
        os.dup2(hi_unix, 4)

    logf = open(log.path, "ab")
    # LISTEN_PID must be the daemon's own pid: a shell exports its $$ and execs the daemon.
    # WATCHDOG_PID is left out, as systemd leaves it out for the main process.
    proc = subprocess.Popen(
        ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"',
         str(bridge_binary()), "run", "--config", str(conf)],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
        pass_fds=(3, 4), preexec_fn=place_fds, start_new_session=True, cwd=tmp_path)
    logf.close()
    # The daemon holds its own copies now; ours would keep the sockets alive after it exits.
    tcp.close()
    unix.close()
    try:
        yield proc, notify, log, ("127.0.0.1", port), unix_path
    finally:
        stop_process(proc)
        notify.close()


def test_socket_activation_and_notify(activated):
    proc, notify, log, tcp_addr, unix_path = activated
    ready = notify.wait_for("READY=1", 120)
    assert f"MAINPID={proc.pid}" in ready[0]
    # READY=1 means a worker is up: the first request through each passed socket answers.
    assert fcgi_client.fcgi_request(tcp_addr, "/health", headers={"Host": "x"}).status == 200
    status, _, _ = fcgi_client.scgi_request(unix_path, "/health", headers={"Host": "x"}, timeout=30)
    assert status == 200
    # WATCHDOG_USEC=400000: a ping at least every 200 ms.
    before = len([m for m in notify.messages if m == "WATCHDOG=1"])
    wait_until(lambda: (notify.poll(), len([m for m in notify.messages if m == "WATCHDOG=1"]) >= before + 3)[1],
               30, what="three WATCHDOG=1 pings")

    # SIGHUP (systemctl reload): RELOADING=1, then READY=1 again once the reload is done.
    proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", 30)
    assert "MONOTONIC_USEC=" in reloading[0]
    wait_until(lambda: (notify.poll(), [m.split("\n")[0] for m in notify.messages if not m.startswith("WATCHDOG")]
                        .count("READY=1") >= 2)[1], 30, what="READY=1 after the reload")

    proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", 30)
    assert proc.wait(30) == 0
    order = [m.split("\n")[0] for m in notify.messages if not m.startswith("WATCHDOG")]
    assert order.index("READY=1") < order.index("RELOADING=1") < order.index("STOPPING=1")


def test_unknown_socket_name_is_a_clear_error(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "50-test.yaml").write_text(to_yaml({
        "bridge": {"runtime-dir": str(tmp_path / "run")},
        "pools": {"edge": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, **ROOT_OK}},
        "listeners": {"front": {"fastcgi": "systemd:nope", "pool": "edge"}},
    }))
    env = dict(os.environ, NO_COLOR="1")
    for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(v, None)
    r = subprocess.run([str(bridge_binary()), "run", "--config", str(conf)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "systemd:nope: not started by systemd socket activation" in r.stderr, r.stderr


def test_ready_waits_for_a_broken_pool_only_its_own_startup_timeout(tmp_path):
    """A pool that cannot start (startup-timeout 3s) beside a healthy one with the default
    60s: READY=1 (naming the broken pool) comes once the broken pool's own startup-timeout
    has passed, not the longest of all pools'."""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    sock = tmp_path / "front.sock"
    (conf / "50-test.yaml").write_text(to_yaml({
        "bridge": {"log-level": "info", "runtime-dir": str(tmp_path / "run")},
        "pools": {
            "good": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, **ROOT_OK},
            "bad": {"app": "no_such_module:app", "processes": 1, "threads": 1, "startup-timeout": "3s", **ROOT_OK},
        },
        "listeners": {"front": {"fastcgi": f"unix:{sock}", "routes": [
            {"host": "bad", "pool": "bad"}, {"pool": "good"}]}},
    }))
    proc, notify, log = run_with_notify(tmp_path, conf)
    try:
        # Before the fix READY=1 came after the healthy pool's 60 s (+1 s).
        ready = notify.wait_for("READY=1", 45)
        assert "STATUS=serving; not ready: bad\n" in ready[0], ready
        log.wait_for("pools not ready after their startup-timeout: bad$", timeout=30)
        assert fcgi_client.fcgi_request(str(sock), "/health", headers={"Host": "x"}).status == 200
    finally:
        stop_process(proc)
        notify.close()


HELD_APP = """import os, time

# The worker's import waits while NAME.hold exists (NAME: the pool's HOLD).
HOLD = os.path.join(os.environ["HOLD_DIR"], os.environ["HOLD"] + ".hold")
while os.path.exists(HOLD):
    time.sleep(0.05)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [os.environ["HOLD"].encode()]
"""


def test_a_reload_before_ready_changes_the_pools_ready_waits_for(tmp_path):
    """A reload while the first pools still start: READY=1 is not sent at its end (the
    pools it waits for are not ready), nor RELOADING=1 (the start is not over); it comes
    once the pools as the reload left them serve — not the removed one, which never will,
    and only once the added one does."""
    app = tmp_path / "held_app.py"
    app.write_text(HELD_APP)
    for name in ("slow", "late"):
        (tmp_path / f"{name}.hold").write_text("")
    conf = tmp_path / "conf.d"
    conf.mkdir()
    sock = tmp_path / "front.sock"

    def held(name):
        return {"app": str(app), "processes": 1, "threads": 1, "env": {"HOLD": name, "HOLD_DIR": str(tmp_path)},
                **ROOT_OK}
    config = {
        "bridge": {"log-level": "info", "runtime-dir": str(tmp_path / "run")},
        "pools": {"fast": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, **ROOT_OK},
                  "slow": held("slow")},
        "listeners": {"front": {"fastcgi": f"unix:{sock}", "routes": [
            {"host": "slow", "pool": "slow"}, {"pool": "fast"}]}},
    }
    (conf / "50-test.yaml").write_text(to_yaml(config))
    proc, notify, log = run_with_notify(tmp_path, conf)
    try:
        wait_until(lambda: sock.exists() and fcgi_client.fcgi_request(str(sock), "/health",
                                                                      headers={"Host": "x"}).status == 200,
                   60, what="pool fast serving")
        # Pool slow removed, pool late (held too) added, before READY=1.
        del config["pools"]["slow"]
        config["pools"]["late"] = held("late")
        config["listeners"]["front"]["routes"] = [{"host": "late", "pool": "late"}, {"pool": "fast"}]
        (conf / "50-test.yaml").write_text(to_yaml(config))
        out = subprocess.run([str(bridge_binary()), "reload", "--config", str(conf)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "pools added: late; changed: none; removed: slow" in out.stdout, \
            (out.stdout, out.stderr)
        # The daemon answers once the reload is applied, after what it sends at its end.
        notify.poll()
        assert not [m for m in notify.messages if m.startswith(("READY=1", "RELOADING=1"))], notify.messages
        (tmp_path / "late.hold").unlink()
        ready = notify.wait_for("READY=1", 60)
        assert "STATUS=serving 2 pools\n" in ready[0], ready
        assert fcgi_client.fcgi_request(str(sock), "/", headers={"Host": "late"}).status == 200
        assert not [m for m in notify.messages if m.startswith("RELOADING=1")], notify.messages
    finally:
        stop_process(proc)
        notify.close()


POOL_NAME_APP = """import os


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [os.environ["FCGIBRIDGE_POOL"].encode()]
"""


def run_with_sockets(tmp_path, conf, log, socks, names):
    """`fcgibridge run` as systemd starts it: `socks` passed as fds 3, 4, … with
    LISTEN_FDNAMES `names` (fewer names than sockets: the rest are plain inherited fds),
    LISTEN_PID the daemon's own (a shell exports its $$ and execs it), no notify socket.
    Our copies of the sockets are closed once the daemon holds its own."""
    env = dict(os.environ, NO_COLOR="1", LISTEN_FDS=str(len(names)), LISTEN_FDNAMES=":".join(names))
    for v in ("LISTEN_PID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(v, None)
    fds = [s.fileno() for s in socks]

    def place_fds():
        high = [os.dup(fd) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)

    with open(log.path, "ab") as logf:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"',
             str(bridge_binary()), "run", "--config", str(conf)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
            pass_fds=tuple(range(3, 3 + len(fds))), preexec_fn=place_fds, start_new_session=True, cwd=tmp_path)
    for s in socks:
        s.close()
    return proc


def test_listeners_share_a_socket_unit_s_name_one_socket_each_across_a_reload(tmp_path):
    """A socket unit with two ListenStream= lines passes both sockets under one name: two
    listeners with that `systemd:` address take one each, in order, and keep them when a
    reload changes one of them (`check` refused the configuration, and a reload matched
    both to the first socket)."""
    paths, socks = [str(tmp_path / f"web{i}.sock") for i in (1, 2)], []
    for path in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(16)
        socks.append(s)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (tmp_path / "pool_name_app.py").write_text(POOL_NAME_APP)

    def write(second_max_connections):
        pool = {"app": str(tmp_path / "pool_name_app.py"), "processes": 1, "threads": 1, **ROOT_OK}
        (conf / "50-test.yaml").write_text(to_yaml({
            "bridge": {"log-level": "info", "runtime-dir": str(tmp_path / "run")},
            "pools": {"shop": pool, "blog": pool},
            "listeners": {
                "shop": {"fastcgi": "systemd:web", "pool": "shop"},
                "blog": {"fastcgi": "systemd:web", "pool": "blog", "max-connections": second_max_connections},
            },
        }))

    write(64)
    check = subprocess.run([str(bridge_binary()), "check", "--config", str(conf)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    log = LogFile(tmp_path / "bridge.log")
    proc = run_with_sockets(tmp_path, conf, log, socks, ["web", "web"])

    def answers():
        return [fcgi_client.fcgi_request(p, "/", headers={"Host": "x"}).body for p in paths]

    try:
        wait_until(lambda: answers() == [b"shop", b"blog"], 120, 0.25, what="each socket answering for its pool")
        mark = log.mark()
        write(32)
        proc.send_signal(signal.SIGHUP)
        log.wait_for(r"listeners added: none; changed: blog; removed: none", since=mark, timeout=60)
        assert answers() == [b"shop", b"blog"]
    finally:
        stop_process(proc)


def test_a_passed_socket_outlives_the_reload_that_removes_or_refuses_its_listener(tmp_path):
    """A `systemd:NAME` or `fd:N` listener removed by a reload, then added back by one that
    is refused (a port in use), then by one that is applied: the passed socket is still
    the daemon's each time (it was closed with the first listener, and a later reload was
    refused with "systemd passed no socket of that name")."""
    paths = {name: str(tmp_path / f"{name}.sock") for name in ("web", "extra", "plain")}
    socks = {}
    for name, path in paths.items():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(16)
        socks[name] = s
    conf = tmp_path / "conf.d"
    conf.mkdir()
    pool = {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, **ROOT_OK}
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()

    def write(*extra):
        listeners = {"front": {"fastcgi": "systemd:web", "pool": "edge"}}
        if "side" in extra:
            listeners["side"] = {"fastcgi": "systemd:extra", "pool": "edge"}
            listeners["plain"] = {"fastcgi": "fd:5", "pool": "edge"}
        if "busy" in extra:
            listeners["taken"] = {"fastcgi": f"127.0.0.1:{busy.getsockname()[1]}", "pool": "edge"}
        (conf / "50-test.yaml").write_text(to_yaml({
            "bridge": {"log-level": "info", "runtime-dir": str(tmp_path / "run")},
            "pools": {"edge": pool},
            "listeners": listeners,
        }))

    def reload():
        return subprocess.run([str(bridge_binary()), "reload", "--config", str(conf)], capture_output=True,
                              text=True, timeout=120)

    def answers(name):
        try:
            return fcgi_client.fcgi_request(paths[name], "/health", headers={"Host": "x"}).body == b"ok"
        except OSError:
            return False

    write("side")
    log = LogFile(tmp_path / "bridge.log")
    proc = run_with_sockets(tmp_path, conf, log, [socks[n] for n in ("web", "extra", "plain")], ["web", "extra"])
    try:
        wait_until(lambda: all(answers(n) for n in paths), 120, 0.25, what="every passed socket answering")
        write()
        r = reload()
        assert r.returncode == 0 and "removed: side, plain" in r.stdout, r.stdout + r.stderr
        write("side", "busy")
        r = reload()
        assert r.returncode != 0 and str(busy.getsockname()[1]) in r.stdout + r.stderr, r.stdout + r.stderr
        write("side")
        r = reload()
        assert r.returncode == 0 and "added: side, plain" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: all(answers(n) for n in paths), 60, 0.25, what="the passed sockets answering again")
        assert "panicked" not in log.text()
    finally:
        stop_process(proc)
        busy.close()

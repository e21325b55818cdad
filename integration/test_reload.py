"""Reload (SIGHUP, `fcgibridge reload`, SIGUSR2) with real processes (docs/supervision.md):
an invalid configuration is refused and the running one kept; changed pools roll their
workers, readiness-gated, without a failed request; unchanged pools are left alone;
listeners that stay keep their sockets; added and removed listeners and pools come and
go. Under load through real nginx: five reloads and a max-requests 50 pool, zero failures."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from harness import free_ports, nginx_conf, nginx_etc, pool, start_nginx, to_yaml, wait_until
from supervision_support import Background, Hammer, get, lc_pool, pid_of, start, worker_pids


def rewrite(b, mutate):
    """Change the bridge's configuration file (mutate edits b.config in place)."""
    mutate(b.config)
    (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))


def reload(b, sig=signal.SIGHUP, expect="reload done"):
    mark = b.log.mark()
    b.proc.send_signal(sig)
    return b.log.wait_for([expect], since=mark, timeout=30)


def tag_of(b, pool_name):
    r = get(b, pool_name, "/pid")
    assert r.status == 200, r.stdout[:200]
    return json.loads(r.body)["tag"]


def test_an_invalid_configuration_is_refused_and_the_running_one_kept(tmp_path):
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=2, env={"LIFECYCLE_TAG": "v1"})})
    try:
        before = worker_pids(b)
        good = (b.confdir / "50-test.yaml").read_text()
        (b.confdir / "50-test.yaml").write_text(good.replace("processes: 1", "procesess: 1"))
        lines = reload(b, expect="reload refused, the running configuration stays")
        assert 'did you mean "processes"' in lines[0], lines
        assert tag_of(b, "a") == "v1"
        assert worker_pids(b) == before
        # a YAML syntax error too
        (b.confdir / "50-test.yaml").write_text(good + "\n  broken: [\n")
        reload(b, expect="reload refused")
        assert tag_of(b, "a") == "v1"
        # fixed: the next reload applies
        (b.confdir / "50-test.yaml").write_text(good.replace('"v1"', '"v2"'))
        reload(b)
        wait_until(lambda: tag_of(b, "a") == "v2", 30, what="the new configuration serving")
    finally:
        b.stop()


def test_a_changed_pool_rolls_without_a_failed_request_and_others_stay(tmp_path):
    b = start(tmp_path, {
        "a": lc_pool(processes=2, threads=2, env={"LIFECYCLE_TAG": "v1"}),
        "b": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "same"}),
    })
    try:
        b_pid = pid_of(get(b, "b", "/pid"))
        a_before = {pid_of(get(b, "a", "/pid")) for _ in range(10)}
        hammer = Hammer(b, "a", n=4)
        wait_until(lambda: hammer.total >= 20, 60, what="requests flowing before the reload")
        rewrite(b, lambda c: c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v2"))
        reload(b)
        b.log.wait_for([r"rolling restart", 'pool="?a'])
        wait_until(lambda: tag_of(b, "a") == "v2", 30, what="pool a on its new configuration")
        # every old worker retired once a new one was ready
        wait_until(lambda: not (worker_pids(b) & a_before), 30, what="the old workers of a gone")
        after_roll = hammer.total
        wait_until(lambda: hammer.total >= max(after_roll + 20, 60), 60, what="requests after the roll")
        hammer.stop()
        assert hammer.errors == [], hammer.errors[:3]
        assert set(hammer.statuses) == {200}, hammer.statuses
        assert hammer.total > 50
        # pool b was not touched
        assert pid_of(get(b, "b", "/pid")) == b_pid
        # readiness-gated: "retiring the worker: reload" comes after a "worker ready" of a new one
        lines = b.log.lines()
        first_retire = next(i for i, ln in enumerate(lines) if "retiring the worker: reload" in ln)
        first_new_ready = next(i for i, ln in enumerate(lines)
                               if "worker ready" in ln and not any(f"pid={p}" in ln for p in a_before | {b_pid}))
        assert first_new_ready < first_retire
    finally:
        b.stop()


def listen_backlogs() -> dict:
    """Local address -> the backlog of every listening TCP and unix socket (`ss`: Send-Q)."""
    out = subprocess.run(["ss", "-ltxnH"], capture_output=True, text=True, timeout=30).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if "LISTEN" in fields:
            at = fields.index("LISTEN")
            found[fields[at + 3]] = int(fields[at + 2])
    return found


def test_a_reload_applies_a_changed_backlog_to_the_kept_socket(tmp_path):
    port = free_ports(1)[0]
    sock = tmp_path / "u.sock"
    listeners = {"l-a": {"fastcgi": f"127.0.0.1:{port}", "pool": "a", "backlog": 100},
                 "l-u": {"fastcgi": f"unix:{sock}", "pool": "a", "backlog": 100}}
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1)}, listeners=listeners)
    try:
        tcp = f"127.0.0.1:{port}"
        assert listen_backlogs()[tcp] == 100 and listen_backlogs()[str(sock)] == 100, listen_backlogs()
        before = b.proc.pid

        def change(c):
            for name in ("l-a", "l-u"):
                c["listeners"][name]["backlog"] = 500
        rewrite(b, change)
        lines = reload(b)
        assert listen_backlogs()[tcp] == 500 and listen_backlogs()[str(sock)] == 500, listen_backlogs()
        b.log.wait_for([r"reload: backlog now 500", r"listener\W+l-a"])
        assert b.proc.pid == before and lines
        assert get(b, "a", "/health").status == 200
    finally:
        b.stop()


def test_listeners_keep_their_sockets_and_listeners_and_pools_come_and_go(tmp_path):
    b = start(tmp_path, {
        "a": lc_pool(processes=1, threads=2),
        "gone": lc_pool(processes=1, threads=2),
    })
    try:
        addr_a = b.listener_address("l-a")
        refused = []
        connected = [0]
        stop = threading.Event()

        def connect_loop():
            while not stop.is_set():
                try:
                    socket.create_connection(addr_a, timeout=5).close()
                    connected[0] += 1
                except OSError as e:
                    refused.append(repr(e))
                time.sleep(0.002)

        t = threading.Thread(target=connect_loop, daemon=True)
        t.start()
        # a request in flight on the pool about to be removed, held until the reload is done
        in_flight = Background(lambda: get(b, "gone", "/hold", "mark=inflight"))
        wait_until(lambda: (tmp_path / "inflight.started").exists(), 60, what="the request on pool gone running")
        new_port = free_ports(1)[0]
        gone_addr = b.listener_address("l-gone")

        def change(c):
            del c["pools"]["gone"]
            del c["listeners"]["l-gone"]
            c["pools"]["new"] = lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "new",
                                                                     "FCGIBRIDGE_TEST_DIR": str(tmp_path)},
                                        **({"allow-root": True} if os.geteuid() == 0 else {}))
            c["listeners"]["l-new"] = {"fastcgi": f"127.0.0.1:{new_port}", "pool": "new"}
        rewrite(b, change)
        lines = reload(b)
        assert "pools added: new" in lines[0] and "removed: gone" in lines[0], lines
        assert "listeners added: l-new" in lines[0], lines
        # the removed pool finished its request
        (tmp_path / "inflight.release").write_text("")
        assert in_flight.result().status == 200
        wait_until(lambda: tag_of(b, "new") == "new", 30, what="the new pool through the new listener")
        # the removed listener no longer accepts
        wait_until(lambda: not _connects(gone_addr), 10, what="the removed listener closed")
        # the removed pool's workers say why they stop: the bridge itself keeps running
        b.log.wait_for([r"pool removed by reload: finishing its requests", 'pool="gone"'])
        stopped = b.log.wait_for([r"worker stopped \(", 'pool="gone"'])
        assert all("worker stopped (pool removed by reload)" in ln for ln in stopped), stopped
        after = connected[0]
        wait_until(lambda: connected[0] >= after + 50, 60, what="connections to l-a after the reload")
        stop.set()
        t.join(10)
        assert refused == [], refused[:3]
        assert get(b, "a", "/pid").status == 200
    finally:
        b.stop()


def _connects(addr) -> bool:
    try:
        socket.create_connection(addr, timeout=2).close()
        return True
    except OSError:
        return False


def test_a_kept_connection_follows_the_new_routes(tmp_path):
    import fcgi_client as fc
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "a"}),
                         "b": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "b"})})
    try:
        with fc.FcgiConnection(b.listener_address("l-a"), timeout=30) as conn:
            r = conn.request("/pid", request_id=1)
            assert json.loads(r.body)["tag"] == "a"
            rewrite(b, lambda c: c["listeners"]["l-a"].update(pool="b"))
            reload(b)
            r = conn.request("/pid", request_id=1)
            assert json.loads(r.body)["tag"] == "b", "a kept-alive connection still used the old routes"
    finally:
        b.stop()


def test_sigusr2_restarts_every_pool_and_a_reload_fixes_a_broken_pool(tmp_path):
    b = start(tmp_path, {"a": lc_pool(processes=2, threads=1),
                         "broken": lc_pool(processes=1, threads=1, env={"LIFECYCLE_BROKEN": "1"})}, wait=False)
    try:
        wait_until(lambda: get(b, "a", "/pid").status == 200, 30, what="pool a")
        assert get(b, "broken", "/pid").status == 503
        before = worker_pids(b)
        rewrite(b, lambda c: c["pools"]["broken"]["env"].pop("LIFECYCLE_BROKEN"))
        mark = b.log.mark()
        reload(b, sig=signal.SIGUSR2)
        wait_until(lambda: get(b, "broken", "/pid").status == 200, 30, what="the fixed pool serving")
        wait_until(lambda: not (worker_pids(b) & before), 30, what="every worker restarted")
        # pool a's configuration did not change: its workers go for the restart asked for
        retired = b.log.wait_for([r"retiring the worker: ", 'pool="a"'], since=mark)
        assert all("retiring the worker: restart requested (reload --restart-workers or SIGUSR2);" in ln for ln in retired), retired
    finally:
        b.stop()


ROLLOUT_APP = """import json, os


def application(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_a_restart_whose_new_code_cannot_be_imported_backs_off_and_the_status_says_so(tmp_path):
    app = tmp_path / "rollout_app.py"
    app.write_text(ROLLOUT_APP)
    b = start(tmp_path, {"r": pool(str(app), processes=2, threads=1)})
    try:
        # Both ready, not only started: one still importing would read the broken code.
        wait_until(lambda: b.pool_status("r")["idle_workers"] == 2, 60, what="both workers ready")
        olds = worker_pids(b)
        # a deploy of code that cannot be imported, then SIGUSR2 (the configuration is as it was)
        app.write_text("raise ImportError('rollout-test: the new code cannot be imported')\n")
        mark = b.log.mark()
        reload(b, sig=signal.SIGUSR2)
        # the new workers' failures back off 0.5 s, 1 s, 2 s, 4 s…: the old worker, healthy
        # and serving, does not reset the backoff (it used to, every second: a retry every
        # 0.5-1 s for ever)
        b.log.wait_for([r"restarting the worker in 4s", 'pool="r"'], since=mark, timeout=60)
        lines = [ln for ln in b.log.lines(mark) if 'pool="r"' in ln]
        failures = [ln for ln in lines if "worker failed to start" in ln]
        assert 3 <= len(failures) <= 6, failures
        # each attempt replaces one of the two old workers, at its index: never a third
        # index (a failed replacement once left its old worker counted as replaced)
        indexes = {int(m.group(1)) for ln in lines for m in [re.search(r"\bindex=(\d+)", ln)] if m}
        assert indexes and indexes <= {0, 1}, lines
        # the old workers serve on, and the status says the rollout fails
        assert pid_of(get(b, "r", "/")) in olds
        st = b.pool_status("r")
        assert st["state"] == "rollout-failing", st
        # fixed code and SIGUSR2 again: the rollout completes, the old workers go as asked
        app.write_text(ROLLOUT_APP)
        mark = b.log.mark()
        reload(b, sig=signal.SIGUSR2)
        wait_until(lambda: not (worker_pids(b) & olds), 90, what="workers of the fixed code serving")
        for old in olds:
            b.log.wait_for([r"retiring the worker: restart requested \(reload --restart-workers or SIGUSR2\)",
                            f"pid={old}"], since=mark)
        wait_until(lambda: b.pool_status("r")["state"] == "running", 30, what="the pool running again")
    finally:
        b.stop()


def test_fcgibridge_reload_command(tmp_path):
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "v1"})})
    try:
        rewrite(b, lambda c: c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v2"))
        mark = b.log.mark()
        out = subprocess.run([str(b.binary), "reload", "--config", str(b.confdir)], capture_output=True, text=True,
                             timeout=60)
        # answered with the outcome, once the reload is applied
        assert out.returncode == 0 and out.stdout.startswith("reload done: pools added: none; changed: a;"), \
            (out.stdout, out.stderr)
        b.log.wait_for(["reload done"], since=mark)
        wait_until(lambda: tag_of(b, "a") == "v2", 30, what="reloaded through `fcgibridge reload`")
        # --restart-workers: the configuration is as it was, every worker is replaced (SIGUSR2).
        old = pid_of(get(b, "a", "/pid"))
        mark = b.log.mark()
        out = subprocess.run([str(b.binary), "reload", "--restart-workers", "--config", str(b.confdir)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.startswith(
            "reload done: pools added: none; changed: none; removed: none; restarted: a;"), (out.stdout, out.stderr)
        b.log.wait_for([r"retiring the worker: restart requested \(reload --restart-workers or SIGUSR2\)", f"pid={old}"], since=mark)
        wait_until(lambda: pid_of(get(b, "a", "/pid")) != old, 60, what="a new worker after --restart-workers")
    finally:
        b.stop()


def test_a_log_directory_that_went_is_a_warning_at_a_reload_not_a_refusal(tmp_path):
    """The access log's directory is removed under the running daemon (a logrotate mishap).
    `check` and a start refuse that configuration, but log paths take effect only at a
    restart: a reload warns (file:line: key, and that the next restart fails) and applies
    its other changes."""
    logs = tmp_path / "logs"
    logs.mkdir()
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "v1"})},
              bridge_extra={"access-log": str(logs / "access.log")})
    try:
        assert tag_of(b, "a") == "v1"
        shutil.rmtree(logs)
        rewrite(b, lambda c: c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v2"))
        mark = b.log.mark()
        out = cli_reload(b, timeout=60)
        conf, gone = re.escape(str(b.confdir)), re.escape(str(logs))
        warning = (f"{conf}/50-test.yaml:\\d+:\\d+: warning: bridge.access-log: cannot open access log "
                   f"{gone}/access.log: directory {gone} does not exist; create it before the bridge starts "
                   r"\(systemd: LogsDirectory=\); the reload goes ahead \(log paths take effect at the next "
                   r"restart\), but that restart fails until this is fixed")
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert re.match(r"reload done: pools added: none; changed: a;.*; " + warning, out.stdout), out.stdout
        # Logged once, at WARN (which says "warning" already), and counted by the outcome line.
        logged = warning.replace(": warning: ", ": ", 1)
        b.log.wait_for([r"WARN", "reload: " + logged], since=mark)
        b.log.wait_for([r"reload done: pools added: none; changed: a;.*; 1 warning \(logged above\)$"], since=mark)
        assert not [ln for ln in b.log.lines(mark) if "reload done" in ln and "bridge.access-log" in ln]
        wait_until(lambda: tag_of(b, "a") == "v2", 30, what="the reload's other change serving")
        check = subprocess.run([str(b.binary), "check", "--config", str(b.confdir)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 1 and "bridge.access-log: cannot open access log" in check.stderr, check.stderr
    finally:
        b.stop()


def test_restart_needed_names_what_differs_from_what_the_daemon_started_with(tmp_path):
    """A bridge setting that applies at a restart only is compared with the one the daemon
    runs with, not with the last reload's: set back, it needs no restart."""
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1)})
    try:
        rewrite(b, lambda c: c["bridge"].update({"log-level": "debug"}))
        out = cli_reload(b, timeout=60)
        assert out.returncode == 0 and out.stdout.rstrip().endswith("restart needed for bridge.log-level"), out.stdout
        rewrite(b, lambda c: c["bridge"].update({"log-level": "warn,fcgibridge=info", "log-format": "json"}))
        out = cli_reload(b, timeout=60)
        assert out.returncode == 0 and "restart needed for bridge.log-level, bridge.log-format" in out.stdout, \
            out.stdout
        rewrite(b, lambda c: c["bridge"].update({"log-level": "info", "log-format": "text"}))
        out = cli_reload(b, timeout=60)
        assert out.returncode == 0 and "restart needed" not in out.stdout, out.stdout
    finally:
        b.stop()


def test_a_worker_superseded_while_it_starts_is_said_stopped(tmp_path):
    """A reload while the last one's new worker still imports its app: that worker is of
    no use any more and is stopped, with a line that says so (it started, so it must end)."""
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "v1"})})
    try:
        rewrite(b, lambda c: c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v2", LIFECYCLE_IMPORT_SLEEP="60"))
        mark = b.log.mark()
        assert cli_reload(b, timeout=60).returncode == 0
        (started,) = b.log.wait_for([r"worker started pool=\"a\""], since=mark)
        slow = re.search(r"\bpid=(\d+)", started).group(1)
        rewrite(b, lambda c: c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v3", LIFECYCLE_IMPORT_SLEEP=""))
        assert cli_reload(b, timeout=60).returncode == 0
        b.log.wait_for([rf"worker stopped before it was ready \(.+\) pool=\"a\" pid={slow} "], since=mark)
        wait_until(lambda: tag_of(b, "a") == "v3", 60, what="the third configuration serving")
    finally:
        b.stop()


def test_a_touched_file_restarts_the_pool_s_workers_rolling_without_a_failed_request(tmp_path):
    """touch-reload: a deploy touches a file; the pool's workers are replaced, rolling, as
    for `reload --restart-workers`, and the other pool keeps its worker."""
    stamp = tmp_path / "deploy" / "reload.txt"
    b = start(tmp_path, {
        "a": lc_pool(processes=2, threads=2, **{"touch-reload": [str(stamp), str(tmp_path / "other.txt")]}),
        "b": lc_pool(processes=1, threads=1),
    })
    try:
        b_pid = pid_of(get(b, "b", "/pid"))
        a_before = {pid_of(get(b, "a", "/pid")) for _ in range(10)}
        hammer = Hammer(b, "a", n=4)
        wait_until(lambda: hammer.total >= 20, 60, what="requests flowing before the touch")
        mark = b.log.mark()
        # Created: a file that did not exist at the start counts as touched.
        stamp.parent.mkdir()
        stamp.write_text("")
        b.log.wait_for([rf"touch-reload: {re.escape(str(stamp))} changed; restarting the workers", 'pool="a"'],
                       since=mark, timeout=30)
        b.log.wait_for([r"retiring the worker: touch-reload \(a watched file changed\)", 'pool="a"'], since=mark)
        wait_until(lambda: not (worker_pids(b) & a_before), 60, what="the old workers of a gone")
        after_roll = hammer.total
        wait_until(lambda: hammer.total >= after_roll + 20, 60, what="requests after the roll")
        # Touched again (its time only): the new workers go too.
        a_second = {pid_of(get(b, "a", "/pid")) for _ in range(10)}
        mark = b.log.mark()
        os.utime(stamp, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        b.log.wait_for([r"touch-reload: .* changed", 'pool="a"'], since=mark, timeout=30)
        wait_until(lambda: not (worker_pids(b) & a_second), 60, what="the second workers of a gone")
        hammer.stop()
        assert hammer.errors == [], hammer.errors[:3]
        assert set(hammer.statuses) == {200}, hammer.statuses
        assert pid_of(get(b, "b", "/pid")) == b_pid, "pool b watches nothing"
        # Two rolls of two workers; the status page is sampled, and the last may still drain.
        wait_until(lambda: b.pool_status("a")["worker_exits"] >= 4, 60, what="four workers retired")
    finally:
        b.stop()


VERSIONED_APP = """\
import json, os
VERSION = open(os.path.join(os.path.dirname(__file__), "version.txt")).read()  # read at import


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"pid": os.getpid(), "version": VERSION}).encode()]
"""


@pytest.mark.parametrize("preload", [False, True])
def test_touch_reload_loads_the_new_code(tmp_path, preload):
    """A deploy rewrites the file the app reads at import and which touch-reload names:
    the new workers run the new code, a preloaded pool's too (its template imports it anew)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "app.py").write_text(VERSIONED_APP)
    version = site / "version.txt"
    version.write_text("v1")
    b = start(tmp_path, {"a": {"app": str(site / "app.py"), "processes": 2, "threads": 1, "preload": preload,
                               "touch-reload": str(version)}})
    try:
        served = lambda: json.loads(get(b, "a", "/").body)["version"]  # noqa: E731
        assert served() == "v1"
        version.write_text("v2")
        os.utime(version, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        wait_until(lambda: served() == "v2", 60, what="the new code served")
        wait_until(lambda: {served() for _ in range(8)} == {"v2"}, 60, what="only the new code served")
    finally:
        b.stop()


NOTHING_CHANGED = ("nothing changed (a reload loads no new application code: restart the workers with fcgibridge "
                   "reload --restart-workers POOL, or SIGUSR2)")


def test_a_reload_that_changes_nothing_says_how_to_load_new_code(tmp_path):
    """uWSGI's SIGHUP and mod_wsgi's graceful Apache restart loaded new code; the bridge's
    SIGHUP reloads the configuration only (docs/migration.md). A reload that finds it as it
    was says so, and what loads new code, on the line a script greps as before."""
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "v1"})})
    try:
        before = worker_pids(b)
        line = reload(b)[0]  # SIGHUP
        assert "reload done: pools added: none; changed: none; removed: none; templates changed: none; removed: " \
               "none; listeners added: none; changed: none; removed: none; " + NOTHING_CHANGED in line, line
        out = cli_reload(b, "--wait", timeout=120)
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert out.stdout == (f"reload done: pools added: none; changed: none; removed: none; templates changed: none; "
                              f"removed: none; listeners added: none; changed: none; removed: none; {NOTHING_CHANGED}\n"
                              "rollout done: no pool changed\n"), out.stdout
        # said once the daemon was reached
        assert out.stderr == "fcgibridge: reloading, then waiting for the rolling restarts to finish\n", out.stderr
        assert worker_pids(b) == before
        # A change, or new code asked for: no such note.
        rewrite(b, lambda c: c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v2"))
        out = cli_reload(b, timeout=120)
        assert out.stdout.startswith("reload done: pools added: none; changed: a;"), out.stdout
        assert "nothing changed" not in out.stdout
        out = cli_reload(b, "--restart-workers", "a", timeout=120)
        assert out.stdout.startswith("reload done: pools added: none; changed: none; removed: none; restarted: a;"), \
            out.stdout
        assert "nothing changed" not in out.stdout
    finally:
        b.stop()


def test_reload_wait_says_it_waits_only_once_it_reached_the_daemon(tmp_path):
    """`fcgibridge reload --wait` announces the wait only when there is a daemon to wait for:
    not for a missing configuration, one without a control socket, or a socket nobody serves."""
    from harness import APPS, bridge_binary
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "app.yaml").write_text(f"pools:\n  a:\n    app: {APPS / 'edge_app.py'}\n"
                                    "listeners:\n  l: {fastcgi: 127.0.0.1:1, pool: a}\n")
    cases = [
        (["--config", str(tmp_path / "missing")], 2, "cannot read the configuration directory"),
        (["--config", str(confd)], 2, "no control socket: set bridge.control-socket or bridge.runtime-dir"),
        (["--socket", str(tmp_path / "nobody.sock")], 1, "cannot reach the daemon at"),
    ]
    for args, code, says in cases:
        r = subprocess.run([str(bridge_binary()), "reload", "--restart-workers", "--wait", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == code and says in r.stderr, (args, r.returncode, r.stderr)
        assert "waiting" not in r.stderr, (args, r.stderr)


def test_under_systemd_a_reload_whose_control_socket_moved_falls_back_to_sighup(tmp_path):
    """`ExecReload=fcgibridge reload`: the edit being reloaded moves the runtime-dir (it
    applies only at a restart), so the client finds no daemon at the new socket; with
    systemd's $MAINPID it sends SIGHUP instead, as the unit did before, and says so."""
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "v1"})})
    try:
        def edit(c):
            c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v2")
            c["bridge"]["runtime-dir"] = str(tmp_path / "moved")
        rewrite(b, edit)
        # without $MAINPID nothing is reachable: a failure, nothing reloaded
        out = cli_reload(b, timeout=60)
        assert out.returncode == 1 and "cannot reach the daemon at" in out.stderr, (out.stdout, out.stderr)
        assert tag_of(b, "a") == "v1"
        out = subprocess.run([str(b.binary), "reload", "--config", str(b.confdir)], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "MAINPID": str(b.pid)})
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert f"sent SIGHUP to the bridge (pid {b.pid}, $MAINPID) instead" in out.stderr, out.stderr
        wait_until(lambda: tag_of(b, "a") == "v2", 60, what="the pool reloaded by the SIGHUP")
    finally:
        b.stop()


def cli_reload(b, *args, timeout=300):
    return subprocess.run([str(b.binary), "reload", *args, "--config", str(b.confdir)], capture_output=True,
                          text=True, timeout=timeout)


def test_fcgibridge_reload_fails_when_the_daemon_refuses_the_reload(tmp_path):
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1), "b": lc_pool(processes=1, threads=1)})
    held = socket.socket()
    try:
        before = worker_pids(b)
        # A listener on an address another process holds: the daemon refuses the reload.
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        rewrite(b, lambda c: c["listeners"].update({"extra": {"fastcgi": f"127.0.0.1:{port}", "pool": "a"}}))
        out = cli_reload(b)
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert out.stdout == ""
        assert out.stderr.startswith("fcgibridge: reload refused, the running configuration stays: listener extra: "
                                     f"127.0.0.1:{port}: "), out.stderr
        # --restart-workers with a name that is no pool: refused, the pools listed, nothing restarted
        rewrite(b, lambda c: c["listeners"].pop("extra"))
        out = cli_reload(b, "--restart-workers", "a", "shop")
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert 'no pool or template named "shop"; pools: a, b' in out.stderr, out.stderr
        assert worker_pids(b) == before
    finally:
        held.close()
        b.stop()


def test_fcgibridge_reload_of_a_pool_with_an_unknown_user_is_refused_by_the_daemon(tmp_path):
    """The client cannot load the edited configuration either (no such user); it still finds
    the control socket, says the configuration has errors, and the daemon's refusal is the
    outcome: exit 1, the running configuration kept (docs/operator-guide.md)."""
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=1, env={"LIFECYCLE_TAG": "v1"})})
    try:
        before = worker_pids(b)

        def edit(c):
            c["pools"]["a"]["env"].update(LIFECYCLE_TAG="v2")
            c["pools"]["ghost"] = lc_pool(processes=1, threads=1, user="ghostuser")
        rewrite(b, edit)
        out = cli_reload(b)
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert out.stdout == ""
        warning, refusal = out.stderr.split("\n", 1)
        assert warning == (f"fcgibridge: the configuration in {b.confdir} has errors (`fcgibridge check` shows them); "
                           f"using the control socket it names, {b.config['bridge']['runtime-dir']}/control.sock"), out.stderr
        assert refusal.startswith("fcgibridge: reload refused, the running configuration stays: "), out.stderr
        assert 'pools.ghost.user: no such user "ghostuser"' in refusal, out.stderr
        assert tag_of(b, "a") == "v1"
        assert worker_pids(b) == before
    finally:
        b.stop()


def test_reload_wait_reports_a_broken_deploy_and_returns_once_a_good_one_serves(tmp_path):
    app = tmp_path / "rollout_app.py"
    app.write_text(ROLLOUT_APP)
    b = start(tmp_path, {"r": pool(str(app), processes=2, threads=1)})
    try:
        wait_until(lambda: b.pool_status("r")["idle_workers"] == 2, 60, what="both workers ready")
        old = worker_pids(b)
        assert len(old) == 2
        # A deploy of code with a syntax error: the wait ends at the first failed start.
        app.write_text(ROLLOUT_APP + "\ndef broken(:\n")
        out = cli_reload(b, "--restart-workers", "--wait")
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert out.stderr.count("\n") >= 3, out.stderr
        first, rest = out.stderr.split("\n", 2)[1:]
        assert first.startswith("fcgibridge: reload done: pools added: none; changed: none; removed: none; "
                                "restarted: r;"), out.stderr
        assert rest.startswith("pool r: rollout-failing: its new workers cannot start, the previous ones serve on"), \
            out.stderr
        assert "worker failed to start: " in rest and "SyntaxError" in rest, out.stderr
        # the error the log has, and `fcgibridge status` shows it too
        failed = [ln for ln in b.log.lines() if "worker failed to start: " in ln and 'pool="r"' in ln]
        assert failed and "SyntaxError" in failed[-1], failed
        st = subprocess.run([str(b.binary), "status", "--config", str(b.confdir)], capture_output=True, text=True,
                            timeout=60)
        assert "pool r (rollout-failing): worker failed to start: " in st.stdout, st.stdout
        # The old workers serve on; one that exits is not replaced (its successor would run
        # the new code, which cannot start): the pool shrinks.
        assert pid_of(get(b, "r", "/")) in old
        victim = min(old)
        mark = b.log.mark()
        os.kill(victim, signal.SIGKILL)
        b.log.wait_for([r"worker exited: killed by signal 9", f"pid={victim}"], since=mark, timeout=60)
        b.log.wait_for([r"worker failed to start", 'pool="r"'], since=mark, timeout=90)
        st = b.pool_status("r")
        assert st["state"] == "rollout-failing", st
        assert [w["pid"] for w in st["workers"] if w["state"] in ("idle", "busy")] == [max(old)], st["workers"]
        # Fixed code: --wait returns 0 once every worker that takes requests is new.
        app.write_text(ROLLOUT_APP)
        out = cli_reload(b, "--restart-workers", "--wait=3m")
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert out.stdout.startswith("reload done: pools added: none; changed: none; removed: none; restarted: r;"), \
            out.stdout
        assert out.stdout.endswith("\nrollout done: r (2 workers ready)\n"), out.stdout
        served = {pid_of(get(b, "r", "/")) for _ in range(10)}
        assert not served & old, (served, old)
        assert b.pool_status("r")["state"] == "running"
    finally:
        b.stop()


def test_restart_workers_of_one_pool_leaves_the_others_alone(tmp_path):
    b = start(tmp_path, {"a": lc_pool(processes=2, threads=1), "b": lc_pool(processes=2, threads=1)})
    try:
        def pids(name):
            return {w["pid"] for w in b.pool_status(name)["workers"]}
        wait_until(lambda: all(b.pool_status(p)["idle_workers"] == 2 for p in "ab"), 60, what="every worker ready")
        a_old, b_old = pids("a"), pids("b")
        mark = b.log.mark()
        out = cli_reload(b, "--restart-workers", "a", "--wait")
        assert out.returncode == 0, (out.stdout, out.stderr)
        # Restarted as asked, not changed: pool a's configuration is as it was.
        assert out.stdout.startswith("reload done: pools added: none; changed: none; removed: none; restarted: a; "
                                     "templates changed: none;"), out.stdout
        assert out.stdout.endswith("\nrollout done: a (2 workers ready)\n"), out.stdout
        wait_until(lambda: not pids("a") & a_old, 60, what="pool a's old workers gone")
        assert pids("b") == b_old
        assert not [ln for ln in b.log.lines(mark) if 'pool="b"' in ln and "retiring the worker" in ln]
        assert pid_of(get(b, "b", "/pid")) in b_old
    finally:
        b.stop()


# ---------------------------------------------------------------- under load, through nginx

NGINX_HTTP = """
    upstream reloaded {{ server {tcp}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port_a};
        location / {{
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME ""; fastcgi_param PATH_INFO $fastcgi_script_name;
            fastcgi_keep_conn on;
            fastcgi_pass reloaded;
        }}
    }}
    server {{
        listen 127.0.0.1:{port_b};
        location / {{
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME ""; fastcgi_param PATH_INFO $fastcgi_script_name;
            fastcgi_pass unix:{unix};
        }}
    }}
"""


def _wrk(url: str, seconds: int) -> subprocess.Popen:
    # wrk counts a request slower than its 2 s default as a socket error; this test is about
    # failed requests, and a loaded machine may make one slow.
    return subprocess.Popen(["wrk", "-t2", "-c16", f"-d{seconds}s", "--timeout", "30s", "--latency", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_under_load_through_nginx_five_reloads_and_max_requests_50_fail_nothing(tmp_path):
    tcp_port, http_a, http_b = free_ports(3)
    unix = tmp_path / "mr.sock"
    pools = {
        "rl": lc_pool(processes=2, threads=4, env={"LIFECYCLE_TAG": "gen0"}),
        "mr": lc_pool(processes=2, threads=4, **{"max-requests": 50}),
    }
    listeners = {
        "l-rl": {"fastcgi": f"127.0.0.1:{tcp_port}", "pool": "rl"},
        "l-mr": {"fastcgi": f"unix:{unix}", "pool": "mr"},
    }
    b = start(tmp_path, pools, listeners=listeners, wait=False, bridge_extra={"access-log": str(tmp_path / "access.log")})
    nginx = None
    try:
        b.wait_ready([("l-rl", "/health", "x"), ("l-mr", "/health", "x")])
        ndir = tmp_path / "nginx"
        ndir.mkdir()
        conf = ndir / "nginx.conf"
        conf.write_text(nginx_conf(ndir, NGINX_HTTP.format(
            etc=nginx_etc(), tcp=f"127.0.0.1:{tcp_port}", unix=unix, port_a=http_a, port_b=http_b)))
        nginx = start_nginx(ndir, conf)
        import requests
        wait_until(lambda: requests.get(f"http://127.0.0.1:{http_a}/health", timeout=5).status_code == 200, 30)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{http_b}/health", timeout=5).status_code == 200, 30)

        mark = b.log.mark()
        seconds = 14
        load_a = _wrk(f"http://127.0.0.1:{http_a}/pid", seconds)
        load_b = _wrk(f"http://127.0.0.1:{http_b}/pid", seconds)
        time.sleep(1.5)
        for gen in range(1, 6):
            rewrite(b, lambda c, g=gen: c["pools"]["rl"]["env"].update(LIFECYCLE_TAG=f"gen{g}"))
            reload(b)
            # the next reload after this one has rolled (a reload during a roll is fine too,
            # but five complete rolls is the claim)
            wait_until(lambda g=gen: requests.get(f"http://127.0.0.1:{http_a}/pid", timeout=10).json()["tag"]
                       == f"gen{g}", 30, what=f"reload {gen} serving")
            time.sleep(0.8)
        out_a, _ = load_a.communicate(timeout=120)
        out_b, _ = load_b.communicate(timeout=120)
        for out in (out_a, out_b):
            assert "Non-2xx" not in out, out
            assert "Socket errors" not in out, out
            m = re.search(r"(\d+) requests in", out)
            assert m and int(m.group(1)) > 1000, out
        rolled = [ln for ln in b.log.lines(mark) if "rolling restart" in ln]
        assert len(rolled) == 5, rolled
        recycled = [ln for ln in b.log.lines(mark) if "retiring the worker: max-requests" in ln]
        assert len(recycled) >= 5, "the max-requests pool hardly recycled under load"
        trouble = [ln for ln in (ndir / "nginx-error.log").read_text().splitlines()
                   if any(t in ln for t in ("upstream prematurely closed", "connect() failed", "recv() failed",
                                             "writev() failed", "readv() failed"))]
        assert trouble == [], trouble[:5]
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGTERM)
            try:
                nginx.wait(20)
            except subprocess.TimeoutExpired:
                nginx.kill()
        b.stop()


def test_a_listener_moved_to_another_address_is_said_moved_and_its_request_in_flight_finishes(tmp_path):
    """Same name, new `fastcgi:` address: the new socket is bound (before anything else
    changes), the old one stops accepting, and a request in flight on it is answered. The
    outcome line says so as one move, not as an added and a removed listener."""
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=2)})
    try:
        old_addr = b.listener_address("l-a")
        in_flight = Background(lambda: get(b, "a", "/hold", "mark=moving"))
        wait_until(lambda: (tmp_path / "moving.started").exists(), 60, what="the request on the old address running")
        new_port = free_ports(1)[0]
        rewrite(b, lambda c: c["listeners"]["l-a"].update(fastcgi=f"127.0.0.1:{new_port}"))
        out = cli_reload(b, timeout=60)
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert (f"listeners added: none; changed: none; removed: none; moved: l-a (127.0.0.1:{old_addr[1]} -> "
                f"127.0.0.1:{new_port})\n") in out.stdout, out.stdout
        b.log.wait_for([r"reload: listener moved: this address stops accepting", r"listener\W+l-a"])
        wait_until(lambda: not _connects(old_addr), 10, what="the old address closed")
        assert get(b, "a", "/pid").status == 200  # b.config names the new address now
        (tmp_path / "moving.release").write_text("")
        assert in_flight.result().status == 200
    finally:
        b.stop()


def _listeners_status(b):
    """{name: open connections} of the listeners, from `fcgibridge status --json`."""
    r = subprocess.run([str(b.binary), "status", "--json", "--config", str(b.confdir)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {ls["name"]: ls["open_connections"] for ls in json.loads(r.stdout)["listeners"]}


def test_a_renamed_listener_keeps_its_socket_and_a_swap_reads_as_two_moves(tmp_path):
    """A listener renamed on the same address keeps its socket and its connections: the
    outcome line says `renamed: OLD -> NEW` (not changed), and the status page shows it
    under its new name only, with its open connections. Two listeners that swap addresses
    keep the sockets too, each socket with the other's routes now; the line says both
    moved, by name, as the configuration reads."""
    import fcgi_client as fc
    b = start(tmp_path, {"a": lc_pool(processes=1, threads=2, env={"LIFECYCLE_TAG": "a"}),
                         "b": lc_pool(processes=1, threads=2, env={"LIFECYCLE_TAG": "b"})})
    first, second = b.listener_address("l-a"), b.listener_address("l-b")

    def tag_at(addr):
        with fc.FcgiConnection(addr, timeout=30) as conn:
            return json.loads(conn.request("/pid").body)["tag"]

    try:
        with fc.FcgiConnection(first, timeout=30) as kept:
            assert json.loads(kept.request("/pid", request_id=1).body)["tag"] == "a"
            spec = {"l-a": b.config["listeners"]["l-a"], "l-b": b.config["listeners"]["l-b"]}
            rewrite(b, lambda c: c.update(listeners={"web": spec["l-a"], "l-b": spec["l-b"]}))
            out = cli_reload(b, timeout=60)
            assert out.returncode == 0, (out.stdout, out.stderr)
            assert "listeners added: none; changed: none; removed: none; renamed: l-a -> web" in out.stdout, out.stdout
            wait_until(lambda: _listeners_status(b) == {"web": 1, "l-b": 0}, 30,
                       what="the renamed listener under its new name only, with its kept connection")
            assert json.loads(kept.request("/pid", request_id=1).body)["tag"] == "a"
            assert (tag_at(first), tag_at(second)) == ("a", "b")

            # The addresses swapped: each socket stays, under the other's name and routes.
            rewrite(b, lambda c: c.update(listeners={"web": {**spec["l-a"], "fastcgi": spec["l-b"]["fastcgi"]},
                                                     "l-b": {**spec["l-b"], "fastcgi": spec["l-a"]["fastcgi"]}}))
            out = cli_reload(b, timeout=60)
            assert out.returncode == 0, (out.stdout, out.stderr)
            # Said by name, as the configuration reads: each listener moved.
            assert re.search(r"listeners added: none; changed: none; removed: none; "
                             r"moved: web \(\S+ -> \S+\), l-b \(\S+ -> \S+\)", out.stdout), out.stdout
            assert "renamed" not in out.stdout, out.stdout
            wait_until(lambda: _listeners_status(b) == {"web": 0, "l-b": 1}, 30,
                       what="the kept connection counted under its socket's new name")
            assert (tag_at(first), tag_at(second)) == ("b", "a")
            assert json.loads(kept.request("/pid", request_id=1).body)["tag"] == "b", \
                "the kept connection did not follow its socket's new routes"
    finally:
        b.stop()


HELD_IMPORT_APP = """import json, os, time

# A worker's import waits while this file exists: a replacement held "starting".
HOLD = os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], "import.hold")
while os.path.exists(HOLD):
    time.sleep(0.05)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"pid": os.getpid(), "tag": os.environ.get("TAG", "")}).encode()]
"""


def test_a_restart_right_after_a_changing_reload_gives_the_workers_the_latest_reason(tmp_path):
    """A reload changes pool a's env: its worker is flagged for replacement ("reload
    (configuration changed)") while its replacement imports. `reload --restart-workers a`
    then: the outcome says restarted, not changed, and the old worker retires for the
    restart asked for, which also says its configuration changed."""
    app = tmp_path / "held_app.py"
    app.write_text(HELD_IMPORT_APP)
    b = start(tmp_path, {"a": pool(str(app), processes=1, threads=1, env={"TAG": "v1"})})
    try:
        old = pid_of(get(b, "a", "/"))
        (tmp_path / "import.hold").write_text("")
        rewrite(b, lambda c: c["pools"]["a"]["env"].update(TAG="v2"))
        mark = b.log.mark()
        out = cli_reload(b, timeout=60)
        assert out.stdout.startswith("reload done: pools added: none; changed: a; removed: none; templates"), \
            (out.stdout, out.stderr)
        # Its replacement is spawned once the old worker is flagged.
        b.log.wait_for([r"worker started", 'pool="?a'], since=mark)
        out = cli_reload(b, "--restart-workers", "a", timeout=60)
        assert out.stdout.startswith("reload done: pools added: none; changed: none; removed: none; restarted: a; "), \
            (out.stdout, out.stderr)
        (tmp_path / "import.hold").unlink()
        (retired,) = b.log.wait_for([r"retiring the worker: ", f"pid={old}"], since=mark, timeout=60)
        assert "retiring the worker: restart requested (reload --restart-workers or SIGUSR2; configuration changed);" \
            in retired, retired
        wait_until(lambda: json.loads(get(b, "a", "/").body)["tag"] == "v2", 60, what="the new worker serving")
    finally:
        b.stop()

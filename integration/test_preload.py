"""Preloaded templates (`preload: true`, docs/preload.md): workers forked from a process
that imported the app once, for a small app and for the Django test project."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from harness import APPS, free_ports, make_bridge, to_yaml, wait_until
from supervision_support import alive


def worker_pid(b) -> int:
    resp = b.request("/pid", pool="edge.test", listener="l")
    assert resp.status == 200, resp.stdout[:300]
    return json.loads(resp.body)["pid"]


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("preload")
    port = free_ports(1)[0]
    # an app that fails to import: its template reports the error
    broken = workdir / "broken_app.py"
    broken.write_text("raise ImportError('preload-test: this app cannot be imported')\n")
    pools = {
        "edge": {"app": str(APPS / "edge_app.py"), "processes": 2, "threads": 2, "preload": True,
                 "queue-timeout": "20s"},
        "dj": {"app": "mysite.wsgi:application", "chdir": str(APPS / "djproject"), "processes": 2,
               "threads": 2, "preload": True, "env": {"DJANGO_SETTINGS_MODULE": "mysite.settings"}},
        "broken": {"app": str(broken), "processes": 1, "threads": 1, "preload": True, "queue-timeout": "1s"},
    }
    routes = [{"host": f"{name}.test", "pool": name} for name in pools]
    b = make_bridge(workdir, pools, {"l": {"fastcgi": f"127.0.0.1:{port}", "routes": routes}})
    try:
        b.start()
        b.wait_ready([("l", "/health", "edge.test"), ("l", "/health/", "dj.test")], timeout=120)
        yield b
    finally:
        b.stop()


def template_pid(b, pool: str) -> int:
    lines = b.log.wait_for([r"template ready", rf"\b{pool}\b"], timeout=60)
    m = re.search(r"pid[=:\s\"]+(\d+)", lines[-1])
    assert m, lines[-1]
    return int(m.group(1))


def test_workers_are_forks_of_the_template(preloaded):
    b = preloaded
    tpl = template_pid(b, "edge")
    pids = set()
    for _ in range(20):
        pids.add(worker_pid(b))
        if len(pids) == 2:
            break
    assert pids, "no worker answered"
    for pid in pids:
        assert ppid_of(pid) == tpl, f"worker {pid} is not a child of the template {tpl}"
    # ps / pgrep -f tell the pools apart: the template's command line (its forks' too) names it.
    for pid in pids | {tpl}:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"# fcgibridge pool edge\n" in f.read(), pid


def test_django_through_forked_workers(preloaded):
    b = preloaded
    resp = b.request("/", pool="dj.test", listener="l")
    assert resp.status == 200, resp.stdout[:300]
    assert b"Django behind fcgibridge" in resp.body
    tpl = template_pid(b, "dj")
    # forked workers report ready quickly: the import happened once, in the template.
    # One request needs only one worker: wait for the other's line rather than assume it.
    def ready_times():
        times = []
        for line in b.log.lines():
            m = re.search(r"worker ready in ([\d.]+)(ms|s|µs)", line)
            if m and re.search(r"\bdj\b", line):
                times.append(float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "µs": 1e-6}[m.group(2)])
        return times

    wait_until(lambda: len(ready_times()) >= 2, 60, what="two ready lines for the dj pool")
    times = ready_times()
    assert max(times) < 2.0, f"forked Django workers took {times} s to become ready"
    assert tpl > 0


def test_killed_forked_worker_is_replaced(preloaded):
    b = preloaded
    tpl = template_pid(b, "edge")
    victim = worker_pid(b)
    mark = b.log.mark()
    os.kill(victim, 9)
    b.log.wait_for([r"worker exited", rf"\b{victim}\b", r"signal 9"], since=mark, timeout=30)
    b.log.wait_for([r"worker ready", r"\bedge\b"], since=mark, timeout=30)

    def fresh():
        pids = {worker_pid(b) for _ in range(6)}
        return victim not in pids and all(ppid_of(p) == tpl for p in pids)

    wait_until(fresh, 30, what="the replacement to serve (forked from the same template)")


def test_template_import_error_is_reported(preloaded):
    b = preloaded
    b.log.wait_for([r"broken", r"template failed to import the app", r"preload-test"], timeout=60)
    resp = b.request("/health", pool="broken.test", listener="l")
    assert resp.status == 503


def test_kill9_of_the_bridge_takes_template_and_workers_along(preloaded):
    """Runs last in this module: it kills the module's bridge."""
    b = preloaded
    tpl = template_pid(b, "edge")
    workers = {worker_pid(b) for _ in range(6)}
    b.proc.kill()
    b.proc.wait(10)

    def gone(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(p) for p in workers | {tpl}), 30,
               what="the template and its workers to die with the bridge")


@pytest.mark.parametrize("change", ["pool removed", "preload turned off", "restart all (SIGUSR2)"])
def test_reload_retires_a_template_no_longer_needed(tmp_path, change):
    """A template forks for one pool's settings: when the pool goes away (or stops
    preloading) on reload, the template exits with its last worker, not with the bridge.
    SIGUSR2 restarts every pool: a preloaded one gets a fresh template (its code re-imported),
    not new forks of the old one."""
    ports = free_ports(2)
    pools = {
        "keep": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1},
        "edge": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, "preload": True},
    }
    listeners = {"l": {"fastcgi": f"127.0.0.1:{ports[0]}", "routes": [{"host": f"{p}.test", "pool": p} for p in pools]}}
    b = make_bridge(tmp_path, pools, listeners)
    try:
        b.start()
        b.wait_ready([("l", "/health", "edge.test"), ("l", "/health", "keep.test")], timeout=120)
        tpl = template_pid(b, "edge")
        assert alive(tpl)
        if change == "pool removed":
            del b.config["pools"]["edge"]
            b.config["listeners"]["l"]["routes"] = [{"host": "keep.test", "pool": "keep"}]
        elif change == "preload turned off":
            b.config["pools"]["edge"]["preload"] = False
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGUSR2 if change.startswith("restart all") else signal.SIGHUP)
        b.log.wait_for(["reload done"], since=mark, timeout=30)
        b.log.wait_for([r"retiring the template \(", r"\bedge\b"], since=mark, timeout=30)
        wait_until(lambda: not alive(tpl), 30, what=f"the template {tpl} to exit after its pool's {change}")
        assert b.request("/health", pool="keep.test", listener="l").status == 200
        if change == "preload turned off":
            wait_until(lambda: b.request("/health", pool="edge.test", listener="l").status == 200, 30,
                       what="the pool to serve from plain workers")
            assert ppid_of(worker_pid(b)) == b.pid
        if change.startswith("restart all"):
            def forked_from_a_new_template():
                pid = worker_pid(b)
                return ppid_of(pid) not in (tpl, b.pid)
            wait_until(forked_from_a_new_template, 60, what="the pool to serve from a fresh template's forks")
    finally:
        b.stop()


@pytest.mark.parametrize("change", ["queue-size", "the listener's address", "env"])
def test_a_reload_keeps_the_template_unless_its_workers_see_the_change(tmp_path, change):
    """Settings the bridge reads (queue-size) or that only reword a worker's hint (the
    address of the listener leading to the pool) restart no worker: a worker started after
    such a reload is forked from the same template, its app not imported again. One its
    workers see (env) rolls them, forked from a new template."""
    ports = free_ports(3)
    pools = {"edge": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1, "preload": True}}
    listeners = {"l": {"fastcgi": f"127.0.0.1:{ports[0]}", "routes": [{"host": "edge.test", "pool": "edge"}]},
                 "m": {"fastcgi": f"127.0.0.1:{ports[1]}", "pool": "edge"}}
    b = make_bridge(tmp_path, pools, listeners)
    try:
        b.start()
        b.wait_ready([("l", "/health", "edge.test")], timeout=120)
        tpl = template_pid(b, "edge")
        victim = worker_pid(b)
        if change == "queue-size":
            b.config["pools"]["edge"]["queue-size"] = 7
        elif change == "env":
            b.config["pools"]["edge"]["env"] = {"PRELOAD_TEST": "1"}
        else:
            b.config["listeners"]["m"]["fastcgi"] = f"127.0.0.1:{ports[2]}"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGHUP)
        b.log.wait_for(["reload done"], since=mark, timeout=30)
        if change != "env":
            os.kill(victim, 9)

        def replaced():
            pid = worker_pid(b)
            return pid != victim and pid

        pid = wait_until(replaced, 60, what="a new worker to serve")
        if change == "env":
            assert ppid_of(pid) not in (tpl, b.pid), f"worker {pid} not forked from a new template"
            assert "retiring its template" in b.log.text(since=mark)
        else:
            assert ppid_of(pid) == tpl, f"worker {pid} not forked from the template {tpl}"
            assert alive(tpl)
            assert "retiring its template" not in b.log.text(since=mark), "the template was retired"
    finally:
        b.stop()


# A stack dump that takes 0.1 s to make: the worker's dump looks through every frame's
# locals for the request's environ, and this local answers `in` slowly. A preloaded pool's
# replacement is ready within milliseconds, so a SIGKILL that did not wait for the stacks
# would always come first; the bridge waits up to a second for them, a margin a loaded
# machine needs.
SLOW_DUMP_APP = """import json, os, time


class SlowToSearch(dict):
    def __contains__(self, key):
        time.sleep(0.1)
        return False


def hang_here():
    slow = SlowToSearch()
    while slow is not None:
        time.sleep(0.5)


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/hang":
        hang_here()
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_request_timeout_in_a_forked_worker_logs_its_stacks_before_the_kill(tmp_path):
    """request-timeout: the worker is asked for its Python stacks, then killed once its
    replacement is ready, which a preloaded pool forks in milliseconds: the kill waits (up to
    a second) for the stacks to be logged. Three timeouts in a row, each in another worker."""
    from supervision_support import Background, get, pid_of, start
    app = tmp_path / "slow_dump_app.py"
    app.write_text(SLOW_DUMP_APP)
    b = start(tmp_path, {"p": {"app": str(app), "processes": 1, "threads": 2, "preload": True,
                               "request-timeout": "2s", "graceful-timeout": "20s"}})
    try:
        seen = set()
        for round_ in range(3):
            before = wait_until(lambda: (lambda p: p if p not in seen else None)(pid_of(get(b, "p", "/pid"))),
                                60, 0.1, what="a worker that has not timed out yet")
            seen.add(before)
            mark = b.log.mark()
            hung = Background(lambda: get(b, "p", "/hang"))
            assert hung.result().status == 504
            b.log.wait_for([r"request-timeout \(2s\): GET /hang", f"pid={before}"], since=mark, timeout=30)
            b.log.wait_for([r"worker stopped \(request-timeout", "SIGKILL", f"pid={before}"], since=mark, timeout=60)
            lines = b.log.lines(mark)
            stopped = next(i for i, ln in enumerate(lines) if "worker stopped (request-timeout" in ln
                           and f"pid={before}" in ln)
            stack = [ln for ln in lines[:stopped] if "hang_here" in ln and f"pid={before}" in ln]
            assert stack, f"round {round_}: no stack of worker {before} before its SIGKILL:\n" + \
                "\n".join(lines[-40:])
    finally:
        b.stop()


LYING_APP = '''
import os

if os.environ.get("FCGIBRIDGE_TEMPLATE") == "1":
    _fork = os.fork

    def _lying_fork():
        pid = _fork()
        return pid if pid == 0 else int(os.environ["DECOY_PID"])  # names a stranger as its worker
    os.fork = _lying_fork


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def test_a_template_that_names_a_stranger_as_its_worker_is_killed_and_the_stranger_spared(tmp_path):
    """The template runs the app's code: the pid it reports for a fork must be its own
    child, or the bridge would sample, signal and at last SIGKILL whatever it named."""
    decoy = subprocess.Popen(["sleep", "600"])
    try:
        app = tmp_path / "lying_app.py"
        app.write_text(LYING_APP)
        port = free_ports(1)[0]
        pools = {"liar": {"app": str(app), "processes": 1, "threads": 1, "preload": True,
                          "env": {"DECOY_PID": str(decoy.pid)}}}
        b = make_bridge(tmp_path, pools, {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "liar"}})
        try:
            b.start()
            lines = b.log.wait_for(rf"the template named pid {decoy.pid} as its worker, whose parent is pid "
                                   rf"{os.getpid()}; killing the template", timeout=120)
            assert 'pool="liar"' in lines[-1] or "pool=liar" in lines[-1], lines[-1]
            b.stop()
        finally:
            if b.proc and b.proc.poll() is None:
                b.stop()
        assert decoy.poll() is None, "the bridge signalled the process the template named"
        assert not re.search(rf"worker (started|ready).*pid={decoy.pid}\b", b.log.text())
    finally:
        decoy.kill()
        decoy.wait()


FORGING_APP = '''
import os
import socket

if os.environ.get("FCGIBRIDGE_TEMPLATE") == "1":
    _fork = os.fork
    _forks = []

    def _forging_fork():
        pid = _fork()
        if pid:
            _forks.append(pid)
            if len(_forks) == 2:
                # Tell the bridge the first worker exited, while it runs on.
                ctl = socket.socket(fileno=os.dup(4))
                ctl.send(b"EXIT %d 0" % _forks[0])
                ctl.close()
                with open(os.environ["FORGED_FILE"], "w") as f:
                    f.write(str(_forks[0]))
        return pid
    os.fork = _forging_fork


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def test_a_template_that_reports_a_running_worker_as_exited_gets_it_killed(tmp_path):
    """The template runs the app's code: an EXIT it forges for a worker that still runs
    must not leave that worker serving on, outside every limit and count."""
    app = tmp_path / "forging_app.py"
    app.write_text(FORGING_APP)
    forged = tmp_path / "forged"
    port = free_ports(1)[0]
    pools = {"forger": {"app": str(app), "processes": 2, "threads": 1, "preload": True,
                        "env": {"FORGED_FILE": str(forged)}}}
    b = make_bridge(tmp_path, pools, {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "forger"}})
    try:
        b.start()
        wait_until(lambda: forged.exists() and forged.read_text(), 120, what="the template to forge an EXIT")
        victim = int(forged.read_text())
        lines = b.log.wait_for([r"the template reported this worker as exited while it still runs; killing it",
                                rf"pid={victim}\b"], timeout=60)
        assert "forger" in lines[-1], lines[-1]
        wait_until(lambda: not alive(victim), 60, what=f"worker {victim} to be killed")
        wait_until(lambda: b.request("/", listener="l").status == 200, 60, what="the pool to serve again")
    finally:
        b.stop()


QUICK_EXIT_APP = '''
import os
import sys
import time

if os.environ.get("FCGIBRIDGE_TEMPLATE") == "1":
    _fork = os.fork

    def _fork_that_leaves():
        pid = _fork()
        if pid == 0:
            sys.stderr.write("quick-exit: the fork leaves at once\\n")
            sys.stderr.flush()
            os._exit(3)
        # The template answers PID only once its fork is a zombie: it reaps it (and sends
        # EXIT) right after, before the bridge had a chance to look at the pid.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        return pid
    os.fork = _fork_that_leaves


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def test_a_fork_that_exits_at_once_is_an_early_exit_not_a_lying_template(tmp_path):
    """A fork that exits within milliseconds may be reaped by its template before the
    bridge looks at its pid: that is a worker that failed to start (its output logged),
    not a template naming a process that does not exist."""
    app = tmp_path / "quick_exit_app.py"
    app.write_text(QUICK_EXIT_APP)
    port = free_ports(1)[0]
    pools = {"quick": {"app": str(app), "processes": 2, "threads": 1, "preload": True}}
    b = make_bridge(tmp_path, pools, {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "quick"}})
    try:
        b.start()
        # Several forks, each gone at once (the pool backs off between them).
        wait_until(lambda: len(re.findall(r"quick-exit: the fork leaves at once", b.log.text())) >= 4, 120,
                   what="four forks that left at once")
        text = b.log.text()
        assert "killing the template" not in text, text[-3000:]
        assert "which does not exist" not in text, text[-3000:]
        assert re.search(r"exit status 3", text), text[-3000:]
    finally:
        b.stop()

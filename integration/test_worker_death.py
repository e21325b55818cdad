"""A worker that dies mid-request (os._exit, segfault, kill -9): that request gets 502,
a request on another worker is untouched, and a new worker serves afterwards."""
import json
import os
import signal
import threading
import time
import uuid

import pytest
import requests

from harness import APPS, Nginx, free_ports, main_listeners, make_bridge, pool, wait_until

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("death-bridge")
    # two processes with one thread each: two concurrent requests are on two processes
    pools = {"fragile": pool(str(APPS / "edge_app.py"), processes=2, threads=1)}
    listeners = main_listeners(workdir, free_ports(6))
    for spec in listeners.values():
        spec.pop("routes", None)
        spec["pool"] = "fragile"
    b = make_bridge(workdir, pools, listeners)
    n = None
    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/health", "x")])
        n = Nginx(tmp_path_factory.mktemp("death-nginx"), b).start().wait_ready()
        yield b, n
    finally:
        if n:
            n.stop()
        b.stop()


def pid_file(b, tag):
    path = b.workdir / f"{tag}.pid"
    return int(wait_until(lambda: path.exists() and path.read_text(), 60, what=f"{path}"))


def start_bystander(b, n, seconds):
    tag = "bystander-" + uuid.uuid4().hex[:8]
    result = {}

    def run():
        try:
            r = requests.get(n.url("fcgi-tcp", f"/sleep?s={seconds}&tag={tag}"), timeout=120)
            result["status"], result["body"] = r.status_code, r.text
        except Exception as e:  # noqa: BLE001
            result["error"] = repr(e)

    t = threading.Thread(target=run)
    t.start()
    return t, result, pid_file(b, tag)


def pids_now(n):
    """Two concurrent requests: with both slots free they land on both processes."""
    out = []

    def get():
        r = requests.get(n.url("fcgi-tcp", "/sleep?s=1"), timeout=120)
        out.append((r.status_code, r.json()["pid"] if r.status_code == 200 else None))

    ts = [threading.Thread(target=get) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def check_death(b, n, kill, kind):
    since = b.log.mark()
    bystander, result, bystander_pid = start_bystander(b, n, seconds=6)
    tag = "victim-" + uuid.uuid4().hex[:8]
    victim = kill(tag)
    dead_pid = victim["pid"]
    assert dead_pid != bystander_pid
    assert victim["status"] == 502, f"{kind}: the dying worker's request got {victim['status']}"
    bystander.join(120)
    assert result.get("status") == 200, f"{kind}: the request on the other worker was hurt: {result}"
    assert json.loads(result["body"])["pid"] == bystander_pid
    # the bridge logged the death, naming the pid
    b.log.wait_for([rf"\b{dead_pid}\b", r"(exit|signal|died|killed|crash|status)"], since=since, timeout=30)
    # a new worker takes the dead one's place (it may still be starting: poll)
    seen = []

    def new_worker_serves():
        pids = pids_now(n)
        seen.append(pids)
        assert [s for s, _ in pids] == [200, 200], pids
        got = {p for _, p in pids}
        assert dead_pid not in got, f"the dead worker {dead_pid} answered?"
        return got - {bystander_pid}

    wait_until(new_worker_serves, 60, 0.2, what=f"a new worker after {kind}")
    with pytest.raises(ProcessLookupError):
        os.kill(dead_pid, 0)


def test_worker_os_exit(stack):
    b, n = stack

    def kill(tag):
        r = requests.get(n.url("fcgi-tcp", f"/die/exit?tag={tag}"), timeout=120)
        return {"status": r.status_code, "pid": pid_file(b, tag)}

    check_death(b, n, kill, "os._exit")


def test_a_worker_that_dies_leaving_a_child_holding_its_sockets(stack):
    """The child keeps the connection open, so the bridge sees no end on it: the worker's
    exit itself ends the request (502, not a hang), and what it left in its process group
    is killed and reaped."""
    b, n = stack

    def kill(tag):
        r = requests.get(n.url("fcgi-tcp", f"/die/orphan?tag={tag}"), timeout=120)
        child_file = b.workdir / f"{tag}.child"
        child = int(wait_until(lambda: child_file.exists() and child_file.read_text(), 30, what="the child's pid"))
        # killed, and reaped by the bridge, which adopted it (a child subreaper): no zombie
        wait_until(lambda: not os.path.exists(f"/proc/{child}"), 60, what="the worker's child to be killed and reaped")
        return {"status": r.status_code, "pid": pid_file(b, tag)}

    since = b.log.mark()
    check_death(b, n, kill, "exit with a child left behind")
    b.log.wait_for(r"the worker left processes behind in its process group; killed them", since=since)


def test_worker_segfault(stack):
    b, n = stack

    def kill(tag):
        r = requests.get(n.url("fcgi-tcp", f"/die/segv?tag={tag}"), timeout=120)
        return {"status": r.status_code, "pid": pid_file(b, tag)}

    since = b.log.mark()
    check_death(b, n, kill, "segfault")
    # The crashing thread's Python stack (faulthandler) names the view's line.
    b.log.wait_for(r"Fatal Python error: Segmentation fault", since=since)
    b.log.wait_for(r'File ".*edge_app\.py", line \d+ in application', since=since)


def test_worker_sigkill(stack):
    b, n = stack

    def kill(tag):
        out = {}

        def run():
            r = requests.get(n.url("fcgi-tcp", f"/sleep?s=60&tag={tag}"), timeout=120)
            out["status"] = r.status_code

        t = threading.Thread(target=run)
        t.start()
        pid = pid_file(b, tag)
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        t.join(120)
        assert time.monotonic() - start < 30, "the 502 must come when the worker dies, not at the app's end"
        return {"status": out.get("status"), "pid": pid}

    check_death(b, n, kill, "kill -9")


def test_worker_death_direct_fastcgi_gets_502(stack):
    b, _ = stack
    resp = b.request("/die/exit", pool="x")
    assert resp.status == 502
    assert b.request("/health", pool="x").status == 200


def test_idle_worker_killed_no_innocent_request_fails(stack):
    """kill -9 of an idle worker: requests that arrive right after must not be sent to its
    dead connections (or must be retried elsewhere): none of them may fail."""
    b, n = stack
    pids = set()

    def both_pids():
        pids.update(p for s, p in pids_now(n) if s == 200)
        return len(pids) >= 2

    wait_until(both_pids, 60, 0.2, what="both workers answering")
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    statuses = [requests.get(n.url("fcgi-tcp", "/pid"), timeout=60).status_code for _ in range(20)]
    assert statuses == [200] * 20, statuses
    resp_statuses = [b.request("/health", pool="x").status for _ in range(10)]
    assert resp_statuses == [200] * 10

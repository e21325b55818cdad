"""Helpers of the supervision tests (test_lifecycle.py, test_sizing.py, test_reload.py):
a bridge whose pools run apps/lifecycle_app.py, one FastCGI TCP listener per pool, and a
look at its worker processes through /proc."""
from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import fcgi_client as fc
from harness import APPS, free_ports, make_bridge, pool, wait_until

APP = str(APPS / "lifecycle_app.py")


def lc_pool(**kw) -> dict:
    return pool(APP, **kw)


def start(tmp_path: Path, pools: dict, bridge_extra=None, name="bridge", wait=True, listeners=None):
    """A running bridge with listener `l-<pool>` for every pool; waits for a 200 from each
    pool unless `wait` is false (ondemand, broken pools)."""
    ports = free_ports(len(pools))
    if listeners is None:
        listeners = {f"l-{p}": {"fastcgi": f"127.0.0.1:{port}", "pool": p} for p, port in zip(pools, ports)}
    b = make_bridge(tmp_path, pools, listeners, bridge_extra=bridge_extra, name=name)
    b.start()
    if wait:
        b.wait_ready([(f"l-{p}", "/health", "x") for p in pools])
    else:
        for lname in listeners:
            addr = b.listener_address(lname)
            wait_until(lambda: (b.assert_running(), _can_connect(addr))[1], 60, what=f"listener {lname}")
    return b


def _can_connect(addr) -> bool:
    from harness import can_connect
    return can_connect(addr)


def get(b, pool_name: str, path: str, query: str = "", timeout: float = 60.0):
    with fc.FcgiConnection(b.listener_address(f"l-{pool_name}"), timeout=timeout) as conn:
        return conn.request(path, query=query)


def pid_of(resp) -> int:
    assert resp.status == 200, resp.stdout[:300]
    return json.loads(resp.body)["pid"]


def proc_stat(pid: int):
    """(state, ppid) of a process from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[1])  # state, ppid


def worker_pids(b) -> set[int]:
    """Live worker processes of the bridge (its children running the worker)."""
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is None or st[1] != b.pid or st[0] == "Z":
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"fcgibridge_worker" in cmd:
            out.add(int(name))
    return out


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


# Completion order of Background calls (itertools.count's next() is atomic under the GIL).
_FINISHED = itertools.count(1)


class Background:
    """Run `fn` in a thread; `.result()` joins and returns (or raises) its outcome.
    `out["done_at"]` is its place in the order in which Background calls finished."""

    def __init__(self, fn):
        self.out = {}

        def run():
            try:
                self.out["value"] = fn()
            except BaseException as e:  # noqa: BLE001
                self.out["error"] = e
            self.out["done_at"] = next(_FINISHED)

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def result(self, timeout: float = 120.0):
        self.t.join(timeout)
        if self.t.is_alive():
            raise TimeoutError("background call still running")
        if "error" in self.out:
            raise self.out["error"]
        return self.out["value"]


class Hammer:
    """Requests in a loop from `n` threads until stopped; counts statuses and errors."""

    def __init__(self, b, pool_name: str, path: str = "/pid", n: int = 4):
        self.stop_flag = threading.Event()
        self.statuses: dict = {}
        self.errors: list = []
        self.pids: set = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(b, pool_name, path), daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, b, pool_name, path):
        while not self.stop_flag.is_set():
            try:
                r = get(b, pool_name, path, timeout=30)
                with self.lock:
                    self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                    if r.status == 200:
                        self.pids.add(json.loads(r.body)["pid"])
            except Exception as e:  # noqa: BLE001
                with self.lock:
                    self.errors.append(repr(e))

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)
        return self

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


class Held:
    """Requests that each hold a worker thread (lifecycle_app's /hold) until released: a
    test of busy workers waits for them to run instead of racing sleeps of fixed length."""

    def __init__(self, b, pool_name: str, n: int, name: str = "held"):
        self.b = b
        self.marks = [f"{name}-{i}" for i in range(n)]
        self.calls = [Background(lambda m=m: get(b, pool_name, "/hold", f"mark={m}")) for m in self.marks]

    def running(self) -> dict:
        """mark -> pid of the held requests running now."""
        out = {}
        for m in self.marks:
            try:
                out[m] = int((self.b.workdir / f"{m}.started").read_text())
            except (FileNotFoundError, ValueError):
                pass
        return out

    def wait_running(self, n: int, timeout: float = 60.0) -> dict:
        return wait_until(lambda: (lambda r: r if len(r) >= n else None)(self.running()), timeout,
                          0.05, what=f"{n} held requests running")

    def release(self) -> list:
        for m in self.marks:
            (self.b.workdir / f"{m}.release").write_text("")
        return [c.result() for c in self.calls]


def wait_for_new_pid(b, pool_name: str, old: set, timeout: float = 30.0) -> int:
    def changed():
        p = pid_of(get(b, pool_name, "/pid"))
        return p if p not in old else None
    return wait_until(changed, timeout, 0.1, what="a request served by a new worker")


def sleep_until(pred, timeout, what):
    return wait_until(pred, timeout, 0.1, what=what)


__all__ = ["APP", "Background", "Hammer", "Held", "alive", "get", "lc_pool", "pid_of", "sleep_until", "start",
           "wait_for_new_pid", "worker_pids", "time"]

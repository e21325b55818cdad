"""The scale-out scenario of docs/scale-out.md, shared by test_scale_out.py (two bridges
on loopback addresses) and test_scale_out_netns.py (two bridges and the front end in
three network namespaces): under a steady load through nginx or HAProxy, a bridge
stopped with a drain period and a fresh one started on its address cost no request; a
bridge killed with SIGKILL costs at most the requests in flight on it.

Where each process runs and which addresses it uses is a `Net`'s business; the
scenario only says "bridge 0", "bridge 1" and "front"."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from harness import (APPS, REPO, LogFile, can_connect, free_ports, is_access_line, make_bridge, nginx_conf, nginx_etc,
                     pool, start_nginx, stop_process, wait_until)

THREADS = 3
DRAIN = "5s"
# The addresses of docs/scale-out.md's examples.
DOC_BRIDGES = ("10.213.0.11:9000", "10.213.0.12:9000")


class Loopback:
    """Everything in this network namespace: the bridges on 127.0.0.2 and 127.0.0.3
    (Linux routes all of 127.0.0.0/8 to loopback), the front end on 127.0.0.1, free ports
    substituted for the doc's."""

    def __init__(self):
        ports = free_ports(3)
        self.bridges = [f"127.0.0.2:{ports[0]}", f"127.0.0.3:{ports[1]}"]
        self.front = f"127.0.0.1:{ports[2]}"
        self.allowed_clients = None  # every client is 127.0.0.1 here

    def argv(self, where, argv: list[str]) -> list[str]:
        """The command line that runs `argv` where `where` (0, 1 or "front") lives."""
        return argv

    def inside(self, where):
        """Context manager: the calling thread's sockets are made where `where` lives."""
        return contextlib.nullcontext()


def snippet(name: str) -> str:
    text = (REPO / "docs" / "scale-out.md").read_text()
    m = re.search(rf"<!-- test-snippet: {name} -->\n```\w*\n(.*?)```", text, re.S)
    assert m, f"docs/scale-out.md has no test-snippet {name}"
    return m.group(1)


def addresses(text: str, net) -> str:
    """The doc's bridge addresses replaced by the net's (the same text in namespaces)."""
    for doc, real in zip(DOC_BRIDGES, net.bridges):
        assert doc in text
        text = text.replace(doc, real)
    return text


def split(address: str):
    host, _, port = address.rpartition(":")
    return host, int(port)


class Load:
    """THREADS client threads in the front end's place, each sending GET /sleep?s=0.05
    through the front end in a loop (kept-alive connections); every answer is counted,
    every failure kept with its time."""

    def __init__(self, url: str, net):
        self.url = url
        self.net = net
        self.ok = 0
        self.failed: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(THREADS)]

    def run(self):
        with self.net.inside("front"):
            self.loop()

    def loop(self):
        session = requests.Session()
        while not self.done.is_set():
            try:
                r = session.get(self.url, timeout=60)
                good, what = r.status_code == 200 and '"pid"' in r.text, f"{r.status_code} {r.text[:200]!r}"
            except requests.RequestException as e:
                good, what = False, repr(e)
                session = requests.Session()
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed.append((time.monotonic(), what))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(90)

    def more_ok(self, n: int, what: str):
        """Wait until n more requests have succeeded (the load goes on meanwhile)."""
        target = self.ok + n
        wait_until(lambda: self.ok >= target, 120, 0.05, what=f"{n} more answered requests {what}")


def doc_bridge_config(address: str, allowed_clients) -> tuple[dict, dict]:
    """docs/scale-out.md's bridge configuration (bridge section, listeners) on `address`;
    its allowed-clients replaced by `allowed_clients` (None: left out)."""
    text = snippet("bridge")
    assert DOC_BRIDGES[0] in text
    conf = yaml.safe_load(text.replace(DOC_BRIDGES[0], address))
    listeners = conf["listeners"]
    for spec in listeners.values():
        spec.pop("allowed-clients")
        if allowed_clients:
            spec["allowed-clients"] = list(allowed_clients)
    return conf["bridge"], listeners


def start_bridge(workdir: Path, net, i: int):
    """Bridge i with the doc's configuration, its app the test's edge app, started where
    bridge i lives; ready once the front end's place gets an answer from it."""
    bridge_section, listeners = doc_bridge_config(net.bridges[i], net.allowed_clients)
    assert bridge_section["drain-period"] == DRAIN
    b = make_bridge(workdir, {"app": pool(str(APPS / "edge_app.py"), processes=1, threads=4)}, listeners,
                    bridge_extra=bridge_section)
    b.command_prefix = net.argv(i, [])
    b.start()
    with net.inside("front"):
        return b.wait_ready([(name, "/health", "x") for name in listeners])


def served(bridge) -> int:
    """Load requests this bridge answered (its access lines for /sleep)."""
    return sum(1 for ln in bridge.log.lines() if is_access_line(ln) and "/sleep" in ln)


def nginx_front(workdir: Path, net):
    conf = addresses(snippet("nginx"), net)
    if net.front != "0.0.0.0:80":
        conf = conf.replace("listen 80;", f"listen {net.front};")
    conf = conf.replace("include fastcgi_params;", f"include {nginx_etc()}/fastcgi_params;")
    (workdir / "nginx.conf").write_text(nginx_conf(workdir, conf))
    return start_nginx(workdir, workdir / "nginx.conf", prefix=net.argv("front", [])), None


def haproxy_front(workdir: Path, net):
    binary = shutil.which("haproxy")
    if not binary:
        pytest.skip("haproxy is not installed")
    conf = addresses(snippet("haproxy"), net)
    if net.front != "0.0.0.0:80":
        conf = conf.replace("bind :80", f"bind {net.front}")
    full = ("global\n    maxconn 500\n    log stderr format raw local0 info\n"
            "defaults\n    mode http\n    log global\n    timeout connect 5s\n    timeout client 120s\n"
            "    timeout server 120s\n\n" + conf)
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(full)
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "haproxy.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(net.argv("front", [binary, "-db", "-f", str(cfg)]), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, LogFile(log)


def front_url(net, path: str) -> str:
    host, port = split(net.front)
    if host == "0.0.0.0":  # listening everywhere: the front end's own address
        host = getattr(net, "front_address", "127.0.0.1")
    return f"http://{host}:{port}{path}"


def drain_replace_and_kill(tmp_path: Path, front: str, net):
    """The scenario: load on both bridges; bridge 0 stopped with a drain period (nothing
    fails), a fresh bridge 0 started on its address (it gets its share again), bridge 1
    killed with SIGKILL (at most the requests in flight on it fail, and only then)."""
    bridges = [start_bridge(tmp_path / f"bridge{i}", net, i) for i in range(2)]
    fresh = None
    proc, front_log = (nginx_front if front == "nginx" else haproxy_front)(tmp_path, net)
    load = Load(front_url(net, "/sleep?s=0.05"), net)
    try:
        def answering():
            with net.inside("front"):
                return proc.poll() is None and requests.get(front_url(net, "/health"), timeout=10).status_code == 200
        wait_until(answering, 60, 0.1, what=f"{front} answering")
        load.start()
        wait_until(lambda: all(served(b) >= 3 for b in bridges), 120, 0.1, what="load on both bridges")

        first = bridges[0]
        mark = first.log.mark()
        first.proc.send_signal(signal.SIGTERM)
        first.log.wait_for(r"stopping: draining for 5s", since=mark, timeout=30)
        if front_log:
            # HAProxy's check saw the 503 of the ping path while the listener was still open.
            front_log_line = wait_until(lambda: [ln for ln in front_log.text().splitlines()
                                                 if "app1 is DOWN" in ln], 30, 0.1, what="app1 DOWN in haproxy's log")
            assert "wrong status, code: 503" in front_log_line[0], front_log_line
            with net.inside("front"):
                assert can_connect(split(net.bridges[0])), "the drain period ended before HAProxy noticed"
        first.log.wait_for(r"drain period over", since=mark, timeout=60)
        assert first.proc.wait(60) == 0
        load.more_ok(20, "after the first bridge stopped")
        assert not load.failed, load.failed

        fresh = start_bridge(tmp_path / "fresh", net, 0)
        wait_until(lambda: served(fresh) >= 3, 120, 0.1, what="load on the fresh bridge")
        assert not load.failed, load.failed

        killed_at = time.monotonic()
        os.kill(bridges[1].pid, signal.SIGKILL)
        load.more_ok(30, "after the kill")
        load.stop()
        failed = list(load.failed)
        assert len(failed) <= THREADS, failed
        assert all(t >= killed_at for t, _ in failed), failed
        print(f"{front}: {load.ok} requests answered, {len(failed)} failed (killed in flight)")
        return bridges + [fresh]
    finally:
        load.stop()
        stop_process(proc, sig=signal.SIGQUIT if front == "nginx" else signal.SIGUSR1, timeout=20)
        for b in bridges + ([fresh] if fresh else []):
            b.stop()

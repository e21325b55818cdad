"""Two bridges behind one front end (docs/scale-out.md, whose nginx and HAProxy snippets
run here as written, with loopback addresses): under a steady load, a bridge stopped
with a drain period and a fresh one started on its address cost no request; a bridge
killed with SIGKILL costs at most the requests in flight on it.

The two bridges listen on 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8 to
loopback), so the front end sees two distinct hosts without network namespaces."""
from __future__ import annotations

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

from harness import (APPS, REPO, LogFile, can_connect, free_ports, is_access_line, make_bridge, nginx_etc,
                     pool, start_nginx, stop_process, wait_until)

HOSTS = ("127.0.0.2", "127.0.0.3")
THREADS = 3
DRAIN = "5s"


def snippet(name: str) -> str:
    text = (REPO / "docs" / "scale-out.md").read_text()
    m = re.search(rf"<!-- test-snippet: {name} -->\n```\w*\n(.*?)```", text, re.S)
    assert m, f"docs/scale-out.md has no test-snippet {name}"
    return m.group(1)


def addresses(text: str, ports) -> str:
    for doc, host, port in zip(("10.0.0.11:9000", "10.0.0.12:9000"), HOSTS, ports):
        assert doc in text
        text = text.replace(doc, f"{host}:{port}")
    return text


class Load:
    """THREADS client threads, each sending GET /sleep?s=0.05 through the front end in a
    loop (kept-alive connections); every answer is counted, every failure kept with its time."""

    def __init__(self, url: str):
        self.url = url
        self.ok = 0
        self.failed: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(THREADS)]

    def run(self):
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


def start_bridge(workdir: Path, host: str, port: int):
    b = make_bridge(workdir, {"app": pool(str(APPS / "edge_app.py"), processes=1, threads=4)},
                    {"fcgi-tcp": {"fastcgi": f"{host}:{port}", "pool": "app", "ping-path": "/ping"}},
                    bridge_extra={"drain-period": DRAIN, "shutdown-timeout": "30s"})
    return b.start().wait_ready([("fcgi-tcp", "/health", "x")])


def served(bridge) -> int:
    """Load requests this bridge answered (its access lines for /sleep)."""
    return sum(1 for ln in bridge.log.lines() if is_access_line(ln) and "/sleep" in ln)


def nginx_front(workdir: Path, ports, front_port: int):
    conf = addresses(snippet("nginx"), ports)
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{front_port};")
    conf = conf.replace("include fastcgi_params;", f"include {nginx_etc()}/fastcgi_params;")
    user = "user root;" if os.geteuid() == 0 else ""
    full = (f"{user}\nworker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log info;\n"
            f"events {{ worker_connections 1024; }}\nhttp {{\n    access_log {workdir}/nginx-access.log;\n"
            + "".join(f"    {k}_temp_path {workdir}/{k}_temp;\n" for k in ("client_body", "fastcgi", "scgi", "proxy", "uwsgi"))
            + conf + "}\n")
    (workdir / "nginx.conf").write_text(full)
    return start_nginx(workdir, workdir / "nginx.conf"), None


def haproxy_front(workdir: Path, ports, front_port: int):
    binary = shutil.which("haproxy")
    if not binary:
        pytest.skip("haproxy is not installed")
    conf = addresses(snippet("haproxy"), ports).replace("bind :80", f"bind 127.0.0.1:{front_port}")
    full = ("global\n    maxconn 500\n    log stderr format raw local0 info\n"
            "defaults\n    mode http\n    log global\n    timeout connect 5s\n    timeout client 120s\n"
            "    timeout server 120s\n\n" + conf)
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(full)
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "haproxy.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, LogFile(log)


@pytest.mark.parametrize("front", ["nginx", "haproxy"])
def test_drain_replace_and_kill_behind_one_front_end(tmp_path, front):
    ports = free_ports(3)
    bports, front_port = ports[:2], ports[2]
    bridges = [start_bridge(tmp_path / f"bridge{i}", HOSTS[i], bports[i]) for i in range(2)]
    fresh = None
    proc, front_log = (nginx_front if front == "nginx" else haproxy_front)(tmp_path, bports, front_port)
    load = Load(f"http://127.0.0.1:{front_port}/sleep?s=0.05")
    try:
        wait_until(lambda: proc.poll() is None and requests.get(f"http://127.0.0.1:{front_port}/health",
                                                                timeout=10).status_code == 200,
                   60, 0.1, what=f"{front} answering")
        load.start()
        wait_until(lambda: all(served(b) >= 3 for b in bridges), 120, 0.1, what="load on both bridges")

        # 1. A planned stop with a drain period: nothing fails.
        first = bridges[0]
        mark = first.log.mark()
        first.proc.send_signal(signal.SIGTERM)
        first.log.wait_for(r"stopping: draining for 5s", since=mark, timeout=30)
        if front_log:
            # HAProxy's check saw the 503 of the ping path while the listener was still open.
            front_log_line = wait_until(lambda: [ln for ln in front_log.text().splitlines()
                                                 if "app1 is DOWN" in ln], 30, 0.1, what="app1 DOWN in haproxy's log")
            assert "wrong status, code: 503" in front_log_line[0], front_log_line
            assert can_connect((HOSTS[0], bports[0])), "the drain period ended before HAProxy noticed"
        first.log.wait_for(r"drain period over", since=mark, timeout=60)
        assert first.proc.wait(60) == 0
        load.more_ok(20, "after the first bridge stopped")
        assert not load.failed, load.failed

        # 2. A fresh bridge on the stopped one's address gets its share again.
        fresh = start_bridge(tmp_path / "fresh", HOSTS[0], bports[0])
        wait_until(lambda: served(fresh) >= 3, 120, 0.1, what="load on the fresh bridge")
        assert not load.failed, load.failed

        # 3. SIGKILL: at most the requests in flight on it fail, and only then.
        killed_at = time.monotonic()
        os.kill(bridges[1].pid, signal.SIGKILL)
        load.more_ok(30, "after the kill")
        load.stop()
        failed = list(load.failed)
        assert len(failed) <= THREADS, failed
        assert all(t >= killed_at for t, _ in failed), failed
        print(f"{front}: {load.ok} requests answered, {len(failed)} failed (killed in flight)")
    finally:
        load.stop()
        stop_process(proc, sig=signal.SIGQUIT if front == "nginx" else signal.SIGUSR1, timeout=20)
        for b in bridges + ([fresh] if fresh else []):
            b.stop()

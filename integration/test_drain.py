"""Taking a bridge out of a load balancer: on SIGTERM the ping paths fail for
`drain-period` while every other request is still served, then the listeners close and
in-flight requests finish. And `allowed-clients`: which TCP peers a listener keeps."""
import json
import os
import re
import signal
import subprocess
import time
import threading
import urllib.error
import urllib.request
import uuid

import fcgi_client as fc
from harness import APPS, LogFile, can_connect, free_ports, make_bridge, pool, wait_until


def _status_get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sigterm_fails_ping_then_closes_listeners_and_finishes_in_flight(tmp_path):
    port, sport = free_ports(2)
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=4)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p", "ping-path": "/ping"}},
                    bridge_extra={"drain-period": "15s", "shutdown-timeout": "60s",
                                  "status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    try:
        b.start().wait_ready([("fcgi-tcp", "/health", "x")])
        ping = b.request("/ping")
        assert (ping.status, ping.body) == (200, b"pong\n")
        assert _status_get(sport, "/ping") == (200, "pong\n")

        tag = "inflight-" + uuid.uuid4().hex[:8]
        out = {}
        t = threading.Thread(target=lambda: out.update(r=b.request("/hold", query=f"tag={tag}")))
        t.start()
        wait_until(lambda: (tmp_path / f"{tag}.pid").exists(), 60, what="the held request in a worker")

        mark = b.log.mark()
        b.proc.send_signal(signal.SIGTERM)
        b.log.wait_for(r"stopping: draining for 15s: ping paths answer 503", since=mark, timeout=30)
        # The drain period: ping fails on both paths, everything else is served.
        ping = b.request("/ping")
        assert (ping.status, ping.body) == (503, b"draining\n")
        assert _status_get(sport, "/ping") == (503, "draining\n")
        assert b.request("/health").status == 200
        assert b.proc.poll() is None and can_connect(("127.0.0.1", port))

        b.log.wait_for(r"drain period over: closing the listeners", since=mark, timeout=90)
        wait_until(lambda: not can_connect(("127.0.0.1", port)), 30, what="the listener closed")
        assert t.is_alive(), "the held request ended before it was released"
        (tmp_path / f"{tag}.release").touch()
        t.join(60)
        assert out["r"].status == 200, "the in-flight request was cut by the stop"
        assert b.proc.wait(60) == 0
    finally:
        (tmp_path / "never.release").touch()
        b.stop()


def test_drain_period_defaults_to_none(tmp_path):
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p", "ping-path": "/ping"}})
    try:
        b.start().wait_ready([("fcgi-tcp", "/health", "x")])
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(60) == 0
        assert "draining for" not in b.log.text(mark)
    finally:
        b.stop()


def assert_closed_unanswered(address):
    """A request sent to `address` from 127.0.0.1 gets no answer: the connection is closed."""
    with fc.FcgiConnection(address, timeout=30) as c:
        try:
            c.begin(1, fc.cgi_params("/health"))
        except OSError:
            pass
        assert c.read_until_closed(30) == b""


def test_allowed_clients_keeps_listed_peers_and_refuses_others_with_a_log_line(tmp_path):
    port, open_port = free_ports(2)
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p",
                                  "allowed-clients": ["127.0.0.2", "10.0.0.0/8", "fd00::/8"]},
                     "open": {"fastcgi": f"127.0.0.1:{open_port}", "pool": "p"}})
    try:
        b.start()
        wait_until(lambda: b.assert_running() or can_connect(("127.0.0.1", open_port)), 120, what="listening")
        # From the listed address: served.
        def listed():
            with fc.FcgiConnection(("127.0.0.1", port), timeout=30, source="127.0.0.2") as c:
                return c.request("/health").status == 200
        wait_until(listed, 120, 0.25, what="200 from 127.0.0.2")
        # From 127.0.0.1: the connection is closed before any answer, and logged.
        mark = b.log.mark()
        for _ in range(3):
            assert_closed_unanswered(("127.0.0.1", port))
        lines = b.log.wait_for([r"connection refused: peer not in allowed-clients", r"listener\W+fcgi-tcp",
                                r"127\.0\.0\.1:\d+"], since=mark)
        assert len(lines) == 3
        # Another listener without the key is not affected.
        assert fc.fcgi_request(("127.0.0.1", open_port), "/health").status == 200
        # check prints the key back.
        import subprocess
        r = subprocess.run([str(b.binary), "check", "--config", str(b.confdir)], capture_output=True, text=True, timeout=60)
        assert 'allowed-clients: ["127.0.0.2/32", "10.0.0.0/8", fd00::/8]' in r.stdout, r.stdout + r.stderr
    finally:
        b.stop()


def test_allowed_clients_added_by_a_reload_applies_to_the_very_next_connection(tmp_path):
    """The listener waited in accept() with its old settings when the reload came: the
    connection that ends that wait is judged by the new ones."""
    from harness import to_yaml
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}})
    try:
        b.start()
        wait_until(lambda: b.assert_running() or fc.fcgi_request(("127.0.0.1", port), "/health").status == 200,
                   120, 0.25, what="200 from 127.0.0.1")
        b.config["listeners"]["fcgi-tcp"]["allowed-clients"] = ["127.0.0.2"]
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGHUP)
        b.log.wait_for([r"reload done"], since=mark)
        assert_closed_unanswered(("127.0.0.1", port))
        b.log.wait_for([r"connection refused: peer not in allowed-clients", r"listener\W+fcgi-tcp"], since=mark)
        with fc.FcgiConnection(("127.0.0.1", port), timeout=30, source="127.0.0.2") as c:
            assert c.request("/health").status == 200
    finally:
        b.stop()


def test_fcgi_web_server_addrs_applies_to_every_tcp_listener(tmp_path, monkeypatch):
    """FCGI_WEB_SERVER_ADDRS (read once at start-up): every TCP listener keeps only the
    listed peers, each refusal logged with the listener and the peer."""
    port, other_port = free_ports(2)
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "127.0.0.2, not-an-ip")
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"one": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"},
                     "two": {"fastcgi": f"127.0.0.1:{other_port}", "pool": "p"}})
    try:
        b.start()

        def listed():
            with fc.FcgiConnection(("127.0.0.1", port), timeout=30, source="127.0.0.2") as c:
                return c.request("/health").status == 200
        wait_until(lambda: b.assert_running() or listed(), 120, 0.25, what="200 from 127.0.0.2")
        b.log.wait_for([r"FCGI_WEB_SERVER_ADDRS: ignoring \"not-an-ip\""])
        b.log.wait_for([r"FCGI_WEB_SERVER_ADDRS is set: TCP connections only from 127\.0\.0\.2, not-an-ip"])
        mark = b.log.mark()
        for p in (port, other_port):
            assert_closed_unanswered(("127.0.0.1", p))
        for name in ("one", "two"):
            b.log.wait_for([r"connection refused: peer not in FCGI_WEB_SERVER_ADDRS", rf"listener\W+{name}",
                            r"127\.0\.0\.1:\d+"], since=mark)
    finally:
        b.stop()


def test_allowed_clients_on_a_unix_socket_or_empty_is_refused(tmp_path):
    import subprocess
    from harness import bridge_binary
    for listener, why in [({"fastcgi": f"unix:{tmp_path}/a.sock", "pool": "p", "allowed-clients": ["127.0.0.1"]},
                           "applies to TCP listeners only"),
                          ({"fastcgi": "127.0.0.1:9000", "pool": "p", "allowed-clients": []}, "is empty"),
                          ({"fastcgi": "127.0.0.1:9000", "pool": "p", "allowed-clients": ["10.0.0.0/40"]},
                           "prefix length")]:
        b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"))}, {"l": listener})
        r = subprocess.run([str(bridge_binary()), "check", "--config", str(b.confdir)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "allowed-clients" in r.stderr and why in r.stderr, r.stderr


def _cli(b, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(b.binary), *args, "--config", str(b.confdir)], capture_output=True, text=True,
                          timeout=60)


def test_status_says_draining_and_until_when(tmp_path):
    """JSON, HTML, OpenMetrics and `fcgibridge status` name the drain in progress; then
    `fcgibridge stop` during the drain cuts it short."""
    port, sport = free_ports(2)
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p", "ping-path": "/ping"}},
                    bridge_extra={"drain-period": "120s",
                                  "status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    try:
        b.start().wait_ready([("fcgi-tcp", "/health", "x")])
        code, body = _status_get(sport, "/status?json")
        assert code == 200 and json.loads(body)["draining"] is None
        assert "fcgibridge_draining 0\n" in _status_get(sport, "/status?openmetrics")[1]
        assert "DRAINING" not in _cli(b, "status").stdout

        mark = b.log.mark()
        before = time.time()
        b.proc.send_signal(signal.SIGTERM)
        b.log.wait_for(r"stopping: draining for 2m", since=mark, timeout=30)
        d = json.loads(_status_get(sport, "/status?json")[1])["draining"]
        assert before - 1 <= d["since"] <= time.time() + 1, d
        assert abs(d["until"] - d["since"] - 120) < 0.01, d
        assert 0 < d["remaining_seconds"] <= 120, d
        metrics = _status_get(sport, "/status?openmetrics")[1]
        assert "fcgibridge_draining 1\n" in metrics
        end = re.search(r"^fcgibridge_drain_end_time_seconds ([0-9.]+)$", metrics, re.M)
        assert end and abs(float(end.group(1)) - d["until"]) < 0.01, metrics
        html = _status_get(sport, "/status?html")[1]
        assert 'class="draining warn"' in html and "the listeners close in" in html, html[:2000]
        text = _cli(b, "status")
        assert text.returncode == 0 and "DRAINING since" in text.stdout, text
        assert json.loads(_cli(b, "status", "--json").stdout)["draining"]["until"] == d["until"]

        stop = _cli(b, "stop")
        assert stop.returncode == 0, stop
        b.log.wait_for(r"stop requested during the drain period: cut short", since=mark, timeout=30)
        assert b.proc.wait(60) == 0
    finally:
        b.stop()


def test_signals_during_the_drain(tmp_path):
    """SIGHUP, SIGUSR2 and `fcgibridge reload` are refused with a line each, SIGUSR1
    reopens the log file, and a second SIGTERM ends the drain period at once; requests are
    served all along."""
    port, = free_ports(1)
    logfile = tmp_path / "fcgibridge.log"
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p", "ping-path": "/ping"}},
                    bridge_extra={"drain-period": "120s", "log-file": str(logfile), "access-log": "-"})
    log = LogFile(logfile)
    try:
        b.start().wait_ready([("fcgi-tcp", "/health", "x")])
        b.proc.send_signal(signal.SIGTERM)
        log.wait_for(r"stopping: draining for 2m", timeout=30)
        for sig, what in ((signal.SIGHUP, "SIGHUP"), (signal.SIGUSR2, "SIGUSR2")):
            mark = log.mark()
            b.proc.send_signal(sig)
            log.wait_for(rf"{what} during the drain period: not reloading, the bridge is stopping", since=mark)
        mark = log.mark()
        reload = _cli(b, "reload")
        assert reload.returncode != 0 and "draining (stopping): not reloading" in reload.stderr, reload
        log.wait_for(r"control socket: reload refused during the drain period", since=mark)
        assert "reloading" not in log.text().replace("not reloading", "")
        assert b.request("/ping").status == 503 and b.request("/health").status == 200

        rotated = tmp_path / "fcgibridge.log.1"
        os.rename(logfile, rotated)
        b.proc.send_signal(signal.SIGUSR1)
        log.wait_for(r"SIGUSR1: reopening log files", timeout=30)
        assert b.request("/health", query="rotated=1").status == 200
        log.wait_for(r"rotated=1", timeout=30, access=True)

        b.proc.send_signal(signal.SIGTERM)
        log.wait_for(r"second SIGTERM: drain period cut short", timeout=30)
        # Well before the 120 s drain period would have ended.
        assert b.proc.wait(60) == 0
        assert "rotated=1" not in rotated.read_text()
    finally:
        b.stop()


def test_sigint_gives_up_on_the_requests_in_flight(tmp_path):
    """After SIGTERM, while in-flight requests may take up to shutdown-timeout, SIGINT
    makes the stop a fast one at once."""
    port, = free_ports(1)
    b = make_bridge(tmp_path, {"p": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}},
                    bridge_extra={"shutdown-timeout": "300s"})
    try:
        b.start().wait_ready([("fcgi-tcp", "/health", "x")])
        tag = "held-" + uuid.uuid4().hex[:8]
        out = {}
        t = threading.Thread(target=lambda: out.update(r=b.request("/hold", query=f"tag={tag}")), daemon=True)
        t.start()
        wait_until(lambda: (tmp_path / f"{tag}.pid").exists(), 60, what="the held request in a worker")
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGTERM)
        b.log.wait_for(r"draining in-flight requests", since=mark, timeout=30)
        b.proc.send_signal(signal.SIGINT)
        b.log.wait_for(r"not waiting for the requests in flight", since=mark, timeout=30)
        b.log.wait_for(r"fast stop", since=mark, timeout=30)
        # Well before shutdown-timeout.
        assert b.proc.wait(60) == 0
        t.join(60)
        assert "r" not in out or out["r"].status != 200, "the held request was not given up on"
    finally:
        (tmp_path / "never.release").touch()
        b.stop()

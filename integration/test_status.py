"""Status, metrics, ping, access log format, log reopening and the slowlog, against a real
bridge: the status listener (HTTP on loopback), `status-path`/`ping-path` through a
FastCGI listener, a request held open to see it in the worker table, SIGUSR1 after
moving the access log, and a slow request whose Python stack reaches the log."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
import re
import signal
import threading
import urllib.request

import pytest

from harness import APPS, free_ports, make_bridge, wait_until
import fcgi_client

ACCESS_FORMAT = ('$remote_addr "$method $uri" $status $bytes $pool id=$request_id '
                 'q=$queue_ms app=$app_ms pid=$pid web=$web_request_id')
ACCESS_LINE = re.compile(r'^\S+ "GET (?P<uri>\S+)" (?P<status>\d+) \d+ \S+ id=(?P<id>\d+) '
                         r'q=(?P<q>[\d.]+|-) app=(?P<app>[\d.]+|-) pid=(?P<pid>\d+|-) web=(?P<web>\S+)$', re.M)


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("status")
    fport, sport = free_ports(2)
    pools = {
        "alpha": {"app": str(APPS / "edge_app.py"), "processes": 2, "threads": 2, "slowlog-timeout": "500ms"},
        "beta": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1},
    }
    listeners = {
        "front": {"fastcgi": f"127.0.0.1:{fport}",
                  "routes": [{"prefix": "/beta", "pool": "beta"}, {"pool": "alpha"}],
                  "status-path": "/fcgibridge-status", "ping-path": "/ping"},
    }
    # The control socket in a directory other users can traverse (pytest's tmp is 0700),
    # so the test of a foreign uid reaches the daemon's SO_PEERCRED check.
    ctl_dir = Path(tempfile.mkdtemp(prefix="fcgibridge-ctl-"))
    ctl_dir.chmod(0o711)
    b = make_bridge(workdir, pools, listeners, bridge_extra={
        "control-socket": str(ctl_dir / "control.sock"),
        "access-log": str(workdir / "access.log"),
        "access-log-format": ACCESS_FORMAT,
        "status": {"listen": f"127.0.0.1:{sport}", "path": "/status"},
    })
    b.status_url = f"http://127.0.0.1:{sport}"
    b.access_path = workdir / "access.log"
    b.control_sock = ctl_dir / "control.sock"
    try:
        b.start()
        b.wait_ready([("front", "/health", "x"), ("front", "/beta/health", "x")])
        # Every worker known to the status view (a worker appears once the bridge connected to it).
        wait_until(lambda: sum(p["total_workers"] for p in status_json(b)["pools"]) == 3, 60,
                   what="three workers in the status view")
        yield b
    finally:
        b.stop()
        shutil.rmtree(ctl_dir, ignore_errors=True)


def http(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def status_json(b):
    return json.loads(http(b.status_url + "/status?json")[2])


def pool_of(doc, name):
    return next(p for p in doc["pools"] if p["name"] == name)


def test_json_counts_requests_and_shows_the_running_one(sb):
    before = pool_of(status_json(sb), "alpha")
    for _ in range(5):
        assert sb.request("/health", listener="front").status == 200
    # A request held until released shows up as the current request of one worker.
    tag = f"alpha-held-{os.getpid()}-{time.monotonic_ns()}"
    t = threading.Thread(target=lambda: sb.request("/hold", query=f"tag={tag}", listener="front"))
    t.start()
    try:
        def running():
            alpha = pool_of(status_json(sb), "alpha")
            busy = [w for w in alpha["workers"] if w["current"]]
            return busy and (alpha, busy[0])
        alpha, worker = wait_until(running, 20, what="the /sleep request in the worker table")
        cur = worker["current"][0]
        assert (cur["method"], cur["uri"]) == ("GET", f"/hold?tag={tag}")
        assert worker["state"] == "busy" and alpha["busy_workers"] >= 1
        assert alpha["accepted_requests"] >= before["accepted_requests"] + 6
        assert alpha["processes"] == 2 and alpha["total_workers"] == 2
        assert all(w["spawn_time"] > 0 for w in alpha["workers"])
        # RSS is sampled about once a second by the pool's manager.
        wait_until(lambda: all(w["rss_bytes"] > 1_000_000 for w in pool_of(status_json(sb), "alpha")["workers"]),
                   20, what="RSS of every worker")
        # CPU time too: importing the app alone costs a Python worker well over 10 ms.
        assert all(w["cpu_seconds"] > 0 for w in pool_of(status_json(sb), "alpha")["workers"])
        assert all(w["retiring_reason"] is None for w in pool_of(status_json(sb), "alpha")["workers"])
        doc = status_json(sb)
        assert doc["pid"] == sb.pid
        assert [l["name"] for l in doc["listeners"]] == ["front"]
    finally:
        (sb.workdir / f"{tag}.release").write_text("")
        t.join(30)
    served = sum(w["requests"] for w in pool_of(status_json(sb), "alpha")["workers"])
    assert served >= 6


def test_queue_and_max_children_reached(sb):
    # beta has one process with one thread: it is held while two more requests come; they queue.
    before = pool_of(status_json(sb), "beta")
    tag = f"beta-held-{os.getpid()}-{time.monotonic_ns()}"
    threads = [threading.Thread(target=lambda: sb.request("/beta/hold", query=f"tag={tag}", listener="front"))]
    threads[0].start()
    try:
        wait_until(lambda: (sb.workdir / f"{tag}.pid").exists(), 60, what="beta's only thread held")
        threads += [threading.Thread(target=lambda: sb.request("/beta/health", listener="front")) for _ in range(2)]
        for t in threads[1:]:
            t.start()
        wait_until(lambda: pool_of(status_json(sb), "beta")["queue_length"] == 2, 60, what="two requests queued")
    finally:
        (sb.workdir / f"{tag}.release").write_text("")
        for t in threads:
            t.join(60)
    beta = pool_of(status_json(sb), "beta")
    # Each request that had to wait counts: the counter keeps moving while a pool stays
    # saturated, so an alert on its rate fires (docs/status.md).
    assert beta["max_children_reached"] >= before["max_children_reached"] + 2
    assert beta["max_queue_length"] >= 2
    assert beta["queue_length"] == 0


def test_openmetrics(sb):
    code, ctype, body = http(sb.status_url + "/metrics")
    assert code == 200 and ctype.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert re.search(r'^fcgibridge_pool_requests_total\{pool="alpha"\} [1-9]\d*$', body, re.M), body
    assert re.search(r'^fcgibridge_pool_workers\{pool="beta",state="idle"\} \d+$', body, re.M)
    assert re.search(r'^fcgibridge_worker_rss_bytes\{pool="alpha",pid="\d+"\} [1-9]\d*$', body, re.M)
    assert re.search(r'^fcgibridge_worker_cpu_seconds_total\{pool="alpha",pid="\d+"\} (0\.\d*[1-9]|[1-9][\d.]*)$', body, re.M), body
    # Every sample belongs to a family declared with # TYPE before it (a counter's samples
    # end in _total, a histogram's in _bucket, _count and _sum).
    declared = {}
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            declared[line.split()[2]] = line.split()[3]
        elif line and not line.startswith("#"):
            name = re.match(r"[a-z_]+", line).group(0)
            assert any(name == fam + suffix for fam, kind in declared.items() for suffix in suffixes[kind]), line


def test_html_page_refreshes_itself(sb):
    code, ctype, body = http(sb.status_url + "/status", accept="text/html")
    assert code == 200 and ctype.startswith("text/html")
    assert '<meta http-equiv="refresh"' in body
    for column in ("state", "spawns", "CPU", "retiring", "last restart"):
        assert f"<th>{column}</th>" in body, column
    assert 'data-pool="alpha"' in body and 'data-pool="beta"' in body


def test_status_and_ping_through_the_fastcgi_listener(sb):
    r = sb.request("/fcgibridge-status", query="json", listener="front")
    assert r.status == 200
    doc = json.loads(r.body)
    assert {p["name"] for p in doc["pools"]} == {"alpha", "beta"}
    r = sb.request("/ping", query="bytes=1", listener="front")
    assert (r.status, r.body) == (200, b"pong\n")
    # Other paths still go to the pools.
    assert sb.request("/health", listener="front").body == b"ok"
    # A response the bridge made counts its body in the access log, as an app's does.
    line_re = re.compile(r'^127\.0\.0\.1 "GET /ping\?bytes=1" 200 5 - id=\d+ q=- app=- pid=- web=-$', re.M)
    wait_until(lambda: line_re.search(sb.access_path.read_text()), 20, what="the ping's access line")


def test_status_and_ping_through_real_nginx(sb, tmp_path):
    """The operator's setup of docs/status.md: nginx passes the status path to the listener."""
    import requests
    from respond_servers import Nginx
    ngx = Nginx(tmp_path / "nginx", sb.listener_address("front"), tmp_path).start()
    try:
        r = requests.get(ngx.url("/fcgibridge-status?json"), timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
        assert {p["name"] for p in r.json()["pools"]} == {"alpha", "beta"}
        r = requests.get(ngx.url("/fcgibridge-status"), headers={"Accept": "text/html"}, timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert 'data-pool="alpha"' in r.text
        r = requests.get(ngx.url("/fcgibridge-status?openmetrics"), timeout=30)
        assert r.status_code == 200 and r.text.endswith("# EOF\n")
        r = requests.get(ngx.url("/ping"), timeout=30)
        assert (r.status_code, r.text) == (200, "pong\n")
        assert requests.get(ngx.url("/health"), timeout=30).text == "ok"
    finally:
        ngx.stop()


def test_status_listener_answers_404_and_405(sb):
    with pytest.raises(urllib.error.HTTPError) as e:
        http(sb.status_url + "/nope")
    assert e.value.code == 404
    req = urllib.request.Request(sb.status_url + "/status", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 405


def test_access_log_format_and_sigusr1_reopen(sb):
    r = sb.request("/health", query="fmt=1", listener="front")
    assert r.status == 200
    line_re = re.compile(r'^127\.0\.0\.1 "GET /health\?fmt=1" 200 2 alpha id=\d+ q=[\d.]+ app=[\d.]+ pid=\d+ web=-$', re.M)
    wait_until(lambda: line_re.search(sb.access_path.read_text()), 20, what="formatted access line")
    # logrotate: move the file away, SIGUSR1, the next line lands in a new file.
    rotated = sb.access_path.with_suffix(".log.1")
    os.rename(sb.access_path, rotated)
    mark = sb.log.mark()
    os.kill(sb.pid, signal.SIGUSR1)
    sb.log.wait_for("SIGUSR1: reopening log files", since=mark)
    assert sb.request("/health", query="after=1", listener="front").status == 200
    wait_until(lambda: sb.access_path.exists() and "/health?after=1" in sb.access_path.read_text(), 20,
               what="the access log reopened at its path")
    assert "/health?after=1" not in rotated.read_text()


def access_line(sb, uri):
    """The access log's fields for the request to `uri` (waited for)."""
    def found():
        return next((m.groupdict() for m in ACCESS_LINE.finditer(sb.access_path.read_text()) if m["uri"] == uri), None)
    return wait_until(found, 30, what=f"the access line of {uri}")


def test_access_log_tells_queueing_from_the_app_and_names_the_worker(sb):
    """beta has one thread: a request held there makes the next one queue. Each line says
    how long it waited and ran, on which worker, with the web server's request id."""
    tag = f"beta-q-{os.getpid()}-{time.monotonic_ns()}"
    held = threading.Thread(target=lambda: sb.request("/beta/hold", query=f"tag={tag}", listener="front",
                                                      extra=[("REQUEST_ID", "0af3c9d2e1b4")]))
    queued = threading.Thread(target=lambda: sb.request("/beta/health", query=f"after={tag}", listener="front",
                                                        headers={"X-Request-Id": "client-7"}))
    held.start()
    since_queued = time.monotonic()
    try:
        wait_until(lambda: (sb.workdir / f"{tag}.pid").exists(), 60, what="beta's only thread held")
        pid = (sb.workdir / f"{tag}.pid").read_text()
        queued.start()
        wait_until(lambda: pool_of(status_json(sb), "beta")["queue_length"] == 1, 60, what="a request queued")
        since_queued = time.monotonic()
    finally:
        (sb.workdir / f"{tag}.release").write_text("")
        waited_ms = (time.monotonic() - since_queued) * 1000
        held.join(60)
        queued.join(60)
    first = access_line(sb, f"/beta/hold?tag={tag}")
    second = access_line(sb, f"/beta/health?after={tag}")
    assert (first["pid"], first["web"]) == (pid, "0af3c9d2e1b4"), first
    assert (second["pid"], second["web"]) == (pid, "client-7"), second
    # The second waited (at least from when the test saw it queued until the release);
    # the first was on the worker all that time.
    assert float(second["q"]) >= waited_ms and float(first["app"]) > float(second["q"]), (first, second, waited_ms)
    # Ids count from the daemon's start time: a restarted daemon does not reuse them.
    assert abs(int(first["id"]) // 1_000_000 - status_json(sb)["start_time"]) <= 2, first
    assert int(second["id"]) > int(first["id"])


def test_access_log_leaves_out_what_a_request_did_not_have(sb):
    # A web server's id that is not plain (a space, or too long) is not logged.
    sb.request("/health", query="badid=1", listener="front",
               extra=[("REQUEST_ID", "bad id")], headers={"X-Request-Id": "x" * 65})
    assert access_line(sb, "/health?badid=1")["web"] == "-"
    # The ping path is answered by the bridge: no queue, no worker.
    assert sb.request("/ping", query="fields=1", listener="front").status == 200
    ping = access_line(sb, "/ping?fields=1")
    assert (ping["q"], ping["app"], ping["pid"]) == ("-", "-", "-"), ping


def test_slowlog_writes_the_python_stack_while_the_request_runs(sb):
    mark = sb.log.mark()
    result = {}
    # 6 s: the stack (due after slowlog-timeout, 500 ms) has room on a loaded machine
    t = threading.Thread(target=lambda: result.update(r=sb.request("/sleep", query="s=6", listener="front")))
    t.start()
    try:
        slow = sb.log.wait_for([r"slow request: GET /sleep\?s=6\b", r"alpha"], since=mark, timeout=20)
        rid = re.search(r"request_id=(\d+)", slow[0]).group(1)
        # The stack names the app's frame, tagged with the same request id ...
        sb.log.wait_for([rf"\[stack request_id={rid} ", r"edge_app\.py.*in application"], since=mark, timeout=20)
        sb.log.wait_for([rf"\[stack request_id={rid} ", r"time\.sleep"], since=mark, timeout=20)
        # ... while the request is still running.
        assert t.is_alive()
    finally:
        t.join(30)
    assert result["r"].status == 200
    assert pool_of(status_json(sb), "alpha")["slow_requests"] >= 1


def test_a_clients_control_characters_are_escaped_in_every_line_that_names_them(sb):
    """A direct FastCGI client (nginx refuses them) sends a URI and a method with a newline
    and a terminal escape: the daemon's log (the 400 of a short body, the slowlog), the
    access log and the status page show them escaped, never as a forged line of their own."""
    tag = f"inject-{os.getpid()}-{time.monotonic_ns()}"
    forged = f"2026-12-05T03:06:00.000000Z ERROR fcgibridge::daemon: FORGED-{tag}"

    def params(path, query, method="GET", **kw):
        p = fcgi_client.cgi_params(path, method, query, **kw)
        return [(k, f"{path}?{query}\n{forged}\x1b[2J" if k == "REQUEST_URI" else v) for k, v in p]

    def shown(path, query):
        return rf"{path}?{query}\n{forged}\x1b[2J"

    mark = sb.log.mark()
    # A body shorter than its CONTENT_LENGTH: answered 400 before a worker is taken.
    with sb.fcgi("front") as conn:
        conn.begin(1, params("/health", "short=1", "POST\x1b[2J", content_length=100), b"short")
        assert conn.wait(1).status == 400
    sb.log.wait_for([r"request body ended before its CONTENT_LENGTH", re.escape(shown("/health", "short=1"))],
                    since=mark)
    # A request held past alpha's slowlog-timeout: the slowlog and the status page name it.
    result = {}

    def held():
        with sb.fcgi("front") as conn:
            conn.begin(1, params("/hold", f"tag={tag}"))
            result["r"] = conn.wait(1)

    t = threading.Thread(target=held)
    t.start()
    try:
        sb.log.wait_for([r"slow request: GET " + re.escape(shown("/hold", f"tag={tag}"))], since=mark, timeout=30)
        current = [c for w in pool_of(status_json(sb), "alpha")["workers"] for c in w["current"]]
        assert shown("/hold", f"tag={tag}") in [c["uri"] for c in current], current
    finally:
        (sb.workdir / f"{tag}.release").write_text("")
        t.join(30)
    assert result["r"].status == 200
    access = wait_until(lambda: sb.access_path.read_bytes().count(f"FORGED-{tag}".encode()) == 2
                        and sb.access_path.read_bytes(), 30, what="both access lines")
    assert rf'"POST\x1b[2J {shown("/health", "short=1")}" 400 '.encode() in access
    assert rf'"GET {shown("/hold", f"tag={tag}")}" 200 '.encode() in access
    log = sb.log.path.read_bytes()[mark:]
    for name, text in (("log", log), ("access log", access)):
        assert b"\x1b" not in text, f"an escape byte reached the {name}"
        lines = text.decode("utf-8", "replace").splitlines()
        assert not [l for l in lines if l.startswith(forged)], f"a forged line in the {name}"
        assert all(r"\n" + forged in l for l in lines if f"FORGED-{tag}" in l), name


def run_cli(sb, *args):
    import subprocess
    return subprocess.run([str(sb.binary), *args, "--config", str(sb.confdir)], capture_output=True,
                          text=True, timeout=60)


def test_control_socket_status_table_and_json(sb):
    sock = sb.control_sock
    assert sock.exists() and (sock.stat().st_mode & 0o777) == 0o600
    r = run_cli(sb, "status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^POOL\s+STATE\s+REQUESTS\s+QUEUE/PEAK", r.stdout, re.M), r.stdout
    assert re.search(r"^alpha\s+running\s+\d+", r.stdout, re.M), r.stdout
    assert re.search(r"^alpha\s+\d+", r.stdout, re.M) and re.search(r"^beta\s+\d+", r.stdout, re.M)
    assert re.search(r"^front\s+fastcgi\s+127\.0\.0\.1:\d+", r.stdout, re.M)
    r = run_cli(sb, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pid"] == sb.pid


def test_control_socket_refuses_other_users(sb):
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (to connect as another uid) and /usr/bin/python3")
    import subprocess
    sock = sb.control_sock
    # A process of uid 65534 that could open the socket (mode opened up for this test).
    os.chmod(sock, 0o666)
    try:
        # The daemon answers a refused peer at once, before it reads a command.
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "print(s.recv(4096).decode())")
        r = subprocess.run(["/usr/bin/python3", "-c", code, str(sock)], capture_output=True, text=True, timeout=30,
                           user=65534, group=65534)
        assert r.stdout.startswith("error uid 65534 may not control this daemon"), (r.stdout, r.stderr)
    finally:
        os.chmod(sock, 0o600)


def test_control_unknown_socket_is_a_clear_error(sb, tmp_path):
    import subprocess
    r = subprocess.run([str(sb.binary), "status", "--socket", str(tmp_path / "none.sock")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "cannot reach the daemon at" in r.stderr
    assert "(is `fcgibridge run` running with this configuration?)" in r.stderr, r.stderr


def test_control_socket_of_another_user_says_whose_it_is(sb):
    """A user who may not open the socket (mode 0600, root's here) is told to run the
    command as root or the daemon's user, not asked whether the daemon runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to run the client as another uid)")
    import subprocess
    binary = sb.binary
    bin_dir = None
    if subprocess.run(["test", "-x", str(binary)], user=65534, group=65534, extra_groups=[]).returncode != 0:
        bin_dir = Path(tempfile.mkdtemp(prefix="fcgibridge-bin-"))  # the build's directory is private
        bin_dir.chmod(0o755)
        binary = Path(shutil.copy(binary, bin_dir))
    try:
        r = subprocess.run([str(binary), "status", "--socket", str(sb.control_sock)], capture_output=True,
                           text=True, timeout=30, user=65534, group=65534, extra_groups=[])
    finally:
        if bin_dir:
            shutil.rmtree(bin_dir, ignore_errors=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr == (f"fcgibridge: cannot reach the daemon at {sb.control_sock}: Permission denied (os error 13); "
                        "the control socket is the operator's (mode 0600): run this as root or as the daemon's "
                        "user\n"), r.stderr


def test_control_commands_reach_the_daemon_while_another_file_has_errors(sb):
    """configuration.md: the control commands read the configuration only to find the control
    socket. A mistake elsewhere (being fixed before a reload) is said in one line; the
    command still goes to the running daemon."""
    typo = sb.confdir / "70-typo.yaml"
    typo.write_text("pools:\n  bogus-key: 3\n")
    try:
        warning = (f"fcgibridge: the configuration in {sb.confdir} has errors (`fcgibridge check` shows them); "
                   f"using the control socket it names, {sb.control_sock}\n")
        r = run_cli(sb, "status", "--json")
        assert r.returncode == 0 and r.stderr == warning, (r.returncode, r.stderr)
        assert json.loads(r.stdout)["pid"] == sb.pid
        r = run_cli(sb, "top", "--count", "1")
        assert r.returncode == 0 and r.stderr == warning, (r.returncode, r.stderr)
        assert re.search(r"^alpha\s+running\s+\d+", r.stdout, re.M), r.stdout
        # the daemon's answer, not the configuration's errors
        r = run_cli(sb, "stop-instance", "sites", "alpha.test")
        assert r.returncode == 1 and r.stderr == warning + 'fcgibridge: no template "sites"\n', r.stderr
        # `check` names the mistake
        r = run_cli(sb, "check")
        assert r.returncode == 1 and "70-typo.yaml:2:14: pools.bogus-key: expected a mapping" in r.stderr, r.stderr
    finally:
        typo.unlink()
    sb.assert_running()


def test_control_reload_is_answered_with_the_outcome(sb):
    mark = sb.log.mark()
    r = run_cli(sb, "reload")
    assert r.returncode == 0 and r.stdout.startswith("reload done: pools added: none; changed: none;"), r.stderr
    sb.log.wait_for("control socket: reload requested", since=mark)
    sb.log.wait_for("fcgibridge reload: reloading", since=mark)
    sb.assert_running()


def test_status_follows_a_reload(sb):
    # A listener added by a reload appears on the status page and answers its ping-path.
    port, = free_ports(1)
    (sb.confdir / "60-extra.yaml").write_text(
        f"listeners:\n  extra:\n    fastcgi: 127.0.0.1:{port}\n    pool: beta\n    ping-path: /healthz\n")
    try:
        r = run_cli(sb, "reload")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "extra" in [l["name"] for l in status_json(sb)["listeners"]], 30,
                   what="the new listener in the status")
        resp = fcgi_client.fcgi_request(("127.0.0.1", port), "/healthz", headers={"Host": "x"})
        assert (resp.status, resp.body) == (200, b"pong\n")
    finally:
        (sb.confdir / "60-extra.yaml").unlink()


def test_a_pool_removed_and_added_again_starts_all_its_counters_afresh(sb):
    """Requests, responses and durations of a pool that a reload removed and a later one
    added again all start from zero together (not some from zero, some carried over)."""
    port, = free_ports(1)
    conf = sb.confdir / "60-gamma.yaml"

    def add():
        conf.write_text(f"pools:\n  gamma:\n    app: {APPS / 'edge_app.py'}\n    processes: 1\n    threads: 1\n"
                        + ("    allow-root: true\n" if os.geteuid() == 0 else "")
                        + f"listeners:\n  gamma:\n    fastcgi: 127.0.0.1:{port}\n    pool: gamma\n")
        assert run_cli(sb, "reload", "--wait").returncode == 0

    def counts():
        g = pool_of(status_json(sb), "gamma")
        return g["accepted_requests"], sum(g["responses"].values()), g["latency_seconds"]["since_start"]["count"]

    def request(path):
        return fcgi_client.fcgi_request(("127.0.0.1", port), path, headers={"Host": "x"})

    add()
    try:
        wait_until(lambda: request("/health").status == 200, 60, what="gamma serving")
        for _ in range(4):
            assert request("/health").status == 200
        wait_until(lambda: counts() == (5, 5, 5), 30, what="five requests counted")
        conf.unlink()
        assert run_cli(sb, "reload", "--wait").returncode == 0
        wait_until(lambda: "gamma" not in [p["name"] for p in status_json(sb)["pools"]], 60, what="gamma gone")
        # A second later than the daemon's start, so the two start times differ.
        started = status_json(sb)["start_time"]
        wait_until(lambda: int(time.time()) > started, 30, what="a second after the daemon's start")
        made = int(time.time())
        add()
        wait_until(lambda: request("/health").status == 200, 60, what="gamma serving again")
        wait_until(lambda: counts() == (1, 1, 1), 30, what="one request counted")
        # Its start time is when the reload made it, not the daemon's.
        doc = status_json(sb)
        assert pool_of(doc, "gamma")["start_time"] >= made > doc["start_time"], doc
    finally:
        conf.unlink(missing_ok=True)
        run_cli(sb, "reload", "--wait")


def test_workers_by_state_add_up_while_one_drains(tmp_path):
    """A worker retired with a request in flight is `draining` (JSON and OpenMetrics), and
    the states always add up to every process of the pool."""
    fport, sport = free_ports(2)
    b = make_bridge(tmp_path, {"p": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"127.0.0.1:{fport}", "pool": "p"}},
                    bridge_extra={"status": {"listen": f"127.0.0.1:{sport}", "path": "/status"}})
    b.status_url = f"http://127.0.0.1:{sport}"
    b.start()
    tag = f"drain-{os.getpid()}"
    t = threading.Thread(target=lambda: b.request("/hold", query=f"tag={tag}", listener="front"))
    try:
        b.wait_ready([("front", "/health", "x")])
        t.start()
        wait_until(lambda: pool_of(status_json(b), "p")["busy_workers"] == 1, 30, what="the held request running")
        b.proc.send_signal(signal.SIGUSR2)

        def draining():
            p = pool_of(status_json(b), "p")
            return p["draining_workers"] == 1 and p
        p = wait_until(draining, 30, what="the old worker draining")
        states = [p[k] for k in ("idle_workers", "busy_workers", "starting_workers", "draining_workers")]
        assert sum(states) == p["total_workers"], p
        metrics = http(b.status_url + "/status?openmetrics")[2]
        assert re.search(r'^fcgibridge_pool_workers\{pool="p",state="draining"\} 1$', metrics, re.M), metrics
        assert re.search(r'^fcgibridge_pool_workers\{pool="p",state="starting"\} \d+$', metrics, re.M), metrics
    finally:
        (tmp_path / f"{tag}.release").write_text("")
        t.join(30)
        b.stop()


def test_control_stop_is_a_graceful_stop(sb):
    # Last test of the module: it stops the shared bridge.
    r = run_cli(sb, "stop")
    assert r.returncode == 0 and "stop requested" in r.stdout, r.stderr
    assert sb.proc.wait(60) == 0
    assert not sb.control_sock.exists()

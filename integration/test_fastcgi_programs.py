"""Pools of generic FastCGI programs (`command:`), started like any spawned FastCGI
application with the listening socket on fd 0: a flup script and php-cgi."""
import importlib.util
import json
import shutil
import sys

import pytest

from harness import APPS, free_ports, make_bridge, wait_until


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    pools = {}
    if importlib.util.find_spec("flup") is not None:
        pools["flup"] = {"command": [sys.executable, str(APPS / "flup_app.fcgi")], "processes": 1}
    if shutil.which("php-cgi"):
        # as lighttpd's bin-path or mod_fcgid starts it: no PHP_FCGI_CHILDREN, so one
        # php-cgi process that serves one connection at a time
        pools["php"] = {"command": ["php-cgi"], "processes": 1}
    if not pools:
        pytest.skip("neither flup (pip) nor php-cgi (apt) is installed")
    workdir = tmp_path_factory.mktemp("programs")
    port = free_ports(1)[0]
    routes = [{"host": f"{name}.test", "pool": name} for name in pools]
    b = make_bridge(workdir, pools, {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "routes": routes}})
    try:
        b.start()
        yield b, pools
    finally:
        b.stop()


def test_flup_script_pool(programs):
    b, pools = programs
    if "flup" not in pools:
        pytest.skip("flup is not installed (pip install flup)")
    b.wait_ready([("fcgi-tcp", "/health", "flup.test")], timeout=60)
    resp = b.request("/environ", pool="flup.test", query="via=flup")
    assert resp.status == 200, resp.stdout[:300]
    env = json.loads(resp.body)
    assert env["QUERY_STRING"] == "via=flup"
    assert env["PATH_INFO"] == "/environ"
    # a body through flup
    resp = b.request("/upload", pool="flup.test", method="POST", body=b"f" * 100000)
    assert json.loads(resp.body)["size"] == 100000


@pytest.fixture(scope="module")
def flup_nginx(programs, tmp_path_factory):
    """nginx in front of the flup pool (routed by Host: flup.test)."""
    import respond_servers
    b, pools = programs
    if "flup" not in pools:
        pytest.skip("flup is not installed (pip install flup)")
    b.wait_ready([("fcgi-tcp", "/health", "flup.test")], timeout=60)
    work = tmp_path_factory.mktemp("flup-nginx")
    nginx = respond_servers.Nginx(work / "nginx", b.listener_address("fcgi-tcp"), work)
    # Nginx.start() probes /health with nginx's own Host; the catch-all needs the flup host.
    nginx.conf.write_text(nginx.conf.read_text().replace(
        "fastcgi_param PATH_INFO $fastcgi_script_name;",
        "fastcgi_param PATH_INFO $fastcgi_script_name;\n            fastcgi_param HTTP_HOST flup.test;", 1))
    nginx.start()
    try:
        yield b, nginx
    finally:
        nginx.stop()


def _raw_get(port, path):
    """GET over a fresh connection: (status, Content-Length, body bytes received, whether the
    connection ended before the declared body)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        declared = r.getheader("Content-Length")
        try:
            body, short = r.read(), False
        except http.client.IncompleteRead as e:
            body, short = e.partial, True
        return r.status, declared, body, short
    finally:
        conn.close()


def test_flup_body_longer_than_its_content_length_through_nginx(flup_nginx):
    """flup passes on whatever the app returns: the bridge sends only the declared bytes."""
    b, nginx = flup_nginx
    mark = b.log.mark()
    status, declared, body, short = _raw_get(nginx.port, "/cl-mismatch?declared=10&sent=25")
    assert (status, declared, short) == (200, "10", False)
    assert body == b"m" * 10
    line = b.log.wait_for([r"sent more body than its Content-Length declared", r'pool="flup"', r"pid=\d+",
                           r'request_id=\d+ ', r'uri="/cl-mismatch', r"declared=10 sent=25$"], since=mark)
    assert len(line) == 1, line
    # the connection to flup is still good
    assert _raw_get(nginx.port, "/health")[2] == b"ok"


def test_flup_body_shorter_than_its_content_length_through_nginx(flup_nginx):
    """A short body must reach the client as a truncated response, never as a complete one."""
    b, nginx = flup_nginx
    mark = b.log.mark()
    status, declared, body, short = _raw_get(nginx.port, "/cl-mismatch?declared=100&sent=10")
    assert status == 200 and declared == "100"
    assert short and len(body) < 100, (len(body), body[:40])
    b.log.wait_for([r"ended the response before the body its Content-Length declared", r'pool="flup"', r"pid=\d+",
                    r'request_id=\d+ ', r'uri="/cl-mismatch', r"declared=100 sent=10$"], since=mark)
    assert _raw_get(nginx.port, "/health")[2] == b"ok"


def test_php_cgi_pool(programs):
    b, pools = programs
    if "php" not in pools:
        pytest.skip("php-cgi is not installed (apt-get install php-cgi)")
    script = str(APPS / "hello.php")
    extra = [("SCRIPT_FILENAME", script), ("REDIRECT_STATUS", "200")]

    def ask():
        return b.request("/hello.php", pool="php.test", query="x=elephant", extra=extra)

    import time
    from harness import wait_until
    wait_until(lambda: b.log.wait_for([r"worker ready", r"php"], timeout=60), 60, what="php-cgi started")
    # every request is answered promptly, the first one too: a program that serves one
    # connection at a time must not get requests on connections it never accepted
    for i in range(6):
        t0 = time.monotonic()
        resp = ask()
        took = time.monotonic() - t0
        assert resp.status == 200, resp.stdout[:300]
        assert resp.body == b"php says elephant\n"
        assert resp.header("X-Php") == "yes"
        # (a request sent on a connection php-cgi never accepted waits for good)
        assert took < 15, f"request {i} to php-cgi took {took:.1f}s"


def test_program_pool_check_output(tmp_path):
    """`fcgibridge check` shows a command pool as a command."""
    import subprocess
    from harness import bridge_binary
    d = tmp_path / "conf.d"
    d.mkdir()
    import os
    root_ok = "    allow-root: true\n" if os.geteuid() == 0 else ""  # root workers need consent
    (d / "10.yaml").write_text(
        "pools:\n  php:\n    command: [php-cgi]\n" + root_ok + "  both:\n    command: [php-cgi]\n    app: x.py\n"
        + root_ok + "listeners:\n  l:\n    fastcgi: 127.0.0.1:9999\n    pool: php\n")
    r = subprocess.run([str(bridge_binary()), "check", "--config", str(d)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "10.yaml:" in r.stderr and "not both" in r.stderr, r.stderr


def test_a_response_the_worker_sent_unasked_is_not_the_next_requests(tmp_path):
    """A program that writes a second response on an idle connection: before, the next
    request on that connection got it (and every later one the answer before its own)."""
    port = free_ports(1)[0]
    pools = {"double": {"command": [sys.executable, str(APPS / "double_answer.fcgi")], "processes": 1,
                        "threads": 1}}
    b = make_bridge(tmp_path, pools, {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "double"}})
    try:
        b.start()
        first = wait_until(lambda: b.request("/", listener="l").body, 60, what="the program's first answer")
        assert first == b"answer 1"
        mark = b.log.mark()
        wait_until(lambda: (tmp_path / "forged.sent").exists(), 60, what="the unasked-for response")
        assert b.request("/", listener="l").body == b"answer 2"
        line = b.log.wait_for(r"the worker sent \d+ bytes on an idle connection .*; connection replaced", since=mark)[-1]
        assert 'pool="double"' in line, line
        assert [b.request("/", listener="l").body for _ in range(3)] == [b"answer 3", b"answer 4", b"answer 5"]
    finally:
        b.stop()

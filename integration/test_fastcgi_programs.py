"""Pools of generic FastCGI programs (`command:`), started like any spawned FastCGI
application with the listening socket on fd 0: a flup script and php-cgi."""
import importlib.util
import json
import shutil
import sys

import pytest

from harness import APPS, free_ports, make_bridge


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
        assert took < 5, f"request {i} to php-cgi took {took:.1f}s"


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

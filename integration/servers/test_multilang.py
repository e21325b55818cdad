"""One nginx, two FastCGI back ends: PHP through php-fpm and Python through fcgibridge,
configured with the `php` snippet of docs/servers/nginx.md. (Pools of php-cgi and of a
flup script inside the bridge are tested in integration/test_fastcgi_programs.py.)"""
import glob
import os
import shutil
import subprocess
import threading

import pytest
import requests

import frontends

TIMEOUT = 120


def php_fpm_binary():
    found = shutil.which("php-fpm") or next(iter(sorted(glob.glob("/usr/sbin/php-fpm*"))), None)
    return found


class NginxWithPhp(frontends.Nginx):
    variants = {"nginx-fastcgi": "8080", "nginx-scgi": "8081", "nginx-php": "8082"}

    def __init__(self, bridge_ports, www, fpm_socket):
        super().__init__(bridge_ports, www)
        self.fpm_socket = fpm_socket

    def extra_http(self):
        s = self.subst()
        s["/run/php/php-fpm.sock"] = str(self.fpm_socket)
        return frontends.substitute(frontends.snippet("nginx.md", "php"), s)


@pytest.fixture(scope="module")
def stack(sbridge, www):
    fpm = php_fpm_binary()
    if not fpm:
        pytest.skip("php-fpm is not installed (apt-get install php-fpm)")
    (www / "hello.php").write_text(
        '<?php header("X-Served-By: php-fpm"); echo "php ", PHP_SAPI, " ", $_GET["n"] ?? "", "\\n";\n')
    (www / "hello.php").chmod(0o644)
    workdir = frontends.private_dir("php-fpm")
    sock = workdir / "php-fpm.sock"
    user = "user = root\ngroup = root\n" if os.geteuid() == 0 else ""
    (workdir / "php-fpm.conf").write_text(
        f"[global]\npid = {workdir}/php-fpm.pid\nerror_log = {workdir}/php-fpm.log\ndaemonize = no\n"
        f"[app]\n{user}listen = {sock}\nlisten.mode = 0666\npm = static\npm.max_children = 2\n")
    argv = [fpm, "-F", "-n", "-y", str(workdir / "php-fpm.conf")] + (["-R"] if os.geteuid() == 0 else [])
    out = open(workdir / "stdout.log", "ab")
    fpm_proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    out.close()
    srv = NginxWithPhp(sbridge.ports, www, sock)
    try:
        frontends.poll(lambda: sock.exists(), 60, "php-fpm's socket", fpm_proc,
                       lambda: (workdir / "stdout.log").read_text())
        srv.start()
        yield srv
    finally:
        srv.stop()
        srv.cleanup()
        fpm_proc.terminate()
        try:
            fpm_proc.wait(20)
        except subprocess.TimeoutExpired:
            fpm_proc.kill()
            fpm_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_php_and_python_behind_one_nginx(stack):
    base = f"http://127.0.0.1:{stack.ports['8082']}"
    php = requests.get(base + "/hello.php?n=1", timeout=TIMEOUT)
    assert php.status_code == 200, (php.text, stack.log_text())
    assert php.headers.get("X-Served-By") == "php-fpm"
    assert php.text == "php fpm-fcgi 1\n"
    py = requests.get(base + "/env?n=2", timeout=TIMEOUT)
    assert py.status_code == 200, py.text
    env = py.json()
    assert env["QUERY_STRING"] == "n=2" and env["PATH_INFO"] == "/env"


def test_both_under_concurrent_load(stack):
    base = f"http://127.0.0.1:{stack.ports['8082']}"
    results = []

    def one(i):
        path = f"/hello.php?n={i}" if i % 2 else f"/env?n={i}"
        r = requests.get(base + path, timeout=TIMEOUT)
        results.append((i, r.status_code, r.text))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(results) == 40
    for i, status, text in results:
        assert status == 200, (i, status, text[:200])
        if i % 2:
            assert text == f"php fpm-fcgi {i}\n"
        else:
            assert f'"QUERY_STRING": "n={i}"' in text

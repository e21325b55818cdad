"""Spawned mode: lighttpd (bin-path), Apache mod_fcgid (FcgidWrapper) and h2o
(fastcgi.spawn) start fcgibridge with the listening socket on fd 0 (the wrapper and the
`fastcgi: fd:0` listener of docs/servers/spawned.md). Each server gets an instance of its
own here, so that stopping it can be watched: the bridge it started must drain, log
"stopped" and be gone with its workers. FCGI_WEB_SERVER_ADDRS and the fd 0 check are
tested on a bridge started directly with an inherited TCP socket."""
import os
import socket
import subprocess

import pytest
import requests

import fcgi_client
import frontends
import support
from harness import bridge_binary, wait_until

ROOT = "    allow-root: true\n" if os.geteuid() == 0 else ""
CASES = {"lighttpd-spawned": frontends.Lighttpd, "apache-fcgid": frontends.Apache, "h2o-spawned": frontends.H2o}


def bridge_pids(confdir) -> set:
    """Processes running the spawned bridge with this configuration, and their workers."""
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if str(confdir).encode() in cmd and any(c.endswith(b"fcgibridge") for c in cmd):
            found |= frontends.descendants(int(d))
    return found


@pytest.mark.parametrize("variant", list(CASES))
def test_started_by_the_server_and_stopped_with_it(variant, sbridge, www):
    cls = CASES[variant]
    srv = cls(sbridge.ports, www)
    if not srv.binary:
        pytest.skip(f"{cls.name} is not installed")
    try:
        srv.start()  # waits for a 200 through the spawned bridge
        port = srv.port(variant)
        r = requests.get(f"http://127.0.0.1:{port}/env?spawned=1", timeout=60)
        assert r.status_code == 200, r.text[:300]
        log = srv.spawned_log()
        text = log.read_text()
        assert "address=fd:0" in text, text[-2000:]
        pids = bridge_pids(srv.workdir / "spawned.d")
        assert pids, "no spawned fcgibridge process found"
        bridge_env = r.json()
        assert bridge_env["QUERY_STRING"] == "spawned=1"
        # The app is at the root whatever split the server made of a longer path
        # (mod_fcgid at `<Location />` takes the first segment for the script: `mount: /`).
        deep = requests.get(f"http://127.0.0.1:{port}/private/a/b", timeout=60)
        assert deep.status_code == 200, deep.text[:300]
        assert (deep.json()["SCRIPT_NAME"], deep.json()["PATH_INFO"]) == ("", "/private/a/b"), deep.text[:300]
    finally:
        srv.stop()
    try:
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and not zombie(p) for p in pids), 40, 0.2,
                   what=f"the spawned bridge and its workers to exit after {cls.name} stopped")
        text = log.read_text()
        assert "stopped" in text.splitlines()[-1] or any(ln.rstrip().endswith("stopped") for ln in text.splitlines()), \
            text[-2000:]
        how = "drained and exited" if "graceful stop: draining" in text else "exited"
        support.record(variant, "spawned mode", "yes",
                       f"{cls.name} starts fcgibridge (wrapper + `fastcgi: fd:0`) with its unix socket on fd 0; "
                       f"when {cls.name} stops, the bridge {how} with its workers")
    finally:
        srv.cleanup()


def zombie(pid) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start_on_fd0(tmp_path, env_extra):
    """fcgibridge run with a listening TCP socket as fd 0 and a `fastcgi: fd:0` listener."""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "app.yaml").write_text(
        f"bridge:\n  runtime-dir: \"{tmp_path / 'run'}\"\n"
        f"pools:\n  app:\n    app: \"{frontends.APP}\"\n    processes: 1\n    threads: 2\n{ROOT}"
        "listeners:\n  web:\n    fastcgi: fd:0\n    pool: app\n")
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    env = dict(os.environ, NO_COLOR="1", **env_extra)
    logf = open(tmp_path / "bridge.log", "ab")
    proc = subprocess.Popen([str(bridge_binary()), "run", "--config", str(conf)], stdin=lsock.fileno(),
                            stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    logf.close()
    addr = lsock.getsockname()
    lsock.close()
    return proc, addr, tmp_path / "bridge.log"


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def test_fcgi_web_server_addrs_allows_listed_peers(tmp_path):
    proc, addr, log = start_on_fd0(tmp_path, {"FCGI_WEB_SERVER_ADDRS": "10.1.2.3, 127.0.0.1"})
    try:
        def answered():
            assert proc.poll() is None, log.read_text()
            return fcgi_client.fcgi_request(addr, "/health", headers={"Host": "x"}).status == 200
        wait_until(answered, 60, 0.2, what="an answer over the inherited socket")
    finally:
        stop(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert "address=fd:0" in log.read_text()


def test_fcgi_web_server_addrs_refuses_other_peers(tmp_path):
    proc, addr, log = start_on_fd0(tmp_path, {"FCGI_WEB_SERVER_ADDRS": "10.1.2.3"})
    try:
        wait_until(lambda: "worker ready" in log.read_text() or proc.poll() is not None, 60, 0.2, what="worker ready")
        assert proc.poll() is None, log.read_text()
        with pytest.raises((OSError, AssertionError, ValueError, EOFError, Exception)):
            fcgi_client.fcgi_request(addr, "/health", headers={"Host": "x"})
        wait_until(lambda: "peer not in FCGI_WEB_SERVER_ADDRS" in log.read_text(), 10, 0.1, what="refusal logged")
    finally:
        stop(proc)


def test_fd0_that_is_not_a_socket_is_a_clear_error(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "app.yaml").write_text(f"pools:\n  app:\n    app: \"{frontends.APP}\"\n{ROOT}"
                                   "listeners:\n  web:\n    fastcgi: fd:0\n    pool: app\n")
    r = subprocess.run([str(bridge_binary()), "run", "--config", str(conf)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    # Logged under the module that met it, for a filter or reader by target.
    assert "ERROR fcgibridge::listen: listener web: fd 0 is not a listening socket" in r.stderr, r.stderr

"""`file-handoff: serve`: the bridge sends an app's X-Sendfile file itself, only from
`file-roots`, with ranges, conditional requests and HEAD, checked with curl through nginx.
See docs/file-handoff.md."""
import os
import subprocess

import pytest

import harness
import respond_servers


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("sendfile")
    root = work / "files"
    root.mkdir()
    (root / "a.txt").write_bytes(b"0123456789abcdefghij")
    big = os.urandom(3 * 1024 * 1024 + 123)
    (root / "big.bin").write_bytes(big)
    (root / "sub").mkdir()
    (work / "secret.txt").write_text("secret\n")
    os.symlink(work / "secret.txt", root / "escape.txt")
    os.symlink(root / "a.txt", root / "inside.txt")
    (port,) = harness.free_ports(1)
    pools = {"app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=4)}
    listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "pool": "app", "file-handoff": "serve",
                          "file-roots": [str(root)]}}
    bridge = respond_servers.start_bridge(work, pools, listeners, [("fcgi", "/health", "any")])
    nginx = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi"), work).start()
        yield bridge, nginx, root, big
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def curl(nginx, path, *args):
    """(status, headers dict lower-cased, body) of one curl request."""
    out = subprocess.run(["curl", "-s", "-S", "-D", "-", "--max-time", "60", *args, nginx.url(path)],
                         capture_output=True, timeout=90, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def sf(root, name):
    return f"/sendfile?path={root}/{name}"


def test_whole_file_streamed(env):
    _, nginx, root, big = env
    status, h, body = curl(nginx, sf(root, "big.bin"))
    assert status == 200
    assert body == big
    assert h["content-length"] == str(len(big)) and h["content-type"] == "application/octet-stream"
    assert "etag" in h and h["last-modified"].endswith("GMT")
    status, h, body = curl(nginx, sf(root, "a.txt"))
    assert (status, body, h["content-type"]) == (200, b"0123456789abcdefghij", "text/plain; charset=utf-8")


def test_ranges(env):
    _, nginx, root, _ = env
    status, h, body = curl(nginx, sf(root, "a.txt"), "-r", "2-5")
    assert (status, body, h["content-range"]) == (206, b"2345", "bytes 2-5/20")
    status, h, body = curl(nginx, sf(root, "a.txt"), "-r", "-3")
    assert (status, body) == (206, b"hij")
    status, h, body = curl(nginx, sf(root, "a.txt"), "-r", "0-1,10-11")
    assert status == 206 and h["content-type"].startswith("multipart/byteranges; boundary=")
    assert b"Content-Range: bytes 0-1/20\r\n\r\n01\r\n" in body and b"Content-Range: bytes 10-11/20\r\n\r\nab\r\n" in body
    assert int(h["content-length"]) == len(body)
    status, h, _ = curl(nginx, sf(root, "a.txt"), "-r", "50-60")
    assert status == 416 and h["content-range"] == "bytes */20"


def test_conditional_requests(env):
    _, nginx, root, _ = env
    _, h, _ = curl(nginx, sf(root, "a.txt"))
    status, _, body = curl(nginx, sf(root, "a.txt"), "-H", f"If-None-Match: {h['etag']}")
    assert (status, body) == (304, b"")
    status, _, body = curl(nginx, sf(root, "a.txt"), "-H", f"If-Modified-Since: {h['last-modified']}")
    assert (status, body) == (304, b"")
    status, _, _ = curl(nginx, sf(root, "a.txt"), "-H", "If-None-Match: \"other\"")
    assert status == 200


def test_head(env):
    _, nginx, root, big = env
    status, h, body = curl(nginx, sf(root, "big.bin"), "-I")
    assert status == 200 and body.strip() == b"" and h["content-length"] == str(len(big))


@pytest.mark.parametrize("name,status", [("../secret.txt", 403), ("escape.txt", 403), ("sub", 404),
                                         ("missing.txt", 404)])
def test_refused_paths(env, name, status):
    bridge, nginx, root, _ = env
    mark = bridge.log.mark()
    got, _, body = curl(nginx, sf(root, name))
    assert got == status
    assert b"secret" not in body
    bridge.log.wait_for(r"X-Sendfile refused, answering " + str(status), since=mark)


def test_symlink_inside_the_root_is_served(env):
    _, nginx, root, _ = env
    status, _, body = curl(nginx, sf(root, "inside.txt"))
    assert (status, body) == (200, b"0123456789abcdefghij")


LIGHTTPD_CONF = """
server.modules += ("mod_fastcgi")
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{work}/lighttpd-error.log"
server.pid-file = "{work}/lighttpd.pid"
fastcgi.server = ("/" => ((
    "host" => "127.0.0.1", "port" => {bridge_port},
    "check-local" => "disable",
    "fix-root-scriptname" => "enable",
    "x-sendfile" => "enable",
    "x-sendfile-docroot" => ("{root}"),
)))
"""


@pytest.fixture(scope="module")
def lighttpd_env(tmp_path_factory):
    """`file-handoff: pass` (the default) behind lighttpd: lighttpd serves X-Sendfile itself."""
    import shutil
    import signal
    binary = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
    if not os.path.exists(binary):
        pytest.fail("lighttpd not found (apt-get install lighttpd)", pytrace=False)
    work = tmp_path_factory.mktemp("lighttpd-sendfile")
    root = work / "files"
    root.mkdir()
    (root / "doc.txt").write_bytes(b"lighttpd sent this\n")
    (work / "outside.txt").write_text("outside\n")
    bridge_port, port = harness.free_ports(2)
    pools = {"app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2)}
    bridge = respond_servers.start_bridge(work, pools, {"fcgi": {"fastcgi": f"127.0.0.1:{bridge_port}", "pool": "app"}},
                                          [("fcgi", "/health", "any")])
    conf = work / "lighttpd.conf"
    conf.write_text(LIGHTTPD_CONF.format(root=root, work=work, port=port, bridge_port=bridge_port))
    proc = subprocess.Popen([binary, "-D", "-f", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError("lighttpd exited: " + (work / "lighttpd-error.log").read_text())
            return harness.can_connect(("127.0.0.1", port))
        harness.wait_until(up, 60, what="lighttpd")
        yield f"http://127.0.0.1:{port}", root, work
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        bridge.stop()


def test_lighttpd_serves_x_sendfile_in_pass_mode(lighttpd_env):
    import requests
    base, root, work = lighttpd_env
    r = requests.get(f"{base}/sendfile?path={root}/doc.txt", timeout=30)
    assert r.status_code == 200 and r.content == b"lighttpd sent this\n"
    # outside lighttpd's x-sendfile-docroot: lighttpd refuses, the file never leaks
    r = requests.get(f"{base}/sendfile?path={work}/outside.txt", timeout=30)
    assert r.status_code >= 400 and b"outside" not in r.content


@pytest.fixture(scope="module")
def translate_env(tmp_path_factory):
    """`file-handoff: translate` behind nginx: an app's lighttpd-style X-Sendfile becomes
    X-Accel-Redirect into nginx's internal location."""
    work = tmp_path_factory.mktemp("translate")
    root = work / "files"
    root.mkdir()
    (root / "report.txt").write_bytes(b"nginx sent this via X-Accel-Redirect\n")
    (port,) = harness.free_ports(1)
    pools = {"app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2)}
    listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "pool": "app", "dialect": "nginx",
                          "file-handoff": "translate", "file-map": {str(root): "/protected"}}}
    bridge = respond_servers.start_bridge(work, pools, listeners, [("fcgi", "/health", "any")])
    nginx = None
    try:
        # nginx's internal location /protected/ is an alias of `root`
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi"), root).start()
        yield nginx, root
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def test_translate_x_sendfile_to_x_accel_redirect(translate_env):
    nginx, root = translate_env
    status, _, body = curl(nginx, f"/sendfile?path={root}/report.txt")
    assert (status, body) == (200, b"nginx sent this via X-Accel-Redirect\n")
    # a path outside every mapped prefix is not translated: nginx passes the header on and
    # sends the app's own body, never the file
    status, h, body = curl(nginx, "/sendfile?path=/etc/passwd")
    assert b"root:" not in body and body == b"not the file"

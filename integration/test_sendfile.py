"""File hand-off (docs/file-handoff.md), each mode behind real web servers, checked with curl:
`serve` (the bridge sends X-Sendfile, X-Sendfile2 and mapped X-Accel-Redirect files itself,
only from `file-roots`, with ranges, conditional requests and HEAD, keeping the app's own
headers) behind nginx and Caddy; `translate` behind nginx and lighttpd (a header the server
cannot follow never reaches the client, X-Sendfile2 over lighttpd's mod_scgi included);
`pass` behind lighttpd and Apache mod_proxy_scgi; and Flask's send_file (wsgi.file_wrapper)
handed off by the worker instead of streamed where the listener's `file-hand-back` says so."""
import itertools
import os
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

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
    (root / "100k.bin").write_bytes(os.urandom(100 * 1024))
    (root / "small.txt").write_bytes(bytes(range(32, 127)) * 4)
    # Last modified well before the requests: an If-Range date may only match a settled file.
    for name in ("100k.bin", "small.txt"):
        os.utime(root / name, (1_700_000_000, 1_700_000_000))
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
    # the app's own Content-Type is kept (test_serve_keeps_the_apps_headers: by extension otherwise)
    assert h["content-length"] == str(len(big)) and h["content-type"] == "text/plain"
    assert "etag" in h and h["last-modified"].endswith("GMT")
    status, h, body = curl(nginx, sf(root, "a.txt"))
    assert (status, body, h["content-type"]) == (200, b"0123456789abcdefghij", "text/plain")


def test_ranges(env):
    _, nginx, root, _ = env
    status, h, body = curl(nginx, sf(root, "a.txt"), "-r", "2-5")
    assert (status, body, h["content-range"]) == (206, b"2345", "bytes 2-5/20")
    status, h, body = curl(nginx, sf(root, "a.txt"), "-r", "-3")
    assert (status, body) == (206, b"hij")
    _, _, _, big = env
    status, h, body = curl(nginx, sf(root, "big.bin"), "-r", "0-1,1000-1001")
    assert status == 206 and h["content-type"].startswith("multipart/byteranges; boundary=")
    n = len(big)
    assert f"Content-Range: bytes 0-1/{n}\r\n\r\n".encode() + big[0:2] + b"\r\n" in body
    assert f"Content-Range: bytes 1000-1001/{n}\r\n\r\n".encode() + big[1000:1002] + b"\r\n" in body
    assert int(h["content-length"]) == len(body)
    status, h, _ = curl(nginx, sf(root, "a.txt"), "-r", "50-60")
    assert status == 416 and h["content-range"] == "bytes */20"


def test_many_ranges_get_the_whole_file_once(env):
    """500 ranges of the whole file in a 2.5 KB header once made a 100 KB file a 50 MB 206.
    More ranges than max-ranges (16 by default): the Range header is ignored, 200 with the
    file once, and one log line names the request."""
    bridge, nginx, root, _ = env
    data = (root / "100k.bin").read_bytes()
    mark = bridge.log.mark()
    status, h, body = curl(nginx, sf(root, "100k.bin"), "-H", "Range: bytes=" + ",".join(["0-"] * 500))
    assert (status, len(body)) == (200, len(data)) and body == data
    assert h["content-length"] == str(len(data)) and "content-range" not in h
    line = "\n".join(bridge.log.wait_for(r"Range ignored, answering 200 with the whole file: 500 ranges, more than max-ranges \(16\)", since=mark))
    assert "request_id" in line and "pool" in line and "/sendfile" in line and "peer" in line
    # 16 ranges are still ranges: they overlap, and coalesce to one part
    status, h, body = curl(nginx, sf(root, "100k.bin"), "-H", "Range: bytes=" + ",".join(["0-"] * 16))
    assert (status, h["content-range"], body) == (206, f"bytes 0-{len(data) - 1}/{len(data)}", data)


def test_overlapping_ranges_coalesce(env):
    """Overlapping, adjacent and nearly adjacent ranges (a gap of at most 80 bytes, about a
    multipart part's own overhead) become one range, in ascending order: one single-part 206."""
    _, nginx, root, _ = env
    data = (root / "100k.bin").read_bytes()
    for spec, (s, e) in [("150-299,0-99,50-199", (0, 299)),   # overlapping, out of order
                         ("0-9,10-19", (0, 19)),                # adjacent
                         ("0-9,90-99", (0, 99)),                # a gap of 80 bytes
                         ("-100,0-", (0, len(data) - 1))]:      # a suffix inside an open range
        status, h, body = curl(nginx, sf(root, "100k.bin"), "-r", spec)
        assert (status, h["content-range"]) == (206, f"bytes {s}-{e}/{len(data)}"), spec
        assert body == data[s:e + 1] and not h["content-type"].startswith("multipart/"), spec
    # further apart: two parts, sorted
    status, h, body = curl(nginx, sf(root, "100k.bin"), "-r", "5000-5009,0-9")
    assert status == 206 and h["content-type"].startswith("multipart/byteranges")
    first, second = body.index(b"bytes 0-9/"), body.index(b"bytes 5000-5009/")
    assert first < second and int(h["content-length"]) == len(body)


def test_ranges_bigger_than_the_file_get_the_file(env):
    """Four 1-byte parts of a 380-byte file would take more bytes as multipart/byteranges
    than the file itself: 200 with the file, logged."""
    bridge, nginx, root, _ = env
    data = (root / "small.txt").read_bytes()
    mark = bridge.log.mark()
    status, h, body = curl(nginx, sf(root, "small.txt"), "-r", "0-0,100-100,200-200,300-300")
    assert (status, body) == (200, data) and "content-range" not in h
    bridge.log.wait_for(r"Range ignored, answering 200 with the whole file: the 4 ranges would take \d+ bytes as "
                        r"multipart/byteranges, more than the whole file \(380 bytes\)", since=mark)


def test_if_range(env):
    """If-Range: the current strong ETag or the exact Last-Modified date gives the range; a
    stale one (or a weak ETag, never a match) gives 200 with the whole file."""
    _, nginx, root, _ = env
    data = (root / "100k.bin").read_bytes()
    _, h, _ = curl(nginx, sf(root, "100k.bin"))
    etag, modified = h["etag"], h["last-modified"]
    for validator, want in [(etag, 206), (modified, 206), ('"0-0"', 200), ("W/" + etag, 200),
                            ("Tue, 14 Nov 2023 21:13:19 GMT", 200), ("yesterday", 200)]:
        status, h, body = curl(nginx, sf(root, "100k.bin"), "-r", "10-19", "-H", f"If-Range: {validator}")
        assert status == want, validator
        assert body == (data[10:20] if want == 206 else data), validator
    # without Range, If-Range means nothing
    status, _, body = curl(nginx, sf(root, "100k.bin"), "-H", 'If-Range: "stale"')
    assert (status, body) == (200, data)


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


@pytest.mark.parametrize("name,status,why", [
    ("../secret.txt", 500, r"file hand-off dropped, answering 500: .* is not a normal path: it has a `\.\.` segment"),
    ("./a.txt", 500, r"file hand-off dropped, answering 500: .* is not a normal path: it has a `\.` segment"),
    ("escape.txt", 403, "X-Sendfile refused, answering 403"),
    ("sub", 404, "X-Sendfile refused, answering 404"),
    ("missing.txt", 404, "X-Sendfile refused, answering 404"),
])
def test_refused_paths(env, name, status, why):
    bridge, nginx, root, _ = env
    mark = bridge.log.mark()
    got, _, body = curl(nginx, sf(root, name))
    assert got == status
    assert b"secret" not in body
    bridge.log.wait_for(why, since=mark)


@pytest.mark.parametrize("target", ["{work}/secret.txt", "{work}/missing.txt", "{root}-evil/x", "/proc/self/environ",
                                    "{home}/no-such-file"])
def test_nothing_outside_the_roots_is_looked_up(env, target):
    """The bridge (often root) once opened a path before comparing it with the roots: 403
    for a file that exists, 404 for one that does not told a tenant what exists where its
    own user cannot look. Everything outside the roots is 403, decided on the path as
    written."""
    bridge, nginx, root, _ = env
    target = target.format(work=root.parent, root=root, home=os.path.expanduser("~"))
    mark = bridge.log.mark()
    status, _, body = curl(nginx, f"/sendfile?path={quote(target)}")
    assert status == 403 and b"secret" not in body
    line = "\n".join(bridge.log.wait_for(r"X-Sendfile refused, answering 403: .* is not under any of the listener's "
                                         r"file-roots", since=mark))
    assert target in line and "request_id" in line


def test_symlink_inside_the_root_is_served(env):
    _, nginx, root, _ = env
    status, _, body = curl(nginx, sf(root, "inside.txt"))
    assert (status, body) == (200, b"0123456789abcdefghij")


HANDOFF_APP = str(harness.APPS / "handoff_app.py")


def handoff_pool(files, threads=4):
    return harness.pool(HANDOFF_APP, processes=1, threads=threads, env={"HANDOFF_FILES_DIR": str(files)})


def get(base, path, *args):
    """(status, headers dict lower-cased, body) of one curl request to `base`."""
    out = subprocess.run(["curl", "-s", "-S", "-D", "-", "--max-time", "60", *args, base + path],
                         capture_output=True, timeout=90, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    return int(lines[0].split()[1]), headers, body


def run_server(cmd, port, work, name):
    """Start a web server (its own session), wait for its port; returns the process."""
    log = open(work / f"{name}.out", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ, HOME=str(work)))
    log.close()

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited: " + (work / f"{name}.out").read_text(errors="replace"))
        return harness.can_connect(("127.0.0.1", port))
    harness.wait_until(up, 60, what=name)
    return proc


def stop_server(proc, sig=None):
    import signal
    if proc.poll() is None:
        proc.send_signal(sig or signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


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
    """`file-handoff: pass` (the default) behind lighttpd: lighttpd serves X-Sendfile and
    X-Sendfile2 itself."""
    import shutil
    import signal
    binary = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
    if not os.path.exists(binary):
        pytest.fail("lighttpd not found (apt-get install lighttpd)", pytrace=False)
    work = tmp_path_factory.mktemp("lighttpd-sendfile")
    root = work / "files"
    root.mkdir()
    (root / "doc.txt").write_bytes(b"lighttpd sent this\n")
    (root / "a.txt").write_bytes(b"0123456789abcdefghij")
    (root / "with space.txt").write_bytes(b"spaced\n")
    (work / "outside.txt").write_text("outside\n")
    bridge_port, port = harness.free_ports(2)
    pools = {"app": handoff_pool(root, threads=2)}
    bridge = respond_servers.start_bridge(work, pools, {"fcgi": {"fastcgi": f"127.0.0.1:{bridge_port}", "pool": "app"}},
                                          [("fcgi", "/health", "any")])
    conf = work / "lighttpd.conf"
    conf.write_text(LIGHTTPD_CONF.format(root=root, work=work, port=port, bridge_port=bridge_port))
    proc = None
    try:
        proc = run_server([binary, "-D", "-f", str(conf)], port, work, "lighttpd")
        yield f"http://127.0.0.1:{port}", root, work, bridge
    finally:
        if proc:
            stop_server(proc, signal.SIGINT)
        bridge.stop()


def test_lighttpd_serves_x_sendfile_in_pass_mode(lighttpd_env):
    base, root, work, _ = lighttpd_env
    status, _, body = get(base, f"/xs?path={root}/doc.txt")
    assert (status, body) == (200, b"lighttpd sent this\n")
    # outside lighttpd's x-sendfile-docroot: lighttpd refuses, the file never leaks
    status, _, body = get(base, f"/xs?path={work}/outside.txt")
    assert status >= 400 and b"outside" not in body


def test_a_hand_off_passed_on_with_the_files_length_and_no_body_is_not_cut_off(lighttpd_env):
    """Flask's send_file(use_x_sendfile=True) gives the file's Content-Length and no body:
    the web server sends the file, so the response passed on is not short of its
    Content-Length (nor cut off as such)."""
    import fcgi_client
    base, root, _, bridge = lighttpd_env
    query = f"path={root}/doc.txt&file-length=4096"
    status, _, body = get(base, f"/xs?{query}")
    assert (status, body) == (200, b"lighttpd sent this\n")
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/xs", query=query)  # ProtocolError if cut off
    assert r.app_status == 0 and f"X-Sendfile: {root}/doc.txt".encode() in bytes(r.stdout)


def test_lighttpd_serves_x_sendfile2_in_pass_mode(lighttpd_env):
    """The same X-Sendfile2 value test_x_sendfile2_served_by_the_bridge sends: lighttpd's own
    reading of the format gives the bytes the bridge's does."""
    base, root, _, _ = lighttpd_env
    status, _, body = get(base, f"/xs2?v={quote(X2_VALUE.format(root=root))}")
    assert (status, body) == (200, X2_BODY)


@pytest.fixture(scope="module")
def translate_env(tmp_path_factory):
    """`file-handoff: translate` behind nginx: an app's lighttpd-style X-Sendfile becomes
    X-Accel-Redirect into nginx's internal location; what no file-map prefix covers is
    served by the bridge from `file-roots`, or refused."""
    work = tmp_path_factory.mktemp("translate")
    root = work / "files"
    root.mkdir()
    (root / "report.txt").write_bytes(b"nginx sent this via X-Accel-Redirect\n")
    (root / "a.txt").write_bytes(b"0123456789abcdefghij")
    extra = work / "extra"
    extra.mkdir()
    (extra / "b.txt").write_bytes(b"the bridge sent this\n")
    (work / "secret.txt").write_text("secret\n")
    # a tenant's symlink in its file-map directory to a file beside it
    os.symlink(work / "secret.txt", root / "escape.txt")
    (port,) = harness.free_ports(1)
    pools = {"app": handoff_pool(root, threads=2)}
    listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "pool": "app", "dialect": "nginx",
                          "file-handoff": "translate", "file-map": {str(root): "/protected"},
                          "file-roots": [str(extra)]}}
    bridge = respond_servers.start_bridge(work, pools, listeners, [("fcgi", "/health", "any")])
    nginx = None
    try:
        # nginx's internal location /protected/ is an alias of `root`
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi"), root).start()
        yield bridge, nginx, root, extra, work
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def test_translate_x_sendfile_to_x_accel_redirect(translate_env):
    bridge, nginx, root, _, _ = translate_env
    status, h, body = curl(nginx, f"/xs?path={root}/report.txt&nginx-keeps=1")
    assert (status, body) == (200, b"nginx sent this via X-Accel-Redirect\n")
    assert h["content-disposition"] == 'attachment; filename="report.bin"' and h["set-cookie"] == "seen=1; Path=/"
    # what nginx got from the bridge: the hand-off, not the file
    import fcgi_client
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/xs", query=f"path={root}/report.txt&nginx-keeps=1")
    assert b"X-Accel-Redirect: /protected/report.txt" in bytes(r.stdout) and b"nginx sent this" not in bytes(r.stdout)


def test_translate_passes_an_apps_own_x_accel_redirect(translate_env):
    """An X-Accel-Redirect into a file-map directory goes to nginx as the app wrote it, once
    the bridge has checked the file (its headers all ones nginx passes on)."""
    import fcgi_client
    bridge, nginx, _, _, _ = translate_env
    status, h, body = curl(nginx, "/accel?uri=/protected/report.txt%3Fv%3D2&nginx-keeps=1")
    assert (status, body) == (200, b"nginx sent this via X-Accel-Redirect\n")
    assert h["content-disposition"] == 'attachment; filename="report.bin"'
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/accel",
                                 query="uri=/protected/report.txt%3Fv%3D2&nginx-keeps=1")
    head = bytes(r.stdout).partition(b"\r\n\r\n")[0]
    assert b"\r\nX-Accel-Redirect: /protected/report.txt?v=2\r\n" in head and b"not the file" not in bytes(r.stdout)


@pytest.mark.parametrize("header,query", [
    ("X-Sendfile", "xs?path={root}/escape.txt&nginx-keeps=1"),
    ("X-Accel-Redirect", "accel?uri=/protected/escape.txt&nginx-keeps=1"),
])
def test_translate_checks_a_file_before_nginx_sends_it(translate_env, header, query):
    """nginx follows symlinks: a tenant's symlink in its file-map directory once had nginx
    send any file nginx's user could read. The bridge checks the file as one it sends itself
    (its real path under the directory, a regular file, the pool's user): 403 and its log
    line, and nginx gets no hand-off to follow."""
    import fcgi_client
    bridge, nginx, root, _, work = translate_env
    query = query.format(root=root)
    mark = bridge.log.mark()
    status, h, body = curl(nginx, "/" + query)
    assert status == 403 and b"secret" not in body and "x-accel-redirect" not in h
    line = "\n".join(bridge.log.wait_for(rf"{header} refused, answering 403: .* leads to .*secret\.txt", since=mark))
    assert "escape.txt" in line and "request_id" in line and str(work / "secret.txt") in line
    path, _, args = query.partition("?")
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/" + path, query=args)
    assert r.status == 403 and b"X-Accel-Redirect" not in bytes(r.stdout) and b"X-Sendfile" not in bytes(r.stdout)


def test_a_local_redirect_into_a_file_map_location_is_refused(tmp_path):
    """A CGI local redirect no route serves goes to nginx as X-Accel-Redirect: into a
    file-map location it would skip the file's check (nginx follows symlinks), so it is
    refused with a line that says how to hand the file off instead; elsewhere it goes on."""
    import fcgi_client
    root = tmp_path / "files"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret\n")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    (port,) = harness.free_ports(1)
    listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "routes": [{"prefix": "/app", "pool": "app"}],
                          "dialect": "nginx", "file-handoff": "translate", "file-map": {str(root): "/protected"}}}
    bridge = respond_servers.start_bridge(tmp_path, {"app": handoff_pool(root, threads=2)}, listeners,
                                          [("fcgi", "/app/health", "any")])
    try:
        mark = bridge.log.mark()
        r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/app/local", query="to=/protected/escape.txt")
        assert r.status == 500 and b"X-Accel-Redirect" not in bytes(r.stdout)
        bridge.log.wait_for(r"internal redirect refused, answering 500: .* names a file-map location", since=mark)
        r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/app/local", query="to=/elsewhere/page")
        assert r.status == 200 and b"X-Accel-Redirect: /elsewhere/page" in bytes(r.stdout)
    finally:
        bridge.stop()


def test_translate_keeps_headers_nginx_would_drop(translate_env):
    """nginx passes on only Content-Type, Content-Disposition, Accept-Ranges, Set-Cookie,
    Cache-Control and Expires with X-Accel-Redirect: a file whose response carries other
    headers (CORS, CSP) is sent by the bridge, with all of them, ranges included."""
    import fcgi_client
    bridge, nginx, root, _, _ = translate_env
    status, h, body = curl(nginx, f"/xs?path={root}/report.txt")
    assert (status, body, h["x-app"]) == (200, b"nginx sent this via X-Accel-Redirect\n", "handoff")
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/xs", query=f"path={root}/report.txt")
    head, _, body = bytes(r.stdout).partition(b"\r\n\r\n")
    assert b"X-Accel-Redirect" not in head and body == b"nginx sent this via X-Accel-Redirect\n"
    # The app's own X-Accel-Redirect with such a header: the same.
    status, h, body = curl(nginx, "/accel?uri=/protected/report.txt")
    assert (status, body, h["x-app"]) == (200, b"nginx sent this via X-Accel-Redirect\n", "handoff")
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/accel", query="uri=/protected/report.txt")
    head, _, body = bytes(r.stdout).partition(b"\r\n\r\n")
    assert b"X-Accel-Redirect" not in head and body == b"nginx sent this via X-Accel-Redirect\n"
    status, h, body = curl(nginx, "/download-cors/a.txt", "-r", "3-6")
    assert (status, body, h.get("content-range")) == (206, b"3456", "bytes 3-6/20")
    assert h["access-control-allow-origin"] == "https://app.example" and h["content-security-policy"] == "sandbox"
    assert h["content-disposition"] == "attachment; filename=dl-a.txt"


@pytest.mark.parametrize("target", ["/etc/passwd", "{work}/secret.txt"])
def test_translate_unmapped_path_never_reaches_the_client(translate_env, target):
    """No file-map prefix covers it and it is not under file-roots: passed on, nginx would
    show the header (a filesystem path) to the client. The bridge answers 500 and logs why."""
    bridge, nginx, _, _, work = translate_env
    target = target.format(work=work)
    mark = bridge.log.mark()
    status, h, body = curl(nginx, f"/xs?path={target}")
    assert status == 500
    assert "x-sendfile" not in h and "x-accel-redirect" not in h
    assert target.encode() not in body and b"secret" not in body and b"not the file" not in body
    raw = "\n".join(f"{k}: {v}" for k, v in h.items())
    assert target not in raw
    line = "\n".join(bridge.log.wait_for(r"file hand-off dropped, answering 500: no file-map prefix covers it", since=mark))
    assert f"X-Sendfile: {target}" in line and "pool" in line and "pid" in line and "request_id" in line and "/xs" in line


@pytest.mark.parametrize("header,value", [
    ("xs", "{root}/../secret.txt"),        # under the file-map prefix as text only
    ("xs", "{root}/./report.txt"),
    ("xs", "{root}//report.txt"),
    ("accel", "/protected/../secret.txt"),
    ("accel", "/protected/%2e%2e/secret.txt"),  # nginx decodes X-Accel-Redirect
    ("accel", "/protected/%2E%2E%2Fsecret.txt"),
])
def test_translate_refuses_a_non_normal_path(translate_env, header, value):
    """`X-Sendfile: ROOT/../secret.txt` once became `X-Accel-Redirect: /protected/../secret.txt`
    and only nginx's own check stood between the client and a file beside the root. A path
    with `..`, `.` or empty segments is refused before any mapping: 500, one log line, and
    nginx never gets a hand-off to follow."""
    import fcgi_client
    bridge, nginx, root, _, work = translate_env
    value = value.format(root=root)
    name = {"xs": "X-Sendfile", "accel": "X-Accel-Redirect"}[header]
    query = f"{'path' if header == 'xs' else 'uri'}={quote(value)}"
    mark, nginx_mark = bridge.log.mark(), nginx.error_log.mark()
    status, h, body = curl(nginx, f"/{header}?{query}")
    assert status == 500
    assert "x-sendfile" not in h and "x-accel-redirect" not in h
    assert b"secret" not in body and b"not the file" not in body and b"nginx sent this" not in body
    line = "\n".join(bridge.log.wait_for(r"file hand-off dropped, answering 500: .* is not a normal path", since=mark))
    assert f"{name}: {value}" in line and "pool" in line and "pid" in line and "request_id" in line and f"/{header}" in line
    # What nginx got: the bridge's own 500, no hand-off header.
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), f"/{header}", query=query)
    assert r.status == 500 and b"X-Accel-Redirect" not in bytes(r.stdout) and b"X-Sendfile" not in bytes(r.stdout)
    assert "unsafe URI" not in nginx.error_log.text(nginx_mark)


def test_translate_serves_an_unmapped_file_under_file_roots(translate_env):
    _, nginx, _, extra, _ = translate_env
    status, h, body = curl(nginx, f"/xs?path={extra}/b.txt")
    assert (status, body) == (200, b"the bridge sent this\n")
    assert h["content-disposition"] == 'attachment; filename="report.bin"'


def test_translate_file_wrapper_becomes_x_accel_redirect(translate_env):
    """Flask's send_file under a file-map prefix, `file-hand-back` left to its default (on behind
    nginx): the worker hands the file back, the bridge turns that into X-Accel-Redirect, and nginx serves it — with ranges, which the app (with
    conditional=False) does not do: a streamed response would be a 200 with the whole file."""
    _, nginx, _, _, _ = translate_env
    status, h, body = curl(nginx, "/download/a.txt", "-r", "3-6")
    assert (status, body, h.get("content-range")) == (206, b"3456", "bytes 3-6/20")
    assert h["content-disposition"] == "attachment; filename=download-a.txt"


LIGHTTPD_TRANSLATE_CONF = """
server.modules += ("mod_fastcgi", "mod_scgi")
server.document-root = "{work}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{work}/lighttpd-error.log"
server.pid-file = "{work}/lighttpd.pid"
# written without the x-sendfile keys, as an entry may well be
fastcgi.server = ("/" => ((
    "host" => "127.0.0.1", "port" => {fcgi},
    "check-local" => "disable",
    "fix-root-scriptname" => "enable",
)))
$SERVER["socket"] == "127.0.0.1:{hand_back_port}" {{
    fastcgi.server = ("/" => ((
        "host" => "127.0.0.1", "port" => {fcgi_hand_back},
        "check-local" => "disable",
        "fix-root-scriptname" => "enable",
        "x-sendfile" => "enable",
        "x-sendfile-docroot" => ("{root}"),
    )))
}}
$SERVER["socket"] == "127.0.0.1:{scgi_port}" {{
    fastcgi.server = ()
    scgi.server = ("/" => ((
        "host" => "127.0.0.1", "port" => {scgi},
        "check-local" => "disable",
        "fix-root-scriptname" => "enable",
        "x-sendfile" => "enable",
        "x-sendfile-docroot" => ("{root}", "{extra}"),
    )))
}}
"""


@pytest.fixture(scope="module")
def lighttpd_translate_env(tmp_path_factory):
    """`file-handoff: translate` with `dialect: lighttpd`, as docs/servers/lighttpd.md shows
    it: on 8080 through an entry without `x-sendfile` (listener defaults), on the second
    port through one with it to a listener with `file-hand-back: true`, on the third through
    mod_scgi to an SCGI listener with `file-roots: [EXTRA]`."""
    import shutil
    import signal
    binary = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
    if not os.path.exists(binary):
        pytest.fail("lighttpd not found (apt-get install lighttpd)", pytrace=False)
    work = tmp_path_factory.mktemp("lighttpd-translate")
    root, extra = work / "files", work / "extra"
    for d in (root, extra):
        d.mkdir()
        (d / "a.txt").write_bytes(b"0123456789abcdefghij")
        (d / "with space.txt").write_bytes(b"spaced\n")
    (root / "doc.txt").write_bytes(b"lighttpd sent this\n")
    fcgi, fcgi_hand_back, scgi, port, hand_back_port, scgi_port = harness.free_ports(6)
    translate = {"pool": "app", "dialect": "lighttpd", "file-handoff": "translate", "file-map": {str(root): "/protected"}}
    listeners = {"lt": {"fastcgi": f"127.0.0.1:{fcgi}", **translate},
                 "lt-hand-back": {"fastcgi": f"127.0.0.1:{fcgi_hand_back}", **translate, "file-hand-back": True},
                 "lt-scgi": {"scgi": f"127.0.0.1:{scgi}", **translate, "file-roots": [str(extra)]}}
    bridge = respond_servers.start_bridge(work, {"app": handoff_pool(root, threads=2)}, listeners,
                                          [("lt", "/health", "any"), ("lt-scgi", "/health", "any")])
    conf = work / "lighttpd.conf"
    conf.write_text(LIGHTTPD_TRANSLATE_CONF.format(
        work=work, root=root, extra=extra, port=port, hand_back_port=hand_back_port, scgi_port=scgi_port,
        fcgi=fcgi, fcgi_hand_back=fcgi_hand_back, scgi=scgi))
    proc = None
    try:
        proc = run_server([binary, "-D", "-f", str(conf)], port, work, "lighttpd")
        for p in (hand_back_port, scgi_port):
            harness.wait_until(lambda: harness.can_connect(("127.0.0.1", p)), 60, what=f"lighttpd on {p}")
        bases = {name: f"http://127.0.0.1:{p}" for name, p in
                 (("plain", port), ("file-hand-back", hand_back_port), ("scgi", scgi_port))}
        yield bridge, bases, root, extra
    finally:
        if proc:
            stop_server(proc, signal.SIGINT)
        bridge.stop()


def test_lighttpd_translate_streams_send_file_by_default(lighttpd_translate_env):
    """Flask's send_file under a file-map directory, through a lighttpd entry without
    `"x-sendfile" => "enable"`: handed back as X-Sendfile, lighttpd would drop the header
    silently and send an empty 200. With translate's default behind lighttpd, `file-hand-back: false`, the
    worker streams it, and the client gets the file."""
    _, bases, _, _ = lighttpd_translate_env
    status, h, body = get(bases["plain"], "/download/a.txt")
    assert (status, body) == (200, b"0123456789abcdefghij"), (status, h, body)
    assert h["content-disposition"] == "attachment; filename=download-a.txt"
    status, _, body = get(bases["scgi"], "/download/a.txt")
    assert (status, body) == (200, b"0123456789abcdefghij")


def test_lighttpd_translate_hands_back_with_hand_back(lighttpd_translate_env):
    """`file-hand-back: true`, through an entry with x-sendfile: lighttpd sends the file, and
    answers the Range request the app (conditional=False) would not."""
    _, bases, _, _ = lighttpd_translate_env
    status, h, body = get(bases["file-hand-back"], "/download/a.txt", "-r", "3-6")
    assert (status, body, h.get("content-range")) == (206, b"3456", "bytes 3-6/20"), (status, h, body)


def test_lighttpd_gets_only_a_file_the_bridge_would_send(lighttpd_translate_env):
    """lighttpd follows symlinks as nginx does: a tenant's symlink in the file-map directory
    to a file beside it, as X-Sendfile, as an X-Accel-Redirect mapped to X-Sendfile, or
    hidden in an X-Sendfile2 behind a piece that is fine, gets 403 with the bridge's log
    line, and lighttpd never sees the header; a plain file still goes to lighttpd."""
    bridge, bases, root, _ = lighttpd_translate_env
    secret = root.parent / "beside.txt"
    secret.write_bytes(b"not for the app\n")
    link = root / "beside-link"
    if not link.is_symlink():
        link.symlink_to(secret)
    base = bases["file-hand-back"]
    status, _, body = get(base, f"/xs?path={root}/doc.txt")
    assert (status, body) == (200, b"lighttpd sent this\n")
    # lighttpd percent-decodes X-Sendfile: a name it decodes into the link is checked as
    # the link (it used to go on unchecked, as a path under no file-map directory)
    encoded = str(link).replace(root.name, "%%%02X%s" % (ord(root.name[0]), root.name[1:]), 1)
    assert encoded != str(link) and not encoded.startswith(str(root))
    for path in (f"/xs?path={link}", "/accel?uri=/protected/beside-link",
                 f"/xs2?v={quote(f'{root}/doc.txt 0-1, {link} 0-')}", f"/xs?path={quote(encoded)}"):
        mark = bridge.log.mark()
        status, h, body = get(base, path)
        assert status == 403 and b"not for the app" not in body, (path, status, h, body)
        line = "\n".join(bridge.log.wait_for(r"refused, answering 403: .*beside-link", since=mark))
        assert "which is not under any of the listener's file-roots" in line, line
    # a name with a space reaches lighttpd encoded, and lighttpd decodes it to the file
    (root / "with space.txt").write_bytes(b"spaced\n")
    for path in (f"/accel?uri={quote('/protected/with%20space.txt')}", f"/xs?path={quote(str(root / 'with space.txt'))}"):
        status, _, body = get(base, path)
        assert (status, body) == (200, b"spaced\n"), (path, status, body)


def test_lighttpd_scgi_follows_x_sendfile_not_x_sendfile2(lighttpd_translate_env):
    """lighttpd's mod_scgi follows X-Sendfile but ignores X-Sendfile2: passed on, the header
    (paths and all) would reach the client with an empty body. The bridge sends the pieces
    itself when file-roots cover them, and answers 500 with its log line otherwise."""
    bridge, bases, root, extra = lighttpd_translate_env
    status, h, body = get(bases["scgi"], f"/xs?path={root}/doc.txt")
    assert (status, body) == (200, b"lighttpd sent this\n") and "x-sendfile" not in h
    status, h, body = get(bases["scgi"], f"/xs2?v={quote(X2_VALUE.format(root=extra))}")
    assert (status, body) == (200, X2_BODY) and "x-sendfile2" not in h, (status, h, body)
    mark = bridge.log.mark()
    value = X2_VALUE.format(root=root)
    status, h, body = get(bases["scgi"], f"/xs2?v={quote(value)}")
    assert status == 500 and "x-sendfile2" not in h and str(root).encode() not in body, (status, h, body)
    line = "\n".join(bridge.log.wait_for(
        r"file hand-off dropped, answering 500: lighttpd follows X-Sendfile2 only over FastCGI", since=mark))
    assert f"X-Sendfile2: {value}" in line and "request_id" in line and "/xs2" in line, line


CADDYFILE = """{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    root * {work}
    reverse_proxy 127.0.0.1:{bridge_port} {{
        transport fastcgi
    }}
}}
"""

# Three pieces, one open-ended, one from a url-encoded name; a trailing comma as lighttpd allows.
X2_VALUE = "{root}/a.txt 2-5, {root}/with%20space.txt 0-, {root}/a.txt 18-19,"
X2_BODY = b"2345" + b"spaced\n" + b"ij"


@pytest.fixture(scope="module")
def caddy_env(tmp_path_factory):
    """`file-handoff: serve` behind Caddy, which has no hand-off of its own."""
    import shutil
    binary = shutil.which("caddy")
    if not binary:
        pytest.fail("caddy not found (apt-get install caddy)", pytrace=False)
    work = tmp_path_factory.mktemp("caddy-sendfile")
    root = work / "files"
    root.mkdir()
    (root / "a.txt").write_bytes(b"0123456789abcdefghij")
    (root / "with space.txt").write_bytes(b"spaced\n")
    big = os.urandom(2 * 1024 * 1024 + 7)
    (root / "big.bin").write_bytes(big)
    (root / "report.pdf").write_bytes(b"%PDF-1.4 not really\n")
    (work / "secret.txt").write_text("secret\n")
    bridge_port, port = harness.free_ports(2)
    pools = {"app": handoff_pool(root)}
    listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{bridge_port}", "pool": "app", "dialect": "caddy",
                          "file-handoff": "serve", "file-roots": [str(root)],
                          "file-map": {str(root): "/protected"}, "max-ranges": 4}}
    bridge = respond_servers.start_bridge(work, pools, listeners, [("fcgi", "/health", "any")])
    conf = work / "Caddyfile"
    conf.write_text(CADDYFILE.format(port=port, work=work, bridge_port=bridge_port))
    proc = None
    try:
        proc = run_server([binary, "run", "--config", str(conf), "--adapter", "caddyfile"], port, work, "caddy")
        yield bridge, f"http://127.0.0.1:{port}", root, big, work
    finally:
        if proc:
            stop_server(proc)
        bridge.stop()


def test_x_sendfile2_served_by_the_bridge(caddy_env):
    _, base, root, _, _ = caddy_env
    status, h, body = get(base, f"/xs2?v={quote(X2_VALUE.format(root=root))}&ctype=text/plain")
    assert status == 200 and body == X2_BODY
    assert h["content-length"] == str(len(X2_BODY)) and h["content-type"] == "text/plain"
    assert h["content-disposition"] == 'attachment; filename="report.bin"'
    # the app's status stays; a whole big file as one piece arrives byte for byte
    _, base, root, big, _ = caddy_env
    status, h, body = get(base, f"/xs2?v={quote(f'{root}/big.bin 0-')}&status=203")
    assert (status, len(body)) == (203, len(big)) and body == big
    assert h["content-type"] == "application/octet-stream"  # by extension: the app set none
    status, h, body = get(base, f"/xs2?v={quote(X2_VALUE.format(root=root))}", "-I")
    assert status == 200 and h["content-length"] == str(len(X2_BODY)) and body.strip() == b""


@pytest.mark.parametrize("value,status,why", [
    ("{work}/secret.txt 0-", 403, "X-Sendfile2 refused, answering 403: .* is not under any of the listener's file-roots"),
    ("{root}/missing.txt 0-1", 404, "X-Sendfile2 refused, answering 404: .* does not exist"),
    ("{root}/a.txt 10-20", 500, r"X-Sendfile2 refused, answering 500: range 10-20 of .* lies beyond its end \(20 bytes\)"),
    ("{root}/a.txt 21-", 500, "X-Sendfile2 refused, answering 500: range 21- of"),
    ("{root}/a.txt", 500, "file hand-off dropped, answering 500: X-Sendfile2 entry 1 has no range"),
    ("{root}/a.txt 5-1", 500, "file hand-off dropped, answering 500: X-Sendfile2 entry 1: range 5-1 ends before it starts"),
])
def test_x_sendfile2_refused(caddy_env, value, status, why):
    bridge, base, root, _, work = caddy_env
    mark = bridge.log.mark()
    got, h, body = get(base, f"/xs2?v={quote(value.format(root=root, work=work))}")
    assert got == status
    assert b"secret" not in body and b"not the file" not in body and "x-sendfile2" not in h
    bridge.log.wait_for(why, since=mark)


def test_x_accel_redirect_served_by_the_bridge(caddy_env):
    """Caddy cannot follow X-Accel-Redirect: the bridge maps the URI back through file-map
    (percent-decoded, as nginx reads it) and serves the file like X-Sendfile."""
    bridge, base, root, big, _ = caddy_env
    status, h, body = get(base, f"/accel?uri={quote('/protected/with%20space.txt')}&ctype=text/plain")
    assert (status, body) == (200, b"spaced\n")
    status, h, body = get(base, f"/accel?uri={quote('/protected/big.bin?x=1')}", "-r", "100-199")
    assert (status, body, h["content-range"]) == (206, big[100:200], f"bytes 100-199/{len(big)}")
    _, h, _ = get(base, f"/accel?uri={quote('/protected/a.txt')}")
    status, _, body = get(base, f"/accel?uri={quote('/protected/a.txt')}", "-H", f"If-None-Match: {h['etag']}")
    assert (status, body) == (304, b"")
    # no file-map prefix covers it: 500, never forwarded
    mark = bridge.log.mark()
    status, h, body = get(base, f"/accel?uri={quote('/elsewhere/a.txt')}")
    assert status == 500 and "x-accel-redirect" not in h and b"not the file" not in body
    line = "\n".join(bridge.log.wait_for("file hand-off dropped, answering 500: no file-map prefix covers it", since=mark))
    assert "X-Accel-Redirect: /elsewhere/a.txt" in line


@pytest.mark.parametrize("uri", ["/protected/../secret.txt", "/protected/%2e%2e/secret.txt",
                                 "/protected/%2fa.txt", "/protected/./a.txt"])
def test_x_accel_redirect_with_a_non_normal_path_is_refused(caddy_env, uri):
    """X-Accel-Redirect is read as nginx reads it (percent-decoded), so `%2e%2e` is `..` and
    `%2f` a `/`: refused before the URI is mapped back to a file, 500 and one log line."""
    bridge, base, _, _, _ = caddy_env
    mark = bridge.log.mark()
    status, h, body = get(base, f"/accel?uri={quote(uri)}")
    assert status == 500 and "x-accel-redirect" not in h
    assert b"secret" not in body and b"0123456789" not in body and b"not the file" not in body
    line = "\n".join(bridge.log.wait_for("file hand-off dropped, answering 500: .* is not a normal path", since=mark))
    assert f"X-Accel-Redirect: {uri}" in line


def test_ranges_limited_by_max_ranges(caddy_env):
    """`max-ranges: 4` on this listener: four ranges are served, a fifth makes it 200."""
    _, base, _, big, _ = caddy_env
    four = ",".join(f"{i * 1000}-{i * 1000 + 9}" for i in range(4))
    status, h, body = get(base, "/xs?path={}/big.bin".format(caddy_env[2]), "-r", four)
    assert status == 206 and h["content-type"].startswith("multipart/byteranges") and body.count(b"Content-Range") == 4
    status, h, body = get(base, "/xs?path={}/big.bin".format(caddy_env[2]), "-r", four + ",9000-9009")
    assert (status, len(body)) == (200, len(big)) and body == big


def test_serve_keeps_the_apps_headers(caddy_env):
    """Headers that do not describe the body stay; those that do are the bridge's."""
    _, base, root, _, _ = caddy_env
    status, h, body = get(base, f"/xs?path={root}/report.pdf")
    assert (status, body) == (200, b"%PDF-1.4 not really\n")
    assert h["content-disposition"] == 'attachment; filename="report.bin"'
    assert h["cache-control"] == "private, max-age=60"
    assert h["set-cookie"] == "seen=1; Path=/"
    assert h["x-app"] == "handoff"
    assert h["content-type"] == "application/pdf"  # the app set none: by extension
    assert h["content-length"] == "20" and h["etag"] != '"app-etag"' and h["accept-ranges"] == "bytes"
    assert "x-sendfile" not in h
    status, h, _ = get(base, f"/xs?path={root}/report.pdf&ctype=application/x-custom")
    assert h["content-type"] == "application/x-custom"
    # the app's status stays: another one gets the whole file without ranges, a bodyless one no body
    status, h, body = get(base, f"/xs?path={root}/a.txt&status=404", "-r", "0-1")
    assert (status, body) == (404, b"0123456789abcdefghij") and "accept-ranges" not in h
    status, h, body = get(base, f"/xs?path={root}/a.txt&status=304")
    assert (status, body) == (304, b"") and h["cache-control"] == "private, max-age=60"


def test_file_wrapper_is_handed_off(caddy_env):
    """Flask's send_file goes through wsgi.file_wrapper; the worker hands the file to the
    bridge instead of streaming it. The app answers no ranges (conditional=False), so a 206
    can only come from the bridge."""
    _, base, _, big, _ = caddy_env
    status, h, body = get(base, "/download/big.bin", "-r", "1000-1999")
    assert (status, body, h["content-range"]) == (206, big[1000:2000], f"bytes 1000-1999/{len(big)}")
    assert h["content-disposition"] == "attachment; filename=download-big.bin"
    status, h, body = get(base, "/download/big.bin")
    assert status == 200 and body == big and h["accept-ranges"] == "bytes"
    # A file object not at position 0 is streamed by the worker: no ranges, the rest of it.
    status, h, body = get(base, "/download-seeked/a.txt", "-r", "0-1")
    assert (status, body) == (200, b"23456789abcdefghij") and "accept-ranges" not in h


def test_worker_roots_param_is_the_bridges_alone(caddy_env, lighttpd_env):
    """FCGIBRIDGE_FILE_ROOTS from the web server (a stray fastcgi_param) is overwritten in
    serve mode and stripped in pass mode, and the app's environ never shows it."""
    import fcgi_client
    bridge, base, _, _, _ = caddy_env
    status, _, body = get(base, "/env-keys")
    assert status == 200 and b"FCGIBRIDGE_REQUEST_ID" in body and b"FCGIBRIDGE_FILE_ROOTS" not in body
    # the ready-check's mark is the bridge's alone: a client's never reaches the app
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/env-keys", extra=[("FCGIBRIDGE_READY_CHECK", "1")])
    assert r.status == 200 and r.body == b"FCGIBRIDGE_REQUEST_ID", r.body
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/download/a.txt",
                                 extra=[("FCGIBRIDGE_FILE_ROOTS", "/nonexistent")])
    assert r.status == 200 and r.body == b"0123456789abcdefghij" and b"X-Sendfile" not in bytes(r.stdout)
    assert b"Accept-Ranges: bytes" in bytes(r.stdout)  # served by the bridge
    # pass mode: the worker is told nothing, whatever the web server sent, and streams
    _, root, _, lbridge = lighttpd_env
    r = fcgi_client.fcgi_request(lbridge.listener_address("fcgi"), "/download/doc.txt", extra=[("FCGIBRIDGE_FILE_ROOTS", str(root))])
    assert r.status == 200 and r.body == b"lighttpd sent this\n" and b"X-Sendfile" not in bytes(r.stdout)


def test_file_wrapper_outside_the_roots_is_streamed(caddy_env, tmp_path):
    """A send_file of a file outside file-roots (here through a symlink leading out of the
    root) is streamed by the worker: the client gets it, with no ranges by the bridge."""
    _, base, root, _, work = caddy_env
    link = root / "link-out.txt"
    if not link.exists():
        os.symlink(work / "secret.txt", link)
    status, h, body = get(base, "/download/link-out.txt", "-r", "0-1")
    assert (status, body) == (200, b"secret\n") and "accept-ranges" not in h


def apache_scgi_conf(**subst):
    """The `scgi-handoff` block of docs/servers/apache.md, with this test's ports and directories."""
    import re
    text = (Path(__file__).resolve().parent.parent / "docs" / "servers" / "apache.md").read_text()
    m = re.search(r"<!-- test-snippet: scgi-handoff -->\s*\n```[^\n]*\n(.*?)\n```", text, re.S)
    assert m, "docs/servers/apache.md: no test-snippet scgi-handoff"
    # one pass, so that a substituted value is never substituted again
    pattern = "|".join(re.escape(k) for k in sorted(subst, key=len, reverse=True))
    return re.sub(pattern, lambda k: str(subst[k.group(0)]), m.group(1)) + "\n"


@pytest.fixture(scope="module")
def apache_scgi_env(tmp_path_factory):
    """Apache mod_proxy_scgi does both hand-offs itself: `file-handoff: pass` leaves the
    app's X-Sendfile to ProxySCGISendfile, and `unrouted-redirect: pass` leaves a local
    redirect to a path the bridge has no route for to ProxySCGIInternalRedirect."""
    import shutil
    binary = shutil.which("apache2") or shutil.which("httpd") or "/usr/sbin/apache2"
    mods = "/usr/lib/apache2/modules"
    if not os.path.exists(binary) or not os.path.exists(f"{mods}/mod_proxy_scgi.so"):
        pytest.fail("Apache with mod_proxy_scgi not found (apt-get install apache2)", pytrace=False)
    work = tmp_path_factory.mktemp("apache-scgi")
    # Apache's user (nobody when the tests run as root) must read these.
    shared = Path(tempfile.mkdtemp(prefix="fcgibridge-apache-scgi-"))
    files = shared / "files"
    files.mkdir()
    (files / "doc.txt").write_bytes(b"apache sent this\n")
    www = shared / "www"
    www.mkdir()
    (www / "static.txt").write_bytes(b"apache's own static file\n")
    for p in [shared, *shared.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (work / "run").mkdir()
    bridge_port, port = harness.free_ports(2)
    pools = {"app": handoff_pool(files, threads=2)}
    listeners = {"scgi": {"scgi": f"127.0.0.1:{bridge_port}", "routes": [{"prefix": "/app", "pool": "app"}],
                          "dialect": "apache", "file-handoff": "pass", "unrouted-redirect": "pass"}}
    bridge = respond_servers.start_bridge(work, pools, listeners, [("scgi", "/app/health", "any")])
    base = "".join(f"LoadModule {m}_module {mods}/mod_{m}.so\n"
                   for m in ("mpm_event", "authz_core", "mime", "proxy", "proxy_scgi"))
    user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
    (work / "httpd.conf").write_text(
        f'ServerRoot "{work}"\nServerName localhost\n{base}{user}PidFile {work}/httpd.pid\n'
        f"ErrorLog {work}/error.log\nLogLevel warn\nDefaultRuntimeDir {work}/run\nMutex file:{work}/run default\n"
        f"TypesConfig /dev/null\n"
        + apache_scgi_conf(**{"8083": port, "9001": bridge_port, "/srv/www": www, "/srv/files": files}))
    proc = None
    try:
        proc = run_server([binary, "-X", "-f", str(work / "httpd.conf")], port, work, "apache")
        yield bridge, f"http://127.0.0.1:{port}", files, work
    finally:
        if proc:
            stop_server(proc)
        bridge.stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_apache_proxy_scgi_sendfile(apache_scgi_env):
    bridge, base, files, _ = apache_scgi_env
    status, h, body = get(base, f"/app/xs?path={files}/doc.txt")
    assert (status, body) == (200, b"apache sent this\n"), (status, body)
    assert h["content-disposition"] == 'attachment; filename="report.bin"'


def test_apache_proxy_scgi_internal_redirect(apache_scgi_env):
    bridge, base, _, _ = apache_scgi_env
    mark = bridge.log.mark()
    status, _, body = get(base, "/app/local?to=/static.txt")
    assert (status, body) == (200, b"apache's own static file\n"), (status, body)
    bridge.log.wait_for("no route serves the internal redirect target, answering 200", since=mark)


def test_a_pool_user_gets_only_the_files_it_could_read(tmp_path):
    """The bridge reads files as root: for a pool with `user: nobody` it serves only what
    nobody could read itself (every directory above searchable, the file readable), else
    403 with a log line naming the pool's uid; a root-owned 0644 file is served. Behind
    nginx (`translate`), which reads as its own user, the same files only go to nginx."""
    import fcgi_client
    import pwd
    import shutil
    if os.geteuid() != 0:
        pytest.skip("needs root: the pool's workers run as nobody")
    nobody = pwd.getpwnam("nobody")
    # Every directory above the files searchable by nobody (pytest's own are 0700).
    pub = Path(tempfile.mkdtemp(prefix="fcgibridge-sendfile-"))
    pub.chmod(0o755)
    try:
        root = pub / "files"
        (root / "closed").mkdir(parents=True)
        root.chmod(0o755)
        (root / "closed").chmod(0o700)
        for name, mode in [("public.txt", 0o644), ("private.txt", 0o600), ("closed/inner.txt", 0o644)]:
            (root / name).write_text(f"{name}\n")
            (root / name).chmod(mode)
        os.symlink(root / "private.txt", root / "via-link.txt")
        app = pub / "app" / "respond_app.py"
        app.parent.mkdir()
        app.parent.chmod(0o755)
        shutil.copy(respond_servers.RESPOND_APP, app)
        app.chmod(0o644)
        # Debian's interpreter: the default python3 may be a pyenv shim nobody cannot run.
        pools = {"app": harness.pool(str(app), python="/usr/bin/python3", processes=1, threads=2, user="nobody")}
        (port, xlate_port) = harness.free_ports(2)
        listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "pool": "app", "file-handoff": "serve",
                              "file-roots": [str(root)]},
                     # behind nginx, which reads as its own user: the same files only
                     "xlate": {"fastcgi": f"127.0.0.1:{xlate_port}", "pool": "app", "dialect": "nginx",
                               "file-handoff": "translate", "file-map": {str(root): "/protected"}}}
        bridge = harness.make_bridge(tmp_path, pools, listeners, bridge_extra={"runtime-dir": str(pub / "run")})
        bridge.start()
        try:
            bridge.wait_ready([("fcgi", "/health", "any"), ("xlate", "/health", "any")])

            def sendfile(name, listener="fcgi"):
                return fcgi_client.fcgi_request(bridge.listener_address(listener), "/sendfile",
                                                query=f"path={quote(str(root / name))}")
            r = sendfile("public.txt")
            assert (r.status, r.body) == (200, b"public.txt\n")
            assert b"\r\nX-Accel-Redirect: /protected/public.txt\r\n" in bytes(sendfile("public.txt", "xlate").stdout)
            for (name, blocked), listener in itertools.product(
                    [("private.txt", "private.txt has mode 0600"), ("via-link.txt", "private.txt has mode 0600"),
                     ("closed/inner.txt", "closed has mode 0700")], ["fcgi", "xlate"]):
                mark = bridge.log.mark()
                r = sendfile(name, listener)
                assert r.status == 403, (name, listener)
                assert name.encode() not in r.body and b"not the file" not in r.body
                assert b"X-Accel-Redirect" not in bytes(r.stdout)
                line = "\n".join(bridge.log.wait_for(
                    rf"X-Sendfile refused, answering 403: .*the pool's user \(uid {nobody.pw_uid}\) may not read it",
                    since=mark))
                assert "pool" in line and "request_id" in line and str(root / name) in line and blocked in line
        finally:
            bridge.stop()
    finally:
        shutil.rmtree(pub, ignore_errors=True)


def test_the_kernel_judges_what_a_pool_user_may_read(tmp_path, monkeypatch):
    """For a pool with `user: nobody` the bridge opens a handed-off file as nobody (the
    thread's filesystem credentials switched), so ACLs count: a file whose mode bits let
    nobody read it but whose ACL denies nobody is 403, with a log line naming the uid and the
    path; a 0600 file whose ACL grants nobody read is served. A pool of the bridge's own
    account is still served a root-only file after each refusal, on the same runtime thread."""
    import fcgi_client
    import pwd
    import shutil
    if os.geteuid() != 0:
        pytest.skip("needs root: the pool's workers run as nobody")
    nobody = pwd.getpwnam("nobody").pw_uid
    # One runtime thread: a thread left switched after a refusal would fail the next request.
    monkeypatch.setenv("FCGIBRIDGE_RUNTIME_THREADS", "1")
    pub = Path(tempfile.mkdtemp(prefix="fcgibridge-acl-"))
    pub.chmod(0o755)
    try:
        root = pub / "files"
        (root / "closed").mkdir(parents=True)
        root.chmod(0o755)
        for name, mode, perms in [("denied.txt", 0o644, 0), ("granted.txt", 0o600, 4),
                                  ("closed/inner.txt", 0o644, None), ("root-only.txt", 0o600, None)]:
            (root / name).write_text(f"{name}\n")
            (root / name).chmod(mode)
            if perms is not None:
                harness.set_acl(root / name, {nobody: perms})
        # A 0700 directory nobody may search through an ACL only.
        (root / "closed").chmod(0o700)
        harness.set_acl(root / "closed", {nobody: 1})
        app = pub / "app" / "respond_app.py"
        app.parent.mkdir()
        app.parent.chmod(0o755)
        shutil.copy(respond_servers.RESPOND_APP, app)
        app.chmod(0o644)
        # Debian's interpreter: the default python3 may be a pyenv shim nobody cannot run.
        pools = {"tenant": harness.pool(str(app), python="/usr/bin/python3", processes=1, threads=2, user="nobody"),
                 "own": harness.pool(str(app), python="/usr/bin/python3", processes=1, threads=2)}
        ports = harness.free_ports(2)
        listeners = {name: {"fastcgi": f"127.0.0.1:{port}", "pool": name, "file-handoff": "serve",
                            "file-roots": [str(root)]} for name, port in zip(["tenant", "own"], ports)}
        bridge = harness.make_bridge(tmp_path, pools, listeners, bridge_extra={"runtime-dir": str(pub / "run")})
        bridge.start()
        try:
            bridge.wait_ready([("tenant", "/health", "any"), ("own", "/health", "any")])

            def sendfile(name, listener):
                return fcgi_client.fcgi_request(bridge.listener_address(listener), "/sendfile",
                                                query=f"path={quote(str(root / name))}")
            for name in ["granted.txt", "closed/inner.txt"]:
                r = sendfile(name, "tenant")
                assert (r.status, r.body) == (200, f"{name}\n".encode()), name
            for _ in range(3):
                mark = bridge.log.mark()
                r = sendfile("denied.txt", "tenant")
                assert r.status == 403 and b"denied.txt" not in r.body, r.status
                line = "\n".join(bridge.log.wait_for(
                    rf"X-Sendfile refused, answering 403: .*denied\.txt.*the pool's user \(uid {nobody}\) may not "
                    r"read it \(the mode bits allow it \(0644, owner uid 0\): an ACL or a security module denies it\)",
                    since=mark))
                assert str(root / "denied.txt") in line and 'pool="tenant"' in line, line
                r = sendfile("root-only.txt", "own")
                assert (r.status, r.body) == (200, b"root-only.txt\n"), r.status
        finally:
            bridge.stop()
    finally:
        shutil.rmtree(pub, ignore_errors=True)

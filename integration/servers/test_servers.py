"""One suite, every front server: nginx (fastcgi, scgi), lighttpd (mod_fastcgi, mod_scgi,
bin-path), Apache (mod_proxy_fcgi with enablereuse, mod_proxy_scgi, mod_fcgid), Caddy, h2o
(fastcgi.connect, fastcgi.spawn) and HAProxy (fcgi-app). Each test records a support-table
cell (support.py); it fails only when something is broken, not when a server lacks a feature.
"""
import hashlib
import os
import re
import socket
import threading
import time

import pytest
import requests

import frontends
import support

VARIANTS = list(frontends.VARIANTS)
SPAWNED = {v for cls in frontends.SERVERS for v in cls.spawned_variants}
TIMEOUT = 120


def url(srv, variant, path):
    return f"http://127.0.0.1:{srv.port(variant)}{path}"


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture
def srv(servers, variant):
    return servers.get(variant)


def test_basics(srv, variant):
    """environ, a 1 MiB upload with its sha256, a streamed response."""
    r = requests.get(url(srv, variant, "/env?x=1&y=two"), timeout=TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.text[:500], srv.log_text())
    env = r.json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["QUERY_STRING"] == "x=1&y=two"
    paths = (env.get("SCRIPT_NAME"), env.get("PATH_INFO"))
    assert paths == ("", "/env"), f"SCRIPT_NAME/PATH_INFO {paths}"

    body = os.urandom(1 << 20)
    r = requests.post(url(srv, variant, "/upload"), data=body, timeout=TIMEOUT,
                      headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()

    # a streamed response, read from a raw socket to see when its pieces arrive
    first, last, data = stream_arrivals(srv.port(variant), "/stream?n=4&ms=500")
    assert data.count(b"chunk ") == 4, data
    streamed = first < last - 0.8
    support.record(variant, "basics", "yes",
                   "" if streamed else "the server buffered the streamed response (its default; the server's page says how to stream)")


def stream_arrivals(port, path):
    """(seconds until "chunk 0" arrived, seconds until "chunk 3" arrived, all bytes)."""
    t0 = time.monotonic()
    first = last = None
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
            now = time.monotonic() - t0
            if first is None and b"chunk 0" in data:
                first = now
            if b"chunk 3" in data:
                last = now
                break
    assert first is not None and last is not None, data
    return first, last, data


def test_keep_alive(srv, variant):
    if variant in SPAWNED:
        support.record(variant, "keep-alive", "n/a", "the server talks to its own spawned bridge over a unix socket")
        return
    port = srv.bridge_port(variant)
    with requests.Session() as s:
        for i in range(5):
            r = s.get(url(srv, variant, f"/health?i={i}"), timeout=TIMEOUT)
            assert r.status_code == 200
    # a connection still open after the responses is one the server keeps for the next request
    kept = connections_after(srv, port)
    if kept:
        support.record(variant, "keep-alive", "yes", f"{kept} connection(s) to the bridge kept open after 5 requests")
    else:
        support.record(variant, "keep-alive", "no", "the server closes its connection to the bridge after every request")


def connections_after(srv, port, wait=1.0):
    deadline = time.monotonic() + wait
    n = 0
    while time.monotonic() < deadline:
        n = frontends.connections_to(port, srv.pids())
        if n:
            return n
        time.sleep(0.1)
    return n


def test_multiplexing(srv, variant):
    """12 concurrent slow requests: how many connections to the bridge carry them."""
    if variant in SPAWNED:
        support.record(variant, "multiplexing", "n/a", "spawned bridge on a unix socket")
        return
    port = srv.bridge_port(variant)
    n = 12
    results = []

    def one(i):
        try:
            r = requests.get(url(srv, variant, f"/slow?ms=2000&i={i}"), timeout=TIMEOUT)
            results.append(r.status_code)
        except requests.RequestException as e:
            results.append(repr(e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    peak = 0
    t0 = time.monotonic()
    while any(t.is_alive() for t in threads) and time.monotonic() - t0 < TIMEOUT:
        peak = max(peak, frontends.connections_to(port, srv.pids()))
        time.sleep(0.05)
    for t in threads:
        t.join(TIMEOUT)
    assert results.count(200) == n, results
    if peak and peak <= n // 3:
        support.record(variant, "multiplexing", "yes", f"{n} concurrent requests over {peak} connection(s)")
    else:
        support.record(variant, "multiplexing", "no", f"{n} concurrent requests used {peak} connections")


def test_chunked_upload(srv, variant):
    body = os.urandom(1 << 20)

    def gen():
        for i in range(0, len(body), 64 << 10):
            yield body[i:i + (64 << 10)]
    r = requests.post(url(srv, variant, "/upload"), data=gen(), timeout=TIMEOUT,
                      headers={"Content-Type": "application/octet-stream"})
    if r.status_code == 411:
        support.record(variant, "chunked upload", "no", "the server answers 411 Length Required")
        return
    if r.status_code == 400 and variant == "haproxy":
        # HAProxy 2.6's FastCGI side needs a length: it computes one when the whole chunked
        # body fits in its buffer (tune.bufsize), and refuses larger ones itself
        small = os.urandom(16 << 10)
        r2 = requests.post(url(srv, variant, "/upload"), data=iter([small[:8192], small[8192:]]), timeout=TIMEOUT)
        assert r2.status_code == 200 and r2.json()["sha256"] == hashlib.sha256(small).hexdigest(), r2.text[:300]
        support.record(variant, "chunked upload", "no",
                       "HAProxy 2.6 answers 400 itself to a chunked body larger than its buffer (tune.bufsize, "
                       "64 KiB here); smaller ones it buffers and sends with CONTENT_LENGTH")
        return
    assert r.status_code == 200, (r.status_code, r.text[:300])
    got = r.json()
    assert got["sha256"] == hashlib.sha256(body).hexdigest() and got["length"] == len(body)
    cl = got.get("content_length")
    how = "streamed without CONTENT_LENGTH" if cl in (None, "", "-1") else "buffered by the server, sent with CONTENT_LENGTH"
    support.record(variant, "chunked upload", "yes", f"{how} (CONTENT_LENGTH={cl!r})")


def bridge_log(srv, variant, sbridge):
    """(log text since a mark) of the bridge serving `variant`."""
    if variant in SPAWNED:
        path = srv.spawned_log()
        start = path.stat().st_size
        return lambda: path.read_text(errors="replace")[start:]
    mark = sbridge.log.mark()
    return lambda: sbridge.log.text(mark)


def redirected_script_filename(srv, variant):
    """The SCRIPT_FILENAME /local sees after /redirect's local redirect (a regular
    expression), None where the server sends none."""
    www = re.escape(str(srv.www))
    return {
        # built from the path: it follows the target
        "haproxy": www + "/local",
        "apache-fcgid": www + "/local",
        "apache-proxy-fcgi": r"proxy:fcgi://127\.0\.0\.1:\d+/local",
        "apache-proxy-scgi": r"proxy:scgi://127\.0\.0\.1:\d+/local",
        # the document root: nothing to retarget
        "lighttpd-fastcgi": www + "/",
        "lighttpd-scgi": www + "/",
        "lighttpd-spawned": www + "/",
        "caddy": www,
    }.get(variant)  # nginx (the stock params have none), h2o: none


def test_internal_redirect(srv, variant, sbridge):
    """200 + Location: /local — a CGI local redirect, done by the server or by the bridge
    (every listener of the bridge does it, so the client must get /local's answer)."""
    since = bridge_log(srv, variant, sbridge)
    r = requests.get(url(srv, variant, "/redirect"), allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.headers.get("Location"), r.text[:300])
    assert "Location" not in r.headers, r.headers
    got = r.json()
    assert got["local"] is True and got["method"] == "GET" and got["query"] == "from=redirect", r.text
    assert got["redirect_url"] == "/redirect", r.text
    # a SCRIPT_FILENAME the server built from the path names the target, not /redirect;
    # the others' stay as the server sent them
    want = redirected_script_filename(srv, variant)
    assert (got["script_filename"] is None) if want is None else re.fullmatch(want, got["script_filename"] or ""), \
        (want, r.text)
    by_bridge = any("internal redirect" in ln and "/redirect" in ln and "refused" not in ln
                    for ln in since().splitlines())
    support.record(variant, "internal redirect", "yes",
                   "done by the bridge (the server sees one response)" if by_bridge else "done by the server itself")


# The servers that follow a hand-off header themselves: the app's route and the header.
# Behind every other variant the bridge's listener is in `file-handoff: serve` mode (the
# `listener` snippets of docs/servers/caddy.md, haproxy.md, apache.md and the spawned
# bridge of spawned.md), and the app's X-Sendfile is sent by the bridge.
HANDOFF = {
    "nginx": ("/x-accel", "X-Accel-Redirect"),
    "lighttpd": ("/x-sendfile", "X-Sendfile"),
    "apache-proxy-scgi": ("/x-sendfile", "X-Sendfile (ProxySCGISendfile)"),
    "h2o": ("/x-reproxy", "X-Reproxy-URL"),
}
FILE = b"hello from a file\n"  # www/files/hello.txt (frontends.make_www)
HANDOFF_HEADERS = ("X-Sendfile", "X-Sendfile2", "X-Accel-Redirect", "X-Reproxy-URL")


def test_file_handoff(srv, variant):
    """The app answers with a hand-off header and no body: the client must get the file's
    bytes and none of the hand-off headers (they would show a filesystem path)."""
    key = variant if variant in HANDOFF else variant.split("-")[0]
    path, dialect = HANDOFF.get(key, ("/x-sendfile", None))
    if variant in SPAWNED:
        path, dialect = "/x-sendfile", None  # the spawned bridge serves (spawned.md)
    r = requests.get(url(srv, variant, path), timeout=TIMEOUT)
    leaked = {h: r.headers[h] for h in HANDOFF_HEADERS if h in r.headers}
    assert r.status_code == 200 and r.content == FILE and not leaked, \
        (r.status_code, r.content[:200], leaked, srv.log_text()[-3000:])
    if dialect:
        support.record(variant, "file hand-off", "yes", f"{dialect} (the server's own header)")
        return
    # the bridge's answer: its validators, and a range only it can cut (the app sent none)
    assert r.headers.get("Accept-Ranges") == "bytes" and r.headers.get("ETag"), r.headers
    part = requests.get(url(srv, variant, path), headers={"Range": "bytes=6-9"}, timeout=TIMEOUT)
    assert part.status_code == 206 and part.content == FILE[6:10], (part.status_code, part.content[:200])
    assert part.headers.get("Content-Range") == f"bytes 6-9/{len(FILE)}", part.headers
    support.record(variant, "file hand-off", "yes",
                   "X-Sendfile served by the bridge (file-handoff: serve), ranges too")


def test_file_wrapper(srv, variant):
    """wsgi.file_wrapper (Flask's send_file): the worker hands the file back where the
    listener says so (a `serve` listener: the bridge sends it) or streams it; either way
    the client gets the file and no hand-off header."""
    r = requests.get(url(srv, variant, "/file-wrapper"), timeout=TIMEOUT)
    leaked = {h: r.headers[h] for h in HANDOFF_HEADERS if h in r.headers}
    assert r.status_code == 200 and r.content == FILE and not leaked, \
        (r.status_code, r.content[:200], leaked, srv.log_text()[-3000:])


@pytest.mark.parametrize("variant", ["lighttpd-fastcgi", "lighttpd-scgi"])
def test_x_sendfile2_behind_lighttpd(servers, variant):
    """lighttpd follows X-Sendfile2 from mod_fastcgi only. Behind mod_scgi the page's
    `translate` listener must not pass it on (the client would get the header, paths and
    all, and an empty body): it sends the pieces itself, from its `file-roots`."""
    srv = servers.get(variant)
    r = requests.get(url(srv, variant, "/x-sendfile2"), timeout=TIMEOUT)
    leaked = {h: r.headers[h] for h in HANDOFF_HEADERS if h in r.headers}
    assert r.status_code == 200 and r.content == FILE and not leaked, \
        (r.status_code, r.content[:200], leaked, srv.log_text()[-3000:])


# Each page's static-directory line: the server sends the file itself (the app would
# answer 404).
STATIC = {"lighttpd-fastcgi": "/static/s.css", "lighttpd-scgi": "/static/s.css", "lighttpd-spawned": "/static/s.css",
          "caddy": "/static/s.css", "h2o": "/files/hello.txt"}


@pytest.mark.parametrize("variant", list(STATIC))
def test_static_files(servers, variant, www):
    srv = servers.get(variant)
    path = STATIC[variant]
    r = requests.get(url(srv, variant, path), timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == (www / path.lstrip("/")).read_bytes(), \
        (r.status_code, r.content[:200])


# The client's Authorization header: every page's configuration passes it as is, but
# Apache's, which needs a setting per module (test_apache_auth.py runs those and fills
# Apache's cells).
AUTH_VALUES = ["Basic YWxpY2U6c2VjcmV0", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig-_x"]


def test_authorization_header(srv, variant):
    for value in AUTH_VALUES:
        env = requests.get(url(srv, variant, "/env"), headers={"Authorization": value}, timeout=TIMEOUT).json()
        if variant.startswith("apache"):
            assert "HTTP_AUTHORIZATION" not in env, (
                f"{variant}: docs/servers/apache.md says its configuration does not pass Authorization, "
                f"but the app got {env['HTTP_AUTHORIZATION']!r}: fix the page")
            continue
        assert env.get("HTTP_AUTHORIZATION") == value, (
            f"{variant}: sent Authorization: {value}, the app got HTTP_AUTHORIZATION="
            f"{env.get('HTTP_AUTHORIZATION')!r}; docs/migration.md and the server's page say its configuration passes it")
    if not variant.startswith("apache"):
        how = "with `pass-header Authorization` (docs/servers/haproxy.md)" if variant == "haproxy" else "as is"
        support.record(variant, "Authorization header", "yes", f"HTTP_AUTHORIZATION, Basic and Bearer, {how}")


AUTHORIZER = {"lighttpd-fastcgi": "lighttpd mode authorizer", "apache-proxy-fcgi": "mod_authnz_fcgi"}


def test_authorizer(srv, variant):
    if variant not in AUTHORIZER:
        if variant in SPAWNED:
            support.record(variant, "authorizer", "n/a")
        elif "scgi" in variant:
            support.record(variant, "authorizer", "n/a", "SCGI has no authorizer role (see the FastCGI variant)")
        else:
            support.record(variant, "authorizer", "no", "the server has no FastCGI authorizer")
        return
    r = requests.get(url(srv, variant, "/private/secret.txt"), timeout=TIMEOUT)
    assert r.status_code == 401, (r.status_code, r.text[:300], srv.log_text())
    assert "Basic" in r.headers.get("WWW-Authenticate", "")
    bad = requests.get(url(srv, variant, "/private/secret.txt"), auth=("alice", "wrong"), timeout=TIMEOUT)
    assert bad.status_code == 401, bad.status_code
    ok = requests.get(url(srv, variant, "/private/secret.txt"), auth=("alice", "secret"), timeout=TIMEOUT)
    assert ok.status_code == 200, (ok.status_code, ok.text[:300], srv.log_text())
    # on 200 both servers go on to the responder (the bridge again), with the Variable-*
    # headers of the authorizer as params
    env = ok.json()
    assert env.get("AUTH_USER_NAME") == "alice" and env.get("AUTH_TEAM") == "blue", env
    extra = "; REMOTE_USER=alice" if env.get("REMOTE_USER") == "alice" else ""
    # lighttpd passes the app's refusal on; Apache (an AuthBasicProvider) sends its own 401
    # (test_authorizer_example.py checks both)
    refusal = ("Apache's own 401 (realm of the AuthName) reaches the client" if variant.startswith("apache")
               else "401 + WWW-Authenticate from the app reach the client")
    note = (f"{AUTHORIZER[variant]}: {refusal}; on 200 the "
            f"request goes on to the responder with Variable-AUTH_USER_NAME/AUTH_TEAM as params{extra}")
    if variant.startswith("apache"):
        note += " (Apache sends the authorizer no STDIN record at all)"
    support.record(variant, "authorizer", "yes", note)


def test_spawned_cell(srv, variant):
    """The spawned variants served every test above through a bridge the server started
    (test_spawned.py checks start, fd 0, FCGI_WEB_SERVER_ADDRS and exit)."""
    if variant not in SPAWNED:
        server = variant.split("-")[0]
        if server in ("lighttpd", "apache", "h2o"):
            support.record(variant, "spawned mode", "n/a", "connects to a running bridge; see the spawned variant")
        else:
            support.record(variant, "spawned mode", "no", "the server cannot start FastCGI programs")
        return
    log = srv.spawned_log().read_text(errors="replace")
    assert "address=fd:0" in log, log[-3000:]
    r = requests.get(url(srv, variant, "/env"), timeout=TIMEOUT)
    assert r.status_code == 200
    support.record(variant, "spawned mode", "yes", "the server starts fcgibridge with its socket on fd 0 (wrapper from docs/servers/spawned.md)")

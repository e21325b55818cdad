"""ASGI pools (`interface: asgi`, docs/asgi.md): FastAPI, Starlette and Django's ASGI handler
behind nginx and Apache; many requests in flight on one worker; the client's disconnect
reaching the app; lifespan; internal redirects and file hand-off from an ASGI app; an ASGI
app given to a WSGI pool (and the reverse) refused at start with the key to set."""
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

import fcgi_client
import harness
import respond_servers

ASGI_APP = str(harness.APPS / "asgi_app.py")
RAW_APP = str(harness.APPS / "asgi_raw_app.py")
EDGE_APP = str(harness.APPS / "asgi_edge_app.py")


def _eager_python():
    """A Python >= 3.12 for the bare app's pool, where a request's task starts eagerly
    (asgi.py, new_task); the frameworks' pools stay on python3 (3.11 in CI), where it
    starts from the loop. None when pyenv has neither."""
    from test_pythons import FOUND
    return next((FOUND[v][0] for v in ("3.13", "3.12") if v in FOUND), None)


EAGER_PYTHON = _eager_python()
# FastAPI and Django in a virtualenv of that Python (scripts/install-test-deps makes it).
EAGER_VENV = harness.REPO / "integration" / ".venv-eager" / "bin" / "python"
HAS_EAGER_VENV = EAGER_VENV.exists()
NO_EAGER_VENV = "no integration/.venv-eager (scripts/install-test-deps makes it when pyenv has 3.12+)"
ROUTES = [{"prefix": "/aw", "pool": "auto-wsgi"}, {"prefix": "/timed", "pool": "timed"},
          {"prefix": "/st", "pool": "starlette"}, {"prefix": "/raw", "pool": "raw"},
          {"prefix": "/dj", "pool": "django"}, {"prefix": "/rvw", "pool": "edge-wsgi"},
          {"prefix": "/rv", "pool": "edge"}]
if HAS_EAGER_VENV:
    ROUTES += [{"prefix": "/eager/dj", "pool": "django-eager"}, {"prefix": "/eager", "pool": "fastapi-eager"}]
ROUTES.append({"pool": "fastapi"})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("asgi")
    files = work / "files"
    files.mkdir()
    (files / "report.txt").write_text("served by nginx\n")
    (files / "big.bin").write_bytes(bytes(range(256)) * 4096)
    (work / "404.html").write_text("<h1>the pool's own 404 page</h1>\n")
    ports = harness.free_ports(3)
    pools = {
        "fastapi": harness.pool(f"{ASGI_APP}:app", interface="asgi", processes=1, concurrency=50),
        "starlette": harness.pool(f"{ASGI_APP}:starlette_app", interface="auto", processes=1),
        # one process: the concurrency test needs every request on the same event loop
        "raw": harness.pool(f"{RAW_APP}:app", interface="asgi", processes=1, concurrency=64,
                            **({"python": EAGER_PYTHON} if EAGER_PYTHON else {}),
                            **{"asgi-loop": "asyncio", "slowlog-timeout": "1s",
                               "error-pages": {"404": str(work / "404.html")}}),
        "timed": harness.pool(f"{RAW_APP}:app", interface="asgi", processes=1, concurrency=8,
                              **{"request-timeout": "2s"}),
        # `auto` given a WSGI app: served by threads as a WSGI pool
        "auto-wsgi": harness.pool(str(harness.APPS / "edge_app.py"), interface="auto", processes=1, threads=3),
        "django": harness.pool("mysite.asgi:application", interface="asgi", processes=1,
                               chdir=str(harness.APPS / "djproject"),
                               env={"DJANGO_SETTINGS_MODULE": "mysite.settings"}),
        # one process: a request that exits must leave the same worker serving
        "edge": harness.pool(f"{EDGE_APP}:app", interface="asgi", processes=1, concurrency=16),
        "edge-wsgi": harness.pool(f"{EDGE_APP}:wsgi_app", processes=1, threads=2),
    }
    if HAS_EAGER_VENV:
        pools["fastapi-eager"] = dict(pools["fastapi"], python=str(EAGER_VENV))
        pools["django-eager"] = dict(pools["django"], python=str(EAGER_VENV))
    listeners = {
        "fcgi": {"fastcgi": f"127.0.0.1:{ports[0]}", "routes": ROUTES, "dialect": "nginx"},
        "fcgi-serve": {"fastcgi": f"127.0.0.1:{ports[1]}", "routes": ROUTES,
                       "file-handoff": "serve", "file-roots": [str(files)]},
        "scgi": {"scgi": f"127.0.0.1:{ports[2]}", "routes": ROUTES},
    }
    probes = [("fcgi", "/health", "any"), ("fcgi", "/st/health", "any"),
              ("fcgi", "/raw/health", "any"), ("fcgi", "/dj/health/", "any"),
              ("fcgi", "/rv/health", "any"), ("fcgi", "/rvw/health", "any")]
    if HAS_EAGER_VENV:
        probes += [("fcgi", "/eager/health", "any"), ("fcgi", "/eager/dj/health/", "any")]
    bridge = respond_servers.start_bridge(work, pools, listeners, probes)
    nginx = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi"), files).start()
        yield bridge, nginx, work, files
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


@pytest.fixture(scope="module")
def apache(env, tmp_path_factory):
    """Apache httpd, mod_proxy_fcgi, in front of the same listener."""
    with harness.apache_fcgi_front(tmp_path_factory.mktemp("apache"), env[0].listener_address("fcgi")) as url:
        yield url


@pytest.fixture(scope="module")
def doc_nginx(env, tmp_path_factory):
    """The nginx example of docs/asgi.md, with this test's ports and paths, in front of the bridge."""
    bridge, _, _, files = env
    text = (harness.REPO / "docs" / "asgi.md").read_text()
    example = re.search(r"```nginx\n(.*?)```", text, re.S).group(1)
    host, bport = bridge.listener_address("fcgi")
    (port,) = harness.free_ports(1)
    for old, new in (("server 127.0.0.1:9000;", f"server {host}:{bport};"),
                     ("listen 80;", f"listen 127.0.0.1:{port};"),
                     ("include fastcgi_params;", f"include {harness.nginx_etc()}/fastcgi_params;"),
                     ("/srv/api/files/", f"{files}/")):
        assert old in example, f"docs/asgi.md's nginx example no longer has {old!r}"
        example = example.replace(old, new)
    work = tmp_path_factory.mktemp("doc-nginx")
    conf = work / "nginx.conf"
    conf.write_text(harness.nginx_conf(work, example, connections=256))
    proc = harness.start_nginx(work, conf)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError("nginx exited: " + (work / "nginx-error.log").read_text())
            return requests.get(url + "/health", timeout=10).status_code == 200
        harness.wait_until(up, 60, 0.1, what="the docs' nginx")
        yield url
    finally:
        harness.stop_process(proc, timeout=20)


def test_the_docs_nginx_example_serves_fastapi_and_accel_redirects(doc_nginx):
    r = requests.get(f"{doc_nginx}/items/7?q=doc", timeout=60)
    assert r.status_code == 200 and r.json() == {"item_id": 7, "q": "doc"}
    r = requests.get(f"{doc_nginx}/raw/accel", timeout=60)
    assert r.status_code == 200 and r.text == "served by nginx\n"
    assert requests.get(f"{doc_nginx}/protected/report.txt", timeout=60).status_code == 404  # internal only


@pytest.fixture(params=["nginx", "apache"])
def front(request, env):
    """The base URL of a web server in front of the bridge."""
    if request.param == "nginx":
        return env[1].url("")
    return request.getfixturevalue("apache")


@pytest.fixture(params=["nginx", "apache", "nginx-eager"])
def fastapi_front(request, env):
    """Where the FastAPI app answers: through nginx or Apache on python3, and through nginx
    from the Python >= 3.12 virtualenv, where its request tasks start eagerly."""
    if request.param == "nginx":
        return env[1].url("")
    if request.param == "apache":
        return request.getfixturevalue("apache")
    if not HAS_EAGER_VENV:
        pytest.skip(NO_EAGER_VENV)
    return env[1].url("/eager")


# ------------------------------------------------------------------ FastAPI


def test_fastapi_json_and_path_and_query_params(fastapi_front):
    r = requests.get(f"{fastapi_front}/items/42?q=hello%20world", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"item_id": 42, "q": "hello world"}
    assert r.headers["content-type"] == "application/json"
    r = requests.get(f"{fastapi_front}/items/not-a-number", timeout=60)
    assert r.status_code == 422
    r = requests.post(f"{fastapi_front}/json", json={"b": [1, 2], "a": "x"}, timeout=60)
    assert r.status_code == 200 and r.json() == {"got": {"b": [1, 2], "a": "x"}, "keys": ["a", "b"]}


def test_fastapi_form_and_file_upload(fastapi_front):
    data = os.urandom(300_000)
    r = requests.post(f"{fastapi_front}/form", data={"name": "Ada"},
                      files={"upload": ("notes.bin", b"PK\x03\x04" + data, "application/octet-stream")}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "Ada", "filename": "notes.bin", "size": len(data) + 4,
                        "head": "PK\x03\x04" + data[:4].decode("latin-1")}


def test_fastapi_streaming_response(fastapi_front):
    with requests.get(f"{fastapi_front}/chunks?n=20", stream=True, timeout=60) as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers
        body = b"".join(r.iter_content(None))
    assert body == b"".join(b"chunk %d\n" % i for i in range(20))


def test_fastapi_background_task_runs_after_the_response(env, fastapi_front):
    work = env[2]
    token = "bg-%d" % time.monotonic_ns()
    r = requests.post(f"{fastapi_front}/background?token={token}", timeout=60)
    assert r.status_code == 200 and r.json() == {"queued": token}
    log = work / "background.log"
    harness.wait_until(lambda: log.exists() and token in log.read_text(), 30, what="the background task")


def test_fastapi_app_error_is_a_500_with_the_traceback_logged(env, fastapi_front):
    bridge = env[0]
    mark = bridge.log.mark()
    r = requests.get(f"{fastapi_front}/boom", timeout=60)
    assert r.status_code == 500
    (line,) = bridge.log.wait_for(r"RuntimeError: boom from the ASGI app", since=mark)
    assert 'pool="fastapi' in line and "pid=" in line and re.search(r'request_id=\d+\b', line), line
    # the worker goes on serving
    assert requests.get(f"{fastapi_front}/items/1", timeout=60).status_code == 200


def test_lifespan_startup_ran_before_serving_and_its_state_reaches_requests(env):
    bridge, nginx, work, _ = env
    r = requests.get(nginx.url("/state"), timeout=60)
    assert r.status_code == 200
    pid = r.json()["pid"]
    assert r.json()["started_by"] == pid
    assert f"startup {pid}" in (work / "lifespan.log").read_text()


# ------------------------------------------------------------------ Starlette, Django


def test_starlette_under_a_prefix_sees_root_path(front):
    r = requests.get(f"{front}/st/hello", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"framework": "starlette", "path": "/st/hello", "root_path": "/st"}


def test_django_async_view_through_the_asgi_handler(front):
    r = requests.get(f"{front}/dj/async/?q=x", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"async": True, "path": "/dj/async/", "script_name": "/dj", "method": "GET", "q": "x"}
    r = requests.get(f"{front}/dj/", timeout=60)  # a sync view and a template, under the same handler
    assert r.status_code == 200 and "<h1>Django behind fcgibridge</h1>" in r.text


def test_django_async_view_from_a_python_with_eager_tasks(env):
    if not HAS_EAGER_VENV:
        pytest.skip(NO_EAGER_VENV)
    r = requests.get(env[1].url("/eager/dj/async/?q=y"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"async": True, "path": "/eager/dj/async/", "script_name": "/eager/dj", "method": "GET",
                        "q": "y"}


# ------------------------------------------------------------------ the ASGI contract


def test_scope_mirrors_the_wsgi_environ_mapping(env):
    nginx = env[1]
    body = b"x" * 200_000
    r = requests.post(nginx.url("/raw/a%20b/scope?k=v&x=%2F"), data=body, timeout=60,
                      headers={"Host": "example.test:8080", "X-Custom": "1", "Content-Type": "application/x-test"})
    assert r.status_code == 200, r.text[:500]
    s = r.json()
    assert s["type"] == "http" and s["asgi"]["version"] == "3.0"
    assert s["method"] == "POST" and s["scheme"] == "http"
    assert s["root_path"] == "/raw" and s["path"] == "/raw/a b/scope"
    assert s["raw_path"] == "/raw/a%20b/scope"
    assert s["query_string"] == "k=v&x=%2F"
    headers = dict(s["headers"])
    assert headers["host"].startswith("example.test") and headers["x-custom"] == "1"
    assert [k for k, _ in s["headers"]].count("content-type") == 1
    assert headers["content-type"] == "application/x-test" and headers["content-length"] == str(len(body))
    assert s["body_len"] == len(body)
    assert s["client"][0] and isinstance(s["client"][1], int)
    assert s["address_types"] == ["tuple", "tuple"], "hashable, as every ASGI server gives them"
    assert s["extensions"] == {"http.response.pathsend": {}}
    assert s["fcgibridge.request_id"]


def test_cookies_in_several_headers_are_all_kept_behind_nginx_1_22(env):
    """Debian 12's nginx passes each repeated header as its own parameter; the bridge joins
    the cookies (uvicorn behind the same nginx gets both). Any other repeated name keeps its
    last value: that is also how a fastcgi_param overrides the client's header."""
    out = subprocess.run(["curl", "-s", "-H", "Cookie: a=1", "-H", "Cookie: b=2", "-H", "X-Custom: A",
                          "-H", "X-Custom: B", env[1].url("/raw/scope")], capture_output=True, timeout=60, check=True)
    headers = json.loads(out.stdout)["headers"]
    assert [v for k, v in headers if k == "cookie"] == ["a=1; b=2"], headers
    assert [v for k, v in headers if k == "x-custom"] == ["B"], headers


def test_a_chunked_upload_nginx_read_whole_arrives_with_its_length_only(env):
    """nginx reads a chunked upload whole and passes CONTENT_LENGTH, and the client's
    Transfer-Encoding too: the app gets the length, not both (Quart took the pair for an
    unknown length)."""
    body = b"y" * 300_000
    r = requests.post(env[1].url("/raw/scope"), data=iter([body[:100_000], body[100_000:]]), timeout=60)
    assert r.status_code == 200, r.text[:500]
    s = r.json()
    names = [k for k, _ in s["headers"]]
    assert "transfer-encoding" not in names and dict(s["headers"])["content-length"] == str(len(body)), s["headers"]
    assert s["body_len"] == len(body)


def test_the_bare_app_runs_where_request_tasks_start_eagerly(env):
    """The contract tests below then cover eager tasks, the framework tests the loop's."""
    if EAGER_PYTHON is None:
        pytest.skip("no Python >= 3.12 found (pyenv): the bare app runs on python3")
    r = fcgi_client.fcgi_request(env[0].listener_address("fcgi"), "/raw/version", headers={"Host": "x"})
    major, minor = map(int, r.body.split()[0].decode().split(".")[:2])
    assert (major, minor) >= (3, 12), r.body


def test_request_body_streams_as_http_request_events_with_more_body(env):
    """The app gets the first part of a body while the rest has not been sent yet."""
    bridge = env[0]
    with bridge.fcgi("fcgi") as conn:
        conn.begin(1, fcgi_client.cgi_params("/raw/first-chunk", method="POST", content_length=100_000,
                                             headers={"Host": "x"}), stdin=b"x" * 1000, terminate_stdin=False)
        r = conn.wait(1)
    assert r.status == 200, bytes(r.stdout)[:300]
    got = json.loads(r.body)
    assert got["more_body"] is True and 0 < got["len"] <= 1000, got


def test_a_large_streamed_response_arrives_whole_through_a_slow_reader(env):
    """320 chunks of 64 KiB (20 MiB), no Content-Length, through nginx: nothing is lost or
    reordered."""
    nginx = env[1]
    n = 320
    with requests.get(nginx.url(f"/raw/big?{n}"), stream=True, timeout=120) as r:
        assert r.status_code == 200
        got = bytearray()
        for piece in r.iter_content(1 << 16):
            got += piece
    assert len(got) == n * 65536
    assert all(got[i * 65536] == i % 251 and got[i * 65536 + 65535] == i % 251 for i in range(n))


def test_send_waits_for_the_socket_instead_of_buffering_the_response(env):
    """128 MiB sent by an app much faster than the client reads: the worker's peak memory
    grows by a few socket buffers, not by the response (send() waits on drain)."""
    bridge = env[0]
    addr = bridge.listener_address("fcgi")
    pid = int(fcgi_client.fcgi_request(addr, "/raw/version", headers={"Host": "x"}).body.split()[1])
    before = bridge.status_of(pid, "VmHWM")
    n = 2048
    with fcgi_client.FcgiConnection(addr, timeout=300) as conn:
        r = conn.request("/raw/big", query=str(n), headers={"Host": "x"})
    assert r.status == 200 and len(r.body) == n * 65536
    grown = bridge.status_of(pid, "VmHWM") - before
    assert grown < 48 << 20, f"the worker's peak RSS grew by {grown >> 20} MiB for a 128 MiB response"


def test_forty_slow_requests_on_one_single_process_worker_run_at_once(env):
    """The FastAPI pool runs one process; each request awaits 2 s: served one after
    another they would take 80 s, ten at a time 8 s."""
    nginx = env[1]
    url = nginx.url("/sleep?s=2")
    requests.get(url, timeout=60)  # warm: the connections to the worker are open

    def one(_):
        return requests.get(url, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(40) as ex:
        started = time.monotonic()
        statuses = list(ex.map(one, range(40)))
        took = time.monotonic() - started
    assert statuses == [200] * 40
    assert took < 8.0, f"40 concurrent 2 s requests took {took:.2f}s"


@pytest.mark.parametrize("how", ["abort-record", "close", "nginx"])
def test_client_disconnect_reaches_the_app(env, how, request):
    """The web server's FCGI_ABORT_REQUEST, or its closed connection (nginx with
    fastcgi_keep_conn, as docs/asgi.md configures it), is http.disconnect for the app
    (which records that it saw it)."""
    bridge, nginx, work, _ = env
    token = "%s-%d" % (how, time.monotonic_ns())
    log = work / "disconnect.log"
    path = "/raw/wait-disconnect"
    if how == "nginx":
        doc_port = int(request.getfixturevalue("doc_nginx").rpartition(":")[2])
        conn = socket.create_connection(("127.0.0.1", doc_port), timeout=30)
        conn.sendall(f"GET {path}?{token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    else:
        conn = bridge.fcgi("fcgi")
        conn.begin(1, fcgi_client.cgi_params(path, query=token, headers={"Host": "x"}))
    harness.wait_until(lambda: log.exists() and f"waiting {token}" in log.read_text(), 30,
                       what="the app to start waiting")
    if how == "abort-record":
        conn.abort(1)
    else:
        conn.close()
    harness.wait_until(lambda: f"disconnected {token}" in log.read_text(), 30,
                       what="the app to see http.disconnect")
    if how == "abort-record":
        assert conn.wait(1).complete  # the request ended toward the web server
        conn.close()
    # the slot is free again: the worker serves on
    assert requests.get(nginx.url("/raw/health"), timeout=60).text == "ok"


def _native(env):
    """The worker's native module, as the bridge installed it in its runtime directory."""
    path = str(env[2] / "run" / "python")
    if path not in sys.path:
        sys.path.insert(0, path)
    import fcgibridge_worker._native as native  # noqa: PLC0415 - only there once the bridge runs
    return native


def _request_records(rid, path, body=b"", query="k=v&x=%2F"):
    """BEGIN, a PARAMS stream cut in the middle of a pair into two records, and the body."""
    fc = fcgi_client
    pairs = fc.encode_pairs(fc.cgi_params(path, method="POST", query=query, content_length=len(body),
                                          headers={"Host": "example.test", "X-Long": "v" * 300},
                                          extra=[("REQUEST_URI", path.replace(" ", "%20") + "?" + query)]))
    half = len(pairs) // 2
    return (fc.record(fc.BEGIN_REQUEST, rid, fc.begin_body())
            + fc.record(fc.PARAMS, rid, pairs[:half]) + fc.record(fc.PARAMS, rid, pairs[half:])
            + fc.record(fc.PARAMS, rid) + (fc.record(fc.STDIN, rid, body) if body else b"")
            + fc.record(fc.STDIN, rid))


def _decoded(native, pieces):
    conn = native.AsgiConnection(8)
    events = []
    for piece in pieces:
        events += conn.feed(piece, {})
    # consecutive body pieces joined: how the body is cut follows how the bytes arrived
    joined = []
    for kind, rid, payload in events:
        if joined and kind == 5 and payload and joined[-1][0] == 5 and joined[-1][2]:
            joined[-1] = (5, rid, joined[-1][2] + payload)
        else:
            joined.append((kind, rid, payload))
    return joined


def test_native_codec_decodes_records_split_at_every_byte_boundary(env):
    """The worker's decoder gives the same events (and scope) however the bytes arrive."""
    native = _native(env)
    data = _request_records(1, "/raw/a b/scope", b"hello world")
    whole = _decoded(native, [data])
    assert [(k, rid) for k, rid, _ in whole] == [(1, 1), (4, 1), (5, 1), (5, 1)]
    scope, request_id, roots, is_head = whole[1][2]
    assert scope["path"] == "/raw/a b/scope" and scope["raw_path"] == b"/raw/a%20b/scope"
    assert scope["query_string"] == b"k=v&x=%2F" and scope["method"] == "POST" and not is_head
    assert (b"x-long", b"v" * 300) in scope["headers"] and (b"content-length", b"11") in scope["headers"]
    assert scope["client"] == ("127.0.0.1", 40000) and scope["server"] == ("localhost", 80)
    assert request_id is None and roots is None and scope["state"] == {}
    assert whole[2][2] == b"hello world" and whole[3][2] == b""
    for k in range(1, len(data)):
        assert _decoded(native, [data[:k], data[k:]]) == whole, f"split at byte {k}"
    assert _decoded(native, [data[i:i + 1] for i in range(len(data))]) == whole


def test_a_malformed_record_closes_that_worker_connection_with_a_precise_log_line(env):
    """Straight to the worker's socket: a request whose bytes arrive one at a time is served;
    a record type FastCGI does not have is logged (pool, pid, request id) and closes that
    connection only."""
    bridge, nginx, work, _ = env
    native = _native(env)
    with pytest.raises(native.AsgiProtocolError, match=r"request 7: record type 42 is not a FastCGI record type"):
        native.AsgiConnection(8).feed(fcgi_client.record(fcgi_client.BEGIN_REQUEST, 7, fcgi_client.begin_body())
                                      + fcgi_client.record(42, 7, b"x"), {})
    (sock,) = sorted((work / "run" / "pools" / "raw").glob("*.sock"))[-1:]
    with fcgi_client.FcgiConnection(str(sock), timeout=60) as conn:
        conn.responses[3] = fcgi_client.Response(3)
        for byte in _request_records(3, "/raw/scope", b"x" * 5000):
            conn.send(bytes([byte]))
        r = conn.wait(3)
        assert r.status == 200, bytes(r.stdout)[:300]
        assert json.loads(r.body)["body_len"] == 5000
        mark = bridge.log.mark()
        conn.send(fcgi_client.record(fcgi_client.BEGIN_REQUEST, 7, fcgi_client.begin_body())
                  + fcgi_client.record(42, 7, b"x"))
        conn.read_until_closed(60)
    (line,) = bridge.log.wait_for(r"bad record from the bridge, connection closed: request 7: record type 42 is "
                                  r"not a FastCGI record type", since=mark)
    assert 'pool="raw"' in line or "pool=raw" in line, line
    assert re.search(r"pid=\d+", line), line
    assert requests.get(nginx.url("/raw/health"), timeout=60).text == "ok"


def test_an_unread_body_pauses_reading_that_connection_until_the_request_ends(env):
    """64 MiB sent to an app that sleeps without reading it: the worker stops reading that
    connection instead of buffering the upload, reads on (skipping the rest of that body)
    once the request ended, and serves the next request on the connection."""
    bridge, work = env[0], env[2]
    (sock,) = sorted((work / "run" / "pools" / "raw").glob("*.sock"))[-1:]
    fc = fcgi_client
    size = 64 << 20
    upload = fc.stream(fc.STDIN, 1, b"u" * size)
    with fc.FcgiConnection(str(sock), timeout=120) as conn:
        pid = int(conn.request("/raw/version", headers={"Host": "x"}, request_id=2).body.split()[1])
        before = bridge.status_of(pid, "VmHWM")
        conn.begin(1, fc.cgi_params("/raw/sleep", method="POST", query="1", content_length=size,
                                    headers={"Host": "x"}), stdin=None)
        sent = threading.Event()

        def send_body():
            conn.send(upload)
            sent.set()

        threading.Thread(target=send_body, daemon=True).start()
        r = conn.wait(1)
        assert r.status == 200 and r.body == b"slept", bytes(r.stdout)[:300]
        assert sent.wait(120), "the worker did not read on after the request ended"
        assert conn.request("/raw/health", headers={"Host": "x"}, request_id=2).body == b"ok"
    grown = bridge.status_of(pid, "VmHWM") - before
    assert grown < 24 << 20, f"the worker's peak RSS grew by {grown >> 20} MiB for an unread 64 MiB body"


def test_head_gets_the_headers_of_get_without_a_body(env):
    bridge = env[0]
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/raw/health", method="HEAD", headers={"Host": "x"})
    assert r.status == 200 and r.body == b"" and r.header("Content-Length") == "2"


def test_scgi_listener_serves_an_asgi_pool(env):
    status, _, body = fcgi_client.scgi_request(env[0].listener_address("scgi"), "/items/5", query="q=scgi",
                                               headers={"Host": "x"})
    assert status == 200 and json.loads(body) == {"item_id": 5, "q": "scgi"}


def test_error_pages_replace_an_asgi_apps_error_body(env):
    r = requests.get(env[1].url("/raw/no-such-thing"), timeout=60)
    assert r.status_code == 404 and r.text == "<h1>the pool's own 404 page</h1>\n"


def test_internal_redirect_from_an_asgi_app(env):
    r = requests.get(env[1].url("/raw/redirect"), timeout=60)
    assert r.status_code == 200 and r.text == "target reached via /raw/target"


def test_x_accel_redirect_from_an_asgi_app_is_served_by_nginx(env):
    r = requests.get(env[1].url("/raw/accel"), timeout=60)
    assert r.status_code == 200 and r.text == "served by nginx\n"


def test_pathsend_is_handed_to_the_bridge_or_streamed(env):
    bridge, _, _, files = env
    target = files / "big.bin"
    data = target.read_bytes()
    # no file-roots on this listener: the worker streams the file itself
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/raw/pathsend", query=str(target),
                                 headers={"Range": "bytes=0-9"})
    assert r.status == 200 and r.body == data and r.header("X-Sendfile") is None
    # file-handoff: serve: X-Sendfile to the bridge, which sends it (and answers the Range itself)
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-serve"), "/raw/pathsend", query=str(target),
                                 headers={"Range": "bytes=0-9"})
    assert r.status == 206, bytes(r.stdout)[:300]
    assert r.body == data[:10]


def test_slowlog_logs_the_coroutine_stack_of_a_slow_request(env):
    bridge, nginx, _, _ = env
    mark = bridge.log.mark()
    r = requests.get(nginx.url("/raw/sleep?2.5"), timeout=60)
    assert r.status_code == 200 and r.text == "slept"
    lines = bridge.log.wait_for([r"\[stack request_id=\d+ task=", r"asgi_raw_app.py"], since=mark)
    assert any('pool="raw"' in ln for ln in lines), lines


def test_request_timeout_cancels_the_task_and_logs_its_stack_while_the_worker_serves_on(env):
    bridge, nginx, work, _ = env
    addr = bridge.listener_address("fcgi")

    def pid():
        return fcgi_client.fcgi_request(addr, "/timed/version", headers={"Host": "x"}).body.split()[1]
    before = pid()
    mark = bridge.log.mark()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        stuck = ex.submit(requests.get, nginx.url("/timed/sleep?60"), timeout=120)
        quick = ex.submit(requests.get, nginx.url("/timed/sleep?1"), timeout=120)
        assert quick.result().status_code == 200
        assert stuck.result().status_code == 504
    (line,) = bridge.log.wait_for(r"request-timeout \(2s\): GET /timed/sleep\?60 ran .* the worker cancels its task",
                                  since=mark)
    rid = re.search(r'request_id="?(\d+)', line).group(1)
    bridge.log.wait_for([rf"\[stack request_id={rid} task=", r"asgi_raw_app.py"], since=mark)
    log = work / "cancelled.log"
    harness.wait_until(lambda: log.exists() and f"cancelled {rid}" in log.read_text(), 30,
                       what="the app's task to be cancelled")
    assert pid() == before  # the same worker serves on


def test_request_timeout_cancels_a_task_whose_unread_body_paused_its_connection(env):
    """4 MiB sent to an app that sleeps without reading it: the worker stops reading that
    connection (more than 1 MiB unread), so it cannot read the bridge's shutdown either.
    request-timeout must still reach the task."""
    bridge, nginx, work, _ = env
    mark = bridge.log.mark()
    r = requests.post(nginx.url("/timed/sleep?60"), data=b"u" * (4 << 20), timeout=120)
    assert r.status_code == 504
    (line,) = bridge.log.wait_for(r"request-timeout \(2s\): POST /timed/sleep\?60 ran", since=mark)
    rid = re.search(r'request_id="?(\d+)', line).group(1)
    log = work / "cancelled.log"
    harness.wait_until(lambda: log.exists() and f"cancelled {rid}" in log.read_text(), 30,
                       what="the app's task to be cancelled")
    bridge.log.wait_for([rf"\[stack request_id={rid} task=", r"asgi_raw_app.py"], since=mark)
    assert requests.get(nginx.url("/timed/sleep?0"), timeout=60).status_code == 200


def test_a_request_that_blocks_the_event_loop_is_logged_with_the_blocking_stack(env):
    """A synchronous call in an async view stops every request of that worker: after 5 s
    the worker names the requests in flight and logs where the loop thread is."""
    bridge = env[0]
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/raw/block", query="7", headers={"Host": "x"})
    assert r.status == 200 and r.body == b"blocked", bytes(r.stdout)[:300]
    (line,) = bridge.log.wait_for(r"the event loop has run nothing else for \d+ s \(requests in flight: \d+\)",
                                  since=mark)
    assert 'pool="raw"' in line, line
    bridge.log.wait_for([r"asgi_raw_app\.py", r'pool="raw"'], since=mark)
    bridge.log.wait_for(r"time\.sleep\(float", since=mark)


def _edge(env, path, **kw):
    return fcgi_client.fcgi_request(env[0].listener_address("fcgi"), path, headers={"Host": "x"}, **kw)


def test_the_http_scope_says_spec_version_2_3_and_the_lifespan_scope_2_0(env):
    """2.3 as uvicorn (at 2.4 Starlette stops listening for http.disconnect while it
    streams); the lifespan scope carries the lifespan spec's version."""
    r = _edge(env, "/rv/asgi-versions")
    assert r.status == 200, bytes(r.stdout)[:300]
    assert json.loads(r.body) == {"http": {"version": "3.0", "spec_version": "2.3"},
                                  "lifespan": {"version": "3.0", "spec_version": "2.0"}}


def test_a_starlette_stream_ends_as_soon_as_its_client_goes_away(env):
    """The generator sleeps 120 s between its chunks: it must be stopped when the client
    leaves (Starlette listens for http.disconnect), not when it next yields, and an
    abandoned stream is no application error."""
    bridge, _, work, _ = env
    token = "st-%d" % time.monotonic_ns()
    log = work / "edge.log"
    mark = bridge.log.mark()
    with bridge.fcgi("fcgi") as conn:
        conn.begin(1, fcgi_client.cgi_params("/rv/st/stream", query=f"token={token}", headers={"Host": "x"}))
        harness.wait_until(lambda: log.exists() and f"stream-started {token}" in log.read_text(), 30,
                           what="the stream's first chunk")
        conn.abort(1)
        assert conn.wait(1).complete
    harness.wait_until(lambda: f"stream-ended {token}" in log.read_text(), 60,
                       what="the generator to end after the client left (not after its 120 s sleep)")
    assert _edge(env, "/rv/health").body == b"ok"
    edge = [ln for ln in bridge.log.text(mark).splitlines() if 'pool="edge"' in ln]
    assert not [ln for ln in edge if "Traceback" in ln or "ClientDisconnect" in ln or " ERROR " in ln], edge


def test_an_exception_raised_after_the_client_left_is_an_info_line_not_an_app_error(env):
    """The app turns send()'s OSError into an exception of its own (as Starlette does at
    spec 2.4): one INFO line, no traceback."""
    bridge, _, work, _ = env
    token = "gone-%d" % time.monotonic_ns()
    log = work / "edge.log"
    mark = bridge.log.mark()
    with bridge.fcgi("fcgi") as conn:
        conn.begin(1, fcgi_client.cgi_params("/rv/raise-after-disconnect", query=token, headers={"Host": "x"}))
        harness.wait_until(lambda: log.exists() and f"streaming {token}" in log.read_text(), 30,
                           what="the app to stream")
        conn.abort(1)
        assert conn.wait(1).complete
    (line,) = bridge.log.wait_for(r"the client went away; the app then ended with RuntimeError: gave up: "
                                  r"the client is gone", since=mark)
    assert "INFO" in line and 'pool="edge"' in line and re.search(r"pid=\d+", line), line
    assert re.search(r'request_id="?\d+', line), line
    edge = [ln for ln in bridge.log.text(mark).splitlines() if 'pool="edge"' in ln]
    assert not [ln for ln in edge if "Traceback" in ln or " ERROR " in ln], edge


@pytest.mark.parametrize("what", ["sysexit", "kbint"])
def test_sys_exit_or_keyboard_interrupt_in_a_request_is_its_500_and_the_worker_serves_on(env, what):
    """SystemExit (and KeyboardInterrupt) raised by the app are that request's error, as
    any exception: the other request in flight and the worker go on."""
    bridge = env[0]
    pid = _edge(env, "/rv/version").body
    mark = bridge.log.mark()
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        slow = ex.submit(_edge, env, "/rv/sleep", query="3")
        harness.wait_until(lambda: bridge.pool_status("edge")["idle_slots"] < 16, 30, 0.1,
                           what="the slow request in flight")
        r = _edge(env, f"/rv/{what}")
        assert r.status == 500, bytes(r.stdout)[:300]
        other = slow.result()
    assert other.status == 200 and other.body == b"slept", bytes(other.stdout)[:300]
    assert _edge(env, "/rv/version").body == pid  # the same worker serves on
    exc = "SystemExit: 3" if what == "sysexit" else "KeyboardInterrupt"
    (line,) = bridge.log.wait_for(rf": {exc} pool=", since=mark)  # the traceback's last line
    assert 'pool="edge"' in line and re.search(r'request_id="?\d+', line), line


@pytest.mark.parametrize("pool", ["edge", "edge-wsgi"])
def test_a_status_response_header_is_dropped_with_a_warning(env, pool):
    """CGI's Status is the status line: an app's own `Status` header cannot pass through
    FastCGI (the bridge would answer 502). ASGI and WSGI both drop it and log a warning
    naming the request."""
    bridge = env[0]
    prefix = "/rv" if pool == "edge" else "/rvw"
    mark = bridge.log.mark()
    r = _edge(env, f"{prefix}/status-header")
    assert r.status == 200 and r.body == b"fine", bytes(r.stdout)[:300]
    assert r.header("Content-Type") == "text/plain"
    (line,) = bridge.log.wait_for(r"response header `status: healthy` dropped: a header named Status cannot pass",
                                  since=mark)
    assert "WARN" in line and f'pool="{pool}"' in line and re.search(r'request_id="?\d+', line), line
    assert f"{prefix}/status-header" in line, line


def test_head_with_an_empty_body_gets_no_content_length_of_zero(env):
    """An app that sends no body for HEAD: the worker does not make up Content-Length: 0
    (GET's is 5); an app that sends GET's body for HEAD still gets its length
    (test_head_gets_the_headers_of_get_without_a_body)."""
    r = _edge(env, "/rv/head-empty")
    assert r.status == 200 and r.body == b"hello" and r.header("Content-Length") == "5"
    r = _edge(env, "/rv/head-empty", method="HEAD")
    assert r.status == 200 and r.body == b"", bytes(r.stdout)[:300]
    assert r.header("Content-Length") is None, bytes(r.stdout)[:300]


# ------------------------------------------------------------------ bridges of their own


def _bridge(tmp_path_factory, name, pools, probes=True):
    work = tmp_path_factory.mktemp(name)
    (port,) = harness.free_ports(1)
    routes = [{"host": p + ".test", "pool": p} for p in pools]
    bridge = harness.make_bridge(work, pools, {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "routes": routes}})
    bridge.start()
    if probes:
        try:
            bridge.wait_ready([("fcgi", "/health", p + ".test") for p in pools])
        except BaseException:
            bridge.stop()
            raise
    return bridge, work


def test_an_app_that_cannot_be_served_as_configured_fails_at_start_saying_why(tmp_path_factory):
    """The other interface (with the key to set), a failed lifespan startup, a missing uvloop."""
    pools = {"asgi-in-wsgi": harness.pool(f"{RAW_APP}:app", processes=1),
             "wsgi-in-asgi": harness.pool(f"{RAW_APP}:wsgi_app", interface="asgi", processes=1),
             "no-startup": harness.pool(f"{RAW_APP}:app", interface="asgi", processes=1,
                                        env={"FAIL_STARTUP": "Traceback (most recent call last):\n"
                                                             '  File "app.py", line 9, in lifespan\n'
                                                             "RuntimeError: no database"})}
    from test_pythons import FOUND
    bare = [exe for exe, _ in FOUND.values()
            if subprocess.run([exe, "-c", "import uvloop"], capture_output=True).returncode != 0]
    if bare:  # a Python without uvloop (pyenv's builds have none)
        pools["no-uvloop"] = harness.pool(f"{RAW_APP}:app", python=bare[0], interface="asgi", processes=1,
                                          **{"asgi-loop": "uvloop"})
    bridge, _ = _bridge(tmp_path_factory, "asgi-wrong", pools, probes=False)
    try:
        bridge.log.wait_for([r"asgi-in-wsgi", r"is an ASGI application .* set `interface: asgi` \(or `auto`\)"])
        bridge.log.wait_for([r"wsgi-in-asgi", r"is a WSGI application .* set `interface: wsgi`"])
        # the exception first, the traceback (Starlette's message) after it
        bridge.log.wait_for([r"no-startup", r"failed to start: lifespan startup failed: RuntimeError: no database "
                                            r"\(traceback: Traceback \(most recent call last\): \| File"])
        if "no-uvloop" in pools:
            bridge.log.wait_for([r"no-uvloop", r"asgi-loop: uvloop, but uvloop is not installed"])
        assert fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/x",
                                        headers={"Host": "asgi-in-wsgi.test"}).status == 503
    finally:
        bridge.stop()


def test_two_python_versions_at_once(tmp_path_factory):
    from test_pythons import FOUND
    wanted = [v for v in ("3.9", "3.12") if v in FOUND]
    if len(wanted) < 2:
        pytest.skip(f"pyenv's 3.9 and 3.12 are needed; found {sorted(FOUND)}")
    pools = {"py" + v.replace(".", ""): harness.pool(f"{RAW_APP}:app", python=FOUND[v][0], interface="asgi",
                                                     processes=1, concurrency=8) for v in wanted}
    bridge, work = _bridge(tmp_path_factory, "asgi-pythons", pools)
    try:
        pids = []
        for v in wanted:
            r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/version",
                                         headers={"Host": "py" + v.replace(".", "") + ".test"})
            assert r.status == 200
            version, pid = r.body.decode().split()
            assert version == FOUND[v][1]
            pids.append(pid)
    finally:
        bridge.stop()
    # stopping the bridge stops the workers: each ran its lifespan shutdown first
    log = work / "raw-lifespan.log"
    for pid in pids:
        harness.wait_until(lambda: f"shutdown {pid}" in log.read_text(), 30, what=f"lifespan shutdown of {pid}")
        assert f"startup {pid}" in log.read_text()


def test_preloaded_pool_recycles_after_max_requests_with_lifespan_shutdown(tmp_path_factory):
    pools = {"pre": harness.pool(f"{RAW_APP}:app", interface="asgi", processes=1, concurrency=4,
                                 preload=True, **{"max-requests": 3})}
    bridge, work = _bridge(tmp_path_factory, "asgi-preload", pools)
    log = work / "raw-lifespan.log"
    try:
        def pid_of():
            r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/version", headers={"Host": "pre.test"})
            assert r.status == 200
            return r.body.decode().split()[1]
        first = pid_of()
        # the worker is replaced after its third request (its health probe counted too)
        harness.wait_until(lambda: pid_of() != first, 60, 0.1, what="a new worker after max-requests")
        harness.wait_until(lambda: f"shutdown {first}" in log.read_text(), 30,
                           what="the recycled worker's lifespan shutdown")
        assert f"startup {first}" in log.read_text()
    finally:
        bridge.stop()


def test_uvloop_serves_when_installed_and_asked_for_by_auto(env):
    """asgi-loop: auto (the FastAPI pool) runs on uvloop when the pool's Python has it."""
    if subprocess.run(["python3", "-c", "import uvloop"], capture_output=True).returncode != 0:
        pytest.skip("uvloop is not installed in python3")
    r = requests.get(env[1].url("/loop"), timeout=60)
    assert r.status_code == 200 and r.json()["loop"].startswith("uvloop"), r.text


def test_the_bridge_opens_concurrency_slots_to_an_asgi_worker(env):
    """`interface: asgi` with concurrency 50; `auto` (the Starlette pool) detected ASGI and
    said so in its READY line: the default concurrency, not `threads`; `auto` given a WSGI
    app: `threads`."""
    bridge = env[0]
    harness.wait_until(lambda: bridge.pool_status("fastapi")["idle_slots"] == 50, 60, 0.2,
                       what="50 idle slots in the fastapi pool")
    harness.wait_until(lambda: bridge.pool_status("starlette")["idle_slots"] == 100, 60, 0.2,
                       what="100 idle slots in the auto-detected starlette pool")
    harness.wait_until(lambda: bridge.pool_status("auto-wsgi")["idle_slots"] == 3, 60, 0.2,
                       what="3 idle slots (threads) in the auto pool given a WSGI app")
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/aw/health", headers={"Host": "x"})
    assert r.status == 200 and r.body == b"ok"


def test_check_prints_the_interface_keys_and_says_which_key_fits(tmp_path):
    root = "    allow-root: true\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "10.yaml").write_text(
        f"pools:\n  api:\n    app: {RAW_APP}:app\n    interface: asgi\n    concurrency: 250\n{root}"
        f"  site:\n    app: {RAW_APP}:wsgi_app\n{root}"
        "listeners:\n  web:\n    fastcgi: 127.0.0.1:9411\n    pool: api\n")
    r = subprocess.run([str(harness.bridge_binary()), "check", "--config", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    api = r.stdout[r.stdout.index("  api:"):r.stdout.index("  site:")]
    site = r.stdout[r.stdout.index("  site:"):r.stdout.index("listeners:")]
    assert "    interface: asgi\n" in api and "    concurrency: 250\n" in api and "    asgi-loop: auto\n" in api
    assert "    threads:" not in api
    assert "    interface: wsgi\n" in site and "    threads: 4\n" in site and "concurrency" not in site
    (conf / "10.yaml").write_text(
        f"pools:\n  api:\n    app: {RAW_APP}:app\n    interface: asgi\n    threads: 8\n{root}"
        "listeners:\n  web:\n    fastcgi: 127.0.0.1:9411\n    pool: api\n")
    r = subprocess.run([str(harness.bridge_binary()), "check", "--config", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "10.yaml:5:5: pools.api.threads: an ASGI pool (`interface: asgi`) runs one event loop per worker: " \
           "set `concurrency`" in r.stderr, r.stderr


def test_a_task_still_running_when_a_recycled_worker_stops_is_cancelled_with_a_warning(tmp_path_factory):
    """max-requests retires the worker once its response is complete, while the app's task
    still runs (a background task): the worker waits for it the pool's graceful-timeout,
    then cancels it and logs a warning naming the request, with pool and pid."""
    pools = {"linger": harness.pool(f"{EDGE_APP}:app", interface="asgi", processes=1, concurrency=4,
                                    **{"max-requests": 1, "graceful-timeout": "3s"})}
    bridge, work = _bridge(tmp_path_factory, "asgi-linger", pools)
    log = work / "edge.log"
    token = "linger-%d" % time.monotonic_ns()
    try:
        mark = bridge.log.mark()
        r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/linger", query=token,
                                     headers={"Host": "linger.test"})
        assert r.status == 200 and r.body == b"queued", bytes(r.stdout)[:300]
        (line,) = bridge.log.wait_for(r"stopping: request \d+ \(GET /linger\) still runs 3s after SIGTERM .*"
                                      r"cancelling it", since=mark, timeout=60)
        assert "WARN" in line and 'pool="linger"' in line and re.search(r"pid=\d+", line), line
        assert re.search(r'request_id="?\d+', line), line
        harness.wait_until(lambda: f"linger-cancelled {token}" in log.read_text(), 30,
                           what="the task to see its cancellation")
    finally:
        bridge.stop()


def test_status_counts_an_asgi_pools_requests_in_flight_not_threads(env):
    bridge = env[0]
    fastapi = bridge.pool_status("fastapi")
    assert fastapi["concurrency"] == 50 and "threads" not in fastapi, fastapi
    wsgi = bridge.pool_status("edge-wsgi")
    assert wsgi["threads"] == 2 and "concurrency" not in wsgi, wsgi
    # `auto`: each worker says which it is, so both are shown.
    auto = bridge.pool_status("auto-wsgi")
    assert auto["threads"] == 3 and auto["concurrency"] == 100, auto


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_a_worker_gets_every_connection_of_a_concurrency_above_the_default_backlog(tmp_path, loop):
    """The bridge opens all `concurrency` connections at once; asyncio's and uvloop's default
    backlog (100) once replaced the bridge's, and the rest were refused (EAGAIN) and lost."""
    (port,) = harness.free_ports(1)
    pools = {"wide": harness.pool(f"{RAW_APP}:app", interface="asgi", processes=1, concurrency=600,
                                  **{"asgi-loop": loop})}
    b = harness.make_bridge(tmp_path, pools, {"fcgi": {"fastcgi": f"127.0.0.1:{port}", "pool": "wide"}})
    b.start()
    try:
        line = b.log.wait_for(r"worker ready in .*connections=\d+", timeout=120)
        assert "connections=600" in line[0], line
        assert b.pool_status("wide")["idle_slots"] == 600
        assert "cannot open" not in b.log.text()
    finally:
        b.stop()

"""PEP 3333 behaviour of the worker, over FastCGI."""
import json
import os

import pytest


def events(w):
    with w.client() as c:
        return json.loads(c.request("/events").body)


def test_hello(worker):
    r = worker.get("/hello")
    assert r.code == 200
    assert r.body == b"Hello, World!"
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["content-length"] == "13"  # added for a one-item list
    assert r.app_status == 0 and r.protocol_status == 0
    assert r.stderr == b""


def test_environ(spawn):
    w = spawn(threads=3, processes=2)
    with w.client() as c:
        r = c.request("/environ", query="a=1&b=2", params={"CONTENT_LENGTH": "", "CONTENT_TYPE": ""},
                      HTTP_HOST="example.org", HTTP_X_THING="v")
    env = json.loads(r.body)
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.input"] == "<Input>"
    assert env["wsgi.errors"] == "<Errors>"
    assert env["_has_file_wrapper"] is True
    assert env["fcgibridge.request_id"] == "req-42"
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["SERVER_NAME"] == "localhost" and env["SERVER_PORT"] == "80"
    assert env["HTTP_HOST"] == "example.org" and env["HTTP_X_THING"] == "v"
    assert "CONTENT_LENGTH" not in env  # empty CONTENT_LENGTH dropped
    assert env["CONTENT_TYPE"] == ""


def test_environ_single_thread_and_defaults(worker):
    with worker.client() as c:
        c.begin()
        c.params({"REQUEST_METHOD": "GET", "SERVER_NAME": "h", "SERVER_PORT": "1",
                  "SERVER_PROTOCOL": "HTTP/1.0", "PATH_INFO": "/environ"})
        c.stdin_end()
        env = json.loads(c.read_response().body)
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is False
    assert env["SCRIPT_NAME"] == "" and env["QUERY_STRING"] == ""
    assert "fcgibridge.request_id" not in env


@pytest.mark.parametrize("params,scheme", [
    ({"HTTPS": "on"}, "https"), ({"HTTPS": "1"}, "https"), ({"HTTPS": "ON"}, "https"),
    ({"HTTPS": "off"}, "http"), ({"HTTPS": ""}, "http"),
    ({"REQUEST_SCHEME": "https"}, "https"), ({"REQUEST_SCHEME": "http"}, "http"),
])
def test_url_scheme(worker, params, scheme):
    with worker.client() as c:
        env = json.loads(c.request("/environ", params=params).body)
    assert env["wsgi.url_scheme"] == scheme


def test_latin1_params(worker):
    raw = bytes(range(0x20, 0x7f)) + bytes(range(0xa0, 0x100))
    with worker.client() as c:
        r = c.request("/latin1", params={b"HTTP_X_RAW": raw, b"HTTP_X_\xe9T\xe9": b"\xff"})
    value, _, names = r.body.rpartition(b"|")
    assert value == raw
    assert b"HTTP_X_\xe9T\xe9" in names.split(b",")


def _body(n=200000):
    lines = [(b"line %d " % i) + b"x" * (i % 97) + b"\n" for i in range(n // 50)]
    return b"".join(lines)[:n]


def _read(worker, mode, body, chunk, content_length=True):
    with worker.client() as c:
        r = c.request("/read", method="POST", query=mode, body=body, chunk=chunk,
                      content_length=content_length)
    meta, _, echoed = r.body.partition(b"\n")
    return json.loads(meta), echoed


@pytest.mark.parametrize("mode", ["all", "none", "read1", "sized1", "sized7", "sized4096", "sized100000",
                                  "readline", "readline5", "readline100000", "readlines", "iter"])
@pytest.mark.parametrize("chunk", [1000, 65535])
def test_read_body(worker, mode, chunk):
    body = _body()
    meta, echoed = _read(worker, mode, body, chunk)
    assert echoed == body
    assert meta["after"] == 0
    if mode.startswith("sized"):
        n = int(mode[5:])
        assert all(x == n for x in meta["lens"][:-1])
    if mode in ("readline", "readlines", "iter"):
        assert meta["lines_end_nl"]
        assert len(meta["lens"]) == body.count(b"\n") + (0 if body.endswith(b"\n") else 1)


def test_read_body_line_split_across_records(worker):
    body = b"ab\ncd" * 1000 + b"\n\n\nlast-no-newline"
    meta, echoed = _read(worker, "readline", body, 3)
    assert echoed == body
    assert meta["lens"][:2] == [3, 5]


def test_chunked_body_without_content_length(worker):
    body = _body(300000)
    meta, echoed = _read(worker, "all", body, 8000, content_length=False)
    assert echoed == body


def test_empty_body(worker):
    meta, echoed = _read(worker, "all", b"", 1000)
    assert echoed == b"" and meta["lens"] == [0]


def test_write_callable(worker):
    r = worker.get("/write")
    assert r.code == 200
    assert r.body == b"one,two,three"
    assert "content-length" not in r.headers


def test_generator_and_close(worker):
    r = worker.get("/generator")
    assert r.body == b"a" * 10 + b"b" * 70000 + b"c"
    assert r.app_status == 0
    assert "closed:gen" in events(worker)


def test_big_list_response(worker):
    r = worker.get("/big", query="3000000")
    assert len(r.body) == 3000000 // 256 * 256
    assert r.body[:256] == bytes(range(256))
    assert r.headers["content-length"] == str(len(r.body))


def test_start_response_twice_is_error(worker):
    r = worker.get("/twice")
    assert r.code == 500
    assert b"without exc_info" in r.stderr


def test_exc_info_before_headers_replaces_status(worker):
    r = worker.get("/exc_info_before")
    assert r.code == 503
    assert r.body == b"recovered"
    assert r.app_status == 0


def test_exc_info_after_headers_reraises(worker):
    r = worker.get("/exc_info_after")
    assert r.code == 200
    assert r.body == b"partial"
    assert r.app_status != 0  # cut off
    assert b"KeyError: 'late'" in r.stderr


def test_exception_before_headers(worker):
    r = worker.get("/raise_before")
    assert r.code == 500
    assert r.body == b"500 Internal Server Error\n"
    assert r.app_status == 0
    assert b"Traceback (most recent call last)" in r.stderr
    assert b"RuntimeError: app failed early" in r.stderr


def test_exception_in_first_chunk_gives_500_and_close(worker):
    r = worker.get("/raise_iter_before")
    assert r.code == 500
    assert b"ValueError: failed in first chunk" in r.stderr
    assert "closed:raise_before" in events(worker)


def test_exception_after_headers(worker):
    r = worker.get("/raise_after")
    assert r.code == 200
    assert r.body == b"first part "
    assert r.app_status == 1
    assert b"ValueError: failed mid-body" in r.stderr
    assert "closed:raise_after" in events(worker)


@pytest.mark.parametrize("path,message", [
    ("/bad_header", b"CR, LF"),
    ("/bad_header_type", b"header name must be str"),
    ("/bad_status", b"status must look like"),
    ("/non_latin1_header", b"latin-1"),
    ("/str_body", b"instead of bytes"),
    ("/no_start_response", b"without calling start_response"),
    ("/returns_none", b"TypeError"),
    ("/write_str", b"write() takes bytes, not str"),
    ("/headers_not_list", b"must be a list"),
])
def test_invalid_responses_give_500(worker, path, message):
    r = worker.get(path)
    assert r.code == 500
    assert message in r.stderr
    assert b"Injected" not in r.stdout


def test_headers_passthrough(worker):
    r = worker.get("/headers")
    assert r.status == "201 Created"
    names = [n for n, _ in r.header_list]
    assert names.count("Set-Cookie") == 2
    assert r.headers["x-two"] == "zwei \xe9"
    assert "connection" not in r.headers  # hop-by-hop header dropped
    assert r.body == b""


def test_204_has_no_content_length(worker):
    r = worker.get("/empty")
    assert r.code == 204
    assert "content-length" not in r.headers


def test_app_content_length_kept(worker):
    r = worker.get("/content_length_set")
    assert [v for n, v in r.header_list if n.lower() == "content-length"] == ["5"]


def test_file_wrapper_regular_file(worker, tmp_path):
    data = os.urandom(300000)
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    r = worker.get("/file", params={"HTTP_X_FILE": str(f)})
    assert r.body == data
    r = worker.get("/file", query="1234", params={"HTTP_X_FILE": str(f)})
    assert r.body == data[1234:]


def test_file_wrapper_empty_file(worker, tmp_path):
    f = tmp_path / "empty"
    f.write_bytes(b"")
    r = worker.get("/file", params={"HTTP_X_FILE": str(f)})
    assert r.code == 200 and r.body == b""


def test_file_wrapper_filelike(worker):
    r = worker.get("/filelike")
    assert r.body == b"x" * 20000 + b"END"
    assert "filelike-closed" in events(worker)


def test_wsgi_errors(worker):
    r = worker.get("/errors")
    assert r.body == b"logged"
    assert r.stderr == "first line\nsecond line\nunicode \u00e9\u20ac\n".encode("utf-8")


def test_wsgiref_validator(spawn):
    w = spawn(app="wsgi_app:validated()")
    for path, kw in [("/hello", {}), ("/write", {}), ("/generator", {}), ("/environ", {}),
                     ("/read", {"method": "POST", "query": "readline", "body": b"a\nb\n",
                                # as nginx sends them
                                "params": {"HTTP_CONTENT_LENGTH": "4", "CONTENT_TYPE": "text/plain",
                                           "HTTP_CONTENT_TYPE": "text/plain"}}),
                     ("/errors", {})]:
        r = w.get(path, **kw)
        assert r.code == 200, (path, r.stderr)
        assert b"Traceback" not in r.stderr, r.stderr
    assert "Warning" not in w.stderr, w.stderr


def test_stream_objects_of_an_ended_request(worker):
    with worker.client() as c:
        assert c.request("/keep_input", method="POST", body=b"body of the first request").body == b"kept"
        r = c.request("/use_kept", method="POST", body=b"second body")
    assert r.body == b"old input gave b''"
    assert r.stderr == b""  # the late write did not land in this request
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "late write from an old request" in worker.stderr:
            break
        time.sleep(0.05)
    assert "late write from an old request" in worker.stderr


def test_head_gets_no_computed_content_length(worker):
    r = worker.get("/hello", method="HEAD")
    assert r.code == 200
    assert "content-length" not in r.headers


def test_one_send_per_hello_world_request(spawn, tmp_path):
    """The whole response of a one-item list, END_REQUEST included, is one send()."""
    import shutil
    import time
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace not installed")
    log = tmp_path / "strace.log"
    w = spawn(prefix=[strace, "-f", "-qq", "-s", "1024", "-e", "trace=sendto,sendmsg,writev",
                      "-o", str(log)])
    with w.client() as c:
        for _ in range(5):
            assert c.request("/hello").body == b"Hello, World!"
    # strace writes its log asynchronously: wait for the five lines
    deadline = time.monotonic() + 30
    while True:
        sends = [ln for ln in log.read_text().splitlines() if "sendto(" in ln]
        if len(sends) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(sends) == 5, sends
    # each carries the body and ends with END_REQUEST (type 3, request 1, 8 bytes)
    assert all("Hello, World!" in ln and '\\1\\3\\0\\1\\0\\10\\0\\0' in ln for ln in sends), sends


def test_stale_objects_do_not_wait_for_an_idle_connection(worker):
    """An app thread using an ended request's streams while the serving thread
    waits (kept-alive, idle) for the next request is not blocked."""
    import time
    with worker.client() as c:
        c.request("/keep_input", method="POST", body=b"x")
        c.request("/bg_log")
        time.sleep(1.0)  # idle connection: the serving thread is in recv()
        # The next request comes now: a thread slow to start on a loaded machine may note
        # its write only after it, and a blocked one only after it too, having waited.
        evs, deadline = [], time.monotonic() + 30
        while not any(e.startswith("bglog:") for e in evs) and time.monotonic() < deadline:
            evs += json.loads(c.request("/events").body)
    took = [float(e.split(":")[1]) for e in evs if e.startswith("bglog:")]
    # blocked, it would have waited for the next request (after the 1 s idle pause)
    assert took and took[0] < 0.9, evs


@pytest.mark.parametrize("declared,kind,body,app_status", [
    ("10", "list", b"1234567890", 0),
    ("5", "list", b"12345", 0),       # never more than Content-Length
    ("3", "gen", b"abc", 0),          # and iteration stops there
    ("12", "list", b"1234567890", 1),  # shorter: ended as cut off
    ("0", "none", b"", 0),
    ("4096", "handoff", b"", 0),      # a file hand-off's body is not the client's
])
def test_app_content_length_is_enforced(worker, declared, kind, body, app_status):
    r = worker.get("/cl/%s/%s" % (declared, kind))
    assert r.body == body
    assert r.app_status == app_status
    assert (b"shorter than its Content-Length" in r.stderr) == bool(app_status)


def test_generator_stopped_at_content_length_is_closed(worker):
    worker.get("/cl/3/gen")
    assert "closed:cl" in events(worker)


def test_head_with_content_length_and_no_body(worker):
    r = worker.get("/cl/10/none", method="HEAD")
    assert r.headers["content-length"] == "10" and r.body == b"" and r.app_status == 0


def test_invalid_content_length(worker):
    r = worker.get("/cl/abc/list")
    assert r.code == 500 and b"invalid Content-Length" in r.stderr


def test_http_content_headers_become_cgi_names(worker):
    with worker.client() as c:
        env = json.loads(c.request("/environ", method="POST", body=b"abc",
                                   params={"CONTENT_TYPE": "text/plain", "HTTP_CONTENT_TYPE": "text/plain",
                                           "HTTP_CONTENT_LENGTH": "3"}).body)
        assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
        assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "3"
        env = json.loads(c.request("/environ", params={"HTTP_CONTENT_TYPE": "a/b"}).body)
        assert env["CONTENT_TYPE"] == "a/b"

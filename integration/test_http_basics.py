"""Plain HTTP through real nginx → fcgibridge → Flask / plain WSGI, over every transport
(FastCGI on a unix socket, FastCGI over TCP with kept-alive connections, SCGI)."""
import hashlib
import http.client
import json
import os

import pytest
import requests

import fcgi_client
from harness import POOL_HOSTS, http_get


def test_get_flask(nginx, transport):
    r = http_get(nginx, transport, "/")
    assert r.status_code == 200
    assert r.text == "hello from flask\n"


def test_get_echo_sees_the_right_path_and_method(nginx, transport):
    r = http_get(nginx, transport, "/echo")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["method"] == "GET"
    assert data["path"] == "/echo"
    assert data["script_root"] == ""
    assert data["scheme"] == "http"
    assert data["remote_addr"] == "127.0.0.1"


def test_head(nginx, transport):
    r = requests.head(nginx.url(transport, "/echo"), headers={"Host": POOL_HOSTS["flask"]}, timeout=60)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Type"] == "application/json"
    # the app saw HEAD: compare with the GET body length the app would send
    g = http_get(nginx, transport, "/echo")
    assert g.json()["method"] == "GET"


def test_head_method_reaches_the_app(bridge):
    resp = bridge.request("/echo", pool="flask", method="HEAD")
    assert resp.status == 200
    assert resp.body == b""  # Flask/werkzeug drop the body for HEAD
    resp = bridge.request("/environ", pool="edge", method="HEAD")
    assert resp.status == 200
    assert json.loads(resp.body)["REQUEST_METHOD"] == "HEAD"


def test_post_form(nginx, transport):
    r = requests.post(nginx.url(transport, "/echo"), headers={"Host": POOL_HOSTS["flask"]},
                      data={"name": "Zoë", "multi": ["1", "2"]}, timeout=60)
    assert r.status_code == 200
    data = r.json()
    assert data["method"] == "POST"
    assert data["form"] == {"name": ["Zoë"], "multi": ["1", "2"]}
    assert data["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


def test_post_json_and_body_hash(nginx, transport):
    payload = {"numbers": list(range(1000)), "text": "ünïcödé ☃"}
    raw = json.dumps(payload).encode()
    r = requests.post(nginx.url(transport, "/echo"), headers={"Host": POOL_HOSTS["flask"],
                                                               "Content-Type": "application/json"},
                      data=raw, timeout=60)
    assert r.status_code == 200
    data = r.json()
    assert data["json"] == payload
    assert data["body_len"] == len(raw)
    assert data["body_sha256"] == hashlib.sha256(raw).hexdigest()
    assert data["content_length"] == str(len(raw))


def test_put_delete_patch(nginx, transport):
    for method in ("PUT", "DELETE", "PATCH"):
        r = requests.request(method, nginx.url(transport, "/echo"), headers={"Host": POOL_HOSTS["flask"]},
                             data=b"x" * 10, timeout=60)
        assert r.status_code == 200, (method, r.text)
        assert r.json()["method"] == method
        assert r.json()["body_len"] == 10


def test_query_string(nginx, transport):
    r = http_get(nginx, transport, "/echo?a=1&a=2&b=%20x%26y&c=%C3%A9t%C3%A9&empty=")
    assert r.status_code == 200
    args = r.json()["args"]
    assert args == {"a": ["1", "2"], "b": [" x&y"], "c": ["été"], "empty": [""]}


def test_query_string_raw_in_environ(nginx, transport):
    r = http_get(nginx, transport, "/environ?x=%2F%20y&z", pool="edge")
    env = r.json()
    assert env["QUERY_STRING"] == "x=%2F%20y&z"
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/environ"


def test_unicode_path(nginx, transport):
    r = http_get(nginx, transport, "/unicode/%C3%A9t%C3%A9%20%E2%98%83")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "été ☃"


def test_percent_encoded_path_in_environ(nginx, transport):
    r = http_get(nginx, transport, "/environ/%C3%A9l%C3%A8ve%20a%2Bb", pool="edge")
    assert r.status_code == 200
    env = r.json()
    # PEP 3333: PATH_INFO is the decoded path's bytes as a latin-1 str
    assert env["fcgibridge.test.path_utf8"] == "/environ/élève a+b"
    assert env["REQUEST_URI"] == "/environ/%C3%A9l%C3%A8ve%20a%2Bb"


def test_environ_is_pep3333(nginx, transport):
    r = http_get(nginx, transport, "/environ?q=1", pool="edge", headers={"X-Custom": "yes"})
    env = r.json()
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"]
    assert env["wsgi.multithread"]  # the edge pool runs 8 threads
    assert env["wsgi.multiprocess"]  # ... in 2 processes
    assert not env["wsgi.run_once"]
    assert env["SERVER_NAME"]
    assert env["SERVER_PORT"] == str(nginx.ports[transport])
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_X_CUSTOM"] == "yes"
    assert env["HTTP_HOST"] == POOL_HOSTS["edge"]
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ"
    assert env["fcgibridge.test.path_utf8"] == "/environ"
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env
    assert env.get("fcgibridge.request_id"), "the worker contract promises fcgibridge.request_id"
    for key in ("wsgi.input", "wsgi.errors"):
        assert key in env


def test_many_request_headers(nginx, transport):
    headers = {f"X-Many-{i}": f"value {i} " + "v" * 40 for i in range(100)}
    r = http_get(nginx, transport, "/environ", pool="edge", headers=headers)
    assert r.status_code == 200
    env = r.json()
    for i in range(100):
        assert env[f"HTTP_X_MANY_{i}"] == f"value {i} " + "v" * 40


def test_repeated_request_header(nginx, transport):
    conn = http.client.HTTPConnection("127.0.0.1", nginx.ports[transport], timeout=60)
    conn.putrequest("GET", "/environ", skip_host=True)
    conn.putheader("Host", POOL_HOSTS["edge"])
    conn.putheader("X-Repeat", "first")
    conn.putheader("X-Repeat", "second")
    conn.endheaders()
    resp = conn.getresponse()
    env = json.loads(resp.read())
    conn.close()
    assert resp.status == 200
    # nginx >= 1.23 joins repeated headers ("first, second"); older nginx sends the param
    # twice and the bridge must keep the last one (never a mangled or empty value)
    assert env["HTTP_X_REPEAT"] in ("first, second", "second"), env["HTTP_X_REPEAT"]


def test_many_and_repeated_response_headers(nginx, transport):
    r = http_get(nginx, transport, "/headers?n=60", pool="edge")
    assert r.status_code == 200
    for i in range(60):
        assert r.headers[f"X-Edge-{i}"] == f"value-{i}"
    # both Set-Cookie headers survive as separate headers
    raw_cookies = r.raw.headers.getlist("Set-Cookie") if hasattr(r.raw.headers, "getlist") else None
    assert r.cookies.get("first") == "1" and r.cookies.get("second") == "2"
    if raw_cookies is not None:
        assert len(raw_cookies) == 2
    assert r.headers["X-Repeated"] in ("one, two",)


def test_cookies_round_trip(nginx, transport):
    s = requests.Session()
    s.headers["Host"] = POOL_HOSTS["flask"]
    r = s.get(nginx.url(transport, "/cookies/set"), timeout=60)
    assert r.status_code == 200
    assert s.cookies.get("flavour") == "oatmeal" and s.cookies.get("colour") == "blue"
    # the jar is keyed on the request host 127.0.0.1; send them back explicitly too
    r = s.get(nginx.url(transport, "/cookies/get"), timeout=60,
              cookies={"flavour": "oatmeal", "colour": "blue", "semi": "a b"})
    assert r.json() == {"flavour": "oatmeal", "colour": "blue", "semi": "a b"}


def test_write_callable(nginx, transport):
    r = http_get(nginx, transport, "/write", pool="edge")
    assert r.status_code == 200
    assert r.text == "written-1\nwritten-2\nreturned-3\n"


def test_status_204(nginx, transport):
    r = http_get(nginx, transport, "/status/204", pool="edge")
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["X-Edge"] == "204"


def test_a_204_reaches_the_client_without_the_apps_content_length(nginx, transport):
    # RFC 9110 8.6: no Content-Length in a 204; nginx passes on whatever the bridge sends
    r = http_get(nginx, transport, "/status/204-length", pool="edge")
    assert r.status_code == 204
    assert "Content-Length" not in r.headers, r.headers
    assert r.headers["X-Edge"] == "204"


def test_status_304(nginx, transport):
    r = http_get(nginx, transport, "/etag", pool="edge")
    assert r.status_code == 200
    etag = r.headers["ETag"]
    assert r.text == "etagged body\n"
    r = http_get(nginx, transport, "/etag", pool="edge", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["ETag"] == etag


def test_404_from_the_app(nginx, transport):
    r = http_get(nginx, transport, "/no/such/page")
    assert r.status_code == 404


def test_keepalive_connection_reused_for_many_requests(nginx):
    """Many requests over one client connection and nginx's kept-alive upstream."""
    mark = nginx.error_log.mark()
    s = requests.Session()
    for i in range(50):
        r = s.get(nginx.url("fcgi-tcp", f"/n/{i}"), headers={"Host": POOL_HOSTS["flask"]}, timeout=60)
        assert r.status_code == 200
        assert r.json()["i"] == i
    assert not nginx.upstream_trouble(mark)


@pytest.mark.parametrize("stock", ["fcgi-stock", "scgi-stock"])
def test_stock_nginx_params_give_the_app_its_path(nginx, stock):
    """With nothing but `include fastcgi_params` / `include scgi_params` (the path only in
    SCRIPT_NAME, or only in REQUEST_URI/DOCUMENT_URI), the app still sees PATH_INFO: the
    bridge derives it (architecture: "derive PATH_INFO from REQUEST_URI")."""
    r = http_get(nginx, stock, "/environ/sub%20dir", pool="edge")
    env = r.json()  # a 404 here means the app saw no path at all
    assert (env["SCRIPT_NAME"], env["fcgibridge.test.path_utf8"]) == ("", "/environ/sub dir")
    r = http_get(nginx, stock, "/unicode/%C3%A9", pool="flask")
    assert r.status_code == 200 and r.json()["name"] == "é"


def test_stock_params_direct_fastcgi(bridge):
    params = fcgi_client.cgi_params("/environ", query="a=1", headers={"Host": "edge.test"}, stock_nginx=True)
    with bridge.fcgi() as conn:
        conn.begin(1, params, b"")
        resp = conn.wait(1)
    assert resp.status == 200, resp.stdout[:200]
    env = json.loads(resp.body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/environ")


@pytest.mark.parametrize("size", [100_000, 4 << 20])
def test_app_that_ignores_a_large_body_still_answers(nginx, transport, size):
    """The app answers without reading the request body (the worker must drain it, the
    bridge must not close on nginx while nginx is still sending it)."""
    r = requests.post(nginx.url(transport, "/health"), data=b"z" * size,
                      headers={"Host": POOL_HOSTS["edge"]}, timeout=60)
    assert (r.status_code, r.text) == (200, "ok")
    r = requests.post(nginx.url(transport, "/status/204"), data=b"z" * size,
                      headers={"Host": POOL_HOSTS["edge"]}, timeout=60)
    assert r.status_code == 204
    assert http_get(nginx, transport, "/health", pool="edge").text == "ok"


def test_file_wrapper(nginx, transport, tmp_path):
    import os
    data = os.urandom(3 << 20)
    f = tmp_path / "wrapped.bin"
    f.write_bytes(data)
    r = http_get(nginx, transport, f"/file?path={f}", pool="edge")
    assert r.status_code == 200
    assert r.content == data


def test_close_called_after_a_complete_response(bridge, tmp_path):
    marker = bridge.workdir / f"ticks-{os.urandom(6).hex()}"
    resp = bridge.request("/ticks", query=f"marker={marker}&n=3")
    assert resp.status == 200 and resp.body == b"tick 0\ntick 1\ntick 2\n"
    from harness import wait_until
    wait_until(lambda: marker.exists() and marker.read_text() == "closed\n", 10, what="close() called once")


def test_https_sets_url_scheme(bridge):
    resp = bridge.request("/environ", extra=[("HTTPS", "on"), ("REQUEST_SCHEME", "https"), ("SERVER_PORT", "443")])
    env = json.loads(resp.body)
    assert env["wsgi.url_scheme"] == "https"
    resp = bridge.request("/environ")
    assert json.loads(resp.body)["wsgi.url_scheme"] == "http"


def test_post_environ_has_no_http_content_headers(nginx, transport):
    """nginx passes every request header as HTTP_*, Content-Length and Content-Type too;
    PEP 3333 / CGI want them only as CONTENT_LENGTH / CONTENT_TYPE (wsgiref.validate
    rejects an environ with HTTP_CONTENT_LENGTH)."""
    r = requests.post(nginx.url(transport, "/environ"), data=b"abc",
                      headers={"Host": POOL_HOSTS["edge"], "Content-Type": "text/plain"}, timeout=60)
    env = r.json()
    assert env["CONTENT_LENGTH"] == "3" and env["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env, \
        {k: v for k, v in env.items() if k.startswith("HTTP_CONTENT")}


def test_head_with_content_length_and_no_body(nginx, transport, bridge):
    """Frameworks answer HEAD with the GET's Content-Length and no body: that is a complete
    response, not a short one."""
    r = requests.head(nginx.url(transport, "/head-cl"), headers={"Host": POOL_HOSTS["edge"]}, timeout=60)
    assert r.status_code == 200
    assert r.headers["Content-Length"] == "1000"
    resp = bridge.request("/head-cl", method="HEAD")
    assert resp.protocol_status == fcgi_client.REQUEST_COMPLETE and resp.app_status == 0
    assert resp.status == 200 and resp.body == b""
    # and the kept-alive upstream connection is still good
    assert http_get(nginx, transport, "/head-cl", pool="edge").content == b"h" * 1000


def test_body_longer_than_content_length_is_truncated(bridge):
    resp = bridge.request("/cl-mismatch", query="declared=10&sent=25")
    assert resp.status == 200
    assert resp.body == b"m" * 10


def test_body_shorter_than_content_length_is_not_a_clean_end(bridge):
    with bridge.fcgi() as conn:
        conn.begin(1, fcgi_client.cgi_params("/cl-mismatch", query="declared=100&sent=10",
                                             headers={"Host": "edge.test"}), b"")
        try:
            resp = conn.wait(1)
        except fcgi_client.ProtocolError:
            return  # closed without END_REQUEST: a cut-off
    assert resp.app_status != 0, "a body shorter than its Content-Length was ended as complete"


def test_multithread_multiprocess_are_truthful(bridge):
    env = json.loads(bridge.request("/environ", pool="single").body)
    assert (env["wsgi.multithread"], env["wsgi.multiprocess"]) == (False, False)
    env = json.loads(bridge.request("/environ", pool="edge").body)
    assert env["wsgi.multithread"] and env["wsgi.multiprocess"]


def test_flask_streamed_response(nginx, transport):
    r = http_get(nginx, transport, "/stream", pool="flask")
    assert r.status_code == 200
    assert r.text == "".join(f"line {i}\n" for i in range(5))

"""CGI local redirects (status 200 + `Location: /path`) served by the bridge itself: to the
same pool or another one, as GET (HEAD stays HEAD), loops ended with 500, a target no
route serves handed to nginx as X-Accel-Redirect. See docs/internal-redirects.md."""
import json
import urllib.parse

import pytest
import requests

import fcgi_client
import harness
import respond_servers


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("redirect")
    files = work / "files"
    files.mkdir()
    (files / "report.txt").write_text("served by nginx\n")
    ports = harness.free_ports(4)
    pools = {
        "app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=4),
        "other": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2),
    }
    routes = [{"prefix": "/other", "pool": "other"}, {"prefix": "/app", "pool": "app"},
              {"prefix": "/redirect", "pool": "app"}, {"prefix": "/loop", "pool": "app"},
              {"prefix": "/env", "pool": "app"}, {"prefix": "/health", "pool": "app"}]
    listeners = {
        # nginx in front: unrouted targets become X-Accel-Redirect
        "fcgi-nginx": {"fastcgi": f"127.0.0.1:{ports[0]}", "routes": routes, "dialect": "nginx"},
        "fcgi-pass": {"fastcgi": f"127.0.0.1:{ports[1]}", "routes": routes, "unrouted-redirect": "pass",
                      "max-redirects": 3},
        "fcgi-404": {"fastcgi": f"127.0.0.1:{ports[2]}", "routes": routes,
                     "status-path": "/fcgibridge-status", "ping-path": "/ping"},
        "scgi": {"scgi": f"127.0.0.1:{ports[3]}", "routes": routes},
    }
    bridge = respond_servers.start_bridge(work, pools, listeners,
                                          [("fcgi-nginx", "/health", "any"), ("fcgi-pass", "/other/health", "any")])
    nginx = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi-nginx"), files).start()
        yield bridge, nginx
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def env_of(resp):
    return json.loads(resp.body)


def test_redirect_to_another_pool_is_a_get_with_redirect_vars(env):
    bridge, _ = env
    addr = bridge.listener_address("fcgi-404")
    r = fcgi_client.fcgi_request(addr, "/redirect", method="POST", body=b"payload",
                                 query="to=%2Fother%2Fenv%2Fx%2520y%253Fz%3Fk%3Dv&orig=1")
    assert r.status == 200, bytes(r.stdout)[:300]
    assert b"first body!" not in bytes(r.stdout)
    e = env_of(r)
    assert e["REQUEST_METHOD"] == "GET"
    assert e["SCRIPT_NAME"] == "/other" and e["PATH_INFO"] == "/env/x y?z"
    assert e["QUERY_STRING"] == "k=v"
    assert e["REDIRECT_URL"] == "/redirect"
    assert e["REDIRECT_QUERY_STRING"] == "to=%2Fother%2Fenv%2Fx%2520y%253Fz%3Fk%3Dv&orig=1"
    assert e["REDIRECT_STATUS"] == "200"
    assert "CONTENT_LENGTH" not in e
    # the redirected request reached the other pool: its workers are not the first pool's
    assert r.header("Content-Length") is None or int(r.header("Content-Length")) == len(r.body)


def test_an_internal_redirect_never_reaches_the_status_page(env):
    """The web server guards status-path with its own access control; an app's redirect
    to it (or to ping-path) is routed like any other path, never answered by the bridge."""
    bridge, _ = env
    addr = bridge.listener_address("fcgi-404")
    direct = fcgi_client.fcgi_request(addr, "/fcgibridge-status", query="json")
    assert direct.status == 200 and b'"pools"' in direct.body
    assert direct.header("Status") == "200 OK"
    for target in ("/fcgibridge-status%3Fjson", "/ping"):
        r = fcgi_client.fcgi_request(addr, "/redirect", query=f"to={target}")
        assert r.status == 404, bytes(r.stdout)[:300]
        assert b'"pools"' not in r.body and b"pong" not in r.body


def test_head_stays_head(env):
    bridge, _ = env
    addr = bridge.listener_address("fcgi-404")
    r = fcgi_client.fcgi_request(addr, "/redirect", method="HEAD", query="to=/app/env")
    assert r.status == 200
    # the worker drops a HEAD response's body; the access line shows the method
    bridge.log.wait_for(r'method="HEAD" uri="/redirect\?to=/app/env" status=200', access=True)


def test_loop_ends_with_500_and_a_log_line(env):
    bridge, _ = env
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-pass"), "/loop")
    assert r.status == 500
    bridge.log.wait_for(r"internal redirect refused, answering 500: more than 3 internal redirects", since=mark)
    lines = [ln for ln in bridge.log.lines(mark) if "internal redirect" in ln and "target=/loop" in ln]
    assert len(lines) == 4, lines  # three followed, the fourth refused
    assert all('pool=app' in ln for ln in lines), lines
    # the access line names the pool whose redirect looped
    bridge.log.wait_for(r'uri="/loop" status=500 .*pool="app"', access=True)


def test_absolute_location_with_200_becomes_302(env):
    bridge, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-404"), "/redirect",
                                 query="to=http://example.test/x")
    assert r.status == 302
    assert r.header("Location") == "http://example.test/x"


def test_a_real_redirect_status_passes_untouched(env):
    bridge, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-404"), "/redirect",
                                 query="to=/app/env&status=303+See+Other")
    assert r.status == 303 and r.header("Location") == "/app/env"


def test_unrouted_target_404_or_pass(env):
    bridge, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-404"), "/redirect", query="to=/nowhere")
    assert r.status == 404
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-pass"), "/redirect", query="to=/nowhere")
    assert r.status == 200 and r.header("Location") == "/nowhere" and r.body == b""


def test_nginx_serves_an_unrouted_target_from_an_internal_location(env):
    _, nginx = env
    r = requests.get(nginx.url("/redirect?to=/protected/report.txt"), timeout=30)
    assert r.status_code == 200
    assert r.text == "served by nginx\n"
    # the internal location is not reachable directly
    assert requests.get(nginx.url("/protected/report.txt"), timeout=30).status_code == 404


@pytest.mark.parametrize("target", ["/protected/../secret.key", "/protected/./report.txt",
                                    "/protected//report.txt", "/protected/%2e%2e/secret.key"])
def test_an_unrouted_target_that_is_no_normal_path_never_becomes_x_accel_redirect(env, target):
    """The same check as an app's own X-Accel-Redirect: nginx would follow `.`, `//` and
    the encoded forms (it refuses a plain `..` itself)."""
    bridge, _ = env
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-nginx"), "/redirect",
                                 query="to=" + urllib.parse.quote(target, safe=""))
    assert r.status == 500 and r.header("X-Accel-Redirect") is None, bytes(r.stdout)[:300]
    bridge.log.wait_for([r"internal redirect refused, answering 500: no route serves it", r"is not a normal path"],
                        since=mark)


def test_nginx_in_front_of_a_pool_redirect(env):
    _, nginx = env
    r = requests.get(nginx.url("/redirect?to=/other/env"), timeout=30)
    assert r.status_code == 200
    assert r.json()["SCRIPT_NAME"] == "/other" and r.json()["REDIRECT_URL"] == "/redirect"


def test_redirect_over_scgi_with_a_body_left_unread(env):
    """The first request's body is never read by the app; the redirected GET has none."""
    bridge, _ = env
    status, _, body = fcgi_client.scgi_request(bridge.listener_address("scgi"), "/redirect", method="POST",
                                               query="to=/other/env", body=b"x" * 100000)
    assert status == 200
    e = json.loads(body)
    assert e["REQUEST_METHOD"] == "GET" and e["SCRIPT_NAME"] == "/other" and e["REDIRECT_URL"] == "/redirect"


def test_a_chain_of_two_redirects_names_each_hop_as_apache_does(env):
    """/redirect → /app/redirect?to=… → /other/env?k=v through nginx: as under Apache,
    REDIRECT_* names the previous request and REDIRECT_REDIRECT_* the one before it."""
    from urllib.parse import quote
    _, nginx = env
    inner = quote("/other/env?k=v", safe="")
    to = quote(f"/app/redirect?to={inner}", safe="")
    r = requests.post(nginx.url(f"/redirect?to={to}&first=1"), data=b"payload", timeout=30)
    assert r.status_code == 200, r.text[:300]
    e = r.json()
    assert (e["SCRIPT_NAME"], e["PATH_INFO"], e["QUERY_STRING"], e["REQUEST_METHOD"]) == ("/other", "/env", "k=v", "GET")
    # the second hop, /app/redirect, redirected here
    assert (e["REDIRECT_URL"], e["REDIRECT_QUERY_STRING"]) == ("/app/redirect", f"to={inner}")
    assert (e["REDIRECT_STATUS"], e["REDIRECT_REQUEST_METHOD"]) == ("200", "GET")
    # the client's request, one level down
    assert (e["REDIRECT_REDIRECT_URL"], e["REDIRECT_REDIRECT_QUERY_STRING"]) == ("/redirect", f"to={to}&first=1")
    assert (e["REDIRECT_REDIRECT_STATUS"], e["REDIRECT_REDIRECT_REQUEST_METHOD"]) == ("200", "POST")
    # nginx's fastcgi_params send REDIRECT_STATUS=200 (for PHP) with the client's request
    assert e["REDIRECT_REDIRECT_REDIRECT_STATUS"] == "200"
    assert "CONTENT_LENGTH" not in e and "HTTP_CONTENT_LENGTH" not in e

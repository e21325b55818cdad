"""CGI local redirects (status 200 + `Location: /path`) served by the bridge itself: to the
same pool or, with `redirect-pools: any`, another one, as GET (HEAD stays HEAD), loops ended
with 500, a target no route serves handed to nginx as X-Accel-Redirect. By default a redirect
into another pool is not followed by the bridge: nginx gets it (and its access rules for the
target run), elsewhere it is refused. See docs/internal-redirects.md."""
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
    ports = harness.free_ports(7)
    pools = {
        "app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=4),
        "other": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2),
    }
    routes = [{"prefix": "/other", "pool": "other"}, {"prefix": "/app", "pool": "app"},
              {"prefix": "/redirect", "pool": "app"}, {"prefix": "/loop", "pool": "app"},
              {"prefix": "/env", "pool": "app"}, {"prefix": "/health", "pool": "app"}]
    # These redirect from pool "app" into pool "other" on purpose.
    across = {"redirect-pools": "any"}
    listeners = {
        # nginx in front: unrouted targets become X-Accel-Redirect
        "fcgi-nginx": {"fastcgi": f"127.0.0.1:{ports[0]}", "routes": routes, "dialect": "nginx", **across},
        "fcgi-pass": {"fastcgi": f"127.0.0.1:{ports[1]}", "routes": routes, "unrouted-redirect": "pass",
                      "max-redirects": 3},
        "fcgi-404": {"fastcgi": f"127.0.0.1:{ports[2]}", "routes": routes,
                     "status-path": "/fcgibridge-status", "ping-path": "/ping", **across},
        "scgi": {"scgi": f"127.0.0.1:{ports[3]}", "routes": routes, **across},
        # the default, redirect-pools: same
        "fcgi-same": {"fastcgi": f"127.0.0.1:{ports[4]}", "routes": routes},
        "nginx-same": {"fastcgi": f"127.0.0.1:{ports[5]}", "routes": routes, "dialect": "nginx"},
        "nginx-any": {"fastcgi": f"127.0.0.1:{ports[6]}", "routes": routes, "dialect": "nginx", **across},
    }
    bridge = respond_servers.start_bridge(work, pools, listeners,
                                          [("fcgi-nginx", "/health", "any"), ("fcgi-pass", "/other/health", "any")])
    nginx = guarded = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi-nginx"), files).start()
        guarded = GuardedNginx(work / "nginx-guarded", bridge).start()
        bridge.guarded = guarded
        yield bridge, nginx
    finally:
        for server in (guarded, nginx):
            if server:
                server.stop()
        bridge.stop()


# Pool "other" is for one office only: nginx denies its prefix to everyone but /other/health.
GUARDED_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include {etc}/fastcgi_params;
            fastcgi_pass {fcgi};
        }}
        location /other/ {{
            allow 10.99.99.99;
            deny all;
            include {etc}/fastcgi_params;
            fastcgi_pass {fcgi};
        }}
        location = /other/health {{
            include {etc}/fastcgi_params;
            fastcgi_pass {fcgi};
        }}
    }}
"""


class GuardedNginx:
    """nginx guarding pool "other" with `deny all`, in front of listener nginx-same (the
    default redirect-pools) and, on a second port, nginx-any (`redirect-pools: any`)."""

    def __init__(self, workdir, bridge):
        workdir.mkdir()
        self.workdir, self.ports = workdir, dict(zip(("nginx-same", "nginx-any"), harness.free_ports(2)))
        servers = "".join(
            GUARDED_SERVER.format(port=port, etc=harness.nginx_etc(),
                                  fcgi="{}:{}".format(*bridge.listener_address(listener)))
            for listener, port in self.ports.items())
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(harness.nginx_conf(workdir, servers))
        self.proc = None

    def url(self, listener, path):
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    def start(self):
        self.proc = harness.start_nginx(self.workdir, self.conf)
        for listener in self.ports:
            harness.wait_until(lambda: requests.get(self.url(listener, "/health"), timeout=10).status_code == 200,
                               60, 0.1, what=f"nginx in front of {listener}")
        return self

    def stop(self):
        harness.stop_process(self.proc, timeout=20)


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
    # the access line names the request as the web server sent it, not as it was redirected
    bridge.log.wait_for(r'method="POST" uri="/redirect\?to=%2Fother%2Fenv.* status=200', access=True)


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
    assert all('pool="app"' in ln for ln in lines), lines
    # the access line names the pool whose redirect looped
    bridge.log.wait_for(r'uri="/loop" status=500 .*pool="app"', access=True)


def listener_numbers(bridge, name):
    page = fcgi_client.fcgi_request(bridge.listener_address("fcgi-404"), "/fcgibridge-status", query="json")
    listener = next(lst for lst in json.loads(page.body)["listeners"] if lst["name"] == name)
    return listener["accepted_requests"], sum(listener["responses"].values())


def test_a_request_the_bridge_redirects_counts_once_on_its_listener(env):
    """The listener's accepted_requests are requests decoded on it: the steps of a redirect
    chain followed inside the bridge are one request, with one response."""
    bridge, _ = env
    accepted, answered = listener_numbers(bridge, "fcgi-pass")
    assert fcgi_client.fcgi_request(bridge.listener_address("fcgi-pass"), "/loop").status == 500
    harness.wait_until(lambda: listener_numbers(bridge, "fcgi-pass")[1] == answered + 1, 30, 0.05,
                       what="the loop's response counted")
    assert listener_numbers(bridge, "fcgi-pass") == (accepted + 1, answered + 1)


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


# ---------------------------------------------------------------- redirect-pools

def test_behind_nginx_a_redirect_into_another_pool_passes_nginxs_access_rules(env):
    """An app of pool "app" redirects its visitor into pool "other", which nginx denies:
    the bridge hands the redirect to nginx as X-Accel-Redirect, and nginx's `deny all`
    answers 403; pool "other" never sees the request."""
    bridge, _ = env
    guarded = bridge.guarded
    assert requests.get(guarded.url("nginx-same", "/other/env"), timeout=30).status_code == 403
    mark = bridge.log.mark()
    r = requests.get(guarded.url("nginx-same", "/redirect?to=/other/env%3Fk%3Dv"), timeout=30)
    # nginx's own 403 page: pool "other" never saw the request
    assert r.status_code == 403 and "nginx" in r.text, r.text[:300]
    assert "SCRIPT_NAME" not in r.text and "first body!" not in r.text
    bridge.log.wait_for([r"internal redirect into another pool handed to the web server", r'listener="?nginx-same',
                         r'pool="?app"? ', r"target=\"?/other/env\?k=v", r'target_pool="?other"?'], since=mark)
    # A target nginx allows: nginx routes it back to the bridge, and pool "other" answers.
    r = requests.get(guarded.url("nginx-same", "/redirect?to=/other/health"), timeout=30)
    assert r.status_code == 200 and r.text == "ok", r.text[:300]
    # Within its own pool the bridge follows the redirect itself, as before.
    r = requests.get(guarded.url("nginx-same", "/redirect?to=/app/env"), timeout=30)
    assert r.status_code == 200 and r.json()["REDIRECT_URL"] == "/redirect"


def test_redirect_pools_any_follows_a_redirect_past_nginxs_access_rules(env):
    """`redirect-pools: any`, the old behaviour: the bridge serves pool "other"'s page
    itself, and nginx's `deny all` for it never runs."""
    bridge, _ = env
    guarded = bridge.guarded
    assert requests.get(guarded.url("nginx-any", "/other/env"), timeout=30).status_code == 403
    r = requests.get(guarded.url("nginx-any", "/redirect?to=/other/env"), timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["SCRIPT_NAME"] == "/other" and r.json()["REDIRECT_URL"] == "/redirect"


def test_without_a_web_server_to_check_it_a_redirect_into_another_pool_is_refused(env):
    bridge, _ = env
    addr = bridge.listener_address("fcgi-same")
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(addr, "/redirect", query="to=/other/env")
    assert r.status == 500, bytes(r.stdout)[:300]
    assert b"SCRIPT_NAME" not in r.body and b"first body!" not in r.body
    bridge.log.wait_for([r"internal redirect refused, answering 500: the target is pool other's",
                         r"set redirect-pools: any on listener fcgi-same", r'listener="?fcgi-same',
                         r'pool="?app"? ', r"target=/other/env", r'target_pool="?other"?'], since=mark)
    bridge.log.wait_for(r'uri="/redirect\?to=/other/env" status=500 .*pool="app"', access=True)
    # the same pool: followed
    r = fcgi_client.fcgi_request(addr, "/redirect", query="to=/app/env")
    assert r.status == 200 and json.loads(r.body)["REDIRECT_URL"] == "/redirect"


def test_unrouted_redirect_pass_hands_a_redirect_into_another_pool_to_the_web_server(env):
    """A web server that follows local redirects itself (mod_fcgid, ProxySCGIInternalRedirect)
    gets status 200 + Location, and runs its access checks for the target."""
    bridge, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-pass"), "/redirect", query="to=/other/env")
    assert r.status == 200 and r.header("Location") == "/other/env" and r.body == b"", bytes(r.stdout)[:300]

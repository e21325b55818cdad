"""A pool's `error-pages` replace an app's 4xx/5xx body (mod_wsgi's WSGIErrorOverride) and
the bridge's own 502/503 for that pool; a page is a file or, like Apache's
`ErrorDocument 404 /errors/404`, a local path the request is dispatched to again. The status
stays the original one, and so do the app's headers that do not describe its body.
See docs/error-override.md."""
import json
import threading

import pytest
import requests

import fcgi_client
import harness
import respond_servers


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("errpages")
    pages = work / "pages"
    pages.mkdir()
    (pages / "404.html").write_text("<h1>site-wide 404</h1>\n")
    (pages / "502.html").write_text("<h1>site-wide 502</h1>\n")
    (pages / "429.txt").write_text("slow down\n")
    ports = harness.free_ports(2)
    app_pages = {
        "404": str(pages / "404.html"),
        "502": str(pages / "502.html"),
        "429": {"file": str(pages / "429.txt")},
        "401": {"redirect": "/errorpage/401"},                # the same pool
        "403": {"redirect": "/pages/errorpage/403?from=app"},  # another pool
        "409": {"redirect": "/errorfail"},                    # a page that fails itself
        "410": {"redirect": "/nowhere/410"},                  # no route on fcgi-prefix
        "451": {"redirect": "/pages/redirect?to=/plain/env"},  # a page whose app redirects elsewhere
    }
    pools = {
        "app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=3, **{"error-pages": app_pages}),
        "plain": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2),
        "pages": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2),
        # one thread, no queue: a second request gets the bridge's 503 at once
        "busy": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=1,
                             **{"queue-size": 0, "error-pages": {"503": {"redirect": "/pages/errorpage/503"}}}),
    }
    prefixes = [{"prefix": "/plain", "pool": "plain"}, {"prefix": "/pages", "pool": "pages"},
                {"prefix": "/busy", "pool": "busy"}]
    listeners = {
        "fcgi": {"fastcgi": f"127.0.0.1:{ports[0]}", "routes": prefixes + [{"pool": "app"}]},
        "fcgi-prefix": {"fastcgi": f"127.0.0.1:{ports[1]}", "routes": prefixes + [{"prefix": "/app", "pool": "app"}]},
    }
    bridge = respond_servers.start_bridge(work, pools, listeners,
                                          [("fcgi", "/health", "any"), ("fcgi", "/plain/health", "any"),
                                           ("fcgi", "/pages/health", "any"), ("fcgi", "/busy/health", "any")])
    nginx = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi"), work).start()
        yield bridge, nginx
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def kept_app_headers(r):
    """The app's headers a replaced page keeps; the ones describing its body are gone."""
    assert r.headers["WWW-Authenticate"] == 'Basic realm="site"'
    cookies = r.raw.headers.getlist("Set-Cookie")
    assert "session=abc; Path=/" in cookies and "seen=1" in cookies, cookies
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-App"] == "yes"
    assert "ETag" not in r.headers and "Content-Language" not in r.headers
    assert int(r.headers["Content-Length"]) == len(r.content)


def test_app_error_body_replaced_status_kept(env):
    _, nginx = env
    r = requests.get(nginx.url("/status?code=404"), timeout=30)
    assert r.status_code == 404
    assert r.text == "<h1>site-wide 404</h1>\n" and r.headers["Content-Type"].startswith("text/html")
    r = requests.get(nginx.url("/status?code=429"), timeout=30)
    assert r.status_code == 429 and r.text == "slow down\n" and r.headers["Content-Type"].startswith("text/plain")


def test_file_page_keeps_the_apps_headers(env):
    _, nginx = env
    r = requests.get(nginx.url("/status?code=404&extra=1"), timeout=30)
    assert r.status_code == 404 and r.text == "<h1>site-wide 404</h1>\n"
    assert r.headers["Content-Type"].startswith("text/html")
    kept_app_headers(r)


def test_401_page_is_an_internal_redirect_keeping_auth_and_cookies(env):
    """ErrorDocument 401 /errorpage/401: the page's body and Content-Type, the app's 401,
    WWW-Authenticate and cookies (a 401 without its challenge breaks authentication)."""
    bridge, nginx = env
    r = requests.get(nginx.url("/status?code=401&extra=1"), timeout=30,
                     headers={"If-None-Match": '"app-etag"', "Range": "bytes=0-3"})
    assert r.status_code == 401, r.text
    assert r.headers["Content-Type"] == "application/json"
    page = r.json()
    assert page["page"] == "/errorpage/401"
    assert (page["REDIRECT_STATUS"], page["REDIRECT_URL"], page["REDIRECT_QUERY_STRING"]) == \
        ("401", "/status", "code=401&extra=1")
    assert page["REQUEST_METHOD"] == "GET" and page["REDIRECT_REQUEST_METHOD"] == "GET"
    # the client's conditional and range headers were about the page it asked for
    assert page["HTTP_IF_NONE_MATCH"] is None and page["HTTP_RANGE"] is None
    kept_app_headers(r)
    assert "page=1" in r.raw.headers.getlist("Set-Cookie"), "the page's own cookie goes out too"
    bridge.log.wait_for(r'method="GET" uri="/status\?code=401&extra=1" status=401 .*pool="app"', access=True)


def test_error_page_for_a_post_is_a_get_without_body(env):
    _, nginx = env
    r = requests.post(nginx.url("/status?code=401"), data=b"x" * 5000, timeout=30)
    assert r.status_code == 401
    page = r.json()
    assert page["REQUEST_METHOD"] == "GET" and page["REDIRECT_REQUEST_METHOD"] == "POST"
    assert not page["CONTENT_LENGTH"]


def test_head_stays_head(env):
    bridge, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/status", method="HEAD", query="code=401")
    assert r.status == 401 and r.header("Content-Type") == "application/json"
    # (web servers drop a HEAD response's body; the page's request was a HEAD too)
    assert r.body == b"" or json.loads(r.body)["REQUEST_METHOD"] == "HEAD", r.body


def test_error_page_served_by_another_pool(env):
    bridge, nginx = env
    r = requests.get(nginx.url("/status?code=403"), timeout=30)
    assert r.status_code == 403
    page = r.json()
    assert page["page"] == "/errorpage/403" and page["QUERY_STRING"] == "from=app"
    assert page["REDIRECT_STATUS"] == "403" and page["REDIRECT_URL"] == "/status"
    # the access line names the pool that served the page
    bridge.log.wait_for(r'uri="/status\?code=403" status=403 .*pool="pages"', access=True)


def test_a_failing_error_page_does_not_recurse(env):
    """The page itself answers 500: the default text goes out, with the original status."""
    bridge, nginx = env
    mark = bridge.log.mark()
    r = requests.get(nginx.url("/status?code=409"), timeout=30)
    assert r.status_code == 409
    assert r.text == "409 Conflict\n" and r.headers["Content-Type"].startswith("text/plain")
    bridge.log.wait_for(r"the error page for 409 answered 500, answering the default page", since=mark)


def test_an_error_page_is_trusted_but_not_its_apps_redirect_into_another_pool(env):
    """The operator's page path leads into pool "pages" (followed: the configuration wrote
    it); the app there answers a local redirect into pool "plain", which the bridge does
    not follow (redirect-pools: same): the page failed, the default text goes out."""
    bridge, _ = env
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi"), "/status", query="code=451")
    assert r.status == 451 and r.body == b"451 Unavailable For Legal Reasons\n", bytes(r.stdout)[:300]
    bridge.log.wait_for([r"the error page's internal redirect goes to another pool", r"pool=\"?pages",
                         r"target=/plain/env", r"target_pool=\"?plain"], since=mark)


def test_an_error_page_no_route_serves_gets_the_default_text(env):
    bridge, _ = env
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-prefix"), "/app/status", query="code=410")
    assert r.status == 410 and r.body == b"410 Gone\n"
    bridge.log.wait_for([r"no route serves the error page", r"target=/nowhere/410"], since=mark)


def test_unconfigured_status_and_other_pool_untouched(env):
    _, nginx = env
    r = requests.get(nginx.url("/status?code=418"), timeout=30)
    assert r.status_code == 418 and r.text == "the app's own error body"
    r = requests.get(nginx.url("/plain/status?code=404&extra=1"), timeout=30)
    assert r.status_code == 404 and r.text == "the app's own error body"
    assert r.headers["ETag"] == '"app-etag"'
    assert requests.get(nginx.url("/health"), timeout=30).text == "ok"


def test_bridge_503_page_served_by_another_pool(env):
    """The busy pool's only thread is taken: its 503 is the page of the `pages` pool, with
    Retry-After kept."""
    bridge, nginx = env
    addr = bridge.listener_address("fcgi")
    work = bridge.workdir
    # The thread is held until the test lets it go (a sleep of a few seconds raced the
    # request below on a loaded machine).
    holder = threading.Thread(target=fcgi_client.fcgi_request, args=(addr, "/busy/hold"),
                              kwargs={"query": "mark=busy503"}, daemon=True)
    holder.start()
    try:
        harness.wait_until(lambda: (work / "busy503.started.mark").exists(), 60, what="the busy pool's only thread held")
        r = requests.get(nginx.url("/busy/health"), timeout=30)
    finally:
        (work / "busy503.release").write_text("")
        holder.join(60)
    assert r.status_code == 503, "the busy pool did not answer 503"
    assert r.headers["Retry-After"] == "1"
    page = r.json()
    assert page["page"] == "/errorpage/503" and page["REDIRECT_STATUS"] == "503"
    assert page["REDIRECT_URL"] == "/busy/health"


def test_bridge_502_uses_the_page(env):
    bridge, _ = env
    addr = bridge.listener_address("fcgi")
    r = fcgi_client.fcgi_request(addr, "/crash")
    assert r.status == 502
    assert r.body == b"<h1>site-wide 502</h1>\n"
    # the pool recovers (the supervisor starts a new worker)
    harness.wait_until(lambda: fcgi_client.fcgi_request(addr, "/health").status == 200, 60,
                       what="the app pool to answer again")

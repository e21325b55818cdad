"""A pool's `error-pages` replace an app's 4xx/5xx body (mod_wsgi's WSGIErrorOverride) and
the bridge's own 502 for that pool; other statuses and pools are untouched.
See docs/error-override.md."""
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
    (port,) = harness.free_ports(1)
    pools = {
        "app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2,
                            **{"error-pages": {"404": str(pages / "404.html"), "502": str(pages / "502.html")}}),
        "plain": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2),
    }
    listeners = {"fcgi": {"fastcgi": f"127.0.0.1:{port}",
                          "routes": [{"prefix": "/plain", "pool": "plain"}, {"pool": "app"}]}}
    bridge = respond_servers.start_bridge(work, pools, listeners,
                                          [("fcgi", "/health", "any"), ("fcgi", "/plain/health", "any")])
    nginx = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi"), work).start()
        yield bridge, nginx
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def test_app_error_body_replaced_status_kept(env):
    _, nginx = env
    r = requests.get(nginx.url("/status?code=404"), timeout=30)
    assert r.status_code == 404
    assert r.text == "<h1>site-wide 404</h1>\n" and r.headers["Content-Type"].startswith("text/html")


def test_unconfigured_status_and_other_pool_untouched(env):
    _, nginx = env
    r = requests.get(nginx.url("/status?code=418"), timeout=30)
    assert r.status_code == 418 and r.text == "the app's own error body"
    r = requests.get(nginx.url("/plain/status?code=404"), timeout=30)
    assert r.status_code == 404 and r.text == "the app's own error body"
    assert requests.get(nginx.url("/health"), timeout=30).text == "ok"


def test_bridge_502_uses_the_page(env):
    bridge, _ = env
    addr = bridge.listener_address("fcgi")
    r = fcgi_client.fcgi_request(addr, "/crash")
    assert r.status == 502
    assert r.body == b"<h1>site-wide 502</h1>\n"
    # the pool recovers (the supervisor starts a new worker)
    harness.wait_until(lambda: fcgi_client.fcgi_request(addr, "/health").status == 200, 60,
                       what="the app pool to answer again")

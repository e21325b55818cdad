"""Routing one listener to several pools by Host and by path prefix."""
import json
import re

import fcgi_client as fc


def env_of(bridge, listener, path, host="localhost"):
    resp = fc.fcgi_request(bridge.listener_address(listener), path, headers={"Host": host})
    return resp


def test_host_routes_ignore_case_and_port(bridge):
    resp = env_of(bridge, "fcgi-tcp", "/environ", host="EDGE.test:8080")
    assert resp.status == 200
    assert json.loads(resp.body)["HTTP_HOST"] == "EDGE.test:8080"
    resp = env_of(bridge, "fcgi-tcp", "/", host="unknown.test")
    assert resp.body == b"hello from flask\n"  # the catch-all route


def test_prefix_route_reaches_the_pool(bridge):
    resp = env_of(bridge, "fcgi-prefix", "/edge/environ")
    assert resp.status == 200, resp.stdout[:300]
    env = json.loads(resp.body)
    # whatever the split, SCRIPT_NAME + PATH_INFO is the request path
    assert env["SCRIPT_NAME"] + env["PATH_INFO"] == "/edge/environ"


def test_prefix_route_is_a_mount_point(bridge):
    """The pool behind `prefix: /edge/` is mounted there: SCRIPT_NAME=/edge, PATH_INFO=/environ
    (so apps build correct links, as under any WSGI mount)."""
    env = json.loads(env_of(bridge, "fcgi-prefix", "/edge/environ").body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/edge", "/environ")


def test_prefix_matches_on_segment_boundary(bridge):
    resp = env_of(bridge, "fcgi-prefix", "/edgex/environ")
    # not the edge pool: flask has no such route
    assert resp.status == 404
    assert b"edge app" not in resp.body


def test_django_under_a_prefix_builds_prefixed_links(bridge):
    resp = env_of(bridge, "fcgi-prefix", "/dj/")
    assert resp.status == 200, resp.stdout[:500]
    html = resp.body.decode()
    assert re.search(r'<p id="form-url">/dj/form/</p>', html), html
    resp = env_of(bridge, "fcgi-prefix", "/dj/form/")
    assert resp.status == 200
    assert "csrfmiddlewaretoken" in resp.body.decode()


def test_no_matching_route_is_404_from_the_bridge(bridge):
    resp = env_of(bridge, "fcgi-hostonly", "/environ", host="other.test")
    assert resp.status == 404
    assert b"edge app" not in resp.body and b"HTTP_HOST" not in resp.body
    assert env_of(bridge, "fcgi-hostonly", "/health", host="EDGE.test").body == b"ok"


def test_dot_segments_cannot_escape_a_prefix(bridge):
    """A raw client (no web server normalising the path) sends /dj/../edge/environ: the
    bridge resolves the dot segments before routing, so it is the edge pool's /environ."""
    params = fc.cgi_params("/dj/../edge/environ", headers={"Host": "x"}, stock_nginx=True)
    with bridge.fcgi("fcgi-prefix") as conn:
        conn.begin(1, params, b"")
        resp = conn.wait(1)
    assert resp.status == 200, resp.stdout[:300]
    env = json.loads(resp.body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/edge", "/environ")

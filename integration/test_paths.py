"""Per-listener `mount` and `path-info: derive | keep`: the app sees the same SCRIPT_NAME /
PATH_INFO whatever the web server put where (nginx's stock params: the whole path in
SCRIPT_NAME, no PATH_INFO), percent-decoded as CGI requires."""
import json

import pytest

import fcgi_client
import harness
import respond_servers


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    work = tmp_path_factory.mktemp("paths")
    ports = harness.free_ports(3)
    pools = {"app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2)}
    listeners = {
        "mounted": {"fastcgi": f"127.0.0.1:{ports[0]}", "pool": "app", "mount": "/app/"},
        "derive": {"fastcgi": f"127.0.0.1:{ports[1]}", "pool": "app"},
        "keep": {"fastcgi": f"127.0.0.1:{ports[2]}", "pool": "app", "path-info": "keep"},
    }
    b = respond_servers.start_bridge(work, pools, listeners, [("derive", "/health", "any")])
    yield b
    b.stop()


def env_of(bridge, listener, uri):
    path, _, query = uri.partition("?")
    params = fcgi_client.cgi_params(path, query=query, stock_nginx=True)
    with bridge.fcgi(listener) as c:
        c.begin(1, params)
        r = c.wait(1)
    assert r.status == 200, bytes(r.stdout)[:300]
    return json.loads(r.body)


def test_mount_point(bridge):
    e = env_of(bridge, "mounted", "/app/env/a%20b%2Fc?x=1")
    assert (e["SCRIPT_NAME"], e["PATH_INFO"], e["QUERY_STRING"]) == ("/app", "/env/a b/c", "x=1")


def test_derive_without_mount(bridge):
    e = env_of(bridge, "derive", "/env/caf%C3%A9")
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == ("", "/env/caf\u00c3\u00a9")  # latin-1 view of UTF-8 bytes (PEP 3333)


def test_keep_leaves_the_web_servers_values(bridge):
    e = env_of(bridge, "keep", "/env/x%20y")
    assert e["SCRIPT_NAME"] == "/env/x%20y" and e.get("PATH_INFO", "") == ""

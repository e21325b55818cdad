"""Trusted proxies: forwarding headers from a trusted peer rewrite REMOTE_ADDR, the scheme,
HTTP_HOST and SERVER_PORT; from an untrusted peer they are removed before the app sees them.
The peer is REMOTE_ADDR as the web server reports it. See docs/trusted-proxies.md."""
import pytest
import requests

import fcgi_client
import harness
import respond_servers

FORWARDED = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "public.example", "X-Forwarded-Port": "443", "X-Real-IP": "198.51.100.1"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("proxy")
    ports = harness.free_ports(5)
    pools = {"app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=4)}
    listeners = {
        "fcgi-trust": {"fastcgi": f"127.0.0.1:{ports[0]}", "pool": "app",
                       "trusted-proxies": ["127.0.0.1", "10.0.0.0/8"],
                       "trusted-proxy-headers": ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                                                 "X-Forwarded-Port"]},
        "fcgi-other": {"fastcgi": f"127.0.0.1:{ports[1]}", "pool": "app", "trusted-proxies": ["10.0.0.0/8"]},
        "fcgi-none": {"fastcgi": f"127.0.0.1:{ports[2]}", "pool": "app"},
        # behind a proxy that writes X-Real-IP (or Forwarded), believed instead of the chain
        "fcgi-real-ip": {"fastcgi": f"127.0.0.1:{ports[3]}", "pool": "app", "trusted-proxies": ["10.0.0.0/8"],
                         "trusted-proxy-headers": ["X-Real-IP"]},
        "fcgi-forwarded": {"fastcgi": f"127.0.0.1:{ports[4]}", "pool": "app", "trusted-proxies": ["10.0.0.0/8"],
                           "trusted-proxy-headers": ["Forwarded"]},
    }
    bridge = respond_servers.start_bridge(work, pools, listeners, [("fcgi-none", "/health", "any")])
    nginx = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi-trust"), work).start()
        yield bridge, nginx
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def environ(bridge, listener, remote="127.0.0.1", headers=FORWARDED):
    params = fcgi_client.cgi_params("/env", headers=headers, server_port=8080)
    params = [(k, remote if k == "REMOTE_ADDR" else v) for k, v in params]
    with bridge.fcgi(listener) as c:
        c.begin(1, params)
        r = c.wait(1)
    assert r.status == 200, bytes(r.stdout)[:300]
    import json
    return json.loads(r.body)


def test_trusted_peer_rewrites_the_environ(env):
    bridge, _ = env
    e = environ(bridge, "fcgi-trust")
    assert e["REMOTE_ADDR"] == "203.0.113.9"  # the right-most untrusted hop, not the forged 6.6.6.6
    assert e["HTTPS"] == "on" and e["REQUEST_SCHEME"] == "https"
    assert e["HTTP_HOST"] == "public.example"
    assert e["SERVER_PORT"] == "443"
    # X-Real-IP is not among this listener's trusted headers: left alone, REMOTE_ADDR unaffected
    assert e["HTTP_X_REAL_IP"] == "198.51.100.1"


def test_untrusted_peer_loses_the_headers(env):
    bridge, _ = env
    e = environ(bridge, "fcgi-other", remote="192.0.2.50")
    assert e["REMOTE_ADDR"] == "192.0.2.50"
    assert e.get("HTTPS") != "on" and e["HTTP_HOST"] == "localhost" and e["SERVER_PORT"] == "8080"
    for name in ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                 "HTTP_X_FORWARDED_PORT", "HTTP_X_REAL_IP"):
        assert name not in e, name


def test_by_default_a_client_behind_a_trusted_proxy_cannot_pick_its_address_or_host(env):
    # The default believes X-Forwarded-For (from the right) and X-Forwarded-Proto: an
    # X-Real-IP, Forwarded or X-Forwarded-Host the proxy passed on as the client wrote it
    # changes nothing (they used to: all six were believed).
    bridge, _ = env
    e = environ(bridge, "fcgi-other", remote="10.20.30.40",
                headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.9", "X-Real-IP": "6.6.6.6",
                         "Forwarded": "for=6.6.6.6;host=evil.example", "X-Forwarded-Host": "evil.example",
                         "X-Forwarded-Proto": "https"})
    assert e["REMOTE_ADDR"] == "203.0.113.9"
    assert e["HTTP_HOST"] == "localhost" and e["HTTPS"] == "on"


def test_trusted_in_a_cidr_block_with_x_real_ip(env):
    bridge, _ = env
    e = environ(bridge, "fcgi-real-ip", remote="10.20.30.40", headers={"X-Real-IP": "198.51.100.1"})
    assert e["REMOTE_ADDR"] == "198.51.100.1"


def test_forwarded_header(env):
    bridge, _ = env
    e = environ(bridge, "fcgi-forwarded", remote="10.0.0.1",
                headers={"Forwarded": 'for="[2001:db8::7]:4711";proto=https;host=a.example'})
    assert e["REMOTE_ADDR"] == "2001:db8::7" and e["REQUEST_SCHEME"] == "https" and e["HTTP_HOST"] == "a.example"


def test_listener_without_trusted_proxies_passes_headers_untouched(env):
    bridge, _ = env
    e = environ(bridge, "fcgi-none")
    assert e["REMOTE_ADDR"] == "127.0.0.1"
    assert e["HTTP_X_FORWARDED_FOR"] == FORWARDED["X-Forwarded-For"]


def test_through_nginx(env):
    """nginx reports the HTTP client (127.0.0.1, trusted) as REMOTE_ADDR."""
    _, nginx = env
    r = requests.get(nginx.url("/env"), headers={"X-Forwarded-For": "203.0.113.77",
                                                  "X-Forwarded-Proto": "https"}, timeout=30)
    e = r.json()
    assert e["REMOTE_ADDR"] == "203.0.113.77" and e["HTTPS"] == "on"


def test_through_nginx_behind_a_chain_of_proxies(env):
    """client -https-> load balancer 10.1.2.3 -http-> proxy (127.0.0.1) -> nginx, each
    appending: the scheme, host and port are those at the client's place in the chain, not
    the last proxy's."""
    _, nginx = env
    r = requests.get(nginx.url("/env"), headers={"X-Forwarded-For": "203.0.113.77, 10.1.2.3",
                                                  "X-Forwarded-Proto": "https, http",
                                                  "X-Forwarded-Host": "shop.example, lb.internal",
                                                  "X-Forwarded-Port": "443, 80"}, timeout=30)
    e = r.json()
    assert e["REMOTE_ADDR"] == "203.0.113.77"
    assert e["HTTPS"] == "on" and e["REQUEST_SCHEME"] == "https"
    assert e["HTTP_HOST"] == "shop.example" and e["SERVER_PORT"] == "443"


def test_a_trusted_proxy_s_client_address_in_a_header_not_believed_is_logged_once(env):
    # Behind a proxy that writes only X-Real-IP, the default list (X-Forwarded-For,
    # X-Forwarded-Proto) leaves REMOTE_ADDR the proxy's: the operator is told, once.
    bridge, _ = env
    mark = bridge.log.mark()
    for _ in range(3):
        e = environ(bridge, "fcgi-other", remote="10.9.9.9", headers={"X-Real-IP": "198.51.100.1"})
        assert e["REMOTE_ADDR"] == "10.9.9.9"
    line = bridge.log.wait_for(r"trusted proxy 10\.9\.9\.9 sent X-Real-IP and no header that "
                               r"trusted-proxy-headers lists", since=mark)
    assert "add X-Real-IP to trusted-proxy-headers" in "\n".join(line)
    environ(bridge, "fcgi-other", remote="10.9.9.8", headers={"X-Real-IP": "198.51.100.1"})
    # Another header's first time is logged after anything the request before it logged.
    environ(bridge, "fcgi-other", remote="10.9.9.8", headers={"Forwarded": "for=198.51.100.1"})
    bridge.log.wait_for(r"trusted proxy 10\.9\.9\.8 sent Forwarded and no header", since=mark)
    assert len([ln for ln in bridge.log.lines(mark) if "sent X-Real-IP and no header" in ln]) == 1

"""`unknown-length-body`: a chunked upload's body, which reaches the bridge with no
CONTENT_LENGTH, streamed (the default), read whole and passed on with its length (`buffer`),
or refused with 411 (`refuse`). A real Django behind a real Apache (mod_proxy_fcgi sends such
a body with no CONTENT_LENGTH at all), and directly over FastCGI for the limits.
See docs/request-bodies.md."""
import hashlib
import json

import pytest
import requests

import fcgi_client
import harness
import respond_servers

DJANGO = {"chdir": str(harness.APPS / "djproject"), "env": {"DJANGO_SETTINGS_MODULE": "mysite.settings"}}
UPLOAD = bytes(i * 7 % 251 for i in range(200_000))
CAP = 100_000


def django(how, app="mysite.wsgi:application", **kw):
    return harness.pool(app, processes=1, threads=2, **DJANGO, **{"unknown-length-body": how}, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("unknown-length")
    port, slow_port = harness.free_ports(2)
    pools = {
        "dj-stream": django("stream"),
        "dj-buffer": django("buffer"),
        "dj-refuse": django("refuse"),
        "dj-asgi": harness.pool("mysite.asgi:application", interface="asgi", processes=1, **DJANGO,
                                **{"unknown-length-body": "buffer"}),
        "capped": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2,
                               **{"unknown-length-body": "buffer", "max-body": CAP}),
    }
    listeners = {
        "fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "routes": [{"host": f"{p}.test", "pool": p} for p in pools]},
        # body-timeout bites while a body is read ahead
        "slow": {"fastcgi": f"127.0.0.1:{slow_port}", "pool": "capped", "body-timeout": "1s"},
    }
    probes = [("fcgi-tcp", "/health/", f"{p}.test") for p in pools if p.startswith("dj-")]
    bridge = respond_servers.start_bridge(work, pools, listeners, probes + [("fcgi-tcp", "/health", "capped.test")])
    try:
        with harness.apache_fcgi_front(tmp_path_factory.mktemp("apache"), bridge.listener_address("fcgi-tcp")) as url:
            yield bridge, url
    finally:
        bridge.stop()


def chunked_post(url, pool, body=UPLOAD, piece=3000):
    """A chunked upload (no Content-Length) through Apache to `pool`."""
    pieces = (body[i:i + piece] for i in range(0, len(body), piece))
    return requests.post(f"{url}/body/", data=pieces, headers={"Host": f"{pool}.test"}, timeout=60)


def served(bridge, pool):
    return sum(w["requests"] for w in bridge.pool_status(pool)["workers"])


def test_buffer_gives_django_every_byte_of_a_chunked_upload(env):
    """Apache sends a 200 KB chunked upload with no CONTENT_LENGTH; Django ignores
    wsgi.input_terminated and would read nothing. Read whole by the bridge, it arrives with
    its CONTENT_LENGTH, every byte, under WSGI and ASGI."""
    bridge, url = env
    for pool in ("dj-buffer", "dj-asgi"):
        r = chunked_post(url, pool)
        assert r.status_code == 200, (pool, r.text[:300])
        assert r.json() == {"read": len(UPLOAD), "sha256": hashlib.sha256(UPLOAD).hexdigest(),
                            "content_length": str(len(UPLOAD))}, pool
    # A request without a body is not touched: no CONTENT_LENGTH is made up for it.
    r = requests.get(f"{url}/body/", headers={"Host": "dj-buffer.test"}, timeout=60)
    assert r.json() == {"read": 0, "sha256": hashlib.sha256(b"").hexdigest(), "content_length": None}


def test_stream_is_what_django_cannot_read(env):
    """The default, for contrast: the body streams without CONTENT_LENGTH, and Django reads
    none of it (what the `buffer` setting is for)."""
    _, url = env
    r = chunked_post(url, "dj-stream")
    assert r.status_code == 200, r.text[:300]
    assert r.json()["read"] == 0


def test_refuse_answers_411_without_taking_a_worker(env):
    bridge, url = env
    before = served(bridge, "dj-refuse")
    mark = bridge.log.mark()
    r = chunked_post(url, "dj-refuse")
    assert r.status_code == 411, r.text[:300]
    bridge.log.wait_for([r"WARN", r"pool=\"?dj-refuse", r"uri=/body/",
                         r"request body of unknown length \(a chunked upload\), answering 411 Length Required: "
                         r"the pool's unknown-length-body is refuse"], since=mark)
    # A GET (no body, no CONTENT_LENGTH either) and a body of known length are served.
    assert requests.get(f"{url}/health/", headers={"Host": "dj-refuse.test"}, timeout=60).text == "ok"
    r = requests.post(f"{url}/body/", data=b"abc", headers={"Host": "dj-refuse.test"}, timeout=60)
    assert r.json()["read"] == 3
    assert served(bridge, "dj-refuse") == before + 2


def body_request(bridge, listener, pieces, end=True, query=""):
    """A POST over FastCGI with no CONTENT_LENGTH (Apache's form), the body in `pieces`."""
    params = [(k, v) for k, v in fcgi_client.cgi_params("/echo", "POST", query=query, headers={"Host": "capped.test"})
              if k != "CONTENT_LENGTH"]
    conn = bridge.fcgi(listener)
    conn.begin(1, params, stdin=None)
    for p in pieces:
        conn.send(fcgi_client.record(fcgi_client.STDIN, 1, p))
    if end:
        conn.send(fcgi_client.record(fcgi_client.STDIN, 1, b""))
    return conn


def test_buffer_bound_is_max_body_with_a_413_naming_the_key(env):
    """CONTENT_LENGTH absent: up to max-body the app gets the body with its length; beyond
    it 413 before a worker is taken, and the log says which key bounded it."""
    bridge, _ = env
    with body_request(bridge, "fcgi-tcp", [b"a" * 60_000, b"b" * 40_000]) as c:
        r = c.wait(1)
    assert r.status == 200, r.stdout[:300]
    assert json.loads(r.body) == {"read": CAP, "content_length": str(CAP)}
    before = served(bridge, "capped")
    mark = bridge.log.mark()
    with body_request(bridge, "fcgi-tcp", [b"a" * 60_000, b"b" * 40_001], query="over=1") as c:
        r = c.wait(1)
    assert r.status == 413, r.stdout[:300]
    bridge.log.wait_for([r"WARN", r"pool=\"?capped", r"uri=\"?/echo\?over=1",
                         r"request body of unknown length passed 100000 \(max-body\) while "
                         r"unknown-length-body: buffer read it, answering 413"], since=mark)
    assert served(bridge, "capped") == before


def test_body_timeout_applies_while_the_body_is_read_ahead(env):
    """A client that stops in the middle of a body of unknown length holds no worker and
    gets 408 after body-timeout."""
    bridge, _ = env
    before = served(bridge, "capped")
    mark = bridge.log.mark()
    with body_request(bridge, "slow", [b"x" * 5000], end=False, query="stall=1") as c:
        r = c.wait(1)
    assert r.status == 408, r.stdout[:300]
    bridge.log.wait_for([r"request body stalled: no byte from the web server within body-timeout",
                         r"before a worker was taken, answering 408", r"uri=\"?/echo\?stall=1",
                         r"received=5000", r"declared=\"?unknown"], since=mark)
    assert served(bridge, "capped") == before

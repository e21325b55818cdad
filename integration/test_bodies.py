"""Request bodies of unknown length, the per-pool `max-body`, and response-header hygiene,
through the bridge directly (FastCGI) and through a real nginx streaming chunked uploads
(`fastcgi_request_buffering off`). See docs/request-bodies.md."""
import json
import socket

import pytest
import requests

import fcgi_client
import harness
import respond_servers

SMALL = 1000


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("bodies")
    (port,) = harness.free_ports(1)
    pools = {
        "app": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=4),
        "small": harness.pool(respond_servers.RESPOND_APP, processes=1, threads=2, **{"max-body": SMALL}),
    }
    listeners = {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}",
                              "routes": [{"host": "small.test", "pool": "small"}, {"pool": "app"}]}}
    bridge = respond_servers.start_bridge(work, pools, listeners,
                                          [("fcgi-tcp", "/health", "any"), ("fcgi-tcp", "/health", "small.test")])
    nginx = None
    try:
        nginx = respond_servers.Nginx(work / "nginx", bridge.listener_address("fcgi-tcp"), work).start()
        yield bridge, nginx, work
    finally:
        if nginx:
            nginx.stop()
        bridge.stop()


def wait_mark(work, name, timeout=60):
    path = work / (name + ".mark")
    return harness.wait_until(lambda: path.exists() and path.read_text(), timeout, what=f"{path}")


def params_with_length(path, value, host="any", query=""):
    """nginx-shaped params for a POST whose CONTENT_LENGTH is `value` (None: absent)."""
    params = fcgi_client.cgi_params(path, "POST", query=query, headers={"Host": host})
    params = [(k, v) for k, v in params if k != "CONTENT_LENGTH"]
    if value is not None:
        params.append(("CONTENT_LENGTH", value))
    return params


def send_in_pieces(conn, params, pieces, request_id=1, end=True):
    """BEGIN and PARAMS, then each piece as its own STDIN record (and the end of STDIN)."""
    conn.begin(request_id, params, stdin=None)
    for p in pieces:
        conn.send(fcgi_client.record(fcgi_client.STDIN, request_id, p))
    if end:
        conn.send(fcgi_client.record(fcgi_client.STDIN, request_id, b""))


@pytest.mark.parametrize("declared", ["", "-1", None])
def test_body_of_unknown_length_streams_to_the_app(env, declared):
    """nginx (unbuffered) sends CONTENT_LENGTH="", Caddy 2.6 "-1", Apache none: the app
    reads to the end of the body and sees no CONTENT_LENGTH."""
    bridge, _, _ = env
    pieces = [b"a" * 5000, b"b" * 65000, b"c" * 5003]
    with bridge.fcgi() as c:
        send_in_pieces(c, params_with_length("/echo", declared), pieces)
        r = c.wait(1)
    assert r.status == 200, r.stdout[:300]
    got = json.loads(r.body)
    assert got == {"read": 75003, "content_length": None}


def test_declared_length_above_max_body_is_refused_before_the_app_runs(env):
    bridge, _, work = env
    mark = bridge.log.mark()
    with bridge.fcgi() as c:
        c.begin(1, params_with_length("/called", str(SMALL + 1), host="small.test", query="mark=refused"),
                stdin=b"x" * (SMALL + 1))
        r = c.wait(1)
        assert r.status == 413
        # the connection stays usable
        r2 = c.request("/health", headers={"Host": "small.test"}, request_id=2)
        assert r2.status == 200
    bridge.log.wait_for(r"larger than max-body, answering 413.*pool=\"?small", since=mark)
    assert not (work / "refused.mark").exists(), "the app must not run"
    # at the limit it is accepted
    with bridge.fcgi() as c:
        c.begin(1, params_with_length("/echo", str(SMALL), host="small.test", query="mark=atlimit"), stdin=b"y" * SMALL)
        r = c.wait(1)
    assert r.status == 200 and json.loads(r.body)["read"] == SMALL


def test_streamed_body_passing_max_body_is_cut_off_with_413(env):
    bridge, _, work = env
    mark = bridge.log.mark()
    with bridge.fcgi() as c:
        send_in_pieces(c, params_with_length("/echo", "", host="small.test", query="mark=cut"), [b"1" * 600], end=False)
        wait_mark(work, "cut.started")  # the app is reading; the rest passes the limit
        send_in_pieces_more = [b"2" * 600, b"3" * 600, b""]
        for p in send_in_pieces_more:
            c.send(fcgi_client.record(fcgi_client.STDIN, 1, p))
        r = c.wait(1)
    assert r.status == 413
    bridge.log.wait_for(r"passed max-body, cut off with 413.*pool=\"?small", since=mark)
    # The app's read raised an OSError-derived exception, it did not see a short body.
    kind, is_oserror, _ = wait_mark(work, "cut").split()
    assert kind != "complete" and is_oserror == "True"


def test_nginx_unbuffered_chunked_upload_streams(env):
    _, nginx, _ = env
    total = 0

    def gen():
        nonlocal total
        for i in range(40):
            piece = bytes([65 + i % 26]) * 4096
            total += len(piece)
            yield piece
    r = requests.post(nginx.url("/stream/echo"), data=gen(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"read": total, "content_length": None}


def test_nginx_chunked_upload_past_max_body_gets_413(env):
    _, nginx, _ = env
    r = requests.post(nginx.url("/stream/echo?mark=nginxcut"), data=iter([b"z" * 700] * 5),
                      headers={"Host": "small.test"}, timeout=60)
    assert r.status_code == 413


def test_client_leaving_mid_upload_makes_the_read_raise(env):
    """Through nginx with unbuffered bodies: half a chunked upload, then the client closes."""
    bridge, nginx, work = env
    s = socket.create_connection(("127.0.0.1", nginx.port), timeout=30)
    s.sendall(b"POST /stream/echo?mark=gone HTTP/1.1\r\nHost: any\r\nTransfer-Encoding: chunked\r\n\r\n"
              + b"1000\r\n" + b"q" * 4096 + b"\r\n")
    wait_mark(work, "gone.started")  # the app is reading
    s.close()
    kind, is_oserror, read = wait_mark(work, "gone").split()
    assert kind != "complete" and is_oserror == "True", (kind, is_oserror, read)


@pytest.mark.parametrize("kind", ["crlf", "lf", "nonlatin1"])
def test_unsafe_header_value_becomes_500(env, kind):
    bridge, nginx, _ = env
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-tcp"), "/header", query=f"kind={kind}")
    assert r.status == 500
    assert b"X-Injected" not in bytes(r.stdout)
    assert bridge.log.wait_for(r"request_id=.*uri=\"?/header\?kind=" + kind, since=mark)
    r = requests.get(nginx.url(f"/header?kind={kind}"), timeout=30)
    assert r.status_code == 500 and "X-Injected" not in r.headers


def test_latin1_header_value_passes(env):
    bridge, _, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-tcp"), "/header", query="kind=latin1")
    assert r.status == 200
    assert b"X-Value: caf\xe9\r\n" in bytes(r.stdout)


def test_hop_by_hop_headers_dropped_and_status_explicit(env):
    bridge, nginx, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-tcp"), "/header", query="kind=hop")
    raw = bytes(r.stdout)
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"status: 200 ok\r\n")
    for name in (b"connection:", b"keep-alive:", b"transfer-encoding:", b"upgrade:"):
        assert name not in head, head
    r = requests.get(nginx.url("/header?kind=hop"), timeout=30)
    assert r.status_code == 200 and r.text == "body" and "Upgrade" not in r.headers


def test_body_longer_than_its_content_length_is_cut_at_it(env):
    """One Content-Length, consistent with the body sent (PEP 3333: never more than declared)."""
    bridge, nginx, _ = env
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-tcp"), "/too-long")
    head = bytes(r.stdout).split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"content-length:") == 1 and r.body == b"01234"
    r = requests.get(nginx.url("/too-long"), timeout=30)
    assert r.status_code == 200 and r.content == b"01234"
    # and the request's log says so
    bridge.log.wait_for([r"the app wrote more body than its Content-Length \(5\); 5 bytes past it were dropped",
                         r"/too-long"])


@pytest.mark.parametrize("code", ["204", "304"])
def test_a_bodyless_status_goes_out_without_the_body_the_app_sent(env, code):
    """204 and 304 never have a body: one passed on would be read as the start of the next
    response on a kept HTTP connection. Dropped, with a line in the log."""
    bridge, nginx, _ = env
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-tcp"), "/status", query=f"code={code}")
    assert r.status == int(code) and r.body == b"", bytes(r.stdout)[:300]
    bridge.log.wait_for([rf"a {code} response has no body; the 24 bytes the program sent with it were dropped"],
                        since=mark)


@pytest.mark.parametrize("code", ["100", "101", "999"])
def test_an_interim_or_unknown_final_status_is_refused(env, code):
    bridge, _, _ = env
    mark = bridge.log.mark()
    r = fcgi_client.fcgi_request(bridge.listener_address("fcgi-tcp"), "/status", query=f"code={code}")
    assert r.status >= 500, bytes(r.stdout)[:300]
    bridge.log.wait_for([rf"Status {code} is not a final HTTP status \(200 to 599\)"], since=mark)


@pytest.fixture(scope="module")
def apache(env, tmp_path_factory):
    """Apache httpd with mod_proxy_fcgi in front of the same bridge listener."""
    with harness.apache_fcgi_front(tmp_path_factory.mktemp("apache"), env[0].listener_address("fcgi-tcp")) as url:
        yield url


def test_apache_mod_proxy_fcgi_streams_a_chunked_upload(apache):
    """mod_proxy_fcgi sends a chunked body with no CONTENT_LENGTH at all; the app reads it to the end."""
    pieces = [bytes([97 + i % 26]) * 3000 for i in range(30)]
    r = requests.post(f"{apache}/echo", data=iter(pieces), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"read": sum(map(len, pieces)), "content_length": None}


@pytest.mark.parametrize("sent", [10, 120_000])
def test_a_body_that_ends_before_its_content_length_is_never_passed_off_as_whole(env, sent):
    """FastCGI: STDIN ends early. Small (read before a worker is taken) and streamed: the
    app never gets a short body as if complete; the web server gets 400 and the log says why."""
    bridge, _, _ = env
    declared = sent * 2
    mark = bridge.log.mark()
    with bridge.fcgi() as c:
        send_in_pieces(c, params_with_length("/echo", str(declared), query=f"short={sent}"), [b"x" * 60_000] * (sent // 60_000) + [b"x" * (sent % 60_000)])
        r = c.wait(1)
    assert r.status == 400, r.stdout[:300]
    assert b'"read"' not in r.body
    bridge.log.wait_for([r"request body ended before its CONTENT_LENGTH", f"short={sent}|/echo"], since=mark)
    if sent > 60_000:  # streamed: the worker's request was begun, then aborted
        # The client did not go away: no line says it did.
        assert not [ln for ln in bridge.log.lines(mark) if "client went away" in ln and f"short={sent}" in ln]
    # A body that is absent altogether (nginx: an error_page redirect, an auth_request
    # subrequest) is no short body: the request reaches the app, which answers when it
    # does not read the body.
    with bridge.fcgi() as c:
        send_in_pieces(c, params_with_length("/health", str(declared)), [])
        r = c.wait(1)
        assert r.status == 200 and r.body == b"ok", r.stdout[:300]
    # A whole body is served as before.
    with bridge.fcgi() as c:
        send_in_pieces(c, params_with_length("/echo", "3"), [b"abc"])
        assert json.loads(c.wait(1).body) == {"read": 3, "content_length": "3"}

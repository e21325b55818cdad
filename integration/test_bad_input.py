"""Bad input: every case is answered or closed, with a clear line in the bridge's log,
while another connection keeps working."""
import hashlib
import json
import re
import socket
import time
import uuid

import pytest
import requests

import fcgi_client as fc
from harness import APPS, POOL_HOSTS, make_bridge, pool, read_until_closed, wait_until

# a warning or error line from the bridge itself
LEVEL = r"(WARN|ERROR)"


def raw_conn(bridge, listener):
    addr = bridge.listener_address(listener)
    family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(addr)
    return s


def closed_within(s, timeout=15.0) -> bytes:
    """Everything the bridge sends until it closes the connection (fails if it does not)."""
    return read_until_closed(s, timeout, after=" after bad input")


class Bystander:
    """A kept-alive FastCGI connection opened before the bad input; it must keep working."""

    def __init__(self, bridge):
        self.conn = bridge.fcgi()
        self.check()

    def check(self):
        self.conn.responses.clear()
        resp = self.conn.request("/environ", query="bystander=1", headers={"Host": "edge.test"})
        assert resp.status == 200 and json.loads(resp.body)["QUERY_STRING"] == "bystander=1"

    def close(self):
        self.conn.close()


@pytest.fixture
def bystander(bridge):
    b = Bystander(bridge)
    yield b
    b.check()
    b.close()


def assert_new_connection_works(bridge, listener="fcgi-tcp"):
    if "scgi" in listener:
        status, _, body = fc.scgi_request(bridge.listener_address(listener), "/health", headers={"Host": "edge.test"})
    else:
        resp = fc.fcgi_request(bridge.listener_address(listener), "/health", headers={"Host": "edge.test"})
        status, body = resp.status, resp.body
    assert (status, body) == (200, b"ok")


# ------------------------------------------------------------------ FastCGI records

def test_bad_version_byte(bridge, bystander, log):
    s = raw_conn(bridge, "fcgi-tcp")
    s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(), version=2)
              + fc.stream(fc.PARAMS, 1, fc.encode_pairs(fc.cgi_params("/health"))))
    data = closed_within(s)
    assert b"Status: 200" not in data
    log.wait_for([LEVEL, r"version"])
    bystander.check()
    assert_new_connection_works(bridge)


def test_truncated_header_then_close(bridge, bystander, log):
    s = raw_conn(bridge, "fcgi-tcp")
    s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body())[:5])
    s.shutdown(socket.SHUT_WR)
    closed_within(s)
    s.close()
    log.wait_for([r"(WARN|ERROR|INFO)", r"(truncat|incomplete|unexpected (eof|end)|mid-record|partial|closed)"])
    bystander.check()
    assert_new_connection_works(bridge)


def test_truncated_params_then_close(bridge, bystander, log):
    s = raw_conn(bridge, "fcgi-tcp")
    full = fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN)) \
        + fc.stream(fc.PARAMS, 1, fc.encode_pairs(fc.cgi_params("/health")))
    s.sendall(full[:len(full) - 20])
    s.shutdown(socket.SHUT_WR)
    data = closed_within(s)
    assert b"Status: 200" not in data
    s.close()
    bystander.check()
    assert_new_connection_works(bridge)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    bytes(range(256)) * 4,
])
def test_garbage(bridge, bystander, log, garbage):
    s = raw_conn(bridge, "fcgi-tcp")
    s.sendall(garbage)
    try:
        data = closed_within(s)
    finally:
        s.close()
    assert b"Status: 200" not in data
    log.wait_for([LEVEL])
    bystander.check()
    assert_new_connection_works(bridge)


def test_unknown_record_type_for_a_request(bridge, bystander):
    """Version 1, record type 255 for request 1 that was never begun, then a valid request on
    the same connection: either the record is ignored and the request served, or the
    connection is closed with a log line. Never a crash or a hang."""
    mark = bridge.log.mark()
    with bridge.fcgi(timeout=30) as conn:
        conn.send(b"\x01\xff\x00\x01\x00\x08\x00\x00" + b"\x00" * 8)
        try:
            resp = conn.request("/health", headers={"Host": "edge.test"}, request_id=2)
            assert resp.body == b"ok"
        except fc.ProtocolError:
            bridge.log.wait_for([LEVEL], since=mark)
    bystander.check()
    assert_new_connection_works(bridge)


def test_record_with_huge_padding_and_bogus_request_id(bridge, bystander):
    """STDIN for a request that was never begun, then a good request: the bad record is
    ignored (spec 3.3) or the connection closed; either way no crash and others work."""
    s = raw_conn(bridge, "fcgi-tcp")
    s.sendall(fc.record(fc.STDIN, 9, b"stray", padding=255))
    s.close()
    bystander.check()
    assert_new_connection_works(bridge)


@pytest.mark.parametrize("payload,what", [
    (fc.record(fc.PARAMS, 5, fc.encode_pairs([("A", "b")])), r"request 5: FCGI_PARAMS record for a request that never began"),
    (fc.record(fc.STDIN, 5, b"stray body"), r"request 5: FCGI_STDIN record for a request that never began"),
    (fc.record(fc.STDIN, 300, b""), r"request 300: FCGI_STDIN record for a request that never began"),
    (fc.record(0, 1, b""), r"request 1: record type 0 is not a FastCGI record type"),
    (fc.record(200, 1, b"x"), r"request 1: record type 200 is not a FastCGI record type"),
    (fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body()) + fc.record(fc.PARAMS, 1, fc.encode_pairs([("A", "b")]))
     + fc.record(fc.STDIN, 1, b"early body"),
     r"request 1: FCGI_STDIN record before the end of its FCGI_PARAMS"),
], ids=["params", "stdin", "stdin-id300", "type0", "type200", "stdin-before-params-end"])
def test_records_without_begin_request_and_bad_types_are_logged(bridge, bystander, log, payload, what):
    """A record for an id that had no BEGIN_REQUEST, or of a type FastCGI does not have, was
    skipped without a word: now the connection closes with a line naming the listener, the
    peer, the request id and the record."""
    s = raw_conn(bridge, "fcgi-tcp")
    s.sendall(payload)
    try:
        data = closed_within(s)
    finally:
        s.close()
    assert data == b""
    log.wait_for([r"WARN", r"FastCGI protocol error, closing the connection", what,
                  r"listener=fcgi-tcp\b", r"peer=127\.0\.0\.1:\d+", r"request=\d+"])
    bystander.check()
    assert_new_connection_works(bridge)


def test_late_records_of_an_ended_request_are_still_skipped(bridge, log):
    """What the spec calls an inactive id stays harmless: STDIN after an early answer and an
    ABORT_REQUEST for an id that is done, on the same connection, then another request."""
    with bridge.fcgi() as conn:
        port = conn.sock.getsockname()[1]
        resp = conn.request("/health", headers={"Host": "edge.test"})
        assert resp.body == b"ok"
        conn.send(fc.record(fc.STDIN, 1, b"late") + fc.record(fc.ABORT_REQUEST, 1) + fc.record(fc.ABORT_REQUEST, 7))
        conn.responses.clear()
        assert conn.request("/health", headers={"Host": "edge.test"}, request_id=2).body == b"ok"
    assert not [ln for ln in log.lines() if f"peer=127.0.0.1:{port}" in ln], log.text()


def test_management_record_of_type_0_is_answered_and_logged(bridge, log):
    with bridge.fcgi() as conn:
        conn.send(fc.record(0, 0, b""))
        rtype, content = conn.wait_management()
        assert (rtype, content[0]) == (fc.UNKNOWN_TYPE, 0)
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"
    log.wait_for([r"WARN", r"unknown FastCGI management record type 0, answered FCGI_UNKNOWN_TYPE",
                  r"listener=fcgi-tcp\b", r"peer="])


# ------------------------------------------------------------------ CONTENT_LENGTH

# Not a body length: letters, a sign, a blank, a hex prefix, 2^70. ("" and "-1" mean an
# unknown length: test_bodies.py.)
BAD_LENGTHS = ["abc", "+5", " 5", "0x10", str(2 ** 70)]


def _length_message(value):
    if value.isdigit():
        return rf"CONTENT_LENGTH {value} exceeds 18446744073709551615, the largest body length"
    return rf"CONTENT_LENGTH \"{re.escape(value)}\" is not a decimal number"


@pytest.mark.parametrize("value", BAD_LENGTHS)
def test_fastcgi_bad_content_length_is_400_before_the_app(bridge, bystander, log, value):
    """The app (which writes its marker file first thing) never runs, and the kept
    connection carries on (the refused request's STDIN is skipped)."""
    marker = bridge.workdir / f"cl-bad-{uuid.uuid4().hex}"
    with bridge.fcgi() as conn:
        conn.begin(1, fc.cgi_params("/upload-watch", "POST", f"marker={marker}", headers={"Host": "edge.test"},
                                    content_length=value), b"hello")
        resp = conn.wait(1)
        assert resp.status == 400, resp.stdout[:200]
        assert resp.protocol_status == fc.REQUEST_COMPLETE
        conn.responses.clear()
        assert conn.request("/health", headers={"Host": "edge.test"}).body == b"ok"
    assert not marker.exists(), "the app ran for a request with an invalid CONTENT_LENGTH"
    log.wait_for([r"WARN", r"invalid request, answering 400", _length_message(value),
                  r"listener=fcgi-tcp\b", r"peer=127\.0\.0\.1:\d+", r"request=1\b"])


def _scgi_with_length(value: str, path: str, query: str) -> bytes:
    rest = [(k, v) for k, v in fc.cgi_params(path, "POST", query, headers={"Host": "edge.test"})
            if k != "CONTENT_LENGTH"]
    return b"".join(k.encode("latin-1") + b"\0" + v.encode("latin-1") + b"\0"
                    for k, v in [("CONTENT_LENGTH", value), ("SCGI", "1")] + rest)


@pytest.mark.parametrize("value", BAD_LENGTHS)
def test_scgi_bad_content_length_is_400_before_the_app(bridge, bystander, log, value):
    marker = bridge.workdir / f"scgi-cl-bad-{uuid.uuid4().hex}"
    data = scgi_raw(bridge, fc.netstring(_scgi_with_length(value, "/upload-watch", f"marker={marker}")) + b"hello",
                    shutdown=True)
    status, _, _ = fc.Response(0, stdout=bytearray(data)).split()
    assert status == 400, data[:200]
    assert not marker.exists(), "the app ran for a request with an invalid CONTENT_LENGTH"
    log.wait_for([r"WARN", r"invalid SCGI request, answering 400", _length_message(value),
                  r"listener=scgi-tcp\b", r"peer=\"?127\.0\.0\.1:\d+"])
    bystander.check()
    assert_new_connection_works(bridge, "scgi-tcp")


def refused_once_on(bridge, listener, refuse):
    """`refuse()` sends one request the listener answers itself with a 4xx: the listener's
    accepted requests and its 4xx responses each go up by one (docs/status.md: every
    request of the listener, also those answered without a pool)."""
    before = bridge.listener_status(listener)
    refuse()
    after = wait_until(lambda: (now := bridge.listener_status(listener))["responses"]["4xx"]
                       > before["responses"]["4xx"] and now, 30, what=f"the refusal counted on {listener}")
    assert after["responses"]["4xx"] - before["responses"]["4xx"] == 1
    assert after["accepted_requests"] - before["accepted_requests"] == 1


def test_requests_the_front_answers_itself_count_on_the_listener(bridge):
    def fastcgi_bad_length():
        with bridge.fcgi() as conn:
            conn.begin(1, fc.cgi_params("/health", "POST", headers={"Host": "edge.test"}, content_length="x"), b"x")
            assert conn.wait(1).status == 400

    def scgi_bad_length():
        data = scgi_raw(bridge, fc.netstring(_scgi_with_length("x", "/health", "")) + b"x", shutdown=True)
        assert fc.Response(0, stdout=bytearray(data)).split()[0] == 400

    def fastcgi_too_large():
        with bridge.fcgi("fcgi-small") as conn:
            conn.begin(1, fc.cgi_params("/health", headers={"Host": "edge.test", "X-Big": "b" * 8192}))
            assert conn.wait(1).status == 431

    refused_once_on(bridge, "fcgi-tcp", fastcgi_bad_length)
    refused_once_on(bridge, "scgi-tcp", scgi_bad_length)
    refused_once_on(bridge, "fcgi-small", fastcgi_too_large)


# ------------------------------------------------------------------ limits

HEADERS_TOO_LARGE = (r"request headers \(PARAMS\) of at least \d+ bytes exceed the listener's max-params \(4KiB\), "
                     r"answering 431 Request Header Fields Too Large")


def test_params_over_the_limit(bridge, bystander, log):
    """fcgi-small accepts 4 KiB of params; 8 KiB in one header is answered 431 (not a
    "protocol error", which would tell the operator the peer does not speak FastCGI), and
    a connection not kept closes after the answer."""
    s = raw_conn(bridge, "fcgi-small")
    port = s.getsockname()[1]
    pairs = fc.cgi_params("/environ", headers={"Host": "edge.test", "X-Big": "b" * 8192})
    s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, 0))
              + fc.stream(fc.PARAMS, 1, fc.encode_pairs(pairs)) + fc.record(fc.STDIN, 1, b""))
    data = closed_within(s)
    s.close()
    assert b"bbbbbbbb" not in data and b'"HTTP_X_BIG"' not in data, "the app was called despite the limit"
    assert re_status(data) == 431, data[:300]
    assert [rtype for rtype, _, _ in fc.parse_records(data)][-1] == fc.END_REQUEST
    log.wait_for([r"WARN", HEADERS_TOO_LARGE, r"listener=fcgi-small\b", rf"peer=127\.0\.0\.1:{port}\b", r"request=1\b"])
    assert not [ln for ln in log.lines() if f":{port}" in ln and "protocol error" in ln]
    bystander.check()
    assert_new_connection_works(bridge, "fcgi-small")


def test_params_over_the_limit_on_a_kept_connection_leave_it_usable(bridge, log):
    """The request past max-params is answered 431; its remaining records are skipped and
    the web server's kept connection serves the next request."""
    with bridge.fcgi("fcgi-small") as conn:
        big = fc.cgi_params("/environ", headers={"Host": "edge.test", "X-Big": "b" * 70_000})
        conn.begin(1, big, stdin=b"some body")
        assert conn.wait(1).status == 431
        resp = conn.request("/health", headers={"Host": "edge.test"}, request_id=1)
        assert (resp.status, resp.body) == (200, b"ok")
    log.wait_for([HEADERS_TOO_LARGE, r"listener=fcgi-small\b", r"request=1\b"])


def test_params_just_under_the_limit_pass(bridge):
    resp = fc.fcgi_request(bridge.listener_address("fcgi-small"), "/environ",
                           headers={"X-Small": "s" * 1500})
    assert resp.status == 200
    assert json.loads(resp.body)["HTTP_X_SMALL"] == "s" * 1500


def test_params_over_the_limit_many_small_records(bridge, bystander, log):
    """The limit is on the whole stream, not one record."""
    s = raw_conn(bridge, "fcgi-small")
    pairs = fc.cgi_params("/environ") + [(f"HTTP_X_{i}", "v" * 100) for i in range(100)]
    raw = fc.encode_pairs(pairs)
    data = fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body())
    for k in range(0, len(raw), 500):
        data += fc.record(fc.PARAMS, 1, raw[k:k + 500])
    data += fc.record(fc.PARAMS, 1, b"") + fc.record(fc.STDIN, 1, b"")
    s.sendall(data)
    got = closed_within(s)
    s.close()
    assert b"HTTP_X_99" not in got
    assert re_status(got) == 431, got[:300]
    log.wait_for([r"WARN", HEADERS_TOO_LARGE])
    bystander.check()


def re_status(data: bytes) -> int:
    """The CGI status inside the STDOUT records of a raw response."""
    out = b"".join(content for rtype, _, content in fc.parse_records(data) if rtype == fc.STDOUT)
    return fc.Response(1, stdout=bytearray(out)).status


# ------------------------------------------------------------------ SCGI

def scgi_raw(bridge, payload, listener="scgi-tcp", shutdown=False):
    s = raw_conn(bridge, listener)
    s.sendall(payload)
    if shutdown:
        s.shutdown(socket.SHUT_WR)
    try:
        return closed_within(s)
    finally:
        s.close()


def good_headers():
    return fc.scgi_headers("/environ", headers={"Host": "edge.test"})


def test_scgi_netstring_longer_than_sent(bridge, bystander, log):
    h = good_headers()
    data = scgi_raw(bridge, str(len(h) + 500).encode() + b":" + h + b",", shutdown=True)
    assert b"Status: 200" not in data
    log.wait_for([r"(WARN|ERROR|INFO)", r"(scgi|netstring|header|truncat|eof|closed)"])
    bystander.check()
    assert_new_connection_works(bridge, "scgi-tcp")


def test_scgi_netstring_shorter_than_sent(bridge, bystander, log):
    h = good_headers()
    data = scgi_raw(bridge, str(len(h) - 7).encode() + b":" + h + b",")
    assert b"Status: 200" not in data
    log.wait_for([LEVEL, r"(scgi|netstring|comma|','|malformed|invalid)"])
    bystander.check()
    assert_new_connection_works(bridge, "scgi-tcp")


def test_scgi_netstring_length_over_the_limit(bridge, bystander, log):
    """scgi-small allows 4 KiB of headers: a netstring announcing 10 GB is refused at once,
    without waiting for (or buffering) its content."""
    start = time.monotonic()
    data = scgi_raw(bridge, b"9999999999:CONTENT_LENGTH\x000\x00", listener="scgi-small")
    assert time.monotonic() - start < 10
    assert data.startswith(b"Status: 431 Request Header Fields Too Large\r\n"), data[:300]
    log.wait_for([r"WARN", r"request headers \(SCGI netstring\) of at least \d+ bytes exceed the listener's "
                  r"max-params \(4KiB\), answering 431", r"listener=scgi-small\b"])
    bystander.check()
    assert_new_connection_works(bridge, "scgi-small")


@pytest.mark.parametrize("payload", [b"abc:def,", b":", b"12x:0123456789ab,", b"-5:hello,"])
def test_scgi_bad_length_prefix(bridge, bystander, log, payload):
    data = scgi_raw(bridge, payload)
    assert b"Status: 200" not in data
    log.wait_for([LEVEL])
    bystander.check()
    assert_new_connection_works(bridge, "scgi-tcp")


def test_scgi_headers_without_content_length(bridge, bystander, log):
    """The SCGI spec requires CONTENT_LENGTH first."""
    raw = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in fc.cgi_params("/environ")
                   if k != "CONTENT_LENGTH")
    data = scgi_raw(bridge, fc.netstring(raw))
    if b"Status: 200" in data:
        pytest.fail("an SCGI request without CONTENT_LENGTH was served as valid")
    log.wait_for([LEVEL, r"CONTENT_LENGTH"])
    bystander.check()


# ------------------------------------------------------------------ client going away

def test_client_disconnects_mid_upload_direct(bridge, bystander, log):
    marker = bridge.workdir / f"watch-{uuid.uuid4().hex}"
    s = raw_conn(bridge, "fcgi-tcp")
    pairs = fc.cgi_params("/upload-watch", "POST", f"marker={marker}", headers={"Host": "edge.test"},
                          content_length=10 << 20)
    s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN))
              + fc.stream(fc.PARAMS, 1, fc.encode_pairs(pairs))
              + fc.stream(fc.STDIN, 1, b"u" * (1 << 20), terminate=False))
    wait_until(lambda: marker.exists(), 30, what="the app started reading")
    s.close()
    # the app sees the disconnect as an OSError (ClientDisconnected) on wsgi.input
    text = wait_until(lambda: "outcome" in marker.read_text() and marker.read_text(), 30,
                      what="the app noticed the disconnect")
    assert "outcome eof" not in text, "a cut-off upload must not look like a complete body"
    assert "outcome ClientDisconnected" in text, text  # the worker contract: an OSError subclass
    log.wait_for([r"upload-watch", r"(abort|disconnect|closed|reset|gone|cancel)"])
    bystander.check()
    assert_new_connection_works(bridge)


def test_client_disconnects_mid_upload_through_nginx(bridge, nginx, log):
    marker = bridge.workdir / f"watch-nginx-{uuid.uuid4().hex}"
    with socket.create_connection(("127.0.0.1", nginx.ports["fcgi-stream"]), timeout=30) as s:
        s.sendall((f"POST /upload-watch?marker={marker} HTTP/1.1\r\nHost: {POOL_HOSTS['edge']}\r\n"
                   "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n").encode())
        chunk = b"n" * 65536
        for _ in range(16):
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        wait_until(lambda: marker.exists(), 30, what="the app started reading")
    text = wait_until(lambda: "outcome" in marker.read_text() and marker.read_text(), 30,
                      what="the app noticed the disconnect")
    assert "outcome eof" not in text, text
    assert "outcome ClientDisconnected" in text, text
    log.wait_for([r"upload-watch", r"(abort|disconnect|closed|reset|gone|cancel)"])
    r = requests.post(nginx.url("fcgi-stream", "/upload"), data=b"after" * 1000,
                      headers={"Host": POOL_HOSTS["edge"]}, timeout=60)
    assert r.status_code == 200 and r.json()["size"] == 5000


def test_client_disconnects_while_response_streams(bridge, bystander, log):
    """The client goes away while the app is still producing: the app's iterable is closed."""
    marker = bridge.workdir / f"tick-gone-{uuid.uuid4().hex}"
    s = raw_conn(bridge, "fcgi-tcp")
    s.sendall(fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, fc.KEEP_CONN))
              + fc.stream(fc.PARAMS, 1, fc.encode_pairs(fc.cgi_params("/tick", query=f"marker={marker}&n=600",
                                                                      headers={"Host": "edge.test"})))
              + fc.record(fc.STDIN, 1, b""))
    s.recv(100)
    s.close()
    wait_until(lambda: marker.exists() and "closed" in marker.read_text(), 20, what="close() after the client left")
    bystander.check()


# ------------------------------------------------------------------ stdin vs CONTENT_LENGTH

def _watch(bridge, content_length, body):
    marker = bridge.workdir / f"cl-{uuid.uuid4().hex}"
    params = fc.cgi_params("/upload-watch", "POST", f"marker={marker}", headers={"Host": "edge.test"},
                           content_length=content_length)
    with bridge.fcgi() as conn:
        conn.begin(1, params, body)
        resp = conn.wait(1)
    return resp, wait_until(lambda: marker.exists() and "outcome" in marker.read_text() and marker.read_text(),
                            30, what="the app's outcome")


def test_stdin_longer_than_content_length_is_cut_at_content_length(bridge):
    """PEP 3333: the app never reads past CONTENT_LENGTH; with wsgi.input_terminated the
    server ends the input there."""
    resp, text = _watch(bridge, 10, b"x" * 20)
    assert resp.status == 200
    assert "outcome eof after 10 bytes" in text, text


def test_stdin_shorter_than_content_length_is_not_a_complete_body(bridge, log):
    """FastCGI 1.0, 6.2: a Responder should compare the bytes received on STDIN with
    CONTENT_LENGTH and abort an update when they differ. An input that ends early must
    not look like a complete body to the app (it is what a truncated upload looks like):
    the web server gets 400, and the app either never ran or saw its read raise."""
    marker = bridge.workdir / f"cl-{uuid.uuid4().hex}"
    params = fc.cgi_params("/upload-watch", "POST", f"marker={marker}", headers={"Host": "edge.test"},
                           content_length=100)
    with bridge.fcgi() as conn:
        conn.begin(1, params, b"y" * 50)
        resp = conn.wait(1)
    assert resp.status == 400, resp.stdout[:300]
    log.wait_for(["request body ended before its CONTENT_LENGTH", "/upload-watch"])
    assert not marker.exists() or "outcome eof" not in marker.read_text(), marker.read_text()


def test_scgi_client_leaving_mid_body_is_a_disconnect(bridge, log):
    marker = bridge.workdir / f"scgi-cl-{uuid.uuid4().hex}"
    s = raw_conn(bridge, "scgi-tcp")
    s.sendall(fc.netstring(fc.scgi_headers("/upload-watch", "POST", f"marker={marker}", body=b"z" * 100000,
                                           headers={"Host": "edge.test"})) + b"z" * 50000)
    wait_until(lambda: marker.exists(), 30, what="the app started reading")
    s.shutdown(socket.SHUT_WR)
    text = wait_until(lambda: "outcome" in marker.read_text() and marker.read_text(), 30,
                      what="the app's outcome")
    s.close()
    assert "outcome eof" not in text, text
    assert_new_connection_works(bridge, "scgi-tcp")


def test_client_leaving_a_streamed_response_through_nginx(bridge, nginx, log):
    """Through nginx (kept-alive upstream, unbuffered): the HTTP client goes away while the
    app streams; nginx drops the upstream request and the app's iterable is closed."""
    marker = bridge.workdir / f"tick-nginx-{uuid.uuid4().hex}"
    with socket.create_connection(("127.0.0.1", nginx.ports["fcgi-stream"]), timeout=30) as s:
        s.sendall(f"GET /tick?marker={marker}&n=600 HTTP/1.1\r\nHost: {POOL_HOSTS['edge']}\r\n\r\n".encode())
        got = b""
        while b"tick 1" not in got:
            chunk = s.recv(4096)
            assert chunk, "nginx closed before the ticks"
            got += chunk
    wait_until(lambda: marker.exists() and "closed" in marker.read_text(), 30,
               what="close() after the HTTP client left")
    r = requests.get(nginx.url("fcgi-stream", "/health"), headers={"Host": POOL_HOSTS["edge"]}, timeout=60)
    assert r.text == "ok"


# ------------------------------------------------------------------ half-close

def _half_close(bridge, listener, payload):
    """Send `payload`, shut down the sending side, and read until the bridge closes."""
    s = raw_conn(bridge, listener)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    try:
        return closed_within(s, timeout=30)
    finally:
        s.close()


def _upload_answer(body, data):
    """The /upload answer in a raw CGI response: the whole body reached the app."""
    status, _, resp_body = fc.Response(0, stdout=bytearray(data)).split()
    assert status == 200, data[:300]
    got = json.loads(resp_body)
    assert (got["size"], got["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


# The app reads the body and then takes half a second: before the fix, the bridge took the
# client's EOF for its leaving during that time and never answered.
@pytest.mark.parametrize("listener", ["scgi-tcp", "scgi-unix"])
@pytest.mark.parametrize("body", [b"", b"b" * 5000, bytes(range(256)) * 800], ids=["no-body", "5000", "204800"])
def test_scgi_half_close_after_a_complete_request_is_answered(bridge, log, listener, body):
    h = fc.scgi_headers("/upload", "POST", "delay=0.5", body=body, headers={"Host": "edge.test"})
    data = _half_close(bridge, listener, fc.netstring(h) + body)
    _upload_answer(body, data)


@pytest.mark.parametrize("listener", ["fcgi-tcp", "fcgi-unix"])
@pytest.mark.parametrize("body", [b"", b"b" * 5000, bytes(range(256)) * 800], ids=["no-body", "5000", "204800"])
def test_fastcgi_half_close_after_a_complete_request_is_answered(bridge, log, listener, body):
    """Without KEEP_CONN the connection is the application's to close: a client that sent
    its whole request and shut down its side waits for the answer."""
    pairs = fc.cgi_params("/upload", "POST", "delay=0.5", headers={"Host": "edge.test"}, content_length=len(body))
    data = _half_close(bridge, listener, fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, 0))
                       + fc.stream(fc.PARAMS, 1, fc.encode_pairs(pairs)) + fc.stream(fc.STDIN, 1, body))
    records = fc.parse_records(data)
    assert records and records[-1][0] == fc.END_REQUEST, records[-3:]
    _upload_answer(body, b"".join(c for t, _, c in records if t == fc.STDOUT))


def test_scgi_half_close_before_the_body_is_complete_is_an_abort(bridge, log):
    marker = bridge.workdir / f"scgi-hc-{uuid.uuid4().hex}"
    h = fc.scgi_headers("/upload-watch", "POST", f"marker={marker}", body=b"z" * 1000, headers={"Host": "edge.test"})
    data = _half_close(bridge, "scgi-tcp", fc.netstring(h) + b"z" * 400)
    assert b"Status: 200" not in data
    log.wait_for([r"INFO", r"connection closed with 600 bytes of the SCGI request body still to come",
                  r"listener=scgi-tcp\b", r"peer="])
    if marker.exists():
        text = wait_until(lambda: "outcome" in marker.read_text() and marker.read_text(), 30, what="the app's outcome")
        assert "outcome eof" not in text, text


def test_fastcgi_half_close_before_stdin_ends_is_an_abort(bridge, log):
    pairs = fc.cgi_params("/upload", "POST", headers={"Host": "edge.test"}, content_length=1000)
    data = _half_close(bridge, "fcgi-tcp", fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, 0))
                       + fc.stream(fc.PARAMS, 1, fc.encode_pairs(pairs)) + fc.record(fc.STDIN, 1, b"z" * 400))
    assert b"Status: 200" not in data
    log.wait_for([r"INFO", r"connection closed before its body \(STDIN\) was complete; the request is abandoned",
                  r"listener=fcgi-tcp\b", r"peer=", r"request=1\b"])


@pytest.fixture(scope="module")
def sleepers(tmp_path_factory):
    """A bridge of its own: a worker whose app sleeps through an abort is replaced after 5 s,
    which must not hit the requests of other tests on the main bridge."""
    workdir = tmp_path_factory.mktemp("sleepers")
    b = make_bridge(workdir, {"edge": pool(str(APPS / "edge_app.py"), processes=1, threads=2)},
                    {"scgi-unix": {"scgi": f"unix:{workdir / 'scgi.sock'}", "pool": "edge"},
                     "fcgi-unix": {"fastcgi": f"unix:{workdir / 'fcgi.sock'}", "pool": "edge"}})
    try:
        b.start().wait_ready([("scgi-unix", "/health", "x"), ("fcgi-unix", "/health", "x")])
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("listener,payload", [
    ("scgi-unix", lambda q: fc.netstring(fc.scgi_headers("/sleep", query=q))),
    ("fcgi-unix", lambda q: fc.record(fc.BEGIN_REQUEST, 1, fc.begin_body(fc.RESPONDER, 0))
     + fc.stream(fc.PARAMS, 1, fc.encode_pairs(fc.cgi_params("/sleep", query=q))) + fc.stream(fc.STDIN, 1, b"")),
], ids=["scgi", "fastcgi"])
def test_a_client_that_closes_a_unix_socket_is_still_gone_at_once(sleepers, listener, payload):
    """A half-close is answered, but a web server that closes the socket outright (nginx,
    when its client leaves) still aborts the request at once, not when the app is done."""
    tag = uuid.uuid4().hex
    mark = sleepers.log.mark()
    s = raw_conn(sleepers, listener)
    s.sendall(payload(f"s=30&tag={tag}"))
    wait_until((sleepers.workdir / f"{tag}.pid").exists, 30, what="the app started")
    s.close()
    sleepers.log.wait_for([r"client went away, aborting the request in the worker", re.escape(f"tag={tag}")],
                          mark, timeout=20)

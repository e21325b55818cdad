"""Application failures: exceptions before and after the headers, wsgi.errors, and
the bridge's log naming pool, request and URI."""
import re
import socket
import uuid

import pytest


import fcgi_client
import harness
from harness import POOL_HOSTS, http_get


def test_exception_before_headers_is_500_with_traceback_logged(nginx, transport, log):
    tag = uuid.uuid4().hex
    r = http_get(nginx, transport, f"/raise-before?tag={tag}", pool="edge")
    assert r.status_code == 500
    assert tag not in r.text, "the traceback must not leak to the client"
    log.wait_for([f"RuntimeError: failure before headers {tag}"])
    text = log.text()
    assert "Traceback" in text
    # the traceback is logged at ERROR (where operators alert), each line naming the pool
    # and the URI
    tb = [ln for ln in log.lines() if "Traceback (most recent call last)" in ln or tag in ln]
    assert tb and all("ERROR" in ln and "edge" in ln and "/raise-before" in ln for ln in tb), text[-3000:]
    # and the next request is served normally
    assert http_get(nginx, transport, "/health", pool="edge").text == "ok"


def test_what_the_worker_finds_wrong_in_a_response_is_logged_as_an_error(nginx, log):
    """A str body has no traceback (the worker's own check raises): still the app's failure,
    at ERROR with the request, and a 500."""
    tag = uuid.uuid4().hex
    r = http_get(nginx, "fcgi-tcp", f"/yield-str?tag={tag}", pool="edge")
    assert r.status_code == 500
    (line,) = log.wait_for([r"fcgibridge worker: the application failed: TypeError", re.escape(tag)])
    assert "ERROR" in line and "edge" in line, line


def test_flask_exception_is_500_and_logged(nginx, transport, log):
    tag = uuid.uuid4().hex
    r = http_get(nginx, transport, f"/boom?tag={tag}", pool="flask")
    assert r.status_code == 500
    log.wait_for([f"ValueError: flask boom {tag}"])


def test_exception_after_headers_cuts_the_response_off(nginx, transport, log):
    tag = uuid.uuid4().hex
    harness.assert_failed_not_short(
        harness.raw_http_get(nginx.ports[transport], f"/raise-after?tag={tag}", POOL_HOSTS["edge"]))
    log.wait_for([f"RuntimeError: failure after headers {tag}"])
    assert http_get(nginx, transport, "/health", pool="edge").text == "ok"


def test_exception_after_headers_direct_fastcgi_is_not_a_clean_end(bridge):
    tag = uuid.uuid4().hex
    with bridge.fcgi() as conn:
        params = fcgi_client.cgi_params("/raise-after", query=f"tag={tag}", headers={"Host": "edge.test"})
        conn.begin(1, params, b"")
        try:
            resp = conn.wait(1)
        except fcgi_client.ProtocolError:
            return  # the connection was closed without END_REQUEST: a cut-off, fine
    assert resp.app_status != 0, "END_REQUEST with app_status 0 makes a cut-off response look complete"


def test_wsgi_errors_reach_the_log(nginx, log):
    tag = uuid.uuid4().hex
    r = http_get(nginx, "fcgi-tcp", f"/stderr?msg=errors-line-{tag}", pool="edge")
    assert r.status_code == 200
    lines = log.wait_for([f"errors-line-{tag}"])
    # not a traceback: a warning
    assert all("WARN" in ln for ln in lines if f"errors-line-{tag}" in ln), lines
    # the line names pool, worker pid, request id and URI
    assert any("edge" in ln and re.search(r"pid\W+\d+", ln) and re.search(r"request_id\W+\w+", ln)
               and "/stderr" in ln for ln in lines), lines


def test_worker_import_error_is_reported(tmp_path):
    """A pool whose app cannot be imported: the bridge says so in its log and answers 502/503
    for that pool while another pool keeps serving."""
    from harness import APPS, free_ports, make_bridge, pool
    bad = tmp_path / "broken_app.py"
    bad.write_text("import no_such_module_for_fcgibridge_tests\napplication = None\n")
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"good": pool(str(APPS / "edge_app.py"), processes=1, threads=1),
                               "bad": pool(str(bad), processes=1, threads=1)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}",
                                  "routes": [{"host": "bad.test", "pool": "bad"}, {"pool": "good"}]}})
    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/health", "good.test")])
        b.log.wait_for(["no_such_module_for_fcgibridge_tests"], timeout=60)
        resp = b.request("/health", pool="bad.test")
        assert resp.status in (502, 503), resp.stdout[:300]
        assert b.request("/health", pool="good.test").status == 200
    finally:
        b.stop()


def test_access_log_in_the_main_log(nginx, transport, log):
    tag = uuid.uuid4().hex
    assert http_get(nginx, transport, f"/environ?access={tag}", pool="edge").status_code == 200
    lines = log.wait_for([f"/environ\\?access={tag}", r"\b200\b", r"\bedge\b", r"GET"], access=True)
    assert len(lines) == 1, lines


def test_start_response_with_exc_info_replaces_the_status(nginx, transport):
    r = http_get(nginx, transport, "/exc-info", pool="edge")
    assert r.status_code == 500
    assert r.text == "the app reported its own error\n"
    assert r.headers.get("X-Second") == "1" and "X-First" not in r.headers


def test_worker_stdout_and_stderr_reach_the_log(nginx, log):
    tag = uuid.uuid4().hex
    r = http_get(nginx, "fcgi-tcp", f"/print?msg=out-{tag}&err=err-{tag}", pool="edge")
    assert r.status_code == 200
    out = log.wait_for([f"out-{tag}"])
    err = log.wait_for([f"err-{tag}"])
    # tagged with pool and pid (the worker contract: stdout at info, stderr at warn)
    for lines in (out, err):
        assert any("edge" in ln and re.search(r"pid\W+\d+", ln) for ln in lines), lines
    assert any("INFO" in ln for ln in out), out
    assert any("WARN" in ln for ln in err), err


def test_response_headers_over_64_kib_are_the_apps_500_with_the_reason(nginx, log):
    """The worker refuses them in start_response (what the bridge and web servers would
    refuse anyway): a 500 and the traceback naming the size, not a 502."""
    r = http_get(nginx, "fcgi-tcp", "/headers?n=5000", pool="edge")
    assert r.status_code == 500, r.status_code
    (line,) = log.wait_for([r"ValueError: the response headers are \d+ bytes, more than the 64 KiB", "/headers"])
    assert "ERROR" in line, line
    assert http_get(nginx, "fcgi-tcp", "/headers?n=60", pool="edge").status_code == 200


def test_a_stderr_line_left_without_its_newline_is_logged_alone(nginx, log):
    """Not held until the worker writes a newline for something else, nor glued to that."""
    tag = uuid.uuid4().hex
    assert http_get(nginx, "fcgi-tcp", f"/print-partial?err=part-{tag}", pool="edge").status_code == 200
    log.wait_for([f"part-{tag}"])
    assert http_get(nginx, "fcgi-tcp", f"/print?err=after-{tag}", pool="edge").status_code == 200
    log.wait_for([f"after-{tag}"])
    (line,) = [ln for ln in log.lines() if f"part-{tag}" in ln]
    assert f"after-{tag}" not in line, line


def test_header_with_crlf_is_never_split(nginx, transport, bridge):
    r = http_get(nginx, transport, "/bad-header", pool="edge")
    assert "evil" not in r.cookies and "evil" not in r.headers.get("Set-Cookie", "")
    assert r.status_code >= 500, r.status_code
    resp = bridge.request("/bad-header")
    assert b"\r\nSet-Cookie: evil" not in resp.stdout


def test_latin1_response_header(nginx, transport):
    r = http_get(nginx, transport, "/latin-header", pool="edge")
    assert r.status_code == 200
    # http.client decodes header bytes as latin-1
    assert r.headers["X-Latin"] == "caf\u00e9"


def test_exception_after_headers_over_scgi_tcp_resets_the_connection(bridge):
    """SCGI has no end-of-response marker: over TCP a cut-off can only be signalled by a
    reset instead of an orderly close."""
    with socket.create_connection(bridge.listener_address("scgi-tcp"), timeout=30) as s:
        s.sendall(fcgi_client.netstring(fcgi_client.scgi_headers("/raise-after", headers={"Host": "edge.test"})))
        got = b""
        with pytest.raises(ConnectionResetError):
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break  # an orderly close: the client would take the response as complete
                got += chunk

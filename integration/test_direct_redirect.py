"""CGI local redirects on a `direct` listener (docs/direct.md, docs/internal-redirects.md):
the bridge is not on the request path, so the worker follows an app's status 200 +
`Location: /path` itself, into the same app, with the environ the bridge would give the
redirected request. Through real nginx, as test_direct.py runs it."""
import json
import re
from urllib.parse import quote

import pytest
import requests

from harness import APPS, make_bridge, pool, wait_until
from direct_front import Front, ok

pytestmark = pytest.mark.timeout(300)

RESPOND = str(APPS / "respond_app.py")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Listener `front` (pool `app`, max-redirects 3) and `mounted` (pool `mounted`,
    `mount: /app`), both direct, each behind its own nginx."""
    workdir = tmp_path_factory.mktemp("direct-redirect")
    sockets = {name: workdir / f"{name}.sock" for name in ("front", "mounted")}
    b = make_bridge(workdir,
                    {"app": pool(RESPOND, processes=1, threads=2), "mounted": pool(RESPOND, processes=1, threads=2)},
                    {"front": {"fastcgi": f"unix:{sockets['front']}", "pool": "app", "direct": True,
                               "max-redirects": 3},
                     "mounted": {"fastcgi": f"unix:{sockets['mounted']}", "pool": "mounted", "direct": True,
                                 "mount": "/app"}})
    b.start()
    b.wait_ready([("front", "/health", "any"), ("mounted", "/app/health", "any")])
    fronts = {name: Front(tmp_path_factory.mktemp(f"{name}-nginx"), socket) for name, socket in sockets.items()}
    try:
        wait_until(lambda: ok(fronts["front"], "/health") and ok(fronts["mounted"], "/app/health"), 60, 0.1,
                   what="nginx answering through both direct listeners")
        yield b, fronts["front"], fronts["mounted"]
    finally:
        for f in fronts.values():
            f.stop()
        b.stop()


def redirect(to, status=None):
    """The path of respond_app's page that answers a local redirect to `to`."""
    return f"/redirect?to={quote(to, safe='')}" + (f"&status={quote(status)}" if status else "")


def test_a_local_redirect_serves_the_target_with_the_redirect_variables(stack):
    b, front, _ = stack
    mark = b.log.mark()
    first = redirect("/env?x=1")
    r = front.get(first)
    assert r.status_code == 200, r.text
    assert "first body!" not in r.text
    env = r.json()
    expected = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/env?x=1", "QUERY_STRING": "x=1", "SCRIPT_NAME": "",
                "PATH_INFO": "/env", "DOCUMENT_URI": "/env", "REDIRECT_URL": "/redirect",
                "REDIRECT_QUERY_STRING": first.split("?", 1)[1], "REDIRECT_REQUEST_METHOD": "GET",
                "REDIRECT_STATUS": "200",
                # nginx's fastcgi_params send REDIRECT_STATUS=200: one level deeper now, as Apache has it.
                "REDIRECT_REDIRECT_STATUS": "200"}
    assert {k: env.get(k) for k in expected} == expected, env
    # The target's status is the client's, and each redirect followed is logged (at info).
    assert front.get(redirect("/nothing")).status_code == 404
    (line,) = b.log.wait_for([r"internal redirect from /redirect\?to=%2Fenv%3Fx%3D1 to /env\?x=1"], since=mark,
                             timeout=30)
    assert "INFO" in line and 'pool="app"' in line and re.search(r"\brequest_id=\"?\d+-\d+", line), line


def test_a_chain_moves_each_hop_one_redirect_deeper(stack):
    _, front, _ = stack
    r = front.get(redirect(redirect("/env?k=v")))
    assert r.status_code == 200, r.text
    env = r.json()
    assert (env["REDIRECT_URL"], env["REDIRECT_QUERY_STRING"]) == ("/redirect", "to=%2Fenv%3Fk%3Dv"), env
    assert env["REDIRECT_REDIRECT_URL"] == "/redirect", env
    assert env["REDIRECT_REDIRECT_REDIRECT_STATUS"] == "200", env


def test_a_post_is_redirected_as_a_get_without_its_body(stack):
    _, front, _ = stack
    r = requests.post(f"http://127.0.0.1:{front.port}{redirect('/env')}", data=b"a=1" * 1000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=60)
    assert r.status_code == 200, r.text
    env = r.json()
    assert (env["REQUEST_METHOD"], env["REDIRECT_REQUEST_METHOD"]) == ("GET", "POST"), env
    assert not {"CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_CONTENT_LENGTH"} & {k for k, v in env.items() if v}, env
    # A body the first app did not read (1 MiB) is not the target's either, and nginx gets
    # the whole answer.
    r = requests.post(f"http://127.0.0.1:{front.port}{redirect('/echo')}", data=b"x" * (1 << 20), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"read": 0, "content_length": None}
    # HEAD stays HEAD.
    r = requests.head(f"http://127.0.0.1:{front.port}{redirect('/health')}", timeout=60)
    assert r.status_code == 200 and "Location" not in r.headers, r.headers


def test_a_loop_ends_with_500_and_a_line_naming_pool_pid_and_request(stack):
    b, front, _ = stack
    mark = b.log.mark()
    r = front.get("/loop")
    assert r.status_code == 500, r.text
    (line,) = b.log.wait_for([r"internal redirect refused, answering 500: more than 3 internal redirects"],
                             since=mark, timeout=30)
    pid = re.search(r"\bpid=(\d+)", line).group(1)
    assert "ERROR" in line and 'pool="app"' in line and re.search(rf"\brequest_id=\"?{pid}-\d+", line), line
    # Three hops are within max-redirects: 3.
    assert front.get(redirect(redirect(redirect("/health")))).status_code == 200
    assert front.get(redirect(redirect(redirect(redirect("/health"))))).status_code == 500


def test_a_mounted_listener_mounts_the_target(stack):
    _, _, mounted = stack
    env = mounted.get("/app" + redirect("/app/env?k=v")).json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["REQUEST_URI"]) == ("/app", "/env", "/app/env?k=v"), env
    assert env["REDIRECT_URL"] == "/app/redirect", env
    # A target outside the mount is the whole path, as the bridge mounts it.
    env = mounted.get("/app" + redirect("/env")).json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/env"), env


def test_what_is_not_a_local_redirect_passes(stack):
    _, front, _ = stack
    # 200 with an absolute Location redirects nobody: a 302, as the bridge makes it.
    r = front.get(redirect("http://example.com/x"), allow_redirects=False)
    assert (r.status_code, r.headers.get("Location")) == (302, "http://example.com/x"), r.headers
    # Another status, and a network-path reference, pass untouched.
    r = front.get(redirect("/env", status="303 See Other"), allow_redirects=False)
    assert (r.status_code, r.headers.get("Location"), r.text) == (303, "/env", "first body!")
    r = front.get(redirect("//example.com/x"), allow_redirects=False)
    assert (r.status_code, r.headers.get("Location")) == (200, "//example.com/x"), r.headers


RAW = f"{APPS / 'asgi_raw_app.py'}:app"


@pytest.fixture(scope="module")
def asgi(tmp_path_factory):
    """An ASGI pool (the bare app) behind a direct listener with max-redirects 2, and nginx."""
    workdir = tmp_path_factory.mktemp("direct-redirect-asgi")
    socket = workdir / "raw.sock"
    b = make_bridge(workdir, {"raw": pool(RAW, interface="asgi", processes=1, concurrency=8)},
                    {"raw": {"fastcgi": f"unix:{socket}", "pool": "raw", "direct": True, "max-redirects": 2}})
    b.start()
    b.wait_ready([("raw", "/health", "any")])
    front = Front(tmp_path_factory.mktemp("raw-nginx"), socket)
    try:
        wait_until(lambda: ok(front, "/health"), 60, 0.1, what="nginx answering through the direct listener")
        yield b, front
    finally:
        front.stop()
        b.stop()


def test_an_asgi_worker_follows_a_local_redirect_as_a_get_without_body(asgi):
    b, front = asgi
    mark = b.log.mark()
    r = front.get(redirect("/scope?x=1"))
    assert r.status_code == 200, r.text
    scope = r.json()
    assert (scope["method"], scope["path"], scope["query_string"], scope["raw_path"]) == ("GET", "/scope", "x=1",
                                                                                          "/scope"), scope
    (line,) = b.log.wait_for([r"internal redirect from /redirect\?to=%2Fscope%3Fx%3D1 to /scope\?x=1"],
                             since=mark, timeout=30)
    assert "INFO" in line and 'pool="raw"' in line, line
    r = requests.post(f"http://127.0.0.1:{front.port}{redirect('/scope')}", data=b"x" * (1 << 20), timeout=60)
    assert r.status_code == 200, r.text
    scope = r.json()
    assert (scope["method"], scope["body_len"]) == ("GET", 0), scope
    assert not [k for k, _ in scope["headers"] if k in ("content-length", "content-type")], scope
    # The default target, and what is not a local redirect.
    assert front.get("/redirect").text == "target reached via /raw/target"
    r = front.get(redirect("https://example.com/x"), allow_redirects=False)
    assert (r.status_code, r.headers.get("Location")) == (302, "https://example.com/x"), r.headers


def test_an_asgi_workers_redirect_loop_ends_with_500_and_a_line(asgi):
    b, front = asgi
    mark = b.log.mark()
    assert front.get("/loop").status_code == 500
    (line,) = b.log.wait_for([r"internal redirect refused, answering 500: more than 2 internal redirects"],
                             since=mark, timeout=30)
    pid = re.search(r"\bpid=(\d+)", line).group(1)
    assert "ERROR" in line and 'pool="raw"' in line and re.search(rf"\brequest_id=\"?{pid}-\d+", line), line
    assert front.get(redirect(redirect("/health"))).status_code == 200
    # The worker serves on.
    assert front.get("/health").text == "ok"

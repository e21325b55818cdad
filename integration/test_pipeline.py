"""The one-deep pipeline (pool key `pipeline`, docs/architecture.md): a waiting request is
written to a busy worker connection behind its current request, and taken back through
the claim page when a slow request would hold it. These tests fill the pool with /hold
requests (each waits for a release file) so that what is queued, piped and taken back is
decided by the test, not by timing."""
import hashlib
import json
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import fcgi_client
from harness import APPS, Nginx, free_ports, main_listeners, make_bridge, pool, wait_until
from supervision_support import Background

pytestmark = pytest.mark.timeout(300)

HOSTS = {"one": "one.test", "two": "two.test"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipe-bridge")
    pools = {"one": pool(str(APPS / "edge_app.py"), processes=1, threads=1),
             "two": pool(str(APPS / "edge_app.py"), processes=2, threads=1)}
    routes = [{"host": HOSTS["one"], "pool": "one"}, {"host": HOSTS["two"], "pool": "two"},
              {"host": "edge.test", "pool": "one"}]
    listeners = main_listeners(workdir, free_ports(6))
    for spec in listeners.values():
        spec.pop("pool", None)
        spec["routes"] = routes
    b = make_bridge(workdir, pools, listeners, bridge_extra={"log-rate-limit": False})
    n = None
    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/health", HOSTS["one"]), ("fcgi-tcp", "/health", HOSTS["two"])])
        # Nginx's readiness probe asks for edge.test: routed to "one" too.
        n = Nginx(tmp_path_factory.mktemp("pipe-nginx"), b).start().wait_ready()
        yield b, n
    finally:
        if n:
            n.stop()
        b.stop()


def direct(b, pool_name, path, **kw):
    """One request straight to the bridge over FastCGI (no web server in between)."""
    headers = {"Host": HOSTS[pool_name]}
    with fcgi_client.FcgiConnection(b.listener_address("fcgi-tcp"), timeout=120) as c:
        return c.request(path, headers=headers, **kw)


def hold(b, pool_name):
    """A request that occupies a worker thread until `release` is called; waits until it runs."""
    tag = "hold-" + uuid.uuid4().hex[:8]
    req = Background(lambda: direct(b, pool_name, "/hold", query=f"tag={tag}"))
    pid = int(wait_until(lambda: (b.workdir / f"{tag}.pid").exists() and (b.workdir / f"{tag}.pid").read_text(),
                         60, what=f"{tag} running"))

    def release():
        (b.workdir / f"{tag}.release").write_text("")
        return req.result()

    return pid, release


def queued(b, pool_name, fn, before):
    """Start `fn` in the background and wait until the pool's queue holds one more."""
    req = Background(fn)
    wait_until(lambda: b.pool_status(pool_name)["queue_length"] >= before + 1, 60,
               what=f"{before + 1} requests queued in {pool_name}")
    return req


def numbers(b, pool_name):
    s = b.pool_status(pool_name)
    return s["piped_requests"], s["withdrawn_requests"]


def test_responses_never_cross_under_load_through_nginx(stack):
    """1 process x 1 thread, 48 concurrent clients through nginx: every response is its own
    request's (GETs echo their query, POSTs the hash of their body), and requests were piped."""
    b, n = stack
    piped_before, _ = numbers(b, "one")
    mark = n.error_log.mark()

    def one(i):
        url = n.url("fcgi-unix", "/environ" if i % 2 else "/upload")
        if i % 2:
            r = requests.get(url, params={"i": i}, headers={"Host": HOSTS["one"]}, timeout=120)
            env = r.json()
            assert "FCGIBRIDGE_CLAIM" not in env, "the claim param reached the app"
            return r.status_code, env["QUERY_STRING"]
        body = (f"body-{i}-" * (1 + i * 7)).encode()
        r = requests.post(url, data=body, headers={"Host": HOSTS["one"]}, timeout=120)
        return r.status_code, (r.json()["sha256"] == hashlib.sha256(body).hexdigest(), r.json()["size"])

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=48) as ex:
            got = list(ex.map(one, range(48)))
        for i, (status, what) in enumerate(got):
            want = f"i={i}" if i % 2 else (True, len((f"body-{i}-" * (1 + i * 7)).encode()))
            assert (status, what) == (200, want), (i, status, what)
        if numbers(b, "one")[0] > piped_before:
            break
    assert numbers(b, "one")[0] > piped_before, "nothing was piped under load"
    assert not n.upstream_trouble(mark)


def test_a_slow_request_does_not_hold_the_fast_ones_piped_behind_it(stack):
    """2 processes x 1 thread: a 1 s request, then ten fast ones queued behind it. The first
    fast one is piped behind the slow one; it is taken back and every fast request ends
    before the slow one."""
    b, _ = stack
    _, withdrawn_before = numbers(b, "two")
    pid_a, release_a = hold(b, "two")
    pid_b, release_b = hold(b, "two")
    assert pid_a != pid_b
    tag_s = "slow-" + uuid.uuid4().hex[:6]
    slow = queued(b, "two", lambda: direct(b, "two", "/sleep", query=f"s=1.5&tag={tag_s}"), 0)
    fast = [queued(b, "two", lambda i=i: direct(b, "two", "/environ", query=f"i={i}"), 1 + i) for i in range(10)]
    release_a()
    # The slow request runs on the freed thread with the first fast one piped behind it.
    wait_until(lambda: (b.workdir / f"{tag_s}.pid").exists(), 60, what="the slow request started")
    release_b()
    for i, f in enumerate(fast):
        r = f.result()
        assert r.status == 200 and json.loads(r.body)["QUERY_STRING"] == f"i={i}"
    assert slow.result().status == 200
    last_fast = max(f.out["done_at"] for f in fast)
    assert last_fast < slow.out["done_at"], "a fast request waited for the slow one"
    assert numbers(b, "two")[1] > withdrawn_before, "no piped request was taken back"


def test_a_client_leaving_while_its_request_is_piped(stack):
    """The request is taken back from the worker's socket: it never runs, is logged 499,
    and the worker goes on with the next request."""
    b, _ = stack
    piped_before, withdrawn_before = numbers(b, "one")
    _, release_a = hold(b, "one")
    tag_b = "hold-" + uuid.uuid4().hex[:8]
    holder = queued(b, "one", lambda: direct(b, "one", "/hold", query=f"tag={tag_b}"), 0)
    tag_v = "victim-" + uuid.uuid4().hex[:8]
    conn = fcgi_client.FcgiConnection(b.listener_address("fcgi-tcp"), timeout=60)
    params = fcgi_client.cgi_params("/sleep", "GET", f"s=0&tag={tag_v}", {"Host": HOSTS["one"]})
    conn.begin(1, params)
    wait_until(lambda: b.pool_status("one")["queue_length"] >= 2, 60, what="the victim queued")
    since = b.log.mark()
    release_a()
    wait_until(lambda: numbers(b, "one")[0] > piped_before, 60, what="the victim piped behind the holder")
    conn.abort(1)
    resp = conn.wait(1)
    assert not resp.stdout, resp
    b.log.wait_for([rf'uri="/sleep\?s=0&tag={tag_v}"', "status=499"], since=since, timeout=60, access=True)
    (b.workdir / f"{tag_b}.release").write_text("")
    assert holder.result().status == 200
    conn.close()
    assert numbers(b, "one")[1] > withdrawn_before
    r = direct(b, "one", "/environ", query="after=1")
    assert r.status == 200 and json.loads(r.body)["QUERY_STRING"] == "after=1"
    assert not (b.workdir / f"{tag_v}.pid").exists(), "the withdrawn request ran"


def test_a_piped_request_survives_its_worker_killed(stack):
    """The worker dies (SIGKILL) with a request piped behind its current one: the current
    one gets 502, the piped one is answered by the other worker."""
    b, _ = stack
    _, withdrawn_before = numbers(b, "two")
    pid_a, release_a = hold(b, "two")
    pid_b, release_b = hold(b, "two")
    tag_c = "hold-" + uuid.uuid4().hex[:8]
    doomed = queued(b, "two", lambda: direct(b, "two", "/hold", query=f"tag={tag_c}"), 0)
    piped = queued(b, "two", lambda: direct(b, "two", "/environ", query="piped=1"), 1)
    piped_before, _ = numbers(b, "two")
    release_a()
    pid_c = int(wait_until(lambda: (b.workdir / f"{tag_c}.pid").exists() and (b.workdir / f"{tag_c}.pid").read_text(),
                           60, what="the doomed request running"))
    assert pid_c == pid_a
    wait_until(lambda: numbers(b, "two")[0] > piped_before or b.pool_status("two")["queue_length"] == 0, 60,
               what="the request piped")
    os.kill(pid_c, signal.SIGKILL)
    assert doomed.result().status == 502
    release_b()
    r = piped.result()
    assert r.status == 200, r
    env = json.loads(r.body)
    assert env["QUERY_STRING"] == "piped=1"
    assert env["fcgibridge.test.pid"] != pid_c
    assert numbers(b, "two")[1] > withdrawn_before


def test_a_large_body_is_never_piped(stack):
    """A POST whose body does not fit in the first write waits for a free thread: the
    counter of piped requests does not move while it is the only one waiting."""
    b, _ = stack
    _, release_a = hold(b, "one")
    tag_b = "hold-" + uuid.uuid4().hex[:8]
    holder = queued(b, "one", lambda: direct(b, "one", "/hold", query=f"tag={tag_b}"), 0)
    body = os.urandom(300 * 1024)
    large = queued(b, "one", lambda: direct(b, "one", "/upload", method="POST", body=body), 1)
    piped_before, _ = numbers(b, "one")
    release_a()
    wait_until(lambda: (b.workdir / f"{tag_b}.pid").exists(), 60, what="the holder running")
    assert b.pool_status("one")["queue_length"] == 1, "the large POST left the queue"
    assert numbers(b, "one")[0] == piped_before
    (b.workdir / f"{tag_b}.release").write_text("")
    assert holder.result().status == 200
    r = large.result()
    assert r.status == 200 and json.loads(r.body)["sha256"] == hashlib.sha256(body).hexdigest()

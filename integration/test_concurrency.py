"""200 concurrent requests through nginx (and straight to the bridge): none lost,
each answered with its own response."""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import fcgi_client
from harness import POOL_HOSTS

N = 200


def _fire(fn, n=N):
    barrier = threading.Barrier(n, timeout=120)

    def one(i):
        barrier.wait()
        return i, fn(i)

    with ThreadPoolExecutor(max_workers=n) as ex:
        return dict(f.result() for f in [ex.submit(one, i) for i in range(n)])


@pytest.mark.parametrize("transport", ["fcgi-unix", "fcgi-tcp", "scgi"])
def test_200_concurrent_flask_requests(nginx, transport):
    mark = nginx.error_log.mark()

    def get(i):
        r = requests.get(nginx.url(transport, f"/n/{i}"), headers={"Host": POOL_HOSTS["flask"]}, timeout=180)
        return r.status_code, r.json()["i"] if r.status_code == 200 else r.text

    results = _fire(get)
    bad = {i: v for i, v in results.items() if v != (200, i)}
    assert not bad, f"{len(bad)} of {N} requests failed or got another's answer: {list(bad.items())[:5]}"
    assert not nginx.upstream_trouble(mark)


def test_200_concurrent_slow_requests_queue_and_all_complete(nginx):
    """200 requests that each hold a worker thread for 0.3 s, 16 threads in the pool:
    most wait in the bridge's queue; every one is answered."""
    mark = nginx.error_log.mark()

    def get(i):
        r = requests.get(nginx.url("fcgi-tcp", f"/sleep?s=0.3&n={i}"), headers={"Host": POOL_HOSTS["edge"]},
                         timeout=180)
        return r.status_code

    results = _fire(get)
    assert sorted(set(results.values())) == [200], {s: list(results.values()).count(s) for s in set(results.values())}
    assert not nginx.upstream_trouble(mark)


def test_200_concurrent_direct_fastcgi(bridge):
    addr = bridge.listener_address("fcgi-tcp")

    def get(i):
        resp = fcgi_client.fcgi_request(addr, "/environ", query=f"i={i}", headers={"Host": "edge.test"})
        return resp.status, json.loads(resp.body)["QUERY_STRING"]

    results = _fire(get)
    bad = {i: v for i, v in results.items() if v != (200, f"i={i}")}
    assert not bad, list(bad.items())[:5]


def test_200_concurrent_direct_scgi(bridge):
    addr = bridge.listener_address("scgi-tcp")

    def get(i):
        status, _, body = fcgi_client.scgi_request(addr, "/environ", query=f"i={i}", headers={"Host": "edge.test"})
        return status, json.loads(body)["QUERY_STRING"]

    results = _fire(get)
    bad = {i: v for i, v in results.items() if v != (200, f"i={i}")}
    assert not bad, list(bad.items())[:5]


def test_50_concurrent_streamed_uploads(nginx):
    """50 chunked uploads at once through nginx's unbuffered location: every body arrives
    whole at the app, none lost or mixed up."""
    import hashlib
    import os
    bodies = [os.urandom(256 * 1024) + str(i).encode() for i in range(50)]

    def chunks(b):
        for k in range(0, len(b), 32768):
            yield b[k:k + 32768]

    def post(i):
        r = requests.post(nginx.url("fcgi-stream", "/upload"), data=chunks(bodies[i]),
                          headers={"Host": POOL_HOSTS["edge"]}, timeout=180)
        return r.status_code, r.json().get("sha256") if r.status_code == 200 else r.text[:200]

    results = _fire(post, n=50)
    bad = {i: v for i, v in results.items() if v != (200, hashlib.sha256(bodies[i]).hexdigest())}
    assert not bad, list(bad.items())[:5]


def test_client_gone_during_a_long_request_frees_the_slot(nginx, bridge):
    """The single pool's only thread sleeps for a client that gave up: once the app returns,
    the slot serves again (no leak), and the abandoned response is not sent to anyone."""
    import time
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(nginx.url("fcgi-tcp", "/sleep?s=3"), headers={"Host": POOL_HOSTS["single"]}, timeout=1)
    t0 = time.monotonic()
    r = requests.get(nginx.url("fcgi-tcp", "/environ?after=gone"), headers={"Host": POOL_HOSTS["single"]},
                     timeout=60)
    assert r.status_code == 200 and r.json()["QUERY_STRING"] == "after=gone"
    assert time.monotonic() - t0 < 10

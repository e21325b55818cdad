"""HAProxy is the one client that multiplexes: many concurrent requests over a few
connections, and clients that go away get FCGI_ABORT_REQUEST, which must free their
worker slots. A bridge of its own with a small pool (1 process x 4 threads) makes a
leaked slot visible at once; its FastCGI front logs record events at trace level."""
import socket
import threading
import time

import pytest
import requests

import frontends
import support
from harness import free_ports, make_bridge, pool

SLOTS = 4
TIMEOUT = 120


@pytest.fixture(scope="module")
def setup(tmp_path_factory, www):
    workdir = tmp_path_factory.mktemp("haproxy-bridge")
    (port,) = free_ports(1)
    b = make_bridge(workdir, {"small": pool(str(frontends.APP), processes=1, threads=SLOTS)},
                    {"fastcgi": {"fastcgi": f"127.0.0.1:{port}", "pool": "small"}},
                    bridge_extra={"log-level": "info,fcgibridge::listen::fastcgi=trace"})
    # (a pass-mode listener: these tests do not hand files off)
    b.ports = {"fastcgi": port, "scgi": port, frontends.Haproxy.own_listeners["9000"]: port}
    srv = frontends.Haproxy(b.ports, www)
    if not srv.binary:
        pytest.skip("haproxy is not installed")
    try:
        b.start()
        b.wait_ready([("fastcgi", "/health", "x")])
        srv.start()
        frontends.http_ready(srv.ports["8080"], proc=srv.proc, log=srv.log_text)
        yield b, srv
    finally:
        srv.stop()
        b.stop()
        srv.cleanup()


def get(srv, path):
    return requests.get(f"http://127.0.0.1:{srv.ports['8080']}{path}", timeout=TIMEOUT)


def burst(srv, b, n, path):
    """n concurrent requests; returns (statuses, peak connections to the bridge, seconds)."""
    results = []

    def one(i):
        try:
            results.append(get(srv, f"{path}&i={i}").status_code)
        except requests.RequestException as e:
            results.append(repr(e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads) and time.monotonic() - t0 < TIMEOUT:
        peak = max(peak, frontends.connections_to(b.ports["fastcgi"], srv.pids()))
        time.sleep(0.05)
    for t in threads:
        t.join(TIMEOUT)
    return results, peak, time.monotonic() - t0


def test_many_requests_over_few_connections(setup):
    b, srv = setup
    mark = b.log.mark()
    results, peak, _ = burst(srv, b, 3 * SLOTS, "/slow?ms=1000")
    assert results.count(200) == 3 * SLOTS, results
    # one connection carries them all once HAProxy knows the limits; a second or third may
    # open while the first one's GET_VALUES is still under way
    assert 1 <= peak <= 3, f"{3 * SLOTS} concurrent requests used {peak} connections"
    # the bridge saw requests with different ids on one connection
    ids = set()
    for line in b.log.lines(mark):
        if "BeginRequest" in line and "front event" in line:
            ids.add(line.split("BeginRequest", 1)[1][:40])
    assert len(ids) > 1, "no multiplexed request ids in the bridge's trace log"
    support.record("haproxy", "multiplexing", "yes",
                   f"{3 * SLOTS} concurrent requests over {peak} connection(s), "
                   f"{len(ids)} distinct request ids (option mpxs-conns + max-reqs)")


def test_clients_that_go_away_free_their_slots(setup):
    b, srv = setup
    mark = b.log.mark()
    # fill every slot with a long streamed response, then let the clients go away
    socks = []
    for i in range(SLOTS):
        s = socket.create_connection(("127.0.0.1", srv.ports["8080"]), timeout=TIMEOUT)
        s.sendall(b"GET /stream?n=600&ms=100&i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        socks.append(s)
    for s in socks:
        assert b"chunk 0" in s.recv(65536)
    for s in socks:
        s.close()
    b.log.wait_for(["Abort"], mark, timeout=30)
    lines = b.log.wait_for(["client went away"], mark, timeout=30)
    cut = [ln for ln in b.log.lines(mark) if "cut off" in ln]
    assert not cut, cut
    # every slot is free again: SLOTS concurrent 2 s requests finish in one round, not after
    # the abandoned 60 s streams
    results, _, took = burst(srv, b, SLOTS, "/slow?ms=2000")
    assert results.count(200) == SLOTS, results
    assert took < 15, f"{SLOTS} requests took {took:.1f}s: slots still held by abandoned requests"
    support.record("haproxy", "multiplexing", "yes",
                   f"{3 * SLOTS} concurrent requests over 1-3 connections; {len(lines)} clients that went away "
                   f"were sent FCGI_ABORT_REQUEST and their slots served the next {SLOTS} requests at once")

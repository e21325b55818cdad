"""Rough hello-world load against one FastCGI application socket (no web server).

    python3 load.py SOCKET [--conns N] [--seconds S] [--path /] [--reconnect]

Each connection runs in its own process and sends keep-alive FastCGI requests
back to back (one outstanding request per connection, like the bridge does).
Prints requests/second and latency percentiles. The client is Python, so on a
small machine it competes with the server for CPU: compare servers with the
same settings, not absolute figures.
"""
import argparse
import multiprocessing
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import fcgi  # noqa: E402


def request_bytes(path, keep_conn=True):
    c = fcgi.Client.__new__(fcgi.Client)
    c.corked = b""
    c.begin(keep_conn=keep_conn)
    c.params(fcgi.base_params(path, HTTP_HOST="localhost"))
    c.stdin_end()
    return c.corked


def connect(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    return s


def worker(sock_path, path, seconds, reconnect, q):
    req = request_bytes(path, keep_conn=not reconnect)
    s = None if reconnect else connect(sock_path)
    lat = []
    end = time.perf_counter() + seconds
    n = 0
    buf = b""
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        if reconnect:
            s = connect(sock_path)
            buf = b""
        s.sendall(req)
        # read records until END_REQUEST
        while True:
            while True:
                if len(buf) >= 8:
                    clen, plen = struct.unpack(">HB", buf[4:7])
                    if len(buf) >= 8 + clen + plen:
                        break
                more = s.recv(65536)
                if not more:
                    raise SystemExit("server closed the connection")
                buf += more
            rtype = buf[1]
            buf = buf[8 + clen + plen:]
            if rtype == fcgi.END_REQUEST:
                break
        if reconnect:
            s.close()
        lat.append(time.perf_counter() - t0)
        n += 1
    q.put((n, lat))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("--conns", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--path", default="/")
    ap.add_argument("--reconnect", action="store_true",
                    help="a new connection per request (keep_conn off), for servers without keep-conn")
    a = ap.parse_args()
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(a.socket, a.path, a.seconds, a.reconnect, q))
             for _ in range(a.conns)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(n for n, _ in results)
    lat = sorted(x for _, l in results for x in l)
    pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] * 1e6  # noqa: E731
    print("%d conns%s: %.0f req/s  p50 %.0f us  p99 %.0f us" % (
        a.conns, " (reconnecting)" if a.reconnect else "", total / a.seconds, pct(0.5), pct(0.99)))


if __name__ == "__main__":
    main()

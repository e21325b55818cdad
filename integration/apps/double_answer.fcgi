"""A FastCGI program that misbehaves once: after its first response it writes a second,
unasked-for one on the same connection (as a buggy FastCGI library could). Served as a
`command:` pool by integration/test_fastcgi_programs.py."""
import itertools
import os
import socket
import struct
import threading
import time

HEADER = struct.Struct(">BBHHBx")
BEGIN, END, STDIN, STDOUT, GET_VALUES, GET_VALUES_RESULT = 1, 3, 5, 6, 9, 10
answers = itertools.count(1)


def record(rtype, rid, data=b""):
    return HEADER.pack(1, rtype, rid, len(data), 0) + data


def response(rid, body):
    head = b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
    return record(STDOUT, rid, head + body) + record(STDOUT, rid) + record(END, rid, struct.pack(">IB3x", 0, 0))


def serve(conn):
    buf = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 8:
            _, rtype, rid, clen, plen = HEADER.unpack(buf[:8])
            if len(buf) < 8 + clen + plen:
                break
            buf = buf[8 + clen + plen:]
            if rtype == GET_VALUES:
                conn.sendall(record(GET_VALUES_RESULT, 0, b"\x0f\x01FCGI_MPXS_CONNS0"))
            elif rtype == STDIN and clen == 0:
                n = next(answers)
                conn.sendall(response(rid, b"answer %d" % n))
                if n == 1:
                    time.sleep(0.3)
                    conn.sendall(response(rid, b"forged"))
                    # for the test: the unasked-for response is in the bridge's socket now
                    open(os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], "forged.sent"), "w").close()


listener = socket.socket(fileno=0)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()

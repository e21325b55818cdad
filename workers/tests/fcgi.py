"""A small blocking FastCGI client, enough to drive one worker in tests."""
import socket
import struct

BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR, DATA = range(1, 9)
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11
RESPONDER, AUTHORIZER, FILTER = 1, 2, 3
REQUEST_COMPLETE, CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE = 0, 1, 2, 3


def record(rtype, req_id, content=b"", padding=0):
    assert len(content) <= 65535
    return struct.pack(">BBHHBx", 1, rtype, req_id, len(content), padding) + content + b"\0" * padding


def pair(name, value):
    out = b""
    for item in (name, value):
        n = len(item)
        out += bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
    return out + name + value


def decode_pairs(data):
    pairs, i = [], 0
    while i < len(data):
        lens = []
        for _ in range(2):
            if data[i] & 0x80:
                lens.append(struct.unpack(">I", data[i:i + 4])[0] & 0x7FFFFFFF)
                i += 4
            else:
                lens.append(data[i])
                i += 1
        name = data[i:i + lens[0]]
        i += lens[0]
        pairs.append((name, data[i:i + lens[1]]))
        i += lens[1]
    return pairs


def _b(x):
    return x if isinstance(x, bytes) else x.encode("latin-1")


def base_params(path="/", method="GET", query="", **extra):
    params = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": path + ("?" + query if query else ""),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "FCGIBRIDGE_REQUEST_ID": "req-42",
    }
    params.update(extra)
    return params


class Response:
    def __init__(self):
        self.stdout = b""
        self.stderr = b""
        self.app_status = None
        self.protocol_status = None
        self.records = []

    @property
    def head_and_body(self):
        head, sep, body = self.stdout.partition(b"\r\n\r\n")
        assert sep, "no header block in %r" % self.stdout[:200]
        return head, body

    @property
    def status(self):
        return self.headers.get("status", "200 OK")

    @property
    def code(self):
        return int(self.status.split()[0])

    @property
    def header_list(self):
        head, _ = self.head_and_body
        out = []
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            out.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return out

    @property
    def headers(self):
        return {n.lower(): v for n, v in self.header_list}

    @property
    def body(self):
        return self.head_and_body[1]


class Client:
    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    corked = None

    def send(self, data):
        if self.corked is not None:
            self.corked += data
        else:
            self.sock.sendall(data)

    def begin(self, req_id=1, role=RESPONDER, keep_conn=True):
        self.send(record(BEGIN_REQUEST, req_id, struct.pack(">HB5x", role, 1 if keep_conn else 0)))

    def params(self, params, req_id=1):
        data = b"".join(pair(_b(k), _b(v)) for k, v in params.items())
        out = b""
        for i in range(0, len(data), 1000):  # several PARAMS records
            out += record(PARAMS, req_id, data[i:i + 1000])
        self.send(out + record(PARAMS, req_id))

    def stdin(self, data, req_id=1, chunk=65535):
        out = b""
        for i in range(0, len(data), chunk):
            out += record(STDIN, req_id, data[i:i + chunk])
        self.send(out)

    def stdin_end(self, req_id=1):
        self.send(record(STDIN, req_id))

    def abort(self, req_id=1):
        self.send(record(ABORT_REQUEST, req_id))

    def read_record(self):
        while len(self.buf) < 8:
            more = self.sock.recv(65536)
            if not more:
                return None
            self.buf += more
        version, rtype, req_id, clen, plen = struct.unpack(">BBHHBx", self.buf[:8])
        assert version == 1, self.buf[:8]
        need = 8 + clen + plen
        while len(self.buf) < need:
            more = self.sock.recv(65536)
            if not more:
                raise EOFError("connection closed inside a record")
            self.buf += more
        content = self.buf[8:8 + clen]
        self.buf = self.buf[need:]
        return rtype, req_id, content

    def read_response(self, req_id=1):
        resp = Response()
        while True:
            rec = self.read_record()
            if rec is None:
                raise EOFError("connection closed before END_REQUEST")
            rtype, rid, content = rec
            resp.records.append(rec)
            if rid != req_id:
                continue
            if rtype == STDOUT:
                resp.stdout += content
            elif rtype == STDERR:
                resp.stderr += content
            elif rtype == END_REQUEST:
                resp.app_status, resp.protocol_status = struct.unpack(">IB3x", content)
                return resp

    def request(self, path="/", method="GET", query="", body=b"", params=None, chunk=65535,
                keep_conn=True, content_length=True, **extra):
        p = base_params(path, method, query, **extra)
        if body and content_length:
            p.setdefault("CONTENT_LENGTH", str(len(body)))
        if params:
            p.update(params)
        self.corked = b""  # send the whole request at once, as web servers do
        try:
            self.begin(keep_conn=keep_conn)
            self.params(p)
            if body:
                self.stdin(body, chunk=chunk)
            self.stdin_end()
        finally:
            data, self.corked = self.corked, None
        self.send(data)
        return self.read_response()

    def get_values(self, names):
        self.send(record(GET_VALUES, 0, b"".join(pair(n, b"") for n in names)))
        rtype, rid, content = self.read_record()
        assert (rtype, rid) == (GET_VALUES_RESULT, 0)
        return dict(decode_pairs(content))

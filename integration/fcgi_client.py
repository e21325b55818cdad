"""A small raw-socket FastCGI and SCGI client used by the end-to-end tests.

It deliberately works at the record level so tests can send exactly the bytes
they want (multiplexed requests, ABORT_REQUEST, GET_VALUES, broken records) to
the bridge's listeners.  Written from the FastCGI 1.0 specification.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

VERSION_1 = 1

BEGIN_REQUEST = 1
ABORT_REQUEST = 2
END_REQUEST = 3
PARAMS = 4
STDIN = 5
STDOUT = 6
STDERR = 7
DATA = 8
GET_VALUES = 9
GET_VALUES_RESULT = 10
UNKNOWN_TYPE = 11

RESPONDER = 1
AUTHORIZER = 2
FILTER = 3

KEEP_CONN = 1

REQUEST_COMPLETE = 0
CANT_MPX_CONN = 1
OVERLOADED = 2
UNKNOWN_ROLE = 3

HEADER = struct.Struct(">BBHHBx")


def record(rtype: int, request_id: int, content: bytes = b"", padding: int | None = None,
           version: int = VERSION_1) -> bytes:
    """One record; padding defaults to aligning the record on 8 bytes."""
    if len(content) > 0xFFFF:
        raise ValueError("record content too long; use stream()")
    if padding is None:
        padding = (-len(content)) % 8
    return HEADER.pack(version, rtype, request_id, len(content), padding) + content + b"\0" * padding


def stream(rtype: int, request_id: int, data: bytes, chunk: int = 0xFFF8,
           terminate: bool = True) -> bytes:
    """A stream (PARAMS, STDIN, ...) split into records, with its empty terminator."""
    out = bytearray()
    for i in range(0, len(data), chunk):
        out += record(rtype, request_id, data[i:i + chunk])
    if terminate:
        out += record(rtype, request_id, b"")
    return bytes(out)


def _nv_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    return struct.pack(">I", n | 0x80000000)


def encode_pairs(pairs) -> bytes:
    """Name-value pairs; accepts a dict or a list of (name, value) (repeats allowed)."""
    if isinstance(pairs, dict):
        pairs = list(pairs.items())
    out = bytearray()
    for name, value in pairs:
        n = name.encode("latin-1") if isinstance(name, str) else name
        v = value.encode("latin-1") if isinstance(value, str) else value
        out += _nv_len(len(n)) + _nv_len(len(v)) + n + v
    return bytes(out)


def decode_pairs(data: bytes) -> dict:
    out = {}
    i = 0
    while i < len(data):
        lens = []
        for _ in range(2):
            b = data[i]
            if b & 0x80:
                lens.append(struct.unpack(">I", data[i:i + 4])[0] & 0x7FFFFFFF)
                i += 4
            else:
                lens.append(b)
                i += 1
        n = data[i:i + lens[0]]
        i += lens[0]
        v = data[i:i + lens[1]]
        i += lens[1]
        out[n.decode("latin-1")] = v.decode("latin-1")
    return out


def begin_body(role: int = RESPONDER, flags: int = 0) -> bytes:
    return struct.pack(">HB5x", role, flags)


def cgi_params(path: str, method: str = "GET", query: str = "", headers=None,
               content_length: int | str | None = None, server_port: int = 80,
               extra=None, stock_nginx: bool = False) -> list:
    """A CGI parameter list shaped like nginx's fastcgi_params for `path`.

    By default SCRIPT_NAME is "" and PATH_INFO the path (what a configuration that sets
    PATH_INFO sends). stock_nginx=True sends what Debian's stock fastcgi_params sends:
    the whole path in SCRIPT_NAME and no PATH_INFO at all."""
    uri = path + (("?" + query) if query else "")
    path_params = [("SCRIPT_NAME", path)] if stock_nginx else [("SCRIPT_NAME", ""), ("PATH_INFO", path)]
    params = [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", method),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", "" if content_length is None else str(content_length)),
        *path_params,
        ("REQUEST_URI", uri),
        ("DOCUMENT_URI", unquote(path, encoding="latin-1")),  # nginx's $document_uri is decoded
        ("DOCUMENT_ROOT", "/nonexistent"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgi_client.py"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", str(server_port)),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost"),
    ]
    for name, value in (headers or {}).items() if isinstance(headers, dict) else (headers or []):
        key = name.upper().replace("-", "_")
        key = key if key == "CONTENT_TYPE" else "HTTP_" + key
        if key in ("CONTENT_TYPE", "HTTP_HOST"):
            # replace the defaults above instead of sending the name twice
            params = [(k, v) for k, v in params if k != key]
        params.append((key, value))
    params.extend(extra or [])
    return params


@dataclass
class Response:
    request_id: int
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    app_status: int | None = None
    protocol_status: int | None = None
    # (monotonic time, length) of every STDOUT record received, for streaming tests
    stdout_times: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.protocol_status is not None

    def split(self):
        """(status int, headers list, body bytes) of the CGI response on STDOUT."""
        data = bytes(self.stdout)
        sep = data.find(b"\r\n\r\n")
        sep_len = 4
        if sep < 0:
            sep = data.find(b"\n\n")
            sep_len = 2
        if sep < 0:
            raise ValueError(f"no CGI header block in {data[:200]!r}")
        head = data[:sep].decode("latin-1")
        body = data[sep + sep_len:]
        headers = []
        status = 200
        for line in head.replace("\r\n", "\n").split("\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            value = value.strip()
            headers.append((name, value))
            if name.lower() == "status":
                status = int(value.split()[0])
        return status, headers, body

    @property
    def status(self) -> int:
        return self.split()[0]

    @property
    def body(self) -> bytes:
        return self.split()[2]

    def header(self, name: str):
        for n, v in self.split()[1]:
            if n.lower() == name.lower():
                return v
        return None


class ProtocolError(Exception):
    pass


class FcgiConnection:
    """One connection to a FastCGI server; records are read into per-id Responses."""

    def __init__(self, address, timeout: float = 60.0, source: str | None = None):
        """source: the local IP to connect from (e.g. 127.0.0.2: any of loopback's /8 on Linux)."""
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect(address)
        self.buf = bytearray()
        self.responses: dict[int, Response] = {}
        self.management: list[tuple[int, bytes]] = []
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def begin(self, request_id: int, params, stdin: bytes | None = b"", keep_conn: bool = True,
              role: int = RESPONDER, terminate_stdin: bool = True):
        """Send BEGIN_REQUEST, PARAMS and (optionally) STDIN for one request."""
        self.responses[request_id] = Response(request_id)
        data = record(BEGIN_REQUEST, request_id, begin_body(role, KEEP_CONN if keep_conn else 0))
        data += stream(PARAMS, request_id, encode_pairs(params))
        if stdin is not None:
            data += stream(STDIN, request_id, stdin, terminate=terminate_stdin)
        self.send(data)

    def abort(self, request_id: int):
        self.send(record(ABORT_REQUEST, request_id))

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_record(self):
        """Next (version, type, id, content) or None at EOF."""
        while len(self.buf) < 8:
            if not self._fill():
                return None
        version, rtype, rid, clen, plen = HEADER.unpack(self.buf[:8])
        while len(self.buf) < 8 + clen + plen:
            if not self._fill():
                raise ProtocolError(f"EOF inside a record (type {rtype}, id {rid})")
        content = bytes(self.buf[8:8 + clen])
        del self.buf[:8 + clen + plen]
        if version != VERSION_1:
            raise ProtocolError(f"server sent version {version}")
        return rtype, rid, content

    def pump(self) -> bool:
        """Read one record and file it. False at EOF."""
        rec = self.read_record()
        if rec is None:
            return False
        rtype, rid, content = rec
        if rid == 0:
            self.management.append((rtype, content))
            return True
        resp = self.responses.setdefault(rid, Response(rid))
        if resp.complete:
            raise ProtocolError(f"record type {rtype} for request {rid} after its END_REQUEST")
        if rtype == STDOUT:
            resp.stdout += content
            resp.stdout_times.append((time.monotonic(), len(content)))
        elif rtype == STDERR:
            resp.stderr += content
        elif rtype == END_REQUEST:
            resp.app_status, resp.protocol_status = struct.unpack(">IB3x", content)
        else:
            raise ProtocolError(f"unexpected record type {rtype} for request {rid}")
        return True

    def wait(self, request_id: int) -> Response:
        """Read until request_id has its END_REQUEST; raises ProtocolError at EOF before it."""
        while not self.responses[request_id].complete:
            if not self.pump():
                raise ProtocolError(f"connection closed before END_REQUEST of request {request_id}")
        return self.responses[request_id]

    def wait_management(self) -> tuple[int, bytes]:
        while not self.management:
            if not self.pump():
                raise ProtocolError("connection closed before a management reply")
        return self.management.pop(0)

    def get_values(self, names) -> dict:
        self.send(record(GET_VALUES, 0, encode_pairs([(n, "") for n in names])))
        rtype, content = self.wait_management()
        if rtype != GET_VALUES_RESULT:
            raise ProtocolError(f"expected GET_VALUES_RESULT, got type {rtype}")
        return decode_pairs(content)

    def request(self, path: str, method: str = "GET", query: str = "", body: bytes = b"",
                headers=None, request_id: int = 1, keep_conn: bool = True, extra=None) -> Response:
        params = cgi_params(path, method, query, headers,
                            content_length=len(body) if body or method in ("POST", "PUT") else None,
                            extra=extra)
        self.begin(request_id, params, body, keep_conn=keep_conn)
        return self.wait(request_id)

    def read_until_closed(self, timeout: float) -> bytes:
        """Everything until EOF (returns what arrived); raises socket.timeout if still open."""
        self.sock.settimeout(timeout)
        while self._fill():
            pass
        return bytes(self.buf)


def parse_records(data: bytes) -> list:
    """(type, request id, content) of every whole record in `data` (a trailing fragment is ignored)."""
    out = []
    i = 0
    while i + 8 <= len(data):
        _, rtype, rid, clen, plen = HEADER.unpack(data[i:i + 8])
        if i + 8 + clen + plen > len(data):
            break
        out.append((rtype, rid, data[i + 8:i + 8 + clen]))
        i += 8 + clen + plen
    return out


def fcgi_request(address, path: str, **kw) -> Response:
    with FcgiConnection(address) as conn:
        return conn.request(path, **kw)


# ---------------------------------------------------------------- SCGI

def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


def scgi_headers(path: str, method: str = "GET", query: str = "", body: bytes = b"",
                 headers=None) -> bytes:
    pairs = [("CONTENT_LENGTH", str(len(body))), ("SCGI", "1")]
    pairs += [(k, v) for k, v in cgi_params(path, method, query, headers) if k != "CONTENT_LENGTH"]
    return b"".join(k.encode("latin-1") + b"\0" + v.encode("latin-1") + b"\0" for k, v in pairs)


def scgi_request(address, path: str, method: str = "GET", query: str = "", body: bytes = b"",
                 headers=None, timeout: float = 60.0) -> tuple[int, list, bytes]:
    """One SCGI request; returns (status, headers, body) parsed from the CGI response."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(netstring(scgi_headers(path, method, query, body, headers)) + body)
        data = bytearray()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    resp = Response(0, stdout=data)
    return resp.split()

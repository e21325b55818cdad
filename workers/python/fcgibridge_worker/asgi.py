"""The ASGI worker (``interface: asgi``; docs/asgi.md).

One event loop per process. The bridge opens ``concurrency`` FastCGI connections to the
listening socket on fd 0 and sends one request at a time on each; every request runs as
a task of its own, so a worker holds as many requests in flight as it has connections.
The FastCGI records are read and written here, in Python, with asyncio streams: a full
socket buffer toward the bridge pauses the app's ``send`` (back-pressure), and a request
body that the app does not read pauses reading that connection.
"""
import asyncio
import collections
import contextlib
import http
import json
import os
import signal
import socket
import struct
import sys
import traceback
import urllib.parse

from . import ClientDisconnected
from . import logging_bridge

# FastCGI 1.0 record types, roles and protocol statuses.
BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 2, 3, 4, 5, 6, 7
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11
RESPONDER, AUTHORIZER = 1, 2
REQUEST_COMPLETE, UNKNOWN_ROLE = 0, 3
KEEP_CONN = 1
HEADER = struct.Struct(">BBHHBx")
END_BODY = struct.Struct(">IB3x")
MAX_CONTENT = 65535
READ_SIZE = 256 * 1024
# Body bytes a request may hold unread before its connection stops being read.
BODY_HIGH = 1 << 20
# Longest lifespan shutdown: the bridge sends SIGKILL 10 s after SIGTERM.
SHUTDOWN_TIMEOUT = 8.0
FILE_CHUNK = 256 * 1024
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
ERROR_PAGE = (b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
              b"Content-Length: 22\r\n\r\nInternal Server Error\n")
NO_BODY_STATUSES = (204, 304)


class ProtocolError(Exception):
    """The bridge sent something that is not FastCGI."""


def record(rtype, rid, data=b""):
    """``data`` as records of type ``rtype`` (one empty record for empty data)."""
    if len(data) <= MAX_CONTENT:
        return HEADER.pack(1, rtype, rid, len(data), 0) + data
    view = memoryview(data)
    parts = []
    for i in range(0, len(data), MAX_CONTENT):
        chunk = view[i:i + MAX_CONTENT]
        parts.append(HEADER.pack(1, rtype, rid, len(chunk), 0))
        parts.append(chunk)
    return b"".join(parts)


def parse_pairs(buf):
    """FastCGI name-value pairs as a list of (name, value) bytes."""
    out = []
    i, n = 0, len(buf)
    try:
        while i < n:
            nlen = buf[i]
            if nlen & 0x80:
                nlen = int.from_bytes(buf[i:i + 4], "big") & 0x7FFFFFFF
                i += 4
            else:
                i += 1
            vlen = buf[i]
            if vlen & 0x80:
                vlen = int.from_bytes(buf[i:i + 4], "big") & 0x7FFFFFFF
                i += 4
            else:
                i += 1
            j = i + nlen
            k = j + vlen
            if k > n:
                raise ProtocolError("name-value pair longer than its record")
            out.append((buf[i:j], buf[j:k]))
            i = k
    except IndexError:
        raise ProtocolError("truncated name-value pair") from None
    return out


def encode_pairs(pairs):
    out = bytearray()
    for name, value in pairs:
        for b in (name, value):
            out += bytes([len(b)]) if len(b) < 128 else struct.pack(">I", len(b) | 0x80000000)
        out += name + value
    return bytes(out)


def _decode(b):
    return b.decode("utf-8", "replace")


def _http_version(protocol):
    version = protocol.partition(b"/")[2].decode("latin-1") or "1.1"
    return {"2.0": "2", "3.0": "3"}.get(version, version)


def _host_port(host, port):
    if not host:
        return None
    try:
        return [host.decode("latin-1"), int(port or b"0")]
    except ValueError:
        return [host.decode("latin-1"), 0]


def build_scope(params, state):
    """The HTTP scope of a request from its CGI params, mapped as the WSGI environ is.
    Returns (scope, request id, file roots or None)."""
    env = dict(params)
    script, path_info = env.get(b"SCRIPT_NAME", b""), env.get(b"PATH_INFO", b"")
    full = script + path_info
    # REQUEST_URI is what the client asked for, before the web server's rewrites: it is the
    # raw path only when it still decodes to the path the app is given.
    uri_path = env.get(b"REQUEST_URI", b"").partition(b"?")[0]
    if not uri_path or urllib.parse.unquote_to_bytes(uri_path) != full:
        uri_path = urllib.parse.quote_from_bytes(full, safe="/:@!$&'()*+,;=~").encode("ascii")
    headers = []
    for name, value in params:
        if name.startswith(b"HTTP_"):
            if name in (b"HTTP_CONTENT_TYPE", b"HTTP_CONTENT_LENGTH") and name[5:] in env:
                continue  # CGI's own CONTENT_TYPE / CONTENT_LENGTH win, as in the environ
            headers.append((name[5:].lower().replace(b"_", b"-"), value))
    if env.get(b"CONTENT_TYPE"):
        headers.append((b"content-type", env[b"CONTENT_TYPE"]))
    if env.get(b"CONTENT_LENGTH", b"").isdigit():
        headers.append((b"content-length", env[b"CONTENT_LENGTH"]))
    https = env.get(b"HTTPS", b"").lower() in (b"on", b"1") or env.get(b"REQUEST_SCHEME", b"").lower() == b"https"
    rid = env.get(b"FCGIBRIDGE_REQUEST_ID", b"").decode("latin-1") or None
    scope = {
        "type": "http",
        "asgi": dict(ASGI_VERSION),
        "http_version": _http_version(env.get(b"SERVER_PROTOCOL", b"HTTP/1.1")),
        "method": env.get(b"REQUEST_METHOD", b"GET").decode("latin-1"),
        "scheme": "https" if https else "http",
        "path": _decode(full),
        "raw_path": uri_path,
        "query_string": env.get(b"QUERY_STRING", b""),
        "root_path": _decode(script),
        "headers": headers,
        "client": _host_port(env.get(b"REMOTE_ADDR"), env.get(b"REMOTE_PORT")),
        "server": _host_port(env.get(b"SERVER_NAME") or env.get(b"SERVER_ADDR"), env.get(b"SERVER_PORT")),
        "extensions": {"http.response.pathsend": {}},
        "fcgibridge.request_id": rid,
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope, rid, env.get(b"FCGIBRIDGE_FILE_ROOTS")


def _status_line(status):
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return b"Status: %d %s\r\n" % (status, reason.encode("latin-1"))


def _head(status, headers, content_length):
    """The CGI header block; Content-Length added when the whole body is known."""
    lines = [_status_line(status)]
    has_length = False
    for name, value in headers:
        name, value = bytes(name), bytes(value)
        if b"\n" in name or b"\r" in name or b":" in name or b"\n" in value or b"\r" in value:
            raise RuntimeError("response header %r has a line break or colon in it" % (name,))
        if name.lower() == b"content-length":
            has_length = True
        lines.append(name + b": " + value + b"\r\n")
    if content_length is not None and not has_length and status not in NO_BODY_STATUSES and status >= 200:
        lines.append(b"Content-Length: %d\r\n" % content_length)
    lines.append(b"\r\n")
    return b"".join(lines)


class Request:
    """One request: its app task, its body as it arrives, its response as the app sends it."""

    def __init__(self, conn, rid, role):
        self.conn = conn
        self.rid = rid
        self.role = role
        self.params = bytearray()
        self.scope = None
        self.request_id = None
        self.file_roots = None
        self.body = collections.deque()
        self.body_bytes = 0
        self.body_done = role == AUTHORIZER
        self.body_given = False
        self.wake = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.disconnected = False
        self.start = None
        self.head_sent = False
        self.complete = False
        self.ended = False
        self.is_head = False
        self.task = None

    # -- from the connection reader

    def feed(self, data):
        if self.complete or self.ended:
            return
        if data:
            self.body.append(data)
            self.body_bytes += len(data)
            if self.body_bytes >= BODY_HIGH:
                self.space.clear()
        else:
            self.body_done = True
        self.wake.set()

    def abort(self):
        """FCGI_ABORT_REQUEST or a closed connection: the app sees http.disconnect, its
        sends raise ClientDisconnected, and the request ends toward the bridge at once."""
        self.disconnected = True
        self.wake.set()
        self.space.set()
        self.end(0)

    # -- the ASGI callables

    async def receive(self):
        while True:
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
            if self.body or (self.body_done and not self.body_given):
                data = b"".join(self.body)
                self.body.clear()
                self.body_bytes = 0
                self.space.set()
                more = not self.body_done
                self.body_given = not more
                return {"type": "http.request", "body": data, "more_body": more}
            self.wake.clear()
            await self.wake.wait()

    async def send(self, message):
        kind = message["type"]
        if self.disconnected:
            raise ClientDisconnected("the client went away (request %s)" % self.request_id)
        if self.complete:
            raise RuntimeError("%s sent after the response was complete" % kind)
        if kind == "http.response.start":
            if self.start is not None:
                raise RuntimeError("http.response.start sent twice")
            self.start = (int(message["status"]), list(message.get("headers", ())))
            return
        if self.start is None:
            raise RuntimeError("%s sent before http.response.start" % kind)
        if kind == "http.response.body":
            await self._body(bytes(message.get("body", b"")), bool(message.get("more_body", False)))
        elif kind == "http.response.pathsend":
            await self._pathsend(message["path"])
        else:
            raise RuntimeError("unknown ASGI message type %r" % kind)

    async def _body(self, data, more):
        out = b""
        if not self.head_sent:
            status, headers = self.start
            out = _head(status, headers, None if more else len(data))
            self.head_sent = True
        if data and not self.is_head:
            out += data
        records = record(STDOUT, self.rid, out) if out else b""
        if not more:
            self.complete = True
            self.wake.set()
            records += self._end_records(0)  # head, body and end in one write
        if records:
            self.conn.write(records)
        await self.conn.drain()

    async def _pathsend(self, path):
        status, headers = self.start
        real = os.path.realpath(path)
        size = os.stat(real).st_size
        if not self.head_sent and self._may_hand_off(real, status, headers, size):
            # docs/file-handoff.md: the bridge (or the web server) sends the file.
            kept = [(n, v) for n, v in headers if bytes(n).lower() != b"content-length"]
            self.start = (status, kept + [(b"X-Sendfile", real.encode("ascii"))])
            await self._body(b"", False)
            return
        with open(real, "rb") as f:
            if not self.head_sent:
                self.start = (status, headers)
                if not any(bytes(n).lower() == b"content-length" for n, _ in headers):
                    self.start = (status, headers + [(b"content-length", str(size).encode())])
            while True:
                chunk = f.read(FILE_CHUNK)
                if not chunk:
                    break
                await self._body(chunk, True)
                if self.disconnected:
                    return
        await self._body(b"", False)

    def _may_hand_off(self, real, status, headers, size):
        if not self.file_roots or status != 200:
            return False
        # Only paths every hand-off reader takes literally (no %, printable ASCII).
        if not all(0x20 <= ord(c) < 0x7F and c != "%" for c in real):
            return False
        for name, value in headers:
            if bytes(name).lower() == b"content-length" and bytes(value).strip() != str(size).encode():
                return False
        for root in self.file_roots.split(b":"):
            root = root.decode("latin-1").rstrip("/")
            if root and (real == root or real.startswith(root + "/")):
                return True
        return False

    # -- toward the bridge

    def stderr(self, text):
        """Text for the bridge's log with pool, pid and request id: a STDERR record while
        the request is open; once it ended (an app that raises after its response was
        complete, as Starlette re-raises after its 500 page) a marked line on stderr."""
        if not self.ended:
            self.conn.write(record(STDERR, self.rid, text.encode("utf-8", "replace")))
            return
        line = json.dumps({"level": "ERROR", "logger": "fcgibridge.asgi", "msg": text.rstrip("\n"),
                           "request_id": self.request_id})
        sys.stderr.write(logging_bridge.MARKER + line + "\n")
        sys.stderr.flush()

    def end(self, app_status):
        """End the request toward the bridge (once)."""
        self.conn.write(self._end_records(app_status))

    def _end_records(self, app_status):
        if self.ended:
            return b""
        self.ended = True
        self.space.set()  # a reader paused on this request's unread body goes on
        self.conn.forget(self)
        return record(STDOUT, self.rid) + record(END_REQUEST, self.rid, END_BODY.pack(app_status, 0))

    async def run(self, worker):
        """The app's task: the app, then whatever the response still needs."""
        token = logging_bridge.REQUEST_ID.set(self.request_id)
        try:
            await worker.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            if not self.disconnected:
                self._failed(sys.exc_info())
        except asyncio.CancelledError:
            self.end(1)
            raise
        except Exception:  # noqa: BLE001 - every app error becomes a 500 or a cut-off response
            self._failed(sys.exc_info())
        else:
            if not self.complete and not self.disconnected:
                if self.start is None:
                    self._failed(None, "the application returned without sending http.response.start")
                else:
                    self._failed(None, "the application returned before the response was complete "
                                       "(its last http.response.body had more_body=True)")
        finally:
            logging_bridge.REQUEST_ID.reset(token)
            worker.done(self)

    def _failed(self, exc_info, text=None):
        if text is None:
            text = "".join(traceback.format_exception(*exc_info))
        self.stderr(text if text.endswith("\n") else text + "\n")
        if self.ended:
            return
        if not self.head_sent:
            page = ERROR_PAGE[:ERROR_PAGE.index(b"\r\n\r\n") + 4] if self.is_head else ERROR_PAGE
            self.conn.write(record(STDOUT, self.rid, page))
            self.head_sent = True
            self.complete = True
            self.end(0)
        else:
            self.end(1)  # non-zero: the bridge cuts the response off toward the web server


class Connection:
    """One FastCGI connection from the bridge (one request at a time from the bridge; more
    are served too, each by its own task)."""

    def __init__(self, worker, reader, writer):
        self.worker = worker
        self.reader = reader
        self.writer = writer
        self.requests = {}
        self.closed = False

    def write(self, data):
        if not self.closed:
            self.writer.write(data)

    async def drain(self):
        if self.closed:
            return
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            self._lost()

    def forget(self, req):
        if self.requests.get(req.rid) is req:
            del self.requests[req.rid]

    def _lost(self):
        """The connection ended. The bridge closes a connection with a request still running
        only when it gave up on that request (request-timeout shuts the connection down; a
        client that left is an ABORT_REQUEST instead): its task is cancelled, its coroutine
        stack logged first."""
        self.closed = True
        for req in list(self.requests.values()):
            running = req.task is not None and not req.task.done() and not req.disconnected
            req.abort()
            if running:
                self.worker.dump_stacks([req], "the bridge closed the connection of request %s (request-timeout?): "
                                                "cancelling its task" % req.request_id)
                req.task.cancel()

    async def serve(self):
        buf = b""
        try:
            while True:
                chunk = await self.reader.read(READ_SIZE)
                if not chunk:
                    break  # the bridge closed the connection: its requests are gone with it
                buf = buf + chunk if buf else chunk
                # Every whole record read at once: one await per read, not two per record.
                pos, n = 0, len(buf)
                while n - pos >= HEADER.size:
                    _version, rtype, rid, clen, plen = HEADER.unpack_from(buf, pos)
                    end = pos + HEADER.size + clen + plen
                    if end > n:
                        break
                    paused = self._record(rtype, rid, buf[pos + HEADER.size:pos + HEADER.size + clen])
                    pos = end
                    if paused is not None:
                        await paused.space.wait()  # the app has not read what it has: stop reading
                buf = buf[pos:]
        except (ConnectionError, OSError):
            pass  # the bridge closed the connection: its requests are gone with it
        except ProtocolError as exc:
            sys.stderr.write("fcgibridge worker: bad record from the bridge, connection closed: %s\n" % exc)
        except Exception:  # noqa: BLE001 - one connection's failure must not reach the loop
            sys.stderr.write("fcgibridge worker: connection closed after an error:\n" + traceback.format_exc())
        finally:
            self._lost()
            with contextlib.suppress(Exception):
                self.writer.close()

    def _record(self, rtype, rid, content):
        """Act on one record; returns the request whose unread body should pause reading."""
        req = self.requests.get(rid)
        if rtype == BEGIN_REQUEST:
            if len(content) < 3:
                raise ProtocolError("short BEGIN_REQUEST")
            role, _flags = struct.unpack_from(">HB", content)
            if role not in (RESPONDER, AUTHORIZER):
                self.write(record(END_REQUEST, rid, END_BODY.pack(0, UNKNOWN_ROLE)))
                return None
            self.requests[rid] = Request(self, rid, role)
            return None
        if req is None:
            if rid == 0 and rtype == GET_VALUES:
                self._get_values(content)
            elif rid == 0:
                self.write(record(UNKNOWN_TYPE, 0, bytes([rtype]) + b"\0" * 7))
            # else: a record for a request that already ended (late STDIN, ABORT): skipped
        elif rtype == PARAMS:
            if content and req.scope is None:
                req.params += content
            elif req.scope is None:
                req.scope, req.request_id, req.file_roots = build_scope(parse_pairs(bytes(req.params)),
                                                                        self.worker.state)
                req.params = None
                req.is_head = req.scope["method"] == "HEAD"
                self.worker.start(req)
        elif rtype == STDIN:
            req.feed(content)
            if not req.space.is_set():
                return req
        elif rtype == ABORT_REQUEST:
            req.abort()
        return None

    def _get_values(self, content):
        answers = {b"FCGI_MAX_CONNS": str(self.worker.concurrency).encode(),
                   b"FCGI_MAX_REQS": str(self.worker.concurrency).encode(),
                   b"FCGI_MPXS_CONNS": b"1"}
        asked = [name for name, _ in parse_pairs(content)]
        pairs = [(name, answers[name]) for name in asked if name in answers]
        self.write(record(GET_VALUES_RESULT, 0, encode_pairs(pairs)))


class LifespanFailed(Exception):
    """The app answered lifespan.startup.failed."""


class Lifespan:
    """The lifespan protocol: startup before READY, shutdown when the worker stops. An app
    that raises before answering startup does not support it, and is served without it."""

    def __init__(self, app, state):
        self.app = app
        self.state = state
        self.inbox = asyncio.Queue()
        self.answer = None
        self.task = None
        self.supported = True

    async def _send(self, message):
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(message)

    async def _run(self):
        scope = {"type": "lifespan", "asgi": dict(ASGI_VERSION), "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except BaseException as exc:  # noqa: B902 - reported through the answer
            if self.answer is not None and not self.answer.done():
                self.answer.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if self.answer is not None and not self.answer.done():
                self.answer.set_result(None)

    async def _ask(self, message):
        self.answer = asyncio.get_running_loop().create_future()
        await self.inbox.put({"type": message})
        return await self.answer

    async def startup(self):
        self.task = asyncio.ensure_future(self._run())
        try:
            reply = await self._ask("lifespan.startup")
        except Exception as exc:  # noqa: BLE001 - an app without lifespan support raises here
            self.supported = False
            sys.stderr.write("fcgibridge worker: the app does not support the ASGI lifespan protocol "
                             "(%s: %s); serving it without startup and shutdown events\n"
                             % (type(exc).__name__, exc))
            return
        kind = reply and reply.get("type")
        if kind == "lifespan.startup.failed":
            raise LifespanFailed("lifespan startup failed: %s" % (reply.get("message") or "(no message)"))
        if kind != "lifespan.startup.complete":
            self.supported = False

    async def shutdown(self):
        if not self.supported or self.task is None or self.task.done():
            return
        try:
            reply = await asyncio.wait_for(self._ask("lifespan.shutdown"), SHUTDOWN_TIMEOUT)
        except asyncio.TimeoutError:
            sys.stderr.write("fcgibridge worker: lifespan shutdown did not finish within %.0fs\n" % SHUTDOWN_TIMEOUT)
            return
        except Exception:  # noqa: BLE001 - the app's shutdown raised
            sys.stderr.write("fcgibridge worker: lifespan shutdown raised:\n" + traceback.format_exc())
            return
        if reply and reply.get("type") == "lifespan.shutdown.failed":
            sys.stderr.write("fcgibridge worker: lifespan shutdown failed: %s\n" % (reply.get("message") or ""))


class Worker:
    """The event loop's state: the app, the requests in flight, the stop signal."""

    def __init__(self, app, concurrency):
        self.app = app
        self.concurrency = concurrency
        self.state = {}
        self.running = set()
        self.idle = None
        self.stop = None

    def start(self, req):
        req.task = asyncio.ensure_future(req.run(self))
        self.running.add(req)
        self.idle.clear()

    def done(self, req):
        self.running.discard(req)
        if not self.running:
            self.idle.set()

    def dump_stacks(self, requests=None, why=None):
        """SIGUSR2 (slowlog, startup-timeout): the coroutine stack of every request's task
        (or of `requests`), each line marked with the request id, as stackdump.py does for
        threads."""
        lines = ["fcgibridge worker: %s\n" % why] if why else []
        for req in list(self.running) if requests is None else requests:
            if req.task is None or req.task.done():
                continue
            prefix = "[stack request_id=%s task=%s] " % (req.request_id, id(req.task))
            lines.append(prefix + "coroutine stack, most recent call last:\n")
            frames = _await_chain(req.task)
            for entry in traceback.StackSummary.extract((f, f.f_lineno) for f in frames).format():
                for line in entry.rstrip("\n").split("\n"):
                    lines.append(prefix + line + "\n")
        if lines:
            sys.stderr.write("".join(lines))
            sys.stderr.flush()

    async def main(self, listen_fd, on_ready):
        loop = asyncio.get_running_loop()
        self.idle = asyncio.Event()
        self.idle.set()
        self.stop = asyncio.Event()
        lifespan = Lifespan(self.app, self.state)
        await lifespan.startup()
        sock = socket.socket(fileno=listen_fd)
        sock.setblocking(False)

        async def accepted(reader, writer):
            await Connection(self, reader, writer).serve()

        server = await asyncio.start_unix_server(accepted, sock=sock)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR2, self.dump_stacks)
        on_ready()
        await self.stop.wait()
        # The bridge sends SIGTERM once this worker has nothing in flight; a request that
        # is still running (an operator's kill) gets the shutdown timeout to finish.
        server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), SHUTDOWN_TIMEOUT)
        await lifespan.shutdown()


def _await_chain(task):
    """The frames of a suspended task from its coroutine down to the awaitable it waits on
    (Task.get_stack gives only the outermost frame of a suspended coroutine)."""
    frames = []
    coro = task.get_coro()
    while coro is not None and len(frames) < 200:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return frames


def new_loop(choice):
    """The event loop `asgi-loop` asks for: uvloop when installed (auto) or required."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                from .main import LoadError

                raise LoadError("asgi-loop: uvloop, but uvloop is not installed in this pool's Python "
                                "(pip install uvloop there, or set asgi-loop: asyncio)")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(app, listen_fd, ready_fd, concurrency):
    """Run the event loop until SIGTERM; exits the process (never returns)."""
    from . import main as _main

    # SIGUSR2 stays with faulthandler (main._supervision_signals: every thread's stack, for
    # a lifespan startup that misses startup-timeout) until the loop serves and takes it.
    logging_bridge.install()
    try:
        loop = new_loop(os.environ.get("FCGIBRIDGE_ASGI_LOOP", "auto").strip() or "auto")
    except BaseException as exc:  # noqa: B902 - reported as a start-up failure
        _main.report_load_failure(exc, ready_fd)
    asyncio.set_event_loop(loop)
    worker = Worker(app, concurrency)
    code = 0
    ready = []

    def on_ready():
        ready.append(True)
        _main._write_ready(ready_fd, "READY asgi\n")

    try:
        loop.run_until_complete(worker.main(listen_fd, on_ready))
    except LifespanFailed as exc:
        _main.report_load_failure(_main.LoadError(str(exc)), ready_fd)
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # noqa: B902 - before READY a failure is a start-up failure
        if not ready:
            _main.report_load_failure(exc, ready_fd)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


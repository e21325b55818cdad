"""The ASGI worker (``interface: asgi``; docs/asgi.md).

One event loop per process. The bridge opens ``concurrency`` FastCGI connections to the
listening socket on fd 0 and sends one request at a time on each; every request runs as
a task of its own, so a worker holds as many requests in flight as it has connections.
Each connection is an ``asyncio.Protocol``; its records are decoded and the scope built by
the native module (``_native.AsgiConnection``), and a response's head, body and end are
encoded there into one write. A full socket buffer toward the bridge pauses the app's
``send`` (back-pressure), and a request body that the app does not read pauses reading
that connection.

In direct mode (FCGIBRIDGE_DIRECT=1, docs/worker-contract.md "Direct mode") the loop
accepts the web server's own connections instead (DirectWorker, DirectConnection,
DirectRequest): the daemon's classes are left as they are, so their requests pay nothing
for it.
"""
import asyncio
import collections
import contextlib
import http
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

from . import ClientDisconnected
from . import _native
from . import logging_bridge
from .stackdump import one_line

# FastCGI 1.0 record types, roles and protocol statuses.
END_REQUEST, STDOUT, STDERR = 3, 6, 7
RESPONDER, AUTHORIZER = 1, 2
HEADER = struct.Struct(">BBHHBx")
END_BODY = struct.Struct(">IB3x")
MAX_CONTENT = 65535
# A record header of version 0, which no FastCGI client accepts: written before a direct
# connection closes on a cut-off response where EOF alone would be its normal end.
INVALID_RECORD = bytes([0, 6, 0, 0, 0, 0, 0, 0])
# What _native.AsgiConnection.feed reports, as (kind, request id, payload); BEGIN's flags.
EV_BEGIN, EV_ABORT, EV_PARAMS, EV_STDIN, EV_REFUSE, EV_REPLY, EV_REPLY_LAST = 1, 2, 4, 5, 6, 10, 11
BEGIN_AUTHORIZER, BEGIN_KEEP_CONN = 1, 2
# Body bytes a request may hold unread before its connection stops being read.
BODY_HIGH = 1 << 20
# While a connection is not read, how often it is polled for the bridge's hang-up (the
# bridge's request-timeout shuts the connection down, which an unread socket never shows).
HANGUP_POLL = 0.5
HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000)
# A loop that has run no callback for this long is blocked by a request (a synchronous call
# in an async view): the loop thread's stack is logged, once per stretch (watch_loop).
LOOP_BLOCKED = 5.0
# Longest lifespan shutdown: the bridge sends SIGKILL 10 s after SIGTERM.
SHUTDOWN_TIMEOUT = 8.0
# Longest wait at SIGTERM for tasks still running (a response's background task): the pool's
# graceful-timeout when the bridge passes it (FCGIBRIDGE_GRACEFUL_TIMEOUT, seconds), else
# what fits before the bridge's SIGKILL 10 s after SIGTERM.
TASKS_TIMEOUT = 8.0
FILE_CHUNK = 256 * 1024
# The lifespan scope's spec_version is the lifespan spec's (2.0); the HTTP scope's is built in
# asgi_codec.rs ("2.3", as uvicorn says).
LIFESPAN_ASGI = {"version": "3.0", "spec_version": "2.0"}
# The worker's own pages (its 500; a direct worker's 504).
PAGE_HEADERS = ((b"Content-Type", b"text/plain; charset=utf-8"),)
# A direct worker's drain word when the bridge stops (no other worker takes over).
DRAIN_STOP = 2
# After accept() failed otherwise than for want of a connection (out of descriptors or
# memory: the condition may pass), the listener is watched again after this.
ACCEPT_RETRY = 1.0
# A retiring direct worker closes a kept connection once it has received nothing for this
# long: nginx's keepalive cache is last-in first-out, so the connection it got a response on
# last is the next one it writes a request to, and a close then meets that request.
RETIRE_QUIET = 1.0
# Under steady traffic a kept connection may never be quiet that long: past this much time
# retiring, one is closed after its next response (the race above, once per connection,
# rather than the bridge's kill at graceful-timeout).
RETIRE_PATIENCE = 5.0


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


_STATUS_LINES = {}


def _status_line(status):
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = b"Status: %d %s\r\n" % (status, reason.encode("latin-1"))
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


class Request:
    """One request: its app task, its body as it arrives, its response as the app sends it."""

    def __init__(self, conn, rid, flags):
        self.conn = conn
        self.rid = rid
        role = self.role = AUTHORIZER if flags & BEGIN_AUTHORIZER else RESPONDER
        self.scope = None
        self.request_id = None
        self.file_roots = None
        self.body = collections.deque()
        self.body_bytes = 0
        self.body_done = role == AUTHORIZER
        self.body_given = False
        self.waiter = None  # the future receive() waits on, only while it waits
        self.disconnected = False
        self.start = None
        self.head_sent = False
        self.complete = False
        self.ended = False
        self.is_head = False
        self.task = None
        self.redirect = None  # direct mode: the local redirect the app answered, to follow
        self.body_gone = False  # followed one: the app gets no body

    # -- from the connection

    def feed(self, data):
        if self.complete or self.ended:
            return
        if self.body_gone:  # a redirected request's: not the app's
            self.body_done = self.body_done or not data
            return
        if data:
            self.body.append(data)
            self.body_bytes += len(data)
            if self.body_bytes >= BODY_HIGH:
                self.conn.hold(self)
        else:
            self.body_done = True
        self._wake()

    def abort(self):
        """FCGI_ABORT_REQUEST or a closed connection: the app sees http.disconnect, its
        sends raise ClientDisconnected, and the request ends toward the bridge at once."""
        self.disconnected = True
        self._wake()
        self.end(0)

    def line(self):
        """`METHOD URI`, the URI as the web server's REQUEST_URI (the scope's raw_path and
        query string)."""
        scope = self.scope or {}
        uri = bytes(scope.get("raw_path") or scope.get("path", "?").encode("utf-8", "replace"))
        query = scope.get("query_string")
        if query:
            uri += b"?" + bytes(query)
        return "%s %s" % (scope.get("method", "?"), uri.decode("latin-1"))

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the ASGI callables

    async def receive(self):
        while True:
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
            if self.body_gone and not self.body_given:
                self.body_given = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.body or (self.body_done and not self.body_given):
                data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
                self.body.clear()
                self.body_bytes = 0
                self.conn.release(self)
                more = not self.body_done
                self.body_given = not more
                return {"type": "http.request", "body": data, "more_body": more}
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message):
        kind = message["type"]
        if self.disconnected:
            raise ClientDisconnected("the client went away (request %s)" % self.request_id)
        if self.complete:
            raise RuntimeError("%s sent after the response was complete" % kind)
        if self.redirect is not None and kind != "http.response.start":
            return  # the body of a local redirect the worker follows: dropped
        if kind == "http.response.body":
            if self.start is None:
                raise RuntimeError("%s sent before http.response.start" % kind)
            await self._body(message.get("body", b""), bool(message.get("more_body", False)))
        elif kind == "http.response.start":
            if self.start is not None:
                raise RuntimeError("http.response.start sent twice")
            self.start = (int(message["status"]), message.get("headers", ()))
        elif self.start is None:
            raise RuntimeError("%s sent before http.response.start" % kind)
        elif kind == "http.response.pathsend":
            await self._pathsend(message["path"])
        else:
            raise RuntimeError("unknown ASGI message type %r" % kind)

    async def _body(self, data, more):
        try:
            if self.head_sent:
                out = self.conn.codec.encode_response(self.rid, None, (), 0, data, more, self.is_head)
            else:
                status, headers = self.start
                out = self.conn.codec.encode_response(self.rid, _status_line(status), headers, status, data, more,
                                                      self.is_head)
                self.head_sent = True
        except _native.LocalRedirect as local:
            self.redirect = local.args[0]  # followed once the app returns (run)
            return
        except _native.ResponseCutOff as cut:
            # Direct mode: the response ended before its Content-Length (the codec logged
            # it). What it had goes out, then the cut that fails it, as through the bridge.
            self.head_sent = True
            self.conn.write(cut.args[0])
            self.end(1)
            return
        if out:
            self.conn.write(out)
        if not more:
            # head, body and end in one write, before _ended (which may close the connection)
            self.complete = True
            self._wake()
            self._ended()
        if self.conn.paused:
            await self.conn.drain()

    async def _pathsend(self, path):
        status, headers = self.start
        headers = list(headers)
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
                if self.disconnected or self.redirect is not None:
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

    def stderr(self, text, level="ERROR"):
        """Text for the bridge's log with pool, pid and request id: a STDERR record while
        the request is open; once it ended (an app that raises after its response was
        complete, as Starlette re-raises after its 500 page), or for a `level` other than
        ERROR, a marked line on stderr at `level`."""
        if not self.ended and level == "ERROR":
            self.conn.write(record(STDERR, self.rid, text.encode("utf-8", "replace")))
            return
        log_line(level, text, self.request_id)

    def end(self, app_status):
        """End the request toward the bridge (once)."""
        if not self.ended:
            self.conn.write(record(STDOUT, self.rid) + record(END_REQUEST, self.rid, END_BODY.pack(app_status, 0)))
            self._ended()

    def _page(self, status, text):
        """The worker's own response (its 500, a direct worker's 504), which ends the request."""
        self.head_sent = self.complete = True
        out = self.conn.codec.encode_response(self.rid, _status_line(status), PAGE_HEADERS, status, text, False,
                                              self.is_head)
        self.conn.write(out)
        self._ended()

    def _ended(self):
        self.ended = True
        self.conn.release(self)  # a reader paused on this request's unread body goes on
        self.conn.forget(self)

    async def run(self, worker):
        """The app's task: the app, then whatever the response still needs."""
        token = logging_bridge.REQUEST_ID.set(self.request_id)
        try:
            await worker.app(self.scope, self.receive, self.send)
            while self.redirect is not None and self._follow_redirect(worker):
                await worker.app(self.scope, self.receive, self.send)
        except (asyncio.CancelledError, GeneratorExit):
            self.end(1)
            raise
        except BaseException as exc:  # noqa: B902 - every app error (SystemExit too) is this request's 500
            if not self.disconnected:
                self._failed(sys.exc_info())
            elif not isinstance(exc, ClientDisconnected):
                # The client left first: what the app raised on its way out (Starlette's
                # ClientDisconnect) is not an application error.
                self.stderr("request %s: the client went away; the app then ended with %s: %s"
                            % (self.request_id, type(exc).__name__, exc), "INFO")
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

    def _follow_redirect(self, worker):
        """Direct mode: make the request the target of the local redirect the app answered,
        as the bridge would (a GET without a body, the REDIRECT_* variables: the codec);
        false when it is not followed (the client left, or past max-redirects: a 500)."""
        target, self.redirect = self.redirect, None
        if self.disconnected or self.ended:
            return False
        got = self.conn.codec.redirect(self.rid, target, worker.state)
        if got is None:
            self._page(500, b"500 Internal Server Error\n")
            return False
        self.scope, _, self.file_roots, self.is_head = got
        self.start = None
        self.body.clear()
        self.body_bytes = 0
        self.body_gone = True
        self.body_given = False
        self.conn.release(self)  # a reader paused on the first app's unread body goes on
        return True

    def _failed(self, exc_info, text=None):
        if text is None:
            text = "".join(traceback.format_exception(*exc_info))
        self.stderr(text if text.endswith("\n") else text + "\n")
        if self.ended:
            return
        if not self.head_sent:
            self._page(500, b"500 Internal Server Error\n")
        else:
            self.end(1)  # non-zero: the bridge cuts the response off toward the web server


class Connection(asyncio.Protocol):
    """One FastCGI connection from the bridge (one request at a time from the bridge; more
    are served too, each by its own task)."""

    request_type = Request
    peer = "the bridge"

    def __init__(self, worker):
        self.worker = worker
        self.codec = _native.AsgiConnection(worker.concurrency)
        self.transport = None
        self.requests = {}
        self.closed = False
        self.paused = False
        self.drain_waiters = []
        self.holding = set()
        self.hangup_poll = None  # the timer of _poll_hangup while reading is paused

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            events = self.codec.feed(data, self.worker.state)
            ready = []
            for kind, rid, payload in events:
                if self._event(kind, rid, payload):
                    ready.append(self.requests[rid])
            # Started once the whole read is applied: a body that came with the params is
            # there when the app first asks for it, and one aborted meanwhile never starts.
            for req in ready:
                if not req.disconnected and not req.ended:
                    self.worker.start(req)
        except _native.AsgiProtocolError as exc:
            sys.stderr.write("fcgibridge worker: bad record from %s, connection closed: %s\n" % (self.peer, exc))
            self.transport.abort()
            self._lost()
        except Exception:  # noqa: BLE001 - one connection's failure must not reach the loop
            sys.stderr.write("fcgibridge worker: connection closed after an error:\n" + traceback.format_exc())
            self.transport.abort()
            self._lost()

    def eof_received(self):
        return False  # the bridge closed the connection: its requests are gone with it

    def connection_lost(self, exc):
        self._lost()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._wake_drainers()

    # -- for the requests

    def write(self, data):
        if not self.closed:
            self.transport.write(data)

    async def drain(self):
        """Wait until the socket toward the bridge takes more (or the connection is gone)."""
        if self.closed or not self.paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self.drain_waiters.remove(waiter)

    def _wake_drainers(self):
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def hold(self, req):
        """``req`` has too much unread body: stop reading until its app reads or it ends."""
        if not self.holding and not self.closed:
            self.transport.pause_reading()
            self.hangup_poll = asyncio.get_running_loop().call_later(HANGUP_POLL, self._poll_hangup)
        self.holding.add(req)

    def _poll_hangup(self):
        """While reading is paused, see whether the bridge shut the connection down."""
        if self.closed or not self.holding:
            return
        poller = select.poll()
        poller.register(self.transport.get_extra_info("socket").fileno(), HANGUP)
        if poller.poll(0):
            self.transport.abort()
            self._lost()
        else:
            self.hangup_poll = asyncio.get_running_loop().call_later(HANGUP_POLL, self._poll_hangup)

    def release(self, req):
        if req in self.holding:
            self.holding.discard(req)
            if not self.holding and not self.closed:
                self.hangup_poll.cancel()
                self.transport.resume_reading()

    def forget(self, req):
        if self.requests.get(req.rid) is req:
            del self.requests[req.rid]
            self.codec.end_request(req.rid, req.disconnected and not req.head_sent)

    def _event(self, kind, rid, payload):
        """Apply one decoded event; true when it makes request ``rid`` ready to start."""
        if kind == EV_STDIN:
            req = self.requests.get(rid)
            if req is not None:
                req.feed(payload)
        elif kind == EV_PARAMS:
            req = self.requests.get(rid)
            if req is not None and req.scope is None:
                req.scope, req.request_id, req.file_roots, req.is_head = payload
                return True
        elif kind == EV_BEGIN:
            self.requests[rid] = self.request_type(self, rid, payload)
        elif kind == EV_ABORT:
            req = self.requests.get(rid)
            if req is not None:
                req.abort()
        elif kind == EV_REFUSE:
            req = self.requests.get(rid)
            if req is not None:
                req.refuse(*payload)
        else:  # EV_REPLY(_LAST): management answers, UNKNOWN_ROLE
            self.write(payload)
            if kind == EV_REPLY_LAST and not self.requests and not self.closed:
                self.transport.close()  # a refused request without FCGI_KEEP_CONN: FastCGI closes after it

    def _lost(self):
        """The connection ended: its requests see http.disconnect."""
        if self.closed:
            return
        self.closed = True
        self._wake_drainers()
        self.holding.clear()
        for req in list(self.requests.values()):
            running = req.task is not None and not req.task.done() and not req.disconnected
            req.abort()
            if running:
                self._given_up(req)

    def _given_up(self, req):
        """The bridge closes a connection with a request still running only when it gave up
        on that request (request-timeout shuts the connection down; a client that left is an
        ABORT_REQUEST instead): its task is cancelled, its coroutine stack logged first."""
        self.worker.dump_stacks([req], "the bridge closed the connection of request %s (request-timeout?): "
                                        "cancelling its task" % req.request_id)
        req.task.cancel()


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
        scope = {"type": "lifespan", "asgi": dict(LIFESPAN_ASGI), "state": self.state}
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
            # INFO: every Django app says so at every worker start; nothing for an operator to do.
            log_line("INFO", "fcgibridge worker: the app does not support the ASGI lifespan protocol "
                             "(%s: %s); serving it without startup and shutdown events" % (type(exc).__name__, exc))
            return
        kind = reply and reply.get("type")
        if kind == "lifespan.startup.failed":
            raise LifespanFailed("lifespan startup failed: %s" % _failure_summary(reply.get("message")))
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
        # First: an eager task can end before Task() returns, and done() must find it.
        self.running.add(req)
        req.task = new_task(req.run(self))

    def done(self, req):
        self.running.discard(req)
        if not self.running and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def dump_stacks(self, requests=None, why=None):
        """SIGUSR2 (slowlog, startup-timeout): the coroutine stack of every request's task
        (or of `requests`), each line marked with the request id, as stackdump.py does for
        threads."""
        lines = ["fcgibridge worker: %s\n" % why] if why else []
        for req in list(self.running) if requests is None else requests:
            if req.task is None or req.task.done():
                continue
            prefix = "[stack request_id=%s task=%s] " % (req.request_id, id(req.task))
            lines.append(prefix + "coroutine stack of %s, most recent call last:\n" % one_line(req.line()))
            frames = _await_chain(req.task)
            for entry in traceback.StackSummary.extract((f, f.f_lineno) for f in frames).format():
                for line in entry.rstrip("\n").split("\n"):
                    lines.append(prefix + line + "\n")
        if lines:
            sys.stderr.write("".join(lines))
            sys.stderr.flush()

    async def listen(self, loop, listen_fd):
        """Serve the bridge's connections to the listening socket; returns what stops that."""
        sock = socket.socket(fileno=listen_fd)
        sock.setblocking(False)
        # The bridge opens all `concurrency` connections at once: a backlog that holds
        # them (asyncio's default of 100 would replace the bridge's and refuse the rest).
        server = await loop.create_unix_server(lambda: Connection(self), sock=sock,
                                               backlog=max(self.concurrency, 128))
        return server.close

    async def main(self, listen_fd, on_ready):
        loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        lifespan = Lifespan(self.app, self.state)
        await lifespan.startup()
        stop_serving = await self.listen(loop, listen_fd)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR2, self.dump_stacks)
        # SIGINT (the whole process group): out of the loop, exit 130, as before the loop
        # serves; never a KeyboardInterrupt inside a request's task, where it would be that
        # request's 500 (Request.run).
        loop.add_signal_handler(signal.SIGINT, _interrupt)
        on_ready()
        await self.stop.wait()
        stop_serving()
        await self._finish_tasks(loop)
        await lifespan.shutdown()

    async def _finish_tasks(self, loop):
        """The bridge sends SIGTERM once this worker has no request in flight, but an app's
        task may still run after its response was complete (a FastAPI/Starlette background
        task), or a request may still run (an operator's kill): they get the pool's
        graceful-timeout (TASKS_TIMEOUT without it); each still running then is cancelled,
        with a warning line."""
        if not self.running:
            return
        timeout = _env_seconds("FCGIBRIDGE_GRACEFUL_TIMEOUT", TASKS_TIMEOUT)
        self.idle = loop.create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle, timeout)
        tasks = []
        for req in list(self.running):
            if req.task is None or req.task.done():
                continue
            scope = req.scope or {}
            what = "its response was complete" if req.ended else "its response was not complete"
            log_line("WARNING", "fcgibridge worker: stopping: request %s (%s %s) still runs %.0fs after SIGTERM "
                                "(%s; a background task?): cancelling it"
                     % (req.request_id, scope.get("method", "?"), scope.get("path", "?"), timeout, what),
                     req.request_id)
            req.task.cancel()
            tasks.append(req.task)
        if tasks:
            # Let their `finally` blocks run; a task that swallows the cancellation is left.
            await asyncio.wait(tasks, timeout=1.0)


# -- direct mode (docs/worker-contract.md, "Direct mode")


class DirectRequest(Request):
    """A request from the web server itself."""

    def __init__(self, conn, rid, flags):
        super().__init__(conn, rid, flags)
        self.keep_conn = flags & BEGIN_KEEP_CONN
        self.admitted = False  # its task started (it took one of the `concurrency` places)

    def stderr(self, text, level="ERROR"):
        # Never a STDERR record: that would go to the web server's error log, not the bridge's.
        # The request line leads, as the WSGI worker's prefix: no access log has it here.
        log_line(level, "[%s] %s" % (self.line(), text), self.request_id)

    def end(self, app_status):
        """A response cut off after its head gets no END_REQUEST (nginx ignores app_status:
        the client would take it for complete): its connection closes, the way the web
        server reads as a failed response (docs/architecture.md, "Cut off")."""
        if app_status == 0 or not self.head_sent or self.ended or self.disconnected or self.conn.closed:
            Request.end(self, app_status)
            return
        self.stderr("the response was cut off after its head: closing the connection without END_REQUEST")
        self.conn.cut_off(self.keep_conn)  # before the request's end, which would close it plainly
        if not self.ended:
            self._ended()

    def refuse(self, why, input_ended):
        """What the bridge's listeners answer 400 (a CONTENT_LENGTH that is no body length,
        a body that ended before it): so here, before the app runs. An app already running
        is told the client went away, as when the bridge ends a short body. Refused before
        its input ended, the rest of the input is read and dropped before a close
        (DirectConnection.request_ended)."""
        self.body_done = input_ended
        if self.body_gone:
            return  # redirected: the request has no body to be short
        if self.task is None:
            what = "answering 400 without running the app"
        else:
            what = ("cutting its response off" if self.head_sent else "answering 400") + \
                "; the app is told the client went away"
        self.stderr("fcgibridge worker: %s: %s" % (why, what), "WARNING")
        if not self.head_sent:
            self._page(400, b"400 Bad Request\n")
        else:
            self.conn.cut_off(self.keep_conn)  # not end(1): the app did not fail
            if not self.ended:
                self._ended()
        self.disconnected = True
        self._wake()

    def _ended(self):
        Request._ended(self)  # the codec gives its scoreboard slot back
        self.conn.worker.request_ended(self)


class DirectConnection(Connection):
    """A connection from the web server: closed after a request without FCGI_KEEP_CONN,
    when it sends no complete request within header-timeout, and once the worker retires,
    when it has been quiet for RETIRE_QUIET."""

    request_type = DirectRequest
    peer = "the web server"

    def __init__(self, worker):
        super().__init__(worker)
        self.idle_since = None  # loop time since it waits for a request's params; None: one runs
        self.idle_timer = None
        self.lingering = None  # the timer of a lingering close

    def connection_made(self, transport):
        super().connection_made(transport)
        self.worker.conns.add(self)
        self.wait()

    def connection_lost(self, exc):
        super().connection_lost(exc)
        for timer in (self.idle_timer, self.lingering):
            if timer is not None:
                timer.cancel()
        self.worker.connection_closed(self)

    def data_received(self, data):
        if self.lingering is None:
            Connection.data_received(self, data)
        elif self.codec.linger_after(data):
            self.transport.close()

    def _given_up(self, req):
        """The web server closes a connection when its client left: http.disconnect says it
        (Request.abort); the task is neither cancelled nor a suspect."""

    def cut_off(self, kept):
        """Close on a response cut off, and end its requests: a kept connection's EOF without
        END_REQUEST fails it; otherwise EOF would be its normal end, so a TCP connection is
        reset, and a unix one gets an invalid record first (unless the web server is not
        reading: then what is buffered is dropped and nothing more can be said)."""
        buffered = self.transport.get_write_buffer_size()
        self._lost()
        if buffered:
            self.transport.abort()
        elif kept:
            self.transport.close()
        else:
            self.transport.pause_reading()
            self._signal_cut_off(_native.CUT_OFF_LOOKS)

    def _signal_cut_off(self, looks):
        """The reset or invalid record once the web server has read what was sent: in the
        same read it drops the head before its client has it (a 502 rather than a cut
        response), as the WSGI worker waits too (direct.rs, end_cut_off)."""
        if self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            self.transport.close()
            return
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        if tcp and looks == _native.CUT_OFF_LOOKS:  # a TCP peer's unread count is not observable
            self.worker.loop.call_later(_native.CUT_OFF_TCP_WAIT, self._signal_cut_off, 0)
            return
        if not tcp and looks and _native.unsent_bytes(sock.fileno()):
            self.worker.loop.call_later(_native.CUT_OFF_LOOK, self._signal_cut_off, looks - 1)
            return
        if tcp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self.transport.write(INVALID_RECORD)
        self.transport.close()

    def wait(self):
        """Wait for the next request, for header-timeout (RETIRE_QUIET once retiring). The
        timer is re-armed only when it fires (_idle_check), not for each request."""
        self.idle_since = self.worker.loop.time()
        if self.idle_timer is None:
            self.idle_timer = self.worker.loop.call_at(self.idle_since + self._idle_limit(), self._idle_check)

    def _idle_limit(self):
        if self.worker.draining:
            return min(RETIRE_QUIET, self.worker.header_timeout)
        return self.worker.header_timeout

    def retiring(self):
        """The worker retires: its timer, armed for header-timeout, fires by RETIRE_QUIET."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
            self._idle_check()

    def idle(self):
        """Waiting for a request, with nothing of one received or waiting to be read."""
        if self.idle_since is None or self.requests or self.codec.buffered():
            return False
        poller = select.poll()
        poller.register(self.transport.get_extra_info("socket").fileno(), select.POLLIN)
        return not poller.poll(0)

    def _idle_check(self):
        self.idle_timer = None
        if self.closed or self.idle_since is None:
            return  # a request runs: its end waits again
        now = self.worker.loop.time()
        if self.idle_since + self.worker.header_timeout <= now:
            _native.log_header_timeout()
            self.transport.close()
            return
        due = self.idle_since + self._idle_limit()
        if due <= now:
            if self.idle():  # retiring, and nothing received: the web server stopped reusing it
                self.transport.close()
                return
            due = now + RETIRE_QUIET  # part of a request came: header-timeout still bounds it
        self.idle_timer = self.worker.loop.call_at(min(due, self.idle_since + self.worker.header_timeout),
                                                   self._idle_check)

    def request_ended(self, req):
        """After a request's end: wait for the next one, or close."""
        if self.closed or (self.requests and any(r.scope is not None for r in self.requests.values())):
            return  # another request runs on it: its end decides
        if req.keep_conn and not self.worker.out_of_patience():
            self.wait()  # also while retiring: the web server may be writing its next request
        elif req.body_done or req.disconnected or self.codec.linger(req.rid):
            self.transport.close()
        else:
            # Answered before the web server sent the end of the request's input (Apache's
            # mod_proxy_fcgi sends it apart; nginx, the rest of an upload the app did not
            # read): a close now would fail its write. The web server sees the response end,
            # and what it sends is read and discarded until that end, EOF or LINGER_TIME.
            self.transport.write_eof()
            self.lingering = self.worker.loop.call_later(_native.LINGER_TIME, self.transport.close)


class DirectWorker(Worker):
    """The loop accepts the web server's connections on the listening socket (shared by the
    pool's workers) itself, one per wake-up, so that they spread over the processes. At most
    `concurrency` requests run; one more waits, first come first served, until one of them
    ends (accepting goes on: a connection that only waited in the socket's backlog would
    wait behind every request of the connections already held). A request in flight holds
    a scoreboard slot. The bridge's drain word retires the worker, request-timeout is
    applied here, counted from the request's arrival."""

    def __init__(self, app, concurrency, header_timeout, request_timeout):
        super().__init__(app, concurrency)
        self.header_timeout = header_timeout
        self.request_timeout = request_timeout
        self.loop = None
        self.listener = None
        self.conns = set()
        self.opening = 0  # accepted, its connection not made yet
        self.in_flight = {}  # request: loop time of its arrival (its PARAMS), oldest first
        self.active = 0  # requests admitted (their task started) and not ended
        self.waiting = collections.deque()  # requests to admit, oldest first
        self.admitting = False  # _admit is scheduled
        self.reading = False  # the listener is watched
        self.accepting = True  # until drain or SIGTERM
        self.draining = False
        self.retired_at = None  # loop time of the drain
        self.stop_window = None  # the bridge stops: the timer of the last queued accepts
        self.timeout_timer = None

    async def listen(self, loop, listen_fd):
        self.loop = loop
        # Never listen() on it (asyncio's servers do): the backlog is the operator's.
        self.listener = socket.socket(fileno=listen_fd)
        self.listener.setblocking(False)
        _native.scoreboard_serve(self.concurrency)
        self._watch(True)
        loop.call_later(_native.DRAIN_CHECK, self._check_drain)
        return self._stop_accepting

    def _watch(self, on):
        if on != self.reading:
            self.reading = on
            if on:
                self.loop.add_reader(self.listener.fileno(), self._accept)
            else:
                self.loop.remove_reader(self.listener.fileno())

    def _resume(self):
        if self.accepting:
            self._watch(True)

    def _accept(self):
        """One connection per call: the reader is called again while more wait, and the
        pool's other workers get theirs. While the bridge stops, on until the queue is empty."""
        if not self.accepting:
            return
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:  # none left, or another worker took it
            if self.stop_window is not None:
                self._retire()
            return
        except ConnectionAbortedError:  # gone before it was accepted
            sock = None
        except OSError as exc:
            sys.stderr.write("fcgibridge worker: accept failed, retrying: %s\n" % exc)
            self._watch(False)
            self.loop.call_later(ACCEPT_RETRY, self._resume)
            return
        if sock is not None:
            self.opening += 1
            new_task(self._open(sock))
        if self.stop_window is not None:
            self.loop.call_soon(self._accept)  # between the loop's other callbacks

    async def _open(self, sock):
        try:
            await self.loop.connect_accepted_socket(lambda: DirectConnection(self), sock)
        except Exception as exc:  # noqa: BLE001 - that connection's loss only
            sys.stderr.write("fcgibridge worker: cannot serve an accepted connection: %s\n" % exc)
            sock.close()
        finally:
            self.opening -= 1
            self._exit_if_done()

    def start(self, req):
        # In flight from here to its end toward the web server (DirectRequest._ended).
        now = self.in_flight[req] = self.loop.time()
        req.conn.idle_since = None
        if self.request_timeout and self.timeout_timer is None:
            self.timeout_timer = self.loop.call_at(now + self.request_timeout, self._time_out)
        if self.active < self.concurrency and not self.waiting:
            self._admit_one(req)
        else:
            self.waiting.append(req)

    def _admit_one(self, req):
        self.active += 1
        req.admitted = True  # before the task: an eager one may end inside Worker.start
        Worker.start(self, req)

    def _admit(self):
        """Start the requests waiting, oldest first, while places are free (from the loop,
        not from the request that ended: eager tasks would nest one inside the other)."""
        self.admitting = False
        while self.waiting and self.active < self.concurrency:
            req = self.waiting.popleft()
            if not req.ended:  # else timed out or aborted while waiting
                self._admit_one(req)

    def request_ended(self, req):
        if self.in_flight.pop(req, None) is not None and req.admitted:
            self.active -= 1
            if self.waiting and not self.admitting:
                self.admitting = True
                self.loop.call_soon(self._admit)
        req.conn.request_ended(req)

    def connection_closed(self, conn):
        self.conns.discard(conn)
        self._exit_if_done()

    def _time_out(self):
        """request-timeout, for the requests in flight oldest first; re-armed for the next."""
        self.timeout_timer = None
        now = self.loop.time()
        for req, started in list(self.in_flight.items()):
            due = started + self.request_timeout
            if due > now:
                self.timeout_timer = self.loop.call_at(due, self._time_out)
                return
            if req in self.in_flight:
                self._timed_out(req, now - started)

    def _timed_out(self, req, ran):
        """The client gets a 504, or a cut response when it had begun; the task is cancelled,
        its stack logged first; the worker serves on. One still waiting for a place gets
        the 504 (it has no task)."""
        line = req.conn.codec.line(req.rid) or "?"
        if not req.admitted:
            log_line("ERROR", "request-timeout (%gs): %s waited %.1fs for one of the worker's %d places "
                              "(concurrency), never started: answering 504"
                     % (self.request_timeout, line, ran, self.concurrency), req.request_id)
            _native.scoreboard_timed_out()
            req._page(504, b"504 Gateway Timeout\n")
            return
        answer = "cutting its response off" if req.head_sent else "answering 504"
        log_line("ERROR", "request-timeout (%gs): %s ran %.1fs: %s, cancelling its task; its coroutine stack follows"
                 % (self.request_timeout, line, ran, answer), req.request_id)
        self.dump_stacks([req])
        _native.scoreboard_timed_out()
        if req.head_sent:
            req.conn.cut_off(req.keep_conn)
        else:
            req._page(504, b"504 Gateway Timeout\n")
        req.task.cancel()

    def _check_drain(self):
        """Every DRAIN_CHECK: the bridge's drain word."""
        word = _native.scoreboard_drain()
        if word == DRAIN_STOP and self.stop_window is None:
            # No other worker takes over: first the connections already queued (what the web
            # server sent before the stop), for STOP_QUEUE_WINDOW at most.
            self.stop_window = self.loop.call_later(_native.STOP_QUEUE_WINDOW, self._retire)
            self._accept()
        elif word and word != DRAIN_STOP:
            self._retire()
        if not self.draining:
            self.loop.call_later(_native.DRAIN_CHECK, self._check_drain)

    def _retire(self):
        """Accept nothing more; serve what comes on the connections held, closing each once
        it has been quiet for RETIRE_QUIET (DirectConnection._idle_check) or after a request
        without FCGI_KEEP_CONN; once none is left, stop as at SIGTERM."""
        if self.draining:
            return
        self.draining = True
        self.retired_at = self.loop.time()
        self._stop_accepting()
        for conn in list(self.conns):
            conn.retiring()
        self._exit_if_done()

    def out_of_patience(self):
        """Retiring for RETIRE_PATIENCE: a kept connection is closed after its response."""
        return self.draining and self.loop.time() - self.retired_at >= RETIRE_PATIENCE

    def _stop_accepting(self):
        if self.accepting:
            self.accepting = False
            self._watch(False)
            _native.scoreboard_stop_accepting()
        if self.stop_window is not None:
            self.stop_window.cancel()

    def _exit_if_done(self):
        if self.draining and not self.conns and not self.opening:
            self.stop.set()


def _failure_summary(message):
    """A lifespan failure's message for one log line: Starlette sends the whole traceback,
    whose last line (the exception) is what an operator needs first."""
    lines = [ln.strip() for ln in (message or "").strip().splitlines() if ln.strip()]
    if not lines:
        return "(no message)"
    if len(lines) == 1:
        return lines[0]
    return "%s (traceback: %s)" % (lines[-1], " | ".join(lines[:-1]))


def log_line(level, text, request_id=None):
    """One line for the bridge's log at `level`, with pool, pid and `request_id` (a marked
    line on stderr, logging_bridge.py)."""
    line = json.dumps({"level": level, "logger": "fcgibridge.asgi", "msg": text.rstrip("\n"),
                       "request_id": request_id})
    sys.stderr.write(logging_bridge.MARKER + line + "\n")
    sys.stderr.flush()


def _env_seconds(name, default):
    try:
        value = float(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default
    return value if value > 0 else default


def _interrupt():
    raise KeyboardInterrupt


if sys.version_info >= (3, 12):
    def new_task(coro):
        """A request's task, run eagerly up to its first real wait: most requests never
        wait (the body came with the params, the app answers at once) and then end
        inside this call, without a trip through the loop's ready queue."""
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)
else:
    new_task = asyncio.ensure_future


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


def watch_loop(loop, worker):
    """From the loop's thread: a daemon thread that asks the loop for a heartbeat every
    second and, when none came for LOOP_BLOCKED seconds, writes the loop thread's stack
    (every request of the worker waits meanwhile; request-timeout ends it, if set)."""
    loop_thread = threading.get_ident()
    last = [time.monotonic()]

    def beat():
        last[0] = time.monotonic()

    def run():
        reported = False
        while True:
            time.sleep(1.0)
            try:
                loop.call_soon_threadsafe(beat)
            except RuntimeError:  # the loop is closed: the worker is ending
                return
            stalled = time.monotonic() - last[0]
            if stalled < LOOP_BLOCKED:
                reported = False
            elif not reported:
                reported = True
                ids = ", ".join(str(r.request_id) for r in list(worker.running)) or "none"
                lines = ["fcgibridge worker: the event loop has run nothing else for %.0f s (requests in "
                         "flight: %s); what blocks it, most recent call last:\n" % (stalled, ids)]
                frame = sys._current_frames().get(loop_thread)
                if frame is not None:
                    lines += traceback.format_stack(frame)
                sys.stderr.write("".join(lines))
                sys.stderr.flush()

    threading.Thread(target=run, name="fcgibridge-loop-watch", daemon=True).start()


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
    direct = _native.direct_settings()
    worker = Worker(app, concurrency) if direct is None else DirectWorker(app, concurrency, *direct)
    code = 0
    ready = []

    def on_ready():
        ready.append(True)
        _main._write_ready(ready_fd, "READY asgi\n")
        watch_loop(loop, worker)

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


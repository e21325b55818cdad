"""The ASGI worker (``interface: asgi``; docs/asgi.md).

One event loop per process. The bridge opens ``concurrency`` FastCGI connections to the
listening socket on fd 0 and sends one request at a time on each; every request runs as
a task of its own, so a worker holds as many requests in flight as it has connections.
Each connection is an ``asyncio.Protocol``; its records are decoded and the scope built by
the native module (``_native.AsgiConnection``), and a response's head, body and end are
encoded there into one write. A full socket buffer toward the bridge pauses the app's
``send`` (back-pressure), and a request body that the app does not read pauses reading
that connection.
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

# FastCGI 1.0 record types, roles and protocol statuses.
END_REQUEST, STDOUT, STDERR = 3, 6, 7
RESPONDER, AUTHORIZER = 1, 2
HEADER = struct.Struct(">BBHHBx")
END_BODY = struct.Struct(">IB3x")
MAX_CONTENT = 65535
# What _native.AsgiConnection.feed reports, as (kind, request id, payload).
EV_BEGIN, EV_ABORT, EV_PARAMS, EV_STDIN, EV_REPLY = 1, 2, 4, 5, 10
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
ERROR_PAGE = (b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
              b"Content-Length: 22\r\n\r\nInternal Server Error\n")
encode_response = _native.encode_response


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

    def __init__(self, conn, rid, role):
        self.conn = conn
        self.rid = rid
        self.role = role
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

    # -- from the connection

    def feed(self, data):
        if self.complete or self.ended:
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

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the ASGI callables

    async def receive(self):
        while True:
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
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
        if self.head_sent:
            out = encode_response(self.rid, None, (), 0, data, more, self.is_head)
        else:
            status, headers = self.start
            out = encode_response(self.rid, _status_line(status), headers, status, data, more, self.is_head)
            self.head_sent = True
        if not more:
            # head, body and end in one write
            self.complete = True
            self._wake()
            self._ended()
        if out:
            self.conn.write(out)
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
            self._ended()
            self.conn.write(record(STDOUT, self.rid) + record(END_REQUEST, self.rid, END_BODY.pack(app_status, 0)))

    def _ended(self):
        self.ended = True
        self.conn.release(self)  # a reader paused on this request's unread body goes on
        self.conn.forget(self)

    async def run(self, worker):
        """The app's task: the app, then whatever the response still needs."""
        token = logging_bridge.REQUEST_ID.set(self.request_id)
        try:
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


class Connection(asyncio.Protocol):
    """One FastCGI connection from the bridge (one request at a time from the bridge; more
    are served too, each by its own task)."""

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
                if not req.disconnected:
                    self.worker.start(req)
        except _native.AsgiProtocolError as exc:
            sys.stderr.write("fcgibridge worker: bad record from the bridge, connection closed: %s\n" % exc)
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
            self.codec.end_request(req.rid)

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
            self.requests[rid] = Request(self, rid, AUTHORIZER if payload else RESPONDER)
        elif kind == EV_ABORT:
            req = self.requests.get(rid)
            if req is not None:
                req.abort()
        else:  # EV_REPLY: management answers, UNKNOWN_ROLE
            self.write(payload)

    def _lost(self):
        """The connection ended. The bridge closes a connection with a request still running
        only when it gave up on that request (request-timeout shuts the connection down; a
        client that left is an ABORT_REQUEST instead): its task is cancelled, its coroutine
        stack logged first."""
        if self.closed:
            return
        self.closed = True
        self._wake_drainers()
        self.holding.clear()
        for req in list(self.requests.values()):
            running = req.task is not None and not req.task.done() and not req.disconnected
            req.abort()
            if running:
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
            sys.stderr.write("fcgibridge worker: the app does not support the ASGI lifespan protocol "
                             "(%s: %s); serving it without startup and shutdown events\n"
                             % (type(exc).__name__, exc))
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
        self.stop = asyncio.Event()
        lifespan = Lifespan(self.app, self.state)
        await lifespan.startup()
        sock = socket.socket(fileno=listen_fd)
        sock.setblocking(False)

        # The bridge opens all `concurrency` connections at once: a backlog that holds
        # them (asyncio's default of 100 would replace the bridge's and refuse the rest).
        server = await loop.create_unix_server(lambda: Connection(self), sock=sock,
                                               backlog=max(self.concurrency, 128))
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR2, self.dump_stacks)
        # SIGINT (the whole process group): out of the loop, exit 130, as before the loop
        # serves; never a KeyboardInterrupt inside a request's task, where it would be that
        # request's 500 (Request.run).
        loop.add_signal_handler(signal.SIGINT, _interrupt)
        on_ready()
        await self.stop.wait()
        server.close()
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
    worker = Worker(app, concurrency)
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


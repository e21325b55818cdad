"""A plain WSGI application for the protocol edge cases of the end-to-end suite.

Paths (relative to the app's own PATH_INFO):
  /health              "ok"
  /environ             the environ as JSON (str values as-is, other values by type)
  /pid                 this worker's pid and thread
  /spin?ms=            burns ms milliseconds of the thread's CPU in Python (the GIL held), then as /pid
  /version             sys.version of this interpreter
  /status/204          204 No Content
  /status/204-length   204 No Content with the app's Content-Length: 0 (Django's)
  /etag                200 with an ETag, 304 when If-None-Match matches
  /stream?n=&delay=    n chunks from a generator, `delay` seconds apart
  /big?mib=            a large body streamed in 64 KiB chunks
  /write               a body sent through the write() callable, then an iterable
  /raise-before        raises before start_response: 500
  /raise-after         sends a chunk, then raises: a cut-off response
  /yield-str?tag=      returns a list of str, not bytes: the worker's TypeError, a 500
  /upload?delay=       reads wsgi.input in chunks to EOF, then sleeps `delay` s: size and sha256 as JSON
  /upload-watch?marker=FILE   reads slowly; writes what happened to FILE
  /sleep?s=&tag=       sleeps, answers its pid; writes the pid to $FCGIBRIDGE_TEST_DIR/<tag>.pid
  /hold?tag=&poll=     like /sleep, until the test creates $FCGIBRIDGE_TEST_DIR/<tag>.release
                       (looked for every `poll` seconds, 0.02 by default)
  /tick?marker=FILE&n= yields every 0.1 s; close() writes "closed" to FILE
  /die/exit            os._exit(1) mid-request
  /die/segv            a segfault mid-request
  /die/orphan?tag=     forks a child that sleeps (its pid in $FCGIBRIDGE_TEST_DIR/<tag>.child) and
                       keeps the worker's sockets, then os._exit(1) mid-request
  /headers?n=          n response headers plus two Set-Cookie and a repeated header
  /mem                 VmRSS / VmHWM of this process
  /file?path=          the file through wsgi.file_wrapper
  /exc-info            start_response twice, the second time with exc_info: 500
  /print?msg=&err=     a line on the worker's stdout and one on its stderr
  /print-partial?err=  `err` on the worker's stderr without a newline
  /slow-line?tag=      a wsgi.errors line written in two parts half a second apart
  /ticks?marker=&n=    a short Ticker (close() writes to the marker)
  /slow-close?s=       a complete body with its Content-Length; the iterable's close() takes s seconds
  /head-cl             Content-Length 1000; for HEAD no body (as frameworks do)
  /cl-mismatch?declared=&sent=   a Content-Length that does not match the body
  /bad-header          a header value containing CR LF
  /latin-header        a latin-1 header value
  /stderr?msg=         writes msg to wsgi.errors, answers 200
"""
import ctypes
import hashlib
import json
import os
import sys
import threading
import time
from urllib.parse import parse_qs


def _qs(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}


def _mem():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    return out


def _json(start_response, obj, status="200 OK", extra=()):
    body = json.dumps(obj, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _text(start_response, text, status="200 OK"):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _environ_json(environ):
    out = {}
    for k, v in environ.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, (bool, int)):
            out[k] = v
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = "<%s>" % type(v).__name__
    # PEP 3333: native strings hold the raw bytes as latin-1; decode the path as UTF-8 for tests
    try:
        out["fcgibridge.test.path_utf8"] = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as e:
        out["fcgibridge.test.path_utf8"] = "<%s>" % e
    out["fcgibridge.test.pid"] = os.getpid()
    return out


class Ticker:
    """An iterable whose close() leaves a trace on disk."""

    def __init__(self, marker, n):
        self.marker = marker
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield b"tick %d\n" % i
            time.sleep(0.1)

    def close(self):
        with open(self.marker, "a") as f:
            f.write("closed\n")


class SlowClose:
    """A complete body (with its Content-Length) whose close() takes `s` seconds."""

    def __init__(self, s):
        self.s = s

    def __iter__(self):
        yield b"complete"

    def close(self):
        time.sleep(self.s)


def _tag(q):
    """Leave this worker's pid in $FCGIBRIDGE_TEST_DIR/<tag> for the test to find."""
    tag = q.get("tag")
    if tag:
        with open(os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], tag + ".pid"), "w") as f:
            f.write(str(os.getpid()))
    return tag


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _qs(environ)

    if path == "/health":
        return _text(start_response, "ok")

    # (also under a prefix, e.g. /edge/environ, to see what a prefix route passes on)
    if path == "/environ" or path.startswith("/environ/") or path.endswith("/environ"):
        return _json(start_response, _environ_json(environ))

    if path == "/pid":
        return _json(start_response, {"pid": os.getpid(), "thread": threading.get_ident()})

    if path == "/version":
        return _json(start_response, {"version": sys.version, "info": list(sys.version_info[:3]),
                                      "executable": sys.executable, "pid": os.getpid()})

    if path == "/status/204":
        start_response("204 No Content", [("X-Edge", "204")])
        return []

    if path == "/status/204-length":
        # what Django's CommonMiddleware gives an empty response: Content-Length: 0
        start_response("204 No Content", [("Content-Length", "0"), ("X-Edge", "204")])
        return []

    if path == "/etag":
        etag = '"v1-edge"'
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            start_response("304 Not Modified", [("ETag", etag)])
            return []
        body = b"etagged body\n"
        start_response("200 OK", [("ETag", etag), ("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    if path == "/stream":
        n = int(q.get("n", "3"))
        delay = float(q.get("delay", "1"))

        def gen():
            for i in range(n):
                if i:
                    time.sleep(delay)
                yield ("chunk %d at %.3f\n" % (i, time.time())).encode()

        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        return gen()

    if path == "/big":
        mib = int(q.get("mib", "1"))
        block = bytes(range(256)) * 256  # 64 KiB

        def gen():
            for _ in range(mib * 16):
                yield block

        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(mib << 20))])
        return gen()

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-1\n")
        write(b"written-2\n")
        return [b"returned-3\n"]

    if path == "/raise-before":
        raise RuntimeError("failure before headers " + q.get("tag", ""))

    if path == "/yield-str":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["a str, not bytes " + q.get("tag", "")]

    if path == "/raise-after":
        def gen():
            yield b"first part of a response that will be cut off\n"
            yield b"x" * 1000
            raise RuntimeError("failure after headers " + q.get("tag", ""))

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()

    if path == "/upload":
        before = _mem()
        inp = environ["wsgi.input"]
        h = hashlib.sha256()
        size = 0
        reads = 0
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
            reads += 1
        time.sleep(float(q.get("delay", "0")))
        after = _mem()
        return _json(start_response, {"size": size, "sha256": h.hexdigest(), "reads": reads,
                                      "content_length": environ.get("CONTENT_LENGTH"),
                                      "input_terminated": environ.get("wsgi.input_terminated"),
                                      "rss_before": before["VmRSS"], "hwm_after": after["VmHWM"],
                                      "pid": os.getpid()})

    if path == "/upload-watch":
        marker = q["marker"]
        inp = environ["wsgi.input"]
        size = 0
        outcome = "eof"
        try:
            with open(marker, "w") as f:
                f.write("reading\n")
            while True:
                chunk = inp.read(16384)
                if not chunk:
                    break
                size += len(chunk)
        except OSError as e:
            outcome = "%s: %s" % (type(e).__name__, e)
        with open(marker, "a") as f:
            f.write("outcome %s after %d bytes\n" % (outcome, size))
        return _json(start_response, {"size": size, "outcome": outcome})

    if path == "/spin":
        # pid=N: only process N spins (one process of a pool made slower than the others).
        ms = float(q.get("ms", "1")) if q.get("pid", str(os.getpid())) == str(os.getpid()) else 0.0
        end = time.thread_time() + ms / 1000
        while time.thread_time() < end:
            pass
        return _json(start_response, {"pid": os.getpid(), "thread": threading.get_ident()})

    if path == "/sleep":
        tag = _tag(q)
        time.sleep(float(q.get("s", "1")))
        return _json(start_response, {"pid": os.getpid(), "tag": tag})

    if path == "/hold":
        tag = _tag(q)
        release = os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], f"{tag}.release")
        deadline = time.monotonic() + float(q.get("max", "300"))
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(float(q.get("poll", "0.02")))
        return _json(start_response, {"pid": os.getpid(), "tag": tag})

    if path == "/tick":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        return Ticker(q["marker"], int(q.get("n", "600")))

    if path == "/die/exit":
        _tag(q)
        os._exit(1)

    if path == "/die/orphan":
        tag = _tag(q)
        child = os.fork()
        if child == 0:
            time.sleep(300)
            os._exit(0)
        with open(os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], f"{tag}.child"), "w") as f:
            f.write(str(child))
        os._exit(1)

    if path == "/die/segv":
        _tag(q)
        ctypes.string_at(0)

    if path == "/headers":
        n = int(q.get("n", "50"))
        headers = [("Content-Type", "text/plain")]
        headers += [("X-Edge-%d" % i, "value-%d" % i) for i in range(n)]
        headers += [("Set-Cookie", "first=1; Path=/"), ("Set-Cookie", "second=2; Path=/"),
                    ("X-Repeated", "one"), ("X-Repeated", "two")]
        start_response("200 OK", headers)
        return [b"headers\n"]

    if path == "/file":
        # wsgi.file_wrapper over a file the test wrote
        f = open(q["path"], "rb")
        size = os.fstat(f.fileno()).st_size
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        wrapper = environ.get("wsgi.file_wrapper")
        return wrapper(f, 65536) if wrapper else iter(lambda: f.read(65536), b"")

    if path == "/exc-info":
        # PEP 3333: start_response again with exc_info before any body was sent replaces the headers
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("handled by the app")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("X-Second", "1")],
                           sys.exc_info())
        return [b"the app reported its own error\n"]

    if path == "/print":
        print(q.get("msg", "edge stdout line"), flush=True)
        print(q.get("err", "edge stderr line"), file=sys.stderr, flush=True)
        return _text(start_response, "printed")

    if path == "/print-partial":
        sys.stderr.write(q.get("err", "partial"))
        sys.stderr.flush()
        return _text(start_response, "printed")

    if path == "/slow-close":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
        return SlowClose(float(q.get("s", "3")))

    if path == "/ticks":
        # a short Ticker: close() must be called after a normal, complete iteration too
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Ticker(q["marker"], int(q.get("n", "3")))

    if path == "/head-cl":
        # what frameworks do for HEAD: the GET's Content-Length, no body
        body = b"" if environ["REQUEST_METHOD"] == "HEAD" else b"h" * 1000
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "1000")])
        return [body]

    if path == "/cl-mismatch":
        # declares `declared` bytes, sends `sent`
        declared, sent = int(q["declared"]), int(q["sent"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(declared))])
        return [b"m" * sent]

    if path == "/bad-header":
        # a header value with CR LF: must never become a second header (response splitting)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", "a\r\nSet-Cookie: evil=1")])
        return [b"should not be sent as is\n"]

    if path == "/latin-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Latin", "caf\u00e9")])
        return [b"latin\n"]

    if path == "/mem":
        return _json(start_response, dict(_mem(), pid=os.getpid()))

    if path == "/slow-line":
        environ["wsgi.errors"].write("begun-%s " % q.get("tag", ""))
        environ["wsgi.errors"].flush()
        time.sleep(0.5)
        environ["wsgi.errors"].write("ended-%s\n" % q.get("tag", ""))
        return _text(start_response, "logged")

    if path == "/stderr":
        environ["wsgi.errors"].write(q.get("msg", "edge stderr line") + "\n")
        environ["wsgi.errors"].flush()
        return _text(start_response, "logged")

    return _text(start_response, "edge app: no route for %r\n" % path, "404 Not Found")

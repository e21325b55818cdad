"""The WSGI app the worker tests talk to; PATH_INFO picks the behaviour."""
import io
import json
import os
import sys
import threading

EVENTS = []  # things observed across requests (close() calls, disconnects)
LOCK = threading.Lock()
KEPT = []
BARRIERS = {}


def note(what):
    with LOCK:
        EVENTS.append(what)


def _text(start_response, body, status="200 OK", ctype="text/plain"):
    body = body.encode("utf-8") if isinstance(body, str) else body
    start_response(status, [("Content-Type", ctype)])
    return [body]


class Closing:
    """A response iterable that records close()."""

    def __init__(self, chunks, tag):
        self.chunks = chunks
        self.tag = tag

    def __iter__(self):
        for c in self.chunks:
            if isinstance(c, Exception):
                raise c
            yield c

    def close(self):
        note("closed:" + self.tag)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    inp = environ["wsgi.input"]

    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"Hello, World!"]

    if path == "/environ":
        out = {}
        for k, v in environ.items():
            if isinstance(v, (str, bool, int)) or v is None:
                out[k] = v
            elif isinstance(v, tuple):
                out[k] = list(v)
            else:
                out[k] = "<%s>" % type(v).__name__
        out["_has_file_wrapper"] = callable(environ.get("wsgi.file_wrapper"))
        out["_input_is_oserror_on_abort"] = True
        return _text(start_response, json.dumps(out), ctype="application/json")

    if path == "/latin1":
        # echo the raw bytes of one param and all param names
        v = environ.get("HTTP_X_RAW", "")
        names = sorted(k for k in environ if k.startswith("HTTP_"))
        return _text(start_response, v.encode("latin-1") + b"|" + ",".join(names).encode("latin-1"))

    if path == "/read":
        mode = environ["QUERY_STRING"]
        if mode == "all-noted":
            # tells the test (through /events) that the app now waits for the body
            note("read:waiting")
            mode = "all"
        if mode == "all":
            data = inp.read()
            parts = [data]
        elif mode == "none":
            parts = [inp.read(None)]
        elif mode.startswith("sized"):
            n = int(mode[5:])
            parts = []
            while True:
                chunk = inp.read(n)
                if not chunk:
                    break
                parts.append(chunk)
                assert len(chunk) <= n
        elif mode == "readline":
            parts = []
            while True:
                line = inp.readline()
                if not line:
                    break
                parts.append(line)
        elif mode.startswith("readline") and mode[8:].isdigit():
            n = int(mode[8:])
            parts = []
            while True:
                line = inp.readline(n)
                if not line:
                    break
                assert len(line) <= n
                parts.append(line)
        elif mode == "read1":
            parts = []
            while True:
                chunk = inp.read1(50000)
                if not chunk:
                    break
                assert len(chunk) <= 50000
                parts.append(chunk)
        elif mode == "readlines":
            parts = inp.readlines()
        elif mode == "iter":
            parts = list(inp)
        else:
            raise ValueError(mode)
        after = inp.read(1 << 20)
        body = json.dumps({"lens": [len(p) for p in parts], "after": len(after),
                           "lines_end_nl": all(p.endswith(b"\n") for p in parts[:-1])})
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode(), b"\n", b"".join(parts)]

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one,")
        write(b"")
        write(b"two,")
        return [b"three"]

    if path == "/generator":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"a" * 10, b"", b"b" * 70000, b"c"], "gen")

    if path == "/big":
        n = int(environ["QUERY_STRING"] or "1000000")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [bytes(range(256)) * (n // 256)]

    if path == "/keep_input":
        # keep this request's stream objects for a later request
        KEPT[:] = [inp, environ["wsgi.errors"]]
        return _text(start_response, "kept")

    if path == "/use_kept":
        old_inp, old_err = KEPT
        data = old_inp.read()
        old_err.write("late write from an old request\n")
        return _text(start_response, "old input gave %r" % data)

    if path == "/thread_read":
        # read the body from another thread while this one waits
        out = []
        t = threading.Thread(target=lambda: out.append(inp.read()))
        t.start()
        t.join()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return out

    if path == "/bg_log":
        # a background thread writes to the wsgi.errors of an ended request
        def bg():
            import time
            time.sleep(0.2)
            t0 = time.time()
            KEPT[1].write("background write\n")
            KEPT[0].read()
            note("bglog:%.3f" % (time.time() - t0))
        threading.Thread(target=bg).start()
        return _text(start_response, "started")

    if path.startswith("/cl/"):
        # /cl/<declared>/<kind>: a Content-Length that does or does not match the body
        # (kind "handoff": an X-Sendfile response with the file's length, as Flask's send_file)
        _, _, declared, kind = path.split("/")
        handoff = [("X-Sendfile", "/srv/files/report.pdf")] if kind == "handoff" else []
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", declared)] + handoff)
        if kind == "handoff":
            return []
        if kind == "list":
            return [b"1234567890"]
        if kind == "gen":
            return Closing([b"ab", b"cd", b"ef"], "cl")
        if kind == "none":
            return []
        raise ValueError(kind)

    if path == "/events":
        with LOCK:
            out = list(EVENTS)
            EVENTS.clear()
        return _text(start_response, json.dumps(out), ctype="application/json")

    if path == "/twice":
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b"never"]

    if path == "/exc_info_before":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise KeyError("boom")
        except KeyError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"recovered"]

    if path == "/exc_info_after":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise KeyError("late")
        except KeyError:
            start_response("500 Oops", [], sys.exc_info())  # must re-raise
        return [b"not reached"]

    if path == "/raise_before":
        raise RuntimeError("app failed early")

    if path == "/raise_iter_before":
        start_response("200 OK", [])
        return Closing([ValueError("failed in first chunk")], "raise_before")

    if path == "/raise_after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"first part ", ValueError("failed mid-body")], "raise_after")

    if path == "/bad_header":
        start_response("200 OK", [("X-Bad", "a\r\nInjected: yes")])
        return [b"x"]

    if path == "/bad_header_type":
        start_response("200 OK", [(b"X-Bytes", "v")])
        return [b"x"]

    if path == "/bad_status":
        start_response("OK", [])
        return [b"x"]

    if path == "/non_latin1_header":
        start_response("200 OK", [("X-Name", "\u20ac")])
        return [b"x"]

    if path == "/str_body":
        start_response("200 OK", [])
        return ["not bytes"]

    if path == "/returns_none":
        start_response("200 OK", [])
        return None

    if path == "/write_str":
        write = start_response("200 OK", [])
        write("text")
        return []

    if path == "/headers_not_list":
        start_response("200 OK", {"X-A": "1"})
        return [b"x"]

    if path == "/no_start_response":
        return [b"oops"]

    if path == "/file":
        fname = environ["HTTP_X_FILE"]
        f = open(fname, "rb")
        skip = int(environ.get("QUERY_STRING") or 0)
        if skip:
            f.read(skip)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 4096)

    if path == "/filelike":
        class F(io.BytesIO):
            def close(self):
                note("filelike-closed")
                super().close()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](F(b"x" * 20000 + b"END"), 1000)

    if path == "/errors":
        err = environ["wsgi.errors"]
        err.write("first line\n")
        err.writelines(["second ", "line\n"])
        err.write("unicode \u00e9\u20ac\n")
        err.flush()
        return _text(start_response, "logged")

    if path == "/upload_abort":
        # ?progress: an event per chunk read, so a test can wait until the app has read
        # what was sent before it aborts
        progress = environ["QUERY_STRING"] == "progress"
        got = 0
        try:
            while True:
                chunk = inp.read(1000)
                if not chunk:
                    note("upload:eof:%d" % got)
                    break
                got += len(chunk)
                if progress:
                    note("upload:read:%d" % got)
        except OSError as e:
            from fcgibridge_worker import ClientDisconnected
            note("upload:%s:%s:%d" % (type(e).__name__, isinstance(e, ClientDisconnected), got))
            raise
        return _text(start_response, "read %d" % got)

    if path == "/slow_stream":
        # a stream that keeps producing until the client goes away
        start_response("200 OK", [("Content-Type", "text/plain")])
        def gen():
            import time
            for i in range(2000):
                yield b"tick %d\n" % i
                time.sleep(0.005)
        return Closing(gen(), "slow")

    if path == "/headers":
        start_response("201 Created", [("X-One", "1"), ("X-Two", "zwei \xe9"),
                                       ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                       ("Connection", "close")])
        return [b""]

    if path == "/empty":
        start_response("204 No Content", [])
        return []

    if path == "/content_length_set":
        start_response("200 OK", [("Content-Length", "5")])
        return [b"12345"]

    if path == "/pid":
        return _text(start_response, "%d %s" % (os.getpid(), threading.current_thread().name))

    if path == "/sleep":
        import time
        time.sleep(float(environ["QUERY_STRING"] or "0.2"))
        return _text(start_response, threading.current_thread().name)

    if path == "/nap":
        # /sleep that tells the test (through /events) it is running
        import time
        note("nap:start")
        time.sleep(float(environ["QUERY_STRING"] or "0.2"))
        return _text(start_response, threading.current_thread().name)

    if path == "/barrier":
        # answers once N requests are in the app at the same time (or 500 after 60 s)
        n = int(environ["QUERY_STRING"])
        with LOCK:
            barrier = BARRIERS.setdefault(n, threading.Barrier(n, timeout=60))
        barrier.wait()
        return _text(start_response, threading.current_thread().name)

    if path == "/exit":
        sys.exit(7)

    return _text(start_response, "not found: " + path, status="404 Not Found")


def validated():
    from wsgiref.validate import validator
    return validator(application)

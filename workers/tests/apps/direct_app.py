"""The app of the direct-mode tests (test_direct.py); PATH_INFO picks the behaviour."""
import atexit
import json
import os
import sys
import time


@atexit.register
def _exiting():
    sys.stdout.write("direct_app: atexit ran\n")
    sys.stdout.flush()


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        body = json.dumps({k: v for k, v in environ.items() if isinstance(v, str)})
    elif path == "/hold":
        # Runs until the test creates the file named in the query (at most a minute).
        deadline = time.monotonic() + 60
        while not os.path.exists(environ["QUERY_STRING"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        body = "released"
    elif path == "/pace":
        # The process the query names works 0.5 ms of CPU a request (slower, not stuck); any
        # other answers at once. The body is the pid that served it.
        if environ["QUERY_STRING"] == str(os.getpid()):
            end = time.perf_counter() + 0.0005
            while time.perf_counter() < end:
                pass
        body = str(os.getpid())
    elif path == "/raise":
        raise RuntimeError("direct app failed")
    elif path == "/raise-after":
        # A chunk, then a failure: the response is cut off after its head.
        start_response("200 OK", [("Content-Type", "text/plain")])

        def cut():
            yield b"partial-"
            raise RuntimeError("direct app failed after the head")
        return cut()
    elif path == "/short-length":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
        return [b"only ten b"]
    elif path == "/read-length":
        # Reads the body by its CONTENT_LENGTH, as most apps do.
        body = "read %d bytes" % len(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
    elif path == "/errors":
        environ["wsgi.errors"].write("first line\nsecond ")
        environ["wsgi.errors"].write("half\n")
        body = "logged"
    else:
        body = "not found: " + path
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]

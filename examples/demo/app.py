"""The demo app served by the default conf.d: a plain WSGI callable, no framework.

Run it from the top of the repository with `fcgibridge run --config conf.d` (FastCGI on
127.0.0.1:9000, SCGI on 127.0.0.1:9001), then `fcgibridge request 127.0.0.1:9000 /env`.

    /        hello
    /env     the WSGI environ, as text
    /echo    the request body, streamed back (POST)
    /stream  a response produced piece by piece by a generator
"""
import tempfile
import time


def application(environ, start_response):
    # nginx puts the whole path in SCRIPT_NAME, other servers split it or send only
    # REQUEST_URI: route on whichever carries it.
    full = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if not full:
        full = environ.get("REQUEST_URI", "/").split("?", 1)[0]
    if full in ("/", ""):
        body = b"Hello from fcgibridge!\n"
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if full == "/env":
        lines = []
        for key in sorted(environ):
            lines.append("%s = %r\n" % (key, environ[key]))
        body = "".join(lines).encode("utf-8", "replace")
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if full == "/echo":
        return echo(environ, start_response)
    if full == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return stream()
    body = b"Not found\n"
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(body)))])
    return [body]


def echo(environ, start_response):
    # Read the whole body before answering: nginx stops sending a request body to a
    # FastCGI/SCGI server once it has passed the response headers on to the client, so an
    # echo that answered while still reading would stall on large uploads. Big bodies
    # are spooled to a temporary file, not held in memory.
    spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
    stream_in = environ["wsgi.input"]
    size = 0
    while True:
        chunk = stream_in.read(65536)
        if not chunk:
            break
        spool.write(chunk)
        size += len(chunk)
    spool.seek(0)
    start_response("200 OK", [
        ("Content-Type", environ.get("CONTENT_TYPE") or "application/octet-stream"),
        ("Content-Length", str(size)),
    ])

    def chunks():
        try:
            while True:
                chunk = spool.read(65536)
                if not chunk:
                    return
                yield chunk
        finally:
            spool.close()

    return chunks()


def stream():
    for i in range(5):
        yield ("chunk %d at %.3f\n" % (i, time.time())).encode()
        time.sleep(0.2)

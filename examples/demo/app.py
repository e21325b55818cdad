"""The demo app served by the default conf.d: a plain WSGI callable, no framework.

    /        hello
    /env     the WSGI environ, as text
    /echo    the request body, streamed back (POST)
    /stream  a response produced piece by piece by a generator
"""
import time


def application(environ, start_response):
    path = environ.get("PATH_INFO") or environ.get("SCRIPT_NAME") or "/"
    # nginx puts the whole URI in SCRIPT_NAME; route on whichever carries it.
    full = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or path
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
    headers = [("Content-Type", environ.get("CONTENT_TYPE") or "application/octet-stream")]
    length = environ.get("CONTENT_LENGTH")
    if length:
        headers.append(("Content-Length", length))
    start_response("200 OK", headers)
    stream_in = environ["wsgi.input"]

    def chunks():
        while True:
            chunk = stream_in.read(65536)
            if not chunk:
                return
            yield chunk

    return chunks()


def stream():
    for i in range(5):
        yield ("chunk %d at %.3f\n" % (i, time.time())).encode()
        time.sleep(0.2)

"""The app behind the response-filter and request-body tests (test_bodies.py,
test_redirect.py): echoes bodies, records how reads end, emits bad headers and
internal redirects on request."""
import json
import os
from urllib.parse import parse_qs

MARKS = os.environ.get("FCGIBRIDGE_TEST_DIR", "/tmp")


def mark(name, text):
    """Leave `text` in a file the test reads (the app runs in another process)."""
    path = os.path.join(MARKS, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def application(environ, start_response):
    # Mounted at /app or /other by prefix routes, or at "/" by a catch-all; the routes of
    # test_redirect.py also mount single pages (/redirect, /loop …) as prefixes.
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    for mount in ("/app", "/other", "/plain", "/pages", "/busy"):
        if path.startswith(mount + "/"):
            path = path[len(mount):]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    arg = lambda k, d="": query.get(k, [d])[0]  # noqa: E731

    if path == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    if path == "/echo":
        # Read to the end in pieces, as frameworks do for a body of unknown length.
        total = 0
        mark(arg("mark", "echo") + ".started.mark", "started")
        inp = environ["wsgi.input"]
        try:
            while True:
                chunk = inp.read(8192)
                if not chunk:
                    break
                total += len(chunk)
        except Exception as e:  # the client went away or the body was cut off
            mark(arg("mark", "echo") + ".mark", f"{type(e).__name__} {isinstance(e, OSError)} {total}")
            raise
        mark(arg("mark", "echo") + ".mark", f"complete {total}")
        body = json.dumps({"read": total, "content_length": environ.get("CONTENT_LENGTH")}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    if path == "/called":
        mark(arg("mark", "called") + ".mark", "called")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"called"]

    if path == "/header":
        # A header the bridge must refuse (CR/LF) or drop (hop-by-hop).
        kind = arg("kind")
        value = {"crlf": "a\r\nX-Injected: 1", "lf": "a\nX-Injected: 1", "latin1": "caf\u00e9",
                 "nonlatin1": "\u20ac"}.get(kind, "fine")
        headers = [("Content-Type", "text/plain"), ("X-Value", value)]
        if kind == "hop":
            headers += [("Connection", "close"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
                        ("Upgrade", "h2c")]
        start_response("200 OK", headers)
        return [b"body"]

    if path == "/env" or path.startswith("/env/"):
        keys = [k for k in environ if k.isupper()]
        body = json.dumps({k: environ[k] for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    if path == "/redirect":
        # CGI's local redirect: 200 with a Location and a body that must not reach the client.
        start_response(arg("status", "200 OK"), [("Location", arg("to")), ("Content-Type", "text/plain"),
                                                 ("Content-Length", "11")])
        return [b"first body!"]

    if path == "/sendfile":
        # Hand a file off; the body must never reach the client.
        start_response("200 OK", [("X-Sendfile", arg("path")), ("Content-Type", "text/plain"),
                                  ("Content-Length", "12")])
        return [b"not the file"]

    if path == "/status":
        code = arg("code", "404")
        headers = [("Content-Type", "text/plain")]
        if arg("extra"):
            # what an error page must keep (auth, cookies, caching) and replace (the body's)
            headers += [("WWW-Authenticate", 'Basic realm="site"'), ("Set-Cookie", "session=abc; Path=/"),
                        ("Set-Cookie", "seen=1"), ("Cache-Control", "no-store"), ("X-App", "yes"),
                        ("ETag", '"app-etag"'), ("Content-Language", "de"), ("Content-Length", "24")]
        start_response(f"{code} App Says", headers)
        return [b"the app's own error body"]

    if path.startswith("/errorpage"):
        # An error page reached by an internal redirect: which request it stands in for.
        keys = ("REQUEST_METHOD", "REQUEST_URI", "QUERY_STRING", "CONTENT_LENGTH", "REDIRECT_STATUS", "REDIRECT_URL",
                "REDIRECT_QUERY_STRING", "REDIRECT_REQUEST_METHOD", "REDIRECT_REDIRECT_URL", "HTTP_IF_NONE_MATCH",
                "HTTP_RANGE")
        info = {k: environ.get(k) for k in keys}
        info["page"] = path
        info["pid"] = os.getpid()
        body = json.dumps(info).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Set-Cookie", "page=1"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    if path == "/errorfail":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"the error page itself failed"]

    if path == "/sleep":
        import time
        time.sleep(float(arg("s", "1")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]

    if path == "/hold":
        # Hold this thread until the test creates <mark>.release (a test that needs a
        # busy pool waits for <mark>.started.mark instead of guessing with a sleep).
        import time
        name = arg("mark", "hold")
        mark(name + ".started.mark", "started")
        deadline = time.monotonic() + float(arg("max", "300"))
        while not os.path.exists(os.path.join(MARKS, name + ".release")) and time.monotonic() < deadline:
            time.sleep(0.02)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"released"]

    if path == "/crash":
        os._exit(3)  # the worker dies mid-request: the bridge answers 502

    if path == "/too-long":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"0123456789"]

    if path == "/big":
        # ?mib=N: N MiB in 64 KiB chunks, for clients that stop reading.
        mib = int(dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&")).get("mib") or 1)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 65536 for _ in range(mib * 16))

    if path == "/loop":
        start_response("200 OK", [("Location", "/loop")])
        return [b""]

    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page in respond_app\n"]

"""The conformance app every front server is tested against (plain WSGI, no dependencies,
so the system python3 runs it too, also as an unprivileged user in spawned mode).

/env             the environ's string values as JSON (plus the body length);
/private/...     the same, behind an authorizer in some server configurations
/upload          {"length": n, "sha256": hex} of the request body, read in pieces
/stream?n=&ms=   n chunks of "chunk i\\n", ms milliseconds apart, no Content-Length
/slow?ms=        answers after ms milliseconds (ABORT / multiplexing tests)
/redirect        200 + Location: /local (a CGI "local redirect": the server or the
                 bridge should re-dispatch internally)
/local           the target of the local redirect: shows REDIRECT_* and the method
/x-accel         X-Accel-Redirect: /protected/hello.txt (nginx)
/x-sendfile      X-Sendfile: <FILES_DIR>/hello.txt (lighttpd, mod_proxy_scgi, the bridge's
                 `file-handoff: serve`)
/x-sendfile2     X-Sendfile2: hello.txt in two pieces (lighttpd over FastCGI follows it; over
                 SCGI the bridge must send it or refuse it, never pass it on)
/x-reproxy       X-Reproxy-URL: http://<Host>/files/hello.txt (h2o)
/file-wrapper    hello.txt through wsgi.file_wrapper (what Flask's send_file does): handed back
                 or streamed, the client must get the file
/health          "ok"

Called with FCGI_ROLE=AUTHORIZER it is an authorizer (docs/authorizer.md): Basic
alice:secret is allowed with Variable-AUTH_USER_NAME / Variable-AUTH_TEAM, anything
else gets 401 with WWW-Authenticate.
"""
import base64
import hashlib
import json
import os
import time
from urllib.parse import parse_qs

FILES_DIR = os.environ.get("CONFORMANCE_FILES_DIR", "")


def _qs(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response, obj, status="200 OK", extra=()):
    body = json.dumps(obj, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _text(start_response, text, status="200 OK", extra=()):
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def authorize(environ, start_response):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    user = password = None
    if auth.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            pass
    # mod_authnz_fcgi (authnz provider) passes the Basic password as REMOTE_PASSWD
    if environ.get("REMOTE_PASSWD") and environ.get("REMOTE_USER"):
        user, password = environ["REMOTE_USER"], environ["REMOTE_PASSWD"]
    if (user, password) == ("alice", "secret"):
        start_response("200 OK", [("Variable-AUTH_USER_NAME", "alice"), ("Variable-AUTH_TEAM", "blue"),
                                  ("Content-Length", "0")])
        return [b""]
    return _text(start_response, "denied by the authorizer\n", "401 Unauthorized",
                 [("WWW-Authenticate", 'Basic realm="conformance"')])


def application(environ, start_response):
    if environ.get("FCGI_ROLE") == "AUTHORIZER":
        return authorize(environ, start_response)
    path = environ.get("PATH_INFO", "")
    q = _qs(environ)
    if path == "/health":
        return _text(start_response, "ok")
    if path == "/env" or path.startswith("/private/"):
        body = environ["wsgi.input"].read()
        env = {k: v for k, v in environ.items() if isinstance(v, str)}
        env["body_length"] = str(len(body))
        return _json(start_response, env)
    if path == "/upload":
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = environ["wsgi.input"].read(65536)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
        return _json(start_response, {"length": n, "sha256": h.hexdigest(),
                                      "content_length": environ.get("CONTENT_LENGTH", None)})
    if path == "/stream":
        n, ms = int(q.get("n", "5")), int(q.get("ms", "200"))
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            for i in range(n):
                if i:
                    time.sleep(ms / 1000)
                yield f"chunk {i} {time.time():.3f}\n".encode()
        return gen()
    if path == "/slow":
        time.sleep(int(q.get("ms", "1000")) / 1000)
        return _text(start_response, "slow done\n")
    if path == "/redirect":
        start_response("200 OK", [("Location", "/local?from=redirect"), ("Content-Type", "text/plain")])
        return [b"the server should not show this body\n"]
    if path == "/local":
        return _json(start_response, {"local": True, "method": environ.get("REQUEST_METHOD"),
                                      "query": environ.get("QUERY_STRING"),
                                      "redirect_url": environ.get("REDIRECT_URL"),
                                      "script_filename": environ.get("SCRIPT_FILENAME"),
                                      "redirect_status": environ.get("REDIRECT_STATUS")})
    if path == "/x-accel":
        start_response("200 OK", [("X-Accel-Redirect", "/protected/hello.txt"), ("Content-Type", "text/plain")])
        return [b""]
    if path == "/x-sendfile":
        start_response("200 OK", [("X-Sendfile", os.path.join(FILES_DIR, "hello.txt")), ("Content-Type", "text/plain")])
        return [b""]
    if path == "/x-sendfile2":
        name = os.path.join(FILES_DIR, "hello.txt")
        start_response("200 OK", [("X-Sendfile2", f"{name} 0-5, {name} 6-"), ("Content-Type", "text/plain")])
        return [b""]
    if path == "/file-wrapper":
        f = open(os.path.join(FILES_DIR, "hello.txt"), "rb")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/x-reproxy":
        host = environ.get("HTTP_HOST", "127.0.0.1")
        start_response("200 OK", [("X-Reproxy-URL", f"http://{host}/files/hello.txt"), ("Content-Type", "text/plain")])
        return [b""]
    return _text(start_response, f"no route {path}\n", "404 Not Found")

"""A bare ASGI 3 app without dependencies (any Python >= 3.9), for test_asgi.py. What a
test must observe from outside (a disconnect the app saw) is written to files in
FCGIBRIDGE_TEST_DIR."""
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

TEST_DIR = Path(os.environ.get("FCGIBRIDGE_TEST_DIR", "/tmp"))


def note(name, line):
    """Append a line to TEST_DIR/name (one write: lines from many workers do not mix)."""
    with open(TEST_DIR / name, "a") as f:
        f.write(line + "\n")


async def app(scope, receive, send):
    """A bare ASGI 3 app: /scope echoes the scope; /wait-disconnect waits for the client
    to go away; /redirect and /accel hand the request back to the bridge; /pathsend uses
    the pathsend extension."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup" and os.environ.get("FAIL_STARTUP"):
                await send({"type": "lifespan.startup.failed", "message": os.environ["FAIL_STARTUP"]})
                return
            if message["type"] == "lifespan.startup":
                note("raw-lifespan.log", "startup %d" % os.getpid())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                note("raw-lifespan.log", "shutdown %d" % os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path.endswith("/scope"):
        body = []
        while True:
            message = await receive()
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        shown = {k: v for k, v in scope.items() if k not in ("headers", "state", "raw_path", "query_string")}
        shown["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        shown["raw_path"] = scope["raw_path"].decode("latin-1")
        shown["query_string"] = scope["query_string"].decode("latin-1")
        shown["body_len"] = len(b"".join(body))
        shown["chunks"] = len(body)
        shown["address_types"] = [type(scope[k]).__name__ for k in ("client", "server")]
        return await _send(send, 200, json.dumps(shown).encode(), b"application/json")
    if path.endswith("/short-length"):  # less body than its Content-Length says
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"abc"})
        return
    if path.endswith("/no-content"):  # a 204 with the content-length: 0 Starlette gives it
        await send({"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    if path.endswith("/wait-disconnect"):
        token = scope["query_string"].decode()
        note("disconnect.log", "waiting " + token)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                note("disconnect.log", "disconnected " + token)
                return
    if path.endswith("/version"):
        return await _send(send, 200, ("%s %d" % (sys.version.split()[0], os.getpid())).encode(), b"text/plain")
    if path.endswith("/sleep"):
        try:
            await asyncio.sleep(float(scope["query_string"] or b"0.5"))
        except asyncio.CancelledError:
            note("cancelled.log", "cancelled %s" % scope["fcgibridge.request_id"])
            raise
        return await _send(send, 200, b"slept", b"text/plain")
    if path.endswith("/block"):
        # A sync call in an async view: the whole event loop waits (what the worker's watch logs).
        time.sleep(float(scope["query_string"] or b"1"))
        return await _send(send, 200, b"blocked", b"text/plain")
    if path.endswith("/first-chunk"):
        first = await receive()
        body = json.dumps({"len": len(first["body"]), "more_body": first["more_body"]}).encode()
        return await _send(send, 200, body, b"application/json")
    if path.endswith("/big"):
        # 64 KiB chunks, each a different byte: a lost or reordered chunk shows
        n = int(scope["query_string"] or b"1")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": bytes([i % 251]) * 65536, "more_body": True})
        return await send({"type": "http.response.body", "body": b""})
    if path.endswith("/redirect"):
        # CGI's local redirect (?to=<Location>, /raw/target by default), with a body that
        # must not reach the client.
        to = parse_qs(scope["query_string"].decode()).get("to", ["/raw/target"])[0].encode("latin-1")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"location", to)]})
        await send({"type": "http.response.body", "body": b"first body!", "more_body": True})
        return await send({"type": "http.response.body", "body": b""})
    if path.endswith("/loop"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"location", path.encode())]})
        return await send({"type": "http.response.body", "body": b""})
    if path.endswith("/accel"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-accel-redirect", b"/protected/report.txt"), (b"content-type", b"text/plain")]})
        return await send({"type": "http.response.body", "body": b""})
    if path.endswith("/target"):
        return await _send(send, 200, b"target reached via " + path.encode(), b"text/plain")
    if path.endswith("/pathsend"):
        target = scope["query_string"].decode()
        size = os.path.getsize(target)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(size).encode())]})
        return await send({"type": "http.response.pathsend", "path": target})
    return await _send(send, 200 if path.endswith("/health") else 404,
                       b"ok" if path.endswith("/health") else b"not found", b"text/plain")


async def _send(send, status, body, ctype):
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    """A WSGI app, for an ASGI pool that must refuse it."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi"]

"""Edge cases of the ASGI worker for test_asgi.py (docs/asgi.md): an app that exits, a
`Status` response header, HEAD with an empty body, an app that raises after its client
left, a task that outlives its response, and a Starlette stream abandoned by its client.
What a test must observe from outside is written to files in FCGIBRIDGE_TEST_DIR.
`wsgi_app` is the WSGI side of the `Status` header case."""
import asyncio
import json
import os
import sys

from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from asgi_raw_app import note

LIFESPAN_ASGI = {}


async def stream(request):
    """One chunk, then a long wait before the next: the generator must end when the client
    goes away, not when it next yields."""
    token = request.query_params["token"]

    async def chunks():
        try:
            yield b"first\n"
            note("edge.log", "stream-started " + token)
            await asyncio.sleep(120)
            yield b"second\n"
        finally:
            note("edge.log", "stream-ended " + token)

    return StreamingResponse(chunks(), media_type="text/plain")


starlette_app = Starlette(routes=[Route("/st/stream", stream)])


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                LIFESPAN_ASGI.update(scope["asgi"])
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = scope["query_string"].decode()
    if "/st/" in path:
        return await starlette_app(scope, receive, send)
    if path.endswith("/asgi-versions"):
        body = json.dumps({"http": scope["asgi"], "lifespan": LIFESPAN_ASGI}).encode()
        return await _send(send, 200, body)
    if path.endswith("/version"):
        return await _send(send, 200, b"%d" % os.getpid())
    if path.endswith("/sleep"):
        await asyncio.sleep(float(query or "1"))
        return await _send(send, 200, b"slept")
    if path.endswith("/sysexit"):
        sys.exit(3)
    if path.endswith("/kbint"):
        raise KeyboardInterrupt
    if path.endswith("/status-header"):
        return await _send(send, 200, b"fine", [(b"status", b"healthy")])
    if path.endswith("/head-empty"):
        return await _send(send, 200, b"" if scope["method"] == "HEAD" else b"hello")
    if path.endswith("/raise-after-disconnect"):
        # As Starlette does at ASGI spec 2.4: send()'s OSError becomes an exception of its own.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        try:
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            note("edge.log", "streaming " + query)
            while True:
                await asyncio.sleep(0.05)
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
        except OSError:
            raise RuntimeError("gave up: the client is gone") from None
    if path.endswith("/linger"):
        # A response, then work that goes on (a background task) longer than the worker waits.
        await _send(send, 200, b"queued")
        note("edge.log", "linger-started " + query)
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            note("edge.log", "linger-cancelled " + query)
            raise
        return
    return await _send(send, 200 if path.endswith("/health") else 404,
                       b"ok" if path.endswith("/health") else b"not found")


async def _send(send, status, body, extra=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), *extra]})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    if environ["PATH_INFO"].endswith("/status-header"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Status", "healthy")])
        return [b"fine"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

"""ASGI apps for test_asgi.py: a FastAPI app (`app`), a Starlette app (`starlette_app`)
and a bare ASGI 3 callable (`raw`). What a test must observe from outside (lifespan
events, a disconnect the app saw) is written to files in FCGIBRIDGE_TEST_DIR."""
import asyncio
import contextlib
import json
import os
from pathlib import Path

from fastapi import BackgroundTasks, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.applications import Starlette
from starlette.routing import Route

TEST_DIR = Path(os.environ.get("FCGIBRIDGE_TEST_DIR", "/tmp"))


def note(name, line):
    """Append a line to TEST_DIR/name (one write: lines from many workers do not mix)."""
    with open(TEST_DIR / name, "a") as f:
        f.write(line + "\n")


@contextlib.asynccontextmanager
async def lifespan(_app):
    note("lifespan.log", "startup %d" % os.getpid())
    yield {"started_by": os.getpid()}
    note("lifespan.log", "shutdown %d" % os.getpid())


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health():
    return PlainTextResponse("ok")


@app.get("/items/{item_id}")
async def item(item_id: int, q: str = "none"):
    return {"item_id": item_id, "q": q}


@app.post("/json")
async def echo_json(payload: dict):
    return {"got": payload, "keys": sorted(payload)}


@app.post("/form")
async def form(name: str = Form(...), upload: UploadFile = File(...)):
    data = await upload.read()
    return {"name": name, "filename": upload.filename, "size": len(data), "head": data[:8].decode("latin-1")}


@app.get("/chunks")
async def stream(n: int = 5):
    async def chunks():
        for i in range(n):
            yield ("chunk %d\n" % i).encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


@app.post("/background")
async def background(tasks: BackgroundTasks, token: str):
    tasks.add_task(note, "background.log", token)
    return {"queued": token}


@app.get("/state")
async def state(request: Request):
    return {"started_by": request.state.started_by, "pid": os.getpid()}


@app.get("/sleep")
async def sleep(s: float = 0.5):
    await asyncio.sleep(s)
    return {"slept": s}


@app.get("/boom")
async def boom():
    raise RuntimeError("boom from the ASGI app")


@app.get("/file")
async def file(path: str):
    return FileResponse(path)


async def starlette_home(request):
    return JSONResponse({"framework": "starlette", "path": request.url.path,
                         "root_path": request.scope.get("root_path", "")})


starlette_app = Starlette(routes=[Route("/health", lambda r: PlainTextResponse("ok")),
                                  Route("/hello", starlette_home)])


async def raw(scope, receive, send):
    """A bare ASGI 3 app: /scope echoes the scope; /wait-disconnect waits for the client
    to go away; /redirect and /accel hand the request back to the bridge; /pathsend uses
    the pathsend extension."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
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
        return await _send(send, 200, json.dumps(shown).encode(), b"application/json")
    if path.endswith("/wait-disconnect"):
        token = scope["query_string"].decode()
        note("disconnect.log", "waiting " + token)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                note("disconnect.log", "disconnected " + token)
                return
    if path.endswith("/redirect"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"location", b"/raw/target")]})
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

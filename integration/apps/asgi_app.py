"""ASGI apps for test_asgi.py: a FastAPI app (`app`) and a Starlette app (`starlette_app`);
the bare ASGI app without dependencies is asgi_raw_app.py. What a test must observe from
outside (lifespan events) is written to files in FCGIBRIDGE_TEST_DIR."""
import asyncio
import contextlib
import os

from fastapi import BackgroundTasks, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.applications import Starlette
from starlette.routing import Route

from asgi_raw_app import note


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


@app.get("/loop")
async def loop_kind():
    return {"loop": type(asyncio.get_running_loop()).__module__}


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

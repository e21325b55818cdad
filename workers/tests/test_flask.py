"""A real framework on the worker: Flask/Werkzeug request parsing and responses."""
import hashlib
import io
import json
import os

import subprocess

import pytest

from conftest import worker_python

pytest.importorskip("flask")  # the test side uses werkzeug to encode uploads


@pytest.fixture(scope="module")
def _flask_in_worker_python():
    if subprocess.run([worker_python(), "-c", "import flask"], capture_output=True).returncode:
        pytest.skip("flask is not installed for %s" % worker_python())


@pytest.fixture
def flask_worker(spawn, _flask_in_worker_python):
    return spawn(app="flask_app:app", threads=2)


def test_json(flask_worker):
    r = flask_worker.get("/json", query="x=1&y=%C3%A9", params={"HTTP_HOST": "example.org", "HTTPS": "on"})
    assert r.code == 200
    data = json.loads(r.body)
    assert data == {"ok": True, "args": {"x": "1", "y": "\u00e9"}, "scheme": "https",
                    "host": "example.org", "path": "/json"}


@pytest.mark.parametrize("content_length", [True, False])
def test_multipart_upload(flask_worker, content_length):
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart
    payload = os.urandom(3 * 1024 * 1024)
    boundary, body = encode_multipart(
        {"field": "value", "file": FileStorage(io.BytesIO(payload), filename="blob.bin")})
    with flask_worker.client() as c:
        r = c.request("/upload", method="POST", body=body, chunk=16000, content_length=content_length,
                      params={"CONTENT_TYPE": "multipart/form-data; boundary=%s" % boundary})
    assert r.code == 200, r.stderr
    data = json.loads(r.body)
    assert data == {"name": "blob.bin", "size": len(payload),
                    "sha": hashlib.sha256(payload).hexdigest(), "field": "value"}


def test_echo_body(flask_worker):
    body = os.urandom(200000)
    with flask_worker.client() as c:
        r = c.request("/echo", method="POST", body=body, chunk=7000)
    assert r.body == body


def test_stream(flask_worker):
    r = flask_worker.get("/stream")
    assert r.body == b"".join(b"part %d\n" % i for i in range(5))


def test_view_exception(flask_worker):
    r = flask_worker.get("/boom")
    assert r.code == 500
    # Flask logs the exception through `logging`; with no handler of the app's own, the
    # worker's bridge handler writes it to stderr as one marked JSON line carrying the
    # request id, which the bridge turns into a log record (logging_bridge.py).
    import json
    import time
    deadline = time.monotonic() + 30
    records = []
    while time.monotonic() < deadline:
        records = [json.loads(line.split("fcgibridge-log ", 1)[1])
                   for line in flask_worker.stderr.splitlines() if "\x1ffcgibridge-log " in line]
        if records:
            break
        time.sleep(0.05)
    assert any("ZeroDivisionError: flask view failed" in rec["msg"] and rec["level"] == "ERROR"
               and rec["request_id"] is not None for rec in records), flask_worker.stderr

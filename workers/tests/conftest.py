"""Fixtures: assemble the worker package like the bridge does and run workers.

The native module is not built here: run `cargo build -p fcgibridge-worker`
first (or point FCGIBRIDGE_WORKER_LIB at a built libfcgibridge_worker.so).
FCGIBRIDGE_TEST_PYTHON picks the interpreter workers run under (default: the
one running pytest).
"""
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WORKERS = HERE.parent
PACKAGE_SRC = WORKERS / "python" / "fcgibridge_worker"
APPS = HERE / "apps"
BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "import fcgibridge_worker.main as m; m.main()")


def find_native_lib():
    env = os.environ.get("FCGIBRIDGE_WORKER_LIB")
    if env:
        return Path(env)
    candidates = []
    for profile in ("debug", "release"):
        p = WORKERS.parent / "target" / profile / "libfcgibridge_worker.so"
        if p.exists():
            candidates.append(p)
    if not candidates:
        pytest.exit("libfcgibridge_worker.so not found: run `cargo build -p fcgibridge-worker` "
                    "or set FCGIBRIDGE_WORKER_LIB", returncode=2)
    return max(candidates, key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory):
    """<runtime_dir>/python/fcgibridge_worker/ with the FILES and _native.abi3.so."""
    root = tmp_path_factory.mktemp("runtime")
    pkg = root / "python" / "fcgibridge_worker"
    pkg.mkdir(parents=True)
    names = [n.strip() for n in (PACKAGE_SRC / "FILES").read_text().splitlines() if n.strip()]
    for name in names:
        shutil.copy(PACKAGE_SRC / name, pkg / name)
    shutil.copy(find_native_lib(), pkg / "_native.abi3.so")
    return root


def worker_python():
    return os.environ.get("FCGIBRIDGE_TEST_PYTHON") or sys.executable


class Worker:
    def __init__(self, proc, sock_path, ready_line, out_path, err_path):
        self.proc = proc
        self.sock_path = sock_path
        self.ready_line = ready_line
        self.out_path = out_path
        self.err_path = err_path

    def client(self, **kw):
        from fcgi import Client
        return Client(str(self.sock_path), **kw)

    def get(self, path="/", **kw):
        with self.client() as c:
            return c.request(path, **kw)

    @property
    def stderr(self):
        return self.err_path.read_text(errors="replace")

    @property
    def stdout(self):
        return self.out_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_worker(runtime_dir, tmp_path, app, threads=1, processes=1, python=None, env=None,
                 cwd=APPS, wait_ready=True, timeout=60, prefix=(), pass_fds=(), listener=None):
    """`listener`: (socket, path) of a listening socket several workers share (the caller
    closes it), else the worker gets one of its own."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if listener:
        lsock, sock_path = listener
    else:
        sock_path = tmp_path / ("w%d.sock" % time.monotonic_ns())
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(str(sock_path))
        lsock.listen(64)
    ready_r, ready_w = os.pipe()
    full_env = dict(os.environ)
    full_env.update({
        "FCGIBRIDGE_APP": app,
        "FCGIBRIDGE_THREADS": str(threads),
        "FCGIBRIDGE_PROCESSES": str(processes),
        "FCGIBRIDGE_POOL": "test",
        "FCGIBRIDGE_READY_FD": str(ready_w),
    })
    full_env.pop("PYTHONPATH", None)
    full_env.update(env or {})
    out_path = tmp_path / "worker.out"
    err_path = tmp_path / "worker.err"
    with open(out_path, "ab") as out, open(err_path, "ab") as err:
        proc = subprocess.Popen(
            list(prefix) + [python or worker_python(), "-u", "-c", BOOT, str(runtime_dir / "python")],
            stdin=lsock.fileno(), stdout=out, stderr=err, pass_fds=(ready_w,) + tuple(pass_fds),
            cwd=str(cwd), env=full_env,
        )
    if not listener:
        lsock.close()
    os.close(ready_w)
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([ready_r], [], [], left)[0]:
            break
        more = os.read(ready_r, 4096)
        if not more:
            break
        line += more
    os.close(ready_r)
    w = Worker(proc, sock_path, line.decode("utf-8", "replace"), out_path, err_path)
    if wait_ready and line != b"READY\n":
        w.stop()
        raise AssertionError("worker not ready: %r\nstderr:\n%s" % (line, w.stderr))
    return w


@pytest.fixture
def spawn(runtime_dir, tmp_path):
    workers = []

    def _spawn(app="wsgi_app:application", **kw):
        w = start_worker(runtime_dir, tmp_path / ("w%d" % len(workers)), app, **kw)
        workers.append(w)
        return w

    yield _spawn
    for w in workers:
        w.stop()


@pytest.fixture
def worker(spawn):
    return spawn()

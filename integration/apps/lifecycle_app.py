"""A WSGI app for the supervision tests (integration/test_lifecycle.py, test_sizing.py,
test_reload.py): it leaks memory, spins the CPU, hangs, exits, and tells who served it.

Paths:
  /pid                 {"pid": ..., "env": $LIFECYCLE_TAG, "thread": ...}
  /health              "ok"
  /sleep?s=            sleeps s seconds, then answers like /pid
  /leak?mb=            keeps mb MiB more (never freed), answers VmRSS
  /spin?s=             burns s seconds of CPU in pure Python, answers like /pid
  /hang                sleeps forever (in function hang_here, for the stack dump)
  /hold?mark=          holds its thread until the test creates <mark>.release, answers like /pid
  /exit                os._exit(1) mid-request
  /escape?mark=&group= starts `python -c "time.sleep(600)"` in a session of its own (setsid),
                       or with group=1 in a process group of its own (setpgid), its pid in
                       NAME.escaped; answers like /pid
  /double-fork?mark=&setsid=&group=   forks a child that forks a grandchild (its pid in
                       NAME.grandchild) and exits (after setsid when setsid=1, after setpgid
                       when group=1); the grandchild writes "<pid> <ppid>" to NAME.orphan once
                       its parent is gone, then exits (or, with setsid=1 or group=1, sleeps
                       for ever)
With ?mark=NAME, /sleep, /hang and /hold leave NAME.started in $FCGIBRIDGE_TEST_DIR once
they run (with the pid): a test waits for that instead of guessing with a sleep.
"""
import json
import os
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs

# Import-time behaviour driven by the environment, for start-up tests.
if os.environ.get("LIFECYCLE_IMPORT_SLEEP"):
    time.sleep(float(os.environ["LIFECYCLE_IMPORT_SLEEP"]))
if os.environ.get("LIFECYCLE_BROKEN"):
    import no_such_module_for_the_lifecycle_test  # noqa: F401

_LEAK = []


def _who(extra=None):
    d = {"pid": os.getpid(), "tag": os.environ.get("LIFECYCLE_TAG", ""), "thread": threading.current_thread().name}
    d.update(extra or {})
    return d


def _json(start_response, obj):
    body = json.dumps(obj).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _started(q):
    name = q.get("mark")
    marks = os.environ.get("FCGIBRIDGE_TEST_DIR")
    if name and marks:
        path = os.path.join(marks, name + ".started")
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)


def _mark_file(q, suffix, text):
    path = os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], q["mark"] + suffix)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _double_fork(q, setsid, group):
    """A child that forks a grandchild (its pid in NAME.grandchild) and exits: the
    grandchild is an orphan at once."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    code = 1
    try:
        if setsid:
            os.setsid()
        if group:
            os.setpgid(0, 0)
        parent = os.getpid()
        grandchild = os.fork()
        if grandchild:
            _mark_file(q, ".grandchild", str(grandchild))
        else:
            deadline = time.monotonic() + 60
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)
            _mark_file(q, ".orphan", f"{os.getpid()} {os.getppid()}")
            while setsid or group:
                time.sleep(1)
        code = 0
    finally:
        os._exit(code)


def hang_here():
    while True:
        time.sleep(0.5)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/health":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/pid":
        return _json(start_response, _who())
    if path == "/sleep":
        _started(q)
        time.sleep(float(q.get("s", "1")))
        return _json(start_response, _who())
    if path == "/hold":
        _started(q)
        release = os.path.join(os.environ.get("FCGIBRIDGE_TEST_DIR", "/nonexistent"), q.get("mark", "") + ".release")
        deadline = time.monotonic() + float(q.get("max", "300"))
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return _json(start_response, _who())
    if path == "/leak":
        mb = int(q.get("mb", "10"))
        block = bytearray(mb << 20)
        for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
            block[i] = 1
        _LEAK.append(block)
        return _json(start_response, _who({"rss": _rss()}))
    if path == "/spin":
        end = time.process_time() + float(q.get("s", "1"))
        n = 0
        while time.process_time() < end:
            n += 1
        return _json(start_response, _who({"loops": n}))
    if path == "/hang":
        _started(q)
        hang_here()
    if path == "/exit":
        os._exit(1)
    if path == "/escape":
        own = {"preexec_fn": os.setpgrp} if q.get("group") == "1" else {"start_new_session": True}
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], **own)
        _mark_file(q, ".escaped", str(child.pid))
        return _json(start_response, _who({"escaped": child.pid}))
    if path == "/double-fork":
        _double_fork(q, q.get("setsid") == "1", q.get("group") == "1")
        return _json(start_response, _who())
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]

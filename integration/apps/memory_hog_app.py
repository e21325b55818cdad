"""A WSGI app for rlimit-as (integration/test_isolation.py): / reports the worker's pid and its
address-space limit, /hog allocates far more than the cap, /hold creates the file `holding` in
FCGIBRIDGE_TEST_DIR and answers once the test creates `release` there, /upload reads its whole
body into memory."""
import json
import os
import resource
import time


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/hog":
        held = bytearray(400 << 20)  # MemoryError under rlimit-as: 256M
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"allocated %d bytes\n" % len(held)]
    if path == "/hold":
        signals = os.environ["FCGIBRIDGE_TEST_DIR"]
        open(os.path.join(signals, "holding"), "w").close()
        release = os.path.join(signals, "release")
        deadline = time.monotonic() + 120
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"released\n"]
    if path == "/upload":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d\n" % len(body)]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"pid": os.getpid(), "as": resource.getrlimit(resource.RLIMIT_AS)}).encode()]

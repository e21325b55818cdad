"""One site of a pool template (integration/test_dynamic_pools.py): says which app file,
host, user, process, account (uid, supplementary groups), interpreter and listener hint
(FCGIBRIDGE_LISTENERS) serve it.
/hold?until=FILE keeps the request (and its worker) busy until FILE exists. /redirect?to=PATH
answers a CGI local redirect. /ready answers 200 only to its own site's Host (as Django's
ALLOWED_HOSTS), else 400, and notes the Host in $FCGIBRIDGE_TEST_DIR/ready.log."""
import json
import os
import sys
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/ready":
        host = environ.get("HTTP_HOST") or ""
        with open(os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], "ready.log"), "a") as f:
            f.write(host + "\n")
        mine = host == os.path.basename(os.path.dirname(os.path.abspath(__file__)))
        start_response("200 OK" if mine else "400 Bad Request", [("Content-Type", "text/plain")])
        return [b"ready" if mine else b"DisallowedHost"]
    if environ.get("PATH_INFO") == "/redirect":
        # A CGI local redirect to ?to= (test_dynamic_pools.py: into another instance).
        to = parse_qs(environ.get("QUERY_STRING", "")).get("to", [""])[0]
        start_response("200 OK", [("Location", to), ("Content-Type", "text/plain")])
        return [b"first body!"]
    if environ.get("PATH_INFO") == "/hold":
        until = parse_qs(environ.get("QUERY_STRING", "")).get("until", [""])[0]
        deadline = time.monotonic() + 120
        while until and not os.path.exists(until) and time.monotonic() < deadline:
            time.sleep(0.02)
    body = json.dumps({
        "app": os.path.abspath(__file__),
        "host": environ.get("HTTP_HOST"),
        "user": environ.get("REMOTE_USER"),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "groups": sorted(os.getgroups()),
        "python": "%d.%d" % sys.version_info[:2],
        "version": os.environ.get("SITE_VERSION"),
        "listeners": os.environ.get("FCGIBRIDGE_LISTENERS"),
        "script_name": environ.get("SCRIPT_NAME"),
        "path_info": environ.get("PATH_INFO"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

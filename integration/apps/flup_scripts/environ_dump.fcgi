#!/usr/bin/env python3
"""The app of the differential tests (integration/test_flup.py): the CGI part of its environ
as JSON. Run as it is by stock flup (python3 environ_dump.fcgi, listening where
FLUP_BIND=host:port says) and, unmodified, by fcgibridge as `app: .../environ_dump.fcgi`."""
import json
import os

from flup.server.fcgi import WSGIServer


def application(environ, start_response):
    env = {}
    for key, value in environ.items():
        if isinstance(value, (str, bool)):
            env[key] = value
    env["wsgi.version"] = list(environ["wsgi.version"])
    length = environ.get("CONTENT_LENGTH")
    if length:
        env["x-body"] = environ["wsgi.input"].read(int(length)).decode("latin-1")
    body = json.dumps(env, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("X-Pool", os.environ.get("DUMP_POOL", "flup"))])
    return [body]


bind = os.environ.get("FLUP_BIND")
if bind:
    host, _, port = bind.rpartition(":")
    address = (host, int(port))
else:
    address = None
WSGIServer(application, bindAddress=address).run()

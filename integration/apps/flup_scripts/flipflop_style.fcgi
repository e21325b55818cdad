#!/usr/bin/env python3
# The form lighttpd's documentation gives for Python 3 apps: flipflop's WSGIServer.
from flipflop import WSGIServer


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"flipflop-style: " + environ["PATH_INFO"].encode("latin-1")]


WSGIServer(application).run()

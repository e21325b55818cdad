#!/usr/bin/env python3
# A script written for flup6 (the Python 3 fork of flup; same module paths): the forking
# server, one request per child, debug pages off.
from flup.server.fcgi_fork import WSGIServer


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    yield "flup6-style: %s %s" % (environ["REQUEST_METHOD"], environ["PATH_INFO"])


if __name__ == "__main__":
    WSGIServer(app, maxRequests=1000, maxChildren=8, debug=False).run()

#!/usr/bin/env python3
# A script for flup-py3 (another Python 3 port under the same `flup` name): the SCGI
# server with a fixed script name, settings passed in through `environ`.
from flup.server.scgi import WSGIServer


def app(environ, start_response):
    body = "flup-py3-style: %s | %s | %s" % (environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["APP_MODE"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


WSGIServer(app, scriptName="/py3", environ={"APP_MODE": "production"}, bindAddress=("localhost", 4000)).run()

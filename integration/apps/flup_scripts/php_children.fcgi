#!/usr/bin/env python3
# A script that is a FastCGI app when a spawner (lighttpd, spawn-fcgi -C) set
# PHP_FCGI_CHILDREN, and a development HTTP server otherwise.
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("chosen from the environment: %s" % environ["PATH_INFO"]).encode()]


if "PHP_FCGI_CHILDREN" in os.environ:
    from flup.server.fcgi import WSGIServer
    WSGIServer(app, multiplexed=True, bindAddress=None).run()
else:
    from wsgiref.simple_server import make_server
    make_server("", 8000, app).serve_forever()

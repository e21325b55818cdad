import os


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("wsgi file in %s" % os.path.basename(os.path.dirname(__file__))).encode()]

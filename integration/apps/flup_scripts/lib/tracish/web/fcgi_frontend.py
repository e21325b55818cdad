"""The tracker's FastCGI front end: flup's threaded server around the dispatcher, with a
middleware that unquotes PATH_INFO (flup leaves it quoted when it derives it)."""
import os
from urllib.parse import unquote


def dispatch_request(environ, start_response):
    body = ("tracker at %s: %s" % (os.environ.get("TRACISH_ENV"), environ["PATH_INFO"])).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


class FlupMiddleware(object):
    def __init__(self, application):
        self.application = application

    def __call__(self, environ, start_response):
        environ["PATH_INFO"] = unquote(environ.get("PATH_INFO", ""))
        return self.application(environ, start_response)


params = {}
from flup.server.fcgi import WSGIServer  # noqa: E402

params["maxThreads"] = 15
dispatch_request = FlupMiddleware(dispatch_request)


def run():
    WSGIServer(dispatch_request, **params).run()


if __name__ == "__main__":
    run()

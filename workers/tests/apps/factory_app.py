"""An app module with a factory, an app object and a plain WSGI function, but no
`application`: what the worker suggests when the callable named is missing (not the
imported functions of two arguments)."""
from operator import add  # noqa: F401
from os.path import samefile  # noqa: F401


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def create_app():
    return hello


def helper(x):
    return x


class Thing:
    def __call__(self, environ, start_response):
        return hello(environ, start_response)


thing = Thing()

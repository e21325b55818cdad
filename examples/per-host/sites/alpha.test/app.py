"""The site alpha.test: answers with its host and the pid of the worker serving it."""
import os

HOST = "alpha.test"


def application(environ, start_response):
    body = f"host={HOST} pid={os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

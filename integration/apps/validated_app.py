"""A WSGI app wrapped in wsgiref.validate.validator: every PEP 3333 rule the
validator knows is checked on the server's side of each call.  Its warnings are
turned into errors so a violation cannot pass as a log line."""
import hashlib
import json
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)


def inner(environ, start_response):
    path = environ.get("PATH_INFO", "")
    inp = environ["wsgi.input"]
    if path == "/readline":
        # readline, readlines and iteration on wsgi.input
        first = inp.readline()
        second = inp.readline(5)
        rest_lines = inp.readlines()
        out = {"first": first.decode(), "second": second.decode(),
               "rest": [line.decode() for line in rest_lines]}
    elif path == "/iter":
        out = {"lines": [line.decode() for line in inp]}
    else:
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = inp.read(8192)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        out = {"method": environ["REQUEST_METHOD"], "path": path,
               "query": environ.get("QUERY_STRING", ""), "size": n, "sha256": h.hexdigest(),
               "multithread": environ["wsgi.multithread"],
               "multiprocess": environ["wsgi.multiprocess"],
               "run_once": environ["wsgi.run_once"],
               "url_scheme": environ["wsgi.url_scheme"],
               "version": list(environ["wsgi.version"])}
    environ["wsgi.errors"].write("validated app served %s\n" % path)
    environ["wsgi.errors"].flush()
    body = json.dumps(out).encode()
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "application/json")])
        write(body)
        return []
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


application = validator(inner)

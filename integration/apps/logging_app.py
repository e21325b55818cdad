"""Logs through Python's logging and wsgi.errors (integration/test_app_logging.py)."""
import logging
import urllib.parse

log = logging.getLogger("shop.views")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/log":
        log.info("order %s placed", 42)
        log.info("paid", extra={"request_id": "app-7\n[fake] line"})
        log.warning("stock low for %s", "widget")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("could not compute")
    elif path == "/forge":
        # What a hostile (or careless) app may write: a message with a forged log line in it.
        fake = urllib.parse.unquote(environ.get("QUERY_STRING", ""))
        log.warning("first line\n" + fake)
        environ["wsgi.errors"].write("carriage\rreturn\x00nul\x1b[2Jesc " + fake + "\n")
        environ["wsgi.errors"].flush()
    elif path == "/flood":
        n = int(environ.get("QUERY_STRING") or "1")
        for i in range(n):
            environ["wsgi.errors"].write("flood line %d\n" % i)
        environ["wsgi.errors"].flush()
    elif path == "/crash":
        import os
        os._exit(3)
    elif path == "/boom":
        return {"x": 1 / 0}  # the worker logs the traceback and answers 500
    elif path == "/errors":
        environ["wsgi.errors"].write("note via wsgi.errors\n")
        environ["wsgi.errors"].flush()
    body = b"logged\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

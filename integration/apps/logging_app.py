"""Logs through Python's logging and wsgi.errors (integration/test_app_logging.py)."""
import logging

log = logging.getLogger("shop.views")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/log":
        log.info("order %s placed", 42)
        log.warning("stock low for %s", "widget")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("could not compute")
    elif path == "/errors":
        environ["wsgi.errors"].write("note via wsgi.errors\n")
        environ["wsgi.errors"].flush()
    body = b"logged\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

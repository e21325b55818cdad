"""Route the app's ``logging`` records into the bridge's log with their level, logger
name and request id: a handler on the root logger writes each record to stderr as one
marked JSON line, which the bridge parses (bridge/src/logging/app_records.rs).

Installed only when the app left the root logger without handlers, so an app that
configures logging itself keeps its own handlers (its lines still reach the bridge's
log, as plain stderr)."""
import contextvars
import json
import logging
import sys

MARKER = "\x1ffcgibridge-log "
# The request id of the ASGI request whose task is running (asgi.py sets it per task).
REQUEST_ID = contextvars.ContextVar("fcgibridge_request_id", default=None)


def _request_id():
    """The request id of the running ASGI task, or of the WSGI environ in this thread's frames."""
    rid = REQUEST_ID.get()
    if rid is not None:
        return str(rid)
    frame = sys._getframe(2)
    while frame is not None:
        env = frame.f_locals.get("environ")
        if isinstance(env, dict):
            rid = env.get("fcgibridge.request_id")
            if rid is not None:
                return str(rid)
        frame = frame.f_back
    return None


class BridgeHandler(logging.Handler):
    def emit(self, record):
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg = msg + "\n" + logging.Formatter().formatException(record.exc_info)
            fields = {"level": record.levelname, "logger": record.name, "msg": msg, "request_id": _request_id()}
            # An id the app put on the record itself (`extra=`, a logging filter): kept
            # beside the bridge's, so that the app's own correlation survives.
            own = getattr(record, "request_id", None)
            if own is not None and str(own) != fields["request_id"]:
                fields["app_request_id"] = str(own)[:200]
            line = json.dumps(fields)
            sys.stderr.write(MARKER + line + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break a request
            self.handleError(record)


def install():
    """Call after the app is imported (so its own logging setup wins)."""
    root = logging.getLogger()
    if root.handlers:
        return
    root.addHandler(BridgeHandler())
    if root.level == logging.WARNING:  # untouched default: let INFO through as well
        root.setLevel(logging.INFO)

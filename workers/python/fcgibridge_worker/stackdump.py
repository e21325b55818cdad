"""SIGUSR2: write the Python stack of every thread that is serving a request to stderr,
each line prefixed with ``[stack request_id=N thread=NAME]`` so the bridge's log keeps
them together with the request's id, the first naming the request (``METHOD URI``: a
direct worker's request ids are its own, and the slowlog's lines name the request this
way). The bridge's slowlog sends the signal; the request keeps running."""
import signal
import sys
import threading
import traceback


# The bridge's log escapes control characters the same way (bridge/src/logging/escape.rs):
# a client's URI can neither end the stack's header line nor forge one of its own.
_ESCAPES = {c: "\\x%02x" % c for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r"})
del _ESCAPES[ord("\t")]


def one_line(text):
    """`text` with its control characters escaped (\\n, \\x1b, …), tab kept."""
    return text.translate(_ESCAPES)


def _environ(frame):
    """The WSGI environ found in the thread's frames (the one with a fcgibridge.request_id)."""
    while frame is not None:
        try:
            values = list(frame.f_locals.values())
        except Exception:  # noqa: BLE001 - a frame that cannot be inspected is skipped
            values = []
        for v in values:
            if isinstance(v, dict) and "fcgibridge.request_id" in v:
                return v
        frame = frame.f_back
    return None


def request_line(environ):
    """``METHOD URI`` of a WSGI environ, the URI as the web server's REQUEST_URI."""
    uri = environ.get("REQUEST_URI")
    if not uri:
        uri = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            uri += "?" + environ["QUERY_STRING"]
    return "%s %s" % (environ.get("REQUEST_METHOD", "?"), uri)


def dump(signum=None, _frame=None):
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    lines = []
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        environ = _environ(frame)
        if environ is None:
            continue  # idle thread: waiting in the native accept loop
        prefix = "[stack request_id=%s thread=%s] " % (environ.get("fcgibridge.request_id"), names.get(ident, ident))
        lines.append(prefix + "Python stack of %s, most recent call last:\n" % one_line(request_line(environ)))
        for entry in traceback.format_stack(frame):
            for line in entry.rstrip("\n").split("\n"):
                lines.append(prefix + line + "\n")
    if lines:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()


def install():
    """Called from the main thread (signal handlers can only be set there)."""
    signal.signal(signal.SIGUSR2, dump)

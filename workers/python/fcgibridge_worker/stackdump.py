"""SIGUSR2: write the Python stack of every thread that is serving a request to stderr,
each line prefixed with ``[stack request_id=N thread=NAME]`` so the bridge's log keeps
them together with the request's id (the bridge's slowlog sends the signal; the request
keeps running)."""
import signal
import sys
import threading
import traceback


def _request_id(frame):
    """The fcgibridge.request_id of the WSGI environ found in the thread's frames."""
    while frame is not None:
        try:
            values = list(frame.f_locals.values())
        except Exception:  # noqa: BLE001 - a frame that cannot be inspected is skipped
            values = []
        for v in values:
            if isinstance(v, dict) and "fcgibridge.request_id" in v:
                return v.get("fcgibridge.request_id")
        frame = frame.f_back
    return None


def dump(signum=None, _frame=None):
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    lines = []
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        rid = _request_id(frame)
        if rid is None:
            continue  # idle thread: waiting in the native accept loop
        prefix = "[stack request_id=%s thread=%s] " % (rid, names.get(ident, ident))
        lines.append(prefix + "Python stack, most recent call last:\n")
        for entry in traceback.format_stack(frame):
            for line in entry.rstrip("\n").split("\n"):
                lines.append(prefix + line + "\n")
    if lines:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()


def install():
    """Called from the main thread (signal handlers can only be set there)."""
    signal.signal(signal.SIGUSR2, dump)

"""fcgibridge's WSGI worker.

The bridge starts ``python -c "...; import fcgibridge_worker.main as m; m.main()"``
with a listening socket on fd 0 (see docs/worker-contract.md). The native module
``_native`` (Rust) does the serving; this package holds what Python apps may use.
"""

__all__ = ["ClientDisconnected", "FileWrapper"]


class ClientDisconnected(OSError):
    """Raised by ``wsgi.input`` reads when the client went away mid-request
    (the bridge sent FCGI_ABORT_REQUEST, or the connection broke)."""


def __getattr__(name):
    # FileWrapper lives in the native module; import it lazily so that a native
    # module that cannot load is reported by main() (ERROR line, exit 3), not here.
    if name == "FileWrapper":
        from ._native import FileWrapper

        return FileWrapper
    raise AttributeError("module %r has no attribute %r" % (__name__, name))

"""Entry point of a worker process (docs/worker-contract.md).

Environment: FCGIBRIDGE_APP (``module:callable``, or a file path with an optional
``:callable``; see load_app),
FCGIBRIDGE_THREADS, FCGIBRIDGE_PROCESSES, FCGIBRIDGE_POOL, FCGIBRIDGE_READY_FD,
FCGIBRIDGE_INTERFACE (wsgi, asgi, auto), FCGIBRIDGE_CONCURRENCY, FCGIBRIDGE_ASGI_LOOP.
fd 0 is the listening socket the bridge connects to; with FCGIBRIDGE_DIRECT=1 the web
server's own (FCGIBRIDGE_SCOREBOARD_FD, FCGIBRIDGE_MOUNT, FCGIBRIDGE_KEEP_PATH_INFO,
FCGIBRIDGE_MAX_REDIRECTS).
"""
import atexit
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import traceback

from . import ClientDisconnected

EXIT_LOAD_FAILED = 3


class LoadError(Exception):
    """The app could not be found or is not callable (no traceback needed)."""


def _env_int(name, default):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise LoadError("%s=%r is not an integer" % (name, value))


def _resolve(obj, attr, where, target):
    """``attr`` of ``obj`` (the module or file ``target``, ``where`` for errors); a
    trailing ``()`` calls it."""
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    found = obj
    for part in attr.split("."):
        if not part.isidentifier():
            raise LoadError("%r is not a valid attribute name in %s" % (attr, where))
        try:
            found = getattr(found, part)
        except AttributeError:
            raise LoadError("%s has no attribute %r%s" % (where, attr, _did_you_mean(obj, target)))
    if call:
        found = found()
    return found


def _app_names(module):
    """The names in ``module`` that look like an app to serve: app objects, functions it
    defines that take WSGI's or ASGI's arguments (an imported function of two arguments is
    too often something else), and app factories it defines, shown as ``name()``."""
    import inspect

    names = []
    for name, value in sorted(vars(module).items()):
        try:
            if name.startswith("_") or inspect.isclass(value) or inspect.ismodule(value) or not callable(value):
                continue
            function = inspect.isfunction(value) and value.__module__ == module.__name__
            if inspect.isroutine(value) and not function:
                continue
            if _looks_like(value):
                names.append(name)
            elif function and "app" in name.lower() and _required_args(value) == 0:
                names.append(name + "()")
        except Exception:  # noqa: B902 - a proxy object that cannot be looked at is no app
            continue
    return names


def _required_args(func):
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(1 for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _did_you_mean(module, target):
    """``; did you mean "target:app"?`` for the app-looking callables of ``module`` (an
    object that fails to be looked at only costs the hint)."""
    try:
        names = _app_names(module)
    except Exception:  # noqa: B902 - the hint must never hide the error it is added to
        return ""
    if not names:
        return "; it has no WSGI or ASGI callable at its top level"
    specs = ", ".join('"%s:%s"' % (target, name) for name in names[:5])
    return "; did you mean %s%s?" % ("one of " if len(names) > 1 else "", specs)


def _is_callable_name(text):
    """``name``, ``a.b`` or ``factory()``: what may follow the last ``:`` of FCGIBRIDGE_APP."""
    if text.endswith("()"):
        text = text[:-2]
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _import_module_file(path, stem, ext):
    """A .py or .wsgi file, imported as a module (its ``__main__`` block does not run)."""
    if ext == ".py" and stem.isidentifier() and stem not in sys.modules:
        modname = stem
    else:
        modname = "_fcgibridge_app_" + "".join(c if c.isalnum() else "_" for c in stem)
    loader = importlib.machinery.SourceFileLoader(modname, path)
    spec = importlib.util.spec_from_file_location(modname, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return module


def _run_script(path):
    """Any other file (app.fcgi, a script without extension) runs as the web server or
    spawn-fcgi ran it: as ``__main__`` with ``sys.argv == [path]``. No bytecode is cached,
    as for any script (app.fcgi's would share app.py's __pycache__ name)."""
    import builtins
    import types

    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = builtins
    previous, argv = sys.modules.get("__main__"), sys.argv
    sys.modules["__main__"] = module
    sys.argv = [path]
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.argv = argv
        if previous is not None:
            sys.modules["__main__"] = previous
        raise
    return module


def _load_file(path, attr, handoff=None):
    from . import flup_compat

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise LoadError("no such file: %s" % path)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    stem, ext = os.path.splitext(os.path.basename(path))
    # A flup script's WSGIServer(app).run() hands `app` over (flup_compat); with `handoff`
    # the worker serves it from inside run() and this call does not return.
    # `:__main__` runs even a .py file as the main script (a flup script whose server starts
    # under `if __name__ == "__main__":`).
    as_main = attr == "__main__" or ext not in (".py", ".wsgi")
    with flup_compat.Session(path, handoff) as session:
        try:
            if not as_main:
                module = _import_module_file(path, stem, ext)
            else:
                module = _run_script(path)
        except flup_compat.HandedOver:
            module = None
        except BaseException as exc:
            if session.app is None:
                raise
            sys.stderr.write("fcgibridge worker: %s raised %s after WSGIServer(...).run() handed over its app; "
                             "serving that app\n" % (path, type(exc).__name__))
    if session.app is not None:
        session.report()
        return session.app
    if attr == "__main__":
        raise LoadError("%s ran as the main script but never called WSGIServer(app).run() (flup, flipflop); "
                        "name its WSGI callable instead (%s:NAME)" % (path, path))
    return _resolve(module, attr, path, path)


def load_app(spec, handoff=None):
    """``module:callable`` (callable defaults to ``application``; ``factory()`` is
    called), or a file path (``/srv/app.wsgi``, ``app.py``, ``/srv/app.fcgi:name``): the
    part after the last ``:`` is the callable when it is a Python name. A .py or .wsgi file
    is imported as a module, any other file (or any file with ``:__main__``) runs as the
    main script. A script that hands its app to flup's ``WSGIServer(app).run()`` is served
    with that app; with ``handoff`` (the worker's serve function) from inside run()."""
    spec = spec.strip()
    if not spec:
        raise LoadError("FCGIBRIDGE_APP is not set")
    target, attr = spec, "application"
    head, sep, tail = spec.rpartition(":")
    if sep and head and _is_callable_name(tail):
        target, attr = head, tail
    # Django's module is "mysite.wsgi": a bare *.wsgi name is a file only if one exists
    # (the bridge always passes files as absolute paths).
    if target.endswith(".py") or os.sep in target or (target.endswith(".wsgi") and os.path.isfile(target)):
        app = _load_file(target, attr, handoff)
    else:
        module = importlib.import_module(target)
        app = _resolve(module, attr, "module " + target, target)
    if not callable(app):
        raise LoadError("%s is not callable (%r)" % (spec, type(app).__name__))
    return app


def _looks_like(app):
    """"asgi" or "wsgi" as far as the callable's own definition tells, else None: an
    ``async def`` (or an object whose ``__call__`` is one) is ASGI; a plain function of
    (scope, receive, send) is ASGI, of (environ, start_response) WSGI."""
    import inspect

    if _is_async(app):
        return "asgi"
    try:
        params = list(inspect.signature(app).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) == 3:
        return "asgi"
    if len(required) == 2 and len(positional) == 2:
        return "wsgi"
    return None


def _is_async(app):
    """An ``async def``, or an object whose ``__call__`` is one: certainly not WSGI."""
    import inspect

    if inspect.iscoroutinefunction(app):
        return True
    if inspect.isfunction(app) or inspect.ismethod(app) or inspect.isclass(app):
        return False
    return inspect.iscoroutinefunction(getattr(type(app), "__call__", None))


def choose_interface(app, spec):
    """The interface the worker serves ``app`` with, from FCGIBRIDGE_INTERFACE; an app
    that is plainly of the other kind is refused at start with the key to set."""
    wanted = os.environ.get("FCGIBRIDGE_INTERFACE", "wsgi").strip() or "wsgi"
    pool = os.environ.get("FCGIBRIDGE_POOL", "?")
    seen = _looks_like(app)
    if wanted == "auto":
        return seen or "wsgi"
    # A WSGI pool refuses only what cannot be WSGI (a plain function of three arguments
    # might be); an ASGI pool only a callable of exactly (environ, start_response).
    if wanted == "wsgi" and _is_async(app):
        raise LoadError("%s is an ASGI application (async, called with scope, receive, send) but pool %s "
                        "serves WSGI: set `interface: asgi` (or `auto`) in the pool" % (spec, pool))
    if wanted == "asgi" and seen == "wsgi":
        raise LoadError("%s is a WSGI application (called with environ, start_response) but pool %s "
                        "serves ASGI: set `interface: wsgi` (or leave `interface` out)" % (spec, pool))
    if wanted not in ("wsgi", "asgi"):
        raise LoadError("FCGIBRIDGE_INTERFACE=%r: expected wsgi, asgi or auto" % wanted)
    return wanted


def _write_ready(fd, line):
    if fd is None:
        return
    try:
        os.write(fd, line.encode("utf-8", "replace"))
        os.close(fd)
    except OSError:
        pass


def _summary(exc):
    if isinstance(exc, LoadError):
        text = str(exc)
    else:
        text = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
    return " ".join(text.split())[:500]


def ready_fd_from_env():
    """The readiness fd the bridge gave (FCGIBRIDGE_READY_FD), or None."""
    ready_fd = os.environ.get("FCGIBRIDGE_READY_FD")
    return int(ready_fd) if ready_fd and ready_fd.isdigit() else None


def _where():
    """``python=/srv/venv/bin/python (3.11.2) chdir=/srv/app``: which interpreter looked
    for the app's modules, and from where (a wrong ``python:`` or ``chdir:`` is the usual
    cause of an import error). Nothing is imported here: the app's directory is first on
    ``sys.path``, and a ``platform.py`` of its own would break the report it is in."""
    try:
        cwd = os.getcwd()
    except OSError as e:
        cwd = "? (%s)" % e.strerror
    version = "%d.%d.%d" % sys.version_info[:3]
    return "python=%s (%s) chdir=%s" % (sys.executable or "?", version, cwd)


def _app_frames(tb):
    """``tb`` without its leading frames of this package and of importlib, which only
    say how the app was imported: the first frame shown is the app's own code."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not (filename.startswith(package) or filename.startswith("<frozen importlib")
                or filename == getattr(importlib, "__file__", None)):
            break
        tb = tb.tb_next
    return tb


def report_load_failure(exc, ready_fd):
    """Traceback (or reason) to stderr, ERROR to the readiness fd, exit 3. A reason without
    traceback goes to stderr only when there is no readiness fd (a worker run by hand): the
    bridge logs the ERROR line it reads there, and the same words on stderr would say it twice."""
    if isinstance(exc, LoadError):
        if ready_fd is None:
            sys.stderr.write("fcgibridge worker: cannot load the app: %s\n" % exc)
    else:
        traceback.print_exception(type(exc), exc, _app_frames(exc.__traceback__))
    sys.stderr.flush()
    _write_ready(ready_fd, "ERROR %s (%s)\n" % (_summary(exc), _where()))
    os._exit(EXIT_LOAD_FAILED)


def _supervision_signals():
    """SIGUSR2 while the app is being imported: every thread's Python stack to stderr
    (faulthandler works from C, even while an import holds the GIL), which the bridge asks
    for before it kills a worker that missed startup-timeout; stackdump.install() takes
    SIGUSR2 over once the worker serves. A fatal signal (a segfault) dumps every thread's
    stack too. (SIGXCPU, cpu-time-limit's soft limit, is the native module's: sys.rs
    report_cpu_limit.)"""
    import faulthandler
    import signal

    try:
        faulthandler.register(signal.SIGUSR2, file=sys.__stderr__, all_threads=True)
        # A segfault or abort (a C extension, at import or in a view): every thread's Python
        # stack to stderr, the crashing thread's first, so that the bridge's log shows where.
        # The native module's handler, installed later, sends held responses first and then
        # hands the signal on to this one (crash.rs).
        if not faulthandler.is_enabled():
            faulthandler.enable(file=sys.__stderr__, all_threads=True)
    except (AttributeError, ValueError, OSError, RuntimeError):
        pass
    _operator_signals(signal)


def _operator_signals(signal):
    """SIGHUP and SIGUSR1 are the daemon's (reload, reopen logs) but reach every worker when
    an operator signals the whole service (`systemctl kill` without --kill-whom=main). The
    bridge starts workers with them ignored; a handler that says so replaces that, because
    an ignored signal stays ignored in the app's subprocesses and a handler does not. An app
    that installs its own handler while it is imported keeps it."""

    def ignored(signum, _frame):
        line = "fcgibridge worker: %s ignored; it is meant for the bridge's main process only\n" % (
            signal.Signals(signum).name)
        try:
            os.write(2, line.encode())  # not sys.stderr: the handler may interrupt a write to it
        except OSError:
            pass

    for sig in (signal.SIGHUP, signal.SIGUSR1):
        try:
            signal.signal(sig, ignored)
        except (ValueError, OSError):
            pass


def load_native(ppid):
    """The native module, with the parent-death signal set; exits at once when the parent
    (pid ``ppid``, the bridge) died before prctl took effect."""
    from . import _native  # maps the claim page and the scoreboard, and closes their fds

    for name in ("FCGIBRIDGE_CLAIM_FD", "FCGIBRIDGE_SCOREBOARD_FD"):
        os.environ.pop(name, None)  # not for the app's subprocesses
    if os.environ.get("FCGIBRIDGE_PDEATHSIG", "1") != "0":
        _native.set_parent_death_signal()
        if os.getppid() != ppid:
            os._exit(1)
    return _native


def check_import():
    """``fcgibridge check --import``: what main() does before it serves — the native
    module, the app loaded, its interface checked — then exit: ``READY <interface>`` on
    the readiness fd and status 0, or the start-up failure report and status 3. Nothing
    is served, no socket is used, an ASGI app's lifespan does not run."""
    _supervision_signals()
    ready_fd = ready_fd_from_env()
    ppid = os.getppid()
    try:
        load_native(ppid)
        spec = os.environ.get("FCGIBRIDGE_APP", "")
        interface = choose_interface(load_app(spec), spec)
    except BaseException as exc:  # noqa: B902 - reported as a worker's start reports it
        report_load_failure(exc, ready_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    _write_ready(ready_fd, "READY %s\n" % interface)
    os._exit(0)  # not the app's atexit handlers, nor a wait for its non-daemon threads


def main():
    _supervision_signals()
    if os.environ.get("FCGIBRIDGE_TEMPLATE") == "1":
        # A pool's preloaded template (preload: true): imports the app, then forks workers.
        from . import template

        template.run()
        return
    ready_fd = ready_fd_from_env()
    ppid = os.getppid()
    try:
        load_native(ppid)
        # Serve from a private close-on-exec copy of the listening socket; fd 0
        # becomes /dev/null before the app is imported, so that subprocesses of the
        # app neither inherit the socket nor read from it.
        listen_fd = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        threads = max(1, _env_int("FCGIBRIDGE_THREADS", 1))
        processes = max(1, _env_int("FCGIBRIDGE_PROCESSES", 1))
        spec = os.environ.get("FCGIBRIDGE_APP", "")
        app = load_app(spec, handoff=lambda app: serve(app, listen_fd, ready_fd, threads, processes))
        choose_interface(app, spec)
    except BaseException as exc:  # noqa: B902 - any failure to load is reported the same way
        report_load_failure(exc, ready_fd)
    serve(app, listen_fd, ready_fd, threads, processes)


def serve(app, listen_fd, ready_fd, threads, processes):
    """Start the serving threads (an ASGI app: the event loop), report READY, wait; exits
    the process (never returns)."""
    from . import _native

    if choose_interface(app, os.environ.get("FCGIBRIDGE_APP", "")) == "asgi":
        from . import asgi

        asgi.serve(app, listen_fd, ready_fd, max(1, _env_int("FCGIBRIDGE_CONCURRENCY", 100)))

    done = threading.Event()
    exit_code = [0]
    drained = []  # one entry per thread that stopped because a direct worker retires
    lock = threading.Lock()

    def run():
        try:
            _native.serve(listen_fd, app, threads, processes, ClientDisconnected)
        except SystemExit as exc:
            code = exc.code
            exit_code[0] = code if isinstance(code, int) else (0 if code is None else 1)
        except BaseException:
            traceback.print_exc()
            exit_code[0] = 1
        else:
            # Only a direct worker's threads return, when the bridge retires it: the
            # process exits once every one has finished its request.
            with lock:
                drained.append(1)
                if len(drained) < threads:
                    return
        done.set()

    from . import stackdump

    stackdump.install()  # SIGUSR2 from the bridge's slowlog; before any request runs
    from . import logging_bridge

    logging_bridge.install()  # the app's logging records, with level and logger, to the bridge's log
    for i in range(threads):
        threading.Thread(target=run, name="fcgibridge-%d" % i, daemon=True).start()
    _write_ready(ready_fd, "READY\n")
    try:
        # Short waits: Python runs signal handlers in this thread only, and a signal the
        # kernel delivers to a serving thread (the slowlog's SIGUSR2, the operator's
        # SIGHUP) would otherwise wait for this wait to end.
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:  # SIGINT reaches the whole process group; the bridge decides
        exit_code[0] = 130
    if len(drained) == threads:
        # Retired: a clean exit runs the app's atexit handlers (logging's flush among them),
        # without waiting for threads the app left running.
        atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code[0])

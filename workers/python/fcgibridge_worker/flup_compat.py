"""Stand-ins for flup's servers while the worker runs a file app (docs/migration.md).

A flup script ends in ``WSGIServer(app, ...).run()``: under flup, run() takes the socket on
fd 0 (or binds ``bindAddress``) and serves until a signal. While the worker executes a
file app, an import of one of flup's FastCGI/SCGI server modules gets a module made here
instead: its ``WSGIServer`` keeps the app and the arguments, and ``run()`` hands the app to
the worker, which serves it from inside run() — so, as under flup, the script's code after
run() does not run while the app is served. The Python 3 forks (flup6, flup-py3) use the
same module names; copies vendored under another package (``x.flup.server.fcgi``), Trac's
bundled ``trac.web._fcgi`` and ``flipflop`` are served too.

Nothing is installed where the app could see it afterwards, and a real flup keeps working:

* a meta-path finder put in front of ``sys.meta_path`` answers for those module names
  only, and only while the script runs; every other flup module (``flup.client``, an old
  flup's ``flup.middleware``) is imported from the real package as usual;
* ``flup`` and ``flup.server`` come from a second finder at the end of ``sys.meta_path``,
  which is asked only when no real flup is installed;
* once the script has handed over its app (or ended), the names served here leave
  ``sys.modules`` and their parent package, and a module of such a name that was imported
  before the script ran is put back.

A finder rather than module objects placed in ``sys.modules``: ``import flup.server.fcgi``
also binds the package ``flup``, so sys.modules entries alone would need a fake ``flup``
package for the duration, which would hide a real one's other modules.
"""
import importlib.abc
import importlib.util
import os
import sys
import threading

__all__ = ["HandedOver", "Session"]

# Positional parameters after `application`, as flup 1.0.3 declares them.
_FCGI = ("environ", "multithreaded", "multiprocess", "bindAddress", "umask", "multiplexed",
         "debug", "roles", "forceCGI")
_FCGI_FORK = ("environ", "bindAddress", "umask", "multiplexed", "debug", "roles", "forceCGI", "timeout")
_FCGI_SINGLE = ("environ", "bindAddress", "umask", "multiplexed", "debug", "roles", "forceCGI")
_SCGI = ("scriptName", "environ", "multithreaded", "multiprocess", "bindAddress", "umask",
         "allowedServers", "loggingLevel", "debug")
_SCGI_FORK = ("scriptName", "environ", "bindAddress", "umask", "allowedServers", "loggingLevel",
              "debug", "timeout")

# module (after "flup.server.") -> (its server class's parameters, whether flup calls the app
# from one thread at a time: the forking and single-threaded servers, and CGI)
_FLUP_SERVERS = {
    "fcgi": (_FCGI, False),
    "fcgi_fork": (_FCGI_FORK, True),
    "fcgi_single": (_FCGI_SINGLE, True),
    "fcgi_base": (_FCGI, False),
    "scgi": (_SCGI, False),
    "scgi_fork": (_SCGI_FORK, True),
    "scgi_base": (_SCGI, False),
    "cgi": ((), True),
}
_OTHER_SERVERS = {
    "flipflop": ((), False),
    # Trac's copy of flup's fcgi module, used unless TRAC_USE_FLUP is set
    "trac.web._fcgi": (_FCGI, False),
}

_FCGI_CONSTANTS = {
    "FCGI_LISTENSOCK_FILENO": 0, "FCGI_HEADER_LEN": 8, "FCGI_VERSION_1": 1,
    "FCGI_BEGIN_REQUEST": 1, "FCGI_ABORT_REQUEST": 2, "FCGI_END_REQUEST": 3, "FCGI_PARAMS": 4,
    "FCGI_STDIN": 5, "FCGI_STDOUT": 6, "FCGI_STDERR": 7, "FCGI_DATA": 8, "FCGI_GET_VALUES": 9,
    "FCGI_GET_VALUES_RESULT": 10, "FCGI_UNKNOWN_TYPE": 11, "FCGI_MAXTYPE": 11,
    "FCGI_NULL_REQUEST_ID": 0, "FCGI_KEEP_CONN": 1, "FCGI_RESPONDER": 1, "FCGI_AUTHORIZER": 2,
    "FCGI_FILTER": 3, "FCGI_REQUEST_COMPLETE": 0, "FCGI_CANT_MPX_CONN": 1, "FCGI_OVERLOADED": 2,
    "FCGI_UNKNOWN_ROLE": 3, "FCGI_MAX_CONNS": "FCGI_MAX_CONNS", "FCGI_MAX_REQS": "FCGI_MAX_REQS",
    "FCGI_MPXS_CONNS": "FCGI_MPXS_CONNS",
}

# Keys flup sets itself after merging its `environ` argument: a value given there never
# reaches the app under flup either.
_FLUP_SETS = frozenset(["wsgi.version", "wsgi.input", "wsgi.errors", "wsgi.multithread",
                        "wsgi.multiprocess", "wsgi.run_once", "wsgi.url_scheme"])

_MARK = "__fcgibridge_stand_in__"

# The script being run (one at a time: the worker loads one app).
_current = None


class NoDefault(object):
    """flup.server.NoDefault, for scripts that pass it (only when no real flup is installed)."""


class HandedOver(BaseException):
    """Unwinds a script whose run() handed its app over when the worker cannot serve from
    inside run() (the preload template, which forks workers after the import)."""

    def __init__(self):
        BaseException.__init__(self, "flup's WSGIServer.run() handed the app to fcgibridge's worker (not an error)")


def served_name(fullname):
    """The key of _FLUP_SERVERS / _OTHER_SERVERS a module name gets a stand-in for, or None."""
    if fullname in _OTHER_SERVERS:
        return fullname
    head, dot, short = fullname.rpartition(".")
    if short in _FLUP_SERVERS and (head == "flup.server" or head.endswith(".flup.server")):
        return short
    return None


def _is_no_default(value):
    return value is NoDefault or (isinstance(value, type) and value.__name__ == "NoDefault")


def _defaults(params):
    d = {"environ": None, "multithreaded": True, "multiprocess": False, "bindAddress": None,
         "umask": None, "multiplexed": False, "debug": False, "roles": (1,), "forceCGI": False,
         "timeout": None, "allowedServers": None, "loggingLevel": 20}
    if "scriptName" in params:
        d["bindAddress"] = ("localhost", 4000)
    return d


def _listener_hint(address):
    """`address` as a listener's `fastcgi:` writes it (an IPv6 host in brackets)."""
    if isinstance(address, str):
        return "unix:" + address
    if isinstance(address, tuple) and len(address) >= 2:
        host = "127.0.0.1" if address[0] in ("localhost", "") else str(address[0])
        return ("[%s]:%s" if ":" in host else "%s:%s") % (host, address[1])
    return repr(address)


def _pool_listeners():
    """The listeners that lead to this pool, each as its key and address are written
    (`fastcgi: 127.0.0.1:9000`, `scgi: unix:/run/app.sock`; FCGIBRIDGE_LISTENERS, one a line)."""
    return [a for a in os.environ.get("FCGIBRIDGE_LISTENERS", "").split("\n") if a]


def _umask_hint(umask, address):
    """Why `umask` does nothing here, and what gives the listener's socket the permissions
    flup's had; `address` is the script's bindAddress."""
    if isinstance(address, str) and isinstance(umask, int):
        return ("flup applied it to the unix socket it created; the bridge creates the listener's socket, as its own "
                "user: set the listener's `socket-mode: \"%04o\"`, and `socket-group:` (the web server's group) or "
                "`socket-owner:` so that the web server can connect" % (0o777 & ~umask))
    if isinstance(address, str):
        return ("flup applied it to the unix socket it created; the listener's `socket-mode`, `socket-owner` and "
                "`socket-group` set the permissions of the bridge's")
    if address is None:
        return ("flup applies it only to a unix socket it creates (bindAddress); the listener's `socket-mode`, "
                "`socket-owner` and `socket-group` set the permissions of a unix listener")
    return "it applies to unix sockets only, and bindAddress is a TCP address: flup ignored it too"


def _shown(name, value):
    """An argument's value as the script would write it (a umask in octal)."""
    if name == "umask" and isinstance(value, int) and not isinstance(value, bool):
        return "0o%03o" % value
    return repr(value)


def _bind_address_note(address, protocol, written=True):
    """(honoured, text) for a script's bindAddress (`written`: by the script, else flup's
    default): whether a listener leading to the pool is there already, speaking the script's
    protocol (an SCGI script's web server speaks SCGI to that address: a `fastcgi:` listener
    there would not understand it)."""
    wanted = "%s: %s" % (protocol, _listener_hint(address))
    listeners = _pool_listeners()
    shown = _shown("bindAddress", address)
    what = ("flup argument bindAddress=%s" % shown if written
            else "flup's default bindAddress=%s (the script names none)" % shown)
    if wanted in listeners:
        return True, ("%s: the pool's listener is at that address (`%s`), so the web server "
                      "connects as it did to flup" % (what, wanted))
    other = "%s: %s" % ("fastcgi" if protocol == "scgi" else "scgi", _listener_hint(address))
    if other in listeners:
        return False, ("%s: the pool's listener at that address is `%s`, but the web server "
                       "speaks %s to it, as it did to this script: write `%s`"
                       % (what, other, {"fastcgi": "FastCGI", "scgi": "SCGI"}[protocol], wanted))
    return False, ("%s ignored: the web server connects to the bridge's listener (e.g. `%s`)" % (what, wanted))


# Why an argument has no effect here, and the bridge's key that does its job.
_IGNORED = {
    "multiplexed": lambda v: "the bridge multiplexes toward the web server itself",
    "multiprocess": lambda v: "wsgi.multiprocess says how the pool runs (`processes`)",
    "debug": lambda v: "tracebacks go to the bridge's log; the client gets a plain 500",
    "roles": lambda v: "the listener decides which requests reach the app",
    "forceCGI": lambda v: "the worker always serves FastCGI from the bridge",
    "timeout": lambda v: "use the pool's `request-timeout`",
    "allowedServers": lambda v: "only the bridge connects to the worker",
    "loggingLevel": lambda v: "the worker's output goes to the bridge's log",
    "maxThreads": lambda v: "use the pool's `threads`",
    "minSpare": lambda v: "use the pool's `mode: dynamic` and `spare-processes`",
    "maxSpare": lambda v: "use the pool's `mode: dynamic` and `spare-processes`",
    "maxChildren": lambda v: "use the pool's `processes` (or `max-processes`)",
    "maxRequests": lambda v: "use the pool's `max-requests`",
}


def _say(text, honoured=False):
    """A line for the bridge's log: stdout is logged at INFO, stderr at WARN, so what works
    as under flup is news, and only what does not is a warning."""
    stream = sys.stdout if honoured else sys.stderr
    try:
        stream.write("fcgibridge worker: %s\n" % text)
        stream.flush()
    except (OSError, ValueError):
        pass


class _Server(object):
    """What a script's ``WSGIServer(app, ...)`` builds: the app and the arguments."""

    _params = ()
    _one_at_a_time = False
    _origin = "flup.server.fcgi"
    # What the web server spoke to the script: the protocol of the listener to write.
    _protocol = "fastcgi"

    def __init__(self, application, *args, **kwargs):
        if len(args) > len(self._params):
            raise TypeError("%s.WSGIServer takes at most %d positional arguments after the application"
                            % (self._origin, len(self._params)))
        given = dict(zip(self._params, args))
        for name in kwargs:
            if name in given:
                raise TypeError("WSGIServer got multiple values for argument %r" % name)
        given.update(kwargs)
        self.application = application
        self.given = given

    def run(self, *_args, **_kwargs):
        """Hand the app to the worker; serves from here and does not return (flup's run()
        returns when its server stops; the worker exits when the bridge stops it)."""
        return _hand_off(self)

    def shutdown(self):
        """Nothing to shut down: the worker owns the connections."""

    def serving_app(self):
        """The app as flup would call it, and one line per argument for the log:
        (honoured, text), honoured being false for what flup did and the worker does not."""
        notes = []
        defaults = _defaults(self._params)
        one_at_a_time = self._one_at_a_time
        extra = {}
        script_name = None
        given = dict(self.given)
        if defaults["bindAddress"] is not None:
            # flup's SCGI servers listen on localhost:4000 unless told otherwise: the web
            # server connects there, so that address needs a listener just as well.
            given.setdefault("bindAddress", defaults["bindAddress"])
        for name in sorted(given):
            value = given[name]
            if name == "environ":
                if value:
                    extra = dict((k, v) for k, v in dict(value).items() if k not in _FLUP_SETS)
                    notes.append((True, "flup argument environ: %d key(s) merged into every request's environ, as "
                                        "flup does" % len(extra)))
            elif name == "multithreaded":
                if not value and not one_at_a_time:
                    one_at_a_time = True
                    notes.append((True, "flup argument multithreaded=False: the app is called by one thread at a "
                                        "time in each worker process, as flup does; `threads: 1` on the pool lets the "
                                        "bridge queue the requests instead"))
            elif name == "scriptName":
                if value is not None and not _is_no_default(value):
                    script_name = str(value)
                    notes.append((True, "flup argument scriptName=%r: SCRIPT_NAME is %r and PATH_INFO the rest of "
                                        "the path (a listener `mount` does the same for every app)"
                                        % (value, script_name)))
            elif name == "bindAddress" and value is not None:
                notes.append(_bind_address_note(value, self._protocol, written=name in self.given))
            elif name in defaults and value == defaults[name]:
                continue
            elif name in ("jobClass", "jobArgs"):
                continue
            else:
                if name == "umask":
                    why = _umask_hint(value, self.given.get("bindAddress", defaults["bindAddress"]))
                else:
                    why = _IGNORED.get(name, lambda v: "it has no meaning for the worker")(value)
                notes.append((False, "flup argument %s=%s ignored: %s" % (name, _shown(name, value), why)))
        if one_at_a_time and self._one_at_a_time:
            notes.append((True, "%s serves one request at a time: the app is called by one thread at a time in each "
                                "worker process; `threads: 1` and more `processes` on the pool do the same without "
                                "waiting inside the worker" % self._origin))
        return _adapted(self.application, extra, one_at_a_time, script_name), notes


def _server_class(origin, params, one_at_a_time, protocol, name="WSGIServer"):
    return type(name, (_Server,), {"_params": params, "_one_at_a_time": one_at_a_time, "_origin": origin,
                                   "_protocol": protocol, "__module__": origin})


def _native_str(value):
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _as_bytes(chunk):
    # flup writes a str chunk as latin-1, so scripts written for it may yield str.
    return chunk.encode("latin-1") if isinstance(chunk, str) else chunk


class _FlupResponse(object):
    """A response iterable as flup sends it: str chunks as latin-1 bytes; for a
    one-thread-at-a-time app the lock is held until close(), as flup holds it while it
    sends the body."""

    def __init__(self, result, lock):
        self._result = result
        self._lock = lock

    def __iter__(self):
        for chunk in self._result:
            yield _as_bytes(chunk)

    def close(self):
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()


def _adapted(app, extra, one_at_a_time, script_name):
    """`app` as flup calls it: its `environ` argument merged, `scriptName` applied, one
    thread at a time when flup would, str and bytes accepted where flup accepts them."""
    lock = threading.Lock() if one_at_a_time else None

    def flup_app(environ, start_response):
        if extra:
            environ.update(extra)
        if script_name is not None:
            full = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            if full.startswith(script_name):
                environ["SCRIPT_NAME"] = script_name
                environ["PATH_INFO"] = full[len(script_name):]
        if lock is not None:
            environ["wsgi.multithread"] = False

        def flup_start_response(status, headers, exc_info=None):
            headers = [(_native_str(n), _native_str(v)) for n, v in headers]
            write = start_response(_native_str(status), headers, exc_info)
            return lambda data: write(_as_bytes(data))

        if lock is not None:
            lock.acquire()
        try:
            result = app(environ, flup_start_response)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        wrapper = environ.get("wsgi.file_wrapper")
        done = isinstance(result, wrapper) if isinstance(wrapper, type) else False
        if isinstance(result, list) and all(isinstance(c, bytes) for c in result):
            done = True  # complete already, and the worker can give it a Content-Length
        if done:
            if lock is not None:
                lock.release()
            return result
        return _FlupResponse(result, lock)

    flup_app.__wrapped__ = app
    return flup_app


def _hand_off(server):
    session = _current
    if session is None:
        raise RuntimeError("fcgibridge's stand-in for flup's WSGIServer.run() was called after the app was "
                           "loaded; the worker serves the app it got at start-up")
    app, notes = server.serving_app()
    if not callable(app):
        raise TypeError("WSGIServer(%r).run(): the application is not callable" % (app,))
    session.app = app
    session.notes = notes
    if session.handoff is None or threading.current_thread() is not threading.main_thread():
        raise HandedOver()
    session.close()
    session.report()
    session.handoff(app)  # serves; does not return
    raise HandedOver()  # only if the serving function returned after all


class _Loader(importlib.abc.Loader):
    def __init__(self, key):
        self.key = key

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        setattr(module, _MARK, True)
        if self.key is None:  # a package: flup or flup.server, when no real flup exists
            module.__path__ = []
            if module.__name__.endswith("server"):
                module.NoDefault = NoDefault
            return
        params, one = _FLUP_SERVERS.get(self.key) or _OTHER_SERVERS[self.key]
        name = module.__name__
        # flup's scgi* modules are spoken to in SCGI, every other server here in FastCGI.
        protocol = "scgi" if self.key.startswith("scgi") else "fastcgi"
        module.WSGIServer = _server_class(name, params, one, protocol)
        module.__all__ = ["WSGIServer"]
        if self.key in ("fcgi", "fcgi_fork", "fcgi_single", "fcgi_base", "trac.web._fcgi", "flipflop"):
            for k, v in _FCGI_CONSTANTS.items():
                setattr(module, k, v)
        if self.key == "fcgi_base":
            module.BaseFCGIServer = _server_class(name, params, one, protocol, "BaseFCGIServer")
        if self.key == "scgi_base":
            module.BaseSCGIServer = _server_class(name, params, one, protocol, "BaseSCGIServer")
        if self.key.startswith("scgi"):
            module.NoDefault = NoDefault


class _ServerFinder(importlib.abc.MetaPathFinder):
    """In front of sys.meta_path: flup's server modules only."""

    def find_spec(self, fullname, path=None, target=None):
        key = served_name(fullname)
        if key is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Loader(key))


class _PackageFinder(importlib.abc.MetaPathFinder):
    """At the end of sys.meta_path: ``flup`` and ``flup.server``, when nothing else has them."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ("flup", "flup.server"):
            return None
        return importlib.util.spec_from_loader(fullname, _Loader(None), is_package=True)


class Session(object):
    """The stand-ins for one script run: ``with Session(path, handoff) as s: run the script``.

    ``handoff(app)`` is called from inside the script's run() (main thread) and must not
    return; without it, run() raises HandedOver. Afterwards ``s.app`` is the handed-over app
    or None."""

    def __init__(self, path, handoff=None):
        self.path = path
        self.handoff = handoff
        self.app = None
        self.notes = []
        self.closed = True
        self._finders = (_ServerFinder(), _PackageFinder())
        self._stashed = {}
        self._env_set = False

    def __enter__(self):
        global _current
        for name in [n for n in list(sys.modules) if served_name(n)]:
            self._stashed[name] = sys.modules.pop(name)
        sys.meta_path.insert(0, self._finders[0])
        sys.meta_path.append(self._finders[1])
        # Scripts that pick FastCGI when a spawner set PHP_FCGI_CHILDREN (web.py, the
        # `if 'PHP_FCGI_CHILDREN' in os.environ:` pattern) should pick it here too.
        if "PHP_FCGI_CHILDREN" not in os.environ:
            os.environ["PHP_FCGI_CHILDREN"] = os.environ.get("FCGIBRIDGE_THREADS", "1") or "1"
            self._env_set = True
        self.closed = False
        _current = self
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        """Take the stand-ins away and put back what was there (idempotent)."""
        global _current
        if self.closed:
            return
        self.closed = True
        if _current is self:
            _current = None
        for finder in self._finders:
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
        for name, module in list(sys.modules.items()):
            if getattr(module, _MARK, False):
                del sys.modules[name]
                parent, _, child = name.rpartition(".")
                if parent in sys.modules and getattr(sys.modules[parent], child, None) is module:
                    try:
                        delattr(sys.modules[parent], child)
                    except AttributeError:
                        pass
        for name, module in self._stashed.items():
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)
        if self._env_set:
            os.environ.pop("PHP_FCGI_CHILDREN", None)
            self._env_set = False

    def report(self):
        """The log lines of a hand-off: what was taken over, each argument's fate."""
        _say("%s: flup's WSGIServer(...).run() handed its app to the worker" % self.path, honoured=True)
        for honoured, text in self.notes:
            _say(text, honoured)

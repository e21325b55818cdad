"""Unmodified flup scripts as file apps: the stand-ins of flup_compat.py take the app from
``WSGIServer(app, ...).run()`` (docs/migration.md, "From a flup script")."""
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

# The app of every script below: the environ as JSON, and a few probes.
APP = '''
import json, os, sys, threading
gate = threading.Event()

def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/slow":
        open(environ["QUERY_STRING"], "w").close()  # started
        released = gate.wait(3)
        body = {"released": released}
    elif path == "/release":
        gate.set()
        body = {"ok": True}
    elif path == "/modules":
        import flup.server.fcgi as later
        body = {"real": hasattr(later.WSGIServer, "_setupSocket"),
                "stand_ins": sorted(n for n, m in sys.modules.items()
                                    if getattr(m, "__fcgibridge_stand_in__", False)),
                "main": sys.modules["__main__"].__dict__.get("MARK"),
                "php": os.environ.get("PHP_FCGI_CHILDREN")}
    else:
        body = dict((k, v) for k, v in environ.items() if isinstance(v, (str, bool)))
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]
'''


def script(tmp_path, name, body, shebang=True):
    path = tmp_path / name
    text = ("#!/usr/bin/env python3\n" if shebang else "") + APP + textwrap.dedent(body)
    path.write_text(text)
    return path


def get(w, path, **kw):
    r = w.get(path, **kw)
    assert r.code == 200, (r.body[:300], w.stderr)
    return json.loads(r.body)


def test_unguarded_fcgi_script_without_extension_or_shebang(spawn, tmp_path):
    after = tmp_path / "after-run"
    p = script(tmp_path, "myapp", f'''
        from flup.server.fcgi import WSGIServer
        MARK = "main"
        WSGIServer(app).run()
        open({str(after)!r}, "w").write("the code after run() ran")
    ''', shebang=False)
    w = spawn(app=str(p) + ":application", cwd="/")
    assert get(w, "/x")["PATH_INFO"] == "/x"
    mods = get(w, "/modules")
    # the script ran as __main__; the stand-ins are gone once the app was handed over
    assert mods["main"] == "main" and mods["stand_ins"] == [] and mods["php"] is None
    assert mods["real"] is True  # flup is installed for this suite: a later import is the real one
    assert not after.exists()
    # what works as under flup is logged at INFO (the worker's stdout), not as a warning
    assert "handed its app to the worker" in w.stdout and "handed its app" not in w.stderr


def test_guarded_fcgi_script_runs_as_main(spawn, tmp_path):
    p = script(tmp_path, "app.fcgi", '''
        import flup.server.fcgi
        if __name__ == "__main__":
            flup.server.fcgi.WSGIServer(app, environ={"FROM_SCRIPT": "yes", "wsgi.url_scheme": "gopher"},
                                        bindAddress=("127.0.0.1", 9009), umask=0o007).run()
    ''')
    w = spawn(app=str(p), cwd="/")
    env = get(w, "/e")
    assert env["FROM_SCRIPT"] == "yes"
    assert env["wsgi.url_scheme"] == "http"  # flup sets the wsgi.* keys after merging environ
    out, err = w.stdout, w.stderr
    assert "flup argument environ: 1 key(s) merged" in out and "environ" not in err
    assert "flup argument bindAddress=('127.0.0.1', 9009) ignored" in err and "fastcgi: 127.0.0.1:9009" in err
    # socket-mode is refused on a TCP listener: not suggested for a TCP bindAddress
    assert "flup argument umask=0o007 ignored: it applies to unix sockets only, and bindAddress is a TCP " \
           "address" in err and "socket-mode" not in err


def test_a_bind_address_the_pools_listener_already_is_is_not_suggested(spawn, tmp_path):
    """The operator gave the pool's listener the script's own address: the log names no
    listener to configure, and says at INFO that the web server connects as before."""
    p = script(tmp_path, "app.fcgi", '''
        from flup.server.fcgi import WSGIServer
        WSGIServer(app, bindAddress=("localhost", 9009)).run()
    ''')
    w = spawn(app=str(p), cwd="/", env={"FCGIBRIDGE_LISTENERS": "fastcgi: unix:/run/other.sock\nfastcgi: 127.0.0.1:9009"})
    assert get(w, "/e")["PATH_INFO"] == "/e"
    assert "bindAddress" not in w.stderr and "e.g. `fastcgi:" not in w.stdout, (w.stdout, w.stderr)
    assert "flup argument bindAddress=('localhost', 9009): the pool's listener is at that address " \
           "(`fastcgi: 127.0.0.1:9009`), so the web server connects as it did to flup" in w.stdout, w.stdout
    # Another listener: the hint stays, with the script's address written as a listener's.
    v6 = script(tmp_path, "v6.fcgi", '''
        from flup.server.fcgi import WSGIServer
        WSGIServer(app, bindAddress=("::1", 9009)).run()
    ''')
    w = spawn(app=str(v6), cwd="/", env={"FCGIBRIDGE_LISTENERS": "fastcgi: 127.0.0.1:9009"})
    assert get(w, "/e")["PATH_INFO"] == "/e"
    assert "flup argument bindAddress=('::1', 9009) ignored: the web server connects to the bridge's listener " \
           "(e.g. `fastcgi: [::1]:9009`)" in w.stderr, w.stderr


def test_umask_of_a_unix_socket_names_the_listener_keys(spawn, tmp_path):
    """MoinMoin's shape: flup created the socket as the app's user with the umask; the
    bridge creates it as its own, so mode alone is not enough: owner or group too."""
    p = script(tmp_path, "wiki.fcgi", '''
        from flup.server.fcgi import WSGIServer
        WSGIServer(app, bindAddress="/run/wiki/wiki.sock", umask=0o007).run()
    ''')
    w = spawn(app=str(p), cwd="/")
    assert get(w, "/e")["PATH_INFO"] == "/e"
    line = next(ln for ln in w.stderr.splitlines() if "flup argument umask" in ln)
    assert line.startswith("fcgibridge worker: flup argument umask=0o007 ignored: "), line
    assert 'socket-mode: "0770"' in line and "`socket-group:` (the web server's group)" in line \
        and "`socket-owner:`" in line, line
    assert "flup argument bindAddress='/run/wiki/wiki.sock' ignored" in w.stderr
    assert "`fastcgi: unix:/run/wiki/wiki.sock`" in w.stderr


def test_py_script_with_guard_is_a_module_and_names_its_callable(spawn, tmp_path):
    p = script(tmp_path, "guarded_app.py", '''
        from flup.server.fcgi import WSGIServer
        if __name__ == "__main__":
            raise SystemExit("a .py file is imported as a module: its __main__ block must not run")
    ''')
    w = spawn(app=str(p) + ":app", cwd="/")
    assert get(w, "/p")["PATH_INFO"] == "/p"


def test_py_script_without_callable_says_what_to_write(spawn, tmp_path):
    p = script(tmp_path, "noname.py", '''
        from flup.server.fcgi import WSGIServer
        if __name__ == "__main__":
            WSGIServer(app).run()
    ''')
    w = spawn(app=str(p), cwd="/", wait_ready=False)
    assert w.proc.wait(10) == 3
    assert "no attribute 'application'" in w.ready_line


def test_one_request_at_a_time(spawn, tmp_path):
    """multithreaded=False (and fcgi_fork): flup's app lock, held until the response is closed."""
    p = script(tmp_path, "single.fcgi", '''
        from flup.server.fcgi_fork import WSGIServer
        WSGIServer(app, maxChildren=5, maxRequests=100).run()
    ''')
    w = spawn(app=str(p), threads=2, cwd="/")
    assert get(w, "/e")["wsgi.multithread"] is False
    results = {}

    started = tmp_path / "started"

    def slow():
        results["slow"] = get(w, "/slow", query=str(started))

    t = threading.Thread(target=slow)
    t.start()
    import time
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    get(w, "/release")  # waits for the lock: the slow request times out on its own
    t.join(20)
    assert results["slow"] == {"released": False}
    assert "flup argument maxRequests=100 ignored: use the pool's `max-requests`" in w.stderr
    assert "flup.server.fcgi_fork serves one request at a time" in w.stdout


def test_threaded_server_runs_requests_together(spawn, tmp_path):
    p = script(tmp_path, "threaded.fcgi", '''
        from flup.server.fcgi import WSGIServer
        WSGIServer(app).run()
    ''')
    w = spawn(app=str(p), threads=2, cwd="/")
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("slow", get(w, "/slow", query=str(tmp_path / "s"))))
    t.start()
    import time
    deadline = time.monotonic() + 20
    while "slow" not in results and time.monotonic() < deadline:
        get(w, "/release")
    t.join(20)
    assert results["slow"] == {"released": True}


@pytest.mark.parametrize("module,call", [
    ("flipflop", "flipflop.WSGIServer(app).run()"),
    ("flup.server.scgi", "flup.server.scgi.WSGIServer(app, scriptName='/mounted').run()"),
    ("flup.server.fcgi_single", "flup.server.fcgi_single.WSGIServer(app).run()"),
    ("flup.server.cgi", "flup.server.cgi.WSGIServer(app).run()"),
    ("vendored.flup.server.fcgi", "vendored.flup.server.fcgi.WSGIServer(app).run()"),
    ("trac.web._fcgi", "trac.web._fcgi.WSGIServer(app).run()"),
])
def test_other_servers(spawn, tmp_path, module, call):
    for pkg in ("vendored", "vendored/flup", "vendored/flup/server", "trac", "trac/web"):
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    p = script(tmp_path, "other.fcgi", f'''
        import {module}
        {call}
    ''')
    w = spawn(app=str(p), cwd="/")
    env = get(w, "/mounted/x")
    if "scriptName" in call:
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/mounted", "/x")
    else:
        assert env["PATH_INFO"] == "/mounted/x"


def test_php_fcgi_children_pattern(spawn, tmp_path):
    p = script(tmp_path, "pick.fcgi", '''
        import os
        if 'PHP_FCGI_CHILDREN' in os.environ:
            from flup.server.fcgi import WSGIServer
            WSGIServer(app, multiplexed=True, bindAddress=None).run()
        else:
            raise SystemExit("would start a development HTTP server")
    ''')
    w = spawn(app=str(p), threads=3, cwd="/")
    assert get(w, "/e")["PATH_INFO"] == "/e"
    assert get(w, "/modules")["php"] is None  # set while the script ran only
    assert "flup argument multiplexed=True ignored" in w.stderr


def test_without_flup_installed(spawn, tmp_path):
    """A venv without flup: the script still imports flup.server.fcgi; afterwards `flup`
    does not exist, as before."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    assert subprocess.run([str(py), "-c", "import flup"], capture_output=True).returncode != 0
    p = script(tmp_path, "noflup.fcgi", '''
        import flup.server.fcgi
        from flup.server import NoDefault
        def check(environ, start_response):
            try:
                import flup
                found = "flup is importable"
            except ImportError:
                found = "no flup"
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [found.encode()]
        flup.server.fcgi.WSGIServer(check).run()
    ''')
    w = spawn(app=str(p), cwd="/", python=str(py))
    r = w.get("/")
    assert r.body == b"no flup", w.stderr


PRELOAD = '''
import sys
sys.path.insert(0, sys.argv[1])
from fcgibridge_worker.main import load_app
app = load_app(sys.argv[2])
print(app.__wrapped__.__name__, sorted(n for n, m in sys.modules.items() if getattr(m, "__fcgibridge_stand_in__", False)))
'''


def test_without_handoff_the_script_unwinds_at_run(runtime_dir, tmp_path):
    """The preload template imports the app and forks later: run() unwinds the script (its
    `finally:` runs then; an error raised there does not lose the app)."""
    p = script(tmp_path, "unwind.fcgi", '''
        from flup.server.fcgi import WSGIServer
        try:
            WSGIServer(app).run()
            raise SystemExit("the code after run() ran")
        finally:
            import os
            os.unlink("/nonexistent/socket")  # cleanup of a socket flup would have made
    ''')
    r = subprocess.run([sys.executable, "-c", PRELOAD, str(runtime_dir / "python"), str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "app []", r.stdout
    assert "raised FileNotFoundError after WSGIServer(...).run() handed over its app" in r.stderr


def test_main_runs_a_py_file_as_the_main_script(spawn, tmp_path):
    p = script(tmp_path, "code.py", '''
        def text_app(environ, start_response):
            start_response(b"200 OK", [(b"Content-Type", b"text/plain")])
            def body():
                yield "str chunks, "
                yield b"bytes chunks"
            return body()
        if __name__ == "__main__":
            from flup.server.fcgi import WSGIServer
            WSGIServer(text_app).run()
    ''')
    w = spawn(app=str(p) + ":__main__", cwd="/")
    r = w.get("/")
    assert r.body == b"str chunks, bytes chunks", w.stderr  # flup writes str as latin-1
    w2 = spawn(app=str(script(tmp_path, "plain.py", "")) + ":__main__", cwd="/", wait_ready=False)
    assert w2.proc.wait(10) == 3
    assert "never called WSGIServer(app).run()" in w2.ready_line

"""Naming the app to serve, and what a worker that cannot load it says: an app factory
after the colon (`pkg:create_app()`, Flask's pattern), and the `worker failed to start`
line of an import error, which names the interpreter and the working directory, suggests
the module's app-looking callables for a missing one, and logs a traceback that starts
in the app's code rather than in the worker's."""
import platform
import re
import subprocess
import sys
import textwrap

import pytest

from harness import bridge_binary, free_ports, make_bridge

FACTORY_PKG = '''
from flask import Flask


def create_app():
    app = Flask(__name__)

    @app.get("/hello")
    def hello():
        return "made by the factory"

    return app
'''


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_a_flask_factory_is_called_and_served(tmp_path):
    pytest.importorskip("flask")
    src = tmp_path / "src"
    write(src / "pkg" / "__init__.py", FACTORY_PKG)
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"f": {"app": "pkg:create_app()", "chdir": str(src), "python": sys.executable,
                                     "processes": 1, "threads": 2}},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "f"}})
    # check takes it and prints it back as written
    r = subprocess.run([str(bridge_binary()), "check", "--config", str(b.confdir)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'app: "pkg:create_app()"' in r.stdout, r.stdout
    try:
        b.start()
        b.wait_ready([("l", "/hello", "f")])
        resp = b.request("/hello", pool="f", listener="l")
        assert resp.status == 200 and resp.body == b"made by the factory", resp.stdout[:500]
    finally:
        b.stop()


def test_start_up_errors_name_the_interpreter_directory_and_callables(tmp_path):
    src = tmp_path / "src"
    write(src / "good.py", '''
        def app(environ, start_response):
            start_response("200 OK", [])
            return [b"ok"]
    ''')
    write(src / "broken.py", '''
        import json

        raise KeyError("SETTING_THAT_IS_MISSING")
    ''')
    port = free_ports(1)[0]
    common = {"chdir": str(src), "python": sys.executable, "processes": 1, "threads": 1}
    b = make_bridge(tmp_path, {"nomod": dict(common, app="no_such_app_module:app"),
                               "noattr": dict(common, app="good:application"),
                               "broken": dict(common, app="broken:app")},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "nomod"}})
    where = f"(python={sys.executable} ({platform.python_version()}) chdir={src})"
    try:
        b.start()
        b.log.wait_for(["worker failed to start: ModuleNotFoundError: No module named 'no_such_app_module' "
                        + re.escape(where), 'pool="?nomod'], timeout=60)
        b.log.wait_for([re.escape("worker failed to start: module good has no attribute 'application'; did you "
                                  f'mean "good:app"? {where}'), 'pool="?noattr'], timeout=60)
        b.log.wait_for([re.escape(f"worker failed to start: KeyError: 'SETTING_THAT_IS_MISSING' {where}"),
                        'pool="?broken'], timeout=60)
        # the traceback starts in the app: no frame of the worker's main.py / load_app
        first = b.log.wait_for([r"Traceback \(most recent call last\)", 'pool="?broken'])[0]
        broken = [ln for ln in b.log.lines() if re.search(r'pool="?broken\b', ln)]
        at = broken.index(first)
        assert re.search(r'File ".*/broken\.py", line 4, in <module>', broken[at + 1]), broken[at:at + 6]
        assert not [ln for ln in broken if "fcgibridge_worker" in ln or "importlib" in ln], "\n".join(broken)
        # A reason without traceback is said once, in the ERROR line, not again on stderr.
        noattr = [ln for ln in b.log.lines() if re.search(r'pool="?noattr\b', ln) and "has no attribute" in ln]
        assert noattr and all("worker failed to start" in ln for ln in noattr), "\n".join(noattr)
    finally:
        b.stop()


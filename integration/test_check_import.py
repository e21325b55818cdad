"""`fcgibridge check --import` (bridge/src/supervise/app_import.rs): every pool's app
imported as its workers' start imports it — interpreter, user, chdir, env, interface check,
the worker's own loading code — and reported at the file:line of the pool's `app` key, `ok`
or the start-up error a worker would log. Before it, `check` never imported the apps: a
syntax error, a wrong callable or an ASGI app in a WSGI pool passed `check` and was found
only by `run` or `reload` (every worker failing to start)."""
from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import bridge_binary, free_ports, to_yaml, wait_until
from supervision_support import alive

PY = sys.executable
WSGI = '''
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(0o644)
    return path


def conf(d: Path, pools: dict, templates: dict | None = None) -> tuple[Path, str]:
    """conf.d/50-test.yaml with these pools (each run by this interpreter in `d/src` unless
    it says otherwise) and one listener; the directory and the file's text."""
    for spec in pools.values():
        spec.setdefault("python", PY)
        spec.setdefault("chdir", str(d / "src"))
        spec.setdefault("processes", 1)
        if os.geteuid() == 0 and "user" not in spec:
            spec["allow-root"] = True
    listeners = {"l": {"fastcgi": f"127.0.0.1:{free_ports(1)[0]}", "pool": next(iter(pools))}}
    text = to_yaml({"pools": dict(pools, **(templates or {})), "listeners": listeners})
    confdir = d / "conf.d"
    confdir.mkdir(exist_ok=True)
    (confdir / "50-test.yaml").write_text(text)
    return confdir, text


def app_at(confdir: Path, text: str, pool: str) -> str:
    """`FILE:LINE:COLUMN: pools.POOL.app: ` of pool `pool`'s `app:` in the generated file."""
    lines = text.splitlines()
    start = lines.index(f"  {pool}:")
    n = next(i for i, ln in enumerate(lines) if i > start and ln.strip().startswith("app:")) + 1
    return f"{confdir / '50-test.yaml'}:{n}:5: pools.{pool}.app: "


def check(confdir: Path, *flags, timeout=120):
    return subprocess.run([str(bridge_binary()), "check", *flags, "--config", str(confdir)], capture_output=True,
                          text=True, timeout=timeout)


def test_importable_apps_are_ok_and_templates_are_skipped(tmp_path):
    pytest.importorskip("flask")
    write(tmp_path / "src" / "web.py", '''
        from flask import Flask

        app = Flask(__name__)
    ''')
    # `interface: auto` decides as a worker does: an async callable is served as ASGI
    write(tmp_path / "src" / "api.py", '''
        async def app(scope, receive, send):
            raise AssertionError("--import must not call the app (no lifespan, no request)")
    ''')
    sites = tmp_path / "sites"
    confdir, text = conf(tmp_path, {"web": {"app": "web:app"}, "api": {"app": "api:app", "interface": "auto"}},
                         {"sites": {"template": {"max-instances": 2}, "app": f"{sites}/{{host}}/app.py",
                                    "python": PY, **({"allow-root": True} if os.geteuid() == 0 else {})}})
    r = check(confdir, "--import")
    assert r.returncode == 0, r.stderr
    assert "pools:\n" in r.stdout, "the effective configuration is still printed"
    assert re.search("^" + re.escape(app_at(confdir, text, "web")) + r"ok \(wsgi, imported in \d+\.\d\ds\)$",
                     r.stderr, re.M), r.stderr
    assert re.search("^" + re.escape(app_at(confdir, text, "api")) + r"ok \(asgi, ", r.stderr, re.M), r.stderr
    assert "pools.sites: skipped: a template, its instances are made on demand" in r.stderr, r.stderr


def test_a_syntax_error_is_the_workers_error_at_the_app_key(tmp_path):
    write(tmp_path / "src" / "good.py", WSGI)
    broken = write(tmp_path / "src" / "broken.py", '''
        import os

        def handler(:
            pass
    ''')
    confdir, text = conf(tmp_path, {"good": {"app": "good:app"}, "broken": {"app": str(broken)}})
    # without --import the apps are not imported: the configuration itself is fine
    assert check(confdir).returncode == 0
    r = check(confdir, "--import")
    assert r.returncode == 1, r.stderr
    assert app_at(confdir, text, "good") + "ok (wsgi" in r.stderr, r.stderr
    where = f"(python={PY} ({'%d.%d.%d' % sys.version_info[:3]}) chdir={tmp_path / 'src'})"
    line = (app_at(confdir, text, "broken") + "import failed: SyntaxError: invalid syntax (broken.py, line 4) "
            + where)
    assert re.search("^" + re.escape(line) + "$", r.stderr, re.M), r.stderr
    # then the worker's own report, indented: the app's file and line, no frame of the worker
    after = r.stderr.split(line, 1)[1]
    assert re.search(rf'^    +File "{re.escape(str(broken))}", line 4$', after, re.M), after
    assert "fcgibridge_worker" not in after and "importlib" not in after, after


def test_a_wrong_callable_name_gets_did_you_mean(tmp_path):
    write(tmp_path / "src" / "named.py", WSGI)
    confdir, text = conf(tmp_path, {"named": {"app": "named:application"}})
    r = check(confdir, "--import")
    assert r.returncode == 1, r.stderr
    assert (app_at(confdir, text, "named") + "import failed: module named has no attribute 'application'; "
            'did you mean "named:app"? (python=') in r.stderr, r.stderr
    # said once: the worker's stderr line that repeats it is left out
    assert r.stderr.count("has no attribute 'application'") == 1, r.stderr


def test_an_asgi_app_in_a_wsgi_pool_names_the_interface_key(tmp_path):
    write(tmp_path / "src" / "fast.py", '''
        async def app(scope, receive, send):
            pass
    ''')
    confdir, text = conf(tmp_path, {"api": {"app": "fast:app"}})
    r = check(confdir, "--import")
    assert r.returncode == 1, r.stderr
    assert (app_at(confdir, text, "api") + "import failed: fast:app is an ASGI application (async, called with "
            "scope, receive, send) but pool api serves WSGI: set `interface: asgi` (or `auto`) in the pool") \
        in r.stderr, r.stderr


# An app whose import starts a child and never ends: both pids go to `pids` beside it.
HANGING_IMPORT = '''
        import os
        import subprocess
        import time

        child = subprocess.Popen(["sleep", "600"])
        with open(os.path.join(os.path.dirname(__file__), "pids"), "w") as f:
            f.write("%d %d" % (os.getpid(), child.pid))
        time.sleep(600)
    '''


def test_a_hanging_import_is_killed_at_the_startup_timeout(tmp_path):
    """The import and what it started (its process group) are killed once the pool's
    startup-timeout has passed, after its Python stacks were asked for (SIGUSR2)."""
    write(tmp_path / "src" / "hang.py", HANGING_IMPORT)
    # long enough for the import to reach its sleep on a loaded machine
    confdir, text = conf(tmp_path, {"hang": {"app": "hang:app", "startup-timeout": "8s"}})
    started = time.monotonic()
    r = check(confdir, "--import", timeout=240)
    took = time.monotonic() - started
    assert r.returncode == 1, r.stderr
    assert (app_at(confdir, text, "hang") + "import failed: did not import within startup-timeout 8s "
            "(killed; its Python stacks follow)") in r.stderr, r.stderr
    assert re.search(r'File "[^"]*hang\.py", line 9 in <module>', r.stderr), r.stderr
    assert took >= 8, took
    for pid in map(int, (tmp_path / "src" / "pids").read_text().split()):
        wait_until(lambda: not alive(pid), 30, what=f"pid {pid} of the import killed")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the pool's user needs root")
def test_the_import_runs_as_the_pools_user_in_its_directory_with_its_env(tmp_path, public_dir):
    try:
        user = pwd.getpwnam("fcgibridge-test")
    except KeyError:
        pytest.skip("user fcgibridge-test is missing: run scripts/create-test-user")
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("/usr/bin/python3 (which every user may run) is missing")
    src = public_dir / "src"
    src.mkdir(mode=0o755)
    write(src / "who.py", '''
        import os

        raise RuntimeError("uid=%d cwd=%s GREETING=%s" % (os.getuid(), os.getcwd(), os.environ.get("GREETING")))
    ''')
    confdir, text = conf(tmp_path, {"who": {"app": "who:app", "python": "/usr/bin/python3", "chdir": str(src),
                                            "user": user.pw_name, "env": {"GREETING": "hello"}}})
    r = check(confdir, "--import")
    assert r.returncode == 1, r.stderr
    assert (app_at(confdir, text, "who") + f"import failed: RuntimeError: uid={user.pw_uid} cwd={src} "
            "GREETING=hello (python=/usr/bin/python3") in r.stderr, r.stderr


def test_the_import_cannot_reach_the_operators_terminal(tmp_path):
    """Run from a terminal (here a pseudo-terminal, `check` its session's leader), the import
    has no controlling terminal: /dev/tty does not open (ENXIO), so the app cannot push
    keystrokes into the operator's shell (TIOCSTI)."""
    import pty
    import select

    write(tmp_path / "src" / "tty.py", '''
        import os

        try:
            os.open("/dev/tty", os.O_RDWR)
        except OSError as e:
            raise RuntimeError("no terminal: errno %d" % e.errno)
        raise RuntimeError("the terminal opened")
    ''')
    confdir, text = conf(tmp_path, {"tty": {"app": "tty:app"}})
    argv = [str(bridge_binary()), "check", "--import", "--config", str(confdir)]
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every process of the terminal is gone
            break
        if not data:
            break
        out += data
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    text_out = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 1, text_out
    assert app_at(confdir, text, "tty") + "import failed: RuntimeError: no terminal: errno 6" in text_out, text_out


def test_the_import_gets_the_services_environment_not_the_callers(tmp_path):
    """The operator's shell environment (tokens, PYTHONPATH, ...) does not reach the app;
    the pool's `env` does, and PATH is systemd's for a service."""
    write(tmp_path / "src" / "env.py", '''
        import os

        raise RuntimeError("SECRET=%s PYTHONPATH=%s GREETING=%s PATH=%s" % tuple(
            os.environ.get(k) for k in ("SECRET", "PYTHONPATH", "GREETING", "PATH")))
    ''')
    confdir, text = conf(tmp_path, {"env": {"app": "env:app", "env": {"GREETING": "hello"}}})
    r = subprocess.run([str(bridge_binary()), "check", "--import", "--config", str(confdir)], capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, SECRET="root-token", PYTHONPATH=str(tmp_path / "elsewhere")))
    assert r.returncode == 1, r.stderr
    assert (app_at(confdir, text, "env") + "import failed: RuntimeError: SECRET=None PYTHONPATH=None "
            "GREETING=hello PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ") in r.stderr, r.stderr


def test_the_apps_text_reaches_the_terminal_escaped(tmp_path):
    """What the app prints and its error text cannot move the cursor or rewrite a line
    into `ok`: control characters are shown escaped."""
    write(tmp_path / "src" / "esc.py", '''
        print("\\r\\x1b[1A\\x1b[2Kpools.other.app: ok")
        raise RuntimeError("\\x1b]52;c;cm0gLXJmIH4=\\x07hidden")
    ''')
    confdir, text = conf(tmp_path, {"esc": {"app": "esc:app"}})
    r = check(confdir, "--import")
    assert r.returncode == 1, r.stderr
    assert "\x1b" not in r.stderr and "\r" not in r.stderr, repr(r.stderr)
    assert "\\x1b[2Kpools.other.app: ok" in r.stderr, r.stderr
    assert app_at(confdir, text, "esc") + "import failed: RuntimeError: \\x1b]52;c;" in r.stderr, r.stderr


def test_what_an_import_that_dies_started_is_killed(tmp_path):
    """An import that dies before it reports (a crash in an extension module) does not
    leave what it started behind: its process group is killed before it is reaped."""
    write(tmp_path / "src" / "crash.py", '''
        import os
        import subprocess

        child = subprocess.Popen(["sleep", "600"])
        with open(os.path.join(os.path.dirname(__file__), "pids"), "w") as f:
            f.write("%d" % child.pid)
        os._exit(3)
    ''')
    confdir, text = conf(tmp_path, {"crash": {"app": "crash:app"}})
    r = check(confdir, "--import")
    assert r.returncode == 1, r.stderr
    assert (app_at(confdir, text, "crash") + "import failed: the worker exited before it reported on the import: "
            "exit status 3") in r.stderr, r.stderr
    pid = int((tmp_path / "src" / "pids").read_text())
    wait_until(lambda: not alive(pid), 30, what=f"pid {pid} started by the import killed")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_import_leaves_no_process_or_directory(tmp_path, sig):
    """Ctrl-C (or SIGTERM) during an import: the import's processes are killed and its copy
    of the worker package in the runtime directory is removed."""
    import signal

    write(tmp_path / "src" / "slow.py", HANGING_IMPORT)
    confdir, text = conf(tmp_path, {"slow": {"app": "slow:app", "startup-timeout": "600s"}})
    runtime = tmp_path / "run"
    runtime.mkdir()
    with open(confdir / "50-test.yaml", "a") as f:
        f.write(to_yaml({"bridge": {"runtime-dir": str(runtime)}}))
    proc = subprocess.Popen([str(bridge_binary()), "check", "--import", "--config", str(confdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        pids_file = tmp_path / "src" / "pids"
        wait_until(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2, 60,
                   what="the import started")
        assert list(runtime.iterdir()), "the import's copy of the worker package is in the runtime directory"
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert f"import interrupted ({sig}); its processes are killed" in err, err
    assert list(runtime.iterdir()) == []
    for pid in map(int, pids_file.read_text().split()):
        wait_until(lambda: not alive(pid), 30, what=f"pid {pid} of the import killed")

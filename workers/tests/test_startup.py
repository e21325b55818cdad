"""Start-up per the worker contract, app loading, and the abi3 module in other Pythons."""
import os
import shutil
import subprocess

import pytest

from conftest import APPS


def test_ready_line(worker):
    assert worker.ready_line == "READY\n"


def test_import_error_exits_3(spawn):
    w = spawn(app="broken_app:application", wait_ready=False)
    assert w.proc.wait(10) == 3
    assert w.ready_line.startswith("ERROR ")
    assert w.ready_line.endswith("\n") and w.ready_line.count("\n") == 1
    assert "frobnicate" in w.ready_line
    assert "Traceback (most recent call last)" in w.stderr


@pytest.mark.parametrize("app,needle", [
    ("wsgi_app:nope", "no attribute"),
    ("no_such_module_xyz:app", "No module named"),
    ("", "FCGIBRIDGE_APP is not set"),
    ("wsgi_app:EVENTS", "not callable"),
])
def test_bad_app_spec_exits_3(spawn, app, needle):
    w = spawn(app=app, wait_ready=False)
    assert w.proc.wait(10) == 3
    assert w.ready_line.startswith("ERROR ") and needle in w.ready_line, w.ready_line


def test_wsgi_file_path(spawn):
    w = spawn(app=str(APPS / "hello.wsgi"), cwd="/")
    assert w.get("/").body == b"wsgi file in apps"


def test_py_file_path_with_callable(spawn):
    w = spawn(app=str(APPS / "wsgi_app.py") + ":application", cwd="/")
    assert w.get("/hello").body == b"Hello, World!"


def test_fd0_replaced_by_devnull(spawn):
    w = spawn()
    target = os.readlink("/proc/%d/fd/0" % w.proc.pid)
    assert target == "/dev/null"


def _other_pythons():
    found = []
    for ver in ("3.9", "3.13"):
        exe = None
        pyenv = shutil.which("pyenv")
        if pyenv:
            try:
                prefix = subprocess.run([pyenv, "prefix", ver], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
                cand = os.path.join(prefix, "bin", "python" + ver)
                if prefix and os.path.exists(cand):
                    exe = cand
            except (OSError, subprocess.SubprocessError):
                pass
        exe = exe or shutil.which("python" + ver)
        if exe:
            try:
                subprocess.run([exe, "-c", "pass"], check=True, capture_output=True, timeout=20)
            except (OSError, subprocess.SubprocessError):
                exe = None
        found.append(pytest.param(exe, id=ver))
    return found


@pytest.mark.parametrize("python", _other_pythons())
def test_abi3_module_in_other_python(spawn, python):
    if python is None:
        pytest.skip("interpreter not installed")
    w = spawn(python=python, threads=2)
    assert w.get("/hello").body == b"Hello, World!"
    r = w.get("/read", method="POST", query="readline", body=b"a\nbb\nccc")
    assert r.body.endswith(b"a\nbb\nccc")
    r = w.get("/raise_before")
    assert r.code == 500 and b"RuntimeError" in r.stderr


def test_worker_dies_with_its_parent(runtime_dir, tmp_path):
    """PR_SET_PDEATHSIG: when the process that started the worker dies, so does the worker."""
    import sys
    import time
    from conftest import BOOT, worker_python
    sock = tmp_path / "p.sock"
    parent = r'''
import os, socket, subprocess, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
r, w = os.pipe()
env = dict(os.environ, FCGIBRIDGE_APP="wsgi_app:application", FCGIBRIDGE_READY_FD=str(w))
p = subprocess.Popen([sys.argv[2], "-u", "-c", sys.argv[3], sys.argv[4]], stdin=s.fileno(),
                     pass_fds=(w,), env=env, cwd=sys.argv[5],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(w)
assert os.read(r, 100) == b"READY\n"
print(p.pid, flush=True)
os._exit(0)  # without waiting for, or killing, the worker
'''
    out = subprocess.run([sys.executable, "-c", parent, str(sock), worker_python(), BOOT,
                          str(runtime_dir / "python"), str(APPS)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError("the worker outlived its parent")


def test_factory_after_the_colon_is_called(spawn):
    w = spawn(app="factory_app:create_app()")
    assert w.get("/").body == b"hello"


def test_a_missing_callable_names_the_app_looking_ones(spawn):
    w = spawn(app="factory_app:application", wait_ready=False)
    assert w.proc.wait(10) == 3
    assert ("ERROR module factory_app has no attribute 'application'; did you mean one of "
            '"factory_app:create_app()", "factory_app:hello", "factory_app:thing"? (python=') in w.ready_line, \
        w.ready_line
    # a file app: the file's path in the suggestion; a module with nothing app-like says so
    path = str(APPS / "factory_app.py")
    w = spawn(app=path + ":app", cwd="/", wait_ready=False)
    assert w.proc.wait(10) == 3
    assert f'did you mean one of "{path}:create_app()", "{path}:hello", "{path}:thing"?' in w.ready_line
    w = spawn(app="string:application", wait_ready=False)
    assert w.proc.wait(10) == 3
    assert "module string has no attribute 'application'; it has no WSGI or ASGI callable at its top level (" \
        in w.ready_line, w.ready_line


def test_flask_app_named_application_suggests_app(spawn):
    from conftest import worker_python
    if subprocess.run([worker_python(), "-c", "import flask"], capture_output=True).returncode:
        pytest.skip("flask is not installed for %s" % worker_python())
    w = spawn(app="flask_app:application", wait_ready=False)
    assert w.proc.wait(10) == 3
    assert "module flask_app has no attribute 'application'; did you mean \"flask_app:app\"?" in w.ready_line, \
        w.ready_line


def test_a_load_failure_names_the_interpreter_and_working_directory(spawn, tmp_path):
    from conftest import worker_python
    python = worker_python()
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    w = spawn(app="no_such_module_xyz:app", wait_ready=False, cwd=tmp_path)
    assert w.proc.wait(10) == 3
    assert w.ready_line == (f"ERROR ModuleNotFoundError: No module named 'no_such_module_xyz' "
                            f"(python={python} ({version}) chdir={tmp_path})\n"), w.ready_line


def test_an_apps_own_platform_module_does_not_break_the_failure_report(spawn, tmp_path):
    """The report is written with the app's directory first on sys.path: a platform.py of
    the app's (one that fails, here) must not replace the reason with its own error."""
    (tmp_path / "platform.py").write_text("raise RuntimeError('the app has its own platform module')\n")
    w = spawn(app="no_such_module_xyz:app", wait_ready=False, cwd=tmp_path)
    assert w.proc.wait(10) == 3
    assert w.ready_line.startswith("ERROR ModuleNotFoundError: No module named 'no_such_module_xyz' (python="), \
        w.ready_line


def test_the_start_up_traceback_begins_in_the_app(spawn):
    """The worker's own frames (main(), load_app) and importlib's are left out."""
    w = spawn(app="broken_app:application", wait_ready=False)
    assert w.proc.wait(10) == 3
    lines = w.stderr.splitlines()
    start = lines.index("Traceback (most recent call last):")
    assert lines[start + 1].startswith('  File "%s", line 3, in <module>' % (APPS / "broken_app.py")), w.stderr
    assert "fcgibridge_worker" not in w.stderr and "importlib" not in w.stderr, w.stderr
    # nothing of the app's own: only the error itself
    w = spawn(app="no_such_module_xyz:app", wait_ready=False)
    assert w.proc.wait(10) == 3
    assert w.stderr.strip() == "ModuleNotFoundError: No module named 'no_such_module_xyz'", w.stderr

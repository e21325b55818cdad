"""One bridge, pools on two (or more) Python versions at once; a flup script whose
shebang names its Python (a virtualenv's) runs on it when the pool does not set `python:`."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from harness import APPS, bridge_binary, free_ports, make_bridge, pool

CANDIDATES = ["3.13", "3.12", "3.10", "3.9"]


def _version_of(exe):
    try:
        out = subprocess.run([exe, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_pythons():
    """{"3.13": (executable, "3.13.0"), ...} for the versions found at run time (not python3's)."""
    default = _version_of(shutil.which("python3") or "python3")
    found = {}
    for v in CANDIDATES:
        cands = []
        if shutil.which("pyenv"):
            r = subprocess.run(["pyenv", "prefix", v], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip():
                cands.append(os.path.join(r.stdout.strip().splitlines()[0], "bin", f"python{v}"))
        w = shutil.which(f"python{v}")
        if w:
            cands.append(w)  # may be a pyenv shim that fails: _version_of checks it runs
        for c in cands:
            ver = _version_of(c)
            if ver and ver.startswith(v + ".") and ver != default:
                found[v] = (c, ver)
                break
    return default, found


DEFAULT, FOUND = find_pythons()


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    if not FOUND:
        pytest.skip(f"no Python besides python3 ({DEFAULT}) found: tried {CANDIDATES} via pyenv and PATH")
    workdir = tmp_path_factory.mktemp("pythons")
    pools = {"py-default": pool(str(APPS / "edge_app.py"), processes=1, threads=2)}
    for v, (exe, _) in FOUND.items():
        pools["py" + v.replace(".", "")] = pool(str(APPS / "edge_app.py"), python=exe, processes=1, threads=2)
    port = free_ports(1)[0]
    routes = [{"host": name + ".test", "pool": name} for name in pools]
    b = make_bridge(workdir, pools, {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "routes": routes}})
    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/health", "py-default.test")])
        yield b
    finally:
        b.stop()


def _version(b, pool_name):
    resp = b.request("/version", pool=pool_name + ".test")
    assert resp.status == 200, resp.stdout[:2000]
    return json.loads(resp.body)


def test_found_a_second_python():
    if not FOUND:
        pytest.skip(f"no Python besides python3 ({DEFAULT}) found: tried {CANDIDATES} via pyenv and PATH")
    assert any(v in FOUND for v in ("3.12", "3.13")), \
        f"the issue asks for pyenv 3.12 or 3.13 next to python3; found {FOUND}"


@pytest.mark.parametrize("version", CANDIDATES)
def test_two_pythons_through_one_bridge(multi, version):
    if version not in FOUND:
        pytest.skip(f"python{version} not found")
    exe, full = FOUND[version]
    alt = _version(multi, "py" + version.replace(".", ""))
    default = _version(multi, "py-default")
    assert ".".join(map(str, alt["info"])) == full
    assert ".".join(map(str, default["info"])) == DEFAULT
    assert alt["info"][:2] != default["info"][:2]
    assert alt["version"].split()[0] == full
    # both pools keep serving side by side
    for _ in range(3):
        assert _version(multi, "py" + version.replace(".", ""))["info"] == alt["info"]
        assert _version(multi, "py-default")["info"] == default["info"]


# A module only the virtualenv has: the default python3 cannot import it.
VENV_ONLY = "fcgibridge_shebang_venv_only"

FLUP_SCRIPT = """#!{python} -u
import sys

import {module}
from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s|%s|%s" % ({module}.WORD, sys.prefix, sys.executable)).encode()]


WSGIServer(app).run()
"""


def _venv_with_module(where):
    """A virtualenv (no pip) of the Python running the tests, with VENV_ONLY in its
    site-packages; skips the test when one cannot be made."""
    venv = where / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                          capture_output=True, text=True, timeout=120)
    python = venv / "bin" / "python"
    if made.returncode != 0 or not python.exists():
        pytest.skip(f"cannot make a virtualenv with {sys.executable}: {made.stderr.strip()[-500:]}")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, timeout=60)
    if purelib.returncode != 0:
        pytest.skip(f"the virtualenv's python does not run: {purelib.stderr.strip()[-500:]}")
    site = purelib.stdout.strip()
    with open(os.path.join(site, VENV_ONLY + ".py"), "w") as f:
        f.write("WORD = 'from-the-venv'\n")
    return venv, python


def test_a_flup_scripts_shebang_chooses_its_pools_python(tmp_path):
    venv, python = _venv_with_module(tmp_path)
    default = shutil.which("python3")
    lacks = subprocess.run([default or "python3", "-c", f"import {VENV_ONLY}"], capture_output=True, timeout=60)
    if lacks.returncode == 0:
        pytest.skip(f"the default python3 ({default}) imports {VENV_ONLY} too: nothing to tell apart")
    app = tmp_path / "site" / "app.fcgi"
    app.parent.mkdir()
    app.write_text(FLUP_SCRIPT.format(python=python, module=VENV_ONLY))
    app.chmod(0o755)
    port = free_ports(1)[0]
    # No `python:`: under mod_fcgid or spawn-fcgi the shebang chose the interpreter.
    b = make_bridge(tmp_path, {"legacy": pool(str(app), processes=1, threads=2)},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "legacy"}})

    # `check` shows the interpreter that runs, and where it came from.
    shown = subprocess.run([str(bridge_binary()), "check", "--config", str(b.confdir)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    at = lines.index(f"    python: {python}")
    assert lines[at - 1] == f"    # python: from {app}:1 (the app file's shebang, as python: is not set)", lines
    assert "warning" not in shown.stderr, shown.stderr

    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/", "legacy.test")], timeout=60)
        resp = b.request("/", pool="legacy.test")
        assert resp.status == 200, resp.stdout[:2000]
        word, prefix, executable = resp.body.decode().split("|")
        assert (word, prefix, executable) == ("from-the-venv", str(venv), str(python))
        # The log says which Python the shebang chose, at start and at each reload: an
        # upgrade that moved a pool off python3 from PATH is seen there.
        said = f"pool legacy: python {python} from {app}:1 (its shebang; python: not set)"
        assert [ln for ln in b.log.lines() if said in ln and "INFO" in ln], b.log.text()[-3000:]
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGHUP)
        b.log.wait_for(["reload done"], since=mark, timeout=30)
        assert [ln for ln in b.log.lines(mark) if said in ln], b.log.text(mark)
    finally:
        b.stop()


BROKEN_SHEBANG = """#!/nonexistent/bin/python3
from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]


WSGIServer(app).run()
"""


def test_an_unusable_shebang_is_warned_of_once_and_in_the_reload_reply(tmp_path):
    """A pool's, a template's and a live instance's unusable shebang: the start logs each
    warning as one WARN line that does not say "warning" again; a reload logs it once (the
    `reload done` line counts it), and `fcgibridge reload`'s reply names every one, the
    instance's and the template's too."""
    def script(path):
        path.parent.mkdir(parents=True)
        path.write_text(BROKEN_SHEBANG)
        path.chmod(0o755)
        return path

    legacy = script(tmp_path / "legacy" / "app.fcgi")
    shared = script(tmp_path / "shared" / "app.fcgi")  # one file for every key: the template's own warning
    site = script(tmp_path / "sites" / "beta.test" / "app.fcgi")  # the instance's file
    ports = free_ports(3)
    b = make_bridge(tmp_path, {
        "legacy": pool(str(legacy), processes=1, threads=1),
        "sites": {"template": {"max-instances": 4}, "app": f"{tmp_path}/sites/{{host}}/app.fcgi", "threads": 1,
                  "max-processes": 1},
        "shared": {"template": {"max-instances": 4}, "app": str(shared), "env": {"SITE": "{host}"}, "threads": 1,
                   "max-processes": 1},
    }, {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{ports[0]}", "pool": "legacy"},
        "sites": {"fastcgi": f"127.0.0.1:{ports[1]}", "pool": "sites"},
        "shared": {"fastcgi": f"127.0.0.1:{ports[2]}", "pool": "shared"}})
    files = ((legacy, "legacy"), (shared, "shared"), (site, "sites"))

    def about(path, name, lines):
        return [ln for ln in lines if f"{path}:1: " in ln and f"pools.{name}.python: the app file's shebang" in ln]

    try:
        b.start()
        b.wait_ready([("fcgi-tcp", "/", "legacy.test")], timeout=60)
        resp = b.request("/", pool="beta.test", listener="sites")
        assert resp.status == 200 and resp.body == b"served", resp.stdout[:2000]
        for path, name in files:
            lines = about(path, name, b.log.lines())
            # The level says WARN: the message does not say "warning" again.
            assert len(lines) == 1 and lines[0].lower().count("warn") == 1 and " WARN " in lines[0], \
                (name, lines or b.log.text()[-5000:])
        mark = b.log.mark()
        out = subprocess.run([str(b.binary), "reload", "--config", str(b.confdir)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("reload done: "), (out.stdout, out.stderr)
        for path, name in files:
            assert len(about(path, name, out.stdout.split("; "))) == 1, (name, out.stdout)
        b.log.wait_for([r"reload done: .*; 3 warnings \(logged above\)$"], since=mark, timeout=30)
        for path, name in files:
            assert len(about(path, name, b.log.lines(mark))) == 1, (name, b.log.text(mark))
    finally:
        b.stop()

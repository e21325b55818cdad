"""Each pool's interpreter is run once (`python -S -c <version script>`) by `check`, `run`
and a reload, and refused when it is not Python or older than 3.9 (bridge/src/supervise/probe.rs).
Before, such a pool passed `check`, then answered 503 for ever behind the start backoff.

Old interpreters are pyenv's 2.7 and 3.6-3.8 where installed (a test is skipped for each
one missing). So that the refusal is covered on a machine without any, one test uses a
stand-in: a shell script named python that answers the probe as Python 2.7.18 does."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import harness
from harness import APPS, bridge_binary, free_ports, make_bridge, to_yaml

OLD = ["2.7", "3.6", "3.7", "3.8"]
SUPPORTED = ["3.9", "3.10", "3.11", "3.12", "3.13"]
APP = str(APPS / "edge_app.py")


def _version_of(exe: str):
    try:
        out = subprocess.run([exe, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(v: str):
    """(executable, "X.Y.Z") of Python v: pyenv's, else one on PATH; None when absent."""
    cands = []
    if shutil.which("pyenv"):
        r = subprocess.run(["pyenv", "prefix", v], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            prefix = r.stdout.strip().splitlines()[0]
            cands.append(os.path.join(prefix, "bin", f"python{v}"))
    if shutil.which(f"python{v}"):
        cands.append(shutil.which(f"python{v}"))
    for c in cands:
        ver = _version_of(c)
        if ver and ver.startswith(v + "."):
            return c, ver
    return None


def conf(tmp_path, pools: dict, port=None):
    """conf.d/50-test.yaml with these pools (name -> python) and one listener; returns the
    directory and the file's text."""
    port = port or free_ports(1)[0]
    spec = {"pools": {name: {"app": APP, "python": py, "processes": 1, "threads": 1}
                      for name, py in pools.items()},
            "listeners": {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": next(iter(pools))}}}
    if os.geteuid() == 0:
        for p in spec["pools"].values():
            p["allow-root"] = True
    d = tmp_path / "conf.d"
    d.mkdir(exist_ok=True)
    text = to_yaml(spec)
    (d / "50-test.yaml").write_text(text)
    return d, text


def line_of(text: str, pool: str) -> int:
    """The line number of `python:` in pool `pool` of a generated file."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == f"{pool}:")
    return next(i for i, ln in enumerate(lines) if i > start and ln.strip().startswith("python:")) + 1


def check(d):
    return subprocess.run([str(bridge_binary()), "check", "--config", str(d)], capture_output=True, text=True,
                          timeout=120)


def run_daemon(d, timeout=60):
    """`fcgibridge run` that is expected to refuse to start: its exit status and stderr."""
    p = subprocess.run([str(bridge_binary()), "run", "--config", str(d)], capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stderr


@pytest.mark.parametrize("version", OLD)
def test_old_python_is_refused_by_check_and_run(tmp_path, version):
    found = find_python(version)
    if not found:
        pytest.skip(f"python{version} is not installed (pyenv install {version})")
    exe, full = found
    d, text = conf(tmp_path, {"ok": "python3", "legacy": exe})
    n = line_of(text, "legacy")
    want = (rf"^{re.escape(str(d / '50-test.yaml'))}:{n}:\d+: pools\.legacy\.python: {re.escape(exe)} is "
            rf"Python {re.escape(full)} \(cpython\); fcgibridge workers need Python 3\.9 or newer$")
    r = check(d)
    assert r.returncode == 1, r.stdout
    assert re.search(want, r.stderr, re.M), r.stderr
    assert "pools.ok" not in r.stderr
    code, err = run_daemon(d)
    assert code == 2
    assert re.search(want.replace("^", "^fcgibridge: ", 1), err, re.M), err


def test_stand_in_for_python_2_is_refused(tmp_path):
    """For machines without an old interpreter: a script that answers the version probe
    as Python 2.7.18 does (the probe's script is valid Python 2; it prints this line)."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'fcgibridge-probe 2.7.18 cpython'\n")
    fake.chmod(0o755)
    d, text = conf(tmp_path, {"legacy": str(fake)})
    r = check(d)
    assert r.returncode == 1
    assert f":{line_of(text, 'legacy')}:" in r.stderr
    assert "pools.legacy.python: " + str(fake) + " is Python 2.7.18 (cpython); fcgibridge workers need Python 3.9 or newer" \
        in r.stderr, r.stderr


@pytest.mark.parametrize("exe,said", [
    ("/bin/true", "ended (exit status 0) and printed nothing"),
    ("/bin/sh", "ended (exit status 2): "),
])
def test_a_program_that_is_not_python_is_refused(tmp_path, exe, said):
    if not os.path.exists(exe):
        pytest.skip(f"{exe} is missing")
    d, _ = conf(tmp_path, {"notpy": exe})
    r = check(d)
    assert r.returncode == 1
    assert f"pools.notpy.python: {exe} is not a Python interpreter (or cannot start): `{exe} -S -c <version probe>` {said}" \
        in r.stderr, r.stderr
    code, err = run_daemon(d)
    assert code == 2 and "pools.notpy.python" in err, err


def user_conf(d: Path, pool: dict) -> Path:
    """conf.d/50-test.yaml in `d` with pool `p` (the app file of the suite, copied) and one listener."""
    app = d / "app.py"
    shutil.copy(APP, app)
    app.chmod(0o644)
    conf = d / "conf.d"
    conf.mkdir()
    (conf / "50-test.yaml").write_text(to_yaml({
        "pools": {"p": dict({"app": str(app)}, **pool)},
        "listeners": {"l": {"fastcgi": f"127.0.0.1:{free_ports(1)[0]}", "pool": "p"}}}))
    return conf


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the pool's user needs root")
def test_an_interpreter_the_pools_user_may_not_run_is_refused_by_check(public_dir):
    """The probe runs as the pool's `user:`, as its workers will: a Python under a
    directory only root may enter passes as root and would fail every worker's start. The
    error names where a symlinked `python:` leads and the directory in the user's way."""
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    python = private / "python"
    python.write_text('#!/bin/sh\nexec python3 "$@"\n')
    python.chmod(0o755)
    link = public_dir / "venv-python"
    link.symlink_to(python)
    d = user_conf(public_dir, {"python": str(link), "user": "nobody"})
    r = check(d)
    assert r.returncode == 1, r.stdout
    assert re.search(rf":4:\d+: pools\.p\.python: {re.escape(str(link))} cannot be run as user nobody "
                     rf"\(uid \d+, gid \d+\): Permission denied \(os error 13\); it is a symlink to "
                     rf"{re.escape(str(python))}, and {re.escape(str(private))} has mode 0700 and owner uid 0$",
                     r.stderr, re.M), r.stderr
    if os.access("/usr/bin/python3", os.X_OK):  # the system's, which every user may run
        conf_file = d / "50-test.yaml"
        conf_file.write_text(conf_file.read_text().replace(str(link), "/usr/bin/python3"))
        r = check(d)
        assert r.returncode == 0, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the pool's user needs root")
def test_a_working_directory_the_pools_user_cannot_enter_is_refused_by_check(public_dir):
    """The probe enters the pool's `chdir` as the pool's user (as a worker's start does),
    not as root: a directory only root may enter is a check error at `chdir:`, not a pool
    whose every worker fails to start."""
    try:
        user = pwd.getpwnam("fcgibridge-test")
    except KeyError:
        pytest.skip("user fcgibridge-test is missing: run scripts/create-test-user")
    wd = public_dir / "wd"
    wd.mkdir(mode=0o700)
    d = user_conf(public_dir, {"python": "/usr/bin/python3", "user": user.pw_name, "chdir": str(wd)})
    text = (d / "50-test.yaml").read_text()
    n = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip().startswith("chdir:"))
    r = check(d)
    assert r.returncode == 1, r.stdout
    want = (f"{d / '50-test.yaml'}:{n}:5: pools.p.chdir: cannot enter the working directory {wd} (pool `chdir:`) "
            f"as user {user.pw_name} (uid {user.pw_uid}, gid {user.pw_gid}): Permission denied (os error 13); "
            f"{wd} has mode 0700 and owner uid 0")
    assert r.stderr.strip() == want, r.stderr
    code, err = run_daemon(d)
    assert code == 2 and f"fcgibridge: {want}" in err, err
    wd.chmod(0o755)
    r = check(d)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the pool's user needs root")
def test_an_app_file_the_pools_user_cannot_read_is_refused_by_check(public_dir):
    """The app file is opened as the pool's user too: one only root may read passes as
    root and would fail every worker's start (PermissionError, the pool 503 for ever)."""
    try:
        user = pwd.getpwnam("fcgibridge-test")
    except KeyError:
        pytest.skip("user fcgibridge-test is missing: run scripts/create-test-user")
    d = user_conf(public_dir, {"python": "/usr/bin/python3", "user": user.pw_name})
    app = public_dir / "app.py"
    app.chmod(0o600)
    text = (d / "50-test.yaml").read_text()
    n = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip().startswith("app:"))
    r = check(d)
    assert r.returncode == 1, r.stdout
    want = (f"{d / '50-test.yaml'}:{n}:5: pools.p.app: {app} cannot be read as user {user.pw_name} "
            f"(uid {user.pw_uid}, gid {user.pw_gid}): Permission denied (os error 13); {app} has mode 0600 "
            f"and owner uid 0")
    assert r.stderr.strip() == want, r.stderr
    app.chmod(0o644)
    r = check(d)
    assert r.returncode == 0, r.stderr


def test_a_second_pool_of_the_same_interpreter_and_user_has_its_directory_checked(public_dir):
    """The interpreter runs once per account (a reload probes every pool); a second pool of
    it in a directory the user cannot enter is still refused at its own `chdir:`."""
    try:
        user = pwd.getpwnam("fcgibridge-test")
    except KeyError:
        pytest.skip("user fcgibridge-test is missing: run scripts/create-test-user")
    ok, locked = public_dir / "ok", public_dir / "locked"
    ok.mkdir(mode=0o755)
    locked.mkdir(mode=0o700)
    d = user_conf(public_dir, {"python": "/usr/bin/python3", "user": user.pw_name, "chdir": str(ok)})
    config = (d / "50-test.yaml").read_text()
    second = ("\n  q:\n    app: %s\n    python: /usr/bin/python3\n    user: %s\n    chdir: %s\n"
              % (public_dir / "app.py", user.pw_name, locked))
    config = config.replace("\nlisteners:", second + "listeners:", 1)
    (d / "50-test.yaml").write_text(config)
    r = check(d)
    assert r.returncode == 1, r.stdout
    assert re.search(rf"pools\.q\.chdir: cannot enter the working directory {re.escape(str(locked))} "
                     rf"\(pool `chdir:`\) as user {user.pw_name} .*Permission denied", r.stderr), r.stderr
    assert "pools.p." not in r.stderr, r.stderr
    locked.chmod(0o755)
    assert check(d).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the pool's user needs root")
def test_a_second_pools_directory_is_judged_by_the_kernel_acls_included(public_dir):
    """A second pool of an interpreter that ran for the account has its `chdir` looked up
    with the bridge thread's filesystem credentials switched to that account: an ACL that
    grants what the mode bits deny passes, one that denies what they allow is refused."""
    nobody = pwd.getpwnam("nobody")
    first, granted, denied = public_dir / "first", public_dir / "granted", public_dir / "denied"
    first.mkdir(mode=0o755)
    granted.mkdir(mode=0o700)
    harness.set_acl(granted, {nobody.pw_uid: 1})
    denied.mkdir(mode=0o755)
    harness.set_acl(denied, {nobody.pw_uid: 0})
    d = user_conf(public_dir, {"python": "/usr/bin/python3", "user": "nobody", "chdir": str(first)})
    config = (d / "50-test.yaml").read_text()
    second = ("\n  q:\n    app: %s\n    python: /usr/bin/python3\n    user: nobody\n    chdir: %s\n"
              % (public_dir / "app.py", granted))
    (d / "50-test.yaml").write_text(config.replace("\nlisteners:", second + "listeners:", 1))
    r = check(d)
    assert r.returncode == 0, r.stderr
    (d / "50-test.yaml").write_text(config.replace("\nlisteners:", second.replace(str(granted), str(denied))
                                                   + "listeners:", 1))
    r = check(d)
    assert r.returncode == 1, r.stdout
    assert re.search(rf"pools\.q\.chdir: cannot enter the working directory {re.escape(str(denied))} "
                     rf"\(pool `chdir:`\) as user nobody .*Permission denied \(os error 13\); the mode bits on "
                     rf"the way allow it: an ACL", r.stderr), r.stderr
    assert "pools.p." not in r.stderr, r.stderr


def test_supported_pythons_are_accepted_and_serve(tmp_path):
    found = {v: find_python(v) for v in SUPPORTED}
    found = {v: f for v, f in found.items() if f}
    if not found:
        pytest.skip(f"none of {SUPPORTED} found")
    pools = {"py" + v.replace(".", ""): exe for v, (exe, _) in found.items()}
    d, _ = conf(tmp_path, pools)
    r = check(d)
    assert r.returncode == 0, r.stderr
    # and they serve: one bridge, a pool per version, routed by host
    port = free_ports(1)[0]
    spec = {name: {"app": APP, "python": exe, "processes": 1, "threads": 1} for name, exe in pools.items()}
    b = make_bridge(tmp_path / "run", spec, {"l": {"fastcgi": f"127.0.0.1:{port}",
                                                  "routes": [{"host": f"{n}.test", "pool": n} for n in pools]}})
    try:
        b.start()
        b.wait_ready([("l", "/health", f"{n}.test") for n in pools])
    finally:
        b.stop()


def test_reload_refuses_an_old_python_and_keeps_serving(tmp_path):
    old = find_python("2.7") or find_python("3.8")
    if not old:
        pytest.skip("no Python older than 3.9 installed")
    exe, full = old
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"app": {"app": APP, "processes": 1, "threads": 1}},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "app"}})
    try:
        b.start()
        b.wait_ready([("l", "/health", "x")])
        mark = b.log.mark()
        b.config["pools"]["app"]["python"] = exe
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        os.kill(b.pid, signal.SIGHUP)
        b.log.wait_for([r"reload refused, the running configuration stays: .*50-test\.yaml:\d+:\d+: pools\.app\.python: ",
                        re.escape(f"is Python {full}"), r"need Python 3\.9 or newer"], since=mark)
        assert b.request("/health", pool="x", listener="l").status == 200
        assert "worker started" not in b.log.text(mark)
    finally:
        b.stop()

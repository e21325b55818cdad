"""Per-pool isolation (docs/supervision-isolation.md): workers run as an unprivileged user
with the pool's groups, umask, limits, nice and environment; root workers are refused
without allow-root; settings that need root fail at check time for an unprivileged bridge;
script-user / script-group refuse an app file with the wrong owner; chroot; rlimit-as caps a
worker's address space (MemoryError for the request, or a worker that dies and is replaced).

The privilege tests need root and the account made by scripts/create-test-user; the rlimit-as
tests run as any user (lowering a limit needs no privilege)."""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

import fcgi_client as fc
from harness import APPS, Bridge, bridge_binary, free_ports, make_bridge, to_yaml, wait_until

TEST_USER = "fcgibridge-test"
# Debian's interpreter: the default python3 may be a pyenv shim under /root, which the
# test user cannot execute.
SYSTEM_PYTHON = "/usr/bin/python3"


def need_test_user():
    if os.geteuid() != 0:
        pytest.skip("privilege tests need root")
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip(f"user {TEST_USER} is missing: run scripts/create-test-user")


def check(confdir: Path, as_user=None):
    """`fcgibridge check`, as root or (as_user: a pwd entry) as that unprivileged user."""
    def drop():
        os.setgroups([])
        os.setgid(as_user.pw_gid)
        os.setuid(as_user.pw_uid)
    return subprocess.run([str(bridge_binary()), "check", "--config", str(confdir)], capture_output=True,
                          text=True, timeout=60, preexec_fn=drop if as_user else None)


def public_app(d: Path, name="app.py", source="whoami_app.py") -> Path:
    app_dir = d / "app"
    app_dir.mkdir(exist_ok=True)
    app_dir.chmod(0o755)
    target = app_dir / name
    shutil.copy(APPS / source, target)
    target.chmod(0o644)
    return target


def write_conf(d: Path, pools: dict, port=None) -> Path:
    conf = d / "conf.d"
    conf.mkdir(exist_ok=True)
    conf.chmod(0o755)
    port = port or free_ports(1)[0]
    f = conf / "50-test.yaml"
    f.write_text(to_yaml({"pools": pools,
                          "listeners": {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": next(iter(pools))}}}))
    f.chmod(0o644)
    return conf


def whoami(b: Bridge):
    resp = b.request("/", pool="iso", listener="l")
    assert resp.status == 200, resp.stdout[:500]
    return json.loads(resp.body)


def started(tmp_path, public_dir, pool_spec, extra=None, pass_fds=()):
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"iso": pool_spec}, {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "iso"}},
                    bridge_extra=dict({"runtime-dir": str(public_dir / "run")}, **(extra or {})))
    b.start(pass_fds=pass_fds)
    return b


def test_worker_runs_as_the_pool_user_with_its_limits(tmp_path, public_dir):
    user = need_test_user()
    app = public_app(public_dir)
    spec = {
        "app": str(app), "python": SYSTEM_PYTHON, "processes": 1, "threads": 1,
        "user": TEST_USER, "groups": [TEST_USER, "nogroup"], "umask": "0027",
        "rlimit-nofile": 512, "rlimit-core": 0, "rlimit-nproc": 300, "nice": 7, "clear-env": True,
        "env": {"ONLY_THIS": "yes"},
    }
    os.environ["FCGIBRIDGE_ISO_LEAK"] = "bridge-only"
    try:
        b = started(tmp_path, public_dir, spec)
    finally:
        del os.environ["FCGIBRIDGE_ISO_LEAK"]
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        me = whoami(b)
        assert (me["uid"], me["euid"]) == (user.pw_uid, user.pw_uid)
        assert (me["gid"], me["egid"]) == (user.pw_gid, user.pw_gid)
        assert me["groups"] == sorted({user.pw_gid, grp.getgrnam("nogroup").gr_gid})
        assert me["umask"] == 0o027
        assert me["nofile"] == [512, 512]
        assert me["core"] == [0, 0]
        assert me["nproc"] == [300, 300]
        assert me["nice"] == 7
        env = me["environ"]
        assert env["ONLY_THIS"] == "yes"
        assert "FCGIBRIDGE_ISO_LEAK" not in env, "clear-env leaked the bridge's environment"
        # the bridge's environment is gone; what remains is the pool's, the worker's own and the user's
        assert env["USER"] == TEST_USER and env["HOME"] == user.pw_dir
        assert set(env) <= {"ONLY_THIS", "PATH", "HOME", "USER", "LOGNAME", "FCGIBRIDGE_APP",
                            "FCGIBRIDGE_THREADS", "FCGIBRIDGE_PROCESSES", "FCGIBRIDGE_POOL",
                            "FCGIBRIDGE_LISTENERS", "FCGIBRIDGE_READY_FD", "FCGIBRIDGE_TEST_DIR",
                            "LC_CTYPE"}, sorted(env)
        # the kernel agrees, and the worker still dies with the bridge (PDEATHSIG set after setuid)
        with open(f"/proc/{me['pid']}/status") as f:
            status = f.read()
        assert f"Uid:\t{user.pw_uid}\t{user.pw_uid}\t{user.pw_uid}" in status
        pid = me["pid"]
    finally:
        b.proc.kill()
        b.proc.wait(10)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text(),
               30, what="the worker to die with the bridge")
    b.stop()


def test_descriptors_the_bridge_inherited_never_reach_a_worker(tmp_path, public_dir):
    """A root-only file left open by whatever started the bridge (a wrapper script, sudo)
    must not be readable by the pool's user through the descriptor."""
    need_test_user()
    secret = tmp_path / "secret.key"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    with open(secret) as held:
        fd = held.fileno()
        b = started(tmp_path, public_dir, {"app": str(public_app(public_dir)), "python": SYSTEM_PYTHON,
                                           "processes": 1, "threads": 1, "user": TEST_USER}, pass_fds=(fd,))
        try:
            b.wait_ready([("l", "/", "iso")], timeout=60)
            assert os.readlink(f"/proc/{b.pid}/fd/{fd}") == str(secret)  # the bridge got it
            pid = whoami(b)["pid"]
            held_by_worker = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
            assert str(secret) not in held_by_worker, held_by_worker
        finally:
            b.stop()


def test_runtime_dir_the_worker_user_cannot_reach_is_a_clear_error(tmp_path, public_dir):
    need_test_user()
    app = public_app(public_dir)
    port = free_ports(1)[0]
    # make_bridge's runtime-dir lies in pytest's 0700 temporary directory
    b = make_bridge(tmp_path, {"iso": {"app": str(app), "python": SYSTEM_PYTHON, "processes": 1,
                                       "threads": 1, "user": TEST_USER}},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "iso"}})
    try:
        b.start()
        lines = b.log.wait_for([r"cannot start a worker", r"cannot reach", r"runtime-dir"], timeout=30)
        assert "iso" in lines[0]
    finally:
        b.stop()


def test_root_workers_are_refused_without_allow_root(public_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    app = public_app(public_dir)
    conf = write_conf(public_dir, {"iso": {"app": str(app), "python": SYSTEM_PYTHON}})
    r = check(conf)
    assert r.returncode == 1
    assert "50-test.yaml:" in r.stderr and "pools.iso" in r.stderr and "allow-root: true" in r.stderr, r.stderr
    # user: root is refused the same way, pointing at the user key
    conf = write_conf(public_dir, {"iso": {"app": str(app), "python": SYSTEM_PYTHON, "user": "root"}})
    r = check(conf)
    assert r.returncode == 1 and "pools.iso.user" in r.stderr, r.stderr
    # and `run` refuses to start at all
    r = subprocess.run([str(bridge_binary()), "run", "--config", str(conf)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "allow-root" in r.stderr, r.stderr
    # allow-root: true is the explicit consent
    conf = write_conf(public_dir, {"iso": {"app": str(app), "python": SYSTEM_PYTHON, "allow-root": True}})
    r = check(conf)
    assert r.returncode == 0, r.stderr
    assert "allow-root: true" in r.stdout


@pytest.mark.parametrize("key,value", [
    ("user", "nobody"), ("group", "root"), ("groups", ["nogroup"]), ("chroot", "/usr"),
    ("nice", -5), ("rlimit-nofile", 10_000_000),
])
def test_unprivileged_check_names_the_key_that_needs_root(public_dir, key, value):
    user = need_test_user()
    app = public_app(public_dir)
    spec = {"app": str(app), "python": SYSTEM_PYTHON, key: value}
    if key == "chroot":
        spec["chdir"] = "/usr"
        spec["python"] = "/usr/bin/python3"
        spec["app"] = "mod:app"
    conf = write_conf(public_dir, {"iso": spec})
    r = check(conf, as_user=user)
    assert r.returncode == 1, r.stdout
    first = r.stderr.strip().splitlines()[0]
    # file:line:column: pools.iso.<key>: ...
    assert "50-test.yaml:" in first and f"pools.iso.{key}" in first, first
    assert "needs the bridge to run as root" in first, first
    # settings an unprivileged bridge can apply itself pass
    ok = write_conf(public_dir, {"iso": {"app": str(app), "python": SYSTEM_PYTHON, "umask": "0077",
                                         "nice": 3, "rlimit-core": 0, "clear-env": True}})
    r = check(ok, as_user=user)
    assert r.returncode == 0, r.stderr


def test_script_owner_is_checked_at_check_time_and_at_spawn(tmp_path, public_dir):
    user = need_test_user()
    app = public_app(public_dir)
    spec = {"app": str(app), "python": SYSTEM_PYTHON, "processes": 1, "threads": 1,
            "user": TEST_USER, "script-user": TEST_USER, "script-group": TEST_USER, "queue-timeout": "2s"}
    conf = write_conf(public_dir, {"iso": dict(spec)})
    r = check(conf)
    assert r.returncode == 1 and "pools.iso.script-user" in r.stderr and "not by" in r.stderr, r.stderr
    os.chown(app, user.pw_uid, user.pw_gid)
    assert check(conf).returncode == 0
    # a directory others may write to defeats the ownership check
    app.parent.chmod(0o777)
    r = check(conf)
    assert r.returncode == 1 and "writable by others" in r.stderr, r.stderr
    app.parent.chmod(0o755)

    b = started(tmp_path, public_dir, spec)
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        pid = whoami(b)["pid"]
        # the file changes hands while the pool runs: the replacement of a dead worker is refused
        mark = b.log.mark()
        os.chown(app, 0, 0)
        os.kill(pid, 9)
        b.log.wait_for([r"cannot start a worker", r"owned by uid 0", r"iso"], since=mark, timeout=30)
        assert b.request("/", pool="iso", listener="l").status in (502, 503)
        # and given back, the slot recovers on its own (after the backoff)
        os.chown(app, user.pw_uid, user.pw_gid)
        wait_until(lambda: b.request("/", pool="iso", listener="l").status == 200, 60,
                   what="the pool to recover")
    finally:
        b.stop()


@pytest.fixture
def jail(public_dir):
    """A minimal chroot: /usr bind-mounted read-only (the system Python), the merged-/usr
    symlinks, /dev/null, and the app. Skips where bind mounts are not allowed."""
    need_test_user()
    root = public_dir / "jail"
    (root / "usr").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev" / "null").touch()
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink("/" + link):
            os.symlink(os.readlink("/" + link), root / link)
    mounted = []
    try:
        for src, dst in (("/usr", root / "usr"), ("/dev/null", root / "dev" / "null")):
            r = subprocess.run(["mount", "--bind", src, str(dst)], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"bind mounts are not allowed here ({r.stderr.strip()}); chroot not tested")
            mounted.append(dst)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root / "usr")], capture_output=True)
        yield root
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_chroot(tmp_path, jail):
    user = need_test_user()
    app = public_app(jail, "jailed.py")
    spec = {"app": str(app), "python": str(jail / "usr/bin/python3"), "processes": 1, "threads": 1,
            "user": TEST_USER, "chroot": str(jail)}
    # the interpreter must be inside the chroot: a path outside is a check-time error
    conf = write_conf(jail.parent, {"iso": dict(spec, python=SYSTEM_PYTHON)})
    r = check(conf)
    assert r.returncode == 1 and "pools.iso.chroot" in r.stderr and "outside the chroot" in r.stderr, r.stderr
    b = started(tmp_path, jail.parent, spec)
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        me = whoami(b)
        assert me["uid"] == user.pw_uid
        assert me["cwd"] == "/app"
        root = os.readlink(f"/proc/{me['pid']}/root")
        assert root == str(jail), root
        # the worker package was copied into the chroot
        assert (jail / ".fcgibridge/python/fcgibridge_worker/main.py").is_file()
    finally:
        b.stop()


def test_preloaded_template_runs_as_the_pool_user(tmp_path, public_dir):
    """A template gets the pool's isolation, so the workers forked from it inherit it."""
    user = need_test_user()
    app = public_app(public_dir)
    spec = {"app": str(app), "python": SYSTEM_PYTHON, "processes": 2, "threads": 1, "preload": True,
            "user": TEST_USER, "umask": "0077", "rlimit-nofile": 300}
    b = started(tmp_path, public_dir, spec)
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        me = whoami(b)
        assert me["uid"] == user.pw_uid and me["gid"] == user.pw_gid
        assert me["umask"] == 0o077 and me["nofile"] == [300, 300]
        with open(f"/proc/{me['pid']}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            assert b"fcgibridge_worker" in f.read()
        with open(f"/proc/{ppid}/status") as f:
            assert f"Uid:\t{user.pw_uid}\t" in f.read(), "the template should run as the pool user too"
        assert ppid != b.pid
    finally:
        b.stop()


AS_CAP = 256 << 20


def address_space_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_AS of a process as the kernel reports it."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max address space"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no address-space line in /proc/{pid}/limits")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def cpu_time_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) RLIMIT_CPU of a process as the kernel reports it: seconds or "unlimited"."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max cpu time"):
                soft, hard = line.split()[3:5]
                return soft, hard
    raise AssertionError(f"no cpu-time line in /proc/{pid}/limits")


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used, which RLIMIT_CPU counts."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_cpu_time_limit_is_the_kernels_for_a_worker_of_another_user(tmp_path, public_dir, preload):
    """cpu-time-limit's RLIMIT_CPU on a worker running as the pool's user: the worker sets
    it on itself (before exec; a template's fork after the fork), which needs no privilege.
    prlimit(2) from the bridge needed CAP_SYS_RESOURCE, which root lacks in a container: it
    warned `cannot set RLIMIT_CPU` and the worker ran without it. A fork's CPU time counts
    from the fork: its template's, spent here importing the app, is not charged to it."""
    user = need_test_user()
    spec = {"app": str(public_app(public_dir)), "python": SYSTEM_PYTHON, "processes": 1, "threads": 1,
            "user": TEST_USER, "preload": preload, "cpu-time-limit": "1s", "graceful-timeout": "1s"}
    if preload:
        spec["env"] = {"WHOAMI_IMPORT_CPU": "1.5"}
    b = started(tmp_path, public_dir, spec)
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        pid = whoami(b)["pid"]
        assert os.stat(f"/proc/{pid}").st_uid == user.pw_uid
        # soft: the limit (the native worker logs its SIGXCPU); hard: graceful-timeout + 1s later
        assert cpu_time_limit(pid) == ("1", "3")
        if preload:
            template = parent_of(pid)
            assert template != b.pid
            assert cpu_time_limit(template) == ("unlimited", "unlimited"), "the template must not die of it"
            assert cpu_seconds(template) >= 1.4 > cpu_seconds(pid)
            assert whoami(b)["pid"] == pid
            assert "cpu-time-limit reached" not in b.log.text()
        assert "cannot set RLIMIT_CPU" not in b.log.text()
    finally:
        b.stop()


@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_cpu_time_limit_stays_under_the_bridges_own_hard_limit(tmp_path, public_dir, preload):
    """A bridge whose own hard RLIMIT_CPU (systemd LimitCPU=) is below cpu-time-limit's:
    its workers keep that one, which they would inherit anyway, and start (raising it would
    need CAP_SYS_RESOURCE). Runs as any user."""
    port = free_ports(1)[0]
    spec = {"app": str(public_app(public_dir)), "processes": 1, "threads": 1, "preload": preload,
            "cpu-time-limit": "200s"}
    b = make_bridge(tmp_path, {"iso": spec}, {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "iso"}})
    b.command_prefix = ["prlimit", "--cpu=100:100"]
    b.start()
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        assert cpu_time_limit(b.pid) == ("100", "100")
        assert cpu_time_limit(whoami(b)["pid"]) == ("100", "100")
    finally:
        b.stop()


def hog_pool(public_dir: Path, **keys) -> tuple[dict, Path]:
    """A pool of apps/memory_hog_app.py capped at 256M, and the directory where its /hold
    requests signal (writable by any worker user)."""
    signals = public_dir / "signals"
    signals.mkdir()
    signals.chmod(0o777)
    spec = {"app": str(public_app(public_dir, "hog.py", "memory_hog_app.py")), "rlimit-as": "256M",
            "env": {"FCGIBRIDGE_TEST_DIR": str(signals)}, "queue-timeout": "60s"}
    spec.update(keys)
    return spec, signals


def hog_info(b: Bridge) -> dict:
    resp = b.request("/", pool="iso", listener="l")
    assert resp.status == 200, resp.stdout[:500]
    return json.loads(resp.body)


def hold(b: Bridge, signals: Path) -> fc.FcgiConnection:
    """A /hold request in flight, once the app has it."""
    conn = b.fcgi("l")
    conn.begin(1, fc.cgi_params("/hold", headers={"Host": "iso"}))
    wait_until(lambda: (signals / "holding").exists(), 60, what="the /hold request to reach the app")
    return conn


def finish(conn: fc.FcgiConnection, signals: Path):
    (signals / "release").touch()
    try:
        resp = conn.wait(1)
    finally:
        conn.close()
    assert resp.status == 200, resp.stdout[:500]


@pytest.mark.parametrize("variant", ["plain", "pool-user", "preload"])
def test_rlimit_as_turns_a_runaway_allocation_into_one_500(tmp_path, public_dir, variant):
    """Under rlimit-as: 256M a request allocating 400 MB gets MemoryError: 500 for it, a log
    line with pool, pid and request; the request on the worker's other thread and the next
    one on the same worker are served. The cap is on the worker (and on a preload template,
    whose forks inherit it), as the pool's user too."""
    keys = {"processes": 1, "threads": 2}
    if variant == "pool-user":
        need_test_user()
        keys.update(user=TEST_USER, python=SYSTEM_PYTHON)
    if variant == "preload":
        keys["preload"] = True
    spec, signals = hog_pool(public_dir, **keys)
    b = started(tmp_path, public_dir, spec)
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        me = hog_info(b)
        pid = me["pid"]
        assert me["as"] == [AS_CAP, AS_CAP]
        assert address_space_limit(pid) == (AS_CAP, AS_CAP)
        if variant == "preload":
            template = parent_of(pid)
            assert template != b.pid
            assert address_space_limit(template) == (AS_CAP, AS_CAP)
        if variant == "pool-user":
            assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam(TEST_USER).pw_uid

        held = hold(b, signals)
        mark = b.log.mark()
        resp = b.request("/hog", pool="iso", listener="l")
        assert resp.status == 500, resp.stdout[:500]
        line = b.log.wait_for([r"MemoryError", r'pool="?iso\b', rf"pid={pid}\b", r"request_id=", r'uri="?/hog'],
                              since=mark)[0]
        assert "worker exited" not in b.log.text(mark), line
        finish(held, signals)
        assert hog_info(b)["pid"] == pid, "the worker should have survived its MemoryError"
    finally:
        b.stop()


def test_rlimit_as_a_body_read_whole_past_it_is_one_500(tmp_path, public_dir):
    """A body read whole (wsgi.input.read()) that the cap cannot hold is a MemoryError in the
    app, as its own allocations are: 500 for that request, logged, the worker lives on (the
    native worker's receive buffer aborted the process before: 502 for every request of it);
    the request in flight on the pool's other worker carries on."""
    spec, signals = hog_pool(public_dir, processes=2, threads=1)
    b = started(tmp_path, public_dir, spec)
    try:
        b.wait_ready([("l", "/", "iso")], timeout=60)
        held = hold(b, signals)
        mark = b.log.mark()
        resp = b.request("/upload", pool="iso", listener="l", method="POST", body=b"x" * (300 << 20))
        assert resp.status == 500, resp.stdout[:500]
        b.log.wait_for([r"MemoryError", r'pool="?iso\b', r"request_id=", r'uri="?/upload'], since=mark)
        finish(held, signals)
        wait_until(lambda: b.request("/", pool="iso", listener="l").status == 200, 60,
                   what="the pool to serve after the failed upload")
        assert "worker exited" not in b.log.text(mark), b.log.text(mark)[-2000:]
    finally:
        b.stop()

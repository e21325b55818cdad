"""The systemd packaging as shipped: `dist/install` into a staging root, then the unit's
ExecStart= and ExecReload= command lines exactly as written in the installed
fcgibridge.service — only the install paths moved into that root — with the configuration
docs/systemd.md shows. The daemon must find its worker module in the installed layout
(FCGIBRIDGE_WORKER_LIB is removed from its environment), and README, the guides and the
socket unit must agree on one socket path."""
from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

import fcgi_client as fc
from harness import APPS, REPO, LogFile, bridge_binary, stop_process, wait_until

SOCKET = "/run/fcgibridge/app.sock"


def unit(path: Path) -> dict:
    """A unit file's keys (a repeated key keeps its last value, as systemd's do for these)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str
    parser.read_string(path.read_text())
    return {f"{s}.{k}": v for s in parser.sections() for k, v in parser[s].items()}


def systemd_yaml() -> str:
    text = (REPO / "docs" / "systemd.md").read_text()
    m = re.search(r"`/etc/fcgibridge/conf\.d/50-app\.yaml`:\n\n```yaml\n(.*?)```", text, re.S)
    assert m, "docs/systemd.md lost its example configuration"
    return m.group(1)


def test_one_socket_path_across_readme_guides_and_socket_unit():
    sock = unit(REPO / "dist" / "systemd" / "fcgibridge.socket")
    assert sock["Socket.ListenStream"] == SOCKET
    # The Debian package's demo has sockets of its own there, which systemd.md describes;
    # none of them may be the app's.
    demo = set(re.findall(r"/run/fcgibridge/[\w.-]*sock", (REPO / "dist/debian/10-demo.yaml").read_text()))
    assert demo and SOCKET not in demo, demo
    for doc in ("README.md", "docs/operator-guide.md", "docs/systemd.md"):
        text = (REPO / doc).read_text()
        paths = set(re.findall(r"/run/fcgibridge[/.][\w.]*sock", text)) - demo
        assert paths == {SOCKET}, (doc, paths)


def test_installed_layout_runs_the_units_commands_as_written(tmp_path):
    binary = bridge_binary()
    build = binary.parent
    assert (build / "libfcgibridge_worker.so").exists(), f"build the worker module into {build}"
    root = tmp_path / "root"
    r = subprocess.run([str(REPO / "dist" / "install")], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, DESTDIR=str(root), BUILD=str(build)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "usr/local/lib/fcgibridge/libfcgibridge_worker.so").is_file()
    assert os.readlink(root / "usr/local/bin/fcgibridge") == "../lib/fcgibridge/fcgibridge"
    assert (root / "etc/logrotate.d/fcgibridge").is_file() and (root / "etc/fcgibridge/conf.d").is_dir()

    svc = unit(root / "etc/systemd/system/fcgibridge.service")
    assert "Unit.Requires" not in svc and "Unit.Wants" not in svc
    assert svc["Service.RuntimeDirectory"] == "fcgibridge" and svc["Service.LogsDirectory"] == "fcgibridge"
    assert svc["Service.RuntimeDirectoryPreserve"] == "yes"

    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own parser: no unknown key, no missing executable
        check = tmp_path / "units"
        check.mkdir()
        for name in ("fcgibridge.service", "fcgibridge.socket"):
            text = (root / "etc/systemd/system" / name).read_text()
            (check / name).write_text(text.replace("/usr/local/", f"{root}/usr/local/"))
        r = subprocess.run([analyze, "verify", "--man=no", str(check / "fcgibridge.service"),
                            str(check / "fcgibridge.socket")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr

    def moved(text: str) -> str:
        for p in ("/usr/local/", "/etc/fcgibridge/", "/run/fcgibridge", "/var/log/fcgibridge"):
            text = text.replace(p, f"{root}{p}")
        return text

    # What RuntimeDirectory= and LogsDirectory= create before ExecStart=.
    (root / "run/fcgibridge").mkdir(parents=True, mode=0o750)
    (root / "var/log/fcgibridge").mkdir(parents=True, mode=0o750)
    conf = moved(systemd_yaml()).replace("/srv/app/wsgi.py", str(APPS / "edge_app.py"))
    if os.geteuid() == 0:
        conf = conf.replace("    app: " + str(APPS / "edge_app.py"),
                            "    app: " + str(APPS / "edge_app.py") + "\n    allow-root: true")
    (root / "etc/fcgibridge/conf.d/50-app.yaml").write_text(conf)

    env = {k: v for k, v in os.environ.items() if k not in ("FCGIBRIDGE_WORKER_LIB", "FCGIBRIDGE_BIN")}
    start = shlex.split(moved(svc["Service.ExecStart"]))
    assert start[0] == f"{root}/usr/local/bin/fcgibridge", start
    out = open(tmp_path / "stdout.log", "ab")
    proc = subprocess.Popen(start, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd="/")
    out.close()
    log = LogFile(root / "var/log/fcgibridge/fcgibridge.log")
    sock = f"{root}{SOCKET}"
    try:
        def answered():
            assert proc.poll() is None, (tmp_path / "stdout.log").read_text() + log.text()
            with fc.FcgiConnection(sock, timeout=10) as c:
                return c.request("/health").status == 200
        wait_until(answered, 120, 0.25, what="200 through the installed daemon's socket")
        log.wait_for(r"fcgibridge .* running", timeout=30)

        reload_cmd = shlex.split(moved(svc["Service.ExecReload"]))
        assert reload_cmd[:2] == [f"{root}/usr/local/bin/fcgibridge", "reload"], reload_cmd
        mark = log.mark()
        r = subprocess.run(reload_cmd, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0 and r.stdout.startswith("reload done: "), r.stdout + r.stderr
        log.wait_for(r"fcgibridge reload: reloading", since=mark, timeout=60)
        wait_until(answered, 60, 0.25, what="200 after ExecReload")
        # A reload the bridge refuses fails ExecReload= (so `systemctl reload`), with the reason.
        held = socket.socket()
        try:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            busy = root / "etc/fcgibridge/conf.d/60-busy.yaml"
            busy.write_text(f"listeners:\n  busy: {{fastcgi: 127.0.0.1:{held.getsockname()[1]}, pool: app}}\n")
            r = subprocess.run(reload_cmd, capture_output=True, text=True, timeout=60, env=env)
            assert r.returncode == 1 and "reload refused, the running configuration stays: listener busy: " in r.stderr, \
                r.stdout + r.stderr
            busy.unlink()
        finally:
            held.close()
        wait_until(answered, 60, 0.25, what="200 after the refused reload")
        access = LogFile(root / "var/log/fcgibridge/access.log")
        wait_until(lambda: "/health" in access.text(), 30, what="the access log in LogsDirectory")

        # The logrotate file's postrotate script as written, with a stand-in `systemctl`
        # that accepts exactly that command and signals the daemon as systemd would.
        rotate = (root / "etc/logrotate.d/fcgibridge").read_text()
        script = re.search(r"postrotate\n(.*?)\n\s*endscript", rotate, re.S).group(1).strip()
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "systemctl").write_text(
            "#!/bin/sh\n"
            '[ "$*" = "kill --kill-who=main -s USR1 fcgibridge.service" ] || { echo "unexpected: $*" >&2; exit 2; }\n'
            f"exec kill -USR1 {proc.pid}\n")
        (shim / "systemctl").chmod(0o755)
        os.rename(log.path, log.path.with_suffix(".log.1"))
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}"))
        assert r.returncode == 0, r.stderr
        wait_until(lambda: log.path.exists() and "reopening log files" in log.text(), 30,
                   what="a new log file after the postrotate script")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop_process(proc)


def test_logrotate_signals_the_bridge_once_per_rotation(tmp_path):
    """dist/logrotate/fcgibridge with real logrotate, its log directory moved into tmp_path:
    the bridge's log-file and access-log rotate together, and the postrotate script (a
    stand-in `systemctl` records it) runs once for both — `sharedscripts` — with an option
    every systemd since 2012 parses (`--kill-whom=` is unknown before 252)."""
    if not shutil.which("logrotate"):
        pytest.skip("logrotate is not installed")
    logs = tmp_path / "log"
    logs.mkdir()
    for name in ("fcgibridge.log", "access.log"):
        (logs / name).write_text("a line\n")
    conf = tmp_path / "logrotate.conf"
    conf.write_text((REPO / "dist/logrotate/fcgibridge").read_text().replace("/var/log/fcgibridge", str(logs)))
    conf.chmod(0o644)
    shim = tmp_path / "shim"
    shim.mkdir()
    calls = tmp_path / "calls"
    (shim / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (shim / "systemctl").chmod(0o755)
    r = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}"))
    assert r.returncode == 0, r.stderr
    assert (logs / "fcgibridge.log.1").exists() and (logs / "access.log.1").exists(), sorted(os.listdir(logs))
    assert calls.read_text().splitlines() == ["kill --kill-who=main -s USR1 fcgibridge.service"]


def build_deb(tmp_path: Path) -> Path:
    """scripts/build-deb from this build, into tmp_path/out."""
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed")
    build = bridge_binary().parent
    r = subprocess.run([str(REPO / "scripts" / "build-deb")], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, BUILD=str(build), OUT=str(tmp_path / "out")))
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def unix_http_get(path: Path, target: str) -> tuple[int, bytes]:
    """GET `target` from an HTTP server on the unix socket `path` (the status listener)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_debian_package_starts_the_demo_from_its_unit(tmp_path):
    """scripts/build-deb from this build; the package's files unpacked into a root (not
    installed on this machine); its unit's ExecStart= as written runs the packaged demo
    (ports moved to free ones)."""
    deb = build_deb(tmp_path)
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Depends"], capture_output=True, text=True,
                            check=True).stdout
    assert "Package: fcgibridge" in fields and "python3" in fields, fields
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    assert b"conffiles" in conffiles and b"postinst" in conffiles

    svc = unit(root / "lib/systemd/system/fcgibridge.service")
    assert svc["Service.ExecStart"] == "/usr/bin/fcgibridge run --config /etc/fcgibridge/conf.d"
    (root / "run/fcgibridge").mkdir(parents=True)
    (root / "var/log/fcgibridge").mkdir(parents=True)

    def moved(text: str) -> str:
        for p in ("/usr/", "/etc/fcgibridge/", "/run/fcgibridge", "/var/log/fcgibridge"):
            text = text.replace(p, f"{root}{p}")
        return text

    demo = root / "etc/fcgibridge/conf.d/10-demo.yaml"
    conf = moved(demo.read_text())
    # No TCP port: installing the package beside the backend it replaces takes none of its
    # addresses (127.0.0.1:9000 is spawn-fcgi's, flup's and PHP-FPM's).
    assert not re.search(r"^[^#]*\d+\.\d+\.\d+\.\d+:\d+", conf, re.M), conf
    if os.geteuid() == 0:  # the unit runs it as www-data; here the test's own user does
        conf = conf.replace("    threads: 4\n", "    threads: 4\n    allow-root: true\n")
    demo.write_text(conf)

    env = {k: v for k, v in os.environ.items() if k not in ("FCGIBRIDGE_WORKER_LIB", "FCGIBRIDGE_BIN")}
    out = open(tmp_path / "stdout.log", "ab")
    proc = subprocess.Popen(shlex.split(moved(svc["Service.ExecStart"])), env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
    out.close()
    try:
        def answered():
            assert proc.poll() is None, (tmp_path / "stdout.log").read_text()
            with fc.FcgiConnection(str(root / "run/fcgibridge/demo.sock"), timeout=10) as c:
                resp = c.request("/")
                return resp.status == 200 and b"Hello from fcgibridge" in resp.body
        wait_until(answered, 120, 0.25, what="the packaged demo answering")
        status, page = unix_http_get(root / "run/fcgibridge/status.sock", "/status?json")
        assert status == 200 and json.loads(page)["pools"][0]["name"] == "demo", page[:300]
        assert "running" in (root / "var/log/fcgibridge/fcgibridge.log").read_text()  # log-file in LogsDirectory
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop_process(proc)


# A throwaway root: this machine's / as the read-only lower layer of an overlay whose
# upper layer is a tmpfs, in private mount and network namespaces. The package's
# dependencies are this machine's (its dpkg database included); whatever `apt install`
# writes lands in the tmpfs, which disappears with the last process of the namespaces.
# Then what systemd does for the unit (RuntimeDirectory=, LogsDirectory=, PrivateTmp=,
# ProtectSystem=full, User=) and ExecStart= as written, in the root, as www-data.
THROWAWAY_ROOT = r"""
set -eu
W="$1"; DEB="$2"; OUT="$3"; shift 3
mount -t tmpfs tmpfs "$W"
mkdir "$W/upper" "$W/work" "$W/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$W/root"
R="$W/root"
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
ip link set lo up
cp "$DEB" "$R/tmp/"
chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'cd /tmp && apt install -y ./fcgibridge_*.deb' >"$OUT/apt.log" 2>&1
chroot "$R" sh -c 'install -d -m 0750 -o www-data -g www-data /run/fcgibridge /var/log/fcgibridge'
for d in usr etc; do mount --bind "$R/$d" "$R/$d"; mount -o remount,bind,ro "$R/$d"; done
exec chroot "$R" setpriv --reuid=www-data --regid=www-data --init-groups \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/www USER=www-data LOGNAME=www-data "$@"
"""


def throwaway_root_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a throwaway root needs root (mount and chroot)"
    for tool in ("unshare", "chroot", "setpriv", "apt", "ip"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    r = subprocess.run(["getent", "passwd", "www-data"], capture_output=True)
    if r.returncode != 0:
        return "no www-data user (the unit's User=)"
    return None


def test_apt_install_into_a_throwaway_root_runs_the_demo_as_the_unit_would(tmp_path):
    """`apt install ./fcgibridge_*.deb` in a throwaway root (not this machine), then the
    unit's ExecStart= exactly as written, as its User=, with the demo's configuration as
    packaged (its sockets in the root's /run/fcgibridge); then `fcgibridge status` and
    `fcgibridge request` as the demo's comment says, ExecReload=, and SIGTERM."""
    reason = throwaway_root_unavailable()
    if reason:
        pytest.skip(reason)
    deb = build_deb(tmp_path)
    (tmp_path / "w").mkdir()
    unpacked = tmp_path / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=120)
    svc = unit(unpacked / "lib/systemd/system/fcgibridge.service")
    assert svc["Service.User"] == "www-data" and svc["Service.ProtectSystem"] == "full"
    start = shlex.split(svc["Service.ExecStart"])
    out = open(tmp_path / "stdout.log", "ab")
    proc = subprocess.Popen(["unshare", "-m", "-n", "--propagation", "private", "sh", "-c", THROWAWAY_ROOT, "sh",
                             str(tmp_path / "w"), str(deb), str(tmp_path), *start],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    root = Path(f"/proc/{proc.pid}/root")
    log = LogFile(root / "var/log/fcgibridge/fcgibridge.log")

    def alive():
        if proc.poll() is not None:
            apt = tmp_path / "apt.log"
            raise AssertionError((tmp_path / "stdout.log").read_text() + (apt.read_text() if apt.exists() else ""))

    try:
        def running():
            alive()
            with fc.FcgiConnection(str(root / "run/fcgibridge/demo.sock"), timeout=10) as c:
                resp = c.request("/")
                return resp.status == 200 and b"Hello from fcgibridge" in resp.body
        wait_until(running, 120, 0.25, what="the installed demo answering on /run/fcgibridge/demo.sock")
        apt_log = (tmp_path / "apt.log").read_text()
        assert "Setting up fcgibridge" in apt_log, apt_log
        assert not Path("/usr/bin/fcgibridge").exists() and not Path("/etc/fcgibridge").exists(), \
            "the package reached this machine"
        assert os.stat(f"/proc/{proc.pid}").st_uid == pwd.getpwnam("www-data").pw_uid
        code, page = unix_http_get(root / "run/fcgibridge/status.sock", "/status?json")
        assert code == 200 and json.loads(page)["pools"][0]["name"] == "demo", page[:300]
        # As the demo's configuration says: `fcgibridge status` (no --config) and `fcgibridge request`.
        enter = ["nsenter", "-t", str(proc.pid), "-m", "-n", "-r", "-w", "/usr/bin/fcgibridge"]
        status = subprocess.run([*enter, "status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "demo" in status.stdout, status.stdout + status.stderr
        request = subprocess.run([*enter, "request", "unix:/run/fcgibridge/demo.sock", "/env"], capture_output=True,
                                 text=True, timeout=60)
        assert request.returncode == 0 and "SCRIPT_NAME" in request.stdout, request.stdout + request.stderr
        log.wait_for(r"fcgibridge .* running", timeout=30)

        mark = log.mark()
        # ExecReload= as written, in the throwaway root (`fcgibridge reload` finds the
        # control socket through the configuration there).
        reload_cmd = ["nsenter", "-t", str(proc.pid), "-m", "-n", "-r", "-w",
                      *shlex.split(svc["Service.ExecReload"])]
        r = subprocess.run(reload_cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("reload done: "), r.stdout + r.stderr
        log.wait_for(r"fcgibridge reload: reloading", since=mark, timeout=60)
        wait_until(running, 60, 0.25, what="the demo answering after ExecReload")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop_process(proc)


# The maintainer scripts under a systemd stand-in: /run/systemd/system exists (a tmpfs on
# /run in a private mount namespace), and `systemctl` first on PATH records its arguments
# and keeps the units enabled in the file $ENABLED.
MAINTAINER_SCRIPTS = r"""
set -eu
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
exec "$@"
"""

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$CALLS"
unit=$(eval echo "\\$$#")
case "$1" in
    enable) echo "$unit" >> "$ENABLED" ;;
    is-enabled) grep -qx "$unit" "$ENABLED" ;;
esac
"""


@pytest.mark.parametrize("case, scripts, enabled, expected", [
    ("first install", [("postinst", "configure", "")], "",
     ["daemon-reload", "enable fcgibridge.service", "is-enabled --quiet fcgibridge.socket",
      "is-enabled --quiet fcgibridge.service", "restart fcgibridge.service"]),
    # The socket is started before the service restarts: a `systemd:` listener needs it.
    ("upgrade with socket activation", [("prerm", "upgrade", "9.9"), ("postinst", "configure", "0.1")],
     "fcgibridge.service fcgibridge.socket",
     ["daemon-reload", "is-enabled --quiet fcgibridge.socket", "start fcgibridge.socket",
      "is-enabled --quiet fcgibridge.service", "restart fcgibridge.service"]),
    ("upgrade of a disabled service", [("prerm", "upgrade", "9.9"), ("postinst", "configure", "0.1")], "",
     ["daemon-reload", "is-enabled --quiet fcgibridge.socket", "is-enabled --quiet fcgibridge.service"]),
    ("removal", [("prerm", "remove", "")], "", ["stop fcgibridge.service fcgibridge.socket"]),
])
def test_the_maintainer_scripts_keep_the_socket_and_the_operator_s_choice(tmp_path, case, scripts, enabled, expected):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a private /run needs root and unshare")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    (tmp_path / "enabled").write_text("".join(f"{u}\n" for u in enabled.split()))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
           "ENABLED": str(tmp_path / "enabled")}
    for script, *args in scripts:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", MAINTAINER_SCRIPTS, "sh",
                            "sh", str(REPO / "dist/debian" / script), *args], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, f"{case}: {script} {args}: {r.stdout}{r.stderr}"
    assert calls.read_text().splitlines() == expected, case

"""The systemd packaging as shipped: `dist/install` into a staging root, then the unit's
ExecStart= and ExecReload= command lines exactly as written in the installed
fcgibridge.service — only the install paths moved into that root — with the configuration
docs/systemd.md shows. The daemon must find its worker module in the installed layout
(FCGIBRIDGE_WORKER_LIB is removed from its environment), and README, the guides and the
socket unit must agree on one socket path."""
from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

import fcgi_client as fc
from harness import APPS, REPO, LogFile, bridge_binary, free_ports, stop_process, wait_until

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
    for doc in ("README.md", "docs/operator-guide.md", "docs/systemd.md"):
        text = (REPO / doc).read_text()
        paths = set(re.findall(r"/run/fcgibridge[/.][\w.]*sock", text))
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

        reload_cmd = shlex.split(svc["Service.ExecReload"].replace("$MAINPID", str(proc.pid)))
        mark = log.mark()
        assert subprocess.run(reload_cmd, timeout=30).returncode == 0
        log.wait_for(r"SIGHUP: reloading", since=mark, timeout=60)
        wait_until(answered, 60, 0.25, what="200 after ExecReload")
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
            '[ "$*" = "kill --kill-whom=main -s USR1 fcgibridge.service" ] || { echo "unexpected: $*" >&2; exit 2; }\n'
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


def test_debian_package_starts_the_demo_from_its_unit(tmp_path):
    """scripts/build-deb from this build; the package's files unpacked into a root (not
    installed on this machine); its unit's ExecStart= as written runs the packaged demo
    (ports moved to free ones)."""
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed")
    build = bridge_binary().parent
    r = subprocess.run([str(REPO / "scripts" / "build-deb")], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, BUILD=str(build), OUT=str(tmp_path / "out")))
    assert r.returncode == 0, r.stdout + r.stderr
    deb = Path(r.stdout.strip().splitlines()[-1])
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
    fport, sport, hport = free_ports(3)
    conf = moved(demo.read_text())
    for old, new in (("127.0.0.1:9000", fport), ("127.0.0.1:9001", sport), ("127.0.0.1:9002", hport)):
        assert old in conf
        conf = conf.replace(old, f"127.0.0.1:{new}")
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
            with fc.FcgiConnection(("127.0.0.1", fport), timeout=10) as c:
                resp = c.request("/")
                return resp.status == 200 and b"Hello from fcgibridge" in resp.body
        wait_until(answered, 120, 0.25, what="the packaged demo answering")
        with urllib.request.urlopen(f"http://127.0.0.1:{hport}/status?json", timeout=30) as page:
            assert page.status == 200
        assert "running" in (root / "var/log/fcgibridge/fcgibridge.log").read_text()  # log-file in LogsDirectory
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop_process(proc)

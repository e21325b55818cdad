"""Helpers of the end-to-end suite: a running `fcgibridge run` with a generated conf.d,
a real nginx in front of it, the bridge's log, free ports and polling.

(Test modules import from here, not from conftest.py: another test directory in the
same pytest run has a conftest.py of its own, and only one module can be `conftest`.)
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APPS = HERE / "apps"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fcgi_client  # noqa: E402

# Hosts that the main bridge routes to each pool (the web server passes Host as HTTP_HOST).
POOL_HOSTS = {
    "flask": "flask.test",
    "django": "django.test",
    "edge": "edge.test",
    "validated": "validated.test",
    "single": "single.test",
}

DEFAULT_TIMEOUT = 300

# ------------------------------------------------------------------ helpers

def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int) -> list[int]:
    """n distinct free loopback TCP ports (held open together while picking).

    Picked at random below the kernel's ephemeral range: a port that range hands out
    (bind to port 0) may, once closed, become the source port of any outgoing connection on
    the machine (this suite's own clients, nginx, other test runs) before the bridge binds
    it, and the bridge would then fail with "address in use"."""
    import random
    floor = _ephemeral_floor()
    low = 10000 if floor > 20000 else 1024
    socks = []
    try:
        for _ in range(1000):
            if len(socks) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", random.randrange(low, floor)))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < n:  # a crowded range: fall back to the kernel's choice
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate() until it returns a truthy value; returns that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_exc = None
        except Exception as e:  # noqa: BLE001 - polled until the deadline
            last_exc = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def can_connect(address) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(address)
            return True
        except OSError:
            return False


def to_yaml(obj, indent: int = 0) -> str:
    """A small block-style YAML emitter for the generated conf.d (strings double-quoted)."""
    pad = "  " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                out.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict) and v:
                inner = to_yaml(v, indent + 1).lstrip()
                out.append(f"{pad}- {inner}")
            else:
                out.append(f"{pad}- {_scalar(v)}")
    else:
        out.append(pad + _scalar(obj))
    return "\n".join(out) + ("\n" if indent == 0 else "")


def _scalar(v) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(str(v))


class LogFile:
    """The bridge's captured stdout+stderr; tests look for lines after a mark."""

    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def text(self, since: int = 0) -> str:
        with open(self.path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def lines(self, since: int = 0) -> list[str]:
        return strip_ansi(self.text(since)).splitlines()

    def wait_for(self, pattern, since: int = 0, timeout: float = 30.0, flags=re.I,
                 access: bool = False) -> list[str]:
        """Lines after `since` matching `pattern` (a regex, or a list of regexes that must all
        match the same line); waits until there is at least one. Access-log lines (which name
        every URI) are left out unless `access` is true."""
        pats = [pattern] if isinstance(pattern, str) else list(pattern)

        def found():
            return [ln for ln in self.lines(since) if all(re.search(p, ln, flags) for p in pats)
                    and access == is_access_line(ln)]

        try:
            return wait_until(found, timeout, 0.1, what=f"log line matching {pats}")
        except TimeoutError:
            tail = "\n".join(self.lines(since)[-60:])
            raise AssertionError(f"no line of the bridge log matches {pats}; log since mark:\n{tail}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ACCESS = re.compile(r"(\baccess: |\"target\":\s*\"access\")")


def set_acl(path, users: dict[int, int]) -> None:
    """`setfacl -m u:UID:PERMS` for each of `users` (uid: permission bits, 4 read, 1 search),
    written as the kernel's system.posix_acl_access attribute, so no setfacl is needed: the
    mode's owner, group and other bits, the users' entries and the mask that lets them count."""
    import struct
    mode = os.stat(path).st_mode
    group = (mode >> 3) & 7
    mask = group
    for perms in users.values():
        mask |= perms
    anyone = 0xFFFFFFFF
    entries = [(0x01, (mode >> 6) & 7, anyone)] + [(0x02, perms, uid) for uid, perms in sorted(users.items())]
    entries += [(0x04, group, anyone), (0x10, mask, anyone), (0x20, mode & 7, anyone)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perms, uid) for tag, perms, uid in entries)
    os.setxattr(path, "system.posix_acl_access", value)


def is_access_line(line: str) -> bool:
    return bool(_ACCESS.search(line))


def strip_ansi(s: str) -> str:
    return _ANSI.sub("", s)


def bridge_binary() -> Path:
    path = Path(os.environ.get("FCGIBRIDGE_BIN", REPO / "target" / "debug" / "fcgibridge"))
    if not path.exists():
        pytest.fail(f"fcgibridge binary not found at {path}: run `cargo build --workspace` "
                    "or set FCGIBRIDGE_BIN", pytrace=False)
    return path


def stop_process(proc, sig=signal.SIGTERM, timeout: float = 30.0, group_grace: float = 10.0):
    """Stop a process started with start_new_session=True: `sig`, then SIGKILL after
    `timeout`; then SIGKILL to its whole group (children that outlived it) once they
    had `group_grace` seconds to finish their own shutdown (a spawned bridge drains)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    deadline = time.monotonic() + group_grace
    try:
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(ns_file: str):
    """The calling thread (only it: setns is per thread) in the network namespace of
    `ns_file` (/run/netns/NAME, /proc/PID/ns/net) until the block ends; sockets made
    meanwhile stay there."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as back, open(ns_file) as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns_file}")
        try:
            yield
        finally:
            if libc.setns(back.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


def nginx_conf(workdir: Path, http: str, connections: int = 1024) -> str:
    """A whole nginx.conf for a test: the main context (pid, error log and the temp paths
    under `workdir`; as root, workers run as root, or they could not reach sockets inside
    pytest's private 0700 temporary directory) around `http`, the http block's own lines."""
    temps = "".join(f"    {k}_temp_path {workdir}/{k}_temp;\n"
                    for k in ("client_body", "proxy", "fastcgi", "scgi", "uwsgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/nginx-error.log info;\n"
            f"events {{ worker_connections {connections}; }}\n"
            f"http {{\n    access_log {workdir}/nginx-access.log;\n{temps}{http}\n}}\n")


def start_nginx(workdir: Path, conf: Path, prefix=()) -> subprocess.Popen:
    """The Debian nginx on `conf` in the foreground, its prefix and error log in `workdir`;
    `nginx -t` first, so a bad configuration fails with nginx's own message. `prefix`: a
    command that runs it (e.g. `ip netns exec NAME`)."""
    args = [*prefix, nginx_binary(), "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
    test = subprocess.run(args + ["-t"], capture_output=True, text=True)
    if test.returncode != 0:
        raise AssertionError(f"nginx -t failed:\n{test.stderr}")
    with open(workdir / "nginx-stdout.log", "ab") as out:
        return subprocess.Popen(args + ["-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


class Bridge:
    """`fcgibridge run --config DIR` with its log captured to a file."""

    def __init__(self, workdir: Path, config: dict | None, name: str = "bridge", confdir: Path | None = None):
        """config: written as conf.d/50-test.yaml; or None to run an existing `confdir`."""
        self.workdir = workdir
        self.confdir = confdir or workdir / "conf.d"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.config = config or {"listeners": {}}
        if config is not None:
            (self.confdir / "50-test.yaml").write_text(to_yaml(config))
        self.log = LogFile(workdir / f"{name}.log")
        self.proc: subprocess.Popen | None = None
        self.binary = bridge_binary()
        # A command that runs the daemon and execs it in place (e.g. `ip netns exec NAME`),
        # so that self.pid stays the daemon's.
        self.command_prefix: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, stdin=subprocess.DEVNULL, pass_fds=()):
        """stdin: what the daemon gets as fd 0 (a listening socket for an `fd:0` listener);
        pass_fds: more descriptors it inherits, as from a careless parent."""
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        env["FCGIBRIDGE_TEST_DIR"] = str(self.workdir)
        logf = open(self.log.path, "ab")
        self.proc = subprocess.Popen([*self.command_prefix, str(self.binary), "run", "--config", str(self.confdir)],
                                     stdin=stdin, stdout=logf, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=env, start_new_session=True, pass_fds=pass_fds)
        logf.close()
        return self

    def listener_address(self, name: str):
        spec = self.config["listeners"][name]
        addr = spec.get("fastcgi") or spec.get("scgi")
        if "address" in spec:  # e.g. an fd:0 listener: where its inherited socket listens
            return spec["address"]
        if addr.startswith("unix:"):
            return addr[len("unix:"):]
        host, _, port = addr.rpartition(":")
        return (host, int(port))

    def assert_running(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"fcgibridge exited with status {self.proc.returncode}; log:\n"
                                 + "\n".join(self.log.lines()[-80:]))

    def wait_ready(self, probes, timeout: float = 120.0):
        """Wait until every listener accepts and every probe request answers 200.
        probes: list of (listener name, path, http host)."""
        deadline = time.monotonic() + timeout
        for name in self.config["listeners"]:
            addr = self.listener_address(name)

            def accepting():
                self.assert_running()
                return can_connect(addr)

            wait_until(accepting, max(1.0, deadline - time.monotonic()), what=f"listener {name} at {addr}")
        for listener, path, host in probes:
            addr = self.listener_address(listener)
            scgi = "scgi" in self.config["listeners"][listener]

            def answered():
                self.assert_running()
                if scgi:
                    status, _, _ = fcgi_client.scgi_request(addr, path, headers={"Host": host}, timeout=20)
                else:
                    status = fcgi_client.fcgi_request(addr, path, headers={"Host": host}).status
                return status == 200

            try:
                wait_until(answered, max(1.0, deadline - time.monotonic()), 0.25,
                           what=f"200 for {path} (Host {host}) through {listener}")
            except TimeoutError as e:
                raise AssertionError(f"{e}; bridge log:\n" + "\n".join(self.log.lines()[-80:]))
        return self

    def stop(self, timeout: float = 30.0):
        # Workers that outlived the bridge are in the process group it was started in.
        stop_process(self.proc, timeout=timeout)
        # A panic in one of the daemon's tasks ends only that task: the requests around it
        # may all look right. No test may cause one.
        panics = [ln for ln in self.log.lines() if "panicked at" in ln]
        assert not panics, "the bridge panicked:\n" + "\n".join(panics)

    def fcgi(self, listener: str = "fcgi-tcp", timeout: float = 60.0) -> fcgi_client.FcgiConnection:
        return fcgi_client.FcgiConnection(self.listener_address(listener), timeout=timeout)

    def request(self, path: str, pool: str = "edge", listener: str = "fcgi-tcp", **kw):
        headers = dict(kw.pop("headers", {}) or {})
        headers.setdefault("Host", POOL_HOSTS.get(pool, pool))
        return fcgi_client.fcgi_request(self.listener_address(listener), path, headers=headers, **kw)

    def status_json(self) -> dict:
        """`fcgibridge status --json` (the control socket)."""
        r = subprocess.run([str(self.binary), "status", "--json", "--config", str(self.confdir)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def pool_status(self, pool: str) -> dict:
        """The pool's numbers from `fcgibridge status --json`."""
        return next(p for p in self.status_json()["pools"] if p["name"] == pool)

    def listener_status(self, listener: str) -> dict:
        """The listener's numbers from `fcgibridge status --json`."""
        return next(lst for lst in self.status_json()["listeners"] if lst["name"] == listener)

    def wait_counts_agree(self, pool: str):
        """Once the numbers are in (a direct pool's are read from its workers once a second):
        the pool's requests, responses by class and timed requests are one count."""
        def agree():
            p = self.pool_status(pool)
            timed = p["latency_seconds"]["since_start"]["count"]
            return p["accepted_requests"] == sum(p["responses"].values()) == timed and p
        return wait_until(agree, 30, what=f"requests, responses and durations of pool {pool} agreeing")

    def status_of(self, pid: int, field: str) -> int:
        """A size field of /proc/<pid>/status (e.g. VmHWM), in bytes."""
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)


def pool(app: str, **kw) -> dict:
    d = {"app": app}
    d.update(kw)
    return d


def main_pools(python: str = "python3") -> dict:
    return {
        "flask": pool(str(APPS / "flask_app.py"), python=python, processes=2, threads=4),
        "django": pool("mysite.wsgi:application", python=python, chdir=str(APPS / "djproject"),
                       processes=1, threads=4, env={"DJANGO_SETTINGS_MODULE": "mysite.settings"}),
        "edge": pool(str(APPS / "edge_app.py"), python=python, processes=2, threads=8),
        "validated": pool(str(APPS / "validated_app.py"), python=python, processes=1, threads=2),
        # one process with one thread: slot leaks show up at once
        "single": pool(str(APPS / "edge_app.py"), python=python, processes=1, threads=1),
    }


def host_routes() -> list:
    return [{"host": h, "pool": p} for p, h in POOL_HOSTS.items()] + [{"pool": "flask"}]


def make_bridge(workdir: Path, pools: dict, listeners: dict, bridge_extra=None, name="bridge") -> Bridge:
    config = {
        "bridge": {"log-level": "info", "access-log": "-", "runtime-dir": str(workdir / "run")},
        "pools": pools,
        "listeners": listeners,
    }
    config["bridge"].update(bridge_extra or {})
    for spec in pools.values():
        spec["env"] = dict({"FCGIBRIDGE_TEST_DIR": str(workdir)}, **spec.get("env", {}))
        # CI runs as root, and the bridge refuses root workers unless a pool allows them
        if os.geteuid() == 0 and "user" not in spec:
            spec.setdefault("allow-root", True)
    return Bridge(workdir, config, name=name)


# ------------------------------------------------------------------ nginx

NGINX_HTTP = """
    client_max_body_size 200m;
    fastcgi_read_timeout 300s;
    fastcgi_send_timeout 300s;
    scgi_read_timeout 300s;
    scgi_send_timeout 300s;

    upstream bridge_fcgi_tcp {{
        server {fcgi_tcp};
        keepalive 16;
    }}

    # FastCGI over a unix socket
    server {{
        listen 127.0.0.1:{port_unix};
        server_name _;
        location / {{
            include {etc}/fastcgi_params;
            {fcgi_path}
            fastcgi_pass unix:{fcgi_unix};
        }}
    }}

    # FastCGI over TCP, kept-alive connections to the bridge
    server {{
        listen 127.0.0.1:{port_tcp};
        server_name _;
        location / {{
            include {etc}/fastcgi_params;
            {fcgi_path}
            fastcgi_keep_conn on;
            fastcgi_pass bridge_fcgi_tcp;
        }}
    }}

    # SCGI over TCP
    server {{
        listen 127.0.0.1:{port_scgi};
        server_name _;
        location / {{
            include {etc}/scgi_params;
            {scgi_path}
            scgi_pass {scgi_tcp};
        }}
    }}

    # FastCGI over TCP with unbuffered request bodies (chunked uploads stream through)
    server {{
        listen 127.0.0.1:{port_stream};
        server_name _;
        location / {{
            include {etc}/fastcgi_params;
            {fcgi_path}
            fastcgi_keep_conn on;
            fastcgi_request_buffering off;
            fastcgi_buffering off;
            fastcgi_pass bridge_fcgi_tcp;
        }}
    }}

    # Debian's stock parameter files and nothing else: the whole path in SCRIPT_NAME
    # (FastCGI) or only REQUEST_URI / DOCUMENT_URI (SCGI), no PATH_INFO
    server {{
        listen 127.0.0.1:{port_fcgi_stock};
        server_name _;
        location / {{
            include {etc}/fastcgi_params;
            fastcgi_pass unix:{fcgi_unix};
        }}
    }}
    server {{
        listen 127.0.0.1:{port_scgi_stock};
        server_name _;
        location / {{
            include {etc}/scgi_params;
            scgi_pass {scgi_tcp};
        }}
    }}
"""

# The classic recipe for WSGI apps behind nginx: the app is mounted at /, the path is PATH_INFO.
# (After `include fastcgi_params` this sends SCRIPT_NAME twice; the last value must win.)
FCGI_PATH_RECIPE = 'fastcgi_param SCRIPT_NAME ""; fastcgi_param PATH_INFO $fastcgi_script_name;'
SCGI_PATH_RECIPE = 'scgi_param SCRIPT_NAME ""; scgi_param PATH_INFO $document_uri;'



def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if not found:
        pytest.fail("nginx not found (apt-get install nginx-light)", pytrace=False)
    return found


def nginx_etc() -> Path:
    for cand in (Path("/etc/nginx"), Path("/usr/local/nginx/conf")):
        if (cand / "fastcgi_params").exists() and (cand / "scgi_params").exists():
            return cand
    pytest.fail("nginx's fastcgi_params / scgi_params not found", pytrace=False)


class Nginx:
    TRANSPORTS = ("fcgi-unix", "fcgi-tcp", "scgi", "fcgi-stream")
    STOCK = ("fcgi-stock", "scgi-stock")

    def __init__(self, workdir: Path, bridge: Bridge):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(len(self.TRANSPORTS) + len(self.STOCK))
        self.ports = dict(zip(self.TRANSPORTS + self.STOCK, ports))
        fcgi_tcp = bridge.listener_address("fcgi-tcp")
        scgi_tcp = bridge.listener_address("scgi-tcp")
        conf = nginx_conf(workdir, NGINX_HTTP.format(
            etc=nginx_etc(),
            fcgi_unix=bridge.listener_address("fcgi-unix"),
            fcgi_tcp=f"{fcgi_tcp[0]}:{fcgi_tcp[1]}", scgi_tcp=f"{scgi_tcp[0]}:{scgi_tcp[1]}",
            port_unix=self.ports["fcgi-unix"], port_tcp=self.ports["fcgi-tcp"],
            port_scgi=self.ports["scgi"], port_stream=self.ports["fcgi-stream"],
            port_fcgi_stock=self.ports["fcgi-stock"], port_scgi_stock=self.ports["scgi-stock"],
            fcgi_path=FCGI_PATH_RECIPE, scgi_path=SCGI_PATH_RECIPE), connections=2048)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(conf)
        self.error_log = LogFile(workdir / "nginx-error.log")
        self.proc = None

    UPSTREAM_TROUBLE = ("upstream prematurely closed", "upstream sent", "recv() failed",
                        "connect() failed", "writev() failed", "readv() failed")

    def upstream_trouble(self, since: int) -> list[str]:
        """nginx error-log lines since `since` (a LogFile mark) about a broken upstream exchange."""
        return [ln for ln in self.error_log.lines(since) if any(t in ln for t in self.UPSTREAM_TROUBLE)]

    def url(self, transport: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[transport]}{path}"

    def start(self):
        self.proc = start_nginx(self.workdir, self.conf)
        return self

    def wait_ready(self, timeout: float = 60.0):
        import requests
        for transport in self.TRANSPORTS:
            port = self.ports[transport]

            def ok():
                if self.proc.poll() is not None:
                    raise AssertionError("nginx exited: " + self.error_log.text())
                r = requests.get(self.url(transport, "/health"), headers={"Host": "edge.test"}, timeout=10)
                return r.status_code == 200 and r.text == "ok"
            wait_until(ok, timeout, 0.1, what=f"nginx {transport} on port {port}")
        return self

    def stop(self):
        stop_process(self.proc, timeout=20)


def main_listeners(workdir: Path, ports) -> dict:
    routes = host_routes()
    return {
        "fcgi-unix": {"fastcgi": f"unix:{workdir / 'fcgi.sock'}", "routes": routes},
        "fcgi-tcp": {"fastcgi": f"127.0.0.1:{ports[0]}", "routes": routes},
        "scgi-tcp": {"scgi": f"127.0.0.1:{ports[1]}", "routes": routes},
        "scgi-unix": {"scgi": f"unix:{workdir / 'scgi.sock'}", "routes": routes},
        # prefix routes, as in the configuration reference's example
        "fcgi-prefix": {"fastcgi": f"127.0.0.1:{ports[4]}",
                        "routes": [{"prefix": "/dj", "pool": "django"}, {"prefix": "/edge/", "pool": "edge"},
                                   {"pool": "flask"}]},
        # host routes only: other hosts have no pool
        "fcgi-hostonly": {"fastcgi": f"127.0.0.1:{ports[5]}", "routes": [{"host": "edge.test", "pool": "edge"}]},
        # a small params limit for the bad-input tests
        "fcgi-small": {"fastcgi": f"127.0.0.1:{ports[2]}", "pool": "edge", "max-params": "4KiB"},
        "scgi-small": {"scgi": f"127.0.0.1:{ports[3]}", "pool": "edge", "max-params": "4KiB"},
    }


# The django pool is probed by the Django tests' own fixture, so that a broken Django
# pool fails those tests only.
def main_probes() -> list:
    return [("fcgi-tcp", "/health", POOL_HOSTS["edge"]),
            ("fcgi-tcp", "/health", POOL_HOSTS["flask"]),
            ("fcgi-tcp", "/", POOL_HOSTS["validated"]),
            ("fcgi-tcp", "/health", POOL_HOSTS["single"]),
            ("fcgi-unix", "/health", POOL_HOSTS["edge"]),
            ("scgi-tcp", "/health", POOL_HOSTS["edge"]),
            ("scgi-unix", "/health", POOL_HOSTS["edge"]),
            ("fcgi-small", "/health", "any"),
            ("fcgi-prefix", "/health", "any"),
            ("fcgi-hostonly", "/health", "edge.test"),
            ("scgi-small", "/health", "any")]


def http_get(nginx, transport, path, pool="flask", **kw):
    import requests
    headers = dict(kw.pop("headers", {}) or {})
    headers.setdefault("Host", POOL_HOSTS[pool])
    return requests.get(nginx.url(transport, path), headers=headers, timeout=kw.pop("timeout", 60), **kw)


def read_until_closed(s, timeout=60.0, after="") -> bytes:
    """Everything the bridge sends until it closes the connection (fails the test if it
    keeps it open `timeout` seconds; `after` says after what, for the message)."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    except socket.timeout:
        pytest.fail(f"the bridge kept the connection open {timeout}s{after} (got {data[:200]!r})")


@contextlib.contextmanager
def apache_fcgi_front(workdir: Path, backend: tuple[str, int]):
    """Apache httpd (event MPM, mod_proxy_fcgi) on a free loopback port, passing every path
    to the FastCGI listener at `backend` over kept connections; yields its base URL."""
    binary = shutil.which("apache2") or shutil.which("httpd") or "/usr/sbin/apache2"
    mods = "/usr/lib/apache2/modules"
    if not os.path.exists(binary) or not os.path.exists(f"{mods}/mod_proxy_fcgi.so"):
        pytest.fail("Apache with mod_proxy_fcgi not found (apt-get install apache2)", pytrace=False)
    host, bport = backend
    w = workdir
    (w / "run").mkdir(exist_ok=True)
    (port,) = free_ports(1)
    base = "".join(f"LoadModule {m}_module {mods}/mod_{m}.so\n"
                   for m in ("mpm_event", "authz_core", "proxy", "proxy_fcgi"))
    user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
    (w / "httpd.conf").write_text(
        f'ServerRoot "{w}"\nServerName localhost\n{base}{user}PidFile {w}/httpd.pid\n'
        f"ErrorLog {w}/error.log\nLogLevel warn\nDefaultRuntimeDir {w}/run\nMutex file:{w}/run default\n"
        f"Timeout 120\nListen 127.0.0.1:{port}\n"
        f'ProxyPass "/" "fcgi://{host}:{bport}/" enablereuse=on\n')
    proc = subprocess.Popen([binary, "-X", "-f", str(w / "httpd.conf")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError("apache exited: " + (w / "error.log").read_text())
            return can_connect(("127.0.0.1", port))
        wait_until(up, 60, what="apache")
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def raw_http_get(port: int, path: str, host: str = "any") -> bytes:
    """The bytes a web server on `port` sends for GET `path` until it closes (a reset ends
    them too): what a client sees of a response cut off."""
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        try:
            while chunk := s.recv(65536):
                raw += chunk
        except ConnectionResetError:
            pass
    return raw


def assert_failed_not_short(raw: bytes) -> None:
    """The client must not get a response cut off that looks complete: nothing at all, an
    error status, or a 200 whose chunked body lacks its last chunk."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if raw and head.startswith(b"HTTP/1.1 200"):
        assert b"transfer-encoding: chunked" in head.lower(), head
        assert not body.endswith(b"0\r\n\r\n"), "a cut-off response was ended like a complete one"
    elif raw:
        assert int(head.split()[1]) >= 500, head

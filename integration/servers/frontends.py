"""The front servers of the conformance suite: each one's configuration is built from the
`test-snippet` blocks of docs/servers/<server>.md (so the docs show what is tested), wrapped
in a few lines of process boilerplate, started on loopback ports in a private directory and
stopped again.

A server may offer several *variants* (nginx: fastcgi and scgi), each on its own port.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DOCS = REPO / "docs" / "servers"
sys.path.insert(0, str(HERE.parent))

from harness import free_ports, bridge_binary, make_bridge, nginx_conf, pool, stop_process  # noqa: E402

APP = HERE / "conformance_app.py"
STARTUP = 90.0


def snippet(doc: str, name: str) -> str:
    """The fenced block after `<!-- test-snippet: name -->` in docs/servers/<doc> (`doc` may
    be `../authorizer.md`). A block indented in a list item comes back without its indent."""
    path = (DOCS / doc).resolve()
    m = re.search(r"<!-- test-snippet: " + re.escape(name) + r" -->\s*?\n([ \t]*)```[^\n]*\n(.*?)\n\1```",
                  path.read_text(), re.S)
    if not m:
        raise AssertionError(f"{path.relative_to(REPO)}: no test-snippet {name!r}: put "
                             f"`<!-- test-snippet: {name} -->` on the line before its fenced block")
    indent = m.group(1)
    lines = m.group(2).split("\n")
    if indent:
        lines = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines]
    return "\n".join(lines) + "\n"


def substitute(text: str, subst: dict) -> str:
    """Replace the documented placeholders: longest first, numbers only as whole words."""
    for key in sorted(subst, key=len, reverse=True):
        value = str(subst[key])
        if key.isdigit():
            text = re.sub(r"(?<![\d.])" + key + r"(?!\d)", value, text)
        else:
            text = text.replace(key, value)
    return text


def find_binary(*names) -> str | None:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
        for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            if os.access(os.path.join(d, n), os.X_OK):
                return os.path.join(d, n)
    return None


def system_python() -> str:
    """An interpreter an unprivileged user can run (spawned bridges run as nobody)."""
    for p in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(p, os.X_OK):
            return p
    return sys.executable


def make_www() -> Path:
    """The document root every server shares: files for the hand-off and authorizer tests."""
    www = private_dir("www")
    (www / "files").mkdir()
    (www / "files" / "hello.txt").write_text("hello from a file\n")
    (www / "private").mkdir()
    (www / "private" / "secret.txt").write_text("the secret file\n")
    (www / "static").mkdir()
    (www / "static" / "s.css").write_text("body { color: teal }\n")
    for p in [www, *www.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return www


def private_dir(prefix: str) -> Path:
    """A temporary directory that an unprivileged server user can traverse and read."""
    d = Path(tempfile.mkdtemp(prefix=f"fcgibridge-{prefix}-"))
    d.chmod(0o755)
    return d


def poll(check, timeout: float, what: str, proc=None, log=None, interval: float = 0.1):
    """Poll check() until truthy; fail at once when `proc` has exited."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with status {proc.returncode} while waiting for {what}; log:\n"
                                 + (log() if log else ""))
        try:
            if check():
                return
            last = None
        except Exception as e:  # noqa: BLE001 - polled until the deadline
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r}); log:\n"
                                 + (log() if log else ""))
        time.sleep(interval)


def http_ready(port: int, path: str = "/health", timeout: float = STARTUP, proc=None, log=None):
    import requests
    poll(lambda: requests.get(f"http://127.0.0.1:{port}{path}", timeout=20).status_code == 200,
         timeout, f"200 for {path} on port {port}", proc, log, 0.2)


def tcp_ready(port: int, timeout: float = STARTUP, proc=None, log=None):
    def ok():
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", port)) == 0
    poll(ok, timeout, f"port {port}", proc, log)


# ------------------------------------------------------------------ spawned bridges

def write_spawned_config(workdir: Path, name: str, files_dir: Path) -> Path:
    """The conf.d and wrapper of a bridge that a web server starts (docs/servers/spawned.md)."""
    confdir = workdir / f"{name}.d"
    confdir.mkdir()
    conf = substitute(snippet("spawned.md", "conf"), {
        "/srv/app/wsgi.py": str(APP), "/usr/bin/python3": system_python(),
        "/srv/app/media": str(files_dir),
    })
    # The workers keep the account the web server starts the bridge as: the tests' servers
    # run as nobody (Apache, h2o) or as root (lighttpd), not as www-data, and the files
    # under pytest's private temporary directory are readable by them only.
    conf = re.sub(r"\n    user: www-data[^\n]*\n", "\n", conf, count=1)
    # the pool's environment: where /x-sendfile points
    extra = f"    env:\n      CONFORMANCE_FILES_DIR: \"{files_dir}\"\n"
    if os.geteuid() == 0:
        # lighttpd started as root starts the bridge as root (Apache and h2o use nobody)
        extra += "    allow-root: true\n"
    conf = conf.replace("    threads: 4\n", "    threads: 4\n" + extra, 1)
    (confdir / "app.yaml").write_text("bridge:\n  log-level: info\n  access-log: \"-\"\n" + conf)
    wrapper = workdir / f"{name}-wrapper"
    log = workdir / f"{name}.log"
    body = substitute(snippet("spawned.md", "wrapper"), {
        "/usr/local/bin/fcgibridge": str(bridge_binary()),
        "/etc/fcgibridge/spawned.d": str(confdir),
    })
    # the documented exec line, with its log sent to a file the tests read
    body = body.replace(f"--config {confdir}", f"--config {confdir} >>{log} 2>&1")
    wrapper.write_text(body)
    wrapper.chmod(0o755)
    log.touch()
    log.chmod(0o666)
    return wrapper


# ------------------------------------------------------------------ servers

class Server:
    """One web-server process serving one or more variants."""
    name = ""
    binaries: tuple = ()
    variants: dict = {}          # variant name -> port key
    spawned_variants: tuple = ()  # variants whose bridge the server starts
    # The shared bridge's listeners behind the server's documented ports, `9000` (FastCGI)
    # and `9001` (SCGI): those of the `listener` test-snippet of the server's page, by name
    # (listener_config()), else the shared `fastcgi` and `scgi` listeners, which pass
    # hand-off headers on untouched.
    own_listeners: dict = {}

    def listener(self, doc_port: str) -> str:
        return self.own_listeners.get(doc_port) or SHARED_LISTENERS[doc_port]

    def __init__(self, bridge_ports: dict, www: Path):
        self.bridge_ports = bridge_ports
        self.www = www
        self.workdir = private_dir(self.name)
        # servers that switch to an unprivileged user early write their pid file here
        self.workdir.chmod(0o1777)
        self.ports = dict(zip(("8080", "8081", "8082"), free_ports(3)))
        self.proc = None
        self.binary = find_binary(*self.binaries)

    def port(self, variant: str) -> int:
        return self.ports[self.variants[variant]]

    def bridge_port(self, variant: str) -> int:
        """The shared bridge's port that `variant` connects to."""
        return self.bridge_ports[self.listener("9001" if "scgi" in variant else "9000")]

    def subst(self) -> dict:
        s = {p: self.bridge_ports[self.listener(p)] for p in SHARED_LISTENERS}
        s["/srv/www"] = str(self.www)
        s.update(self.ports)
        return s

    def spawned_wrapper(self) -> Path:
        return write_spawned_config(self.workdir, "spawned", self.www / "files")

    def spawned_log(self) -> Path:
        return self.workdir / "spawned.log"

    def log_text(self) -> str:
        out = []
        for f in sorted(self.workdir.glob("*.log")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-6000:])
        return "\n".join(out)

    def command(self) -> list:
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ)

    def start(self):
        if not self.binary:
            raise RuntimeError(f"{self.name} is not installed")
        argv = self.command()
        out = open(self.workdir / "stdout.log", "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=self.env(), start_new_session=True)
        out.close()
        for variant, key in self.variants.items():
            if variant in self.spawned_variants:
                # the spawned bridge needs its workers first: wait for a real answer
                http_ready(self.ports[key], proc=self.proc, log=self.log_text)
            else:
                tcp_ready(self.ports[key], proc=self.proc, log=self.log_text)
        return self

    def stop_signal(self):
        return signal.SIGTERM

    def stop(self, timeout: float = 30.0):
        stop_process(self.proc, self.stop_signal(), timeout)

    def pids(self) -> set:
        """The server's process and its descendants."""
        if self.proc is None:
            return set()
        return descendants(self.proc.pid)

    def cleanup(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


class Nginx(Server):
    name = "nginx"
    binaries = ("nginx",)
    variants = {"nginx-fastcgi": "8080", "nginx-scgi": "8081"}

    def nginx_conf_dir(self) -> str:
        out = subprocess.run([self.binary, "-V"], capture_output=True, text=True).stderr
        for word in out.split():
            if word.startswith("--conf-path="):
                return os.path.dirname(word.split("=", 1)[1])
        return "/etc/nginx"

    def command(self):
        w = self.workdir
        for f in ("fastcgi_params", "scgi_params"):
            shutil.copy(os.path.join(self.nginx_conf_dir(), f), w)
        http = substitute(snippet("nginx.md", "http"), self.subst())
        (w / "nginx.conf").write_text(nginx_conf(w, http + self.extra_http()))
        return [self.binary, "-p", str(w), "-c", str(w / "nginx.conf"), "-g", "daemon off;"]

    def extra_http(self) -> str:
        return ""


class Lighttpd(Server):
    name = "lighttpd"
    binaries = ("lighttpd",)
    variants = {"lighttpd-fastcgi": "8080", "lighttpd-scgi": "8081", "lighttpd-spawned": "8082"}
    spawned_variants = ("lighttpd-spawned",)
    own_listeners = {"9000": "lighttpd", "9001": "lighttpd-scgi"}  # file-handoff: translate

    def command(self):
        w = self.workdir
        wrapper = self.spawned_wrapper()
        s = self.subst()
        s.update({"/run/lighttpd": str(w), "/usr/local/bin/fcgibridge-spawned": str(wrapper)})
        return self.lighttpd(substitute(snippet("lighttpd.md", "conf"), s))

    def lighttpd(self, conf: str) -> list:
        """Write lighttpd.conf, `conf` after the process boilerplate, listening on the ports
        of the variants; the command line that runs it."""
        w = self.workdir
        others = "".join(f'$SERVER["socket"] == "127.0.0.1:{self.ports[key]}" {{ }}\n'
                         for key in sorted(set(self.variants.values()) - {"8080"}))
        # the page leaves server.document-root to lighttpd.conf (Debian's sets one)
        (w / "lighttpd.conf").write_text(
            f'server.bind = "127.0.0.1"\nserver.port = {self.ports["8080"]}\n'
            f'server.document-root = "{self.www}"\n'
            f'server.errorlog = "{w}/error.log"\nserver.pid-file = "{w}/lighttpd.pid"\n' + others + conf)
        return [self.binary, "-D", "-f", str(w / "lighttpd.conf")]

    def stop_signal(self):
        return signal.SIGINT  # lighttpd's graceful stop; its bin-path children get SIGTERM


class Apache(Server):
    name = "apache"
    binaries = ("apache2", "httpd")
    variants = {"apache-proxy-fcgi": "8080", "apache-proxy-scgi": "8081", "apache-fcgid": "8082"}
    spawned_variants = ("apache-fcgid",)
    # mod_proxy_fcgi's in serve mode; mod_proxy_scgi's passes X-Sendfile on (Apache follows it)
    own_listeners = {"9000": "apache-fcgi", "9001": "apache-scgi"}

    def modules_dir(self) -> str:
        for d in ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules"):
            if os.path.exists(os.path.join(d, "mod_proxy_fcgi.so")):
                return d
        raise RuntimeError("Apache modules directory not found")

    def command(self):
        wrapper = self.spawned_wrapper()
        s = self.subst()
        s.update({"/usr/lib/apache2/modules": self.modules_dir(), "/run/apache2": str(self.workdir / "run"),
                  "/usr/local/bin/fcgibridge-spawned": str(wrapper)})
        return self.httpd(substitute(snippet("apache.md", "conf"), s))

    def httpd(self, conf: str) -> list:
        """Write httpd.conf, `conf` after the process boilerplate and the modules the page
        leaves to Debian's stock configuration; the command line that runs it."""
        w = self.workdir
        mods = self.modules_dir()
        (w / "run").mkdir()
        (w / "run").chmod(0o777)
        base = "".join(f"LoadModule {m}_module {mods}/mod_{m}.so\n" for m in (
            "mpm_event", "authz_core", "authz_user", "authn_core", "auth_basic", "mime", "alias")
            if os.path.exists(f"{mods}/mod_{m}.so"))
        user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
        (w / "httpd.conf").write_text(
            f'ServerRoot "{w}"\nServerName localhost\n{base}{user}PidFile {w}/httpd.pid\n'
            f"ErrorLog {w}/error.log\nLogLevel warn\nDefaultRuntimeDir {w}/run\nMutex file:{w}/run default\n"
            f"TypesConfig /dev/null\nTimeout 120\n" + conf)
        return [self.binary, "-X", "-f", str(w / "httpd.conf")]

    def stop_signal(self):
        return signal.SIGTERM


class Caddy(Server):
    name = "caddy"
    binaries = ("caddy",)
    variants = {"caddy": "8080"}
    own_listeners = {"9000": "caddy"}

    def command(self):
        w = self.workdir
        conf = substitute(snippet("caddy.md", "caddyfile"), self.subst())
        (w / "Caddyfile").write_text("{\n    admin off\n    auto_https off\n}\n" + conf)
        return [self.binary, "run", "--config", str(w / "Caddyfile"), "--adapter", "caddyfile"]

    def env(self):
        e = dict(os.environ)
        e["HOME"] = str(self.workdir)
        e["XDG_DATA_HOME"] = str(self.workdir / "data")
        e["XDG_CONFIG_HOME"] = str(self.workdir / "config")
        return e


class H2o(Server):
    name = "h2o"
    binaries = ("h2o",)
    variants = {"h2o": "8080", "h2o-spawned": "8081"}
    spawned_variants = ("h2o-spawned",)
    own_listeners = {"9000": "h2o"}

    def command(self):
        w = self.workdir
        wrapper = self.spawned_wrapper()
        s = self.subst()
        s["/usr/local/bin/fcgibridge-spawned"] = str(wrapper)
        conf = substitute(snippet("h2o.md", "conf"), s)
        user = "user: nobody\n" if os.geteuid() == 0 else ""
        (w / "h2o.conf").write_text(f"{user}error-log: {w}/error.log\npid-file: {w}/h2o.pid\n" + conf)
        return [self.binary, "-c", str(w / "h2o.conf")]


class Haproxy(Server):
    name = "haproxy"
    binaries = ("haproxy",)
    variants = {"haproxy": "8080"}
    own_listeners = {"9000": "haproxy"}

    def command(self):
        w = self.workdir
        conf = substitute(snippet("haproxy.md", "cfg"), self.subst())
        (w / "haproxy.cfg").write_text(
            "global\n    tune.bufsize 65536\n    maxconn 2000\n"
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n"
            "    timeout server 120s\n    option http-keep-alive\n\n" + conf)
        return [self.binary, "-db", "-f", str(w / "haproxy.cfg")]

    def stop_signal(self):
        return signal.SIGUSR1  # soft stop: finish what is in flight


SERVERS = [Nginx, Lighttpd, Apache, Caddy, H2o, Haproxy]
VARIANTS = {v: cls for cls in SERVERS for v in cls.variants}
# documented port -> the shared bridge's listener for servers whose page has none
SHARED_LISTENERS = {"9000": "fastcgi", "9001": "scgi"}
# the pages whose `listener` test-snippet the shared bridge loads: page -> {documented port: listener}
PAGE_LISTENERS = {f"{cls.name}.md": cls.own_listeners for cls in SERVERS if cls.own_listeners}


def listener_config(page: str, ports: dict, pool: str, www: Path) -> str:
    """A conf.d file with the `listener` test-snippet of docs/servers/<page>: the page's
    pool `app` becomes `pool`, each documented port (9000, 9001) the port `ports` gives its
    listener, its /srv/www `www`."""
    listeners = PAGE_LISTENERS[page]
    subst = {doc_port: ports[name] for doc_port, name in listeners.items()}
    subst.update({"/srv/www": str(www), "pool: app": f"pool: {pool}"})
    text = substitute(snippet(page, "listener"), subst)
    for name in listeners.values():
        assert f"\n  {name}:\n" in text, f"the listener snippet must define listener {name!r}:\n{text}"
    return text


@contextlib.contextmanager
def running(bridge):
    """`bridge` started and answering on every listener, stopped after."""
    try:
        bridge.start()
        bridge.wait_ready([(n, "/health", "x") for n in bridge.config["listeners"]])
        yield bridge
    finally:
        bridge.stop()


def shared_bridge(workdir: Path, www: Path, app: Path, pool_name: str, env: dict | None = None):
    """The bridge the connect-mode servers use (not started): `app` in pool `pool_name`,
    2 x 8 threads. `fastcgi` and `scgi` pass hand-off headers on (for nginx and
    mod_proxy_scgi, which follow them); the servers whose page shows a listener of their own
    (lighttpd's in `translate` mode, the others' in `serve` mode) get it, from the page's
    `listener` test-snippet. `.ports` maps each listener's name to its port."""
    own = [(page, doc_port, name) for page, ls in PAGE_LISTENERS.items() for doc_port, name in ls.items()]
    fport, sport, *own_ports = free_ports(2 + len(own))
    pools = {pool_name: pool(str(app), processes=2, threads=8, env=dict(env or {}))}
    listeners = {"fastcgi": {"fastcgi": f"127.0.0.1:{fport}", "pool": pool_name},
                 "scgi": {"scgi": f"127.0.0.1:{sport}", "pool": pool_name}}
    b = make_bridge(workdir, pools, listeners)
    b.ports = {"fastcgi": fport, "scgi": sport}
    for (_, doc_port, name), port in zip(own, own_ports):
        protocol = "scgi" if SHARED_LISTENERS[doc_port] == "scgi" else "fastcgi"
        b.config["listeners"][name] = {protocol: f"127.0.0.1:{port}"}  # for wait_ready
        b.ports[name] = port
    for i, page in enumerate(PAGE_LISTENERS):
        (b.confdir / f"60-{i}-{page[:-3]}.yaml").write_text(listener_config(page, b.ports, pool_name, www))
    return b


# ------------------------------------------------------------------ connections

def descendants(pid: int) -> set:
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, []))
    return out


def socket_inodes(pids) -> set:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:
            continue
    return inodes


def connections_to(port: int, pids) -> int:
    """Established TCP connections that `pids` hold to 127.0.0.1:`port`."""
    inodes = socket_inodes(pids)
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            remote_port = int(f[2].rsplit(":", 1)[1], 16)
            if remote_port == port and f[3] == "01" and int(f[9]) in inodes:
                n += 1
    return n

"""fcgibridge as a drop-in for flup (docs/migration.md, "From a flup script").

* Differential: one environ-dumping flup script (apps/flup_scripts/environ_dump.fcgi) served
  by stock flup 1.0.3 (standalone, as spawn-fcgi or an init script would run it) and,
  unmodified, by fcgibridge (`app: environ_dump.fcgi`), behind the same web server and the
  same location; the web server picks the backend by User-Agent, so everything else about
  the two requests is the same. The environs must be equal key by key, except for the
  deliberate differences of DIFFERENCES, which docs/migration.md lists.
* Classic scripts: scripts in the style of old Django, Trac, MoinMoin, web.py, flup6,
  flup-py3, flipflop and the PHP_FCGI_CHILDREN pattern, unmodified, on the native worker
  behind nginx.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import fcgi_client
import harness
from harness import APPS, REPO, can_connect, free_ports, make_bridge, stop_process, wait_until

pytestmark = pytest.mark.skipif(importlib.util.find_spec("flup") is None,
                                reason="flup is not installed (pip install flup)")

SCRIPTS = APPS / "flup_scripts"
DUMP = SCRIPTS / "environ_dump.fcgi"

# The deliberate differences from flup, as docs/migration.md states them. Keys here are
# the environ keys; test_the_differences_are_documented checks the page names each.
DIFFERENCES = {
    "CONTENT_LENGTH": "an empty CONTENT_LENGTH (nginx, no body) is left out, not ''",
    "HTTP_CONTENT_TYPE": "only CONTENT_TYPE, as CGI and PEP 3333 have it",
    "HTTP_CONTENT_LENGTH": "only CONTENT_LENGTH, as CGI and PEP 3333 have it",
    "SCRIPT_NAME": "without a PATH_INFO from the web server: '' (flup: the web server's SCRIPT_NAME)",
    "PATH_INFO": "without a PATH_INFO from the web server: the decoded path (flup: a part of REQUEST_URI)",
    "FCGIBRIDGE_REQUEST_ID": "added: the bridge's request id (also fcgibridge.request_id)",
    "wsgi.input_terminated": "added: wsgi.input ends at the end of the body",
}
# Not differences: what differs between the two requests themselves.
MECHANICS = ("HTTP_USER_AGENT", "REMOTE_PORT")
BRIDGE_ONLY = ("FCGIBRIDGE_REQUEST_ID", "fcgibridge.request_id", "wsgi.input_terminated")


def expected_from_flup(flup_env: dict, server_sent_path_info: bool) -> dict:
    """What fcgibridge must give where flup gave `flup_env`: flup's environ with exactly
    the documented differences applied."""
    want = dict(flup_env)
    if want.get("CONTENT_LENGTH") == "":
        del want["CONTENT_LENGTH"]
    want.pop("HTTP_CONTENT_TYPE", None)
    want.pop("HTTP_CONTENT_LENGTH", None)
    if not server_sent_path_info:
        # flup derives PATH_INFO from REQUEST_URI minus the web server's SCRIPT_NAME; the
        # bridge mounts the app at "" and gives it the path the web server serves.
        want["SCRIPT_NAME"] = ""
        want["PATH_INFO"] = flup_env.get("DOCUMENT_URI") or flup_env["SCRIPT_NAME"]
    return want


def key_diff(want: dict, got: dict, mechanics=()) -> list[str]:
    out = []
    for key in sorted(set(want) | set(got)):
        if key in MECHANICS or key in mechanics:
            continue
        if want.get(key, "<absent>") != got.get(key, "<absent>"):
            out.append(f"{key}: flup-derived {want.get(key, '<absent>')!r} != fcgibridge {got.get(key, '<absent>')!r}")
    return out


def compare(get, path: str, server_sent_path_info: bool = True, mechanics=(), **kw) -> tuple[dict, dict]:
    """The same request through the web server to flup and to the bridge; asserts the key by
    key comparison and returns both environs."""
    flup = get(path, "flup", **kw)
    ours = get(path, "fcgibridge", **kw)
    for key in BRIDGE_ONLY:
        assert key in ours, f"{key} missing from the bridge's environ"
        ours.pop(key)
    diff = key_diff(expected_from_flup(flup, server_sent_path_info), ours, mechanics)
    assert not diff, f"{path}: environ differs from flup's beyond the documented differences:\n" + "\n".join(diff)
    return flup, ours


# ------------------------------------------------------------------ processes

def wait_tcp(port: int, proc, what: str):
    def up():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_until(up, 60, what=what)


@pytest.fixture(scope="module")
def flup_ref(tmp_path_factory):
    """Stock flup serving environ_dump.fcgi on its own port."""
    work = tmp_path_factory.mktemp("flup-ref")
    (port,) = free_ports(1)
    with open(work / "flup.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, str(DUMP)], env=dict(os.environ, FLUP_BIND=f"127.0.0.1:{port}"),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=work, start_new_session=True)
    try:
        wait_tcp(port, proc, "stock flup")
        yield port
    finally:
        stop_process(proc, timeout=10)


CLASSIC = {
    # pool: (app, request path, what the body must contain)
    "django": (SCRIPTS / "django_runfcgi.fcgi", "/health/", "ok"),
    "trac": (SCRIPTS / "trac_style.fcgi", "/ticket/a%20b", "tracker at /srv/tracker: /ticket/a b"),
    "moin": (SCRIPTS / "moin_style.fcgi", "/RecentChanges", "FlupWiki: page RecentChanges"),
    "webpy": (f"{SCRIPTS / 'webpy_code.py'}:__main__", "/world", "web.py says hello to world"),
    "flup6": (SCRIPTS / "flup6_style.fcgi", "/six", "flup6-style: GET /six"),
    "flup-py3": (SCRIPTS / "flup_py3_style.fcgi", "/py3/three", "flup-py3-style: /py3 | /three | production"),
    "flipflop": (SCRIPTS / "flipflop_style.fcgi", "/flip", "flipflop-style: /flip"),
    "php-children": (SCRIPTS / "php_children.fcgi", "/chosen", "chosen from the environment: /chosen"),
    # preload: true — the template imports the script (run() unwinds it there), workers fork
    "trac-preload": (SCRIPTS / "trac_style.fcgi", "/ticket/1", "tracker at /srv/tracker: /ticket/1"),
}


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, flup_ref):
    work = tmp_path_factory.mktemp("flup-bridge")
    ports = free_ports(3)
    # FLUP_BIND names the port stock flup already listens on: a script that bound it
    # would fail to start.
    dump_env = {"FLUP_BIND": f"127.0.0.1:{flup_ref}"}
    pools = {
        "dump": {"app": str(DUMP), "processes": 1, "threads": 2, "env": dict(dump_env, DUMP_POOL="dump")},
        "decoy": {"app": str(DUMP), "processes": 1, "threads": 1, "env": dict(dump_env, DUMP_POOL="decoy")},
    }
    for name, (app, _, _) in CLASSIC.items():
        if name == "webpy" and importlib.util.find_spec("web") is None:
            continue
        pools[name] = {"app": str(app), "processes": 1, "threads": 2}
    pools["trac-preload"]["preload"] = True
    # django_runfcgi.fcgi's shebang names /usr/bin/python3, as old Django's did: without
    # `python:` that is the pool's Python, and it need not have Django; the suite's has.
    pools["django"]["python"] = sys.executable
    listeners = {
        "diff": {"fastcgi": f"127.0.0.1:{ports[0]}", "pool": "dump"},
        "routed": {"fastcgi": f"127.0.0.1:{ports[1]}",
                   "routes": [{"prefix": "/new", "pool": "dump"}, {"prefix": "/old", "pool": "decoy"}, {"pool": "decoy"}]},
        "classic": {"fastcgi": f"127.0.0.1:{ports[2]}",
                    "routes": [{"host": f"{name}.test", "pool": name} for name in pools if name in CLASSIC]},
    }
    b = make_bridge(work, pools, listeners)
    b.start()
    try:
        probes = [("diff", "/ready", "any"), ("routed", "/new/ready", "any")]
        probes += [("classic", CLASSIC[name][1], f"{name}.test") for name in pools if name in CLASSIC]
        b.wait_ready(probes)
        yield b
    finally:
        b.stop()


def addr(bridge, listener):
    host, port = bridge.listener_address(listener)
    return f"{host}:{port}"


NGINX_HTTP = """
    upstream flup {{ server 127.0.0.1:{flup}; }}
    upstream fcgibridge {{ server {diff}; }}
    map $http_user_agent $backend {{ flup flup; default fcgibridge; }}

    server {{
        listen 127.0.0.1:{port};
        server_name _;
        # the classic flup recipe: a prefix, SCRIPT_NAME "", the path in PATH_INFO
        location /plain/ {{
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $fastcgi_script_name;
            fastcgi_pass $backend;
        }}
        # a script name split off by nginx
        location ~ ^/split\\.fcgi(/|$) {{
            fastcgi_split_path_info ^(/split\\.fcgi)(/.*)$;
            include {etc}/fastcgi_params;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_pass $backend;
        }}
        # rewritten before it is passed on
        location /old/ {{
            rewrite ^/old/(.*)$ /new/$1 break;
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $fastcgi_script_name;
            fastcgi_pass $backend;
        }}
        # Debian's fastcgi_params and nothing else
        location /bare/ {{
            include {etc}/fastcgi_params;
            fastcgi_pass $backend;
        }}
        location /bare-rewritten/ {{
            rewrite ^/bare-rewritten/(.*)$ /bare/$1 break;
            include {etc}/fastcgi_params;
            fastcgi_pass $backend;
        }}
        # TLS terminated in front of nginx
        location /tls/ {{
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $fastcgi_script_name;
            fastcgi_param HTTPS on;
            fastcgi_pass $backend;
        }}
        # a listener with several pools: the rewritten path picks the pool
        location /routed-old/ {{
            rewrite ^/routed-old/(.*)$ /new/$1 break;
            include {etc}/fastcgi_params;
            fastcgi_pass {routed};
        }}
    }}
    # the classic scripts, by Host
    server {{
        listen 127.0.0.1:{classic_port};
        server_name _;
        location / {{
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $fastcgi_script_name;
            fastcgi_param HTTP_HOST $http_host;
            fastcgi_pass {classic};
        }}
    }}
"""


@pytest.fixture(scope="module")
def nginx(bridge, flup_ref, tmp_path_factory):
    work = tmp_path_factory.mktemp("flup-nginx")
    port, classic_port = free_ports(2)
    conf = work / "nginx.conf"
    conf.write_text(harness.nginx_conf(work, NGINX_HTTP.format(
        etc=harness.nginx_etc(), flup=flup_ref, diff=addr(bridge, "diff"), routed=addr(bridge, "routed"),
        classic=addr(bridge, "classic"), port=port, classic_port=classic_port), connections=256))
    proc = harness.start_nginx(work, conf)
    try:
        wait_tcp(port, proc, "nginx")
        yield port, classic_port
    finally:
        stop_process(proc, timeout=20)


def getter(port: int):
    def get(path, agent, method="GET", **kw):
        r = requests.request(method, f"http://127.0.0.1:{port}{path}", headers={"User-Agent": agent},
                             timeout=60, **kw)
        assert r.status_code == 200, (agent, path, r.status_code, r.text[:300])
        assert r.headers["X-Pool"] == ("flup" if agent == "flup" else "dump"), r.headers
        return r.json()
    return get


# ------------------------------------------------------------------ nginx, differential

@pytest.mark.parametrize("path", ["/plain/x/y?q=1&r=%20s", "/plain/a%20b/c%2Fd", "/plain/"])
def test_nginx_plain_prefix(nginx, path):
    flup, ours = compare(getter(nginx[0]), path)
    assert ours["SCRIPT_NAME"] == "" and ours["PATH_INFO"].startswith("/plain/")
    assert "CONTENT_LENGTH" not in ours and flup["CONTENT_LENGTH"] == ""


def test_nginx_plain_prefix_post(nginx):
    flup, ours = compare(getter(nginx[0]), "/plain/form", method="POST", data={"a": "1", "b": "x y"})
    assert ours["x-body"] == flup["x-body"] == "a=1&b=x+y"
    assert ours["CONTENT_TYPE"] == "application/x-www-form-urlencoded" and ours["CONTENT_LENGTH"] == "9"
    assert flup["HTTP_CONTENT_LENGTH"] == "9" and "HTTP_CONTENT_LENGTH" not in ours


@pytest.mark.parametrize("path", ["/split.fcgi/x/y?q=1", "/split.fcgi/a%20b"])
def test_nginx_split_path_info(nginx, path):
    _, ours = compare(getter(nginx[0]), path)
    assert ours["SCRIPT_NAME"] == "/split.fcgi"


def test_nginx_rewrite_break(nginx):
    _, ours = compare(getter(nginx[0]), "/old/x%20y?q=1")
    assert ours["PATH_INFO"] == "/new/x y" and ours["REQUEST_URI"] == "/old/x%20y?q=1"


@pytest.mark.parametrize("path,info", [("/bare/x/y?q=1", "/bare/x/y"), ("/bare/a%20b", "/bare/a b"),
                                       ("/bare/./c/../d", "/bare/d"), ("/bare-rewritten/z", "/bare/z")])
def test_nginx_bare_debian_params(nginx, path, info):
    """Without PATH_INFO flup splits REQUEST_URI at the length of SCRIPT_NAME, which is
    wrong for encoded, dot-segment and rewritten paths; the bridge gives the path."""
    flup, ours = compare(getter(nginx[0]), path, server_sent_path_info=False)
    assert (ours["SCRIPT_NAME"], ours["PATH_INFO"]) == ("", info)
    assert flup["SCRIPT_NAME"] == info


def test_nginx_https_on(nginx):
    flup, ours = compare(getter(nginx[0]), "/tls/x?q=1")
    assert ours["wsgi.url_scheme"] == flup["wsgi.url_scheme"] == "https"
    assert ours["HTTPS"] == "on"


def test_nginx_rewrite_picks_the_pool(nginx):
    """A listener with several pools routes on the path nginx serves after `rewrite … break`
    (DOCUMENT_URI), not on the client's REQUEST_URI; the pool's prefix is the mount point."""
    r = requests.get(f"http://127.0.0.1:{nginx[0]}/routed-old/a%20b?q=1", timeout=60)
    assert r.status_code == 200 and r.headers["X-Pool"] == "dump", (r.headers, r.text[:200])
    env = r.json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["REQUEST_URI"]) == ("/new", "/a b", "/routed-old/a%20b?q=1")


def test_bind_address_is_ignored_and_logged(bridge, nginx):
    """The dump pool's FLUP_BIND names stock flup's own port: nothing was bound, and the
    worker said so."""
    bridge.log.wait_for([r"flup argument bindAddress=\('127\.0\.0\.1', \d+\) ignored", r"fastcgi: 127\.0\.0\.1:\d+"])
    bridge.log.wait_for([r"environ_dump\.fcgi: flup's WSGIServer\(\.\.\.\)\.run\(\) handed its app to the worker"])


# ------------------------------------------------------------------ lighttpd, Apache

LIGHTTPD_CONF = """
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = "{www}"
server.errorlog = "{tmp}/error.log"
server.pid-file = "{tmp}/lighttpd.pid"
server.modules += ("mod_rewrite", "mod_fastcgi")
url.rewrite-once = ("^/lold/(.*)$" => "/lp/$1", "^/lroute/(.*)$" => "/new/$1")
$HTTP["useragent"] == "flup" {{
{flup}
}}
$HTTP["useragent"] != "flup" {{
{bridge}
}}
# the listener with several pools, after url.rewrite
$HTTP["url"] =~ "^/new/" {{
    fastcgi.server = ("/new" => (("host" => "127.0.0.1", "port" => {routed}, "check-local" => "disable")))
}}
"""
LIGHTTPD_SERVERS = """    fastcgi.server = (
        "/app.fcgi" => (("host" => "127.0.0.1", "port" => {port}, "check-local" => "enable")),
        "/lp" => (("host" => "127.0.0.1", "port" => {port}, "check-local" => "disable")),
        ".pyfcgi" => (("host" => "127.0.0.1", "port" => {port}, "check-local" => "disable")),
        "/" => (("host" => "127.0.0.1", "port" => {port}, "check-local" => "disable", "fix-root-scriptname" => "enable")),
    )"""

APACHE_CONF = """
ServerRoot "{tmp}"
ServerName localhost
{modules}
{user}
PidFile {tmp}/httpd.pid
ErrorLog {tmp}/error.log
LogLevel warn
DefaultRuntimeDir {tmp}/run
Mutex file:{tmp}/run default
Listen 127.0.0.1:{port}
RewriteEngine on
# as ProxyPass passes a prefix (mod_rewrite's [P] can pick the backend per request)
RewriteCond %{{HTTP_USER_AGENT}} =flup
RewriteRule ^/pp/(.*)$ fcgi://127.0.0.1:{flup}/pp/$1 [P]
RewriteRule ^/pp/(.*)$ fcgi://127.0.0.1:{bridge}/pp/$1 [P]
# rewritten, then handled by the location below
RewriteRule ^/aold/(.*)$ /ah/$1 [PT]
# a handler on a location: SCRIPT_NAME is the location, PATH_INFO the rest
# the listener with several pools, after mod_rewrite
RewriteRule ^/aroute/(.*)$ /new/$1 [PT]
<Location /new>
    SetHandler "proxy:fcgi://127.0.0.1:{routed}"
</Location>
<Location /ah>
    <If "%{{HTTP_USER_AGENT}} == 'flup'">
        SetHandler "proxy:fcgi://127.0.0.1:{flup}"
    </If>
    <Else>
        SetHandler "proxy:fcgi://127.0.0.1:{bridge}"
    </Else>
</Location>
"""


def apache_modules_dir():
    for d in ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules"):
        if os.path.exists(os.path.join(d, "mod_proxy_fcgi.so")):
            return d
    return None


def start_front(name: str, work: Path, flup_port: int, bridge_port: int, routed_port: int):
    """lighttpd or Apache in front of flup and the bridge: (process, port)."""
    import shutil
    (port,) = free_ports(1)
    if name == "lighttpd":
        binary = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
        www = work / "www"
        www.mkdir()
        (www / "app.fcgi").write_text("")  # what check-local looks for
        conf = work / "lighttpd.conf"
        conf.write_text(LIGHTTPD_CONF.format(port=port, www=www, tmp=work, routed=routed_port,
                                             flup=LIGHTTPD_SERVERS.format(port=flup_port),
                                             bridge=LIGHTTPD_SERVERS.format(port=bridge_port)))
        args = [binary, "-D", "-f", str(conf)]
    else:
        binary = shutil.which("apache2") or shutil.which("httpd") or "/usr/sbin/apache2"
        mods = apache_modules_dir()
        (work / "run").mkdir()
        (work / "run").chmod(0o777)
        modules = "".join(f"LoadModule {m}_module {mods}/mod_{m}.so\n" for m in (
            "mpm_event", "authz_core", "proxy", "proxy_fcgi", "rewrite") if os.path.exists(f"{mods}/mod_{m}.so"))
        conf = work / "httpd.conf"
        conf.write_text(APACHE_CONF.format(tmp=work, modules=modules, port=port, flup=flup_port, bridge=bridge_port,
                                           routed=routed_port,
                                           user="User nobody\nGroup nogroup" if os.geteuid() == 0 else ""))
        args = [binary, "-X", "-f", str(conf)]
    with open(work / "stdout.log", "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=work, start_new_session=True)
    wait_tcp(port, proc, name)
    return proc, port


@pytest.fixture(scope="module", params=["lighttpd", "apache"])
def front(request, bridge, flup_ref, tmp_path_factory):
    import shutil
    if request.param == "lighttpd" and not (shutil.which("lighttpd") or os.path.exists("/usr/sbin/lighttpd")):
        pytest.skip("lighttpd is not installed")
    if request.param == "apache" and not apache_modules_dir():
        pytest.skip("Apache with mod_proxy_fcgi is not installed")
    work = tmp_path_factory.mktemp(request.param)
    proc, port = start_front(request.param, work, flup_ref, bridge.listener_address("diff")[1],
                             bridge.listener_address("routed")[1])
    try:
        yield request.param, port
    finally:
        stop_process(proc, signal.SIGINT if request.param == "lighttpd" else signal.SIGTERM, timeout=20)


# (path, whether the web server sends a PATH_INFO for it)
FRONT_REQUESTS = {
    "lighttpd": [("/app.fcgi/x/y?q=1", True),         # check-local: the file exists, split after it
                 ("/app.fcgi/a%20b", True),
                 ("/lp/x/y?q=1", True),               # check-local disabled: split at the prefix
                 ("/lold/x%20y", True),               # url.rewrite-once to /lp/
                 ("/rootpath/x?q=1", True),           # "/" with fix-root-scriptname
                 ("/ext/page.pyfcgi?q=1", False)],    # by extension: the path in SCRIPT_NAME
    "apache": [("/pp/x/y?q=1", False),                # proxied like ProxyPass: the path in SCRIPT_NAME
               ("/pp/a%20b", False),
               ("/aold/z", True),                     # rewritten to /ah/ first
               ("/ah/x/y?q=1", True)],                # SetHandler on a location
}


def test_front_differential(front):
    """lighttpd's fastcgi.server with and without check-local, Apache mod_proxy_fcgi: the
    same key by key comparison as behind nginx. (Apache's SCRIPT_FILENAME names the
    backend's own address, so it differs between the two backends by construction.)"""
    name, port = front
    mechanics = ("SCRIPT_FILENAME",) if name == "apache" else ()
    seen = []
    for path, sends_path_info in FRONT_REQUESTS[name]:
        flup, ours = compare(getter(port), path, sends_path_info, mechanics)
        seen.append((path, ours["SCRIPT_NAME"], ours["PATH_INFO"]))
    if name == "lighttpd":
        assert ("/lold/x%20y", "/lp", "/x y") in seen  # the rewritten path, split at the prefix
    else:
        assert ("/aold/z", "/ah", "/z") in seen


def test_front_rewrite_picks_the_pool(front):
    """lighttpd's url.rewrite and Apache's RewriteRule [PT] change SCRIPT_NAME + PATH_INFO,
    not REQUEST_URI: the listener with several pools routes on the former."""
    name, port = front
    path = "/lroute/a%20b" if name == "lighttpd" else "/aroute/a%20b"
    r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=60)
    assert r.status_code == 200 and r.headers["X-Pool"] == "dump", (r.status_code, r.headers, r.text[:200])
    env = r.json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["REQUEST_URI"]) == ("/new", "/a b", path)


def test_the_differences_are_documented():
    text = (REPO / "docs" / "migration.md").read_text()
    section = text[text.index("## From a flup script"):]
    for key in DIFFERENCES:
        assert f"`{key}`" in section, f"docs/migration.md's flup section does not name {key}"


# ------------------------------------------------------------------ classic scripts

@pytest.mark.parametrize("name", list(CLASSIC))
def test_classic_script_through_nginx(bridge, nginx, name):
    if name == "webpy" and importlib.util.find_spec("web") is None:
        pytest.skip("web.py is not installed (pip install web.py)")
    _, path, needle = CLASSIC[name]
    r = requests.get(f"http://127.0.0.1:{nginx[1]}{path}", headers={"Host": f"{name}.test"}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert needle in r.text


def test_classic_scripts_arguments_are_logged(bridge, nginx):
    log = bridge.log
    log.wait_for([r"flup argument maxThreads=50 ignored: use the pool's `threads`", r'pool="django"'])
    log.wait_for([r"flup argument bindAddress='/run/wiki/wiki\.sock' ignored", r"unix:/run/wiki/wiki\.sock"])  # moin
    log.wait_for([r"WARN .*flup argument umask=0o007 ignored", r'socket-mode: "0770"', r"socket-group:"])
    # what is honoured is logged at INFO, what is ignored at WARN
    log.wait_for([r"INFO .*flup argument scriptName='/py3'"])  # flup-py3 style
    log.wait_for([r"flup\.server\.fcgi_fork serves one request at a time"])  # flup6 style
    log.wait_for([r"flup argument multiplexed=True ignored"])  # PHP_FCGI_CHILDREN pattern


# ------------------------------------------------------------------ the guide, as written

def guide_snippet(name: str) -> str:
    text = (REPO / "docs" / "migration.md").read_text()
    m = re.search(r"<!-- test-snippet: " + re.escape(name) + r" -->\s*\n([ \t]*)```[^\n]*\n(.*?)\n[ \t]*```", text, re.S)
    assert m, f"docs/migration.md: no test-snippet {name!r}"
    indent = m.group(1)
    return "\n".join(line[len(indent):] if line.startswith(indent) else line
                     for line in m.group(2).splitlines()) + "\n"


def test_migration_guide_works_as_written(tmp_path):
    """docs/migration.md "From a flup script", step by step: the script under stock flup
    with the socket on fd 0 (as spawn-fcgi starts it) behind the snippet's nginx; then the
    snippet's conf.d, `fcgibridge check`, `fcgibridge run` on the same address, and the
    same answer through the same, untouched nginx."""
    srv = tmp_path / "srv" / "app"
    srv.mkdir(parents=True)
    confd = tmp_path / "etc" / "fcgibridge" / "conf.d"
    confd.mkdir(parents=True)
    app_port, http_port = free_ports(2)
    subst = {"/srv/app": str(srv), "/etc/fcgibridge/conf.d": str(confd), "9000": str(app_port),
             "listen 8080": f"listen 127.0.0.1:{http_port}"}

    def fill(text):
        for k, v in subst.items():
            text = text.replace(k, v)
        return text

    script = srv / "app.fcgi"
    script.write_text(guide_snippet("flup-script"))
    script.chmod(0o755)
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    import shutil
    shutil.copy(harness.nginx_etc() / "fastcgi_params", nginx_dir)
    (nginx_dir / "nginx.conf").write_text(
        harness.nginx_conf(nginx_dir, fill(guide_snippet("flup-nginx")), connections=64))
    url = f"http://127.0.0.1:{http_port}/hello"

    # before: spawn-fcgi's part, a listening socket on fd 0 of the unmodified script
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", app_port))
    lsock.listen(16)
    flup = subprocess.Popen([sys.executable, str(script)], stdin=lsock, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=srv, start_new_session=True)
    lsock.close()
    nginx = harness.start_nginx(nginx_dir, nginx_dir / "nginx.conf")
    bridge = None
    try:
        wait_tcp(http_port, nginx, "nginx")
        r = wait_until(lambda: requests.get(url, timeout=10), 60, what="flup behind nginx")
        assert (r.status_code, r.text) == (200, "Hello from /hello\n")
        stop_process(flup, timeout=10)

        # after: the conf.d file, check, run
        conf = fill(guide_snippet("flup-conf"))
        assert "user: www-data" in conf and "python: /usr/bin/python3" in conf, conf
        # The workers run as the suite's user (root in CI, with consent): www-data cannot
        # enter the test's private directory. The test's Python stands in for /usr/bin's.
        conf = re.sub(r"user: www-data.*", "allow-root: true" if os.geteuid() == 0 else "", conf)
        conf = conf.replace("python: /usr/bin/python3", f"python: {sys.executable}")
        (confd / "app.yaml").write_text(conf)
        binary = str(harness.bridge_binary())
        check = fill(guide_snippet("flup-check")).split()
        assert check[0] == "fcgibridge"
        r = subprocess.run([binary] + check[1:], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"app: {script}\n" in r.stdout, r.stdout
        run = fill(guide_snippet("flup-run")).split()
        log = tmp_path / "bridge.log"
        with open(log, "ab") as out:
            bridge = subprocess.Popen([binary] + run[1:], stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        r = wait_until(lambda: (bridge.poll() is None or pytest.fail(log.read_text()))
                       and requests.get(url, timeout=10).status_code == 200 and requests.get(url, timeout=10),
                       60, what="the bridge behind the same nginx")
        assert r.text == "Hello from /hello\n"
        assert "app.fcgi: flup's WSGIServer(...).run() handed its app to the worker" in log.read_text()
    finally:
        stop_process(bridge, timeout=20)
        stop_process(nginx, timeout=20)
        stop_process(flup, timeout=10)


BIND_SCRIPT = """from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]


WSGIServer(app, bindAddress=("localhost", {port})).run()
"""


def test_a_bind_address_the_listener_already_is_is_not_suggested(tmp_path):
    """The migrated pool's listener took the script's own address: the worker is told the
    addresses of the listeners that lead to its pool, and names no other to configure. A
    second pool on another listener still gets the hint."""
    same, other = free_ports(2)
    here = tmp_path / "here.fcgi"
    here.write_text(BIND_SCRIPT.format(port=same))
    elsewhere = tmp_path / "elsewhere.fcgi"
    elsewhere.write_text(BIND_SCRIPT.format(port=same))
    b = make_bridge(tmp_path, {"here": {"app": str(here), "processes": 1, "threads": 1},
                               "elsewhere": {"app": str(elsewhere), "processes": 1, "threads": 1}},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{same}", "pool": "here"},
                     "other": {"fastcgi": f"127.0.0.1:{other}", "pool": "elsewhere"}})
    try:
        b.start()
        b.log.wait_for([r"INFO .*flup argument bindAddress=\('localhost', %d\): the pool's listener is at that "
                        r"address \(`fastcgi: 127\.0\.0\.1:%d`\), so the web server connects as it did to flup" % (same, same),
                        r'pool="here"'], timeout=60)
        b.log.wait_for([r"WARN .*flup argument bindAddress=\('localhost', %d\) ignored: .*"
                        r"\(e\.g\. `fastcgi: 127\.0\.0\.1:%d`\)" % (same, same), r'pool="elsewhere"'], timeout=60)
        assert not [ln for ln in b.log.lines() if 'pool="here"' in ln and "bindAddress" in ln and "WARN" in ln]
        resp = b.request("/", pool="here.test")
        assert resp.status == 200 and resp.body == b"served", resp.stdout[:2000]
    finally:
        b.stop()


def test_a_template_instances_bind_address_that_the_listener_already_is_is_not_suggested(tmp_path):
    """A template's instance is told the addresses of the listeners that route to the
    template: its flup script binding the listener's own address gets no listener to
    configure."""
    port, = free_ports(1)
    site = tmp_path / "sites" / "alpha.test"
    site.mkdir(parents=True)
    (site / "app.fcgi").write_text(BIND_SCRIPT.format(port=port))
    b = make_bridge(tmp_path, {"sites": {"template": {"max-instances": 2}, "app": f"{tmp_path}/sites/{{host}}/app.fcgi",
                                         "max-processes": 1, "threads": 1}},
                    {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "pool": "sites"}})
    try:
        b.start()
        wait_until(lambda: b.assert_running() or can_connect(("127.0.0.1", port)), 60, what="bridge listening")
        resp = b.request("/", pool="alpha.test")
        assert resp.status == 200 and resp.body == b"served", resp.stdout[:2000]
        b.log.wait_for([r"INFO .*flup argument bindAddress=\('localhost', %d\): the pool's listener is at that "
                        r"address \(`fastcgi: 127\.0\.0\.1:%d`\)" % (port, port), r"sites\[alpha\.test\]"], timeout=60)
        assert not [ln for ln in b.log.lines() if "bindAddress" in ln and "WARN" in ln]
    finally:
        b.stop()


SCGI_BIND_SCRIPT = """from flup.server.scgi import WSGIServer


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served over SCGI"]


WSGIServer(app{bind}).run()
"""


def test_an_scgi_scripts_bind_address_needs_an_scgi_listener(tmp_path):
    """A flup SCGI script's web server speaks SCGI to its address (nginx scgi_pass, Apache
    scgi://): the listener to write there is `scgi:`, and a `fastcgi:` listener at that
    address is not where the web server connects as it did to flup. flup's SCGI servers
    listen on localhost:4000 when the script names no address: that is said too."""
    same, wrong = free_ports(2)
    scripts = {"right": f", bindAddress=('localhost', {same})", "wrong": f", bindAddress=('127.0.0.1', {wrong})",
               "default": ""}
    pools = {}
    for name, bind in scripts.items():
        path = tmp_path / f"{name}.scgi"
        path.write_text(SCGI_BIND_SCRIPT.format(bind=bind))
        pools[name] = {"app": str(path), "processes": 1, "threads": 1}
    b = make_bridge(tmp_path, pools,
                    {"scgi-tcp": {"scgi": f"127.0.0.1:{same}", "pool": "right"},
                     "fcgi-tcp": {"fastcgi": f"127.0.0.1:{wrong}", "routes": [
                         {"host": "wrong.test", "pool": "wrong"}, {"host": "default.test", "pool": "default"}]}})
    try:
        b.start()
        b.log.wait_for([r"INFO .*flup argument bindAddress=\('localhost', %d\): the pool's listener is at that "
                        r"address \(`scgi: 127\.0\.0\.1:%d`\), so the web server connects as it did to flup"
                        % (same, same), r'pool="right"'], timeout=60)
        b.log.wait_for([r"WARN .*flup argument bindAddress=\('127\.0\.0\.1', %d\): the pool's listener at that address "
                        r"is `fastcgi: 127\.0\.0\.1:%d`, but the web server speaks SCGI to it, as it did to this "
                        r"script: write `scgi: 127\.0\.0\.1:%d`" % (wrong, wrong, wrong), r'pool="wrong"'], timeout=60)
        b.log.wait_for([r"WARN .*flup's default bindAddress=\('localhost', 4000\) \(the script names none\) ignored: .*"
                        r"\(e\.g\. `scgi: 127\.0\.0\.1:4000`\)", r'pool="default"'], timeout=60)
        assert not [ln for ln in b.log.lines() if 'pool="right"' in ln and "bindAddress" in ln and "WARN" in ln]
        status, _, body = fcgi_client.scgi_request(("127.0.0.1", same), "/", headers={"Host": "right.test"})
        assert (status, body) == (200, b"served over SCGI")
    finally:
        b.stop()

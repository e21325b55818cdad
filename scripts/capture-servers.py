"""Web-server configurations and request scenarios for scripts/capture-fastcgi.

Each server gets a minimal configuration in a temporary directory that forwards:
  /app   -> FastCGI listener (port "fcgi")
  /keep  -> FastCGI with a kept-alive connection (port "fcgi2" where the server needs a
            separate backend definition for that)
  /scgi  -> SCGI listener (port "scgi")
Scenarios make HTTP requests; the capture listener records what reaches it.
"""
import glob
import http.client
import os
import shutil
import subprocess
import threading
import time

BODY = b"name=widget&colour=blue&q=1"
# Document root the servers report to the application: fixed, so captures do not carry the
# random temporary directory; nothing is served from it.
DOCROOT = "/srv/www"


def http_request(port, method, path, headers=None, body=None, chunked=False, timeout=10.0, pause=0.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = {"User-Agent": "fcgibridge-capture/1", "Accept": "*/*"}
    hdrs.update(headers or {})
    if chunked:
        def gen():
            for i in range(0, len(body), 7):
                yield body[i:i + 7]
                if i == 0 and pause:
                    time.sleep(pause)  # the server sees a body still arriving
        conn.request(method, path, body=gen(), headers=hdrs, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status >= 400:
        raise RuntimeError(f"HTTP {resp.status} for {method} {path}")
    return resp.status, data


class Scenario:
    def __init__(self, name, what, run, protocol="fastcgi", delay=0.0):
        self.name, self.what, self._run, self.protocol, self.delay = name, what, run, protocol, delay

    def run(self, port):
        return self._run(port)


def get(path, name="get", protocol="fastcgi", extra=None):
    def run(port):
        headers = {"Cookie": "a=1; b=2", "Accept-Language": "en-GB,en;q=0.5", "X-Dup": "one"}
        headers.update(extra or {})
        http_request(port, "GET", path + "/hello/world?x=1&y=two", headers)
    what = f"GET {path}/hello/world?x=1&y=two" + "".join(f", {k}: {v}" for k, v in (extra or {}).items())
    return Scenario(name, what, run, protocol)


def post(path, name="post", protocol="fastcgi"):
    def run(port):
        http_request(port, "POST", path + "/form", {"Content-Type": "application/x-www-form-urlencoded"}, BODY)
    return Scenario(name, f"POST {path}/form, {len(BODY)}-byte urlencoded body", run, protocol)


def chunked(path, name="chunked", protocol="fastcgi", pause=0.0):
    def run(port):
        http_request(port, "POST", path + "/upload", {"Content-Type": "application/octet-stream"}, BODY * 3,
                     chunked=True, pause=pause)
    what = f"POST {path}/upload, {len(BODY) * 3}-byte body sent chunked (7-byte chunks) by the HTTP client"
    if pause:
        what += f", pausing {pause} s after the first chunk"
    return Scenario(name, what, run, protocol)


def big_headers(path, count, size, name="big-headers"):
    def run(port):
        hdrs = {f"X-Big-{i}": chr(ord("a") + i) * size for i in range(count)}
        http_request(port, "GET", path + "/big", hdrs)
    return Scenario(name, f"GET {path}/big with {count} headers X-Big-<i> of {size} bytes", run)


def keepalive(path, name="keepalive"):
    def run(port):
        http_request(port, "GET", path + "/first?n=1")
        http_request(port, "POST", path + "/second", {"Content-Type": "text/plain"}, b"second body")
    return Scenario(name, f"GET {path}/first?n=1 then POST {path}/second on a kept FastCGI connection", run)


def parallel(path, n, name="multiplexed"):
    def run(port):
        errors = []

        def one(i):
            try:
                http_request(port, "GET", f"{path}/par?i={i}")
            except Exception as e:  # collected and reported below
                errors.append(e)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
    return Scenario(name, f"{n} concurrent GET {path}/par?i=<i>, the application answering after 0.5 s", run, delay=0.5)


class Server:
    name = ""
    binaries = ()
    scenarios = ()

    def find(self):
        for b in self.binaries:
            p = shutil.which(b) or (b if os.path.isabs(b) and os.access(b, os.X_OK) else None)
            if p:
                return p
        for b in self.binaries:
            for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
                p = os.path.join(d, os.path.basename(b))
                if os.access(p, os.X_OK):
                    return p
        return None

    def version(self, binary):
        out = subprocess.run([binary, "-v"], capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0]

    def logs(self, tmp):
        text = ""
        for f in glob.glob(os.path.join(tmp, "*.log")):
            with open(f, errors="replace") as fh:
                text += fh.read()
        return text

    def cleanup(self, tmp):
        pass


def write(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class Nginx(Server):
    name = "nginx"
    binaries = ("nginx",)
    scenarios = (
        get("/app"), post("/app"), big_headers("/app", 3, 6000), keepalive("/keep"),
        chunked("/stream", name="chunked-unbuffered"), get("/override", name="override-param"),
        get("/scgi", name="scgi-get", protocol="scgi"), post("/scgi", name="scgi-post", protocol="scgi"),
        get("/scgi-bare", name="scgi-bare-get", protocol="scgi"),
    )

    def prepare(self, binary, tmp, ports):
        conf_dir = "/etc/nginx"
        out = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr
        for word in out.split():
            if word.startswith("--conf-path="):
                conf_dir = os.path.dirname(word.split("=", 1)[1])
        for f in ("fastcgi_params", "scgi_params"):
            shutil.copy(os.path.join(conf_dir, f), tmp)
        temp = "".join(f"{k}_temp_path {tmp}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "scgi", "uwsgi"))
        write(tmp, "nginx.conf", f"""
daemon off;
master_process off;
error_log {tmp}/nginx-error.log info;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    {temp}
    large_client_header_buffers 8 16k;
    upstream keep {{ server 127.0.0.1:{ports['fcgi2']}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{ports['http']};
        root {DOCROOT};
        location /app {{ include fastcgi_params; fastcgi_pass 127.0.0.1:{ports['fcgi']}; }}
        location /keep {{ include fastcgi_params; fastcgi_pass keep; fastcgi_keep_conn on; }}
        location /override {{
            include fastcgi_params; fastcgi_pass 127.0.0.1:{ports['fcgi']};
            fastcgi_param SCRIPT_NAME /overridden;
        }}
        location /stream {{
            include fastcgi_params; fastcgi_pass 127.0.0.1:{ports['fcgi']};
            fastcgi_request_buffering off;
        }}
        location /scgi-bare {{ scgi_param REQUEST_URI $request_uri; scgi_pass 127.0.0.1:{ports['scgi']}; }}
        location /scgi {{ include scgi_params; scgi_pass 127.0.0.1:{ports['scgi']}; }}
    }}
}}
""")
        return [binary, "-p", tmp, "-c", os.path.join(tmp, "nginx.conf")]


class Apache(Server):
    name = "apache"
    binaries = ("apache2", "httpd")
    scenarios = (
        # Apache sets CONTENT_LENGTH when the whole chunked body is already there when it
        # looks, and streams it otherwise: the pause makes the capture show the second case.
        get("/app"), post("/app"), big_headers("/app", 4, 6000), chunked("/app", pause=0.3), keepalive("/keep"),
        # "alice:secret"
        get("/auth", name="authorizer", extra={"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
        get("/scgi", name="scgi-get", protocol="scgi"), post("/scgi", name="scgi-post", protocol="scgi"),
    )

    def prepare(self, binary, tmp, ports):
        mods = None
        for d in ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules"):
            if os.path.exists(os.path.join(d, "mod_proxy_fcgi.so")):
                mods = d
        load = "".join(f"LoadModule {m}_module {mods}/mod_{m}.so\n"
                       for m in ("mpm_event", "authz_core", "authz_user", "authn_core", "auth_basic", "authnz_fcgi", "proxy", "proxy_fcgi",
                                 "proxy_scgi"))
        user = "User nobody\nGroup nogroup\n" if os.getuid() == 0 else ""
        write(tmp, "httpd.conf", f"""
ServerRoot "{tmp}"
ServerName localhost
Listen 127.0.0.1:{ports['http']}
{load}
{user}
PidFile {tmp}/httpd.pid
ErrorLog {tmp}/httpd-error.log
LogLevel warn
DefaultRuntimeDir {tmp}
Mutex file:{tmp} default
ProxyPass "/app" "fcgi://127.0.0.1:{ports['fcgi']}/app"
ProxyPass "/keep" "fcgi://127.0.0.1:{ports['fcgi2']}/keep" enablereuse=on
ProxyPass "/scgi" "scgi://127.0.0.1:{ports['scgi']}/scgi"
# mod_authnz_fcgi asks an AUTHORIZER (the capture listener) to check the Basic credentials
# before the request goes on to the responder.
AuthnzFcgiDefineProvider authnz CaptureAuth fcgi://127.0.0.1:{ports['fcgi']}/
ProxyPass "/auth" "fcgi://127.0.0.1:{ports['fcgi2']}/auth"
<Location "/auth">
    AuthType Basic
    AuthName capture
    AuthBasicProvider CaptureAuth
    Require valid-user
</Location>
""")
        return [binary, "-X", "-f", os.path.join(tmp, "httpd.conf")]


class Lighttpd(Server):
    name = "lighttpd"
    binaries = ("lighttpd",)
    scenarios = (
        get("/app"), post("/app"), big_headers("/app", 3, 6000), chunked("/app"),
        get("/scgi", name="scgi-get", protocol="scgi"), post("/scgi", name="scgi-post", protocol="scgi"),
    )

    def prepare(self, binary, tmp, ports):
        user = 'server.username = "nobody"\nserver.groupname = "nogroup"\n' if os.getuid() == 0 else ""
        write(tmp, "lighttpd.conf", f"""
server.document-root = "{DOCROOT}"
server.bind = "127.0.0.1"
server.port = {ports['http']}
server.errorlog = "{tmp}/lighttpd-error.log"
server.max-request-field-size = 65535
{user}
server.modules = ("mod_fastcgi", "mod_scgi")
fastcgi.server = ("/app" => (("host" => "127.0.0.1", "port" => {ports['fcgi']}, "check-local" => "disable")))
scgi.server = ("/scgi" => (("host" => "127.0.0.1", "port" => {ports['scgi']}, "check-local" => "disable")))
""")
        return [binary, "-D", "-f", os.path.join(tmp, "lighttpd.conf")]


class Haproxy(Server):
    name = "haproxy"
    binaries = ("haproxy",)
    scenarios = (
        get("/app"), post("/app"), big_headers("/app", 3, 6000), parallel("/app", 4),
    )

    def prepare(self, binary, tmp, ports):
        write(tmp, "haproxy.cfg", f"""
global
    tune.bufsize 65536
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
fcgi-app py
    docroot {DOCROOT}
    option keep-conn
    option mpxs-conns
    option get-values
    option max-reqs 10
frontend fe
    bind 127.0.0.1:{ports['http']}
    default_backend be
backend be
    http-reuse always
    use-fcgi-app py
    server app 127.0.0.1:{ports['fcgi']} proto fcgi
""")
        return [binary, "-db", "-f", os.path.join(tmp, "haproxy.cfg")]


class H2o(Server):
    name = "h2o"
    binaries = ("h2o",)
    scenarios = (
        get("/app"), post("/app"), big_headers("/app", 12, 6000, name="big-headers"), keepalive("/keep"),
        chunked("/app"),
    )

    def version(self, binary):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True)
        return out.stdout.strip().splitlines()[0]

    def prepare(self, binary, tmp, ports):
        user = "user: nobody\n" if os.getuid() == 0 else ""
        write(tmp, "h2o.conf", f"""
listen:
  host: 127.0.0.1
  port: {ports['http']}
{user}error-log: {tmp}/h2o-error.log
pid-file: {tmp}/h2o.pid
hosts:
  default:
    paths:
      /app:
        fastcgi.connect:
          host: 127.0.0.1
          port: {ports['fcgi']}
          type: tcp
      /keep:
        fastcgi.connect:
          host: 127.0.0.1
          port: {ports['fcgi2']}
          type: tcp
        fastcgi.timeout.keepalive: 10000
""")
        return [binary, "-c", os.path.join(tmp, "h2o.conf")]


class Caddy(Server):
    name = "caddy"
    binaries = ("caddy",)
    scenarios = (
        get("/app"), post("/app"), big_headers("/app", 12, 6000), chunked("/app"),
    )

    def version(self, binary):
        out = subprocess.run([binary, "version"], capture_output=True, text=True)
        return "caddy " + out.stdout.strip().split()[0]

    def prepare(self, binary, tmp, ports):
        write(tmp, "Caddyfile", f"""
{{
    admin off
    auto_https off
}}
http://127.0.0.1:{ports['http']} {{
    root * {DOCROOT}
    reverse_proxy /app* 127.0.0.1:{ports['fcgi']} {{
        transport fastcgi
    }}
}}
""")
        return [binary, "run", "--config", os.path.join(tmp, "Caddyfile"), "--adapter", "caddyfile"]


SERVERS = [Nginx(), Apache(), Lighttpd(), Haproxy(), H2o(), Caddy()]

"""nginx in front of a `direct` listener, for the tests of direct mode (test_direct.py,
test_direct_redirect.py). A module of its own: workers/tests has a test_direct.py too, and
the suite collects both directories in one session."""
import requests

from harness import FCGI_PATH_RECIPE, LogFile, free_ports, nginx_conf, nginx_etc, start_nginx, stop_process


class Front:
    """nginx on one port, passing everything to the direct listener's unix socket."""

    def __init__(self, workdir, socket, extra=""):
        self.port = free_ports(1)[0]
        http = (f"    server {{\n        listen 127.0.0.1:{self.port};\n        location / {{\n"
                f"            include {nginx_etc()}/fastcgi_params;\n            {FCGI_PATH_RECIPE}\n"
                f"            fastcgi_read_timeout 120s;\n            client_max_body_size 64m;\n{extra}"
                f"            fastcgi_pass unix:{socket};\n"
                f"        }}\n    }}\n")
        (workdir / "nginx.conf").write_text(nginx_conf(workdir, http))
        self.error_log = LogFile(workdir / "nginx-error.log")
        self.proc = start_nginx(workdir, workdir / "nginx.conf")

    def get(self, path, **kw):
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=kw.pop("timeout", 60), **kw)

    def stop(self):
        stop_process(self.proc, timeout=20)


def ok(front, path):
    try:
        return front.get(path, timeout=10).status_code == 200
    except requests.RequestException:
        return False

"""Small web-server helpers for the response-filter and request-body tests: a bridge with the
respond_app pool(s) and an nginx with the locations these tests need (an unbuffered
upload location, an `internal` location for X-Accel-Redirect)."""
from __future__ import annotations

from pathlib import Path

import harness

RESPOND_APP = str(harness.APPS / "respond_app.py")

NGINX_HTTP = """
    client_max_body_size 200m;
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        # buffered bodies (nginx's default): CONTENT_LENGTH is always set
        location / {{
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $fastcgi_script_name;
            fastcgi_pass {fcgi};
        }}
        # chunked uploads stream through: CONTENT_LENGTH is an empty string
        location /stream/ {{
            rewrite ^/stream(/.*)$ $1 break;
            include {etc}/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $uri;
            fastcgi_request_buffering off;
            fastcgi_buffering off;
            fastcgi_pass {fcgi};
        }}
        # X-Accel-Redirect targets: only reachable through the bridge's hand-off
        location /protected/ {{
            internal;
            alias {files}/;
        }}
    }}
"""


class Nginx:
    """nginx in front of one FastCGI listener of the bridge."""

    def __init__(self, workdir: Path, fcgi_address, files: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (self.port,) = harness.free_ports(1)
        if isinstance(fcgi_address, tuple):
            fcgi = f"{fcgi_address[0]}:{fcgi_address[1]}"
        else:
            fcgi = f"unix:{fcgi_address}"
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(harness.nginx_conf(workdir, NGINX_HTTP.format(
            etc=harness.nginx_etc(), port=self.port, fcgi=fcgi, files=files), connections=256))
        self.error_log = harness.LogFile(workdir / "nginx-error.log")
        self.proc = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self):
        self.proc = harness.start_nginx(self.workdir, self.conf)
        import requests

        def ok():
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited: " + self.error_log.text())
            return requests.get(self.url("/health"), timeout=10).status_code == 200
        harness.wait_until(ok, 60, 0.1, what=f"nginx on port {self.port}")
        return self

    def stop(self):
        harness.stop_process(self.proc, timeout=20)


def start_bridge(workdir: Path, pools: dict, listeners: dict, probes) -> harness.Bridge:
    """A bridge with `pools` and `listeners`, ready once every probe answers 200."""
    bridge = harness.make_bridge(workdir, pools, listeners)
    bridge.start()
    try:
        bridge.wait_ready(probes)
    except BaseException:
        bridge.stop()
        raise
    return bridge

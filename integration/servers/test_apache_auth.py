"""Apache passes the client's `Authorization` header to the app only with the settings of
docs/servers/apache.md ("The `Authorization` header"), run as the page writes them
(its `pass-auth` and `pass-auth-fcgid` test-snippets) on top of the page's configuration:

- without them, none of mod_proxy_fcgi, mod_proxy_scgi and mod_fcgid passes it;
- with them, each passes the exact value (Basic and Bearer); mod_fcgid also as
  `Authorization`, and `CGIPassAuth On` also passes `Proxy-Authorization`;
- `CGIPassAuth On` in a `<Directory "/">` passes nothing through the proxy modules (a
  `ProxyPass` request never enters a `<Directory>`), but does through mod_fcgid.

One Apache per case (module-scoped), all three modules in it, behind the suite's bridge.
"""
import pytest
import requests

import frontends
import support

TIMEOUT = 60
BASIC = "Basic dXNlcjpwYXNz"
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig-_x"
PROXY_AUTH = "Basic cHJveHk6cHc="
PROXIED = ["apache-proxy-fcgi", "apache-proxy-scgi"]
VARIANTS = PROXIED + ["apache-fcgid"]
SUPPORT_NOTE = {
    "apache-proxy-fcgi": "only with `CGIPassAuth On` in a `<Location>`, not a `<Directory>` (docs/servers/apache.md)",
    "apache-proxy-scgi": "only with `CGIPassAuth On` in a `<Location>`, not a `<Directory>` (docs/servers/apache.md)",
    "apache-fcgid": "only with `FcgidPassHeader Authorization` (also as `Authorization`) or `CGIPassAuth On` "
                    "(docs/servers/apache.md)",
}
# the trap the page warns of: mod_wsgi users have WSGIPassAuthorization in a <Directory>
DIRECTORY_BLOCK = '<Directory "/">\n    CGIPassAuth On\n</Directory>\n'


class ApacheWith(frontends.Apache):
    """The page's Apache with `vhost_extra` right after the opening line of the 8080 and
    8081 vhosts and `server_extra` at the end of the server config, as an operator adds
    them."""

    def __init__(self, ports, www, vhost_extra="", server_extra=""):
        super().__init__(ports, www)
        self.vhost_extra, self.server_extra = vhost_extra, server_extra

    def command(self):
        argv = super().command()
        path = self.workdir / "httpd.conf"
        conf = path.read_text()
        for key in ("8080", "8081"):
            head = f"<VirtualHost 127.0.0.1:{self.ports[key]}>\n"
            assert head in conf, (f"docs/servers/apache.md: test-snippet conf: no `<VirtualHost 127.0.0.1:{key}>` "
                                  "line to add the Authorization setting to; keep one per port")
            conf = conf.replace(head, head + self.vhost_extra, 1)
        path.write_text(conf + self.server_extra)
        return argv


def case_config(case: str) -> tuple:
    """(lines for the proxy vhosts, lines for the server config) of a case."""
    if case == "documented":
        return frontends.snippet("apache.md", "pass-auth"), frontends.snippet("apache.md", "pass-auth-fcgid")
    if case == "directory":
        return "", DIRECTORY_BLOCK
    return "", ""


@pytest.fixture(scope="module", params=["without", "documented", "directory"])
def apache(request, sbridge, www):
    srv = ApacheWith(sbridge.ports, www, *case_config(request.param))
    if not srv.binary:
        pytest.skip("Apache is not installed")
    try:
        srv.start()
        yield request.param, srv
    finally:
        srv.stop()
        srv.cleanup()


def get_env(srv, variant, path="/env", **kw) -> dict:
    r = requests.get(f"http://127.0.0.1:{srv.port(variant)}{path}", timeout=TIMEOUT, **kw)
    assert r.status_code == 200, (variant, r.status_code, r.text[:300], srv.log_text())
    return r.json()


def expected(case: str, variant: str, value: str) -> dict:
    """What the app gets of the client's Authorization and Proxy-Authorization."""
    passed = case == "documented" or (case == "directory" and variant == "apache-fcgid")
    return {
        "HTTP_AUTHORIZATION": value if passed else None,
        # FcgidPassHeader also sets the header's own name (mod_fcgid's legacy variable)
        "Authorization": value if case == "documented" and variant == "apache-fcgid" else None,
        # CGIPassAuth passes Proxy-Authorization too; FcgidPassHeader Authorization does not
        "HTTP_PROXY_AUTHORIZATION": PROXY_AUTH if passed and (variant in PROXIED or case == "directory") else None,
    }


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("value", [BASIC, BEARER], ids=["basic", "bearer"])
def test_authorization_reaches_the_app_only_with_the_documented_setting(apache, variant, value):
    case, srv = apache
    env = get_env(srv, variant, headers={"Authorization": value, "Proxy-Authorization": PROXY_AUTH})
    got = {k: env.get(k) for k in ("HTTP_AUTHORIZATION", "Authorization", "HTTP_PROXY_AUTHORIZATION")}
    assert got == expected(case, variant, value), (
        f"{variant}, {case}: the app got {got}; docs/servers/apache.md (The `Authorization` header) "
        f"says {expected(case, variant, value)}: fix the page or the bridge")
    if case == "documented":
        support.record(variant, "Authorization header", "yes", SUPPORT_NOTE[variant])


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_authorization_header_none_passed(apache, variant):
    case, srv = apache
    env = get_env(srv, variant)
    assert "HTTP_AUTHORIZATION" not in env and "Authorization" not in env, (variant, case, env)


def test_private_shows_the_password_to_the_app_only_with_the_block(apache):
    """The page: in the 8080 vhost `<Location "/">` also covers /private/, where
    mod_authnz_fcgi checks the Basic password: the app then sees it too."""
    case, srv = apache
    env = get_env(srv, "apache-proxy-fcgi", "/private/x", auth=("alice", "secret"))
    assert env.get("REMOTE_USER") == "alice", env
    want = "Basic YWxpY2U6c2VjcmV0" if case == "documented" else None
    assert env.get("HTTP_AUTHORIZATION") == want, (case, env)

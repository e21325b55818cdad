"""The example authorizer of docs/authorizer.md, run as written (its `example` test-snippet;
the test supplies only `check` and the "normal application" of its `...` line), behind the
page's own web-server blocks (its `lighttpd` and `apache` test-snippets: lighttpd's
authorizer mode, Apache's mod_authnz_fcgi) wrapped in a minimal server configuration:

- the right password is let through, and the authorizer's `Variable-AUTH_USER_NAME`
  reaches the responder as AUTH_USER_NAME;
- a wrong password and no credentials get 401 with WWW-Authenticate.

Apache sends an `authnz` provider the Basic credentials as REMOTE_USER/REMOTE_PASSWD and
no HTTP_AUTHORIZATION: an example that read only the header would lock everyone out there.
"""
import pytest
import requests

import frontends

TIMEOUT = 60
USER, PASSWORD = "alice", "secret"
ELLIPSIS = "    ...  # the normal application\n"
# What the test adds to the page's example: the responder for its `...`, and `check`.
RESPONDER = '''    import json
    body = json.dumps({k: v for k, v in environ.items() if isinstance(v, str)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''
# lighttpd sends the example's 401 as it is; Apache's mod_authnz_fcgi, an AuthBasicProvider
# there, turns any refusal into Apache's own 401, with the realm of the block's AuthName.
DENIAL = {"lighttpd": ('Basic realm="app"', b"who are you?\n"), "apache": ('Basic realm="private"', None)}
CHECK = f'''

def check(user, password):
    return (user, password) == ({USER!r}, {PASSWORD!r})
'''


def example_app(path):
    """docs/authorizer.md's example as a WSGI file: its text, `...` replaced by RESPONDER,
    then CHECK."""
    text = frontends.snippet("../authorizer.md", "example")
    assert text.count(ELLIPSIS) == 1, ("docs/authorizer.md: test-snippet example: the test replaces the "
                                       f"line {ELLIPSIS.strip()!r} with a responder; keep it, once")
    path.write_text(text.replace(ELLIPSIS, RESPONDER) + CHECK)
    path.chmod(0o644)
    return path


class PageApache(frontends.Apache):
    """authorizer.md's Apache block, with the modules it needs and a ProxyPass of
    everything to the same listener (the responder)."""
    variants = {"apache": "8080"}
    spawned_variants = ()

    def command(self):
        s = self.subst()
        mods = self.modules_dir()
        head = "".join(f"LoadModule {m}_module {mods}/mod_{m}.so\n" for m in ("proxy", "proxy_fcgi", "authnz_fcgi"))
        head += f'Listen 127.0.0.1:8080\nProxyPass "/" "fcgi://127.0.0.1:9000/"\n'
        return self.httpd(substitute(head + frontends.snippet("../authorizer.md", "apache"), s))


class PageLighttpd(frontends.Lighttpd):
    """authorizer.md's lighttpd block, with mod_fastcgi loaded."""
    variants = {"lighttpd": "8080"}
    spawned_variants = ()

    def command(self):
        conf = 'server.modules += ("mod_fastcgi")\n' + frontends.snippet("../authorizer.md", "lighttpd")
        return self.lighttpd(substitute(conf, self.subst()))


def substitute(text, subst):
    assert "9000" in text, f"the page's block names no port 9000 for the bridge:\n{text}"
    return frontends.substitute(text, subst)


@pytest.fixture(scope="module")
def example_bridge(tmp_path_factory, www):
    """A bridge like the suite's (the pages' listeners), its pool running the example."""
    workdir = tmp_path_factory.mktemp("authorizer-example")
    workdir.chmod(0o755)
    with frontends.running(frontends.shared_bridge(workdir, www, example_app(workdir / "example_app.py"), "example")) as b:
        yield b


@pytest.fixture(scope="module", params=[PageApache, PageLighttpd], ids=["apache", "lighttpd"])
def front(request, example_bridge, www):
    srv = request.param(example_bridge.ports, www)
    if not srv.binary:
        pytest.skip(f"{srv.name} is not installed")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        srv.cleanup()


def get(srv, **kw):
    return requests.get(f"http://127.0.0.1:{srv.ports['8080']}/private/x", timeout=TIMEOUT, **kw)


def test_the_right_password_is_let_through_with_the_authorizers_variable(front, example_bridge):
    r = get(front, auth=(USER, PASSWORD))
    assert r.status_code == 200, (
        f"{front.name}: {r.status_code} for {USER}:{PASSWORD} through docs/authorizer.md's example: "
        f"{r.text[:300]}\n{front.log_text()}\n" + "\n".join(example_bridge.log.lines()[-30:]))
    env = r.json()
    assert env.get("AUTH_USER_NAME") == USER, (front.name, env)
    assert env.get("PATH_INFO") == "/private/x", (front.name, env)


@pytest.mark.parametrize("auth", [(USER, "wrong"), ("mallory", PASSWORD), None], ids=["wrong-password", "wrong-user", "none"])
def test_a_wrong_password_gets_401_with_www_authenticate(front, auth):
    r = get(front, auth=auth)
    assert r.status_code == 401, (front.name, r.status_code, r.text[:300])
    realm, body = DENIAL[front.name]
    assert r.headers.get("WWW-Authenticate") == realm, (front.name, r.headers)
    if body is not None:
        assert r.content == body, (front.name, r.content[:300])

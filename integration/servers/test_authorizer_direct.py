"""The AUTHORIZER role straight to the bridge, as lighttpd and Apache mod_authnz_fcgi send it
(docs/authorizer.md): role 2, no STDIN record at all (Apache) or an empty one (lighttpd),
on a kept connection that then carries an ordinary RESPONDER request."""
import base64

import pytest

import fcgi_client


def auth_params(authorization=None, role_param=True):
    headers = {"Host": "x"}
    if authorization:
        headers["Authorization"] = authorization
    params = fcgi_client.cgi_params("/private/x", "GET", "", headers, content_length=None)
    if role_param:
        params = list(params) + [("FCGI_ROLE", "AUTHORIZER")]
    return params


@pytest.mark.parametrize("stdin", [None, b""], ids=["no-stdin-apache", "empty-stdin-lighttpd"])
@pytest.mark.parametrize("role_param", [True, False], ids=["FCGI_ROLE-sent", "FCGI_ROLE-absent"])
def test_authorizer_allows_and_denies(sbridge, stdin, role_param):
    good = "Basic " + base64.b64encode(b"alice:secret").decode()
    with fcgi_client.FcgiConnection(("127.0.0.1", sbridge.ports["fastcgi"]), timeout=60) as c:
        c.begin(1, auth_params(None, role_param), stdin=stdin, role=fcgi_client.AUTHORIZER)
        r = c.wait(1)
        assert r.protocol_status == 0 and r.status == 401, bytes(r.stdout)[:300]
        assert b"WWW-Authenticate: Basic" in bytes(r.stdout)
        c.begin(1, auth_params(good, role_param), stdin=stdin, role=fcgi_client.AUTHORIZER)
        r = c.wait(1)
        assert r.status == 200, bytes(r.stdout)[:300]
        head = bytes(r.stdout).split(b"\r\n\r\n", 1)[0]
        assert b"Variable-AUTH_USER_NAME: alice" in head and b"Variable-AUTH_TEAM: blue" in head
        # the same kept connection goes on with a RESPONDER request
        r = c.request("/health", headers={"Host": "x"})
        assert r.status == 200 and r.body == b"ok"

"""An app wrapped in wsgiref.validate.validator: the bridge's worker must not trip any
of its assertions or warnings (warnings are errors in that app)."""
import hashlib
import json

import requests

from harness import POOL_HOSTS


def _post(nginx, transport, path, body, **kw):
    return requests.post(nginx.url(transport, path), data=body, headers={"Host": POOL_HOSTS["validated"]},
                         timeout=60, **kw)


def test_validator_get(nginx, transport, log):
    r = requests.get(nginx.url(transport, "/plain?x=1"), headers={"Host": POOL_HOSTS["validated"]}, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["method"] == "GET" and data["query"] == "x=1" and data["size"] == 0
    assert data["version"] == [1, 0] and data["url_scheme"] == "http"
    assert data["multithread"] and not data["multiprocess"] and not data["run_once"]
    log.wait_for(["validated app served /plain"])


def test_validator_head(nginx, transport):
    r = requests.head(nginx.url(transport, "/plain"), headers={"Host": POOL_HOSTS["validated"]}, timeout=60)
    assert r.status_code == 200


def test_validator_post_read(nginx, transport):
    body = bytes(range(256)) * 1000
    r = _post(nginx, transport, "/plain", body)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(body)
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_validator_readline_readlines(nginx, transport):
    r = _post(nginx, transport, "/readline", b"line one\nline two\nthree\nfour")
    assert r.status_code == 200, r.text
    assert r.json() == {"first": "line one\n", "second": "line ", "rest": ["two\n", "three\n", "four"]}


def test_validator_input_iteration(nginx, transport):
    r = _post(nginx, transport, "/iter", b"a\nbb\nccc\n")
    assert r.status_code == 200, r.text
    assert r.json() == {"lines": ["a\n", "bb\n", "ccc\n"]}


def test_validator_write_callable(nginx, transport):
    r = _post(nginx, transport, "/write", b"xyz")
    assert r.status_code == 200, r.text
    assert r.json()["size"] == 3


def test_validator_direct_fastcgi(bridge):
    resp = bridge.request("/plain", pool="validated", method="POST", body=b"hello")
    assert resp.status == 200, resp.stdout[:2000]
    assert json.loads(resp.body)["size"] == 5


def test_validator_raised_nothing(nginx, log):
    """After a round of requests, the log holds no validator complaint (assertion errors,
    WSGIWarning, an iterator collected without close())."""
    for transport in ("fcgi-unix", "fcgi-tcp", "scgi"):
        assert _post(nginx, transport, "/plain", b"q" * 100).status_code == 200
        assert requests.get(nginx.url(transport, "/plain"), headers={"Host": POOL_HOSTS["validated"]},
                            timeout=60).status_code == 200
    log.wait_for(["validated app served /plain"])
    text = log.text()
    for bad in ("AssertionError", "WSGIWarning", "without being closed", "Exception ignored"):
        assert bad not in text, text[-4000:]

"""A real Django project (templates, CSRF-protected form, signed-cookie sessions,
cookies, file upload) behind nginx → fcgibridge."""
import hashlib
import os
import re
import uuid

import pytest
import requests

from harness import POOL_HOSTS

TOKEN_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture(scope="session")
def django_ready(bridge):
    try:
        bridge.wait_ready([("fcgi-tcp", "/health/", POOL_HOSTS["django"])], timeout=60)
    except AssertionError as e:
        text = "\n".join(ln for ln in str(e).splitlines() if "django" in ln)
        pytest.fail(f"the django pool never answered:\n{text[-3000:]}", pytrace=False)


@pytest.fixture
def site(nginx, transport, django_ready):
    s = requests.Session()
    s.headers["Host"] = POOL_HOSTS["django"]

    def url(path):
        return nginx.url(transport, path)

    s.url = url
    return s


def test_index_renders_template(site):
    r = site.get(site.url("/"), timeout=60)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<h1>Django behind fcgibridge</h1>" in r.text
    assert '<p id="path">/</p>' in r.text
    assert '<p id="form-url">/form/</p>' in r.text


def test_append_slash_redirect(site):
    r = site.get(site.url("/form"), allow_redirects=False, timeout=60)
    assert r.status_code == 301
    assert r.headers["Location"].endswith("/form/")


def test_form_post_with_csrf(site):
    r = site.get(site.url("/form/"), timeout=60)
    assert r.status_code == 200
    token = TOKEN_RE.search(r.text).group(1)
    cookie = site.cookies.get("csrftoken")
    assert cookie, f"no csrftoken cookie in {r.headers}"
    r = site.post(site.url("/form/"), data={"csrfmiddlewaretoken": token, "name": "Ada Lovelace",
                                            "colour": ["red", "green"]}, timeout=60)
    assert r.status_code == 200, r.text[:2000]
    assert '<p id="thanks">Thanks, Ada Lovelace!</p>' in r.text
    assert '<p id="colours">red,green</p>' in r.text


def test_form_post_without_csrf_is_rejected(site):
    r = site.post(site.url("/form/"), data={"name": "Mallory"}, timeout=60)
    assert r.status_code == 403


def test_form_post_with_wrong_token_is_rejected(site):
    site.get(site.url("/form/"), timeout=60)
    r = site.post(site.url("/form/"), data={"csrfmiddlewaretoken": "x" * 64, "name": "Mallory"}, timeout=60)
    assert r.status_code == 403


def test_session_counter(site):
    counts = [site.get(site.url("/session/"), timeout=60).json()["count"] for _ in range(4)]
    assert counts == [1, 2, 3, 4]
    # a client without the session cookie starts again
    fresh = requests.get(site.url("/session/"), headers={"Host": POOL_HOSTS["django"]}, timeout=60)
    assert fresh.json()["count"] == 1


def test_cookie_set_and_read(site):
    r = site.get(site.url("/cookie/?set=chocolate"), timeout=60)
    assert r.json() == {"seen": None}
    assert "HttpOnly" in r.headers["Set-Cookie"]
    r = site.get(site.url("/cookie/"), timeout=60)
    assert r.json() == {"seen": "chocolate"}


def test_file_upload(site):
    r = site.get(site.url("/upload/"), timeout=60)
    token = TOKEN_RE.search(r.text).group(1)
    content = os.urandom(3 << 20) + "ünïcode tail".encode()
    r = site.post(site.url("/upload/"),
                  data={"csrfmiddlewaretoken": token, "note": "three MiB"},
                  files={"file": ("résumé.bin", content, "application/octet-stream")}, timeout=120)
    assert r.status_code == 200, r.text[:2000]
    data = r.json()
    assert data["size"] == len(content)
    assert data["sha256"] == hashlib.sha256(content).hexdigest()
    assert data["name"] == "résumé.bin"
    assert data["note"] == "three MiB"
    assert data["handler"] == "TemporaryUploadedFile"  # above FILE_UPLOAD_MAX_MEMORY_SIZE


def test_view_exception_is_500_and_logged(site, log):
    tag = uuid.uuid4().hex
    r = site.get(site.url(f"/boom/?tag={tag}"), timeout=60)
    assert r.status_code == 500
    # Django logs the traceback on the worker's stderr: the bridge logs it tagged with the pool
    lines = log.wait_for([f"view failure {tag}"])
    assert any("django" in ln for ln in lines), lines

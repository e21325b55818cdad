"""A pool's `ready-check`: Django imports its URLconf and views at the first request, so a
deploy whose views.py is broken starts, reports READY, and would take over from the old
workers with every request a 500. With `ready-check: /ready/` a new worker counts as ready
only once it answered that GET (sent by the bridge straight to it) with a 2xx/3xx: the
broken deploy fails `reload --restart-workers --wait`, and the old workers serve on.
See docs/operator-guide.md (Deploying new code) and docs/configuration.md."""
import json
import re
import shutil
import subprocess

import pytest

import fcgi_client
import harness

READY_VIEW = '''

def ready(request):
    """The ready-check's view: says what it was sent."""
    import json as _json
    import os as _os
    keys = ("FCGIBRIDGE_READY_CHECK", "HTTP_HOST", "REMOTE_ADDR", "HTTP_USER_AGENT", "PATH_INFO", "QUERY_STRING")
    seen = {k: request.META.get(k) for k in keys}
    seen["scope"] = getattr(request, "scope", {}).get("fcgibridge.ready_check")
    with open(_os.path.join(_os.environ["FCGIBRIDGE_TEST_DIR"], "checks.log"), "a") as f:
        f.write(_json.dumps(seen) + "\\n")
    return HttpResponse("ready")
'''


@pytest.fixture(params=["wsgi", "asgi"])
def site(tmp_path, request):
    """A copy of the Django project with a /ready/ view, served by a pool of two workers
    (WSGI, then ASGI) whose ready-check asks for it; the route's host is the check's Host."""
    project = tmp_path / "djproject"
    shutil.copytree(harness.APPS / "djproject", project)
    views = project / "mysite" / "views.py"
    views.write_text(views.read_text() + READY_VIEW)
    urls = project / "mysite" / "urls.py"
    urls.write_text(urls.read_text().replace('urlpatterns = [', 'urlpatterns = [\n    path("ready/", views.ready),'))
    (port,) = harness.free_ports(1)
    pools = {"shop": harness.pool(f"mysite.{request.param}:application", interface=request.param, processes=2,
                                  chdir=str(project),
                                  env={"DJANGO_SETTINGS_MODULE": "mysite.settings"},
                                  **{"ready-check": "/ready/?from=bridge", "startup-timeout": "60s"})}
    listeners = {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "routes": [{"host": "shop.test", "pool": "shop"}]}}
    bridge = harness.make_bridge(tmp_path, pools, listeners)
    bridge.start()
    try:
        harness.wait_until(lambda: len(ready_workers(bridge)) == 2, 120, 0.2, what="both workers ready")
        yield bridge, views
    finally:
        bridge.stop()


def ready_workers(bridge):
    bridge.assert_running()
    try:
        st = bridge.pool_status("shop")
    except (AssertionError, StopIteration, json.JSONDecodeError):
        return []
    return [w for w in st["workers"] if w["state"] in ("idle", "busy")]


def checks(bridge):
    path = bridge.workdir / "checks.log"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def cli_reload(bridge, *args):
    return subprocess.run([str(bridge.binary), "reload", *args, "--config", str(bridge.confdir)],
                          capture_output=True, text=True, timeout=300)


def get(bridge, path):
    return fcgi_client.fcgi_request(bridge.listener_address("fcgi-tcp"), path, headers={"Host": "shop.test"})


def test_each_new_worker_answers_the_check_before_it_takes_requests(site):
    """Sent straight to each new worker, with the route's Host, from 127.0.0.1, marked as
    the bridge's; not counted as a served request. A healthy deploy rolls out."""
    bridge, _ = site
    seen = checks(bridge)
    assert len(seen) == 2, seen
    # Marked in the environ (WSGI) or the scope (ASGI), never by a header: any client
    # could send one.
    wsgi = bridge.config["pools"]["shop"]["interface"] == "wsgi"
    assert seen[0] == {"FCGIBRIDGE_READY_CHECK": "1" if wsgi else None, "scope": None if wsgi else True,
                       "HTTP_HOST": "shop.test", "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "fcgibridge ready-check",
                       "PATH_INFO": "/ready/", "QUERY_STRING": "from=bridge"}
    assert [w["requests"] for w in ready_workers(bridge)] == [0, 0]
    out = cli_reload(bridge, "--restart-workers", "shop", "--wait")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.endswith("rollout done: shop (2 workers ready)\n"), out.stdout
    assert len(checks(bridge)) == 4
    r = get(bridge, "/health/")
    assert (r.status, r.body) == (200, b"ok")


def test_a_broken_view_module_fails_the_rollout_and_the_old_workers_serve_on(site):
    bridge, views = site
    old = {w["pid"] for w in ready_workers(bridge)}
    good = views.read_text()
    # views.py no longer compiles: the workers still import (wsgi.py does not import the
    # URLconf), report READY, and only a request finds the error.
    views.write_text(good + "\ndef broken(:\n")
    mark = bridge.log.mark()
    out = cli_reload(bridge, "--restart-workers", "shop", "--wait")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "pool shop: rollout-failing: its new workers cannot start, the previous ones serve on" in out.stderr, out.stderr
    assert "worker failed to start: ready-check GET /ready/?from=bridge answered 500 Internal Server Error: " \
           "SyntaxError: " in out.stderr, out.stderr
    bridge.log.wait_for([r"ERROR", r"worker failed to start: ready-check GET /ready/\?from=bridge answered 500",
                         r"SyntaxError", r'pool="?shop'], since=mark)
    # Django's traceback is in the log, with the worker's pid.
    bridge.log.wait_for([r'views\.py", line \d+', r'pool="?shop'], since=mark)
    # The old workers serve on, with the code they imported.
    for _ in range(4):
        r = get(bridge, "/health/")
        assert (r.status, r.body) == (200, b"ok")
    assert {w["pid"] for w in ready_workers(bridge)} == old
    assert bridge.pool_status("shop")["state"] == "rollout-failing"
    # Fixed: the rollout goes through.
    views.write_text(good)
    out = cli_reload(bridge, "--restart-workers", "shop", "--wait=3m")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert not old & {w["pid"] for w in ready_workers(bridge)}


def of_pid(lines, pid):
    return [ln for ln in lines if re.search(rf"\bpid={pid}\b", ln)]


def test_the_reason_is_the_tracebacks_exception_however_long_and_it_is_logged_whole(site):
    """Python 3.11 draws ^^^^ under each frame's code, and with a stack of middleware and
    Django's chained exceptions the traceback of a views.py that does not compile passes 400
    lines. The reason is still its exception line; the first failure logs the traceback
    whole, in order, before its own line; the retries log none of it."""
    bridge, views = site
    settings = views.parent / "settings.py"
    settings.write_text(settings.read_text().replace(
        "MIDDLEWARE = [", "MIDDLEWARE = [\n" + '    "django.middleware.gzip.GZipMiddleware",\n' * 8))
    views.write_text(views.read_text()
                     + "\n\ndef broken(request):\n    return HttpResponse(request.GET.get('x').strip() + )\n")
    mark = bridge.log.mark()
    out = cli_reload(bridge, "--restart-workers", "shop", "--wait")
    assert out.returncode == 1, (out.stdout, out.stderr)
    reason = "ready-check GET /ready/?from=bridge answered 500 Internal Server Error: SyntaxError: invalid syntax"
    assert f"worker failed to start: {reason}" in out.stderr, out.stderr
    assert bridge.pool_status("shop")["start_error"].startswith(reason)
    status = subprocess.run([str(bridge.binary), "status", "--config", str(bridge.confdir)],
                            capture_output=True, text=True, timeout=60)
    assert f"pool shop (rollout-failing): worker failed to start: {reason}" in status.stdout, status.stdout
    again = bridge.log.wait_for([r"worker failed to start again, same error: " + re.escape(reason),
                                 re.escape("(its output is not repeated; see the first failure)")],
                                since=mark, timeout=60)
    lines = bridge.log.lines(mark)
    failed = next(i for i, ln in enumerate(lines) if "worker failed to start: " + reason in ln)
    pid = re.search(r"\bpid=(\d+)", lines[failed]).group(1)
    said = of_pid(lines[:failed], pid)
    # (An ASGI worker says first that Django takes no lifespan events.)
    said = said[next(i for i, ln in enumerate(said) if "Traceback (most recent call last):" in ln):]
    assert len(said) > 400, len(said)
    assert "SyntaxError: invalid syntax" in said[-1], said[-1]
    # A failed request's report, at ERROR like any request's traceback.
    assert [ln for ln in said if " ERROR " not in ln] == [], "every line of the traceback at ERROR"
    assert re.search(r'views\.py", line \d+', said[-4]) and "^" in said[-2], said[-4:]
    assert not [ln for ln in of_pid(lines[failed + 1:], pid)], "nothing of it after its failure"
    for line in again:
        retried = re.search(r"\bpid=(\d+)", line).group(1)
        assert [ln for ln in of_pid(lines, retried) if "worker started" not in ln] == [line]


FLASK_APP = """
import os

from flask import Flask

app = Flask(__name__)


def down(n):
    return up(n - 1) if n else int("not a number")


def up(n):
    return down(n)


@app.route("/healthz")
def healthz():
    if os.path.exists(os.path.join(os.environ["FCGIBRIDGE_TEST_DIR"], "broken")):
        return down(120)
    return "ok"
"""


def test_a_flask_view_that_raises_is_named_by_its_exception_from_the_apps_logging_record(tmp_path):
    """Flask logs the exception through `logging` (one marked JSON record on the worker's
    stderr, its traceback here over 16 KiB): the reason is the exception line of that record,
    read whole, and the record is logged as the app's error."""
    (tmp_path / "app.py").write_text(FLASK_APP)
    (port,) = harness.free_ports(1)
    pools = {"api": harness.pool(f"{tmp_path / 'app.py'}:app", processes=1,
                                 **{"ready-check": "/healthz", "startup-timeout": "60s"})}
    listeners = {"fcgi-tcp": {"fastcgi": f"127.0.0.1:{port}", "routes": [{"pool": "api"}]}}
    bridge = harness.make_bridge(tmp_path, pools, listeners)
    bridge.start()
    try:
        harness.wait_until(lambda: [w for w in bridge.pool_status("api")["workers"] if w["state"] == "idle"],
                           60, 0.2, what="the worker ready")
        (tmp_path / "broken").write_text("")
        mark = bridge.log.mark()
        out = cli_reload(bridge, "--restart-workers", "api", "--wait")
        assert out.returncode == 1, (out.stdout, out.stderr)
        reason = ("ready-check GET /healthz answered 500 INTERNAL SERVER ERROR: "
                  "ValueError: invalid literal for int() with base 10: 'not a number' (body: <!doctype html>)")
        assert f"worker failed to start: {reason}" in out.stderr, out.stderr
        assert bridge.pool_status("api")["start_error"] == reason
        lines = bridge.log.lines(mark)
        failed = next(i for i, ln in enumerate(lines) if "worker failed to start: " in ln)
        pid = re.search(r"\bpid=(\d+)", lines[failed]).group(1)
        said = [ln for ln in of_pid(lines[:failed], pid) if "worker started" not in ln]
        assert "ERROR app: Exception on /healthz [GET]" in said[0], said[0]
        assert "ERROR app: ValueError: invalid literal for int() with base 10: 'not a number'" in said[-1], said[-1]
        assert sum('app.py", line' in ln for ln in said) > 240
    finally:
        bridge.stop()

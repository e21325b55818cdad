"""`fcgibridge check` and `fcgibridge request` from the command line."""
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import APPS, bridge_binary


def run(*args, timeout=60, **kw):
    return subprocess.run([str(bridge_binary()), *args], capture_output=True, text=True, timeout=timeout, **kw)


def write_conf(tmp_path, files: dict) -> Path:
    d = tmp_path / "conf.d"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


# The bridge refuses root workers unless a pool allows them (CI runs as root).
ROOT_OK = "    allow-root: true\n" if os.geteuid() == 0 else ""

GOOD = {
    # The unix listener's directory is the runtime-dir: `run` creates it, `check` needs it not.
    "10-bridge.yaml": "bridge:\n  log-level: info\n  access-log: \"-\"\n  runtime-dir: /tmp/fcgibridge-check-test\n",
    "20-pools.yaml": (
        "pools:\n"
        "  flask:\n"
        f"    app: {APPS / 'flask_app.py'}\n"
        "    processes: 3\n"
        "    threads: 5\n"
        + ROOT_OK +
        "    env:\n"
        "      GREETING: hello\n"
        "  django:\n"
        "    app: mysite.wsgi:application\n"
        f"    chdir: {APPS / 'djproject'}\n"
        "    queue-timeout: 1m30s\n"
        + ROOT_OK
    ),
    "30-listeners.yaml": (
        "listeners:\n"
        "  front-fcgi-unix:\n"
        "    fastcgi: unix:/tmp/fcgibridge-check-test/fcgi.sock\n"
        "    pool: flask\n"
        "  front-fcgi-tcp:\n"
        "    fastcgi: 127.0.0.1:9411\n"
        "    routes:\n"
        "      - {prefix: /dj, pool: django}\n"
        "      - {pool: flask}\n"
        "  front-scgi:\n"
        "    scgi: 127.0.0.1:9412\n"
        "    pool: flask\n"
        "    max-params: 64KiB\n"
    ),
}


def test_check_good_config_prints_effective_config(tmp_path):
    d = write_conf(tmp_path, GOOD)
    r = run("check", "--config", str(d))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("flask", "django", "front-fcgi-unix", "front-fcgi-tcp", "front-scgi",
                   str(APPS / "flask_app.py"), "mysite.wsgi:application", str(APPS / "djproject"),
                   "127.0.0.1:9411", "127.0.0.1:9412", "/tmp/fcgibridge-check-test/fcgi.sock", "GREETING", "/dj"):
        assert needle in out, f"{needle!r} missing from:\n{out}"
    # defaults are written out
    for key in ("processes", "threads", "queue-size", "queue-timeout", "startup-timeout", "max-params", "backlog"):
        assert key in out, f"default {key} not shown:\n{out}"
    # human durations and sizes come back in the same units
    django = out[out.index("django:"):]
    assert re.search(r"queue-timeout: (1m30s|90s)\b", django), django[:400]
    scgi = out[out.index("front-scgi:"):]
    assert re.search(r"max-params: (64KiB|65536)\b", scgi), scgi[:300]


def test_check_output_is_a_config_that_checks_the_same(tmp_path):
    d = write_conf(tmp_path, GOOD)
    first = run("check", "--config", str(d))
    assert first.returncode == 0, first.stderr
    again = tmp_path / "again"
    again.mkdir()
    (again / "00-effective.yaml").write_text(first.stdout)
    second = run("check", "--config", str(again))
    assert second.returncode == 0, second.stderr
    # identical apart from the header comment naming the directory
    strip = lambda s: [ln for ln in s.splitlines() if not ln.startswith("#")]  # noqa: E731
    assert strip(second.stdout) == strip(first.stdout)


@pytest.mark.parametrize("name,text,where,key,hint", [
    ("40-typo.yaml", "pools:\n  extra:\n    app: x.py\n    procesess: 2\n", ":4:5", "procesess", '"processes"'),
    ("40-typo.yaml", "bridge:\n  log_level: debug\n", ":2:3", "log_level", '"log-level"'),
    ("40-typo.yaml", "listeners:\n  l2:\n    fastcgi: 127.0.0.1:9413\n    pool: flask\n    max-param: 4KiB\n",
     ":5:5", "max-param", '"max-params"'),
    ("40-typo.yaml", "listeners:\n  l2:\n    scgi: 127.0.0.1:9413\n    pool: flsk\n", ":4:5", "pool", '"flask"'),
])
def test_check_bad_config_names_file_line_column_key_and_hint(tmp_path, name, text, where, key, hint):
    files = dict(GOOD)
    files[name] = text
    if "app: x.py" in text:
        (tmp_path / "conf.d").mkdir(exist_ok=True)
        (tmp_path / "conf.d" / "x.py").write_text("application = None\n")
    d = write_conf(tmp_path, files)
    r = run("check", "--config", str(d))
    assert r.returncode != 0
    err = r.stderr + r.stdout
    assert f"{name}{where}" in err, err
    assert key in err, err
    assert "did you mean" in err and hint in err, err


def test_check_bad_duration_and_yaml_syntax(tmp_path):
    files = dict(GOOD)
    files["40-bad.yaml"] = "pools:\n  slow:\n    app: mysite.wsgi:application\n    queue-timeout: 30 parsecs\n"
    r = run("check", "--config", str(write_conf(tmp_path, files)))
    assert r.returncode != 0
    assert "40-bad.yaml:4:" in r.stderr and "queue-timeout" in r.stderr, r.stderr

    (tmp_path / "conf.d" / "40-bad.yaml").write_text("pools: {slow: [\n")
    r = run("check", "--config", str(tmp_path / "conf.d"))
    assert r.returncode != 0
    assert "40-bad.yaml:" in r.stderr, r.stderr


def test_check_refuses_what_run_could_not_open_or_bind(tmp_path):
    """An access log or log file in a missing directory, and a listener on the status
    listener's address, passed `check` and then failed `run` (or its log went to stderr)."""
    files = dict(GOOD)
    files["10-bridge.yaml"] = (
        "bridge:\n"
        f"  access-log: {tmp_path}/no-logs/access.log\n"
        f"  log-file: {tmp_path}/no-logs/bridge.log\n"
        "  status: {listen: 127.0.0.1:9411}\n"
        "  runtime-dir: /tmp/fcgibridge-check-test\n"
    )
    d = write_conf(tmp_path, files)
    r = run("check", "--config", str(d))
    assert r.returncode == 1, r.stdout
    missing = f"directory {tmp_path}/no-logs does not exist; create it before the bridge starts (systemd: LogsDirectory=)"
    assert r.stderr.splitlines() == [
        f"{d}/10-bridge.yaml:2:3: bridge.access-log: cannot open access log {tmp_path}/no-logs/access.log: {missing}",
        f"{d}/10-bridge.yaml:3:3: bridge.log-file: cannot open log-file {tmp_path}/no-logs/bridge.log: {missing}",
        f"{d}/30-listeners.yaml:6:5: listeners.front-fcgi-tcp.fastcgi: address already used by the status "
        f"listener (bridge.status.listen at {d}/10-bridge.yaml:4:12)",
    ], r.stderr
    # run refuses it the same way, before binding anything
    r = run("run", "--config", str(d))
    assert r.returncode == 2 and f"fcgibridge: {d}/10-bridge.yaml:2:3: bridge.access-log: " in r.stderr, r.stderr


def test_check_refuses_a_missing_worker_module_as_run_does(tmp_path):
    """Without the native worker module `run` stops at start-up; `check` passed (only
    `check --import` failed). The module is looked for where run looks: FCGIBRIDGE_WORKER_LIB,
    else next to the binary."""
    d = write_conf(tmp_path, {"50-app.yaml": (
        f"bridge:\n  runtime-dir: {tmp_path}/run\n"
        f"pools:\n  app:\n    app: {APPS / 'edge_app.py'}\n{ROOT_OK}"
        f"listeners:\n  front:\n    fastcgi: unix:{tmp_path}/front.sock\n    pool: app\n")})
    # A binary of its own, in a directory without the module (a hard link: current_exe()
    # is the path it was started by).
    alone = tmp_path / "bin"
    alone.mkdir()
    try:
        os.link(bridge_binary(), alone / "fcgibridge")
    except OSError:
        import shutil
        shutil.copy2(bridge_binary(), alone / "fcgibridge")
    bare_env = {k: v for k, v in os.environ.items() if k != "FCGIBRIDGE_WORKER_LIB"}
    for binary, missing, env in [
        (bridge_binary(), tmp_path / "nowhere.so", dict(os.environ, FCGIBRIDGE_WORKER_LIB=str(tmp_path / "nowhere.so"))),
        (alone / "fcgibridge", alone / "libfcgibridge_worker.so", bare_env),
    ]:
        error = f"the native worker module was not found at {missing}: "
        checked = subprocess.run([str(binary), "check", "--config", str(d)], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert checked.returncode == 1, checked.stderr
        said = [ln for ln in checked.stderr.splitlines() if error in ln]
        assert len(said) == 1 and said[0].startswith(f"fcgibridge: {error}"), checked.stderr
        ran = subprocess.run([str(binary), "run", "--config", str(d)], env=dict(env, NO_COLOR="1"),
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 1, ran.stderr
        # The same message.
        assert said[0].removeprefix("fcgibridge: ") in ran.stderr, (checked.stderr, ran.stderr)
    # With the module there, check passes.
    ok = run("check", "--config", str(d))
    assert ok.returncode == 0, ok.stderr


def test_check_names_every_error_of_every_file(tmp_path):
    files = dict(GOOD)
    files["40-bad.yaml"] = "pools:\n  slow:\n    app: mysite.wsgi:application\n    queue-timeout: 30 parsecs\n" + ROOT_OK
    files["50-typo.yaml"] = "pools:\n  extra:\n    app: mysite.wsgi:application\n    thread: 2\n" + ROOT_OK
    files["60-listen.yaml"] = "listeners:\n  files:\n    fastcgi: 127.0.0.1:1\n    pool: flask\n    file-handoff: serve\n"
    r = run("check", "--config", str(write_conf(tmp_path, files)))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert [re.match(r".*/(\d\d-[a-z]+\.yaml):", ln).group(1) for ln in lines] == \
        ["40-bad.yaml", "50-typo.yaml", "60-listen.yaml"], r.stderr
    assert "queue-timeout" in lines[0] and "thread" in lines[1] and "file-roots" in lines[2], r.stderr


def test_a_bad_value_in_a_merged_anchor_is_its_pool_s_one_error(tmp_path):
    """The error is placed at the bad value in the anchor, named as the pool's key; only that
    value is set aside, so the anchor's other keys (allow-root, its app) still reach the pool
    and are not reported missing, while a wrong key of the pool itself still is."""
    files = dict(GOOD)
    files["40-anchor.yaml"] = (
        "x-common: &common {app: mysite.wsgi:application, allow-root: true, max-requests: 5k}\n"
        "pools:\n"
        "  shop:\n"
        "    <<: *common\n"
        "    threads: 0\n"
    )
    r = run("check", "--config", str(write_conf(tmp_path, files)))
    assert r.returncode != 0
    lines = [ln.split("40-anchor.yaml:", 1)[1] for ln in r.stderr.strip().splitlines()]
    assert len(lines) == 2 and lines[0].startswith("1:82: pools.shop.max-requests: ") and \
        lines[0].endswith(" (in &common, merged here at line 4)") and \
        lines[1].startswith("5:5: pools.shop.threads: must be 1 or more"), r.stderr


FOUR_MISTAKES = (
    "pools:\n"
    "  extra:\n"
    "    app: mysite.wsgi:application\n"
    "    threads: 0\n"              # a value below its bound
    "    processes: many\n"         # a wrong type
    "    queue-timout: 5s\n"        # an unknown key
    "    startup-timeout: soon\n"   # a bad duration
    "    allow-root: true\n"        # (CI runs as root; harmless otherwise)
    "listeners:\n"
    "  l2:\n"
    "    fastcgi: 127.0.0.1:9414\n"
    "    pool: flask\n"
    "    backlog: 0\n"
    "    dialect: klingon\n"
    "    mount: app\n"
    "    socket-mode: '0600'\n"
)


@pytest.mark.parametrize("command", ["check", "run"])
def test_every_mistake_of_one_file_in_one_run(tmp_path, command):
    """Issue 13 item 11: four mistakes in one pool, four keys of one listener, each with
    file:line:column, in one run; the bound is the real one; a syntax error in another file
    stops only that file, and says so."""
    files = dict(GOOD)
    files["40-four.yaml"] = FOUR_MISTAKES
    files["50-broken.yaml"] = "pools:\n  other: {app: x\n"
    r = run(command, "--config", str(write_conf(tmp_path, files)), timeout=60)
    assert r.returncode != 0
    lines = [re.sub(r"^.*/conf\.d/", "", ln) for ln in r.stderr.strip().splitlines()]
    # `run` writes its log line around each error
    lines = [re.sub(r"^.*?ERROR\s+\S+\s+", "", ln) for ln in lines]
    want = [
        "40-four.yaml:4:5: pools.extra.threads: must be 1 or more",
        "40-four.yaml:5:16: pools.extra.processes: expected a whole number from 1 to 4294967295",
        "40-four.yaml:6:5: pools.extra.queue-timout: unknown key; did you mean \"queue-timeout\"?",
        "40-four.yaml:7:22: pools.extra.startup-timeout: invalid duration \"soon\"",
        "40-four.yaml:13:5: listeners.l2.backlog: must be 1 or more",
        "40-four.yaml:14:5: listeners.l2.dialect: unknown web server \"klingon\"",
        "40-four.yaml:15:5: listeners.l2.mount: \"app\" must be a path starting with /",
        "40-four.yaml:16:5: listeners.l2.socket-mode: applies only to unix socket listeners",
        "50-broken.yaml:2:10: unclosed bracket",
    ]
    assert len(lines) == len(want), r.stderr
    for line, w in zip(lines, want):
        assert line.startswith(w), f"got:  {line}\nwant: {w}\n{r.stderr}"
    assert lines[-1].endswith("(the rest of this file is not checked until this is fixed)"), r.stderr


def test_run_refuses_a_bad_config(tmp_path):
    files = dict(GOOD)
    files["40-typo.yaml"] = "pools:\n  extra:\n    app: mysite.wsgi:application\n    thread: 2\n"
    r = run("run", "--config", str(write_conf(tmp_path, files)), timeout=60)
    assert r.returncode != 0
    assert "40-typo.yaml:4:5" in r.stderr + r.stdout


# ------------------------------------------------------------- request

def addr(bridge, listener):
    a = bridge.listener_address(listener)
    return f"unix:{a}" if isinstance(a, str) else f"{a[0]}:{a[1]}"


def test_request_fastcgi_get(bridge):
    r = run("request", addr(bridge, "fcgi-tcp"), "/environ?x=1", "-H", "Host: edge.test", "-H", "X-Cli: yes",
            "--param", "REMOTE_USER=alice", "-p", "HTTPS=on")
    assert r.returncode == 0, r.stderr
    assert "200" in r.stdout
    body = r.stdout[r.stdout.index("{"):]
    env = json.loads(body)
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "x=1"
    assert env["HTTP_X_CLI"] == "yes"
    assert env["REQUEST_METHOD"] == "GET"
    # params as a web server would set them
    assert env["REMOTE_USER"] == "alice" and env["wsgi.url_scheme"] == "https"


def test_request_fastcgi_unix_post_body(bridge, tmp_path):
    r = run("request", addr(bridge, "fcgi-unix"), "/upload", "-X", "POST", "-H", "Host: edge.test",
            "-d", "hello from the cli")
    assert r.returncode == 0, r.stderr
    import hashlib
    assert hashlib.sha256(b"hello from the cli").hexdigest() in r.stdout
    f = tmp_path / "body.bin"
    f.write_bytes(b"\x00\x01" * 5000)
    r = run("request", addr(bridge, "fcgi-unix"), "/upload", "-X", "POST", "-H", "Host: edge.test",
            "-d", f"@{f}")
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(b"\x00\x01" * 5000).hexdigest() in r.stdout
    assert '"size": 10000' in r.stdout


@pytest.mark.parametrize("listener", ["scgi-tcp", "scgi-unix"])
def test_request_scgi(bridge, listener):
    tag = uuid.uuid4().hex
    r = run("request", "--scgi", addr(bridge, listener), f"/environ?tag={tag}", "-H", "Host: edge.test")
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout[r.stdout.index("{"):])
    assert env["QUERY_STRING"] == f"tag={tag}"
    assert env["PATH_INFO"] == "/environ"


def test_request_to_flask_and_django_through_routes(bridge):
    r = run("request", addr(bridge, "fcgi-tcp"), "/", "-H", "Host: flask.test")
    assert r.returncode == 0 and "hello from flask" in r.stdout, r.stdout + r.stderr
    r = run("request", addr(bridge, "fcgi-tcp"), "/", "-H", "Host: django.test")
    assert r.returncode == 0 and "Django behind fcgibridge" in r.stdout, r.stdout + r.stderr


def test_request_shows_error_status(bridge):
    r = run("request", addr(bridge, "fcgi-tcp"), "/nothing-here", "-H", "Host: edge.test")
    assert "404" in r.stdout + r.stderr


def test_request_to_a_closed_port_fails_cleanly():
    from harness import free_ports
    port = free_ports(1)[0]
    r = run("request", f"127.0.0.1:{port}", "/")
    assert r.returncode != 0
    assert "panicked" not in r.stderr
    assert str(port) in r.stderr or "refused" in r.stderr.lower(), r.stderr


# ------------------------------------------------------------- the shipped conf.d

def test_shipped_conf_d_is_valid():
    from harness import REPO
    r = run("check", "--config", str(REPO / "conf.d"))
    # valid for root too: the demo pool says allow-root, so the README's command works anywhere
    assert r.returncode == 0, r.stderr
    assert "listeners:" in r.stdout and "pools:" in r.stdout


def test_shipped_demo_serves_over_fastcgi_and_scgi(tmp_path):
    """The README's first command, on free ports: the bundled conf.d and demo app answer
    `fcgibridge request` over FastCGI and SCGI, the status page answers HTTP, and
    `fcgibridge status` finds the daemon with no flag at all (./conf.d is the default)."""
    import re
    import socket as so
    import urllib.request
    from harness import REPO, Bridge, free_ports, wait_until
    conf = tmp_path / "conf.d"
    conf.mkdir()
    # keep the shipped files' relative paths working: the repo's other top-level dirs beside us
    for entry in REPO.iterdir():
        if entry.name not in ("conf.d", "target", ".git") and not (tmp_path / entry.name).exists():
            (tmp_path / entry.name).symlink_to(entry)
    addresses = {}
    for f in sorted((REPO / "conf.d").glob("*.yaml")):
        text = f.read_text()

        def fresh(m):
            port = free_ports(1)[0]
            addresses[m.group(0)] = f"127.0.0.1:{port}"
            return addresses[m.group(0)]

        text = re.sub(r"127\.0\.0\.1:\d+", fresh, text)
        if os.geteuid() == 0:  # root workers need the pool's consent
            text = text.replace("{app:", "{allow-root: true, app:")
        (conf / f.name).write_text(text)
    status_addr = addresses.pop("127.0.0.1:9002", None)
    assert status_addr, "the shipped conf.d has no status listener on 127.0.0.1:9002"
    assert addresses, "the shipped conf.d listens on no TCP address?"
    b = Bridge(tmp_path, None, name="demo", confdir=conf)
    try:
        b.start()
        for addr in [*addresses.values(), status_addr]:
            host, port = addr.split(":")

            def up():
                b.assert_running()
                with so.socket() as s:
                    return s.connect_ex((host, int(port))) == 0

            wait_until(up, 60, what=f"demo listener {addr}")
        ok = 0
        for addr in addresses.values():
            for scgi in (False, True):
                args = ["request", addr, "/"] + (["--scgi"] if scgi else [])
                r = run(*args)
                if r.returncode == 0 and " 200 " in r.stdout.splitlines()[0] + " ":
                    ok += 1
        # every listener answers in its own protocol (and only in it)
        assert ok == len(addresses), (ok, addresses, b.log.text()[-3000:])
        with urllib.request.urlopen(f"http://{status_addr}/status?json", timeout=30) as resp:
            doc = json.loads(resp.read())
            assert "demo" in json.dumps(doc["pools"]), doc
        with urllib.request.urlopen(f"http://{status_addr}/metrics", timeout=30) as resp:
            assert b"fcgibridge_" in resp.read()
        # no --config: ./conf.d in the working directory, and the command says so
        r = run("status", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "demo" in r.stdout and "conf.d" in r.stderr, (r.stdout, r.stderr)
        # `top`: two screens into a pipe, the second with per-second rates
        r = run("top", "--count", "2", "--interval", "200ms", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("POOL") >= 3 and "REQ/S" in r.stdout, r.stdout
    finally:
        b.stop()


@pytest.mark.parametrize("command", [["status"], ["top"], ["reload"], ["stop"], ["stop-instance", "t", "k"]])
def test_every_control_command_says_what_socket_means(command):
    r = run(*command, "--help")
    assert r.returncode == 0, r.stderr
    line = next((ln for ln in r.stdout.splitlines() if "--socket" in ln), "")
    assert "control socket" in line, r.stdout


@pytest.mark.parametrize("command", [["status"], ["check"], ["reload"]])
def test_an_unrelated_conf_d_in_the_working_directory_is_not_taken_for_the_configuration(tmp_path, command):
    """Run from /etc/nginx (its conf.d holds *.conf files): the command says where it looked
    and which --config to pass, instead of `conf.d: no *.yaml files found`."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "default.conf").write_text("server { listen 80; }\n")
    env = {k: v for k, v in os.environ.items() if k != "FCGIBRIDGE_CONFIG"}
    r = run(*command, cwd=tmp_path, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"fcgibridge: no --config given and $FCGIBRIDGE_CONFIG unset, so ./conf.d was tried: "
                               f"{tmp_path / 'conf.d'} has no *.yaml files"), r.stderr
    assert "--config /etc/fcgibridge/conf.d" in r.stderr, r.stderr


@pytest.mark.parametrize("command", [("reload",), ("reload", "--restart-workers"), ("status",)])
def test_a_listener_s_socket_given_as_the_control_socket_is_said_to_be_one(bridge, command):
    """`--socket` naming a FastCGI listener's socket by mistake: said at once (well within the
    listener's 60s header-timeout, which the command waited for), not `unexpected answer ""`."""
    import time
    sock = bridge.listener_address("fcgi-unix")
    started = time.monotonic()
    r = run(*command, "--socket", sock, timeout=120)
    took = time.monotonic() - started
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{sock} does not answer as fcgibridge's control socket" in r.stderr, r.stderr
    assert "unexpected answer" not in r.stderr
    assert took < 45, f"took {took:.0f}s"
    # the real one still answers
    r = run("reload", "--config", str(bridge.confdir), timeout=120)
    assert r.returncode == 0 and "reload done" in r.stdout, r.stdout + r.stderr

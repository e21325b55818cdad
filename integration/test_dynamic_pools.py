"""Pool templates (docs/dynamic-pools.md): a pool per virtual host or per user, made by the
first request for its key, behind real nginx, lighttpd and Apache; hostile keys refused
with nothing spawned; idle reaping; max-instances with LRU eviction and 503; spawn-rate;
a burst of random names; two interpreters; a key whose interpreter hangs; queue-timeout once
the first worker serves; per-user accounts, looked up again once the workers have gone and at
a reload; reload and stop-instance.

The front ends run the `test-snippet` blocks of docs/dynamic-pools.md."""
from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from harness import (APPS, REPO, Bridge, can_connect, free_ports, make_bridge, nginx_conf, start_nginx,
                     stop_process, to_yaml, wait_until)
import fcgi_client
import harness
from servers.frontends import find_binary, substitute

DOC = REPO / "docs" / "dynamic-pools.md"
SYSTEM_PYTHON = "/usr/bin/python3"


def snippet(name: str) -> str:
    """The fenced block after `<!-- test-snippet: name -->` in docs/dynamic-pools.md."""
    m = re.search(r"<!-- test-snippet: " + re.escape(name) + r" -->\s*\n```[^\n]*\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, f"docs/dynamic-pools.md: no test-snippet {name!r}"
    return m.group(1) + "\n"


def make_sites(root: Path, hosts, mode=0o755) -> Path:
    """root/sites/<host>/app.py for each host (a copy of apps/site_app.py)."""
    sites = root / "sites"
    for h in hosts:
        d = sites / h
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(APPS / "site_app.py", d / "app.py")
        for p in (root, sites, d):
            p.chmod(mode)
        (d / "app.py").chmod(0o644)
    return sites


def template(sites: Path, block=None, **keys) -> dict:
    spec = {"template": block or {"max-instances": 16}, "app": f"{sites}/{{host}}/app.py",
            "threads": 2, "max-processes": 1}
    spec.update(keys)
    return spec


def start_bridge(tmp_path, pools, port=None, extra=None) -> Bridge:
    port = port or free_ports(1)[0]
    b = make_bridge(tmp_path, pools, {"web": {"fastcgi": f"127.0.0.1:{port}", "pool": next(iter(pools))}},
                    bridge_extra=extra)
    b.start()
    wait_until(lambda: b.assert_running() or can_connect(("127.0.0.1", port)), 60, what="bridge listening")
    return b


def get(b: Bridge, host: str, path="/", **kw) -> fcgi_client.Response:
    headers = dict(kw.pop("headers", {}) or {})
    headers["Host"] = host
    return fcgi_client.fcgi_request(b.listener_address("web"), path, headers=headers, **kw)


def instances(b: Bridge) -> dict:
    """key -> pool status of every live instance (`fcgibridge status --json`)."""
    r = subprocess.run([str(b.binary), "status", "--json", "--config", str(b.confdir)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {p["instance"]["key"]: p for p in json.loads(r.stdout)["pools"] if p.get("instance")}


def new_instance_lines(b: Bridge, since=0) -> list[str]:
    return [ln for ln in b.log.lines(since) if "new instance of template" in ln]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# ------------------------------------------------------------------ the shipped example

def test_the_shipped_example_runs_as_it_is(tmp_path):
    confdir = REPO / "examples" / "per-host" / "conf.d"
    if can_connect(("127.0.0.1", 9100)):
        pytest.skip("127.0.0.1:9100 (the example's port) is taken")
    restart = confdir.parent / "sites" / "alpha.test" / "restart.txt"
    restart.unlink(missing_ok=True)
    b = Bridge(tmp_path, None, confdir=confdir)
    b.start()
    try:
        addr = ("127.0.0.1", 9100)
        wait_until(lambda: b.assert_running() or can_connect(addr), 60, what="the example's listener")
        bodies = {}
        for host in ("alpha.test", "beta.test"):
            r = fcgi_client.fcgi_request(addr, "/", headers={"Host": host})
            assert r.status == 200, r.stdout
            m = re.fullmatch(rb"host=(\S+) pid=(\d+)", r.body)
            assert m and m.group(1).decode() == host, r.body
            bodies[host] = int(m.group(2))
            assert pid_alive(bodies[host])
        assert bodies["alpha.test"] != bodies["beta.test"]
        again = fcgi_client.fcgi_request(addr, "/", headers={"Host": "ALPHA.test:9100"})
        assert again.body == f"host=alpha.test pid={bodies['alpha.test']}".encode()
        assert fcgi_client.fcgi_request(addr, "/", headers={"Host": "gamma.test"}).status == 404
        b.log.wait_for(r"no site for key \"gamma.test\".*answering 404")
        assert len(new_instance_lines(b)) == 2
        # The example's control socket answers `status --config` as its header says.
        status = subprocess.run([str(harness.bridge_binary()), "status", "--config", str(confdir)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "sites[alpha.test]" in status.stdout and "sites[beta.test]" in status.stdout, status.stdout
        # Touching alpha.test's restart.txt, as the header says, gives it new workers.
        restart.touch()
        wait_until(lambda: fcgi_client.fcgi_request(addr, "/", headers={"Host": "alpha.test"}).body
                   != f"host=alpha.test pid={bodies['alpha.test']}".encode(), 60, what="alpha.test's new worker")
        assert fcgi_client.fcgi_request(addr, "/", headers={"Host": "beta.test"}).body == \
            f"host=beta.test pid={bodies['beta.test']}".encode()
    finally:
        b.stop()
        restart.unlink(missing_ok=True)


# ------------------------------------------------------------------ per host behind nginx

@pytest.fixture
def nginx_front(tmp_path):
    """An nginx running the documented per-host server block; call it with the bridge's port."""
    started = []

    def start(bridge_port: int, name="nginx") -> int:
        port = free_ports(1)[0]
        w = tmp_path / name
        w.mkdir()
        server = substitute(snippet(name), {"8080": port, "9100": bridge_port,
                                            "fastcgi_params": "/etc/nginx/fastcgi_params"})
        (w / "nginx.conf").write_text(nginx_conf(w, server))
        started.append(start_nginx(w, w / "nginx.conf"))
        wait_until(lambda: can_connect(("127.0.0.1", port)), 60, what="nginx listening")
        return port

    yield start
    for p in started:
        stop_process(p, timeout=20)


def pyenv_python(minor: str) -> str | None:
    """Python `minor` (pyenv's, else on PATH), as test_pythons discovers it; None when absent."""
    from test_pythons import FOUND
    return FOUND[minor][0] if minor in FOUND else None


def test_nginx_virtual_hosts_get_an_instance_each_with_their_own_python(tmp_path, nginx_front):
    py39, py312 = pyenv_python("3.9"), pyenv_python("3.12")
    if not (py39 and py312):
        pytest.skip("pyenv's 3.9 and 3.12 are not installed")
    hosts = ("alpha.test", "beta.test", "gamma.test")
    sites = make_sites(tmp_path, hosts)
    # Each site names its interpreter: a link in its directory.
    for host, py in zip(hosts, (py39, py312, py39)):
        os.symlink(py, sites / host / "python")
    b = start_bridge(tmp_path, {"sites": template(sites, python=f"{sites}/{{host}}/python")})
    try:
        port = nginx_front(b.listener_address("web")[1])
        seen = {}
        for host in hosts:
            r = requests.get(f"http://127.0.0.1:{port}/x", headers={"Host": host}, timeout=60)
            assert r.status_code == 200, r.text
            seen[host] = r.json()
            assert seen[host]["app"] == str(sites / host / "app.py")
        assert len({s["pid"] for s in seen.values()}) == 3
        assert [seen[h]["python"] for h in hosts] == ["3.9", "3.12", "3.9"]
        # The same host again, upper-cased and with a port: the same instance.
        r = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "Beta.TEST:80"}, timeout=60)
        assert r.json()["pid"] == seen["beta.test"]["pid"]
        live = instances(b)
        assert set(live) == set(hosts)
        assert live["alpha.test"]["name"] == "sites[alpha.test]"
        assert {w["pid"] for w in live["gamma.test"]["workers"]} == {seen["gamma.test"]["pid"]}
        # A host with no site: 404, nothing spawned.
        mark = b.log.mark()
        r = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "nosuch.test"}, timeout=60)
        assert r.status_code == 404
        b.log.wait_for(r'no site for key "nosuch.test": app file .* does not exist, answering 404.*listener="web".*request_id=.*peer="127.0.0.1"', mark)
        # Names nginx passes on but that are no host names: 400 from the bridge; nginx's own
        # refusals (a '/' in Host) never reach it. Nothing spawned either way.
        for bad, status in (("bad_name.test", 400), ("a" * 70 + ".test", 400), ("x/y", 400), ("1.2.3.4", 400)):
            r = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": bad}, timeout=60)
            assert r.status_code == status, (bad, r.status_code)
        assert set(instances(b)) == set(hosts)
        assert new_instance_lines(b) and len(new_instance_lines(b)) == 3
    finally:
        b.stop()


def test_nginx_per_path_recipe(tmp_path, nginx_front):
    sites = make_sites(tmp_path, ("alice", "bob"))
    b = start_bridge(tmp_path, {"userdirs": template(sites, {"allow": "[a-z][a-z0-9-]*"})})
    try:
        port = nginx_front(b.listener_address("web")[1], "nginx-per-path")
        seen = {}
        for name in ("alice", "bob"):
            r = requests.get(f"http://127.0.0.1:{port}/~{name}/page", timeout=60)
            assert r.status_code == 200, r.text
            seen[name] = r.json()
            assert seen[name]["app"] == str(sites / name / "app.py")
            assert (seen[name]["script_name"], seen[name]["path_info"]) == (f"/~{name}", "/page")
        assert seen["alice"]["pid"] != seen["bob"]["pid"]
        assert requests.get(f"http://127.0.0.1:{port}/~carol/", timeout=60).status_code == 404
        assert set(instances(b)) == {"alice", "bob"}
    finally:
        b.stop()


def start_userdirs(tmp_path):
    """alice's and bob's sites behind a `/~{user}` route to a template: (bridge, sites, port)."""
    sites = make_sites(tmp_path, ("alice", "bob"))
    spec = {"template": {}, "app": f"{sites}/{{user}}/app.py", "threads": 2, "max-processes": 1}
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"homes": spec},
                    {"web": {"fastcgi": f"127.0.0.1:{port}", "routes": [{"prefix": "/~{user}", "pool": "homes"}]}})
    b.start()
    try:
        wait_until(lambda: b.assert_running() or can_connect(("127.0.0.1", port)), 60, what="bridge listening")
    except BaseException:
        b.stop()
        raise
    return b, sites, port


def test_a_route_pattern_captures_the_key_from_the_path(tmp_path, nginx_front):
    b, sites, port = start_userdirs(tmp_path)
    try:
        front = nginx_front(port)
        seen = {}
        for name in ("alice", "bob"):
            r = requests.get(f"http://127.0.0.1:{front}/~{name}/page", timeout=60)
            assert r.status_code == 200, r.text
            seen[name] = r.json()
            assert seen[name]["app"] == str(sites / name / "app.py")
            assert (seen[name]["script_name"], seen[name]["path_info"]) == (f"/~{name}", "/page")
        assert seen["alice"]["pid"] != seen["bob"]["pid"]
        assert requests.get(f"http://127.0.0.1:{front}/~Alice/", timeout=60).status_code == 400
        assert requests.get(f"http://127.0.0.1:{front}/~carol/", timeout=60).status_code == 404
        assert requests.get(f"http://127.0.0.1:{front}/other", timeout=60).status_code == 404
        assert set(instances(b)) == {"alice", "bob"}
    finally:
        b.stop()


def test_a_redirect_is_followed_within_an_instance_never_into_another(tmp_path):
    """`/~{user}` gives each user an instance: alice's app may redirect within her own
    instance, but not send her visitor into bob's (the web server's access rules for /~bob
    would not run); bob's instance is not even started."""
    b, sites, port = start_userdirs(tmp_path)
    try:
        addr = ("127.0.0.1", port)
        r = fcgi_client.fcgi_request(addr, "/~alice/redirect", query="to=/~alice/page")
        assert r.status == 200, bytes(r.stdout)[:300]
        page = json.loads(r.body)
        assert page["app"] == str(sites / "alice" / "app.py") and page["path_info"] == "/page"
        mark = b.log.mark()
        r = fcgi_client.fcgi_request(addr, "/~alice/redirect", query="to=/~bob/page")
        assert r.status == 500 and b"bob" not in r.body, bytes(r.stdout)[:300]
        b.log.wait_for([r"internal redirect refused, answering 500: the target is pool homes\[bob\]'s",
                        r"pool=\"?homes\[alice\]", r"target_pool=\"?homes\[bob\]"], mark)
        assert set(instances(b)) == {"alice"}
    finally:
        b.stop()


HOSTILE = [
    (b"../x", 400), (b"a b", 400), (b"a\x00b", 400), (b"x/y", 400),
    (b"a" * 64 + b".test", 400), ((b"a" * 60 + b".") * 5 + b"test", 400), (b"10.0.0.1", 400),
    (b"[::1]:80", 400), (b"alpha.test/../beta.test", 400), (b"nosuch.test", 404),
]


def test_hostile_keys_are_refused_and_spawn_nothing(tmp_path):
    sites = make_sites(tmp_path, ("alpha.test",))
    # A directory named like a traversal target next to the sites: never reached.
    (tmp_path / "x").mkdir()
    shutil.copy(APPS / "site_app.py", tmp_path / "x" / "app.py")
    # Every refusal's own line is awaited: none summarised.
    b = start_bridge(tmp_path, {"sites": template(sites)}, extra={"log-rate-limit": False})
    try:
        for raw, status in HOSTILE:
            mark = b.log.mark()
            r = get(b, raw.decode("latin-1"))
            assert r.status == status, (raw, r.stdout[:200])
            b.log.wait_for(r"answering %d" % status, mark)
        # Upper case is folded: ALPHA.TEST is alpha.test, one instance.
        first = json.loads(get(b, "ALPHA.TEST").body)
        assert json.loads(get(b, "alpha.test.").body)["pid"] == first["pid"]
        assert set(instances(b)) == {"alpha.test"}
        assert len(new_instance_lines(b)) == 1
        # No Host at all: SERVER_NAME is not a site either.
        r = fcgi_client.fcgi_request(b.listener_address("web"), "/", headers=[("Host", "")])
        assert r.status == 404
        b.log.wait_for(r'no site for key "localhost"')
        assert len(new_instance_lines(b)) == 1
    finally:
        b.stop()


def test_a_burst_of_random_host_names_spawns_only_the_sites(tmp_path):
    sites = make_sites(tmp_path, ("alpha.test", "beta.test"))
    b = start_bridge(tmp_path, {"sites": template(sites, {"allow": r"[a-z0-9.-]+\.test"})},
                     extra={"log-rate-limit": True})
    try:
        assert get(b, "alpha.test").status == 200
        rss_before = b.status_of(b.pid, "VmRSS")
        rng = random.Random(12)
        names = []
        for i in range(500):
            kind = i % 5
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 40)))
            names.append({0: f"{word}.test", 1: f"{word}.example", 2: f"{word} /..", 3: word.upper() + ".test",
                          4: "beta.test" if i % 50 == 4 else f"{word}.{word}.test"}[kind])
        statuses = {}
        with fcgi_client.FcgiConnection(b.listener_address("web")) as conn:
            for n in names:
                r = conn.request("/", headers={"Host": n})
                statuses.setdefault(r.status, 0)
                statuses[r.status] += 1
        assert set(statuses) <= {200, 400, 404}, statuses
        assert statuses[200] == names.count("beta.test")
        assert set(instances(b)) == {"alpha.test", "beta.test"}
        assert len(new_instance_lines(b)) == 2
        rss_after = b.status_of(b.pid, "VmRSS")
        assert rss_after - rss_before < 16 << 20, (rss_before, rss_after)
        # The log summarises the refusals instead of one line each.
        b.log.wait_for(r"requests answered 404.*no site for the key|no site for the key.*requests answered 404")
    finally:
        b.stop()


# ------------------------------------------------------------------ life of instances

def test_an_idle_instance_is_reaped(tmp_path):
    sites = make_sites(tmp_path, ("alpha.test",))
    b = start_bridge(tmp_path, {"sites": template(sites, {"instance-idle-timeout": "2s"})})
    try:
        pid = json.loads(get(b, "alpha.test").body)["pid"]
        b.log.wait_for(r"instance idle for instance-idle-timeout \(2s\), stopping.*pool=\"?sites\[alpha\.test\]", timeout=60)
        wait_until(lambda: not instances(b), 60, what="the instance gone from status")
        wait_until(lambda: not pid_alive(pid), 60, what=f"worker {pid} gone")
        sockets = tmp_path / "run" / "pools" / "instance-1"
        wait_until(lambda: not sockets.exists(), 60, what="its socket directory removed")
        # The next request makes a new one.
        again = json.loads(get(b, "alpha.test").body)
        assert again["pid"] != pid
    finally:
        b.stop()


def test_an_instances_idle_clock_starts_when_its_last_request_ends(tmp_path):
    """instance-idle-timeout counts from the end of the last request: one that runs past the
    timeout leaves its instance 0 s idle meanwhile, and the whole timeout once it ends."""
    sites = make_sites(tmp_path, ("alpha.test",))
    b = start_bridge(tmp_path, {"sites": template(sites, {"instance-idle-timeout": "3s"})})
    release = tmp_path / "release"
    t, out = hold(b, "alpha.test", release)
    try:
        wait_until(lambda: instances(b).get("alpha.test", {}).get("active_requests") == 1, 60,
                   what="the request running")
        wait_until(lambda: instances(b)["alpha.test"]["instance"]["age_seconds"] > 4, 60,
                   what="the request running past instance-idle-timeout")
        assert instances(b)["alpha.test"]["instance"]["idle_seconds"] == 0
        mark = b.log.mark()
        released = time.monotonic()
        release.touch()
        t.join(60)
        assert out["r"].status == 200
        b.log.wait_for(r"instance idle for instance-idle-timeout \(3s\), stopping", mark, timeout=60)
        # The request ended after `released`: 3 s idle from then, not the next reaper tick.
        assert time.monotonic() - released >= 3
    finally:
        release.touch()
        t.join(60)
        b.stop()


def test_a_live_instance_whose_site_broke_answers_as_a_new_one(tmp_path):
    """Under live instances whose workers have gone: a site removed gets the 404 a new
    instance would get, not a 503 from a worker that cannot start; an interpreter replaced
    by one that is no Python gets the 500 a new instance would get once its worker failed;
    an unchanged site is served by its instance as it was."""
    hosts = ("gone.test", "broken.test", "same.test")
    sites = make_sites(tmp_path, hosts)
    for h in hosts:
        os.symlink(SYSTEM_PYTHON, sites / h / "python")
    spec = template(sites, python=f"{sites}/{{host}}/python", **{"idle-timeout": "1s"})
    b = start_bridge(tmp_path, {"sites": spec}, extra={"log-rate-limit": False})
    try:
        assert all(get(b, h).status == 200 for h in hosts)
        wait_until(lambda: not any(p["workers"] for p in instances(b).values()), 60, what="their workers idled out")
        shutil.rmtree(sites / "gone.test")
        (sites / "broken.test" / "python").unlink()
        (sites / "broken.test" / "python").write_text("#!/bin/sh\necho not python >&2\nexit 3\n")
        (sites / "broken.test" / "python").chmod(0o755)
        mark = b.log.mark()
        r = get(b, "gone.test")
        assert r.status == 404, r.stdout[:300]
        b.log.wait_for(r'looked at again before a new worker: no site for key "gone\.test": app file .* does not exist; '
                       r"the instance stops.*pool=\"?sites\[gone\.test\]", mark)
        assert get(b, "gone.test").status == 404
        # Its worker cannot start (503); looked at again, it is what a new instance would be.
        wait_until(lambda: get(b, "broken.test").status == 500, 60, interval=1.0, what="broken.test answered 500")
        b.log.wait_for(r'looked at again as its workers fail to start: instance "broken\.test" cannot be made: '
                       r".*is not a Python interpreter.*; the instance stops.*pool=\"?sites\[broken\.test\]", mark)
        assert set(instances(b)) == {"same.test"}
        assert get(b, "same.test").status == 200
        assert not [ln for ln in b.log.lines(mark) if "same.test" in ln
                    and ("rolling restart" in ln or "the next worker starts with it" in ln)]
    finally:
        b.stop()


def test_an_instances_ready_check_is_sent_with_its_host(tmp_path):
    """A site's app that checks its Host (Django's ALLOWED_HOSTS) answers its instance's
    ready-check: the path is sent with the instance's {host}."""
    sites = make_sites(tmp_path, ("alpha.test",))
    b = start_bridge(tmp_path, {"sites": template(sites, **{"ready-check": "/ready"})})
    try:
        r = get(b, "alpha.test")
        assert r.status == 200, (r.status, r.body, b.log.text()[-2000:])
        assert (tmp_path / "ready.log").read_text() == "alpha.test\n"
    finally:
        b.stop()


def hold(b: Bridge, host: str, release: Path):
    """A request for `host` kept busy in its worker until `release` exists (a thread)."""
    out = {}
    t = threading.Thread(target=lambda: out.update(r=get(b, host, "/hold", query=f"until={release}")))
    t.start()
    return t, out


def test_max_instances_evicts_the_least_recently_used_idle_one_else_503(tmp_path):
    hosts = ("alpha.test", "beta.test", "gamma.test")
    sites = make_sites(tmp_path, hosts)
    b = start_bridge(tmp_path, {"sites": template(sites, {"max-instances": 2}, threads=1, **{"slowlog-timeout": "500ms"})})
    try:
        assert get(b, "alpha.test").status == 200
        assert get(b, "beta.test").status == 200
        assert get(b, "beta.test").status == 200  # alpha is now the least recently used
        mark = b.log.mark()
        assert get(b, "gamma.test").status == 200
        b.log.wait_for(r"max-instances \(2\) reached: stopping the least recently used idle instance.*pool=\"?sites\[alpha\.test\]", mark)
        assert set(instances(b)) == {"beta.test", "gamma.test"}
        # Both live instances busy: a new key gets 503 with Retry-After, nothing spawned.
        release = tmp_path / "release"
        held = [hold(b, h, release) for h in ("beta.test", "gamma.test")]
        wait_until(lambda: all(p["active_requests"] == 1 for p in instances(b).values()), 60,
                   what="both instances busy")
        # An instance's requests are watched by the slowlog like a pool's.
        b.log.wait_for(r"slow request: GET /hold\?until=.*pool=\"?sites\[beta\.test\]", timeout=60)
        r = get(b, "alpha.test")
        assert r.status == 503 and r.header("Retry-After") == "1", r.stdout[:300]
        b.log.wait_for(r'new instance "alpha.test" refused: max-instances \(2\) live and none idle, answering 503')
        assert set(instances(b)) == {"beta.test", "gamma.test"}
        release.touch()
        for t, out in held:
            t.join(60)
            assert out["r"].status == 200
    finally:
        b.stop()


def test_spawn_rate_limits_new_instances(tmp_path):
    hosts = [f"s{i}.test" for i in range(6)]
    sites = make_sites(tmp_path, hosts)
    b = start_bridge(tmp_path, {"sites": template(sites, {"spawn-rate": 1})})
    try:
        results = {}
        threads = [threading.Thread(target=lambda h=h: results.update({h: get(b, h)})) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        refused = [h for h, r in results.items() if r.status == 503]
        assert refused, {h: r.status for h, r in results.items()}
        assert all(results[h].header("Retry-After") == "1" for h in refused)
        assert set(instances(b)) == {h for h, r in results.items() if r.status == 200}
        b.log.wait_for(r"refused: spawn-rate reached, answering 503")
        # Retried as told, every site gets its instance.
        for h in refused:
            wait_until(lambda h=h: get(b, h).status == 200, 60, interval=1.0, what=f"{h} served")
        assert set(instances(b)) == set(hosts)
    finally:
        b.stop()


def test_a_refused_name_spends_no_spawn_rate(tmp_path):
    sites = make_sites(tmp_path, ("good.test", "bad.test"))
    (sites / "bad.test" / "app.py").unlink()
    (sites / "bad.test" / "app.py").symlink_to(sites / "good.test" / "app.py")
    # Each site runs as its owner (the test's own account; root is allowed here).
    spec = template(sites, {"spawn-rate": 1, "min-uid": 0}, user="{owner}", **{"allow-root": True})
    b = start_bridge(tmp_path, {"sites": spec}, extra={"log-rate-limit": False})
    try:
        # A tenant hammering its bad name gets its 403 every time, looked at once...
        for i in range(10):
            r = get(b, "bad.test")
            assert r.status == 403, (i, r.status, r.stdout[:200])
        b.log.wait_for(r'instance "bad\.test" refused: .*app\.py is a symbolic link.*answering 403')
        b.log.wait_for(r'instance "bad\.test" refused: .*\(remembered for missing-cache\), answering 403')
        # ...and the one new instance a second is still there for a real site.
        r = get(b, "good.test")
        assert r.status == 200, r.stdout[:300]
        assert set(instances(b)) == {"good.test"}
    finally:
        b.stop()


def test_an_interpreter_that_hangs_holds_up_its_own_key_only(tmp_path):
    """One site's `python` hangs (a script that sleeps): its requests wait for one probe of
    10 s, then get the refusal remembered; another site's first request meanwhile is served
    at once, not behind the probes."""
    sites = make_sites(tmp_path, ("hang.test", "good.test"))
    os.symlink(SYSTEM_PYTHON, sites / "good.test" / "python")
    probing = tmp_path / "probing"
    hang = sites / "hang.test" / "python"
    hang.write_text(f"#!/bin/sh\ntouch {probing}\nsleep 30\n")
    hang.chmod(0o755)
    spec = template(sites, {"max-instances": 16, "missing-cache": "60s"}, python=f"{sites}/{{host}}/python")
    b = start_bridge(tmp_path, {"sites": spec}, extra={"log-rate-limit": False})
    hung = {}
    threads = [threading.Thread(target=lambda i=i: hung.update({i: get(b, "hang.test")})) for i in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(probing.exists, 60, what="the hanging interpreter probed")
        asked = time.monotonic()
        r = get(b, "good.test")
        took = time.monotonic() - asked
        assert r.status == 200, r.stdout[:300]
        # Behind one key-wide lock it would wait for four probes of 10 s each.
        assert took < 15, f"good.test took {took:.1f}s"
        for t in threads:
            t.join(120)
        assert [hung[i].status for i in range(4)] == [500] * 4
        line = r'instance "hang\.test" cannot be made: .*did not print its version within 10s'
        b.log.wait_for(line + r".*\(remembered for missing-cache\), answering 500")
        probes = [ln for ln in b.log.lines() if re.search(line, ln) and "remembered" not in ln]
        assert len(probes) == 1, probes
        assert set(instances(b)) == {"good.test"}
    finally:
        for t in threads:
            t.join(120)
        b.stop()


def test_queue_timeout_applies_once_the_first_worker_serves(tmp_path):
    """The request that makes an instance waits for its first worker up to startup-timeout;
    once a worker serves, a request waits queue-timeout, as in a written pool."""
    sites = make_sites(tmp_path, ("slow.test",))
    app = sites / "slow.test" / "app.py"
    app.write_text("import time\ntime.sleep(3)  # its first worker takes 3 s to start\n" + app.read_text())
    spec = template(sites, threads=1, **{"queue-timeout": "1s", "startup-timeout": "40s"})
    b = start_bridge(tmp_path, {"sites": spec}, extra={"log-rate-limit": False})
    release = tmp_path / "release"
    held = []
    try:
        r = get(b, "slow.test")
        assert r.status == 200, r.stdout[:300]
        held.append(hold(b, "slow.test", release))
        wait_until(lambda: instances(b)["slow.test"]["active_requests"] == 1, 60, what="the worker busy")
        asked = time.monotonic()
        r = get(b, "slow.test")
        took = time.monotonic() - asked
        assert r.status == 503 and took < 20, (r.status, took)
        b.log.wait_for(r"answering 503: no worker became free within 1s.*pool=\"?sites\[slow\.test\]")
    finally:
        release.touch()
        for t, _ in held:
            t.join(60)
        b.stop()
    assert held[0][1]["r"].status == 200


def test_a_reload_while_the_first_worker_starts_keeps_its_startup_wait(tmp_path):
    """A reload that reaches an instance whose first worker is still importing leaves the
    instance's requests waiting for it up to startup-timeout; queue-timeout applies once a
    worker is ready."""
    sites = make_sites(tmp_path, ("slow.test",))
    gate = tmp_path / "gate"
    app = sites / "slow.test" / "app.py"
    app.write_text(f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n"
                   + app.read_text())
    spec = template(sites, threads=1, **{"queue-timeout": "1s", "startup-timeout": "60s", "queue-size": 10})
    b = start_bridge(tmp_path, {"sites": spec}, extra={"log-rate-limit": False})
    first, later = {}, {}
    threads = [threading.Thread(target=lambda: first.update(r=get(b, "slow.test")))]
    try:
        threads[0].start()
        wait_until(lambda: "slow.test" in instances(b), 60, what="the instance made")
        spec["queue-size"] = 11
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        os.kill(b.pid, signal.SIGHUP)
        wait_until(lambda: instances(b)["slow.test"]["queue_size"] == 11, 60, what="the reload reaching the instance")
        assert "r" not in first, first["r"].status
        threads.append(threading.Thread(target=lambda: later.update(r=get(b, "slow.test"))))
        threads[1].start()
        wait_until(lambda: instances(b)["slow.test"]["queue_length"] == 2, 60, what="both requests queued")
        # Past its queue-timeout (1s) the later request still waits for the first worker.
        queued = time.monotonic()
        wait_until(lambda: "r" in later or time.monotonic() - queued > 3, 60, what="three seconds queued")
        assert "r" not in later, later["r"].status
        gate.touch()
        for t in threads:
            t.join(120)
        assert first["r"].status == 200 and later["r"].status == 200, (first["r"].status, later["r"].status)
        # A worker serves: a request waits queue-timeout again.
        held = hold(b, "slow.test", tmp_path / "release")
        threads.append(held[0])
        wait_until(lambda: instances(b)["slow.test"]["active_requests"] == 1, 60, what="the worker busy")
        r = get(b, "slow.test")
        assert r.status == 503, r.status
        b.log.wait_for(r"answering 503: no worker became free within 1s.*pool=\"?sites\[slow\.test\]")
    finally:
        gate.touch()
        (tmp_path / "release").touch()
        for t in threads:
            t.join(120)
        b.stop()


def test_one_slow_site_queues_its_share_not_every_connection_of_the_listener(tmp_path):
    sites = make_sites(tmp_path, ("slow.test", "other.test"))
    port = free_ports(1)[0]
    # 24 connections for at most 2 instances: 12 waiting for each by default.
    b = make_bridge(tmp_path, {"sites": template(sites, {"max-instances": 2}, threads=1)},
                    {"web": {"fastcgi": f"127.0.0.1:{port}", "pool": "sites", "max-connections": 24}},
                    bridge_extra={"log-rate-limit": False})
    # check says what an instance's queue holds: that is no pool's default.
    r = subprocess.run([str(b.binary), "check", "--config", str(b.confdir)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^    # queue-size: not set: 12 for each instance, its fair share of the connections of the "
                     r"listeners that lead to the template$", r.stdout, re.M), r.stdout
    b.start()
    wait_until(lambda: b.assert_running() or can_connect(("127.0.0.1", port)), 60, what="bridge listening")
    release = tmp_path / "release"
    held = []
    try:
        assert get(b, "slow.test").status == 200
        assert instances(b)["slow.test"]["queue_size"] == 12
        # One running, 12 waiting; the 7 past the queue are answered 503 at once.
        held = [hold(b, "slow.test", release) for _ in range(20)]
        wait_until(lambda: sum("r" in out for _, out in held) == 7, 60, what="the requests past the queue answered")
        assert [out["r"].status for _, out in held if "r" in out] == [503] * 7
        b.log.wait_for(r"queue full.*pool=\"?sites\[slow\.test\]")
        # The listener has connections left for the other site.
        r = get(b, "other.test")
        assert r.status == 200, r.stdout[:300]
    finally:
        release.touch()
        for t, _ in held:
            t.join(60)
        b.stop()
    assert sum(out.get("r") is not None and out["r"].status == 200 for _, out in held) == 13


# ------------------------------------------------------------------ operations

def test_a_reload_that_moves_a_listener_tells_a_live_instances_next_workers(tmp_path):
    """A live instance's workers are told the addresses of the listeners that lead to its
    template (FCGIBRIDGE_LISTENERS), as an ordinary pool's are. A reload that moves the listener
    serves the instance on the new address at once, and a worker it starts from then on is
    told that address — the instance is neither made again nor rolled for it."""
    sites = make_sites(tmp_path, ("alpha.test",))
    b = start_bridge(tmp_path, {"sites": template(sites)})
    try:
        old = b.listener_address("web")
        first = json.loads(get(b, "alpha.test").body)
        assert first["listeners"] == f"fastcgi: 127.0.0.1:{old[1]}", first
        port = free_ports(1)[0]
        b.config["listeners"]["web"]["fastcgi"] = f"127.0.0.1:{port}"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        out = subprocess.run([str(b.binary), "reload", "--config", str(b.confdir)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "instances rolled" not in out.stdout, out.stdout
        wait_until(lambda: can_connect(("127.0.0.1", port)), 60, what="the listener on its new address")
        # Not restarted for it: the same worker serves on the new address.
        assert json.loads(get(b, "alpha.test").body)["pid"] == first["pid"]
        # Its only worker gone, the next one starts after the reload.
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: not pid_alive(first["pid"]), 60, what="the old worker reaped")
        now = json.loads(get(b, "alpha.test").body)
        assert now["pid"] != first["pid"]
        assert now["listeners"] == f"fastcgi: 127.0.0.1:{port}", now
        assert len(new_instance_lines(b)) == 1, new_instance_lines(b)
        assert set(instances(b)) == {"alpha.test"}
    finally:
        b.stop()


def test_reload_rolls_the_instances_of_a_changed_template_without_a_failed_request(tmp_path):
    hosts = ("alpha.test", "beta.test")
    sites = make_sites(tmp_path, hosts)
    spec = template(sites, env={"SITE_VERSION": "v1"})
    b = start_bridge(tmp_path, {"sites": spec})
    try:
        before = {h: json.loads(get(b, h).body) for h in hosts}
        assert {s["version"] for s in before.values()} == {"v1"}
        stop = threading.Event()
        failures, served = [], []

        def load(host):
            with fcgi_client.FcgiConnection(b.listener_address("web")) as conn:
                while not stop.is_set():
                    r = conn.request("/", headers={"Host": host})
                    if r.status != 200:
                        failures.append((host, r.status, bytes(r.stdout[:200])))
                    else:
                        served.append((host, json.loads(r.body)["version"]))

        workers = [threading.Thread(target=load, args=(h,)) for h in hosts for _ in range(2)]
        for t in workers:
            t.start()
        try:
            wait_until(lambda: len(served) > 20, 60, what="requests flowing")
            spec["env"]["SITE_VERSION"] = "v2"
            (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
            mark = b.log.mark()
            os.kill(b.pid, signal.SIGHUP)
            b.log.wait_for(r"reload done: .*templates changed: sites", mark, timeout=60)
            wait_until(lambda: {(h, "v2") for h in hosts} <= set(served[-200:]), 120, what="both on v2")
        finally:
            stop.set()
            for t in workers:
                t.join(60)
        assert not failures, failures[:5]
        after = {h: json.loads(get(b, h).body) for h in hosts}
        assert all(after[h]["pid"] != before[h]["pid"] for h in hosts)
        assert set(instances(b)) == set(hosts)
        assert len(new_instance_lines(b)) == 2  # rolled, not made again
    finally:
        b.stop()


def gated_python(sites: Path, host: str, tmp_path: Path) -> tuple[Path, Path]:
    """`host`'s `python`: its interpreter probe notes itself in `probes` and waits for
    `gate` to exist; returns (probes, gate)."""
    probes, gate = tmp_path / "probes", tmp_path / "gate"
    py = sites / host / "python"
    py.write_text(f'#!/bin/sh\ncase "$*" in *fcgibridge-probe*) echo probe >> {probes}\n'
                  f'  while [ ! -e {gate} ]; do sleep 0.05; done;; esac\nexec {SYSTEM_PYTHON} "$@"\n')
    py.chmod(0o755)
    return probes, gate


def test_a_reload_that_changes_nothing_leaves_an_instance_being_made_alone(tmp_path):
    """An instance whose interpreter is being probed when a reload that changes nothing
    lands is started with that probe, not resolved (and probed) again."""
    sites = make_sites(tmp_path, ("slow.test",))
    probes, gate = gated_python(sites, "slow.test", tmp_path)
    b = start_bridge(tmp_path, {"sites": template(sites, python=f"{sites}/{{host}}/python")})
    out = {}
    t = threading.Thread(target=lambda: out.update(r=get(b, "slow.test")))
    try:
        t.start()
        wait_until(probes.exists, 60, what="the interpreter probed")
        mark = b.log.mark()
        os.kill(b.pid, signal.SIGHUP)
        b.log.wait_for(r"reload done: .*templates changed: none", mark, timeout=60)
        gate.touch()
        t.join(120)
        assert out["r"].status == 200, out["r"].stdout[:300]
        assert probes.read_text().count("probe") == 1
        assert len(new_instance_lines(b)) == 1
    finally:
        gate.touch()
        t.join(120)
        b.stop()


def test_an_instance_being_made_when_a_reload_removes_its_template_is_not_started(tmp_path):
    """A request whose instance is being made when a reload removes its template gets 503
    with Retry-After, and nothing is started (no worker, no run directory); the retry is
    routed as the configuration is now."""
    sites = make_sites(tmp_path, ("slow.test",))
    probes, gate = gated_python(sites, "slow.test", tmp_path)
    b = start_bridge(tmp_path, {"sites": template(sites, python=f"{sites}/{{host}}/python"),
                                "plain": {"app": str(APPS / "site_app.py"), "processes": 1}})
    out = {}
    t = threading.Thread(target=lambda: out.update(r=get(b, "slow.test")))
    try:
        t.start()
        wait_until(probes.exists, 60, what="the interpreter probed")
        del b.config["pools"]["sites"]
        b.config["listeners"]["web"]["pool"] = "plain"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        os.kill(b.pid, signal.SIGHUP)
        b.log.wait_for(r"reload done: .*removed: sites", mark, timeout=60)
        gate.touch()
        t.join(120)
        r = out["r"]
        assert r.status == 503 and r.header("Retry-After") == "1", (r.status, r.stdout[:300])
        b.log.wait_for(r'new instance "slow\.test" not started: its template was removed by a reload, answering 503',
                       mark)
        assert not new_instance_lines(b)
        assert not list((tmp_path / "run" / "pools").glob("instance-*"))
        again = get(b, "slow.test")
        assert again.status == 200 and json.loads(again.body)["app"] == str(APPS / "site_app.py"), again.status
    finally:
        gate.touch()
        t.join(120)
        b.stop()


def test_reload_that_changes_the_key_stops_the_old_instances(tmp_path):
    sites = make_sites(tmp_path, ("alpha.test", "alice"))
    spec = template(sites)
    b = start_bridge(tmp_path, {"sites": spec})
    try:
        pid = json.loads(get(b, "alpha.test").body)["pid"]
        spec["app"] = f"{sites}/{{user}}/app.py"
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        os.kill(b.pid, signal.SIGHUP)
        b.log.wait_for(r"instance stopping: its template's key changed \(an instance per user now, was per host\)"
                       r".*pool=\"?sites\[alpha\.test\]", mark, timeout=60)
        # Stopped for the change of key, not refused: no key of the new kind was looked at.
        b.log.wait_for(r"reload done: .*templates changed: sites; removed: none; "
                       r"instances stopped \(their template's key changed\): sites\[alpha\.test\]; listeners", mark,
                       timeout=60)
        wait_until(lambda: not pid_alive(pid), 60, what="the host-keyed instance gone")
        r = get(b, "ignored.test", extra=[("REMOTE_USER", "alice")])
        assert r.status == 200 and json.loads(r.body)["app"] == str(sites / "alice" / "app.py")
        assert set(instances(b)) == {"alice"}
        assert get(b, "alpha.test").status == 403  # no REMOTE_USER now
    finally:
        b.stop()


def test_reload_with_a_narrower_allow_stops_the_instances_it_refuses(tmp_path):
    """How a tenant is suspended: its key left out of `allow`, then a reload. Its live
    instance stops at the reload (it used to keep serving until stop-instance); the
    others carry on."""
    sites = make_sites(tmp_path, ("alpha.test", "beta.test"))
    spec = template(sites)
    b = start_bridge(tmp_path, {"sites": spec})
    try:
        pids = {h: json.loads(get(b, h).body)["pid"] for h in ("alpha.test", "beta.test")}
        spec["template"]["allow"] = r"alpha\.test"
        # A template added by the same reload is named in its summary too.
        b.config["pools"]["more"] = dict(spec, template={"max-instances": 4})
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        os.kill(b.pid, signal.SIGHUP)
        b.log.wait_for(r'key "beta\.test" does not match the template.s allow pattern; the instance stops.*'
                       r"pool=\"?sites\[beta\.test\]", mark, timeout=60)
        b.log.wait_for(r"reload done: .*templates changed: sites; removed: none; templates added: more; "
                       r"instances refused now and stopped: sites\[beta\.test\]", mark, timeout=60)
        wait_until(lambda: not pid_alive(pids["beta.test"]), 60, what="beta.test's worker gone")
        assert get(b, "beta.test").status == 404
        assert set(instances(b)) == {"alpha.test"}
        assert json.loads(get(b, "alpha.test").body)["pid"] == pids["alpha.test"]
    finally:
        b.stop()


def test_restart_workers_of_a_template_restarts_its_instances_only(tmp_path):
    hosts = ("alpha.test", "beta.test")
    sites = make_sites(tmp_path, hosts)
    b = start_bridge(tmp_path, {"sites": template(sites),
                                "other": {"app": str(APPS / "lifecycle_app.py"), "processes": 1}})
    try:
        before = {h: json.loads(get(b, h).body)["pid"] for h in hosts}

        def other_pids():
            r = subprocess.run([str(b.binary), "status", "--json", "--config", str(b.confdir)],
                               capture_output=True, text=True, timeout=60)
            pools = {p["name"]: p for p in json.loads(r.stdout)["pools"]}
            return {w["pid"] for w in pools["other"]["workers"] if w["state"] in ("idle", "busy")}
        other = wait_until(other_pids, 60, what="pool other ready")
        r = subprocess.run([str(b.binary), "reload", "--restart-workers", "sites", "--wait", "--config",
                            str(b.confdir)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        # Restarted as asked, not changed: the template is as it was.
        assert "templates changed: none; removed: none; restarted: sites;" in r.stdout, r.stdout
        assert r.stdout.endswith(
            "\nrollout done: sites[alpha.test] (1 worker ready), sites[beta.test] (1 worker ready)\n"), r.stdout
        after = {h: json.loads(get(b, h).body)["pid"] for h in hosts}
        assert all(after[h] != before[h] for h in hosts), (before, after)
        assert other_pids() == other
        assert set(instances(b)) == set(hosts)
    finally:
        b.stop()


def test_touch_reload_with_a_placeholder_restarts_that_site_s_instance_only(tmp_path):
    """A site's owner reloads their own app by touching a file in their site; the other
    sites keep their workers."""
    hosts = ("alpha.test", "beta.test")
    sites = make_sites(tmp_path, hosts)
    b = start_bridge(tmp_path, {"sites": template(sites, **{"touch-reload": f"{sites}/{{host}}/restart.txt"})})
    try:
        before = {h: json.loads(get(b, h).body)["pid"] for h in hosts}
        mark = b.log.mark()
        (sites / "alpha.test" / "restart.txt").write_text("")
        b.log.wait_for([rf"touch-reload: {re.escape(str(sites))}/alpha\.test/restart\.txt changed",
                        r'pool="sites\[alpha\.test\]"'], since=mark, timeout=30)
        wait_until(lambda: json.loads(get(b, "alpha.test").body)["pid"] != before["alpha.test"], 60,
                   what="alpha.test served by a new worker")
        assert json.loads(get(b, "beta.test").body)["pid"] == before["beta.test"]
        assert not [ln for ln in b.log.lines(mark) if "touch-reload" in ln and "beta.test" in ln]
    finally:
        b.stop()


def test_stop_instance_over_the_control_socket(tmp_path):
    sites = make_sites(tmp_path, ("alpha.test", "beta.test"))
    b = start_bridge(tmp_path, {"sites": template(sites)})
    try:
        pid = json.loads(get(b, "alpha.test").body)["pid"]
        assert get(b, "beta.test").status == 200
        cli = [str(b.binary), "stop-instance", "--config", str(b.confdir)]
        r = subprocess.run(cli + ["sites", "alpha.test"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "sites[alpha.test] stopping" in r.stdout
        b.log.wait_for(r"instance stopped by the control socket.*pool=\"?sites\[alpha\.test\]")
        wait_until(lambda: set(instances(b)) == {"beta.test"}, 60, what="alpha gone from status")
        wait_until(lambda: not pid_alive(pid), 60, what="its worker gone")
        # its worker says why it stopped: the bridge itself keeps running
        b.log.wait_for([r"worker stopped \(instance removed: stopped through the control socket\)",
                        rf"pid={pid}\b"])
        r = subprocess.run(cli + ["sites", "nosuch.test"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and 'no instance "nosuch.test"' in r.stderr
        assert json.loads(get(b, "alpha.test").body)["pid"] != pid
    finally:
        b.stop()


def test_status_shows_instances_in_json_and_openmetrics(tmp_path):
    sites = make_sites(tmp_path, ("alpha.test",))
    status_port = free_ports(1)[0]
    b = start_bridge(tmp_path, {"sites": template(sites)},
                     extra={"status": {"listen": f"127.0.0.1:{status_port}", "path": "/status"}})
    try:
        assert get(b, "alpha.test").status == 200
        inst = instances(b)["alpha.test"]["instance"]
        assert inst["template"] == "sites" and inst["age_seconds"] >= inst["idle_seconds"] >= 0
        metrics = requests.get(f"http://127.0.0.1:{status_port}/metrics", timeout=30).text
        assert re.search(r'fcgibridge_instance_idle_seconds\{pool="sites\[alpha.test\]",template="sites",key="alpha.test"\} ', metrics)
        parser = pytest.importorskip("prometheus_client.openmetrics.parser")
        families = {f.name: f for f in parser.text_string_to_metric_families(metrics)}
        ages = families["fcgibridge_instance_age_seconds"].samples
        assert [(x.labels["template"], x.labels["key"]) for x in ages] == [("sites", "alpha.test")]
        table = subprocess.run([str(b.binary), "status", "--config", str(b.confdir)], capture_output=True,
                               text=True, timeout=60)
        assert re.search(r"^TEMPLATE\s+KEY\s+AGE\s+IDLE\s+WORKERS\n\s*sites\s+alpha\.test\s+\S+\s+\S+\s+1$",
                         table.stdout, re.M), table.stdout
        html = requests.get(f"http://127.0.0.1:{status_port}/status?html", timeout=30).text
        assert re.search(r'<table id="instances">.*<td>sites</td><td>alpha.test</td><td>sites\[alpha.test\]</td>', html, re.S)
    finally:
        b.stop()


def test_check_shows_the_interpreter_instances_run_when_python_is_not_written(tmp_path):
    """A template without `python:`: check says, as a comment, the default its instances get,
    and it is the interpreter a live instance's worker runs."""
    sites = make_sites(tmp_path, ("alpha.test",))
    b = start_bridge(tmp_path, {"sites": template(sites)})
    try:
        r = subprocess.run([str(b.binary), "check", "--config", str(b.confdir)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        said = (r"# python: not set: by default (/\S+) \(python3 found on the PATH of this check; the daemon "
                r"looks on the PATH it was started with\)")
        m = re.search(r"^    " + said + "$", r.stdout, re.M)
        assert m, r.stdout
        # dynamic-pools.md quotes that comment as check writes it (wrapped as prose is).
        page = " ".join(DOC.read_text().split())
        quoted = re.search(r"`(# python: not set: [^`]*)`", page)
        assert quoted and re.fullmatch(said, quoted.group(1)), quoted
        resp = get(b, "alpha.test")
        assert resp.status == 200, resp.stdout[:300]
        pid = json.loads(resp.body)["pid"]
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert argv0 == m.group(1)
        # Its worker's socket is where the worker contract says an instance's are.
        contract = " ".join((REPO / "docs" / "worker-contract.md").read_text().split())
        assert "an instance of a template has `instance-<n>` in place of `<pool>`" in contract
        assert [p.name for p in (tmp_path / "run" / "pools").iterdir()] == ["instance-1"]
        assert [p.name for p in (tmp_path / "run" / "pools" / "instance-1").iterdir()] == ["0-1.sock"]
    finally:
        b.stop()


FIXED_ROOT_REFUSED = (r"pools\.sites\.user: user root has uid 0, below min-uid 1000: written without a placeholder, "
                      r"it refuses every instance \(403\); choose a user with uid 1000 or more, lower min-uid "
                      r"\(template: \{min-uid: N\}\), or use a placeholder such as \"\{owner\}\"")

NOT_ROOT_REFUSED = r'pools\.sites\.user: switching to user "root" needs the bridge to run as root'


def test_a_fixed_user_every_instance_would_refuse_is_an_error_at_check_run_and_reload(tmp_path):
    """`user: root` written without a placeholder is below min-uid whatever the key: every
    request would get 403. check and run refuse the configuration at the key, and a reload to
    it is refused with the running configuration kept."""
    sites = make_sites(tmp_path, ("alpha.test",))
    b = start_bridge(tmp_path, {"sites": template(sites)})
    try:
        assert get(b, "alpha.test").status == 200
        b.config["pools"]["sites"].update({"user": "root", "allow-root": True})
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        for command in ("check", "run", "reload"):
            r = subprocess.run([str(b.binary), command, "--config", str(b.confdir)], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode != 0, (command, r.stdout, r.stderr)
            # One error at the key: a bridge that is not root is told only that it needs root.
            refused = FIXED_ROOT_REFUSED if os.geteuid() == 0 else NOT_ROOT_REFUSED
            assert re.search(r"50-test\.yaml:\d+:\d+: " + refused, r.stderr), (command, r.stderr)
            assert len(re.findall(r"pools\.sites\.user: ", r.stderr)) == 1, (command, r.stderr)
        assert get(b, "alpha.test").status == 200
        # With min-uid lowered to take it, the same user is accepted (by a bridge that may switch to it).
        b.config["pools"]["sites"]["template"]["min-uid"] = 0
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        r = subprocess.run([str(b.binary), "check", "--config", str(b.confdir)], capture_output=True, text=True,
                           timeout=60)
        assert not re.search(FIXED_ROOT_REFUSED, r.stderr), r.stderr
        assert r.returncode == 0 or os.geteuid() != 0, r.stderr
    finally:
        b.stop()


# ------------------------------------------------------------------ lighttpd, per host

def test_lighttpd_virtual_hosts(tmp_path):
    binary = find_binary("lighttpd")
    if not binary:
        pytest.skip("lighttpd is not installed")
    sites = make_sites(tmp_path, ("alpha.test", "beta.test"))
    b = start_bridge(tmp_path, {"sites": template(sites)})
    w = tmp_path / "lighttpd"
    w.mkdir()
    w.chmod(0o777)
    port = free_ports(1)[0]
    conf = substitute(snippet("lighttpd"), {"8080": port, "9100": b.listener_address("web")[1]})
    (w / "lighttpd.conf").write_text(
        f'server.bind = "127.0.0.1"\nserver.port = {port}\nserver.document-root = "{w}"\n'
        f'server.errorlog = "{w}/error.log"\n' + conf)
    proc = subprocess.Popen([binary, "-D", "-f", str(w / "lighttpd.conf")], stdin=subprocess.DEVNULL,
                            stdout=open(w / "stdout.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: can_connect(("127.0.0.1", port)), 60, what="lighttpd listening")
        pids = {}
        for host in ("alpha.test", "beta.test"):
            r = requests.get(f"http://127.0.0.1:{port}/page", headers={"Host": host}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["app"] == str(sites / host / "app.py")
            pids[host] = r.json()["pid"]
        assert pids["alpha.test"] != pids["beta.test"]
        assert requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "nosuch.test"}, timeout=60).status_code == 404
    finally:
        stop_process(proc, signal.SIGINT, timeout=20)
        b.stop()


# ------------------------------------------------------------------ per user, Apache basic auth

@pytest.fixture
def accounts():
    """Three users with uid >= 1000 and one system account (uid < 1000), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("per-user instances need a root bridge (and useradd)")
    made = []
    names = {"alice": "fbt-alice", "bob": "fbt-bob", "carol": "fbt-carol", "sys": "fbt-sys"}
    try:
        for role, name in names.items():
            subprocess.run(["userdel", name], capture_output=True)
            args = ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin"] + (["-r"] if role == "sys" else []) + [name]
            subprocess.run(args, check=True, capture_output=True)
            made.append(name)
        yield {role: pwd.getpwnam(name) for role, name in names.items()}
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)


def test_an_owner_named_in_digits_never_runs_as_the_account_with_that_uid(accounts):
    """An account may be named "1001" (Debian's useradd, a directory service); `user:
    "{owner}"` must not then read the name as uid 1001 — here bob's — and run the site as bob."""
    name = str(accounts["bob"].pw_uid)
    subprocess.run(["userdel", name], capture_output=True)
    made = subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this useradd refuses a name in digits: {made.stderr.strip()}")
    pub = Path(tempfile.mkdtemp(prefix="fcgibridge-digits-"))
    pub.chmod(0o755)
    try:
        digits = pwd.getpwnam(name)
        assert digits.pw_uid != accounts["bob"].pw_uid
        sites = make_sites(pub, ["digits.test", "alpha.test"])
        for host, owner in (("digits.test", digits), ("alpha.test", accounts["alice"])):
            os.chown(sites / host, owner.pw_uid, owner.pw_gid)
            os.chown(sites / host / "app.py", owner.pw_uid, owner.pw_gid)
        spec = template(sites, {"spawn-rate": 50}, python=SYSTEM_PYTHON, user="{owner}")
        b = start_bridge(pub, {"sites": spec}, extra={"runtime-dir": str(pub / "run")})
        try:
            r = get(b, "digits.test")
            assert r.status == 403, r.body
            b.log.wait_for(rf'instance "digits\.test" refused: .*app\.py is owned by the account named "{name}" '
                           rf'\(uid {digits.pw_uid}\), a name in digits that user: and group: would read as a uid or '
                           rf'gid: rename the account, or serve this site from a pool of its own with user: {digits.pw_uid}')
            # The other site still runs, as its owner.
            r = get(b, "alpha.test")
            assert r.status == 200, r.body
            assert json.loads(r.body)["uid"] == accounts["alice"].pw_uid
            assert set(instances(b)) == {"alpha.test"}
        finally:
            b.stop()
    finally:
        shutil.rmtree(pub, ignore_errors=True)
        subprocess.run(["userdel", name], capture_output=True)


def make_homes(pub: Path, users) -> None:
    """pub/homes/USER/app.py (the site app) for each of `users` (pwd entries), owned by the
    user, readable by all."""
    for a in users:
        d = pub / "homes" / a.pw_name
        d.mkdir(parents=True)
        shutil.copy(APPS / "site_app.py", d / "app.py")
        os.chown(d / "app.py", a.pw_uid, a.pw_gid)
        (d / "app.py").chmod(0o644)
        d.chmod(0o755)
    (pub / "homes").chmod(0o755)


def test_apache_basic_auth_picks_a_per_user_instance_running_as_that_user(accounts):
    apache = find_binary("apache2", "httpd")
    if not apache:
        pytest.skip("Apache is not installed")
    pub = Path(tempfile.mkdtemp(prefix="fcgibridge-homes-"))
    pub.chmod(0o755)
    try:
        make_homes(pub, (accounts[role] for role in ("alice", "bob", "sys")))
        spec = {"template": {"min-uid": 1000}, "app": f"{pub}/homes/{{user}}/app.py", "python": SYSTEM_PYTHON,
                "user": "{user}", "script-user": "{user}", "clear-env": True, "threads": 2, "max-processes": 1}
        # As the page says: a unix socket only the web server's group may open, in a
        # directory tenants cannot enter (Apache runs as nobody:nogroup below).
        web_gid = grp.getgrnam("nogroup").gr_gid
        (pub / "sock").mkdir()
        os.chown(pub / "sock", 0, web_gid)
        (pub / "sock").chmod(0o750)
        sock = str(pub / "sock" / "homes.sock")
        b = make_bridge(pub, {"homes": spec}, {"web": {"fastcgi": f"unix:{sock}", "socket-mode": "0660",
                                                        "socket-group": "nogroup", "pool": "homes"}},
                        bridge_extra={"runtime-dir": str(pub / "run")})
        b.start()
        wait_until(lambda: b.assert_running() or can_connect(sock), 60, what="bridge listening")
        # A tenant's code cannot reach the listener to send another tenant's REMOTE_USER.
        a = accounts["alice"]
        tenant = subprocess.run([SYSTEM_PYTHON, "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({sock!r})"],
                                user=a.pw_uid, group=a.pw_gid, extra_groups=[], capture_output=True, text=True,
                                timeout=60)
        assert tenant.returncode != 0 and "PermissionError" in tenant.stderr, tenant
        w = pub / "apache"
        w.mkdir()
        (w / "run").mkdir()
        (w / "run").chmod(0o777)
        passwords = {accounts[r].pw_name: f"pw-{r}" for r in ("alice", "bob", "sys")}
        (w / "htpasswd").write_text("".join(
            f"{u}:{{SHA}}{base64.b64encode(hashlib.sha1(p.encode()).digest()).decode()}\n" for u, p in passwords.items()))
        (w / "htpasswd").chmod(0o644)
        mods = next(d for d in ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules")
                    if os.path.exists(os.path.join(d, "mod_proxy_fcgi.so")))
        port = free_ports(1)[0]
        conf = substitute(snippet("apache"), {"8080": port, "/run/fcgibridge-web/homes.sock": sock,
                                              "/usr/lib/apache2/modules": mods,
                                              "/etc/apache2/homes.htpasswd": str(w / "htpasswd")})
        base = "".join(f"LoadModule {m}_module {mods}/mod_{m}.so\n" for m in (
            "mpm_event", "authz_core", "authz_user", "authn_core", "auth_basic") if os.path.exists(f"{mods}/mod_{m}.so"))
        (w / "httpd.conf").write_text(
            f'ServerRoot "{w}"\nServerName localhost\n{base}User nobody\nGroup nogroup\nPidFile {w}/httpd.pid\n'
            f"ErrorLog {w}/error.log\nLogLevel warn\nDefaultRuntimeDir {w}/run\nMutex file:{w}/run default\n" + conf)
        proc = subprocess.Popen([apache, "-X", "-f", str(w / "httpd.conf")], stdin=subprocess.DEVNULL,
                                stdout=open(w / "stdout.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def listening():
                assert proc.poll() is None, "Apache exited: " + "".join(
                    f.read_text(errors="replace") for f in (w / "stdout.log", w / "error.log") if f.exists())
                return can_connect(("127.0.0.1", port))
            wait_until(listening, 60, what="Apache listening")
            url = f"http://127.0.0.1:{port}/"
            assert requests.get(url, timeout=60).status_code == 401
            seen = {}
            for role in ("alice", "bob"):
                a = accounts[role]
                r = requests.get(url, auth=(a.pw_name, passwords[a.pw_name]), timeout=60)
                assert r.status_code == 200, r.text
                seen[role] = r.json()
                assert seen[role]["uid"] == a.pw_uid and seen[role]["user"] == a.pw_name
                assert seen[role]["app"] == str(pub / "homes" / a.pw_name / "app.py")
            assert seen["alice"]["pid"] != seen["bob"]["pid"]
            assert set(instances(b)) == {accounts["alice"].pw_name, accounts["bob"].pw_name}
            # A system account (uid < min-uid): refused, nothing spawned.
            s = accounts["sys"]
            r = requests.get(url, auth=(s.pw_name, passwords[s.pw_name]), timeout=60)
            assert r.status_code == 403
            b.log.wait_for(rf'instance "{s.pw_name}" refused: user {s.pw_name} has uid {s.pw_uid}, below min-uid 1000, answering 403')
            assert set(instances(b)) == {accounts["alice"].pw_name, accounts["bob"].pw_name}
        finally:
            stop_process(proc, timeout=20)
            b.stop()
    finally:
        shutil.rmtree(pub, ignore_errors=True)


def test_a_live_instance_looks_its_account_up_again(accounts):
    """After userdel, a live instance whose workers have gone stops at its next request: 404,
    as a new instance gets. After gpasswd -d, its next worker runs without the group. A
    reload rolls a live instance onto its account as it is now."""
    alice, bob = accounts["alice"], accounts["bob"]
    group = "fbt-shared"
    subprocess.run(["groupdel", group], capture_output=True)
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    pub = Path(tempfile.mkdtemp(prefix="fcgibridge-accounts-"))
    pub.chmod(0o755)
    try:
        subprocess.run(["gpasswd", "-a", bob.pw_name, group], check=True, capture_output=True)
        gid = grp.getgrnam(group).gr_gid
        make_homes(pub, (alice, bob))
        spec = {"template": {"min-uid": 1000}, "app": f"{pub}/homes/{{user}}/app.py", "python": SYSTEM_PYTHON,
                "user": "{user}", "threads": 2, "max-processes": 1, "idle-timeout": "1s"}
        b = start_bridge(pub, {"homes": spec}, extra={"runtime-dir": str(pub / "run"), "log-rate-limit": False})
        try:
            def as_user(a):
                return get(b, "localhost", extra=[("REMOTE_USER", a.pw_name)])

            seen = {a.pw_name: json.loads(as_user(a).body) for a in (alice, bob)}
            assert seen[alice.pw_name]["uid"] == alice.pw_uid
            assert gid in seen[bob.pw_name]["groups"], seen
            # Their ondemand workers idle out: no process of either account is left.
            wait_until(lambda: not any(p["workers"] for p in instances(b).values()), 60, what="workers gone")
            wait_until(lambda: not any(pid_alive(s["pid"]) for s in seen.values()), 60, what="worker processes gone")
            subprocess.run(["userdel", alice.pw_name], check=True, capture_output=True)
            subprocess.run(["gpasswd", "-d", bob.pw_name, group], check=True, capture_output=True)
            mark = b.log.mark()
            r = as_user(alice)
            assert r.status == 404, r.stdout[:300]
            key = re.escape(alice.pw_name)
            b.log.wait_for(rf'looked at again before a new worker: no site for key "{key}": no account "{key}"; '
                           rf'the instance stops.*pool=\"?homes\[{key}\]', mark)
            b.log.wait_for(rf'no site for key "{key}": no account "{key}", answering 404', mark)
            assert set(instances(b)) == {bob.pw_name}
            assert as_user(alice).status == 404
            now = json.loads(as_user(bob).body)
            assert now["uid"] == bob.pw_uid and gid not in now["groups"], now
            bobs = rf"pool=\"?homes\[{re.escape(bob.pw_name)}\]"
            b.log.wait_for(rf"looked at again before a new worker: the instance's account changed .*{bobs}", mark)
            # Its manager says why it rolls: no reload was asked for.
            b.log.wait_for(rf"looked at again \(no reload\): its account, files or interpreter changed; "
                           rf"the next worker starts with it.*{bobs}", mark)
            assert not [ln for ln in b.log.lines(mark) if re.search(rf"reload: .*{bobs}", ln)], b.log.text(mark)
            # Workers alive: a reload looks the account up and rolls them.
            subprocess.run(["gpasswd", "-a", bob.pw_name, group], check=True, capture_output=True)
            out = subprocess.run([str(b.binary), "reload", "--wait", "--config", str(b.confdir)],
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"instances rolled (account or files changed): homes[{bob.pw_name}]" in out.stdout, out.stdout
            wait_until(lambda: gid in json.loads(as_user(bob).body)["groups"], 60, what="bob's worker in the group")
        finally:
            b.stop()
    finally:
        subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(pub, ignore_errors=True)


# getpwnam_r(3) answering EIO for the one name written in $FBT_NSS_FAIL_FILE (while that
# file exists), as when NSS cannot reach LDAP or SSSD; every other lookup goes to glibc.
NSS_FAILING = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int getpwnam_r(const char *name, struct passwd *pwd, char *buf, size_t len, struct passwd **result) {
    static int (*real)(const char *, struct passwd *, char *, size_t, struct passwd **);
    if (!real) real = dlsym(RTLD_NEXT, "getpwnam_r");
    const char *path = getenv("FBT_NSS_FAIL_FILE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f) {
        char failing[256] = {0};
        int hit = fgets(failing, sizeof failing, f) && strcmp(failing, name) == 0;
        fclose(f);
        if (hit) {
            *result = NULL;
            errno = EIO; /* glibc sets errno to the error it returns */
            return EIO;
        }
    }
    return real(name, pwd, buf, len, result);
}
"""


def test_an_account_lookup_that_fails_is_a_503_and_is_looked_up_again(accounts, monkeypatch):
    """The account directory does not answer for one user: that user's site gets a 503 with
    Retry-After (not the 404 of a site that does not exist), the other users' sites are served,
    and once the directory answers again the site is made as it is."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build the failing NSS lookup (scripts/install-test-deps)"
    alice, bob = accounts["alice"], accounts["bob"]
    pub = Path(tempfile.mkdtemp(prefix="fcgibridge-lookup-"))
    pub.chmod(0o755)
    try:
        (pub / "nss_failing.c").write_text(NSS_FAILING)
        shim = pub / "nss_failing.so"
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(shim), str(pub / "nss_failing.c"), "-ldl"],
                       check=True, capture_output=True)
        failing = pub / "failing"
        failing.write_text(alice.pw_name)
        make_homes(pub, (alice, bob))
        monkeypatch.setenv("LD_PRELOAD", str(shim))
        monkeypatch.setenv("FBT_NSS_FAIL_FILE", str(failing))
        spec = {"template": {"min-uid": 1000}, "app": f"{pub}/homes/{{user}}/app.py", "python": SYSTEM_PYTHON,
                "user": "{user}", "threads": 2, "max-processes": 1}
        b = start_bridge(pub, {"homes": spec}, extra={"runtime-dir": str(pub / "run"), "log-rate-limit": False})
        try:
            def as_user(a):
                return get(b, "localhost", extra=[("REMOTE_USER", a.pw_name)])

            r = as_user(alice)
            assert r.status == 503, r.stdout[:300]
            assert r.header("Retry-After") == "5", r.split()[1]
            key = re.escape(alice.pw_name)
            b.log.wait_for(rf'cannot look up user "{key}": EIO.*the account database did not answer', 0)
            # Remembered for its Retry-After: asked again at once, the directory is not.
            assert as_user(alice).status == 503
            lines = [ln for ln in b.log.lines() if f'cannot look up user "{alice.pw_name}"' in ln]
            assert len(lines) == 2 and "(remembered for 5s), answering 503" in lines[1], lines
            # Another user's site is served meanwhile.
            assert json.loads(as_user(bob).body)["uid"] == bob.pw_uid
            failing.unlink()
            wait_until(lambda: as_user(alice).status == 200, 60, interval=0.5, what="alice's site made")
            assert json.loads(as_user(alice).body)["uid"] == alice.pw_uid
            assert set(instances(b)) == {alice.pw_name, bob.pw_name}
        finally:
            b.stop()
    finally:
        shutil.rmtree(pub, ignore_errors=True)


def test_nginx_virtual_hosts_each_run_as_the_owner_of_their_site(accounts, nginx_front, tmp_path):
    pub = Path(tempfile.mkdtemp(prefix="fcgibridge-owners-"))
    pub.chmod(0o755)
    try:
        owners = {"alpha.test": "alice", "beta.test": "bob", "gamma.test": "carol", "rooted.test": None}
        sites = make_sites(pub, [*owners, "linked.test", "planted.test"])
        for host, role in owners.items():
            if role:
                os.chown(sites / host / "app.py", accounts[role].pw_uid, accounts[role].pw_gid)
        # alice's own directories, whose app.py is bob's file: a symbolic link to it, and a
        # hard link (her modules would be imported first, running as bob).
        alice = accounts["alice"]
        for host in ("linked.test", "planted.test"):
            os.chown(sites / host, alice.pw_uid, alice.pw_gid)
            (sites / host / "app.py").unlink()
        (sites / "linked.test" / "app.py").symlink_to(sites / "beta.test" / "app.py")
        os.link(sites / "beta.test" / "app.py", sites / "planted.test" / "app.py")
        spec = template(sites, {"max-instances": 16, "spawn-rate": 50}, python=SYSTEM_PYTHON, user="{owner}")
        b = start_bridge(pub, {"sites": spec}, extra={"runtime-dir": str(pub / "run")})
        try:
            port = nginx_front(b.listener_address("web")[1])
            pids = set()
            for host, role in owners.items():
                r = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=60)
                if role is None:
                    # Owned by root: never run as root, whatever the file says.
                    assert r.status_code == 403, r.text
                    b.log.wait_for(r'instance "rooted.test" refused: user root has uid 0, below min-uid 1000, answering 403')
                    continue
                assert r.status_code == 200, r.text
                assert r.json()["uid"] == accounts[role].pw_uid
                assert r.json()["app"] == str(sites / host / "app.py")
                pids.add(r.json()["pid"])
            assert len(pids) == 3
            for host, why in (("linked.test", "is a symbolic link"), ("planted.test", "but its directory")):
                r = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=60)
                assert r.status_code == 403, b.log.text()[-2000:]
                b.log.wait_for(rf'instance "{re.escape(host)}" refused: .*app\.py .*{why}')
            assert set(instances(b)) == {"alpha.test", "beta.test", "gamma.test"}
        finally:
            b.stop()
    finally:
        shutil.rmtree(pub, ignore_errors=True)

"""Fixtures of the web-server conformance suite: one bridge (FastCGI + SCGI over TCP) that
every front server connects to, and the servers themselves, each started once, on first
use, and stopped at the end of the session."""
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import frontends  # noqa: E402
import support  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    support.dump()


@pytest.fixture(scope="session")
def www():
    d = frontends.make_www()
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def sbridge(tmp_path_factory, www):
    """The bridge the connect-mode servers use: the conformance app, 2 x 8 threads.
    `fastcgi` and `scgi` pass hand-off headers on (for nginx and mod_proxy_scgi, which
    follow them); the servers whose page shows a listener of their own (lighttpd's in
    `translate` mode, the others' in `serve` mode) get it, from the page's `listener`
    test-snippet."""
    b = frontends.shared_bridge(tmp_path_factory.mktemp("servers-bridge"), www, frontends.APP, "conformance",
                                env={"CONFORMANCE_FILES_DIR": str(www / "files")})
    with frontends.running(b):
        yield b


class ServerCache:
    def __init__(self, bridge, www):
        self.bridge, self.www, self.running, self.failed = bridge, www, {}, {}

    def get(self, variant):
        cls = frontends.VARIANTS[variant]
        if cls in self.failed:
            pytest.fail(f"{cls.name} did not start: {self.failed[cls]}", pytrace=False)
        if cls not in self.running:
            srv = cls(self.bridge.ports, self.www)
            if not srv.binary:
                srv.cleanup()
                pytest.skip(f"{cls.name} is not installed")
            try:
                srv.start()
            except Exception as e:  # noqa: BLE001 - reported once per server
                self.failed[cls] = f"{e}"
                srv.stop()
                # Its log is in the message; its directory is outside the basetemp.
                srv.cleanup()
                pytest.fail(f"{cls.name} did not start: {e}", pytrace=False)
            self.running[cls] = srv
            support.record_version(cls.name, version(srv))
        return self.running[cls]

    def stop_all(self):
        for srv in self.running.values():
            srv.stop()
            srv.cleanup()


def version(srv) -> str:
    import re
    for args in (["-v"], ["--version"], ["version"], ["-V"]):
        try:
            r = subprocess.run([srv.binary, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (r.stdout + r.stderr).strip()
        m = re.search(r"(\d+\.\d+(?:\.\d+)?)", text) if r.returncode == 0 else None
        if m:
            return m.group(1)
    return "?"


@pytest.fixture(scope="session")
def servers(sbridge, www):
    cache = ServerCache(sbridge, www)
    yield cache
    cache.stop_all()


# A failed test still fills its support-table cell (FAIL + the first line of the error).
FEATURE_OF_TEST = {
    "test_basics": "basics", "test_keep_alive": "keep-alive", "test_multiplexing": "multiplexing",
    "test_chunked_upload": "chunked upload", "test_internal_redirect": "internal redirect",
    "test_file_handoff": "file hand-off", "test_authorizer": "authorizer",
    "test_authorization_header": "Authorization header",
    "test_authorization_reaches_the_app_only_with_the_documented_setting": "Authorization header",
    "test_spawned_cell": "spawned mode", "test_started_by_the_server_and_stopped_with_it": "spawned mode",
    "test_many_requests_over_few_connections": "multiplexing",
    "test_clients_that_go_away_free_their_slots": "multiplexing",
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    feature = FEATURE_OF_TEST.get(item.originalname or item.name)
    if not feature:
        return
    callspec = getattr(item, "callspec", None)
    variant = callspec.params.get("variant") if callspec else None
    if variant is None and "haproxy" in item.module.__name__:
        variant = "haproxy"
    if variant is None:
        return
    msg = str(call.excinfo.value).strip().splitlines()[0][:200] if call.excinfo else rep.when
    support.record(variant, feature, "FAIL", f"{rep.when}: {msg}")

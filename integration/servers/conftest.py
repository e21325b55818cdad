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
from harness import free_ports, make_bridge, pool  # noqa: E402


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
    """The bridge the connect-mode servers use: the conformance app, 2 x 8 threads."""
    workdir = tmp_path_factory.mktemp("servers-bridge")
    fport, sport = free_ports(2)
    pools = {"conformance": pool(str(frontends.APP), processes=2, threads=8,
                                 env={"CONFORMANCE_FILES_DIR": str(www / "files")})}
    listeners = {"fastcgi": {"fastcgi": f"127.0.0.1:{fport}", "pool": "conformance"},
                 "scgi": {"scgi": f"127.0.0.1:{sport}", "pool": "conformance"}}
    b = make_bridge(workdir, pools, listeners)
    b.ports = {"fastcgi": fport, "scgi": sport}
    try:
        b.start()
        b.wait_ready([("fastcgi", "/health", "x"), ("scgi", "/health", "x")])
        yield b
    finally:
        b.stop()


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
                pytest.skip(f"{cls.name} is not installed")
            try:
                srv.start()
            except Exception as e:  # noqa: BLE001 - reported once per server
                self.failed[cls] = f"{e}"
                srv.stop()
                pytest.fail(f"{cls.name} did not start: {e}", pytrace=False)
            self.running[cls] = srv
            support.record_version(cls.name, version(srv))
        return self.running[cls]

    def stop_all(self):
        for srv in self.running.values():
            srv.stop()
            srv.cleanup()


def version(srv) -> str:
    for args in (["-v"], ["--version"], ["version"], ["-V"]):
        try:
            r = subprocess.run([srv.binary, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (r.stdout + r.stderr).strip()
        if r.returncode == 0 and text:
            return text.splitlines()[0][:80]
    return "?"


@pytest.fixture(scope="session")
def servers(sbridge, www):
    cache = ServerCache(sbridge, www)
    yield cache
    cache.stop_all()

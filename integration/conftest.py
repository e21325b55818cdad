"""Fixtures of the end-to-end suite (the helpers live in harness.py).

Every process started here is stopped in fixture teardown (SIGTERM, then SIGKILL for
whatever is left of its process group).
"""
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    DEFAULT_TIMEOUT, HERE, Nginx, free_ports, main_listeners, main_pools, main_probes, make_bridge,
    strip_ansi, is_access_line,
)

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that moves a lot of data or waits on purpose")


def pytest_collection_modifyitems(config, items):
    # A default per-test timeout (pytest-timeout) where a test sets none, also when
    # this directory's pytest.ini is not the one in use.
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.fixture(scope="session")
def bridge(tmp_path_factory):
    """The main bridge: flask, django, edge and validated pools behind six listeners."""
    workdir = tmp_path_factory.mktemp("bridge")
    # test_bad_input.py sends one bad input after another, far more than the few a second
    # the default rate limit logs in full, and waits for each one's own line.
    # test_log_limits.py tests the default.
    b = make_bridge(workdir, main_pools(), main_listeners(workdir, free_ports(6)),
                    bridge_extra={"log-rate-limit": False})
    try:
        b.start()
        b.wait_ready(main_probes())
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def nginx(bridge, tmp_path_factory):
    n = Nginx(tmp_path_factory.mktemp("nginx"), bridge)
    try:
        n.start()
        n.wait_ready()
        yield n
    finally:
        n.stop()


@pytest.fixture
def log(bridge):
    """The main bridge's log, with a mark taken at the start of the test."""
    class Marked:
        def __init__(self):
            self.since = bridge.log.mark()

        def wait_for(self, pattern, timeout=30.0, access=False):
            return bridge.log.wait_for(pattern, self.since, timeout, access=access)

        def text(self):
            return strip_ansi(bridge.log.text(self.since))

        def lines(self):
            """The bridge's own lines since the mark (access-log lines left out)."""
            return [ln for ln in bridge.log.lines(self.since) if not is_access_line(ln)]

    return Marked()


@pytest.fixture(params=["fcgi-unix", "fcgi-tcp", "scgi"])
def transport(request):
    """Each nginx → bridge transport."""
    return request.param


@pytest.fixture
def public_dir():
    """A directory every user may traverse (pytest's own temporary directories are 0700):
    apps and working directories of pools that run as another user go here, so that only
    what a test locks is locked."""
    d = Path(tempfile.mkdtemp(prefix="fcgibridge-public-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)

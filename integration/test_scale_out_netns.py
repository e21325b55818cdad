"""Two bridges and one front end on three "hosts": three network namespaces joined by a
Linux bridge device on 10.213.0.0/24, with docs/scale-out.md's addresses as written
(front end 10.213.0.5 on port 80, bridges 10.213.0.11:9000 and 10.213.0.12:9000, each
bridge's allowed-clients the front end only). The scenario is scale_out_support's: under
a steady load from the front end's namespace, a drain, a replacement and a SIGKILL.

Needs root and `ip netns`; everything it creates is removed in a finalizer, also when
the test fails."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid

import pytest

from harness import fcgi_client, in_netns, wait_until
from scale_out_support import DOC_BRIDGES, drain_replace_and_kill, split, start_bridge

FRONT = "10.213.0.5"
PREFIX = 24


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2's `ip` is not installed"
    name = f"fcgb-probe-{uuid.uuid4().hex[:8]}"
    r = ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"`ip netns add` fails here: {r.stderr.strip()}"
    ip("netns", "del", name, check=False)
    return None


class Namespaces:
    """Three namespaces "front", "b0", "b1" named uniquely for this run. The front end's
    holds the bridge device; each application namespace is joined to it by a veth pair.
    Loopback is up in each."""

    def __init__(self):
        run = uuid.uuid4().hex[:8]
        self.names = {"front": f"fcgb-{run}-front", 0: f"fcgb-{run}-b0", 1: f"fcgb-{run}-b1"}
        self.bridges = list(DOC_BRIDGES)
        self.front = "0.0.0.0:80"  # the doc's `listen 80;` and `bind :80`, as written
        self.front_address = FRONT
        self.allowed_clients = [FRONT]

    def create(self):
        front = self.names["front"]
        for name in self.names.values():
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", front, "link", "add", "br0", "type", "bridge")
        ip("-n", front, "addr", "add", f"{FRONT}/{PREFIX}", "dev", "br0")
        ip("-n", front, "link", "set", "br0", "up")
        for i in (0, 1):
            host, _ = split(self.bridges[i])
            ip("link", "add", f"up{i}", "netns", front, "type", "veth", "peer", "name", "eth0",
               "netns", self.names[i])
            ip("-n", front, "link", "set", f"up{i}", "master", "br0", "up")
            ip("-n", self.names[i], "addr", "add", f"{host}/{PREFIX}", "dev", "eth0")
            ip("-n", self.names[i], "link", "set", "eth0", "up")
        return self

    def destroy(self):
        """Kill whatever still runs in the namespaces (only this test's processes), then
        delete them; the veth pairs and the bridge device go with them."""
        for name in self.names.values():
            pids = ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", name, check=False)

    def argv(self, where, argv: list[str]) -> list[str]:
        # `ip netns exec` execs the command in place: the pid is the command's own.
        return ["ip", "netns", "exec", self.names[where], *argv]

    def inside(self, where):
        """Context manager: the calling thread's sockets are made in `where`'s namespace."""
        return in_netns(f"/run/netns/{self.names[where]}")


@pytest.fixture
def namespaces():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Namespaces()
    try:
        yield net.create()
    finally:
        net.destroy()


@pytest.mark.parametrize("front", ["nginx", "haproxy"])
def test_drain_replace_and_kill_across_namespaces(tmp_path, namespaces, front):
    bridges = drain_replace_and_kill(tmp_path, front, namespaces)
    # The front end reached every bridge from its own address, the only allowed client.
    for b in bridges:
        assert not [ln for ln in b.log.lines() if "allowed-clients" in ln and "refused" in ln]


def test_a_host_not_in_allowed_clients_is_refused(tmp_path, namespaces):
    """Bridge 1's namespace is another host on the subnet, not in bridge 0's allowed-clients."""
    b = start_bridge(tmp_path / "bridge0", namespaces, 0)
    try:
        mark = b.log.mark()
        with namespaces.inside(1):
            with pytest.raises((OSError, fcgi_client.ProtocolError)):
                fcgi_client.fcgi_request(split(DOC_BRIDGES[0]), "/health", headers={"Host": "x"})
        line = b.log.wait_for([r"peer not in allowed-clients", r"10\.213\.0\.12"], since=mark)
        assert "web" in line[0], line
        with namespaces.inside("front"):
            wait_until(lambda: fcgi_client.fcgi_request(split(DOC_BRIDGES[0]), "/health",
                                                        headers={"Host": "x"}).status == 200, 30, 0.1,
                       what="the front end still served")
    finally:
        b.stop()

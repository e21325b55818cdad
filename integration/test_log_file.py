"""`log-file:` puts the daemon's log in a file; after logrotate moves it, SIGUSR1 makes
the daemon write to a new file at the configured path."""
from __future__ import annotations

import os
import signal

from harness import APPS, free_ports, make_bridge, wait_until


def test_log_file_is_reopened_on_sigusr1(tmp_path):
    port, = free_ports(1)
    logfile = tmp_path / "fcgibridge.log"
    b = make_bridge(tmp_path, {"p": {"app": str(APPS / "edge_app.py"), "processes": 1, "threads": 1}},
                    {"front": {"fastcgi": f"127.0.0.1:{port}", "pool": "p"}},
                    bridge_extra={"log-file": str(logfile), "access-log": "-"})
    try:
        b.start()
        b.wait_ready([("front", "/health", "x")])
        text = lambda p: p.read_text() if p.exists() else ""  # noqa: E731
        wait_until(lambda: "worker ready" in text(logfile), 30, what="start-up lines in the log file")
        # Nothing of the daemon's own log on stderr any more (the harness captures stderr).
        assert "worker ready" not in b.log.text()

        rotated = tmp_path / "fcgibridge.log.1"
        os.rename(logfile, rotated)
        os.kill(b.pid, signal.SIGUSR1)
        wait_until(lambda: "SIGUSR1: reopening log files" in text(logfile), 30, what="the reopened log file")
        assert b.request("/health", listener="front", query="rotated=1").status == 200
        wait_until(lambda: "rotated=1" in text(logfile), 30, what="an access line in the new file")
        assert "rotated=1" not in rotated.read_text()
        assert "SIGUSR1" not in rotated.read_text()
    finally:
        b.stop()

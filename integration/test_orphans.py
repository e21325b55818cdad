"""What the apps start and leave behind (supervise/orphans.rs): the bridge is a child
subreaper, so an orphaned descendant of a worker becomes its child; one that left its
worker's session (setsid) or process group (setpgid) is killed, and every orphan that
exits is reaped."""
import re

import pytest

from harness import wait_until
from supervision_support import get, lc_pool, pid_of, proc_stat, start, wait_for_new_pid

pytestmark = pytest.mark.timeout(300)


def mark_file(b, name: str) -> str:
    path = b.workdir / name
    return wait_until(lambda: path.exists() and path.read_text(), 60, what=str(path))


def gone(pid: int) -> bool:
    """Neither running nor a zombie: killed (or exited) and reaped."""
    return proc_stat(pid) is None


def stat_field(pid: int, field: int) -> int:
    """A numeric field of /proc/PID/stat, numbered as in proc(5)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[field - 3])


def session_of(pid: int) -> int:
    return stat_field(pid, 6)


def group_of(pid: int) -> int:
    return stat_field(pid, 5)


ESCAPES = {"setsid": r"left its worker's session \(setsid\)", "setpgid": r"left its worker's process group \(setpgid\)"}


@pytest.mark.parametrize("how", ["setsid", "setpgid"])
@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_a_process_that_left_its_workers_group_dies_with_the_worker(tmp_path, preload, how):
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=1, preload=preload,
                                      **{"max-requests": 2, "max-requests-jitter": 0})})
    try:
        r = get(b, "p", "/escape", "mark=esc" + ("&group=1" if how == "setpgid" else ""))
        worker = pid_of(r)
        escaped = int(mark_file(b, "esc.escaped"))
        assert group_of(escaped) == escaped, "the app's child leads a process group of its own"
        assert (session_of(escaped) != session_of(b.pid)) == (how == "setsid")
        since = b.log.mark()
        # /health at start and /escape: max-requests reached, the worker is replaced
        wait_for_new_pid(b, "p", {worker}, timeout=60)
        wait_until(lambda: gone(escaped), 60, what=f"the escaped process {escaped} killed and reaped")
        lines = b.log.wait_for([r"killed a process that " + ESCAPES[how],
                                rf"\bpid={escaped}\b", r"\bpool=\"?p\b", r"time\.sleep\(600\)"], since=since)
        assert len(lines) == 1, lines
    finally:
        b.stop()


@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_a_double_forked_process_that_exits_leaves_no_zombie(tmp_path, preload):
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=1, preload=preload)})
    try:
        worker = pid_of(get(b, "p", "/double-fork", "mark=df"))
        pid, parent = map(int, mark_file(b, "df.orphan").split())
        assert parent == b.pid, f"the orphan {pid} was adopted by {parent}, not by the bridge {b.pid}"
        wait_until(lambda: gone(pid), 60, what=f"the orphan {pid} reaped")
        # it stayed in its worker's process group: nothing was killed, the worker serves on
        assert pid_of(get(b, "p", "/pid")) == worker
        assert not re.search(r"killed a process|left processes behind", b.log.text())
    finally:
        b.stop()


@pytest.mark.parametrize("how", ["setsid", "setpgid"])
def test_a_double_forked_daemon_is_killed_while_its_worker_serves_on(tmp_path, how):
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=1)})
    try:
        worker = pid_of(get(b, "p", "/double-fork", "mark=daemon&" + ("setsid=1" if how == "setsid" else "group=1")))
        daemon = int(mark_file(b, "daemon.grandchild"))
        # adopted at once, and found by the next look (at most a few seconds later)
        wait_until(lambda: gone(daemon), 60, what=f"the double-forked daemon {daemon} killed and reaped")
        b.log.wait_for([r"killed a process that " + ESCAPES[how], rf"\bpid={daemon}\b", r"\bpool=\"?p\b"])
        assert pid_of(get(b, "p", "/pid")) == worker
    finally:
        b.stop()

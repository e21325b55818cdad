"""Signals an operator sends to the whole service, as `systemctl kill -s USR1 fcgibridge`
(whose default is every process of the unit's cgroup) or a `kill` of the wrong pid does:
SIGUSR1, SIGHUP and SIGUSR2 reach the daemon *and* every worker, template and FastCGI
program it started. The daemon acts on them (reopen logs, reload, reload and restart);
workers must survive them (docs/systemd.md#signals, docs/worker-contract.md)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import sys

import pytest

from harness import APPS, free_ports, make_bridge, wait_until
from supervision_support import alive, proc_stat

APP = str(APPS / "lifecycle_app.py")
SIGNALS = {"SIGUSR1": signal.SIGUSR1, "SIGHUP": signal.SIGHUP, "SIGUSR2": signal.SIGUSR2}


def descendants(root: int) -> set[int]:
    """Every live process below `root` (workers, templates and their forks, programs' children)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[0] != "Z":
                children.setdefault(st[1], []).append(int(name))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def undelivered(pid: int, sig: int) -> bool:
    """Whether `sig` still waits for delivery to a thread of `pid` that does not block it.
    A signal whose action is SIG_IGN is dropped when sent; one with a handler is taken off
    the pending sets when delivered; a fatal one kills the process when delivered; one that
    every thread blocks (command: programs, docs/worker-contract.md) stays pending."""
    bit = 1 << (sig - 1)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for t in tasks:
        fields = {}
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("SigPnd", "ShdPnd", "SigBlk"):
                        fields[key] = int(value.split()[0], 16)
        except (OSError, ValueError, IndexError):
            continue
        if (fields.get("SigPnd", 0) | fields.get("ShdPnd", 0)) & bit and not fields.get("SigBlk", 0) & bit:
            return True
    return False


def signal_masks(pid: int) -> dict[str, int]:
    """SigBlk (of the main thread), SigIgn and SigCgt of `pid`; empty if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0], 16) for k, _, v in (ln.partition(":") for ln in f)
                    if k in ("SigBlk", "SigIgn", "SigCgt")}
    except (OSError, ValueError, IndexError):
        return {}


def takes_charge(pid: int, sig: int) -> bool:
    """Whether `pid` blocks, ignores or catches `sig` (its default action is no longer in
    force)."""
    masks = signal_masks(pid)
    return bool((masks.get("SigBlk", 0) | masks.get("SigIgn", 0) | masks.get("SigCgt", 0)) & (1 << (sig - 1)))


def wait_delivered(pids, sig: int, what: str):
    """Until `sig` was delivered to every one of `pids` (or the process is gone)."""
    wait_until(lambda: not any(alive(p) and undelivered(p, sig) for p in pids), 60, 0.05,
               what=f"{what}: {signal.Signals(sig).name} delivered")


def deaths(b, since: int) -> list[str]:
    return [ln for ln in b.log.lines(since) if re.search(r"worker exited|template exited|killed by signal (1|10|12) ", ln)]


@pytest.fixture(scope="module")
def signalled(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("signals")
    pools = {
        "plain": {"app": APP, "processes": 2, "threads": 2},
        "pre": {"app": APP, "processes": 2, "threads": 2, "preload": True},
    }
    if shutil.which("php-cgi"):
        pools["php"] = {"command": ["php-cgi"], "processes": 1, "threads": 2}
    if importlib.util.find_spec("flup") is not None:
        pools["flup"] = {"command": [sys.executable, str(APPS / "flup_app.fcgi")], "processes": 1}
    port = free_ports(1)[0]
    routes = [{"host": f"{name}.test", "pool": name} for name in pools]
    b = make_bridge(workdir, pools, {"l": {"fastcgi": f"127.0.0.1:{port}", "routes": routes}})
    b.pools = pools
    try:
        b.start()
        b.wait_ready([p for p in probes(b) if p[2] != "php.test"], timeout=120)
        serve_all(b)
        yield b
    finally:
        b.stop()


def probes(b):
    paths = {"php": "/hello.php"}
    return [("l", paths.get(name, "/health"), f"{name}.test") for name in b.pools]


def serve_all(b):
    """Every pool answers (a replaced worker gets the time its start takes)."""
    for listener, path, host in probes(b):
        def ok():
            b.assert_running()
            extra = [("SCRIPT_FILENAME", str(APPS / "hello.php")), ("REDIRECT_STATUS", "200")] if host == "php.test" else None
            r = b.request(path, pool=host, listener=listener, query="x=1", extra=extra)
            return r.status == 200
        wait_until(ok, 60, 0.1, what=f"200 from {host}")


def workers_by_kind(b) -> dict[str, set[int]]:
    kinds: dict[str, set[int]] = {"native": set(), "php": set(), "flup": set()}
    for pid in descendants(b.pid):
        cmd = cmdline(pid)
        if b"fcgibridge_worker" in cmd:
            kinds["native"].add(pid)
        elif b"php-cgi" in cmd:
            kinds["php"].add(pid)
        elif b"flup_app" in cmd:
            kinds["flup"].add(pid)
    return kinds


def stable_workers(b) -> dict[str, set[int]]:
    """The processes once every pool serves and nothing is being retired: plain 2, pre
    (template + 2 forks), php-cgi (master + PHP_FCGI_CHILDREN = threads = 2), flup 1."""
    serve_all(b)
    want = {"native": 5, "php": 3 if "php" in b.pools else 0, "flup": 1 if "flup" in b.pools else 0}

    def full():
        k = workers_by_kind(b)
        return k if {kind: len(pids) for kind, pids in k.items()} == want else None
    return wait_until(full, 60, 0.1, what=f"exactly {want} processes")


def ignored_lines(b, since: int, name: str, pids) -> None:
    """The native worker says it ignored the signal, once per process, with its pid."""
    for pid in pids:
        b.log.wait_for([rf"{name} ignored", rf"\bpid[=:\s\"]+{pid}\b"], since=since, timeout=60)


@pytest.mark.parametrize("name", ["SIGUSR1", "SIGHUP", "SIGUSR2"])
def test_workers_alone_survive_operator_signals(signalled, name):
    """A `kill -USR1` of a worker's pid (or of all of them): every worker lives on, same pids."""
    b, sig = signalled, SIGNALS[name]
    before = stable_workers(b)
    mark = b.log.mark()
    targets = set().union(*before.values())
    for pid in targets:
        os.kill(pid, sig)
    wait_delivered(targets, sig, "workers")
    if sig != signal.SIGUSR2:
        ignored_lines(b, mark, name, before["native"])
    dead = [p for p in targets if not alive(p)]
    assert not dead, f"{name} killed {dead}:\n" + "\n".join(deaths(b, mark) or b.log.lines(mark)[-40:])
    serve_all(b)
    assert workers_by_kind(b) == before
    assert not deaths(b, mark), deaths(b, mark)


@pytest.mark.parametrize("name", ["SIGUSR1", "SIGHUP"])
def test_signal_to_the_whole_service(signalled, name):
    """As `systemctl kill -s USR1|HUP` without --kill-whom=main: the daemon reopens its logs
    or reloads; no worker, template or program (php-cgi and its children, flup) dies."""
    b, sig = signalled, SIGNALS[name]
    before = stable_workers(b)
    mark = b.log.mark()
    everyone = {b.pid} | set().union(*before.values())
    for pid in everyone:
        os.kill(pid, sig)
    wait_delivered(everyone, sig, "the daemon and its workers")
    if sig == signal.SIGUSR1:
        b.log.wait_for(r"SIGUSR1: reopening log files", since=mark)
    else:
        b.log.wait_for(r"reload done: pools added: none; changed: none; removed: none", since=mark, timeout=60)
    ignored_lines(b, mark, name, before["native"])
    serve_all(b)
    assert workers_by_kind(b) == before, "the same workers after the signal"
    assert not deaths(b, mark), deaths(b, mark)


def test_sigusr2_to_the_whole_service(signalled):
    """SIGUSR2 to the daemon restarts every worker (rolling); the old ones are retired by
    the bridge (SIGTERM), none dies of the SIGUSR2 it got too: a native worker only dumps
    the stacks of its running requests (it has none here), a template its own stack. The
    preload template is replaced as well (docs/preload.md: the way to deploy new code);
    the old one ends after its last worker."""
    b = signalled
    before = stable_workers(b)
    old = set().union(*before.values())
    mark = b.log.mark()
    everyone = {b.pid} | set().union(*before.values())
    for pid in everyone:
        os.kill(pid, signal.SIGUSR2)
    wait_delivered(everyone, signal.SIGUSR2, "the daemon and its workers")
    b.log.wait_for(r"reload done: pools added: none; changed: .*plain", since=mark, timeout=60)
    serve_all(b)
    # None died of the signal (a retirement's reason, `restart requested (reload --restart-workers or SIGUSR2)`, is
    # the restart itself).
    assert not [ln for ln in b.log.lines(mark) if "signal 12 (SIGUSR2)" in ln or "exited" in ln], b.log.lines(mark)


    def rolled():
        now = workers_by_kind(b)
        return now if not (set().union(*now.values()) & old) else None
    try:
        wait_until(rolled, 120, 0.1, what="every worker and program replaced by the restart")
    except TimeoutError:
        raise AssertionError(f"{before} -> {workers_by_kind(b)}\n" + "\n".join(b.log.lines(mark)[-60:]))
    stable_workers(b)


def test_signals_while_the_daemon_starts(tmp_path):
    """A log rotation or a reload that finds the daemon starting (config being read,
    sockets bound, the first workers spawned) is not the end of it."""
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"plain": {"app": APP, "processes": 1, "threads": 1}},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "plain"}})
    b.start()
    try:
        # No process can help dying of a signal that arrives before its main() runs; from
        # the moment the daemon has taken charge of one of them (ignored or caught), all of
        # them must be safe. Not SIGHUP's: under nohup (a CI job, say) it is ignored from
        # exec, before main() has taken charge of anything.
        wait_until(lambda: b.proc.poll() is not None or takes_charge(b.pid, signal.SIGUSR1), 30, 0.001,
                   what="the daemon's first signal disposition")
        # Signals do not queue: keep one of each pending until the daemon says it runs (at
        # least once, however soon that is).
        while b.proc.poll() is None:
            for sig in (signal.SIGUSR1, signal.SIGHUP):
                os.kill(b.pid, sig)
            if "running (pid" in b.log.text():
                break
        b.assert_running()
        b.wait_ready([("l", "/health", "x")])
        b.log.wait_for(r"SIGUSR1: reopening log files")
        assert not [ln for ln in b.log.lines() if "exited" in ln], b.log.lines()
    finally:
        b.stop()


def test_a_reload_sent_while_the_daemon_reads_its_configuration_is_applied(tmp_path):
    """An edit saved while the daemon starts, and the SIGHUP sent for it, reach the daemon
    before it can act on them: it must reload once it runs, not lose the signal. Made
    certain here by the pool's interpreter: the daemon's probe of it (while it checks the
    configuration, before any handler exists) adds a listener and sends the SIGHUP."""
    port, late_port = free_ports(2)
    python = shutil.which("python3")
    wrapper = tmp_path / "python-that-edits"
    flag = tmp_path / "edited"
    wrapper.write_text(f"""#!/bin/sh
if [ "$1" = "-S" ] && [ ! -e {flag} ]; then
    : > {flag}
    printf 'listeners:\\n  late:\\n    fastcgi: 127.0.0.1:{late_port}\\n    pool: plain\\n' > {tmp_path}/conf.d/60-late.yaml
    kill -HUP $PPID
fi
exec {python} "$@"
""")
    wrapper.chmod(0o755)
    b = make_bridge(tmp_path, {"plain": {"app": APP, "processes": 1, "threads": 1, "python": str(wrapper)}},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "plain"}})
    b.start()
    try:
        b.wait_ready([("l", "/health", "x")])
        assert flag.exists(), "the probe ran the wrapper"
        b.log.wait_for(r"SIGHUP: reloading", timeout=60)
        b.log.wait_for(r"reload done: .*listeners added: late", timeout=60)
        b.config["listeners"]["late"] = {"fastcgi": f"127.0.0.1:{late_port}", "pool": "plain"}
        b.wait_ready([("late", "/health", "x")])
        assert not [ln for ln in b.log.lines() if "exited" in ln], b.log.lines()
    finally:
        b.stop()


def test_workers_do_not_inherit_the_daemons_blocked_signals(tmp_path, monkeypatch):
    """The daemon blocks SIGHUP, SIGUSR1 and SIGUSR2 while it starts, and the runtime
    threads it starts meanwhile keep them blocked. A worker forked from such a thread
    must not: it would never get the SIGUSR2 that asks it for its Python stacks
    (request-timeout, slowlog). Two runtime threads, so that the workers are forked from
    them."""
    monkeypatch.setenv("FCGIBRIDGE_RUNTIME_THREADS", "2")
    port = free_ports(1)[0]
    b = make_bridge(tmp_path, {"plain": {"app": APP, "processes": 2, "threads": 2}},
                    {"l": {"fastcgi": f"127.0.0.1:{port}", "pool": "plain"}})
    b.start()
    try:
        b.wait_ready([("l", "/health", "x")])
        bits = sum(1 << (sig - 1) for sig in SIGNALS.values())
        threads = [int(t) for t in os.listdir(f"/proc/{b.pid}/task")]
        assert len(threads) > 2, "the daemon runs more than one thread"
        workers = wait_until(lambda: (w := workers_by_kind(b)["native"]) and len(w) == 2 and w, 60, 0.05,
                             what="two workers")
        for pid in workers:
            masks = signal_masks(pid)
            assert masks, f"worker {pid} gone"
            assert masks["SigBlk"] & bits == 0, f"worker {pid} blocks {masks['SigBlk']:#x}"
            # The native worker's own handlers are installed (it logs and ignores SIGHUP/SIGUSR1,
            # dumps stacks on SIGUSR2) once it has started: the second worker may still be
            # importing when the first answers.
            wait_until(lambda pid=pid: signal_masks(pid).get("SigCgt", 0) & (1 << (signal.SIGUSR2 - 1)), 60, 0.05,
                       what=f"worker {pid}'s SIGUSR2 handler")
            assert signal_masks(pid)["SigBlk"] & bits == 0
        # And the daemon acts on them once running.
        mark = b.log.mark()
        os.kill(b.pid, signal.SIGUSR1)
        b.log.wait_for(r"SIGUSR1: reopening log files", since=mark)
    finally:
        b.stop()

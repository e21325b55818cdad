"""The preloaded template of a pool (``preload: true``; docs/preload.md).

Started by the bridge with the worker's command line plus ``FCGIBRIDGE_TEMPLATE=1``:
no listening socket on fd 0, the readiness pipe on fd 3 as usual, and a control
socket (SOCK_SEQPACKET) on fd 4. The template imports the app once, reports READY,
then waits. For every ``SPAWN`` message — carrying four descriptors by SCM_RIGHTS:
the worker's listening socket, its stdout and stderr pipes and its readiness pipe, and
for a pool behind a ``direct`` listener its scoreboard fifth (and its relay's two ends
and balance page sixth to eighth, left where they are and named in FCGIBRIDGE_RELAY_FDS: the app's
import may hold any low number) —
it forks; the child puts them on fds 0 (via a private copy), 1, 2 and 3, sets the
RLIMIT_CPU that ``SPAWN cpu=SOFT,HARD`` names (cpu-time-limit) and becomes an
ordinary worker (threads are started only after the fork). The template answers
``PID <pid>``, reaps its children and reports ``EXIT <pid> <wait status>`` for each.

The template never starts a thread: a fork copies only the calling thread, and a lock
held by another thread at that moment would stay locked forever in the child.
"""
import fcntl
import os
import resource
import select
import signal
import socket
import sys
import traceback

from . import main as _main

CONTROL_FD = 4
# Received descriptors are moved at or above this number before being put on 0-3.
_HIGH_FD = 10


def _reap(ctl):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            ctl.send(b"EXIT %d %d" % (pid, status))
        except OSError:
            os._exit(0)  # the bridge is gone


def _cpu_limit(msg):
    """The RLIMIT_CPU (soft, hard) that ``SPAWN cpu=SOFT,HARD`` asks the fork to set on
    itself; None for a plain ``SPAWN``. ValueError: no SPAWN request."""
    words = msg.split()
    if words == [b"SPAWN"]:
        return None
    if len(words) == 2 and words[0] == b"SPAWN" and words[1].startswith(b"cpu="):
        soft, hard = (int(v) for v in words[1][4:].split(b","))
        return soft, hard
    raise ValueError(msg)


def _limit_cpu(cpu):
    """cpu-time-limit, set by the fork on itself: lowering one's own limit needs no
    privilege, and a fork's CPU time counts from the fork (the template's is not charged to
    it). Never above the hard limit it inherits (the bridge's own), as before exec
    (supervise/isolate.rs)."""
    soft, hard = cpu
    _, inherited = resource.getrlimit(resource.RLIMIT_CPU)
    if inherited != resource.RLIM_INFINITY:
        hard = min(hard, inherited)
    resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))


def _become_worker(fds, ctl, wake_fds, app, threads, processes, cpu):
    """In the forked child: take the slot's descriptors and serve. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        ctl.close()
        for fd in wake_fds:
            os.close(fd)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in fds]
        for fd in fds:
            os.close(fd)
        listen, out, err, ready, *board = high
        board, relay = board[:1], board[1:]
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(ready, 3)
        for fd in (out, err, ready):
            os.close(fd)
        if relay:
            # At or above _HIGH_FD and close-on-exec: never one the app's import opened.
            os.environ["FCGIBRIDGE_RELAY_FDS"] = ",".join(str(fd) for fd in relay)
        if cpu is not None:
            _limit_cpu(cpu)
        # Its own process group, as the bridge gives every worker it starts itself.
        os.setpgid(0, 0)
        from . import _native

        for fd in board:
            _native.attach_scoreboard(fd)  # maps it and closes the descriptor
        ppid = os.getppid()
        if os.environ.get("FCGIBRIDGE_PDEATHSIG", "1") != "0":
            # Relative to the template: the template dies with the bridge, its workers with it.
            _native.set_parent_death_signal()
            if os.getppid() != ppid:
                os._exit(1)
        os.environ.pop("FCGIBRIDGE_TEMPLATE", None)
        _main.serve(app, listen, 3, threads, processes)
        code = 0
    except BaseException:  # noqa: B902 - whatever happens, the child must not return into the template's loop
        traceback.print_exc()
        sys.stderr.flush()
    os._exit(code)


def _spawn(fds, ctl, wake_fds, app, threads, processes, cpu):
    pid = os.fork()
    if pid == 0:
        _become_worker(fds, ctl, wake_fds, app, threads, processes, cpu)
    for fd in fds:
        os.close(fd)
    return pid


def _retire(ctl):
    """The bridge stopped asking for workers (EOF on the control socket): keep reaping and
    reporting the workers still running, exit after the last. Never returns."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        try:
            ctl.send(b"EXIT %d %d" % (pid, status))
        except OSError:
            pass


def run():
    """Entry point when FCGIBRIDGE_TEMPLATE=1."""
    ready_fd = _main.ready_fd_from_env()
    ppid = os.getppid()
    try:
        _main.load_native(ppid)
        threads = max(1, _main._env_int("FCGIBRIDGE_THREADS", 1))
        processes = max(1, _main._env_int("FCGIBRIDGE_PROCESSES", 1))
        spec = os.environ.get("FCGIBRIDGE_APP", "")
        app = _main.load_app(spec)
        _main.choose_interface(app, spec)
        ctl = socket.socket(fileno=CONTROL_FD)
    except BaseException as exc:  # noqa: B902 - reported like a worker's load failure
        _main.report_load_failure(exc, ready_fd)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    # A handler (not SIG_DFL) so that SIGCHLD interrupts select() and writes the wakeup fd.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _main._write_ready(ready_fd, "READY\n")
    sys.stdout.flush()

    while True:
        try:
            readable, _, _ = select.select([ctl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(ctl)
        if ctl not in readable:
            continue
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 256, 8)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not msg:
            _retire(ctl)
        try:
            cpu = _cpu_limit(msg)
            well_formed = len(fds) in (4, 5, 7, 8)
        except ValueError:
            cpu, well_formed = None, False
        if well_formed:
            try:
                pid = _spawn(fds, ctl, (wake_r, wake_w), app, threads, processes, cpu)
                reply = b"PID %d" % pid
            except OSError as exc:
                reply = b"ERR fork failed: " + str(exc).encode("utf-8", "replace")
        else:
            for fd in fds:
                os.close(fd)
            reply = b"ERR malformed request"
        try:
            ctl.send(reply)
        except OSError:
            os._exit(0)
        _reap(ctl)

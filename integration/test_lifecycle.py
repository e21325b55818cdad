"""Worker lifecycle with real processes (docs/supervision.md): max-requests (+ jitter),
restart-interval, min-lifetime, request-timeout (504, stacks in the log, graceful-timeout
for the other requests), memory-limit, cpu-time-limit, startup-timeout, an app that cannot
be imported (one traceback, backoff, 503 at once while other pools serve), os._exit, a
worker that cannot be executed or cannot enter its directory (which step, as whom)."""
import os
import pwd
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

import fcgi_client as fc
from harness import to_yaml, wait_until
from supervision_support import (APP, Background, Hammer, alive, get, lc_pool, pid_of, start, wait_for_new_pid,
                                 worker_pids)


def test_max_requests_recycles_without_a_failed_request(tmp_path):
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=1, **{"max-requests": 5, "max-requests-jitter": 0})})
    try:
        # a worker keeps serving past max-requests until its replacement is ready, so
        # paced requests see the workers change
        pids = []
        deadline = time.monotonic() + 30
        while len(set(pids)) < 3 and time.monotonic() < deadline:
            pids.append(pid_of(get(b, "p", "/pid")))
            time.sleep(0.03)
        distinct = list(dict.fromkeys(pids))
        assert len(distinct) >= 3, distinct
        # a worker serves at least max-requests before its replacement takes over (the
        # first one also served start()'s readiness request to /health)
        for i, p in enumerate(distinct[:-1]):
            assert pids.count(p) + (i == 0) >= 5, (p, pids)
        (line,) = b.log.wait_for([rf"retiring the worker: max-requests \(\d+ served\).* pid={distinct[0]}\b"])
        # The line names what the worker served in the end, its due count and those after
        # (the readiness request's too; one of ours may still run as it retires).
        due, served = map(int, re.search(r"max-requests \((\d+) served\).* served=(\d+)", line).groups())
        assert due >= 5 and pids.count(distinct[0]) <= served <= pids.count(distinct[0]) + 1, (line, pids)
        b.log.wait_for([r"worker stopped \(max-requests"])
    finally:
        b.stop()


def test_max_requests_added_by_a_reload_applies_to_the_running_worker(tmp_path):
    """docs/supervision.md: a changed max-requests applies to the running workers too — also
    to one started without any (its limit was 0)."""
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=1)})
    try:
        first = pid_of(get(b, "p", "/pid"))
        for _ in range(10):
            assert pid_of(get(b, "p", "/pid")) == first
        b.config["pools"]["p"].update({"max-requests": 5, "max-requests-jitter": 0})
        (b.confdir / "50-test.yaml").write_text(to_yaml(b.config))
        mark = b.log.mark()
        b.proc.send_signal(signal.SIGHUP)
        b.log.wait_for([r"reload done"], since=mark)
        b.log.wait_for([r"retiring the worker: max-requests \(\d+ served\)", rf"pid\W+{first}\b"], since=mark)
        wait_until(lambda: pid_of(get(b, "p", "/pid")) != first, 60, what="a new worker serving")
    finally:
        b.stop()


def test_max_requests_jitter_gives_each_worker_its_own_threshold(tmp_path):
    b = start(tmp_path, {"p": lc_pool(processes=6, threads=1, **{"max-requests": 1000, "max-requests-jitter": 500})})
    try:
        lines = b.log.wait_for([r"worker started", r"max_requests=\d+"])
        wait_until(lambda: len(b.log.wait_for([r"worker started", r"max_requests=\d+"])) >= 6, 30)
        values = {int(re.search(r"max_requests=(\d+)", ln).group(1)) for ln in b.log.lines() if "worker started" in ln}
        assert all(1000 <= v <= 1500 for v in values), values
        assert len(values) >= 3, f"six workers drew {values}: the jitter does not spread them"
        assert lines
    finally:
        b.stop()


def test_restart_interval_and_min_lifetime(tmp_path):
    b = start(tmp_path, {
        "ri": lc_pool(processes=1, threads=1, **{"restart-interval": "2s", "restart-interval-jitter": 0}),
        # max-requests 2, but no recycling before 8 s of life (room for a loaded machine)
        "ml": lc_pool(processes=1, threads=1, **{"max-requests": 2, "max-requests-jitter": 0, "min-lifetime": "8s"}),
    })
    try:
        first_ri = pid_of(get(b, "ri", "/pid"))
        first_ml = pid_of(get(b, "ml", "/pid"))
        t0 = time.monotonic()
        for _ in range(10):
            assert pid_of(get(b, "ml", "/pid")) == first_ml
        assert time.monotonic() - t0 < 5
        new_ri = wait_for_new_pid(b, "ri", {first_ri}, timeout=30)
        assert new_ri != first_ri
        b.log.wait_for([r"retiring the worker: restart-interval"])
        new_ml = wait_for_new_pid(b, "ml", {first_ml}, timeout=30)
        assert time.monotonic() - t0 >= 4, "recycled before min-lifetime"
        assert new_ml != first_ml
    finally:
        b.stop()


def test_request_timeout_is_504_with_stacks_and_the_worker_replaced(tmp_path):
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=3,
                                      **{"request-timeout": "4s", "graceful-timeout": "20s"})})
    try:
        before = pid_of(get(b, "p", "/pid"))
        mark = b.log.mark()
        t0 = time.monotonic()
        hung = Background(lambda: get(b, "p", "/hang", "mark=hung"))
        wait_until(lambda: (tmp_path / "hung.started").exists(), 60, what="/hang running")
        t_hang = time.monotonic()
        # Another request on the same worker, in flight when /hang times out (4 s after it
        # started) and shorter than request-timeout itself: it
        # finishes (graceful-timeout is 20 s). Started 2 s into /hang on purpose, and it
        # runs 3 s, so it straddles the timeout with 2 s to spare either way.
        time.sleep(max(0.0, t_hang + 2.0 - time.monotonic()))
        other = Background(lambda: get(b, "p", "/sleep", "s=3"))
        r = hung.result()
        took = time.monotonic() - t0
        assert r.status == 504, r.stdout[:300]
        assert 3.5 < took < 30, took
        # the Python stack of the hung thread is in the log, tagged with pool and pid
        (line,) = b.log.wait_for([r"request-timeout \(4s\): GET /hang", f"pid={before}"], since=mark)
        # Interrupted when it reached the timeout, not at the manager's next one-second tick
        # (the bridge's own clock: the line says how long it had run).
        ran = float(re.search(r"ran ([0-9.]+)s", line).group(1))
        assert 4.0 <= ran < 4.5, line
        b.log.wait_for([r"hang_here", f"pid={before}"], since=mark)
        assert pid_of(other.result()) == before
        # the worker is replaced; requests keep working meanwhile
        assert pid_of(get(b, "p", "/pid")) > 0
        wait_until(lambda: not alive(before), 30, what="the timed-out worker gone")
        b.log.wait_for([r"worker stopped \(request-timeout", "SIGKILL"], since=mark)
        assert pid_of(get(b, "p", "/pid")) != before
    finally:
        b.stop()


def test_request_timeout_other_requests_get_graceful_timeout_then_stacks_and_kill(tmp_path):
    b = start(tmp_path, {"p": lc_pool(processes=2, threads=2,
                                      **{"request-timeout": "2s", "graceful-timeout": "2s"})})
    try:
        mark = b.log.mark()
        # two hung requests on... whichever workers: each worker's stuck requests end at
        # request-timeout; the worker is then drained and killed
        hung = [Background(lambda: get(b, "p", "/hang")) for _ in range(2)]
        for h in hung:
            assert h.result().status == 504
        b.log.wait_for([r"worker stopped \(request-timeout"], since=mark, timeout=30)
        # the pool serves on
        for _ in range(5):
            assert get(b, "p", "/pid").status == 200
    finally:
        b.stop()


def test_graceful_timeout_kills_a_draining_worker_with_stacks(tmp_path):
    # max-requests 1: the worker drains after its first request; a long one overruns
    # graceful-timeout (1 s): its stacks are logged and it is killed (502 for that request)
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=2,
                                      **{"max-requests": 1, "max-requests-jitter": 0, "graceful-timeout": "1s"})})
    try:
        long = Background(lambda: get(b, "p", "/sleep", "s=30&mark=long"))
        # the long request must be on the worker before the one that reaches max-requests
        wait_until(lambda: (tmp_path / "long.started").exists(), 60, what="the long request running")
        assert get(b, "p", "/pid").status == 200  # reaches max-requests
        r = long.result(60)
        assert r.status == 502, r.stdout[:200]
        (line,) = b.log.wait_for([r"did not finish 1 request\(s\) within graceful-timeout"])
        # The request is named by its id, which its stack lines carry too.
        rid = re.search(r"GET /sleep\?s=30&mark=long \(\d+s, request (\d+)\)", line).group(1)
        b.log.wait_for([rf"\[stack request_id={rid} "])
    finally:
        b.stop()


def test_memory_limit_recycles_a_leaking_worker_gracefully(tmp_path):
    b = start(tmp_path, {"p": lc_pool(processes=2, threads=2, **{"memory-limit": "120MiB"})})
    try:
        hammer = Hammer(b, "p", n=2)
        leaker = pid_of(get(b, "p", "/leak", "mb=150"))
        wait_until(lambda: not alive(leaker), 30, what="the leaking worker recycled")
        hammer.stop()
        assert hammer.errors == [] and set(hammer.statuses) == {200}, (hammer.statuses, hammer.errors[:3])
        b.log.wait_for([r"retiring the worker: memory-limit \(RSS \d+MiB > 120MiB\)", f"pid={leaker}"])
        b.log.wait_for([r"worker stopped \(memory-limit", "SIGTERM"])
        assert len(worker_pids(b)) == 2
        for pid in worker_pids(b):  # ps / pgrep -f tell the pools apart
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert b"# fcgibridge pool p\n" in f.read(), pid
    finally:
        b.stop()


@pytest.mark.parametrize("preload", [False, True], ids=["exec", "preload"])
def test_cpu_time_limit_recycles_after_the_request_and_the_hard_limit_kills(tmp_path, preload):
    """The same for a worker the bridge executes and for one forked from a template, which
    sets its RLIMIT_CPU itself after the fork (docs/worker-contract.md)."""
    b = start(tmp_path, {
        "soft": lc_pool(processes=2, threads=1, preload=preload,
                        **{"cpu-time-limit": "2s", "graceful-timeout": "20s"}),
        "hard": lc_pool(processes=1, threads=1, preload=preload, **{"cpu-time-limit": "1s", "graceful-timeout": "1s"}),
    })
    try:
        # 3 s of CPU: past the soft limit the worker says so and is retired, but its request finishes
        r = get(b, "soft", "/spin", "s=3")
        spinner = pid_of(r)
        b.log.wait_for([r"cpu-time-limit reached \(SIGXCPU\)", f"pid={spinner}"])
        b.log.wait_for([r"retiring the worker: cpu-time-limit", f"pid={spinner}"])
        wait_until(lambda: not alive(spinner), 30, what="the spinning worker gone")
        assert get(b, "soft", "/pid").status == 200
        # spinning on past limit + graceful-timeout: the kernel's hard limit kills it
        r = get(b, "hard", "/spin", "s=30")
        assert r.status == 502, r.stdout[:200]
        b.log.wait_for([r"worker stopped \(cpu-time-limit", "SIGKILL"])
        assert get(b, "hard", "/pid").status == 200
    finally:
        b.stop()


def test_import_error_logged_once_backs_off_and_answers_503_at_once(tmp_path):
    b = start(tmp_path, {
        "broken": lc_pool(processes=2, threads=1, env={"LIFECYCLE_BROKEN": "1"}),
        "good": lc_pool(processes=1, threads=1),
    }, wait=False)
    try:
        b.log.wait_for([r"restarting the worker in 4s", "broken"], timeout=30)
        text = b.log.lines()
        tracebacks = [ln for ln in text if "ModuleNotFoundError: No module named 'no_such_module" in ln
                      and "worker failed to start" not in ln and "cannot start its app" not in ln]
        assert len(tracebacks) == 1, "\n".join(tracebacks)
        assert any("failed to start again, same error" in ln for ln in text)
        delays = re.findall(r"restarting the worker in (\S+) pool=\"?broken", "\n".join(text))
        assert delays[:4] == ["500ms", "1s", "2s", "4s"], delays
        t0 = time.monotonic()
        r = get(b, "broken", "/pid")
        # at once: not after queue-timeout (30 s) nor the backoff
        assert r.status == 503 and time.monotonic() - t0 < 10, (r.status, time.monotonic() - t0)
        assert r.header("Retry-After")
        b.log.wait_for([r"answering 503: pool broken cannot start its app \(ModuleNotFoundError"])
        # the other pool is not affected
        wait_until(lambda: get(b, "good", "/pid").status == 200, 30, what="the good pool")
    finally:
        b.stop()


def test_startup_timeout_dumps_the_import_stack_and_retries(tmp_path):
    b = start(tmp_path, {"slow": lc_pool(processes=1, threads=1, env={"LIFECYCLE_IMPORT_SLEEP": "60"},
                                         **{"startup-timeout": "2s"})}, wait=False)
    try:
        b.log.wait_for([r"not ready within startup-timeout 2s"], timeout=30)
        # faulthandler's dump: the import is sleeping in the app module
        b.log.wait_for([r"lifecycle_app.py", "line"], timeout=10)
        b.log.wait_for([r"restarting the worker in"], timeout=10)
        r = get(b, "slow", "/pid")
        assert r.status == 503
    finally:
        b.stop()


def test_os_exit_mid_request_is_502_and_a_new_worker_serves(tmp_path):
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=2)})
    try:
        before = pid_of(get(b, "p", "/pid"))
        r = get(b, "p", "/exit")
        assert r.status == 502
        b.log.wait_for([r"worker exited: exit status 1; replacing it", f"pid={before}"])
        assert wait_for_new_pid(b, "p", {before}) != before
    finally:
        b.stop()


def test_a_url_that_kills_its_worker_hit_in_a_burst_costs_502s_not_an_outage(tmp_path):
    """A view that kills its worker (os._exit here; a segfault, the OOM killer), hit many
    times at once: each fresh worker is handed the next of those requests and dies within
    milliseconds of READY. That is no start-up crash: each such worker is replaced at once,
    so healthy requests meanwhile wait seconds, not a backoff that grows to 30 s (with the
    pool left without a worker and every URL answered 503 after queue-timeout)."""
    n, hits = 3, 15
    # One thread per process and no pipelining: a healthy request never shares a worker
    # with a crashing one (which would cost it a 502 as well).
    b = start(tmp_path, {"p": lc_pool(processes=n, threads=1, pipeline=False, **{"queue-timeout": "120s"})})
    try:
        wait_until(lambda: len(b.log.wait_for(r"worker ready in")) >= n, 60, what="all workers ready")
        mark = b.log.mark()
        stop = threading.Event()
        healthy = []

        def keep_asking():
            while not stop.is_set():
                t0 = time.monotonic()
                r = get(b, "p", "/pid", timeout=150)
                healthy.append((r.status, time.monotonic() - t0))

        askers = [threading.Thread(target=keep_asking, daemon=True) for _ in range(2)]
        for t in askers:
            t.start()
        crashes = [Background(lambda: get(b, "p", "/exit", timeout=150)) for _ in range(hits)]
        statuses = [c.result(200).status for c in crashes]
        stop.set()
        for t in askers:
            t.join(200)
        assert statuses == [502] * hits, statuses
        assert healthy and all(s == 200 for s, _ in healthy), healthy
        slowest = max(took for _, took in healthy)
        # Far below queue-timeout: a few worker start-ups, not a backoff of 0.5+1+2+4+8+16 s.
        assert slowest < 25, f"a healthy request waited {slowest:.1f}s: {healthy}"
        wait_until(lambda: b.pool_status("p")["idle_workers"] == n, 30, what=f"the pool back to {n} workers")
        text = b.log.text(mark)
        assert "restarting the worker in" not in text, text
        b.log.wait_for([r"worker exited: exit status 1; replacing it at once \(it died serving GET /exit "
                        r"\(request \d+\)\)", r"pid=\d+"], since=mark)
    finally:
        b.stop()


@pytest.mark.parametrize("grace", [None, "1s"], ids=["default-5s", "abort-grace-1s"])
def test_a_request_whose_client_left_and_that_the_app_does_not_end_retires_its_worker_gracefully(tmp_path, grace):
    """A client gives up on a slow view that never looks for the disconnect. After the
    pool's abort-grace (default 5 s) the worker is replaced as for request-timeout: a new
    one starts, the other requests on it finish (graceful-timeout), then it is killed. It
    is no crash. A shorter abort-grace replaces it sooner."""
    keys = {"graceful-timeout": "60s", **({"abort-grace": grace} if grace else {})}
    seconds = int((grace or "5s").removesuffix("s"))
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=4, **keys)})
    try:
        before = pid_of(get(b, "p", "/pid"))
        st0 = b.pool_status("p")
        mark = b.log.mark()
        patient = Background(lambda: get(b, "p", "/hold", "mark=patient"))
        wait_until((tmp_path / "patient.started").exists, 60, what="the patient request running")
        with fc.FcgiConnection(b.listener_address("l-p")) as conn:
            conn.begin(1, fc.cgi_params("/sleep", query="s=120&mark=left"), b"")
            wait_until((tmp_path / "left.started").exists, 60, what="the request its client leaves running")
            aborted = time.monotonic()
            conn.abort(1)
            assert conn.wait(1).complete, "the web server gets its END_REQUEST at once"
        lines = b.log.wait_for([r"WARN", rf"worker did not end an aborted request within abort-grace \({seconds}s\): "
                                r"GET /sleep\?s=120&mark=left ran",
                                r"its 1 other request\(s\) get graceful-timeout \(1m\) to finish, then it is killed",
                                f"pid={before}", r"request_id=\d+", r"uri=\"?/sleep\?s=120"], since=mark, timeout=60)
        waited = time.monotonic() - aborted
        assert waited >= seconds, f"replaced {waited:.1f}s after the abort, within its {seconds}s grace"
        if grace:
            # The bridge's own clock (not this test's log polling, slow on a loaded machine):
            # the request had run about the grace, well short of the default's 5 s.
            ran = re.search(r"mark=left ran ([\d.]+)(m?s)", lines[-1])
            assert ran, lines[-1]
            ran_s = float(ran.group(1)) / (1000 if ran.group(2) == "ms" else 1)
            assert ran_s < 4, f"abort-grace {grace}: replaced once the request had run {ran_s}s, as by the default"
        # Once its replacement is ready it drains; the status page says why.
        b.log.wait_for([r"retiring the worker: aborted request not ended \(GET /sleep\?s=120&mark=left ran \d+s\)",
                        f"pid={before}"], since=mark, timeout=60)
        draining = [w for w in b.pool_status("p")["workers"] if w["pid"] == before]
        assert draining and draining[0]["retiring_reason"].startswith("aborted request not ended (GET /sleep"), draining
        # The status marks the request nobody waits for (`fcgibridge status`: "(abandoned)").
        current = {c["uri"].split("mark=")[-1]: c["abandoned"] for c in draining[0]["current"]}
        assert current == {"left": True, "patient": False}, draining
        assert alive(before), "the patient request is still running on it"
        (tmp_path / "patient.release").touch()
        r = patient.result()
        assert r.status == 200 and pid_of(r) == before, r.stdout[:300]
        b.log.wait_for([r"worker stopped \(aborted request not ended", r"killed by signal 9 \(SIGKILL\)",
                        f"pid={before}"], since=mark, timeout=30)
        st = b.pool_status("p")
        assert st["worker_crashes"] == st0["worker_crashes"], "retired on purpose: no crash"
        assert st["worker_exits"] == st0["worker_exits"] + 1
        (replacement,) = st["workers"]
        assert replacement["last_restart_reason"].startswith("aborted request not ended (GET /sleep"), replacement
        assert "worker exited" not in b.log.text(mark)
        assert pid_of(get(b, "p", "/pid")) != before
    finally:
        b.stop()


def _started(b, since=0) -> dict[int, int]:
    """pid -> index of the `worker started` lines."""
    out = {}
    for ln in b.log.lines(since):
        m = re.search(r"worker started.*\bpid=(\d+).*\bindex=(\d+)", ln)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def test_a_replacement_takes_the_index_of_the_worker_it_replaces(tmp_path):
    """A worker's number in its pool is logged as `index=` ("slot" names only a connection
    to a worker); the process that replaces a dead worker takes its index."""
    b = start(tmp_path, {"p": lc_pool(processes=2, threads=1)})
    try:
        wait_until(lambda: len(_started(b)) >= 2, 30, what="two `worker started … index=` lines")
        first = _started(b)
        # killed while serving, not while starting (that is a failed start, logged otherwise)
        wait_until(lambda: len(b.log.wait_for(r"worker ready in")) >= 2, 60, what="both workers ready")
        assert sorted(first.values()) == [0, 1], first
        victim = next(pid for pid, index in first.items() if index == 1)
        mark = b.log.mark()
        os.kill(victim, signal.SIGKILL)
        b.log.wait_for([r"worker exited: killed by signal 9", f"pid={victim}", r"\bindex=1\b"], since=mark)
        wait_until(lambda: _started(b, mark), 30, what="a replacement's `worker started` line")
        assert list(_started(b, mark).values()) == [1], b.log.text(mark)
        assert not any("slot=" in ln for ln in b.log.lines()), "the worker index is logged as index=, not slot="
    finally:
        b.stop()


def test_a_worker_retired_by_request_timeout_is_replaced_at_its_index(tmp_path):
    """Retired (draining) before its replacement starts, the timed-out worker still hands
    its index on: the status page's last_restart_reason of that index names the timeout."""
    b = start(tmp_path, {"p": lc_pool(processes=2, threads=1, **{"request-timeout": "3s"})})
    try:
        wait_until(lambda: len(b.log.wait_for(r"worker ready in")) >= 2, 60, what="both workers ready")
        indices = _started(b)
        mark = b.log.mark()
        hung = Background(lambda: get(b, "p", "/hang", "mark=hung"))
        assert hung.result().status == 504
        (line,) = b.log.wait_for(r"request-timeout \(3s\): GET /hang", since=mark)
        victim = int(re.search(r"in worker (\d+)", line).group(1))
        wait_until(lambda: _started(b, mark), 60, what="the replacement's `worker started` line")
        assert list(_started(b, mark).values()) == [indices[victim]], b.log.text(mark)
    finally:
        b.stop()


def _kill_and_wait_for_failures(b, pool_name, victim, mark, n=3):
    """SIGKILL the serving worker; its replacement cannot start: wait for `n` attempts."""
    os.kill(victim, signal.SIGKILL)
    b.log.wait_for([r"worker exited: killed by signal 9", f"pid={victim}"], since=mark)
    wait_until(lambda: len([ln for ln in b.log.lines(mark) if "worker failed to start" in ln
                            and f'pool="{pool_name}"' in ln]) >= n, 60, what=f"{n} failed starts")
    return [ln for ln in b.log.lines(mark) if "worker failed to start" in ln]


def test_a_python_that_cannot_be_executed_is_named_with_its_symlink_target_and_is_no_crash(tmp_path):
    """The pool's `python:` is a symlink; repointed after start to a script whose
    interpreter is missing, the next worker cannot be executed (ENOENT, which a missing
    working directory gives too). The error names exec and the symlink's target; no process
    ever started, so the attempts count as neither spawns, worker exits nor crashes."""
    real = os.path.realpath(shutil.which("python3"))
    link = tmp_path / "venv-python"
    link.symlink_to(real)
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=1, python=str(link))})
    try:
        victim = pid_of(get(b, "p", "/pid"))
        before = b.pool_status("p")
        target = tmp_path / "no-interpreter"
        target.write_text("#!/nonexistent/python3\n")
        target.chmod(0o755)
        link.unlink()
        link.symlink_to(target)
        mark = b.log.mark()
        failures = _kill_and_wait_for_failures(b, "p", victim, mark)
        assert f"cannot execute {link} (pool `python:`, a symlink to {target}): No such file or directory" in failures[0], \
            failures[0]
        assert "working directory" not in failures[0], failures[0]
        st = b.pool_status("p")
        # the SIGKILL is one exit and one crash; the exec failures are no processes
        assert st["worker_crashes"] == before["worker_crashes"] + 1, (before, st)
        assert st["worker_exits"] == before["worker_exits"] + 1, (before, st)
        assert st["spawns"] == before["spawns"], (before, st)
    finally:
        b.stop()


def test_a_working_directory_that_is_gone_is_named_as_such(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    b = start(tmp_path, {"p": lc_pool(processes=1, threads=1, chdir=str(wd))})
    try:
        victim = pid_of(get(b, "p", "/pid"))
        wd.rmdir()
        mark = b.log.mark()
        failures = _kill_and_wait_for_failures(b, "p", victim, mark)
        assert f"cannot enter the working directory {wd} (pool `chdir:`): No such file or directory" in failures[0], \
            failures[0]
    finally:
        b.stop()


def test_a_working_directory_the_pool_user_cannot_enter_names_the_user(tmp_path):
    """As root with `user:`: the directory is entered as that user, and the error says so."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        user = pwd.getpwnam("fcgibridge-test")
    except KeyError:
        pytest.skip("user fcgibridge-test is missing: run scripts/create-test-user")
    public = Path(tempfile.mkdtemp(prefix="fcgibridge-spawn-"))
    try:
        public.chmod(0o755)
        app = public / "app.py"
        shutil.copy(APP, app)
        app.chmod(0o644)
        wd = public / "wd"
        wd.mkdir()
        wd.chmod(0o755)
        # Debian's interpreter: the default python3 may be a pyenv shim the user cannot run
        b = start(tmp_path, {"p": {"app": str(app), "python": "/usr/bin/python3", "processes": 1, "threads": 1,
                                   "user": user.pw_name, "chdir": str(wd)}},
                  bridge_extra={"runtime-dir": str(public / "run")})
        try:
            victim = pid_of(get(b, "p", "/pid"))
            wd.chmod(0o700)  # root's: the worker user may not enter it any more
            mark = b.log.mark()
            failures = _kill_and_wait_for_failures(b, "p", victim, mark)
            want = (f"cannot enter the working directory {wd} (pool `chdir:`) as user {user.pw_name} "
                    f"(uid {user.pw_uid}, gid {user.pw_gid}): Permission denied")
            assert want in failures[0], failures[0]
        finally:
            b.stop()
    finally:
        shutil.rmtree(public, ignore_errors=True)

"""Pool sizes with real processes (docs/supervision.md): static, dynamic (min, max,
spare, idle-timeout, the spawn rate), ondemand (none until a request, which waits for
its worker instead of failing; none again after idle-timeout), threads per process."""
import json
import time

from harness import wait_until
from supervision_support import Background, Held, get, lc_pool, pid_of, start, worker_pids


def test_static_runs_exactly_processes_with_threads_each(tmp_path):
    b = start(tmp_path, {"p": lc_pool(processes=3, threads=2)})
    try:
        wait_until(lambda: len(worker_pids(b)) == 3, 30, what="three workers")
        # six requests at once: three processes, two threads each, all busy together
        held = Held(b, "p", 6)
        running = held.wait_running(6)
        assert len(set(running.values())) == 3, running
        pids = [pid_of(r) for r in held.release()]
        assert len(set(pids)) == 3
        assert len(worker_pids(b)) == 3
    finally:
        b.stop()


def test_dynamic_grows_to_max_under_load_and_shrinks_to_min_when_idle(tmp_path):
    b = start(tmp_path, {"p": lc_pool(threads=1, mode="dynamic", **{
        "min-processes": 1, "max-processes": 4, "spare-processes": 1, "idle-timeout": "2s"})})
    try:
        # min 1 with 1 spare: one process at rest (its one thread is the spare)
        time.sleep(1.5)
        assert len(worker_pids(b)) == 1, worker_pids(b)
        held = Held(b, "p", 6)
        wait_until(lambda: len(worker_pids(b)) == 4, 60, what="the pool grown to max-processes")
        held.wait_running(4)
        time.sleep(1)  # on purpose: the pool, still short of threads, must not grow past its max
        assert len(worker_pids(b)) == 4, "more than max-processes"
        statuses = [r.status for r in held.release()]
        assert statuses == [200] * 6, statuses
        # idle: back to min-processes, one idle-timeout at a time
        wait_until(lambda: len(worker_pids(b)) == 1, 30, what="the pool back to min-processes")
        b.log.wait_for([r"retiring the worker: idle-timeout"])
        assert get(b, "p", "/pid").status == 200
    finally:
        b.stop()


def test_dynamic_spawn_rate_doubles_up_to_max_spawn_rate(tmp_path):
    b = start(tmp_path, {"p": lc_pool(threads=1, mode="dynamic", **{
        "min-processes": 1, "max-processes": 8, "spare-processes": 0, "max-spawn-rate": 2,
        "idle-timeout": "30s"})})
    try:
        mark = b.log.mark()
        held = Held(b, "p", 8)
        t0 = time.monotonic()
        counts = []
        while time.monotonic() - t0 < 4.5:
            counts.append((round(time.monotonic() - t0, 1), len(worker_pids(b))))
            time.sleep(0.2)
        # one more the first round, then two per one-second round (the cap): not all at once
        early = max(n for t, n in counts if t <= 0.6)
        assert early <= 3, counts
        wait_until(lambda: len(worker_pids(b)) == 8, 60, what="max-processes reached")
        held.wait_running(8)
        for r in held.release():
            assert r.status == 200
        started = [ln for ln in b.log.lines(mark) if "worker started" in ln]
        assert len(started) == 7, started
    finally:
        b.stop()


def test_ondemand_starts_on_the_first_request_and_stops_when_idle(tmp_path):
    b = start(tmp_path, {"p": lc_pool(threads=2, mode="ondemand", **{"max-processes": 2, "idle-timeout": "2s"})},
              wait=False)
    try:
        time.sleep(1)
        assert worker_pids(b) == set(), "an ondemand pool started a process before any request"
        t0 = time.monotonic()
        first = get(b, "p", "/pid")
        assert first.status == 200, first.stdout[:200]
        # it waited for its worker to start (well within queue-timeout), it was not refused
        assert time.monotonic() - t0 < 30
        pid = pid_of(first)
        # threads per process: two requests at once on the one process
        calls = [Background(lambda: get(b, "p", "/sleep", "s=1")) for _ in range(2)]
        assert {pid_of(c.result()) for c in calls} <= {pid} | worker_pids(b)
        wait_until(lambda: worker_pids(b) == set(), 30, what="no process after idle-timeout")
        b.log.wait_for([r"retiring the worker: idle-timeout"])
        # and again on demand
        assert get(b, "p", "/pid").status == 200
        assert len(worker_pids(b)) == 1
    finally:
        b.stop()


def test_ondemand_burst_never_exceeds_max_processes(tmp_path):
    b = start(tmp_path, {"p": lc_pool(threads=1, mode="ondemand", **{"max-processes": 3, "idle-timeout": "30s",
                                                                      "max-spawn-rate": 8})}, wait=False)
    try:
        held = Held(b, "p", 9)
        seen = set()
        for _ in range(40):  # on purpose: four seconds of the burst, never more than three
            now = worker_pids(b)
            assert len(now) <= 3, now
            seen |= now
            time.sleep(0.1)
        # three held at once, one per one-thread process
        assert len(set(held.wait_running(3).values())) == 3
        results = held.release()
        assert [r.status for r in results] == [200] * 9
        assert len({json.loads(r.body)["pid"] for r in results}) == 3
    finally:
        b.stop()


def test_ondemand_pool_that_cannot_start_answers_503_quickly(tmp_path):
    b = start(tmp_path, {"p": lc_pool(threads=1, mode="ondemand", env={"LIFECYCLE_BROKEN": "1"},
                                      **{"max-processes": 2, "queue-timeout": "30s"})}, wait=False)
    try:
        t0 = time.monotonic()
        r = get(b, "p", "/pid")
        took = time.monotonic() - t0
        assert r.status == 503, r.stdout[:200]
        assert took < 10, f"the first request waited {took:.1f}s (queue-timeout is 30s)"
        b.log.wait_for([r"worker failed to start: ModuleNotFoundError"])
        t0 = time.monotonic()
        assert get(b, "p", "/pid").status == 503
        assert time.monotonic() - t0 < 10  # at once, not after queue-timeout (30 s)
    finally:
        b.stop()

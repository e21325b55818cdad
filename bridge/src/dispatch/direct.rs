//! A direct worker's numbers (docs/direct.md): it accepts the web server's connections
//! itself, so nothing passes the dispatcher; the manager's tick copies its scoreboard
//! (scoreboard.rs) in here, one "connection" per slot (a WSGI worker's thread, an ASGI
//! worker's request in flight), busy while it runs a request. The status page,
//! max-requests, request-timeout, drains and the crash line then read a direct worker as
//! any other.
use super::{ConnEntry, Dispatcher, Label, Slot, Ticket, WorkerKey};
use crate::scoreboard::ThreadSnapshot;
use std::time::{Duration, Instant};

/// One thread as the scoreboard showed it last.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ThreadSeen {
    served: u64,
    started: u64,
}

/// How long past request-timeout a direct ASGI worker's request may still run before the
/// bridge takes its event loop for blocked (a synchronous call in an async view: the
/// worker's own timer cannot fire) and replaces the worker. The scoreboard is read once a
/// second; the worker's timer fires at the timeout itself.
pub(crate) const BLOCKED_LOOP_GRACE: Duration = Duration::from_secs(5);

/// A direct worker's scoreboard as the dispatcher last copied it.
#[derive(Debug, Default)]
pub(super) struct DirectSeen {
    pub(super) threads: Vec<ThreadSeen>,
    /// Responses by status class.
    responses: [u64; 5],
    /// How long its requests ran.
    durations: crate::status::latency::Histogram,
    /// Requests the worker ended for request-timeout itself.
    timeouts: u32,
    /// Kept connections it moved to the relay.
    moved: u64,
    /// An ASGI worker: it applies request-timeout to its requests itself (cancelling the
    /// request's task), so the bridge's own check leaves its slots alone.
    pub(super) times_out_itself: bool,
}

impl ThreadSeen {
    /// Requests begun: those finished and the one running.
    fn began(self) -> u64 {
        self.served + u64::from(self.started != 0)
    }
}

impl<S: Slot> Dispatcher<S> {
    /// Worker `worker` is a direct worker of `slots` slots (threads; an ASGI worker's
    /// `concurrency`), ready: each is a slot the bridge never holds. An `asgi` worker times
    /// its requests out itself. False when the worker was removed or retired meanwhile.
    pub(crate) fn add_direct(&self, worker: WorkerKey, slots: u32, asgi: bool) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(w) = inner.worker_mut(worker).filter(|w| !w.s.draining) else { return false };
        w.direct = DirectSeen {
            threads: vec![ThreadSeen::default(); slots as usize],
            times_out_itself: asgi,
            ..DirectSeen::default()
        };
        w.conns = (0..slots).map(|_| ConnEntry::closed(now)).collect();
        true
    }

    /// Requests the direct workers run now (as their scoreboards showed at the last tick).
    pub(crate) fn direct_in_flight(&self) -> usize {
        let inner = self.lock();
        inner.workers.iter().filter(|w| w.live && !w.direct.threads.is_empty()).map(|w| w.s.busy as usize).sum()
    }

    /// Copy a direct worker's scoreboard read at `now_ns` (CLOCK_MONOTONIC) in: requests
    /// begun and served (the worker's and the pool's numbers), responses by status class,
    /// and the request each thread runs, from when it began. Wakes the manager when the
    /// worker reached max-requests.
    pub(crate) fn observe_direct(&self, worker: WorkerKey, board: &Observed, now_ns: u64) {
        let threads = &board.threads;
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(w) = inner.workers.get_mut(worker.index as usize).filter(|w| w.live && w.gen == worker.gen) else {
            return;
        };
        let (mut began, mut served) = (0, 0);
        for ((seen, c), t) in w.direct.threads.iter_mut().zip(w.conns.iter_mut()).zip(threads) {
            let new = ThreadSeen { served: t.served, started: t.started };
            began += new.began().saturating_sub(seen.began());
            served += new.served.saturating_sub(seen.served);
            if t.started == 0 {
                *c = ConnEntry::closed(now);
            } else if !c.busy || t.started != seen.started {
                let running = Duration::from_nanos(now_ns.saturating_sub(t.started));
                *c = running_since(now.checked_sub(running).unwrap_or(now), &t.line);
            } else if c.label.len == 0 && !t.line.is_empty() {
                // The line was being written at the last read.
                c.label = running_since(c.since, &t.line).label;
            }
            *seen = new;
        }
        w.s.served += served;
        w.s.busy = w.conns.iter().filter(|c| c.busy).count() as u32;
        w.s.open = w.s.busy;
        inner.counters.accepted += began;
        inner.counters.served += served;
        for (class, (now, seen)) in board.responses.iter().zip(w.direct.responses.iter_mut()).enumerate() {
            inner.counters.direct_responses.0[class] += now.saturating_sub(*seen);
            *seen = (*seen).max(*now);
        }
        inner.counters.direct_latency = inner.counters.direct_latency.plus(board.durations.since(&w.direct.durations));
        w.direct.durations = board.durations;
        inner.counters.request_timeouts += u64::from(board.timeouts.saturating_sub(w.direct.timeouts));
        w.direct.timeouts = w.direct.timeouts.max(board.timeouts);
        inner.counters.moved_connections += board.moved.saturating_sub(w.direct.moved);
        w.direct.moved = w.direct.moved.max(board.moved);
        if w.s.max_requests != 0 && w.s.served >= w.s.max_requests && !w.s.recycle_flagged {
            w.s.recycle_flagged = true;
            self.wake.notify_one();
        }
    }

    /// A direct worker died (crashed, killed for request-timeout or at graceful-timeout)
    /// while its threads ran `unfinished` requests (each as when it began, and its response
    /// head as [`crate::scoreboard::Scoreboard::unfinished`] gives it): each is timed to
    /// `now_ns`, and one with no response head made counts as a 5xx — the web server answers it
    /// 502. So the pool's responses and durations count every request, as a pool's through
    /// the bridge do.
    pub(crate) fn direct_died(&self, unfinished: &[(u64, u32)], now_ns: u64) {
        let mut inner = self.lock();
        let counters = &mut inner.counters;
        for &(started, head) in unfinished.iter().filter(|(_, head)| *head != crate::scoreboard::HEAD_UNTRACKED) {
            counters.direct_latency.record(Duration::from_nanos(now_ns.saturating_sub(started)));
            if head == 0 {
                counters.direct_responses.record(502);
            }
        }
    }
}

/// A direct worker's scoreboard as read at one instant.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub threads: Vec<ThreadSnapshot>,
    /// Responses sent by status class (1xx … 5xx).
    pub responses: [u64; 5],
    /// How long its requests ran.
    pub durations: crate::status::latency::Histogram,
    /// Requests the worker ended for request-timeout itself (an ASGI worker).
    pub timeouts: u32,
    /// Kept connections it moved to the pool's relay (a WSGI worker's balance).
    pub moved: u64,
}

/// A thread running the request `line` since `since`: `<pid>-<n> METHOD URI` from the
/// native worker, whose `<n>` becomes the request's id (the worker's own lines name it as
/// `request_id=<pid>-<n>`), or `METHOD URI` (no id: 0). A method never begins with a digit.
fn running_since(since: Instant, line: &[u8]) -> ConnEntry {
    let (mut request_id, mut rest) = (0, line);
    if line.first().is_some_and(u8::is_ascii_digit) {
        let (id, after) = first_word(line);
        request_id = worker_request_number(id).unwrap_or(0);
        rest = after;
    }
    let (method, uri) = first_word(rest);
    let label = Label::of(&Ticket { method, uri, request_id, started: since });
    ConnEntry { open: true, busy: true, since, label, ..ConnEntry::closed(since) }
}

/// `line`'s first word, and the rest after the space.
fn first_word(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    }
}

/// The `<n>` of a direct worker's request id `<pid>-<n>`.
fn worker_request_number(id: &[u8]) -> Option<u64> {
    let n = &id[id.iter().position(|&b| b == b'-')? + 1..];
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// A request's id as the log names it: the bridge's number, or for a direct worker's
/// request (`direct_pid`: the worker's pid) `<pid>-<n>`, as the worker's own lines do.
/// `None` when it has none (0).
pub(crate) fn request_id_text(request_id: u64, direct_pid: Option<u32>) -> Option<String> {
    match (request_id, direct_pid) {
        (0, _) => None,
        (n, Some(pid)) => Some(format!("{pid}-{n}")),
        (n, None) => Some(n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No slot is ever held for a direct worker.
    struct Fake;
    impl Slot for Fake {
        fn usable(&self) -> bool {
            true
        }
    }

    fn thread(served: u64, started: u64, line: &str) -> ThreadSnapshot {
        ThreadSnapshot { served, started, line: line.as_bytes().to_vec() }
    }

    fn seen(threads: Vec<ThreadSnapshot>) -> Observed {
        Observed { threads, ..Observed::default() }
    }

    #[test]
    fn a_direct_worker_s_numbers_come_from_its_scoreboard() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let w = d.add_worker(0);
        assert!(d.add_direct(w, 2, false));
        assert_eq!(d.view().idle_slots, 2);
        let now_ns = crate::scoreboard::monotonic_now_ns();
        d.observe_direct(w, &seen(vec![thread(3, now_ns - 2_000_000_000, "GET /slow?x=1"), thread(1, 0, "")]), now_ns);
        let v = d.worker_view(w, true).unwrap();
        assert_eq!((v.served, v.busy, v.open), (4, 1, 1));
        assert_eq!((v.current[0].method.as_str(), v.current[0].uri.as_str()), ("GET", "/slow?x=1"));
        assert!(v.current[0].since.elapsed() >= Duration::from_millis(1900), "{:?}", v.current[0].since.elapsed());
        let pool = d.view();
        assert_eq!((pool.counters.accepted, pool.counters.served, pool.idle_slots, pool.busy_slots), (5, 4, 1, 1));
        // The slow request ended and another began: one more accepted, one more served.
        d.observe_direct(w, &seen(vec![thread(4, now_ns + 5, "POST /b"), thread(1, 0, "")]), now_ns + 10);
        let pool = d.view();
        assert_eq!((pool.counters.accepted, pool.counters.served), (6, 5));
        assert_eq!(d.worker_view(w, true).unwrap().current[0].uri, "/b");
    }

    #[test]
    fn the_native_worker_s_line_names_its_request_id() {
        let since = Instant::now();
        let label = |line: &str| {
            let l = running_since(since, line.as_bytes()).label;
            (l.request_id, l.method(), l.uri())
        };
        assert_eq!(label("4242-17 GET /x?y=1"), (17, "GET".into(), "/x?y=1".into()));
        // Another worker's line (the contract's `METHOD URI`), or an id cut by the slot.
        assert_eq!(label("GET /x"), (0, "GET".into(), "/x".into()));
        assert_eq!(label("4242-"), (0, "".into(), "".into()));
        assert_eq!(request_id_text(17, Some(4242)).as_deref(), Some("4242-17"));
        assert_eq!(request_id_text(77, None).as_deref(), Some("77"));
        assert_eq!(request_id_text(0, Some(4242)), None);
    }

    #[test]
    fn the_requests_a_direct_worker_died_running_are_timed_and_the_unanswered_are_5xx() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let now_ns = crate::scoreboard::monotonic_now_ns();
        let began = now_ns - 3_000_000_000;
        // No head sent; a 2xx head sent (a cut-off response); an ASGI request (not told).
        d.direct_died(&[(began, 0), (began, 2), (began, crate::scoreboard::HEAD_UNTRACKED)], now_ns);
        let c = d.view().counters;
        assert_eq!(c.direct_responses.0, [0, 0, 0, 0, 1]);
        assert_eq!(c.direct_latency.count(), 2);
        assert!((c.direct_latency.sum_seconds() - 6.0).abs() < 1e-6, "{}", c.direct_latency.sum_seconds());
    }

    #[test]
    fn max_requests_and_request_timeout_see_direct_workers() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let w = d.add_worker(10);
        assert!(d.add_direct(w, 1, false));
        let now_ns = crate::scoreboard::monotonic_now_ns();
        d.observe_direct(w, &seen(vec![thread(9, now_ns - 3_000_000_000, "GET /hang")]), now_ns);
        assert!(!d.worker_view(w, false).unwrap().max_requests_reached);
        let overdue = d.cancel_overdue(Duration::from_secs(2)).due;
        assert_eq!(overdue.len(), 1);
        assert_eq!((overdue[0].method.as_str(), overdue[0].uri.as_str()), ("GET", "/hang"));
        // Counted once, not at every tick.
        assert!(d.cancel_overdue(Duration::from_secs(2)).due.is_empty());
        d.observe_direct(w, &seen(vec![thread(10, 0, "")]), now_ns);
        assert!(d.worker_view(w, false).unwrap().max_requests_reached);
    }

    #[test]
    fn an_asgi_worker_times_its_requests_out_itself_and_they_are_counted() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let w = d.add_worker(0);
        assert!(d.add_direct(w, 3, true));
        let now_ns = crate::scoreboard::monotonic_now_ns();
        let running = vec![thread(0, now_ns - 3_000_000_000, "GET /hang"), thread(0, 0, ""), thread(0, 0, "")];
        d.observe_direct(
            w,
            &Observed { threads: running.clone(), responses: [0; 5], timeouts: 2, ..Observed::default() },
            now_ns,
        );
        // Its task is the worker's to cancel: the bridge neither cancels nor counts it again...
        assert!(d.cancel_overdue(Duration::from_secs(2)).due.is_empty());
        assert_eq!(d.view().counters.request_timeouts, 2);
        // ...unless one runs on well past it: the worker's loop is blocked, the worker goes.
        let past = now_ns - (Duration::from_secs(2) + BLOCKED_LOOP_GRACE).as_nanos() as u64 - 1_000_000_000;
        let blocked =
            vec![thread(0, now_ns - 3_000_000_000, "GET /hang"), thread(0, past, "GET /block"), thread(0, 0, "")];
        d.observe_direct(
            w,
            &Observed { threads: blocked, responses: [0; 5], timeouts: 2, ..Observed::default() },
            now_ns,
        );
        let overdue = d.cancel_overdue(Duration::from_secs(2)).due;
        assert_eq!(overdue.iter().map(|o| o.uri.as_str()).collect::<Vec<_>>(), ["/block"]);
        // That one its blocked loop could not count: counted here, once.
        assert_eq!(d.view().counters.request_timeouts, 3);
        assert!(d.cancel_overdue(Duration::from_secs(2)).due.is_empty());
        d.observe_direct(
            w,
            &Observed { threads: running, responses: [0; 5], timeouts: 3, ..Observed::default() },
            now_ns,
        );
        assert_eq!(d.view().counters.request_timeouts, 4, "the worker's own third");
        assert_eq!(d.direct_in_flight(), 1);
    }

    #[test]
    fn a_max_requests_set_by_a_reload_applies_to_a_running_worker() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let w = d.add_worker(0);
        assert!(d.add_direct(w, 1, false));
        d.observe_direct(w, &seen(vec![thread(7, 0, "")]), 1);
        assert!(!d.worker_view(w, false).unwrap().max_requests_reached, "no limit yet");
        d.set_max_requests(w, 100);
        assert!(!d.worker_view(w, false).unwrap().max_requests_reached);
        d.set_max_requests(w, 5);
        assert!(d.worker_view(w, false).unwrap().max_requests_reached, "7 served: due at once");
    }

    #[test]
    fn a_dead_direct_worker_s_running_requests_are_its_lost_ones() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let w = d.add_worker(0);
        assert!(d.add_direct(w, 2, false));
        let now_ns = crate::scoreboard::monotonic_now_ns();
        d.observe_direct(w, &seen(vec![thread(0, now_ns, "GET /crash"), thread(0, 0, "")]), now_ns);
        let lost = d.lost_requests(w);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].uri, "/crash");
        // Draining: an idle thread is no free slot, a busy one is in flight.
        assert_eq!(d.drain_worker(w), 1);
        assert_eq!(d.view().idle_slots, 0);
    }

    #[test]
    fn every_request_a_dead_direct_worker_ran_is_named() {
        // Each worker numbers its requests from 1: the same number running in another
        // worker of the pool is no sign that a dead worker's request went elsewhere (nor,
        // from a worker that tells none, the same 0).
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let (w, other) = (d.add_worker(0), d.add_worker(0));
        assert!(d.add_direct(w, 4, false) && d.add_direct(other, 2, false));
        let now_ns = crate::scoreboard::monotonic_now_ns();
        let elsewhere = vec![thread(0, now_ns, "20-7 GET /elsewhere"), thread(0, now_ns, "GET /other")];
        d.observe_direct(other, &seen(elsewhere), now_ns);
        let running = vec![
            thread(0, now_ns, "10-7 GET /crash"),
            thread(0, now_ns - 5, "GET /sleep"),
            thread(0, now_ns - 9, "10-8 GET /third"),
            thread(0, 0, ""),
        ];
        d.observe_direct(w, &seen(running), now_ns);
        let lost: Vec<String> = d.lost_requests(w).into_iter().map(|r| r.uri).collect();
        assert_eq!(lost, ["/sleep", "/crash", "/third"]);
    }

    #[test]
    fn responses_by_class_are_counted_as_deltas() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let (a, b) = (d.add_worker(0), d.add_worker(0));
        assert!(d.add_direct(a, 1, false) && d.add_direct(b, 1, false));
        let idle = vec![thread(0, 0, "")];
        d.observe_direct(
            a,
            &Observed { threads: idle.clone(), responses: [0, 5, 1, 0, 2], timeouts: 0, ..Observed::default() },
            1,
        );
        d.observe_direct(
            a,
            &Observed { threads: idle.clone(), responses: [0, 7, 1, 1, 2], timeouts: 0, ..Observed::default() },
            2,
        );
        d.observe_direct(
            b,
            &Observed { threads: idle, responses: [0, 3, 0, 0, 1], timeouts: 0, ..Observed::default() },
            2,
        );
        assert_eq!(d.view().counters.direct_responses.0, [0, 10, 1, 1, 3]);
    }

    #[test]
    fn connections_moved_are_counted_as_deltas_of_every_worker() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let (a, b) = (d.add_worker(0), d.add_worker(0));
        assert!(d.add_direct(a, 1, false) && d.add_direct(b, 1, false));
        let seen = |moved| Observed { threads: vec![thread(0, 0, "")], moved, ..Observed::default() };
        d.observe_direct(a, &seen(4), 1);
        d.observe_direct(a, &seen(9), 2);
        d.observe_direct(a, &seen(9), 3);
        d.observe_direct(b, &seen(2), 3);
        assert_eq!(d.view().counters.moved_connections, 11);
    }

    #[test]
    fn draining_is_a_direct_worker_s_drain() {
        let d: Dispatcher<Fake> = Dispatcher::new(0, Duration::from_secs(1));
        let w = d.add_worker(0);
        assert!(d.add_direct(w, 2, false));
        let now_ns = crate::scoreboard::monotonic_now_ns();
        d.observe_direct(w, &seen(vec![thread(0, now_ns, "GET /crash"), thread(0, 0, "")]), now_ns);
        assert_eq!(d.drain_worker(w), 1);
        assert_eq!(d.view().idle_slots, 0);
    }
}

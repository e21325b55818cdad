//! A direct worker's threads take turns while its requests are quick. Only one thread of a
//! process runs Python at a time (the GIL); when a second thread takes a request while the
//! first still runs one, the two hand the GIL back and forth (a forced switch every few
//! milliseconds, a futex wake-up and a context switch each time) and both requests take
//! longer. So while the process's recent requests have been quick ([`QUICK`]), one thread
//! — the one holding the turn — waits for the next request, and the others rest: the holder
//! finds a request that came while it ran one when it looks again, as a single-threaded
//! worker would, and sends its responses in batches ([`crate::batch`]).
//!
//! Threads are there for requests that wait (on a database, an API): one resting thread,
//! the next in line, looks every [`STUCK_AFTER`] whether the holder has been busy with
//! what it took for that long, and then takes the turn and serves what waits. Then every
//! thread waits for work until that request ends and its time is counted; with slow
//! requests among the recent ones they go on doing so, until a few quick ones bring the
//! turns back or they are tried again ([`RETRY`]).
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::park::STUCK_AFTER;

/// Threads take turns while the running mean of the process's request times is below
/// this: far above a quick view's, far below what a client would notice as a wait.
const QUICK: Duration = Duration::from_millis(1);

/// Once the turns stopped, when they are tried again: a second after the last request
/// slower than [`SLOW`], then after twice as long each time they stopped again sooner than
/// that, up to [`RETRY_MAX`]. Without turns, a request's time includes its waits for the
/// GIL, which can keep a process of quick requests from ever looking quick; a slow request
/// among the next few stops them again.
const RETRY: Duration = Duration::from_secs(1);
/// A request this slow is slow in itself, not for its waits for the GIL: while such
/// requests come, the turns are not tried again.
const SLOW: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(32);

/// This thread's name in [`Turns::holder`] (0: none).
fn me() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! { static ME: u64 = NEXT.fetch_add(1, Ordering::Relaxed); }
    ME.with(|me| *me)
}

pub(crate) struct Turns {
    /// Threads take turns (a process with more than one serving thread).
    enabled: bool,
    /// The thread holding the turn (0: none).
    holder: AtomicU64,
    /// Since when the holder serves what it took, in microseconds from `epoch`
    /// ([`WAITING`] while it waits for work).
    holder_busy_since: AtomicU64,
    /// The running mean of the process's request times (each new one weighs a quarter).
    recent_ns: AtomicU64,
    /// The thread the turn was taken from while its request is still running (0: none):
    /// no turns until it ends and its time is counted.
    taken_from: AtomicU64,
    /// Since when the turns are stopped (microseconds; 0: they are on).
    stopped_at: AtomicU64,
    /// When they last began again (microseconds).
    resumed_at: AtomicU64,
    /// How long after a stop they are tried again (microseconds).
    retry_after: AtomicU64,
    epoch: Instant,
    resting: AtomicUsize,
    /// A resting thread is the next in line: it looks every STUCK_AFTER; the others sleep
    /// until a thread that stops resting wakes one of them to be next.
    next_in_line: Mutex<bool>,
    woken: Condvar,
}

/// [`Turns::holder_busy_since`] while the holder waits for work.
const WAITING: u64 = u64::MAX;

impl Turns {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            holder: AtomicU64::new(0),
            holder_busy_since: AtomicU64::new(WAITING),
            recent_ns: AtomicU64::new(0),
            taken_from: AtomicU64::new(0),
            stopped_at: AtomicU64::new(0),
            resumed_at: AtomicU64::new(0),
            retry_after: AtomicU64::new(RETRY.as_micros() as u64),
            epoch: Instant::now(),
            resting: AtomicUsize::new(0),
            next_in_line: Mutex::new(false),
            woken: Condvar::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether the thread may wait for work now: requests are not quick, or it holds the
    /// turn, or gets it (free, or from a holder busy for [`STUCK_AFTER`]). Otherwise it
    /// is to [`Turns::rest`].
    pub(crate) fn may_wait(&self) -> bool {
        !self.enabled || self.may_wait_as(me(), self.now())
    }

    /// The thread has something to serve: if it holds the turn, it is busy from now.
    pub(crate) fn serving(&self) {
        if self.enabled {
            self.serving_as(me(), self.now());
        }
    }

    fn serving_as(&self, me: u64, now: u64) {
        if self.holder.load(Ordering::SeqCst) == me {
            self.holder_busy_since.store(now, Ordering::SeqCst);
        }
    }

    /// A request of this process ended after `took`.
    pub(crate) fn request_took(&self, took: Duration) {
        if !self.enabled {
            return;
        }
        if took >= SLOW && self.stopped_at.load(Ordering::Relaxed) != 0 {
            // Slow beyond what waits for the GIL make of a quick request: the wait for the
            // next try begins again.
            self.stopped_at.store(self.now().max(1), Ordering::Relaxed);
        }
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .recent_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |recent| Some(recent - recent / 4 + took / 4));
    }

    /// [`Turns::may_wait`] for thread `me` at `now` (microseconds from `epoch`).
    fn may_wait_as(&self, me: u64, now: u64) -> bool {
        if !self.enabled {
            return true;
        }
        if self.taken_from.load(Ordering::Relaxed) == me {
            // Back from the request the turn was taken from: its time is counted.
            self.taken_from.store(0, Ordering::Relaxed);
        }
        if !self.quick(now) {
            // No one holds the turn while there are none: when they begin again, the first
            // thread to look takes it.
            if self.holder.load(Ordering::SeqCst) != 0 {
                self.holder.store(0, Ordering::SeqCst);
            }
            return true;
        }
        let holder = match self.holder.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => me,
            Err(h) => h,
        };
        if holder != me {
            let since = self.holder_busy_since.load(Ordering::SeqCst);
            let stuck = since != WAITING && now.saturating_sub(since) >= STUCK_AFTER.as_micros() as u64;
            if !stuck || self.holder.compare_exchange(holder, me, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                return false;
            }
            // A request held its thread that long: no turns until it ends (a slow view's
            // time then stops them; a preempted quick one's does not).
            self.taken_from.store(holder, Ordering::Relaxed);
        }
        self.holder_busy_since.store(WAITING, Ordering::SeqCst);
        true
    }

    /// Whether the recent requests were quick. Once they have not been for `retry_after`,
    /// they are taken to be, and the next wait is twice as long unless the turns then stay
    /// on that long.
    fn quick(&self, now: u64) -> bool {
        if self.taken_from.load(Ordering::Relaxed) != 0 {
            // Not known until that request ends: neither a stop nor a try yet.
            return false;
        }
        let after = self.retry_after.load(Ordering::Relaxed);
        if self.recent_ns.load(Ordering::Relaxed) < QUICK.as_nanos() as u64 {
            if self.stopped_at.load(Ordering::Relaxed) != 0 && self.stopped_at.swap(0, Ordering::Relaxed) != 0 {
                self.resumed_at.store(now, Ordering::Relaxed);
            }
            if after != RETRY.as_micros() as u64 && now.saturating_sub(self.resumed_at.load(Ordering::Relaxed)) >= after
            {
                self.retry_after.store(RETRY.as_micros() as u64, Ordering::Relaxed);
            }
            return true;
        }
        let stopped = self.stopped_at.load(Ordering::Relaxed);
        if stopped == 0 {
            let _ = self.stopped_at.compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
            return false;
        }
        if now.saturating_sub(stopped) < after
            || self.stopped_at.compare_exchange(stopped, 0, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return false;
        }
        self.retry_after.store((after * 2).min(RETRY_MAX.as_micros() as u64), Ordering::Relaxed);
        self.resumed_at.store(now, Ordering::Relaxed);
        self.recent_ns.store(0, Ordering::Relaxed);
        true
    }

    /// Whether a thread rests: the process is not stuck while one does.
    pub(crate) fn resting(&self) -> bool {
        self.resting.load(Ordering::SeqCst) > 0
    }

    /// Rest until the thread [`Turns::may_wait`], or `leave()` (something waits for the
    /// next free thread), or `timeout` passed (the caller looks whether the worker retires).
    pub(crate) fn rest(&self, timeout: Duration, leave: impl Fn() -> bool) {
        let until = Instant::now() + timeout;
        self.resting.fetch_add(1, Ordering::SeqCst);
        let mut line = self.next_in_line.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let next = !std::mem::replace(&mut *line, true);
            let wait = if next { STUCK_AFTER.min(left) } else { left };
            line = self.woken.wait_timeout(line, wait).unwrap_or_else(|e| e.into_inner()).0;
            if next {
                *line = false;
            }
            if self.may_wait() || leave() {
                break;
            }
        }
        if !*line && self.resting.load(Ordering::SeqCst) > 1 {
            // No one is next in line now: another resting thread becomes it (or, when the
            // turns stopped, leaves too and wakes the next).
            self.woken.notify_one();
        }
        drop(line);
        self.resting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Something waits for the next free thread: a resting one looks at once.
    pub(crate) fn wake_one(&self) {
        let _line = self.next_in_line.lock().unwrap_or_else(|e| e.into_inner());
        self.woken.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const STUCK_US: u64 = STUCK_AFTER.as_micros() as u64;
    const RETRY_US: u64 = RETRY.as_micros() as u64;

    fn quick_requests(t: &Turns, n: usize) {
        for _ in 0..n {
            t.request_took(Duration::from_micros(60));
        }
    }

    #[test]
    fn one_thread_holds_the_turn_and_another_takes_it_from_a_holder_busy_for_stuck_after() {
        let t = Turns::new(true);
        let (a, b) = (1, 2);
        assert!(t.may_wait_as(a, 1000), "the first thread takes the free turn");
        assert!(!t.may_wait_as(b, 1000 + 10 * STUCK_US), "a holder waiting for work keeps it, however long");
        t.serving_as(a, 2000);
        assert!(t.may_wait_as(a, 2100), "and keeps it when it looks again");
        t.serving_as(a, 2200);
        assert!(!t.may_wait_as(b, 2200 + STUCK_US - 1), "another rests while the holder is busy only just");
        t.serving_as(b, 2200 + STUCK_US - 1); // not the holder: nothing changes
        assert!(t.may_wait_as(b, 2200 + STUCK_US), "a holder busy for STUCK_AFTER gives the turn up");
        let c = 3;
        assert!(t.may_wait_as(c, 2200 + STUCK_US + 10), "no turns while its request runs");
        assert!(t.may_wait_as(b, 2200 + STUCK_US + 20));
        t.request_took(Duration::from_micros(1500)); // a quick view, preempted
        assert!(t.may_wait_as(a, 2200 + STUCK_US + 30), "the thread it was taken from is back: turns again");
        assert!(!t.may_wait_as(c, 2200 + STUCK_US + 40), "the others rest");
        // A slow view: the turn is taken from it, and its time, counted when it ends, stops
        // the turns.
        t.serving_as(a, 3000);
        assert!(t.may_wait_as(b, 3000 + STUCK_US));
        assert!(t.may_wait_as(c, 3000 + STUCK_US + 10), "no turns while it runs");
        assert!(!t.quick(3000 + STUCK_US + 10 * RETRY_US), "however long it runs: no try of the turns");
        t.request_took(Duration::from_secs(1));
        let ended = 3000 + STUCK_US + 10 * RETRY_US + 10;
        assert!(t.may_wait_as(a, ended) && t.may_wait_as(c, ended + 10), "slow: no turns");
        assert!(!t.quick(ended + RETRY_US - 100), "the wait for a try counts from its end");
        assert!(Turns::new(false).may_wait_as(b, 0), "without turns (one thread) it always waits for work");
    }

    #[test]
    fn slow_requests_stop_the_turns_which_are_tried_again_after_a_while() {
        let t = Turns::new(true);
        let (a, b) = (1, 2);
        let at = 100 * RETRY_US; // quick for long before
        assert!(t.may_wait_as(a, at));
        t.request_took(Duration::from_secs(1));
        assert!(t.may_wait_as(b, at + 10), "a slow request: every thread waits for work");
        quick_requests(&t, 10);
        assert!(!t.quick(at + RETRY_US - 10), "still slow on average, and not tried yet");
        // Slow as measured without turns (waits for the GIL included): tried again.
        assert!(t.may_wait_as(b, at + RETRY_US + 30), "turns again after a second, the turn free");
        assert!(!t.may_wait_as(a, at + RETRY_US + 40), "the other rests");
        t.request_took(Duration::from_secs(1));
        assert!(!t.quick(at + RETRY_US + 50), "stopped by the next slow request");
        // Stopped sooner than a second after the try: the next one waits two.
        assert!(!t.quick(at + 3 * RETRY_US + 40));
        let second = at + 3 * RETRY_US + 60;
        assert!(t.quick(second), "tried again after twice the wait");
        // On for as long as the next wait (four seconds): the next stop waits a second again.
        assert!(t.quick(second + 4 * RETRY_US));
        t.request_took(Duration::from_secs(1));
        assert!(!t.quick(second + 4 * RETRY_US + 10));
        assert!(!t.quick(second + 5 * RETRY_US));
        assert!(t.quick(second + 5 * RETRY_US + 20), "after a second");
        t.request_took(Duration::from_secs(1));
        assert!(!t.quick(second + 5 * RETRY_US + 30));
        quick_requests(&t, 30);
        assert!(t.quick(second + 5 * RETRY_US + 40), "quick again by itself");
    }

    #[test]
    fn while_requests_are_slow_in_themselves_the_turns_are_not_tried_again() {
        let t = Turns::new(true);
        t.request_took(Duration::from_millis(5));
        assert!(!t.quick(t.now()), "stopped");
        t.request_took(Duration::from_millis(3)); // as waits for the GIL make a quick one
        let stopped = t.stopped_at.load(Ordering::Relaxed);
        assert!(t.quick(stopped + RETRY_US), "tried again a second after the stop");
        t.request_took(Duration::from_secs(1));
        assert!(!t.quick(t.now()), "stopped again");
        std::thread::sleep(Duration::from_millis(2));
        t.request_took(Duration::from_secs(1));
        let again = t.stopped_at.load(Ordering::Relaxed);
        assert!(again > stopped, "a slow request restarts the wait");
        assert!(!t.quick(again + 2 * RETRY_US - 1) && t.quick(again + 2 * RETRY_US));
    }

    /// `n` threads that rest until they may wait for work (this thread holds the turn, and
    /// is `busy` with what it took or waiting for work); each returns how long it took.
    fn rest_behind_the_holder(t: &Arc<Turns>, n: usize, busy: bool) -> Vec<std::thread::JoinHandle<Duration>> {
        assert!(t.may_wait());
        if busy {
            t.serving();
        }
        (0..n)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let begun = Instant::now();
                    while !t.may_wait() {
                        t.rest(Duration::from_secs(60), || false);
                    }
                    begun.elapsed()
                })
            })
            .collect()
    }

    #[test]
    fn the_next_in_line_takes_the_turn_from_a_busy_holder() {
        let t = Arc::new(Turns::new(true));
        for r in rest_behind_the_holder(&t, 1, true) {
            let rested = r.join().expect("thread");
            assert!(rested < Duration::from_secs(30), "by looking as the next in line, not at its timeout: {rested:?}");
        }
    }

    #[test]
    fn when_the_turns_stop_every_resting_thread_stops_resting() {
        let t = Arc::new(Turns::new(true));
        let resting = rest_behind_the_holder(&t, 3, false);
        // The holder waits for work: they rest (the next in line looking) until the turns stop.
        let deadline = Instant::now() + Duration::from_secs(60);
        while t.resting.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the threads never rested");
            std::thread::yield_now();
        }
        t.request_took(Duration::from_secs(1));
        for r in resting {
            let rested = r.join().expect("thread");
            assert!(rested < Duration::from_secs(30), "each woken in turn, not at its timeout: {rested:?}");
        }
    }

    #[test]
    fn a_resting_thread_leaves_for_what_waits_for_a_free_thread() {
        let t = Arc::new(Turns::new(true));
        // The holder waits for work, so the turn is not taken from it: only `leave` ends
        // the rest (a busy holder's turn is taken after STUCK_AFTER, maybe before the look
        // below).
        assert!(t.may_wait());
        let waiting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rested = {
            let (t, waiting) = (t.clone(), waiting.clone());
            std::thread::spawn(move || {
                let begun = Instant::now();
                t.rest(Duration::from_secs(60), || waiting.load(Ordering::SeqCst));
                begun.elapsed()
            })
        };
        while !t.resting() {
            assert!(!rested.is_finished(), "the thread stopped resting by itself");
            std::thread::yield_now();
        }
        waiting.store(true, Ordering::SeqCst);
        t.wake_one();
        assert!(rested.join().expect("thread") < Duration::from_secs(30));
    }
}

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
//! the next in line, looks every [`STUCK_AFTER`] whether the holder has been busy that
//! long, and then takes the turn and serves what waits. A turn taken so counts as a slow
//! request ([`STOLEN`]); with slow requests among the recent ones, every thread waits for
//! work, until the turns are tried again ([`RETRY`]).
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::park::STUCK_AFTER;

/// Threads take turns while the running mean of the process's request times is below
/// this: far above a quick view's, far below what a client would notice as a wait.
const QUICK: Duration = Duration::from_millis(1);

/// A turn taken from a busy holder counts as a request this long in the running mean: a
/// few quick ones (five) bring the turns back.
const STOLEN: Duration = Duration::from_millis(4);

/// While threads do not take turns, when they try again: after a second, then after twice
/// as long each time the turns stopped again soon, up to [`RETRY_MAX`]. Without turns, a
/// request's time includes its waits for the GIL, which can keep a process of quick
/// requests from ever looking quick; a slow request among the next few stops them again.
const RETRY: Duration = Duration::from_secs(1);
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
    /// When the holder last began to wait for work, in microseconds from `epoch`.
    holder_free: AtomicU64,
    /// The running mean of the process's request times (each new one weighs a quarter);
    /// updated without a lock: a lost update among racing threads is of no consequence.
    recent_ns: AtomicU64,
    /// When threads last began to take turns again after slow requests (microseconds).
    retried: AtomicU64,
    /// How long after `retried` they try again (microseconds).
    retry_after: AtomicU64,
    epoch: Instant,
    resting: AtomicUsize,
    /// A resting thread is the next in line (it looks every STUCK_AFTER; the others sleep
    /// until it takes the turn and wakes one of them to be next).
    next_in_line: Mutex<bool>,
    woken: Condvar,
}

impl Turns {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            holder: AtomicU64::new(0),
            holder_free: AtomicU64::new(0),
            recent_ns: AtomicU64::new(0),
            retried: AtomicU64::new(0),
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
        self.may_wait_as(me(), self.now())
    }

    /// A request of this process ended after `took`.
    pub(crate) fn request_took(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let recent = self.recent_ns.load(Ordering::Relaxed);
        self.recent_ns.store(recent - recent / 4 + took / 4, Ordering::Relaxed);
    }

    /// [`Turns::may_wait`] for thread `me` at `now` (microseconds from `epoch`).
    fn may_wait_as(&self, me: u64, now: u64) -> bool {
        if !self.enabled || !self.quick(now) {
            return true;
        }
        let holder = match self.holder.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => me,
            Err(h) => h,
        };
        let stuck = now.saturating_sub(self.holder_free.load(Ordering::SeqCst)) >= STUCK_AFTER.as_micros() as u64;
        let took_over = || {
            let taken = stuck && self.holder.compare_exchange(holder, me, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            if taken {
                // A request held its thread that long: count it so (a slow view stops the
                // turns at once; a few quick requests bring them back after a preemption).
                self.recent_ns.fetch_max(STOLEN.as_nanos() as u64, Ordering::Relaxed);
            }
            taken
        };
        if holder == me || took_over() {
            self.holder_free.store(now, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Whether the recent requests were quick; after [`RETRY`] (and longer each time the
    /// turns stopped again before that long) they are taken to be.
    fn quick(&self, now: u64) -> bool {
        let (retried, after) = (self.retried.load(Ordering::Relaxed), self.retry_after.load(Ordering::Relaxed));
        let due = now.saturating_sub(retried) >= after;
        if self.recent_ns.load(Ordering::Relaxed) < QUICK.as_nanos() as u64 {
            if due && after != RETRY.as_micros() as u64 {
                // Quick for as long as the last wait: the turns stay, and the next try
                // comes a second after they stop.
                self.retry_after.store(RETRY.as_micros() as u64, Ordering::Relaxed);
                self.retried.store(now, Ordering::Relaxed);
            }
            return true;
        }
        if !due || self.retried.compare_exchange(retried, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        self.retry_after.store((after * 2).min(RETRY_MAX.as_micros() as u64), Ordering::Relaxed);
        self.recent_ns.store(0, Ordering::Relaxed);
        // Whoever held the turn before is no holder busy since: the next to look takes it.
        self.holder.store(0, Ordering::SeqCst);
        true
    }

    /// Whether a thread rests: the process is not stuck while one does.
    pub(crate) fn resting(&self) -> bool {
        self.resting.load(Ordering::SeqCst) > 0
    }

    /// Rest until the thread [`Turns::may_wait`] (or `timeout` passed: the caller looks
    /// whether the worker retires).
    pub(crate) fn rest(&self, timeout: Duration) {
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
            if self.may_wait() {
                if next && self.resting.load(Ordering::SeqCst) > 1 {
                    // Another becomes the next in line.
                    self.woken.notify_one();
                }
                break;
            }
        }
        drop(line);
        self.resting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const STUCK_US: u64 = STUCK_AFTER.as_micros() as u64;
    const RETRY_US: u64 = RETRY.as_micros() as u64;

    #[test]
    fn one_thread_holds_the_turn_while_requests_are_quick_and_another_takes_it_from_a_busy_holder() {
        let t = Turns::new(true);
        let (a, b) = (1, 2);
        assert!(t.may_wait_as(a, 1000), "the first thread takes the free turn");
        assert!(t.may_wait_as(a, 1100), "and keeps it");
        assert!(!t.may_wait_as(b, 1100 + STUCK_US - 1), "another rests while the holder was free just now");
        assert!(t.may_wait_as(b, 1100 + STUCK_US), "a holder busy for STUCK_AFTER gives the turn up");
        assert!(t.may_wait_as(a, 1100 + STUCK_US + 10), "which stops the turns for a few requests");
        for _ in 0..5 {
            t.request_took(Duration::from_micros(60));
        }
        assert!(!t.may_wait_as(a, 1100 + STUCK_US + 20), "the old holder now rests");
        assert!(Turns::new(false).may_wait_as(b, 0), "without turns (one thread) it always waits for work");
    }

    #[test]
    fn slow_requests_stop_the_turns_which_are_tried_again_after_a_while() {
        let t = Turns::new(true);
        let (a, b) = (1, 2);
        assert!(t.may_wait_as(a, 0));
        t.request_took(Duration::from_secs(1));
        assert!(t.may_wait_as(b, 10), "a slow request among the recent ones: every thread waits for work");
        for _ in 0..10 {
            t.request_took(Duration::from_micros(60));
        }
        assert!(t.may_wait_as(b, 20), "still slow on average");
        // Slow as measured without turns (waits for the GIL included): tried again after a
        // second, the turn free for the first to look.
        assert!(t.may_wait_as(b, RETRY_US + 30), "turns again");
        assert!(!t.may_wait_as(a, RETRY_US + 40), "the thread holding it was free just now");
        t.request_took(Duration::from_secs(1));
        assert!(t.may_wait_as(a, RETRY_US + 50), "and stopped by the next slow request");
        // Stopped soon after: the next try waits twice as long.
        assert!(!t.quick(3 * RETRY_US + 20), "no turns yet");
        let second = 3 * RETRY_US + 60;
        assert!(t.quick(second), "tried again after twice the wait");
        assert!(t.may_wait_as(a, second + 10) && !t.may_wait_as(b, second + 20));
        // Quick for as long as the next wait (four): the next try is a second after a stop.
        assert!(t.quick(second + 4 * RETRY_US));
        t.request_took(Duration::from_secs(1));
        assert!(!t.quick(second + 4 * RETRY_US + 10));
        assert!(!t.quick(second + 5 * RETRY_US - 10));
        assert!(t.quick(second + 5 * RETRY_US + 20), "after a second");
        t.request_took(Duration::from_secs(1));
        for _ in 0..30 {
            t.request_took(Duration::from_micros(60));
        }
        assert!(t.quick(second + 5 * RETRY_US + 30), "quick by itself");
    }

    #[test]
    fn a_resting_thread_takes_the_turn_from_a_holder_busy_for_stuck_after() {
        let t = Arc::new(Turns::new(true));
        assert!(t.may_wait(), "this thread holds the turn, and then stays busy");
        let resting = {
            let t = t.clone();
            std::thread::spawn(move || {
                let begun = Instant::now();
                t.rest(Duration::from_secs(60));
                (begun.elapsed(), t.may_wait())
            })
        };
        let (rested, took) = resting.join().expect("thread");
        assert!(took, "it took the turn");
        assert!(rested < Duration::from_secs(30), "by looking as the next in line, not at its timeout: {rested:?}");
    }
}

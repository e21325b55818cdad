//! A direct worker's thread sends the responses it finishes in batches while requests wait
//! for it. When it finishes one and the next request is already here (on another kept
//! connection), the finished response stays in its connection's buffer and goes out with
//! the next one's: the web server is woken once for several responses rather than once per
//! response. nginx runs one event loop per process, and on a machine whose cores the
//! workers keep busy, each wake-up preempts a worker; sending in batches saved about a
//! third of nginx's and wrk's CPU per Flask request (docs/performance-lab.md, session 20).
//!
//! A batch goes out with the thread's next response once it holds [`MAX_HELD`], when the
//! thread finds no request waiting (before it sleeps, [`crate::park`]) or another thread of
//! its process waiting for work (before it takes the next request), when it retires, or
//! by the flusher thread once a response has been held [`crate::flusher::HOLD_MAX`] (the
//! next request runs long). So that this last case stays rare, a thread holds responses
//! only while its recent requests have been quick ([`QUICK`]).
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::Shared;

/// The most finished responses a thread holds back: a batch is this many and the one it
/// goes out with. Each held response waits for the next request's time.
const MAX_HELD: usize = 7;
/// A thread holds responses while the running mean of its requests' times is below this:
/// far above a quick view's, far below what a client would notice as a wait.
const QUICK: Duration = Duration::from_millis(1);

struct Batch {
    held: Vec<Arc<Shared>>,
    /// A running mean of the thread's request times (each new one weighs a quarter).
    recent_ns: u64,
}

thread_local! {
    static BATCH: RefCell<Batch> =
        const { RefCell::new(Batch { held: Vec::new(), recent_ns: QUICK.as_nanos() as u64 }) };
}

/// The thread's request just ended, after `took`: whether it may hold the response back.
pub(crate) fn may_hold(took: Duration) -> bool {
    BATCH.with_borrow_mut(|b| {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        b.recent_ns = b.recent_ns - b.recent_ns / 4 + took / 4;
        b.recent_ns < QUICK.as_nanos() as u64 && b.held.len() < MAX_HELD
    })
}

/// Hold `conn`'s finished response for the thread's next batch.
pub(crate) fn hold(conn: &Arc<Shared>) {
    BATCH.with_borrow_mut(|b| b.held.push(conn.clone()));
}

/// Whether the thread holds responses back.
pub(crate) fn holding() -> bool {
    BATCH.with_borrow(|b| !b.held.is_empty())
}

/// Send the responses the thread holds back.
pub(crate) fn send() {
    let held = BATCH.with_borrow_mut(|b| std::mem::take(&mut b.held));
    for conn in held {
        conn.lock().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_held_only_while_the_recent_requests_were_quick() {
        let quick = Duration::from_micros(60);
        // Starts as if the recent requests took QUICK: a few quick ones bring it below.
        assert!(!may_hold(QUICK));
        let mut n = 0;
        while !may_hold(quick) {
            n += 1;
            assert!(n < 10, "quick requests never let the thread hold");
        }
        // A slow request stops the holding until enough quick ones follow.
        assert!(!may_hold(Duration::from_secs(1)));
        let mut after_slow = 0;
        while !may_hold(quick) {
            after_slow += 1;
        }
        assert!((15..40).contains(&after_slow), "{after_slow} quick requests after a 1 s one");
    }

    #[test]
    fn at_most_max_held_and_sending_empties_the_batch() {
        let quick = Duration::from_micros(60);
        while !may_hold(quick) {}
        let conns: Vec<Arc<Shared>> = (0..MAX_HELD)
            .map(|_| {
                let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
                Arc::new(Shared::new(a.into(), 1))
            })
            .collect();
        for c in &conns {
            assert!(may_hold(quick));
            hold(c);
        }
        assert!(holding());
        assert!(!may_hold(quick), "a batch holds at most {MAX_HELD}");
        send();
        assert!(!holding());
        assert!(may_hold(quick));
    }
}

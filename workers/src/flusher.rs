//! The flusher thread: sends a complete response that a serving thread holds for its
//! END_REQUEST ([`crate::conn::Conn::push_chunk`]) when the END_REQUEST is slow to come
//! (the app's `close()` takes long), so holding never delays a response by more than
//! [`HOLD_MAX`] and a tick.
//!
//! It ticks only while responses are being held (and a second after); otherwise it
//! sleeps until the next hold wakes it, so an idle worker has no timer wake-ups.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::conn::Shared;

/// The longest a complete response waits for its END_REQUEST in the worker. Short: the
/// bridge may hold the response once more for a worker that sent the body alone (up to
/// 50 ms, for FastCGI programs that send END_REQUEST one write later), so a slow close()
/// delays the response by this much more than it did before the worker held anything.
pub(crate) const HOLD_MAX: Duration = Duration::from_millis(5);
/// How often held responses are checked while there are any.
const TICK: Duration = Duration::from_millis(5);
/// How long the thread keeps ticking after the last hold before it sleeps.
const LINGER: Duration = Duration::from_secs(1);

/// Every connection of this process (dead ones are pruned at registration).
static CONNS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
/// The thread is asleep (or about to be) until [`wake`].
static PARKED: AtomicBool = AtomicBool::new(false);
/// The flusher thread, `None` when it could not be started (then nothing is held).
static THREAD: OnceLock<Option<Thread>> = OnceLock::new();

/// Whether the flusher thread runs (starting it on first use): responses may be held.
pub(crate) fn running() -> bool {
    THREAD
        .get_or_init(|| match std::thread::Builder::new().name("fcgibridge-flush".into()).spawn(run) {
            Ok(handle) => {
                crate::crash::send_held_first();
                Some(handle.thread().clone())
            }
            Err(e) => {
                eprintln!("fcgibridge worker: cannot start the flusher thread, responses are not held: {e}");
                None
            }
        })
        .is_some()
}

/// Watch this connection's held responses.
pub(crate) fn register(conn: &Arc<Shared>) {
    let mut conns = CONNS.lock().unwrap_or_else(|e| e.into_inner());
    conns.retain(|w| w.strong_count() > 0);
    conns.push(Arc::downgrade(conn));
}

/// A response is being held: make sure the thread is ticking.
pub(crate) fn wake() {
    if PARKED.swap(false, Ordering::SeqCst) {
        if let Some(Some(t)) = THREAD.get() {
            t.unpark();
        }
    }
}

/// Whether the thread sleeps until the next hold.
#[cfg(test)]
pub(crate) fn parked() -> bool {
    PARKED.load(Ordering::SeqCst)
}

/// From a fatal signal's handler: send every finished response a connection of this
/// process holds (for its END_REQUEST or a batch), sleeping on no lock; how many went.
pub(crate) fn send_held_on_crash() -> usize {
    // Still locked after the wait: a thread died registering a connection; none is sent.
    let Some(conns) = crate::conn::try_lock_in_crash(&CONNS) else { return 0 };
    let mut sent = 0;
    for w in conns.iter() {
        if let Some(c) = w.upgrade() {
            sent += usize::from(c.send_held_on_crash());
            // Never the last reference dropped here, which would free memory in a handler
            // (should the process live on, this connection is never freed).
            std::mem::forget(c);
        }
    }
    sent
}

/// Send the responses held too long; whether any is still held.
fn scan() -> bool {
    let conns: Vec<Arc<Shared>> =
        CONNS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
    let mut any = false;
    for c in &conns {
        any |= c.flush_overdue(HOLD_MAX);
    }
    any
}

fn run() {
    let mut last_hold = Instant::now();
    loop {
        if scan() {
            last_hold = Instant::now();
        }
        if last_hold.elapsed() < LINGER {
            std::thread::sleep(TICK);
            continue;
        }
        // Announce the sleep, then look once more: a hold that began before the
        // announcement is seen now, one after it wakes the thread.
        PARKED.store(true, Ordering::SeqCst);
        if scan() {
            PARKED.store(false, Ordering::SeqCst);
            last_hold = Instant::now();
            continue;
        }
        std::thread::park();
        PARKED.store(false, Ordering::SeqCst);
        last_hold = Instant::now();
    }
}

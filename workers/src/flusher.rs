//! The flusher thread: sends a complete response that a serving thread holds when what it
//! waits for is slow to come — its END_REQUEST ([`crate::conn::Conn::push_chunk`]), when
//! the app's `close()` takes long, or the rest of the thread's batch ([`crate::batch`]),
//! when a request the thread runs meanwhile is slow. So holding never delays a response by
//! more than [`HOLD_MAX`] and a tick, or [`crate::batch::WAIT_MAX`].
//!
//! It waits in an epoll set of its own. It ticks only while responses are being held (and
//! a second after); otherwise it sleeps until the next hold bumps its eventfd, so an idle
//! worker has no timer wake-ups. Each serving thread that holds batches has a timer in the
//! set, set for [`crate::batch::WAIT_MAX`] when it begins a request while holding one and
//! cleared when the batch goes out: an expiry sends every batch held, at once rather than
//! at the next tick. Once per batch, not per response: a timer set is a system call, and
//! on a virtual machine maybe an exit to the host.
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::conn::Shared;
use crate::sys;

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
/// The flusher, `None` when it could not be started (then nothing is held).
static FLUSHER: OnceLock<Option<Flusher>> = OnceLock::new();

struct Flusher {
    /// The set the thread waits in: `wake` and the serving threads' timers.
    epfd: OwnedFd,
    wake: OwnedFd,
}

/// Whether the flusher thread runs (starting it on first use): responses may be held.
pub(crate) fn running() -> bool {
    flusher().is_some()
}

fn flusher() -> Option<&'static Flusher> {
    FLUSHER
        .get_or_init(|| match start() {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("fcgibridge worker: cannot start the flusher thread, responses are not held: {e}");
                None
            }
        })
        .as_ref()
}

fn start() -> std::io::Result<Flusher> {
    let epfd = sys::epoll_create()?;
    let wake = sys::event()?;
    // Each descriptor's event carries the descriptor, to be read.
    let fd = wake.as_raw_fd();
    sys::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64)?;
    // The thread has its own copy of the set's descriptor: the static one is being made.
    let set = epfd.try_clone()?;
    std::thread::Builder::new().name("fcgibridge-flush".into()).spawn(move || run(set.as_raw_fd(), fd))?;
    Ok(Flusher { epfd, wake })
}

/// A timer for a serving thread's batches, in the flusher's set (`None`: the flusher does
/// not run, or the timer could not be made; then the thread holds no batch). Its expiry
/// wakes the flusher to send every batch held.
pub(crate) fn batch_timer() -> Option<OwnedFd> {
    let f = flusher()?;
    let made = sys::timer().and_then(|timer| {
        let fd = timer.as_raw_fd();
        sys::epoll_ctl(f.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64)?;
        Ok(timer)
    });
    match made {
        Ok(timer) => Some(timer),
        Err(e) => {
            eprintln!("fcgibridge worker: cannot make a timer for held responses, this thread sends each at once: {e}");
            None
        }
    }
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
        if let Some(f) = FLUSHER.get().and_then(Option::as_ref) {
            sys::bump(f.wake.as_raw_fd());
        }
    }
}

/// Whether the thread sleeps until the next hold.
#[cfg(test)]
pub(crate) fn parked() -> bool {
    PARKED.load(Ordering::SeqCst)
}

/// Send the responses held too long (and every batch, when `batches_due`); whether any is
/// still held.
fn scan(batches_due: bool) -> bool {
    let conns: Vec<Arc<Shared>> =
        CONNS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
    let mut any = false;
    for c in &conns {
        any |= c.flush_overdue(batches_due);
    }
    any
}

fn run(epfd: RawFd, wake_fd: RawFd) {
    let mut last_hold = Instant::now();
    let mut batches_due = false;
    loop {
        if scan(std::mem::take(&mut batches_due)) {
            last_hold = Instant::now();
        }
        let mut wait = TICK;
        if last_hold.elapsed() >= LINGER {
            // Announce the sleep, then look once more: a hold that began before the
            // announcement is seen now, one after it bumps the eventfd.
            PARKED.store(true, Ordering::SeqCst);
            if scan(false) {
                PARKED.store(false, Ordering::SeqCst);
                last_hold = Instant::now();
                continue;
            }
            // No timer while idle: the process ends without it when it retires.
            wait = Duration::MAX;
        }
        match sys::epoll_wait_one(epfd, wait) {
            // The eventfd or a timer: read, so that it does not wake the thread again.
            Ok(Some(token)) => {
                sys::drain_count(token as RawFd);
                batches_due = token != wake_fd as u64;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("fcgibridge worker: the flusher thread cannot wait, ticking instead: {e}");
                std::thread::sleep(TICK);
            }
        }
        if wait == Duration::MAX {
            PARKED.store(false, Ordering::SeqCst);
            last_hold = Instant::now();
        }
    }
}

//! Evening out the waits of a direct pool's processes. Each kept connection belongs to the
//! process that accepted it, and the web server writes its next request to the connection
//! it got a response on last (nginx's keepalive cache is last-in first-out): so each
//! process keeps about as many requests queued as it has connections, whatever its pace.
//! When the scheduler gives one process less of a core for a while (it shares one with the
//! web server or the client), its queue waits longer than the others' — on two cores, for
//! hundreds of milliseconds at a time.
//!
//! The pool's workers share one page (`FCGIBRIDGE_RELAY_FDS`' third descriptor, made by
//! the bridge): each process publishes how many connections it holds and how many requests
//! it has served. Every [`CHECK`] a thread of each process works out its share of the
//! pool's connections — in proportion to the rate it served at lately — and a process
//! above its share by more than [`MARGIN`] hands the next connections whose request it
//! takes to the relay ([`crate::park`]) until it holds at most half that above it, while
//! the others take those first. The request moves with its connection, and so do the
//! later ones the web server writes to it. A few dozen moves a second keep the waits
//! even; a request moved costs about what a quick one does.
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a process works out its share.
const CHECK: Duration = Duration::from_millis(10);
/// The weight of the last [`CHECK`]'s rate in the smoothed one.
const SMOOTHING: f64 = 0.5;
/// Connections above its share a process keeps before it moves any: the rates of two
/// windows differ by chance too, and moving costs.
const MARGIN: f64 = 6.0;
/// Below this many requests a second in the pool, rates are mostly noise.
const MIN_RATE: f64 = 200.0;
/// How many times an over-share process lets the relay's event pass before it takes a
/// connection waiting there itself (the others have not, in that time). Taken at the
/// first look, a process with nothing else ready would take its own moves back.
const MAX_PASSES: u32 = 64;
/// The page: a line for the pool, then a line per process.
const LINE: usize = 64;

#[repr(C, align(64))]
struct Head {
    /// Connections sent to the relay and not taken yet (any process may take one).
    relayed: AtomicU32,
}

#[repr(C, align(64))]
struct Slot {
    /// The process using the slot; 0 when free.
    pid: AtomicU32,
    /// The kept connections it holds (parked, or served now).
    conns: AtomicU32,
    /// Requests taken by the processes that used the slot: it only grows, so another
    /// process's count of this window stays right when the slot changes hands.
    served: AtomicU64,
    /// Connections they moved to the relay for their share (for tests and debugging: the
    /// bridge reads each worker's own count from its scoreboard).
    moved: AtomicU64,
}

pub(crate) struct Balance {
    head: &'static Head,
    slots: &'static [Slot],
    me: usize,
    pid: u32,
    window: Mutex<Window>,
    /// Connections this process is still to move, from the last check.
    surplus: AtomicU32,
    /// Above its share: it leaves connections in the relay to the others.
    over: AtomicBool,
    /// Relay events let pass in a row while over.
    passes: AtomicU32,
}

struct Window {
    at: Instant,
    served: Vec<u64>,
    rate: Vec<f64>,
}

impl Balance {
    /// Map the pool's page and take a slot in it; `None` (no balancing) when every slot is
    /// taken or the page cannot be mapped (said on stderr).
    pub(crate) fn new(fd: RawFd) -> Option<Self> {
        let (head, slots) = match map(fd) {
            Ok(page) => page,
            Err(e) => {
                eprintln!("fcgibridge worker: cannot use the pool's balance page (its connections stay where they are accepted): {e}");
                return None;
            }
        };
        let pid = std::process::id();
        let me = slots.iter().position(|s| {
            let was = s.pid.load(Ordering::SeqCst);
            (was == 0 || !alive(was)) && s.pid.compare_exchange(was, pid, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        })?;
        slots[me].conns.store(0, Ordering::Relaxed);
        let n = slots.len();
        let served = slots.iter().map(|s| s.served.load(Ordering::Relaxed)).collect();
        Some(Self {
            head,
            slots,
            me,
            pid,
            // The others' counts so far are not this window's.
            window: Mutex::new(Window { at: Instant::now(), served, rate: vec![0.0; n] }),
            surplus: AtomicU32::new(0),
            over: AtomicBool::new(false),
            passes: AtomicU32::new(0),
        })
    }

    /// The slot, while this process holds it (a retiring one has left it, and another
    /// process may have taken it since).
    fn mine(&self) -> Option<&Slot> {
        let slot = &self.slots[self.me];
        (slot.pid.load(Ordering::Relaxed) == self.pid).then_some(slot)
    }

    /// A request taken.
    pub(crate) fn served(&self) {
        if let Some(slot) = self.mine() {
            slot.served.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publish the connections held now and, once a [`CHECK`], work out this process's share.
    pub(crate) fn check(&self, conns: usize) {
        let Some(mine) = self.mine() else { return };
        mine.conns.store(u32::try_from(conns).unwrap_or(u32::MAX), Ordering::Relaxed);
        let Ok(mut w) = self.window.try_lock() else { return };
        let elapsed = w.at.elapsed();
        if elapsed < CHECK {
            return;
        }
        w.at = Instant::now();
        let mut held = Vec::with_capacity(self.slots.len());
        for (i, s) in self.slots.iter().enumerate() {
            let pid = s.pid.load(Ordering::Relaxed);
            let served = s.served.load(Ordering::Relaxed);
            let took = served.wrapping_sub(w.served[i]);
            w.served[i] = served;
            // A process that died keeps its slot until one here sees it gone.
            if pid == 0 || (took == 0 && i != self.me && !alive(pid)) {
                if pid != 0 {
                    let _ = s.pid.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
                }
                w.rate[i] = 0.0;
                held.push(0);
                continue;
            }
            let rate = took as f64 / elapsed.as_secs_f64();
            w.rate[i] = (1.0 - SMOOTHING) * w.rate[i] + SMOOTHING * rate;
            held.push(s.conns.load(Ordering::Relaxed));
        }
        let over = surplus(self.me, &held, &w.rate);
        self.over.store(over > MARGIN, Ordering::Relaxed);
        let moves = if over > MARGIN { (over - MARGIN / 2.0) as u32 } else { 0 };
        self.surplus.store(moves, Ordering::Relaxed);
    }

    /// Whether to move the connection whose request was just taken (one less to move).
    pub(crate) fn move_one(&self) -> bool {
        self.surplus.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1)).is_ok()
    }

    /// A connection was moved to the relay for this process's share (counted here and in
    /// the worker's scoreboard, which the bridge reads).
    pub(crate) fn moved(&self) {
        if let Some(slot) = self.mine() {
            slot.moved.fetch_add(1, Ordering::Relaxed);
        }
        crate::scoreboard::count_move();
    }

    /// This process sent a connection to the relay (moved, or handed over by the watcher or
    /// while retiring): one more for the others to read first.
    pub(crate) fn sent(&self) {
        self.head.relayed.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a connection sent to the relay (moved, or handed over by a busy or
    /// retiring process) waits there for this one, which is within its share.
    pub(crate) fn one_waits(&self) -> bool {
        !self.over.load(Ordering::Relaxed) && self.head.relayed.load(Ordering::Relaxed) > 0
    }

    /// The relay was read (`got`: a connection came; none: the count is stale).
    pub(crate) fn taken(&self, got: bool) {
        self.passes.store(0, Ordering::Relaxed);
        if got {
            let _ = self.head.relayed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        } else {
            self.head.relayed.store(0, Ordering::SeqCst);
        }
    }

    /// The relay has a connection: leave it to the others while over share, unless they
    /// have not taken it for [`MAX_PASSES`] looks.
    pub(crate) fn pass_relay(&self) -> bool {
        self.over.load(Ordering::Relaxed)
            && self.head.relayed.load(Ordering::Relaxed) > 0
            && self.passes.fetch_add(1, Ordering::Relaxed) < MAX_PASSES
    }

    /// The worker retires: its connections go to the others, and its slot is free (once:
    /// each retiring thread asks).
    pub(crate) fn leave(&self) {
        self.over.store(false, Ordering::Relaxed);
        self.surplus.store(0, Ordering::Relaxed);
        if let Some(slot) = self.mine() {
            slot.conns.store(0, Ordering::Relaxed);
            let _ = slot.pid.compare_exchange(self.pid, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// How many connections process `me` holds beyond its share of all of them, the shares in
/// proportion to the processes' rates (0 while the pool serves too little to tell).
fn surplus(me: usize, held: &[u32], rates: &[f64]) -> f64 {
    let total_rate: f64 = rates.iter().sum();
    let live = rates.iter().filter(|&&r| r > 0.0).count();
    if total_rate < MIN_RATE || live < 2 {
        return 0.0;
    }
    let total: f64 = held.iter().map(|&c| f64::from(c)).sum();
    f64::from(held[me]) - total * rates[me] / total_rate
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks; ESRCH is the one answer that means gone.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) }
}

/// The page behind `fd`: its head and as many slots as fit.
fn map(fd: RawFd) -> Result<(&'static Head, &'static [Slot]), String> {
    // SAFETY: the descriptor the bridge gave stays open for the process's life.
    let (base, len) = crate::sys::map_shared(unsafe { BorrowedFd::borrow_raw(fd) })?;
    let slots = (len / LINE).saturating_sub(1);
    if slots < 2 {
        return Err(format!("it is {len} bytes, too small"));
    }
    // SAFETY: the mapping is page-aligned, `len` bytes long and lives as long as the process
    // (never unmapped); it holds only atomics, which any bit pattern is valid for.
    unsafe {
        let head = &*base.as_ptr().cast::<Head>();
        let slots = std::slice::from_raw_parts(base.as_ptr().add(LINE).cast::<Slot>(), slots);
        Ok((head, slots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn a_process_serving_at_half_the_pace_holds_a_third() {
        // Two processes of 64 connections each; one served 4,000 requests a second, the other 8,000.
        let rates = [4000.0, 8000.0];
        let held = [64, 64];
        let over = surplus(0, &held, &rates);
        assert!((over - (64.0 - 128.0 / 3.0)).abs() < 1e-9, "{over}");
        assert!(surplus(1, &held, &rates) < 0.0);
    }

    #[test]
    fn no_share_while_the_pool_is_nearly_idle_or_alone() {
        assert_eq!(surplus(0, &[50, 10], &[100.0, 50.0]), 0.0);
        assert_eq!(surplus(0, &[50, 0], &[9000.0, 0.0]), 0.0);
    }

    /// A page of `slots` process lines, as the bridge makes it, and its lines mapped.
    fn page(slots: usize) -> (OwnedFd, &'static [Slot]) {
        // SAFETY: memfd_create with a valid name; the descriptor is owned here.
        let fd = unsafe { libc::memfd_create(c"balance-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), ((slots + 1) * LINE) as libc::off_t) }, 0);
        let (_, lines) = map(fd.as_raw_fd()).expect("mapped");
        (fd, lines)
    }

    #[test]
    fn a_slot_of_a_process_gone_is_taken_again_and_one_left_is_free() {
        let (fd, slots) = page(2);
        // Above any pid_max: a process gone.
        slots[0].pid.store(999_999_999, Ordering::SeqCst);
        slots[1].pid.store(1, Ordering::SeqCst); // init: alive
        let b = Balance::new(fd.as_raw_fd()).expect("a slot");
        assert_eq!(b.me, 0);
        assert_eq!(slots[0].pid.load(Ordering::SeqCst), std::process::id());
        // Full now: no slot for another.
        assert!(Balance::new(fd.as_raw_fd()).is_none());
        b.leave();
        assert_eq!(slots[0].pid.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_slot_taken_again_counts_on_from_where_it_was() {
        let (fd, slots) = page(2);
        // The others remember 10,000 for this slot: set back to 0, it would read as a
        // window of 2^64 requests, and every other process as far over its share.
        slots[0].pid.store(999_999_999, Ordering::SeqCst);
        slots[0].served.store(10_000, Ordering::SeqCst);
        slots[1].pid.store(1, Ordering::SeqCst);
        let b = Balance::new(fd.as_raw_fd()).expect("a slot");
        assert_eq!((b.me, slots[0].served.load(Ordering::SeqCst)), (0, 10_000));
        b.served();
        assert_eq!(slots[0].served.load(Ordering::SeqCst), 10_001);
    }

    #[test]
    fn a_process_that_left_its_slot_no_longer_writes_to_it() {
        let (fd, slots) = page(2);
        let b = Balance::new(fd.as_raw_fd()).expect("a slot");
        b.surplus.store(3, Ordering::Relaxed);
        b.over.store(true, Ordering::Relaxed);
        b.leave();
        assert!(!b.over.load(Ordering::Relaxed) && !b.move_one(), "a retiring process moves nothing more");
        // Its successor (init stands in for it): the retiring threads' requests, and their
        // leave() again, touch nothing of its.
        let s = &slots[b.me];
        s.pid.store(1, Ordering::SeqCst);
        s.conns.store(5, Ordering::SeqCst);
        b.served();
        b.moved();
        b.check(9);
        b.leave();
        let seen = (s.pid.load(Ordering::SeqCst), s.conns.load(Ordering::SeqCst), s.served.load(Ordering::SeqCst));
        assert_eq!((seen, s.moved.load(Ordering::SeqCst)), ((1, 5, 0), 0));
    }

    #[test]
    fn moves_are_counted_out_and_the_relay_count_follows_takes() {
        let (fd, _) = page(4);
        let b = Balance::new(fd.as_raw_fd()).expect("a slot");
        b.surplus.store(2, Ordering::Relaxed);
        assert!(b.move_one() && b.move_one() && !b.move_one());
        b.moved();
        assert!(!b.one_waits(), "counted as sent, not as moved");
        b.sent();
        b.sent();
        assert!(b.one_waits());
        b.over.store(true, Ordering::Relaxed);
        assert!(!b.one_waits(), "an over-share process leaves it to the others");
        assert!(b.pass_relay());
        b.over.store(false, Ordering::Relaxed);
        b.taken(true);
        assert!(b.one_waits());
        b.taken(false);
        assert!(!b.one_waits(), "a relay found empty resets the count");
    }
}

//! The scoreboard of a worker serving a `direct` listener: shared memory where the bridge,
//! no longer on the request path, reads what each serving thread does and sets the word
//! that retires the worker (docs/worker-contract.md, "Direct mode").
//!
//! One memfd (`FCGIBRIDGE_SCOREBOARD_FD`), native-endian, every field atomic: a 64-byte
//! header (`drain`, written by the bridge; `threads`, `accepting`, `timeouts`, the
//! responses by status class and the kept connections moved to the relay, by the
//! worker), then one 256-byte slot per serving thread (`served`, `started`, the current
//! request's `<pid>-<n> METHOD URI`); an ASGI worker lends one to
//! each request in flight instead. A thread writes only its own slot. The line is stored
//! before `started` (Release); a reader that loads `started` (Acquire), copies the line and
//! finds `started` unchanged and non-zero has the line of that request. The last 128
//! bytes of the mapping count how long the requests ran (the app's start to END_REQUEST):
//! 15 u64 counts in the status page's buckets, then their sum in nanoseconds.
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Bytes of the header, then of each thread's slot.
const HEADER_BYTES: usize = 64;
const SLOT_BYTES: usize = 256;
/// Bytes of [`Durations`], at the end of the mapping.
const DURATIONS_BYTES: usize = 128;
/// Upper bounds of the duration buckets, nanoseconds: the bridge's own
/// (bridge/src/status/latency.rs), the last bucket above them all.
const BOUNDS_NS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];
/// How often a direct worker waiting for work (a WSGI thread in its process's epoll set,
/// park.rs; an ASGI worker's loop) looks at its drain word.
pub(crate) const DRAIN_CHECK: Duration = Duration::from_secs(1);
/// The longest request line (`<pid>-<n> METHOD URI`) a slot holds (longer ones are cut).
pub(crate) const LINE_BYTES: usize = 232;

#[repr(C)]
struct Header {
    /// 1: retire (stop accepting, finish what runs, exit 0). The bridge's.
    drain: AtomicU32,
    /// How many slots this worker's threads use.
    threads: AtomicU32,
    /// How many of the worker's threads may still accept a connection: each counts itself
    /// from its first accept until it leaves its accept loop for good (drain seen).
    accepting: AtomicU32,
    /// Requests an ASGI worker ended itself for request-timeout.
    timeouts: AtomicU32,
    /// Responses whose header block was sent, by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 5],
    /// Kept connections this worker moved to the relay to even out the pool's queues
    /// ([`crate::balance`]).
    moved: AtomicU64,
}

/// One serving thread's slot.
#[repr(C)]
pub(crate) struct Slot {
    /// Requests this thread has finished.
    served: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds when the current request began running the app; 0 idle.
    started: AtomicU64,
    line_len: AtomicU32,
    /// The current request's response head: 0 none yet, 1-5 its status class (made, queued).
    /// For the bridge, after the worker died: a request it was running had answered the web
    /// server, or had not. (`u32::MAX`, "not told", is the contract's; this worker tells.)
    head: AtomicU32,
    line: [AtomicU64; LINE_BYTES / 8],
}

/// How long the worker's requests ran: a count per bucket of [`BOUNDS_NS`] (and one above
/// them), and their sum.
#[repr(C)]
struct Durations {
    counts: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Durations {
    fn record(&self, ns: u64) {
        let i = BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BOUNDS_NS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

const _: () = assert!(
    size_of::<Header>() == HEADER_BYTES && size_of::<Slot>() == SLOT_BYTES && size_of::<Durations>() == DURATIONS_BYTES
);

struct Board {
    header: &'static Header,
    slots: &'static [Slot],
    durations: &'static Durations,
    /// Slots handed to threads so far.
    claimed: AtomicUsize,
}

static BOARD: OnceLock<Option<Board>> = OnceLock::new();

/// Map the scoreboard the bridge passed as `FCGIBRIDGE_SCOREBOARD_FD` (once; later calls
/// do nothing) and close its descriptor, before the app is imported. Without it (not a
/// direct worker) every function here does nothing.
pub(crate) fn init() {
    // A preloaded pool's template has no scoreboard of its own (its fd 4 is its control
    // socket): each fork is given one with its SPAWN ([`attach`]).
    if std::env::var_os("FCGIBRIDGE_TEMPLATE").is_some_and(|v| v == "1") {
        return;
    }
    let Some(fd) = std::env::var("FCGIBRIDGE_SCOREBOARD_FD").ok().and_then(|v| v.trim().parse::<RawFd>().ok()) else {
        return;
    };
    attach(fd);
}

/// Map the scoreboard on descriptor `fd` and close it (once; later calls close `fd` only).
pub(crate) fn attach(fd: RawFd) {
    // SAFETY: the descriptor is ours, inherited or received for this and used by nothing
    // else; dropping it after mapping closes it (the mapping keeps the memory).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    BOARD.get_or_init(|| {
        let (p, len) = match crate::sys::map_shared(&fd) {
            Ok(mapped) => mapped,
            Err(why) => {
                eprintln!("fcgibridge worker: cannot use the scoreboard (FCGIBRIDGE_SCOREBOARD_FD): {why}");
                return None;
            }
        };
        if len < HEADER_BYTES + SLOT_BYTES + DURATIONS_BYTES {
            eprintln!(
                "fcgibridge worker: the scoreboard is {len} bytes, too small for one thread's slot and the durations"
            );
            return None;
        }
        // SAFETY: `len` bytes of shared memory, page-aligned, never unmapped; the bridge
        // only touches it atomically too.
        Some(unsafe { Board::at(p.as_ptr(), len) })
    });
}

impl Board {
    /// # Safety
    /// `base` points to `len` bytes, 8-aligned, valid and only accessed atomically for the
    /// rest of the process's life.
    unsafe fn at(base: *mut u8, len: usize) -> Self {
        let slots = (len - HEADER_BYTES - DURATIONS_BYTES) / SLOT_BYTES;
        // SAFETY: per the contract; Header and Slot are made of atomics only (repr(C)).
        unsafe {
            Self {
                header: &*base.cast::<Header>(),
                slots: std::slice::from_raw_parts(base.add(HEADER_BYTES).cast::<Slot>(), slots),
                durations: &*base.add(len - DURATIONS_BYTES).cast::<Durations>(),
                claimed: AtomicUsize::new(0),
            }
        }
    }

    fn claim_slot(&self) -> Option<&'static Slot> {
        let i = self.claimed.fetch_add(1, Ordering::Relaxed);
        let slot = self.slots.get(i)?;
        self.header.threads.fetch_max(i as u32 + 1, Ordering::Release);
        Some(slot)
    }

    fn count_response(&self, code: u16) {
        if let Some(n) = usize::from(code / 100).checked_sub(1).and_then(|i| self.header.responses.get(i)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether the bridge asked this worker to retire.
pub(crate) fn draining() -> bool {
    drain_word() != 0
}

/// The `drain` word the bridge wrote: 0; 1, retire (a recycle, a reload: it accepts
/// nothing more, the pool's other workers take what waits on the socket); or [`STOP`].
pub(crate) fn drain_word() -> u32 {
    match BOARD.get() {
        Some(Some(b)) => b.header.drain.load(Ordering::Acquire),
        _ => 0,
    }
}

/// `drain`: the bridge is stopping and no worker takes over: the connections already
/// queued on the socket are served first (for [`STOP_QUEUE_WINDOW`] at most).
pub(crate) const STOP: u32 = 2;
/// How long a stopping worker keeps taking queued connections: what the web server had
/// sent when the stop began, not a TCP listener's endless new ones.
pub(crate) const STOP_QUEUE_WINDOW: Duration = Duration::from_secs(2);

/// The calling serving thread may accept connections until the returned guard is dropped
/// (it left its accept loop for good), counted in the header's `accepting`.
pub(crate) fn accepting() -> Accepting {
    let header = match BOARD.get() {
        Some(Some(b)) => Some(b.header),
        _ => None,
    };
    Accepting::enter(header)
}

/// One thread counted in `accepting` while it lives.
pub(crate) struct Accepting(Option<&'static Header>);

impl Accepting {
    fn enter(header: Option<&'static Header>) -> Self {
        if let Some(h) = header {
            h.accepting.fetch_add(1, Ordering::Release);
        }
        Self(header)
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        if let Some(h) = self.0 {
            h.accepting.fetch_sub(1, Ordering::Release);
        }
    }
}

/// An ASGI worker's slots, each lent to a request in flight: claimed at once, then taken
/// from and given back to a free list.
struct SlotPool {
    free: Vec<&'static Slot>,
    /// Where a request that ran without a slot is counted.
    first: Option<&'static Slot>,
}

impl SlotPool {
    const EMPTY: Self = Self { free: Vec::new(), first: None };

    fn claim(&mut self, board: &Board, n: usize) {
        self.free.extend((0..n).map_while(|_| board.claim_slot()));
        self.free.reverse(); // lent from the end: slot 0 first
        self.first = self.free.last().copied();
    }

    fn lend(&mut self) -> Option<&'static Slot> {
        self.free.pop()
    }

    fn give_back(&mut self, slot: Option<&'static Slot>) {
        match slot {
            Some(slot) => {
                slot.end();
                self.free.push(slot);
            }
            None => {
                if let Some(first) = self.first {
                    first.served.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The ASGI worker's slots (its loop's thread alone uses them: the lock is never contended).
static POOL: Mutex<SlotPool> = Mutex::new(SlotPool::EMPTY);
/// The ASGI worker's one count in `accepting`, while it may accept.
static LOOP_ACCEPTING: Mutex<Option<Accepting>> = Mutex::new(None);

fn pool() -> std::sync::MutexGuard<'static, SlotPool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An ASGI worker serves up to `concurrency` requests at once: as many slots are claimed
/// (`threads`), each lent to a request in flight ([`lend_slot`]), and the worker counts in
/// `accepting` until [`stop_accepting`].
pub(crate) fn serve_concurrently(concurrency: usize) {
    if let Some(Some(b)) = BOARD.get() {
        pool().claim(b, concurrency);
    }
    *LOOP_ACCEPTING.lock().unwrap_or_else(|e| e.into_inner()) = Some(accepting());
}

/// The ASGI worker takes no new connection any more.
pub(crate) fn stop_accepting() {
    LOOP_ACCEPTING.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// A free slot for a request starting; `None` when more requests run than the worker has
/// slots (more kept connections busy than `concurrency`) or without a scoreboard.
pub(crate) fn lend_slot() -> Option<&'static Slot> {
    pool().lend()
}

/// The request lent `slot` ended: it is counted served and timed, and the slot is free
/// again. One that ran without a slot (more in flight than slots) is counted in slot 0 (the
/// bridge sums every slot's count) and timed from `began_ns`.
pub(crate) fn give_back(slot: Option<&'static Slot>, began_ns: u64) {
    if let (None, Some(Some(b))) = (slot, BOARD.get()) {
        b.durations.record(crate::sys::monotonic_ns().saturating_sub(began_ns));
    }
    pool().give_back(slot);
}

/// An ASGI worker ended a request for request-timeout.
pub(crate) fn count_timeout() {
    if let Some(Some(b)) = BOARD.get() {
        b.header.timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A kept connection was moved to the relay for the pool's balance.
pub(crate) fn count_move() {
    if let Some(Some(b)) = BOARD.get() {
        b.header.moved.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response with status `code` had its header block sent.
pub(crate) fn count_response(code: u16) {
    if let Some(Some(b)) = BOARD.get() {
        b.count_response(code);
    }
}

/// A slot for the calling serving thread (each call a new one), counted in `threads`;
/// `None` without a scoreboard or when it has fewer slots than the worker has threads.
pub(crate) fn claim_slot() -> Option<&'static Slot> {
    match BOARD.get() {
        Some(Some(b)) => b.claim_slot(),
        _ => None,
    }
}

impl Slot {
    /// The thread starts running the app for the request `line` (`<pid>-<n> METHOD URI`,
    /// cut to [`LINE_BYTES`]). A bounded copy into the slot, no allocation.
    pub(crate) fn begin(&self, line: &[u8], now_ns: u64) {
        let line = &line[..line.len().min(LINE_BYTES)];
        self.head.store(0, Ordering::Relaxed);
        // The previous request's `started = 0` is seen before any word of this line (a
        // reader that saw that request's `started` then rejects a line torn by this one).
        std::sync::atomic::fence(Ordering::Release);
        for (word, bytes) in self.line.iter().zip(line.chunks(8)) {
            let mut b = [0u8; 8];
            b[..bytes.len()].copy_from_slice(bytes);
            word.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        self.line_len.store(line.len() as u32, Ordering::Relaxed);
        self.started.store(now_ns.max(1), Ordering::Release);
    }

    /// The current request's response head, status `code`, was queued to be sent.
    pub(crate) fn head_sent(&self, code: u16) {
        self.head.store(u32::from(code / 100).clamp(1, 5), Ordering::Relaxed);
    }

    /// The request ended (its END_REQUEST queued, or it was otherwise ended): counted
    /// served, and how long it ran, which is returned.
    pub(crate) fn end(&self) -> Duration {
        let durations = match BOARD.get() {
            Some(Some(b)) => Some(b.durations),
            _ => None,
        };
        self.end_at(crate::sys::monotonic_ns(), durations)
    }

    fn end_at(&self, now_ns: u64, durations: Option<&Durations>) -> Duration {
        let started = self.started.load(Ordering::Relaxed);
        let took = if started == 0 { 0 } else { now_ns.saturating_sub(started) };
        if let (Some(d), 1..) = (durations, started) {
            d.record(took);
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        self.started.store(0, Ordering::Release);
        Duration::from_nanos(took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board in this process's memory, as the bridge lays it out for `threads`.
    fn board(threads: usize) -> (Board, &'static [AtomicU64]) {
        let len = (HEADER_BYTES + threads * SLOT_BYTES + DURATIONS_BYTES).next_multiple_of(4096);
        let words: &'static [AtomicU64] = Box::leak((0..len / 8).map(|_| AtomicU64::new(0)).collect());
        // SAFETY: leaked (lives forever), 8-aligned, only accessed atomically.
        (unsafe { Board::at(words.as_ptr().cast_mut().cast(), len) }, words)
    }

    /// What the bridge reads of slot `i`: (served, started, line when consistent).
    fn read(words: &[AtomicU64], i: usize) -> (u64, u64, Option<Vec<u8>>) {
        let base = (HEADER_BYTES + i * SLOT_BYTES) / 8;
        let started = words[base + 1].load(Ordering::Acquire);
        let len = (words[base + 2].load(Ordering::Relaxed) as u32).to_ne_bytes();
        let len = u32::from_ne_bytes(len) as usize;
        let line: Vec<u8> =
            (0..LINE_BYTES / 8).flat_map(|w| words[base + 3 + w].load(Ordering::Relaxed).to_ne_bytes()).collect();
        let again = words[base + 1].load(Ordering::Acquire);
        let line = (started != 0 && started == again).then(|| line[..len].to_vec());
        (words[base].load(Ordering::Relaxed), started, line)
    }

    #[test]
    fn the_layout_is_the_specs() {
        let (b, words) = board(3);
        assert_eq!(b.slots.len(), (4096 - HEADER_BYTES) / SLOT_BYTES, "every whole slot of the rounded size");
        let slot = b.claim_slot().expect("slot 0");
        let second = b.claim_slot().expect("slot 1");
        // threads: the u32 at offset 4 of the header.
        assert_eq!(words[0].load(Ordering::Relaxed).to_ne_bytes()[4..8], 2u32.to_ne_bytes());
        slot.begin(b"GET /x?y=1", 5_000);
        assert_eq!(read(words, 0), (0, 5_000, Some(b"GET /x?y=1".to_vec())));
        slot.end();
        assert_eq!(read(words, 0), (1, 0, None));
        second.begin(b"POST /upload", 0);
        assert_eq!(read(words, 1).1, 1, "a running request's start is never 0");
        second.end();
        slot.begin(b"GET /next", 7);
        slot.end();
        assert_eq!((read(words, 0).0, read(words, 1).0), (2, 1), "each thread counts its own");
    }

    #[test]
    fn a_slot_says_whether_its_requests_head_went_out() {
        let (b, words) = board(1);
        let slot = b.claim_slot().expect("slot");
        // head: the u32 after line_len, at byte 20 of the slot (the high half of word 2).
        let head = || {
            let word = words[HEADER_BYTES / 8 + 2].load(Ordering::Relaxed).to_ne_bytes();
            u32::from_ne_bytes(word[4..8].try_into().expect("4 bytes"))
        };
        slot.begin(b"GET /", 1);
        assert_eq!(head(), 0);
        slot.head_sent(404);
        assert_eq!(head(), 4);
        slot.end();
        slot.begin(b"GET /again", 2);
        assert_eq!(head(), 0, "each request starts with no head sent");
    }

    #[test]
    fn how_long_each_request_ran_is_counted_at_the_end_of_the_mapping() {
        let (b, words) = board(1);
        let slot = b.claim_slot().expect("slot");
        // 0.5 ms, 3 ms and 40 s: the first bucket (up to 1 ms), the third (2.5 to 5 ms),
        // and the one above 30 s.
        for (start, ran) in [(1_000, 500_000), (10, 3_000_000), (5, 40_000_000_000)] {
            slot.begin(b"GET /", start);
            slot.end_at(start + ran, Some(b.durations));
        }
        // Ended without having begun (no app ran): served, not timed.
        slot.end_at(99, Some(b.durations));
        let at = words.len() - DURATIONS_BYTES / 8;
        let counts: Vec<u64> = (0..15).map(|i| words[at + i].load(Ordering::Relaxed)).collect();
        assert_eq!(counts, [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(words[at + 15].load(Ordering::Relaxed), 500_000 + 3_000_000 + 40_000_000_000, "their sum, ns");
        assert_eq!(read(words, 0).0, 4);
    }

    #[test]
    fn a_long_line_is_cut_and_a_shorter_one_replaces_it() {
        let (b, words) = board(1);
        let slot = b.claim_slot().expect("slot");
        let long = [b"GET /".as_slice(), &[b'a'; 400]].concat();
        slot.begin(&long, 9);
        assert_eq!(read(words, 0).2, Some(long[..LINE_BYTES].to_vec()));
        slot.end();
        slot.begin(b"GET /b", 10);
        assert_eq!(read(words, 0).2, Some(b"GET /b".to_vec()));
    }

    /// The header's u32 at byte `offset`, as the bridge reads it.
    fn header_u32(words: &[AtomicU64], offset: usize) -> u32 {
        let word = words[offset / 8].load(Ordering::Acquire).to_ne_bytes();
        let at = offset % 8;
        u32::from_ne_bytes(word[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn accepting_counts_each_thread_until_it_leaves_for_good() {
        let (b, words) = board(2);
        let first = Accepting::enter(Some(b.header));
        let second = Accepting::enter(Some(b.header));
        // accepting: the u32 at offset 8; drain and threads untouched.
        assert_eq!((header_u32(words, 8), header_u32(words, 0), header_u32(words, 4)), (2, 0, 0));
        drop(first);
        assert_eq!(header_u32(words, 8), 1);
        drop(second);
        assert_eq!(header_u32(words, 8), 0, "every thread left its accept loop");
        drop(Accepting::enter(None));
        assert_eq!(header_u32(words, 8), 0, "without a scoreboard nothing is counted");
    }

    #[test]
    fn responses_are_counted_by_status_class() {
        let (b, words) = board(1);
        for code in [100, 200, 204, 200, 302, 404, 500, 503, 599, 0, 99, 600, 999] {
            b.count_response(code);
        }
        // The u64s at offsets 16, 24, 32, 40, 48; reserved words stay 0.
        let classes: Vec<u64> = (2..7).map(|w| words[w].load(Ordering::Relaxed)).collect();
        assert_eq!(classes, [1, 3, 1, 1, 3], "an out-of-range status counts in no class");
        assert_eq!((words[1].load(Ordering::Relaxed), words[7].load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn an_asgi_worker_lends_a_slot_per_request_in_flight() {
        let (b, words) = board(3);
        let mut pool = SlotPool::EMPTY;
        pool.claim(&b, 3);
        assert_eq!(header_u32(words, 4), 3, "threads: its concurrency");
        let (first, second) = (pool.lend(), pool.lend());
        first.expect("slot 0").begin(b"GET /a", 5);
        second.expect("slot 1").begin(b"GET /b", 6);
        assert_eq!((read(words, 0).2, read(words, 1).2), (Some(b"GET /a".to_vec()), Some(b"GET /b".to_vec())));
        pool.give_back(first);
        assert_eq!(read(words, 0), (1, 0, None), "served, idle");
        assert!(std::ptr::eq(pool.lend().expect("slot 0 again"), first.expect("slot 0")));
        assert!(pool.lend().is_some() && pool.lend().is_none(), "three slots, then none");
        pool.give_back(None);
        assert_eq!(read(words, 0).0, 2, "a request without a slot counts in slot 0");
        b.header.timeouts.fetch_add(1, Ordering::Relaxed);
        assert_eq!((header_u32(words, 12), header_u32(words, 8)), (1, 0), "timeouts: the u32 at offset 12");
        b.header.moved.fetch_add(2, Ordering::Relaxed);
        assert_eq!(words[7].load(Ordering::Relaxed), 2, "moved: the u64 at offset 56");
    }

    #[test]
    fn the_bridges_drain_word_and_the_slots_run_out() {
        let (b, words) = board(1);
        assert_eq!(b.header.drain.load(Ordering::Acquire), 0);
        // The bridge stores 1 in the u32 at offset 0.
        let mut first = words[0].load(Ordering::Relaxed).to_ne_bytes();
        first[..4].copy_from_slice(&1u32.to_ne_bytes());
        words[0].store(u64::from_ne_bytes(first), Ordering::Release);
        assert_eq!(b.header.drain.load(Ordering::Acquire), 1);
        let n = b.slots.len();
        for _ in 0..n {
            assert!(b.claim_slot().is_some());
        }
        assert!(b.claim_slot().is_none(), "more threads than slots: the extra ones go without");
        assert_eq!(b.header.threads.load(Ordering::Acquire), n as u32);
    }
}

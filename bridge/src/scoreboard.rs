//! The scoreboard shared with one direct worker (docs/direct.md): the worker accepts the web
//! server's connections itself, so the bridge learns what it serves from this memfd, which
//! the worker writes and the bridge reads (the manager's tick, the status page through the
//! dispatcher). Layout (the worker's side mirrors it, workers/src): a 64-byte header —
//! `drain: u32` at 0 (the bridge's only word), then the worker's: `threads: u32` at 4,
//! `accepting: u32` at 8 (threads that may still accept a connection), `timeouts: u32` at
//! 12 (requests an ASGI worker ended for request-timeout itself), responses by status
//! class 1xx..5xx as five u64 at 16..56, `moved: u64` at 56 (kept connections it moved to
//! the pool's relay to even out the processes' queues) — then one 256-byte slot per
//! thread (an ASGI worker: per request in flight, up to `concurrency`): `served: u64`,
//! `started: u64` (CLOCK_MONOTONIC ns, 0 when idle), `line_len: u32`, `head: u32` (the
//! current request's response head: 0 not sent, 1-5 its status class, u32::MAX not told),
//! and 232 bytes of `METHOD URI` as 29 u64 words (the native worker's led by its own
//! request id, `<pid>-<n> METHOD URI`). The last 128 bytes of the mapping: how
//! long the worker's requests ran (the app's start to END_REQUEST), 15 u64 counts in the
//! buckets of status/latency.rs, then their sum in ns.
use crate::shared_memory::{SharedMemory, SharedMemoryError};
use std::num::NonZeroUsize;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const HEADER: usize = 64;
const ACCEPTING: usize = 8;
const TIMEOUTS: usize = 12;
const RESPONSES: usize = 16;
const MOVED: usize = 56;
const SLOT: usize = 256;
const LINE_OFFSET: usize = 24;
/// The durations' bytes, at the end of the mapping.
const DURATIONS: usize = 128;
/// A slot's `head` when the worker does not say whether the response head went out (an
/// ASGI worker's requests).
pub(crate) const HEAD_UNTRACKED: u32 = u32::MAX;
/// Bytes of a slot's `METHOD URI`.
pub(crate) const LINE_BYTES: usize = SLOT - LINE_OFFSET;
const LINE_WORDS: usize = LINE_BYTES / 8;

/// One worker's scoreboard, mapped shared; the descriptor is what the worker inherits.
#[derive(Debug)]
pub(crate) struct Scoreboard {
    mem: SharedMemory,
    threads: u32,
}

/// One thread's slot as read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ThreadSnapshot {
    /// Requests this thread has finished.
    pub served: u64,
    /// CLOCK_MONOTONIC nanoseconds at which its current request began; 0: idle.
    pub started: u64,
    /// The current request's `METHOD URI`, perhaps led by the worker's id `<pid>-<n>`
    /// (empty when idle, or when the worker was rewriting it while it was read: the next
    /// read gets it).
    pub line: Vec<u8>,
}

/// The bytes a scoreboard for `threads` threads takes: the header, a slot per thread and
/// the durations, rounded up to whole pages.
pub(crate) fn size_for(threads: u32) -> usize {
    (HEADER + threads as usize * SLOT + DURATIONS).div_ceil(4096) * 4096
}

impl Scoreboard {
    /// A zeroed scoreboard for `threads` threads (the spawn dups it onto the worker's fd 4).
    pub(crate) fn new(threads: u32) -> Result<Self, SharedMemoryError> {
        // Never 0: the header alone rounds up to a page.
        let len = NonZeroUsize::new(size_for(threads)).unwrap_or(NonZeroUsize::MIN);
        Ok(Self { mem: SharedMemory::new(c"fcgibridge-scoreboard", len)?, threads })
    }

    /// The descriptor the worker inherits (as `FCGIBRIDGE_SCOREBOARD_FD`).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.mem.raw_fd()
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= self.mem.len() && offset.is_multiple_of(4));
        // SAFETY: in bounds and aligned (the mapping is page-aligned); the memory lives as
        // long as `self` and is only ever accessed atomically.
        unsafe { &*self.mem.base().as_ptr().add(offset).cast::<AtomicU32>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset + 8 <= self.mem.len() && offset.is_multiple_of(8));
        // SAFETY: as in `u32_at`.
        unsafe { &*self.mem.base().as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Retire the worker: it accepts nothing more, finishes what it runs and exits 0.
    pub(crate) fn set_drain(&self) {
        self.u32_at(0).store(1, Ordering::Release);
    }

    /// The bridge stops: as [`Self::set_drain`], but the worker first serves the
    /// connections already queued on the socket (no other worker will), for 2 s at most.
    pub(crate) fn set_stop(&self) {
        self.u32_at(0).store(2, Ordering::Release);
    }

    /// How many of the worker's threads may still accept a connection: after `set_drain`,
    /// 0 means it takes no new one (it may still finish requests).
    pub(crate) fn accepting(&self) -> u32 {
        self.u32_at(ACCEPTING).load(Ordering::Acquire)
    }

    /// Requests the worker ended for request-timeout itself (an ASGI worker cancels the
    /// request's task and goes on).
    pub(crate) fn timeouts(&self) -> u32 {
        self.u32_at(TIMEOUTS).load(Ordering::Relaxed)
    }

    /// Responses the worker sent, by status class (1xx, 2xx, 3xx, 4xx, 5xx).
    pub(crate) fn responses(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.u64_at(RESPONSES + i * 8).load(Ordering::Relaxed))
    }

    /// Kept connections the worker moved to the pool's relay for the balance, so far.
    pub(crate) fn moved(&self) -> u64 {
        self.u64_at(MOVED).load(Ordering::Relaxed)
    }

    /// How long the worker's requests ran, so far.
    pub(crate) fn durations(&self) -> crate::status::latency::Histogram {
        use crate::status::latency::{Histogram, BUCKETS};
        let at = self.mem.len() - DURATIONS;
        let counts = std::array::from_fn(|i| self.u64_at(at + i * 8).load(Ordering::Relaxed));
        Histogram::from_parts(counts, self.u64_at(at + BUCKETS * 8).load(Ordering::Relaxed))
    }

    /// Every thread's slot now. A line is kept only when `started` read the same, and
    /// non-zero, before and after it was copied: otherwise it may be half another request's.
    pub(crate) fn snapshot(&self) -> Vec<ThreadSnapshot> {
        (0..self.threads as usize).map(|i| self.thread(HEADER + i * SLOT)).collect()
    }

    /// After the worker died: the requests its threads were running then, each as when it
    /// began (CLOCK_MONOTONIC ns) and its response head (0 not sent, 1-5 its class sent,
    /// [`HEAD_UNTRACKED`]: the worker did not say).
    pub(crate) fn unfinished(&self) -> Vec<(u64, u32)> {
        (0..self.threads as usize)
            .map(|i| HEADER + i * SLOT)
            .map(|at| (self.u64_at(at + 8).load(Ordering::Acquire), self.u32_at(at + 20).load(Ordering::Relaxed)))
            .filter(|&(started, _)| started != 0)
            .collect()
    }

    fn thread(&self, at: usize) -> ThreadSnapshot {
        let served = self.u64_at(at).load(Ordering::Acquire);
        let started = self.u64_at(at + 8).load(Ordering::Acquire);
        if started == 0 {
            return ThreadSnapshot { served, started, line: Vec::new() };
        }
        let len = (self.u32_at(at + 16).load(Ordering::Relaxed) as usize).min(LINE_BYTES);
        let mut line = Vec::with_capacity(LINE_WORDS * 8);
        for w in 0..LINE_WORDS {
            line.extend_from_slice(&self.u64_at(at + LINE_OFFSET + w * 8).load(Ordering::Relaxed).to_ne_bytes());
        }
        line.truncate(len);
        // The copy is done before `started` is read again (a seqlock's read side).
        std::sync::atomic::fence(Ordering::Acquire);
        if self.u64_at(at + 8).load(Ordering::Acquire) != started {
            line.clear();
        }
        ThreadSnapshot { served, started, line }
    }

    /// What the worker does (workers/src), for tests: thread `i` begins running `line`.
    #[cfg(test)]
    pub(crate) fn begin(&self, i: usize, line: &[u8], started: u64) {
        let at = HEADER + i * SLOT;
        let mut words = [0u8; LINE_WORDS * 8];
        let n = line.len().min(LINE_BYTES);
        words[..n].copy_from_slice(&line[..n]);
        for (w, chunk) in words.chunks(8).enumerate() {
            let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
            self.u64_at(at + LINE_OFFSET + w * 8).store(word, Ordering::Relaxed);
        }
        self.u32_at(at + 16).store(n as u32, Ordering::Relaxed);
        self.u64_at(at + 8).store(started.max(1), Ordering::Release);
    }

    /// What the worker does, for tests: thread `i`'s response head, status class `class`
    /// (0: none yet), went out.
    #[cfg(test)]
    pub(crate) fn head(&self, i: usize, class: u32) {
        self.u32_at(HEADER + i * SLOT + 20).store(class, Ordering::Relaxed);
    }

    /// What the worker does, for tests: thread `i` finished its request.
    #[cfg(test)]
    pub(crate) fn end(&self, i: usize) {
        let at = HEADER + i * SLOT;
        self.u64_at(at).fetch_add(1, Ordering::Release);
        self.u64_at(at + 8).store(0, Ordering::Release);
    }

    /// What the worker does, for tests: `n` threads entered (or, negative, left) their
    /// accept loop.
    #[cfg(test)]
    pub(crate) fn add_accepting(&self, n: i32) {
        self.u32_at(ACCEPTING).fetch_add(n as u32, Ordering::Release);
    }

    /// What the worker does, for tests: a response of status `status` went out.
    #[cfg(test)]
    pub(crate) fn responded(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.u64_at(RESPONSES + class * 8).fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn drain_word(&self) -> u32 {
        self.u32_at(0).load(Ordering::Acquire)
    }
}

/// Now on the clock the worker stamps `started` with (CLOCK_MONOTONIC, as `Instant`).
pub(crate) fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_pages() {
        assert_eq!(size_for(1), 4096);
        assert_eq!(size_for(15), 4096);
        assert_eq!(size_for(16), 8192);
    }

    #[test]
    fn the_unfinished_requests_are_those_running_with_their_head() {
        let board = Scoreboard::new(3).unwrap();
        board.begin(0, b"GET /a", 40);
        board.head(0, 2);
        board.begin(1, b"GET /b", 41);
        board.begin(2, b"GET /c", 42);
        board.end(2);
        assert_eq!(board.unfinished(), vec![(40, 2), (41, 0)]);
    }

    #[test]
    fn a_snapshot_reads_what_the_worker_wrote() {
        let board = Scoreboard::new(3).unwrap();
        assert_eq!(board.snapshot(), vec![ThreadSnapshot::default(); 3]);
        board.begin(1, b"GET /slow?x=1", 42);
        board.end(0);
        board.end(0);
        let snap = board.snapshot();
        assert_eq!(snap[0], ThreadSnapshot { served: 2, started: 0, line: Vec::new() });
        assert_eq!(snap[1], ThreadSnapshot { served: 0, started: 42, line: b"GET /slow?x=1".to_vec() });
        board.end(1);
        assert_eq!(board.snapshot()[1], ThreadSnapshot { served: 1, started: 0, line: Vec::new() });
    }

    #[test]
    fn a_long_line_is_cut_at_the_slot() {
        let board = Scoreboard::new(1).unwrap();
        let long = [b'a'; 500];
        board.begin(0, &long, 7);
        assert_eq!(board.snapshot()[0].line, vec![b'a'; LINE_BYTES]);
    }

    #[test]
    fn a_line_is_the_request_s_or_nothing_while_the_worker_writes() {
        // A writer thread switches between two requests as fast as it can; every line read
        // must be one of them whole, or empty.
        let board = std::sync::Arc::new(Scoreboard::new(1).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (board, stop) = (board.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    let line: &[u8] = if n.is_multiple_of(2) { b"GET /a" } else { b"POST /bbbbbbbbbbbbbbbbbbbb" };
                    board.begin(0, line, n);
                    board.end(0);
                    n += 1;
                }
            })
        };
        for _ in 0..20_000 {
            let t = &board.snapshot()[0];
            if t.line.is_empty() {
                continue;
            }
            let expected: &[u8] = if t.started.is_multiple_of(2) { b"GET /a" } else { b"POST /bbbbbbbbbbbbbbbbbbbb" };
            assert_eq!(t.line, expected, "line of request {}", t.started);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[test]
    fn the_durations_are_the_mappings_last_128_bytes() {
        let board = Scoreboard::new(4).unwrap();
        assert_eq!(board.durations().count(), 0);
        // As the worker writes them (workers/src/scoreboard.rs): 15 counts, then the sum.
        let at = board.mem.len() - DURATIONS;
        for (bucket, n) in [(0, 3), (4, 1), (14, 2)] {
            board.u64_at(at + bucket * 8).store(n, Ordering::Relaxed);
        }
        board.u64_at(at + 15 * 8).store(65_020_000_000, Ordering::Relaxed);
        let d = board.durations();
        assert_eq!((d.count(), d.sum_seconds()), (6, 65.02));
        assert_eq!(d.cumulative()[0..5], [3, 3, 3, 3, 4], "up to 1 ms, then one up to 25 ms");
        // The slots stop before them, whatever the thread count.
        for threads in [1, 15, 16, 100] {
            assert!(HEADER + threads * SLOT + DURATIONS <= size_for(threads as u32), "{threads} threads");
        }
    }

    #[test]
    fn drain_is_the_bridge_s_word() {
        let board = Scoreboard::new(2).unwrap();
        assert_eq!(board.drain_word(), 0);
        board.set_drain();
        assert_eq!(board.drain_word(), 1);
    }

    #[test]
    fn the_header_carries_accepting_threads_and_responses_by_class() {
        let board = Scoreboard::new(2).unwrap();
        assert_eq!((board.accepting(), board.responses()), (0, [0; 5]));
        board.add_accepting(2);
        board.add_accepting(-1);
        for status in [200, 204, 302, 404, 500, 502, 101] {
            board.responded(status);
        }
        assert_eq!((board.accepting(), board.responses()), (1, [1, 2, 1, 1, 2]));
        // The slots start past the header: a thread's numbers do not touch it.
        board.begin(0, b"GET /", 5);
        board.end(0);
        assert_eq!(board.responses(), [1, 2, 1, 1, 2]);
        // The worker's count of moved connections, past the responses.
        assert_eq!(board.moved(), 0);
        board.u64_at(MOVED).fetch_add(3, Ordering::Relaxed);
        assert_eq!((board.moved(), board.responses()), (3, [1, 2, 1, 1, 2]));
    }

    #[test]
    fn the_clock_is_instant_s() {
        let a = monotonic_now_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(monotonic_now_ns() >= a + 5_000_000);
    }
}

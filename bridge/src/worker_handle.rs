//! A running worker process as the connections to it know it: its pool, pid and socket,
//! whether it is alive, and its claim page. The supervisor makes these and the backend
//! holds them; this module depends on neither, so that the two do not import each other.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the manager asks of a worker process.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WorkerCtl {
    /// SIGUSR2: the native worker prints every thread's Python stack to stderr.
    DumpStacks,
    /// SIGTERM, then SIGKILL after `grace`.
    Term {
        grace: Duration,
    },
    Kill,
}

/// One running worker process, as the slots connected to it know it.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    pub pool: Arc<str>,
    pub pid: u32,
    /// Its listening socket (fd 0 in the worker).
    pub socket: PathBuf,
    alive: AtomicBool,
    /// The page deciding piped requests (claim.rs); None: nothing is piped to it.
    pub claims: Option<Arc<crate::claim::ClaimPage>>,
    /// Its pool's budget of log lines (logging/app_lines.rs), shared with its output pipes.
    pub app_lines: Arc<crate::logging::app_lines::LineBudget>,
    /// While its ready-check runs, the STDERR lines of its requests are held here until
    /// the start's outcome decides how they are logged (supervise/worker.rs).
    held_stderr: Mutex<Option<HeldLines>>,
}

/// Bytes of STDERR lines held whole while a worker is checked (a long Django traceback
/// is some 100 KB); past them only the last [`HOLD_TAIL`] lines are kept.
const HOLD_BYTES: usize = 1 << 20;
/// Lines kept from the end of output past [`HOLD_BYTES`]: a traceback's exception is last.
const HOLD_TAIL: usize = 100;

/// The lines held while a worker is checked: all of them in order, or, past
/// [`HOLD_BYTES`], their start and their last [`HOLD_TAIL`] lines with the count of those
/// left out between.
#[derive(Debug, Default)]
struct HeldLines {
    head: Vec<String>,
    bytes: usize,
    tail: std::collections::VecDeque<String>,
    left_out: usize,
}

impl HeldLines {
    fn push(&mut self, line: &str) {
        if self.tail.is_empty() && self.bytes + line.len() <= HOLD_BYTES {
            self.bytes += line.len();
            self.head.push(line.to_owned());
            return;
        }
        if self.tail.len() == HOLD_TAIL {
            self.tail.pop_front();
            self.left_out += 1;
        }
        self.tail.push_back(line.to_owned());
    }

    fn into_lines(self) -> Vec<String> {
        let mut lines = self.head;
        if self.left_out > 0 {
            lines.push(format!("[… {} lines of the ready-check's output left out …]", self.left_out));
        }
        lines.extend(self.tail);
        lines
    }
}

impl WorkerHandle {
    /// A handle on a worker; only the task that owns the process signals it (no reused pid
    /// is hit), asked by the pool manager ([`WorkerCtl`]).
    pub(crate) fn new(pool: Arc<str>, pid: u32, socket: PathBuf) -> Self {
        Self {
            pool,
            pid,
            socket,
            alive: AtomicBool::new(true),
            claims: None,
            app_lines: Arc::default(),
            held_stderr: Mutex::default(),
        }
    }

    /// The same, logging within its pool's budget.
    pub(crate) fn with_app_lines(mut self, budget: Arc<crate::logging::app_lines::LineBudget>) -> Self {
        self.app_lines = budget;
        self
    }

    /// The same, with the claim page the worker inherited.
    pub(crate) fn with_claims(mut self, claims: Option<Arc<crate::claim::ClaimPage>>) -> Self {
        self.claims = claims;
        self
    }

    /// False once the worker was killed or found dead.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Take the worker as dead (its connections are not reused).
    pub(crate) fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// From now on hold the STDERR lines of its requests (see [`Self::hold`]).
    pub(crate) fn hold_stderr(&self) {
        *self.held_stderr.lock().unwrap_or_else(|e| e.into_inner()) = Some(HeldLines::default());
    }

    /// Hold the lines of a STDERR record, if they are being held; false: log them. All of
    /// them are held, in order (a bounded part of very long output: [`HeldLines`]), so that
    /// a traceback is logged whole and its exception, its last line, is never lost.
    pub(crate) fn hold(&self, text: &str) -> bool {
        let mut held = self.held_stderr.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lines) = held.as_mut() else { return false };
        text.lines().filter(|l| !l.is_empty()).for_each(|l| lines.push(l));
        true
    }

    /// Stop holding; the lines held so far.
    pub(crate) fn release_stderr(&self) -> Vec<String> {
        let held = self.held_stderr.lock().unwrap_or_else(|e| e.into_inner()).take();
        held.map(HeldLines::into_lines).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checked_workers_stderr_is_held_whole_and_in_order() {
        let handle = WorkerHandle::new("p".into(), 1, PathBuf::new());
        assert!(!handle.hold("not held yet\n"));
        handle.hold_stderr();
        // More lines than the bridge ever held before (400): a Django traceback with
        // chained exceptions and Python 3.11's caret lines.
        let traceback: Vec<String> = (0..1000).map(|i| format!("  line {i}")).collect();
        assert!(handle.hold(&(traceback.join("\n") + "\nSyntaxError: invalid syntax\n")));
        let held = handle.release_stderr();
        assert_eq!(held.len(), 1001);
        assert_eq!(held[..1000], traceback[..]);
        assert_eq!(held.last().map(String::as_str), Some("SyntaxError: invalid syntax"));
        assert!(!handle.hold("logged again\n"));
    }

    #[test]
    fn past_the_byte_bound_the_start_and_the_last_lines_are_kept() {
        let handle = WorkerHandle::new("p".into(), 1, PathBuf::new());
        handle.hold_stderr();
        let line = "x".repeat(1000);
        let n = HOLD_BYTES / 1000 + 500;
        for _ in 0..n {
            handle.hold(&line);
        }
        handle.hold("ValueError: the last line");
        let held = handle.release_stderr();
        let head = HOLD_BYTES / 1000;
        assert_eq!(held.len(), head + 1 + HOLD_TAIL);
        assert_eq!(
            held[head],
            format!("[… {} lines of the ready-check's output left out …]", n + 1 - head - HOLD_TAIL)
        );
        assert_eq!(held.last().map(String::as_str), Some("ValueError: the last line"));
    }
}

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
    held_stderr: Mutex<Option<Vec<String>>>,
}

/// STDERR lines held at most while a worker is checked; beyond, they are logged.
const HOLD_MAX: usize = 400;

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
        *self.held_stderr.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Hold the lines of a STDERR record, if they are being held; false: log them.
    pub(crate) fn hold(&self, text: &str) -> bool {
        let mut held = self.held_stderr.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(lines) if lines.len() < HOLD_MAX => {
                lines.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
                true
            }
            _ => false,
        }
    }

    /// Stop holding; the lines held so far.
    pub(crate) fn release_stderr(&self) -> Vec<String> {
        self.held_stderr.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default()
    }
}

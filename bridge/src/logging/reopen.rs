//! SIGUSR1: reopen log files (after logrotate moved them). A generation counter that each
//! file writer compares before writing, so no writer needs to be reachable from the
//! signal handler.
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Ask every log file writer to reopen its file before its next line.
pub(crate) fn request() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The current generation; a writer that saw another one reopens.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

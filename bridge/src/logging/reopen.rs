//! SIGUSR1: reopen log files (after logrotate moved them). A generation counter that each
//! file writer compares before writing, so no writer needs to be reachable from the
//! signal handler. One per daemon (made by [`super::init`], kept in the registry), shared
//! by the daemon's log file and the access log.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The log files' reopen generation; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reopen(Arc<AtomicU64>);

impl Reopen {
    /// Ask every log file writer to reopen its file before its next line.
    pub(crate) fn request(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// The current generation; a writer that saw another one reopens.
    pub(crate) fn generation(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

//! The claim page shared with one worker process: one atomic word per worker connection and request id
//! that decides, without a message, whether a request piped behind the current one
//! (dispatch/mod.rs) is run by the worker or taken back by the bridge.
//!
//! A cell holds `tag << 2 | state`. The bridge stores QUEUED with a fresh tag before it
//! writes the piped request (whose `FCGIBRIDGE_CLAIM` param names the cell and the tag);
//! the worker swaps QUEUED for STARTED before its app runs the request
//! (workers/src/claim.rs); the bridge swaps QUEUED for WITHDRAWN to take it back. The
//! first swap decides; a stale tag never matches.
use crate::shared_memory::{SharedMemory, SharedMemoryError};
use std::num::NonZeroUsize;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

const QUEUED: u32 = 1;
const WITHDRAWN: u32 = 3;
/// Bytes of the page (the worker maps the same size).
const PAGE_BYTES: usize = 4096;
const PAGE_LEN: NonZeroUsize = match NonZeroUsize::new(PAGE_BYTES) {
    Some(n) => n,
    None => panic!("the page has a size"),
};
/// Cells in a page: connections beyond it are never piped onto.
pub(crate) const CELLS: u32 = (PAGE_BYTES / 4) as u32;
/// Tags use the bits above the state.
const TAG_MASK: u32 = u32::MAX >> 2;

/// One worker's page, mapped shared; the descriptor is what the worker inherits.
#[derive(Debug)]
pub(crate) struct ClaimPage(SharedMemory);

impl ClaimPage {
    /// A zeroed page the worker inherits.
    pub(crate) fn new() -> Result<Self, SharedMemoryError> {
        SharedMemory::new(c"fcgibridge-claims", PAGE_LEN).map(Self)
    }

    /// The descriptor the worker inherits (as `FCGIBRIDGE_CLAIM_FD`).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.0.raw_fd()
    }

    fn cell(&self, cell: u32) -> Option<&AtomicU32> {
        // SAFETY: the mapping holds CELLS aligned atomics that live as long as `self`.
        (cell < CELLS).then(|| unsafe { &*self.0.base().as_ptr().cast::<AtomicU32>().add(cell as usize) })
    }

    /// Mark `cell` queued under `tag` (before the request is written).
    pub(crate) fn queue(&self, cell: u32, tag: u32) {
        if let Some(c) = self.cell(cell) {
            c.store(((tag & TAG_MASK) << 2) | QUEUED, Ordering::Release);
        }
    }

    /// Take the request back: true when the worker had not started it (it never will).
    pub(crate) fn withdraw(&self, cell: u32, tag: u32) -> bool {
        let Some(c) = self.cell(cell) else { return false };
        let tag = (tag & TAG_MASK) << 2;
        c.compare_exchange(tag | QUEUED, tag | WITHDRAWN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// What the worker does (workers/src/claim.rs), for tests of the race.
    #[cfg(test)]
    pub(crate) fn start(&self, cell: u32, tag: u32) -> bool {
        let Some(c) = self.cell(cell) else { return false };
        let tag = (tag & TAG_MASK) << 2;
        c.compare_exchange(tag | QUEUED, tag | 2, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// Whether requests are piped to `pool`'s workers: `pipeline` on, and the bridge's own
/// WSGI worker started directly ([`never_piped`]).
pub(crate) fn pipelines(pool: &crate::config::Pool) -> bool {
    pool.pipeline && never_piped(pool).is_none()
}

/// Why `pool`'s workers are not piped to whatever its `pipeline` says: a preloaded worker is
/// forked by its template, which has no claim page; `command:` programs and the ASGI
/// worker serve one request per connection; an `interface: auto` worker says which it runs
/// only once started, after its pool's pipelining is decided.
pub(crate) fn never_piped(pool: &crate::config::Pool) -> Option<&'static str> {
    use crate::config::interface::Interface;
    if matches!(pool.app, crate::config::App::Command(_)) {
        return Some("a command: pool");
    }
    if pool.isolation.preload {
        return Some("a preloaded pool");
    }
    match pool.interface.kind {
        Interface::Wsgi => None,
        Interface::Asgi => Some("an ASGI pool"),
        Interface::Auto => Some("an interface: auto pool (WSGI or ASGI is known only once its worker starts)"),
    }
}

/// The next tag for a piped request (never 0: tag 0 means "no claim").
pub(crate) fn next_tag(counter: &mut u32) -> u32 {
    *counter = (counter.wrapping_add(1)) & TAG_MASK;
    if *counter == 0 {
        *counter = 1;
    }
    *counter
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_page_cannot_be_resized_by_whoever_holds_its_descriptor() {
        let page = ClaimPage::new().expect("page");
        for len in [0, 2 * PAGE_BYTES as libc::off_t] {
            // SAFETY: the page's own descriptor, borrowed while `page` lives.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(page.raw_fd()) };
            let err = nix::unistd::ftruncate(fd, len).expect_err("sealed");
            assert_eq!(err, nix::errno::Errno::EPERM);
        }
        page.queue(CELLS - 1, 1);
        assert!(page.withdraw(CELLS - 1, 1), "still mapped whole");
    }

    #[test]
    fn exactly_one_side_wins_the_race() {
        let page = Arc::new(ClaimPage::new().expect("page"));
        for tag in 1..200u32 {
            page.queue(3, tag);
            let p = page.clone();
            let worker = std::thread::spawn(move || p.start(3, tag));
            let bridge = page.withdraw(3, tag);
            let started = worker.join().expect("thread");
            assert!(bridge != started, "tag {tag}: withdrawn {bridge}, started {started}");
        }
        assert!(!page.withdraw(CELLS, 1));
    }

    #[test]
    fn tags_skip_zero() {
        let mut c = TAG_MASK - 1;
        assert_eq!(next_tag(&mut c), TAG_MASK);
        assert_eq!(next_tag(&mut c), 1);
    }
}

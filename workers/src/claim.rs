//! The claim page: one atomic word per connection and request id, shared with the bridge, that decides
//! whether a request the bridge piped behind the current one is run here or taken back.
//!
//! The bridge writes `tag << 2 | QUEUED` into the connection's cell before it writes the
//! request, and puts `cell.tag` in the request's `FCGIBRIDGE_CLAIM` param. Before the app
//! runs the request, the worker moves the cell from QUEUED to STARTED; the bridge, to take
//! it back, from QUEUED to WITHDRAWN. Whoever wins the compare-and-swap decides, so no
//! message is needed while the serving thread is inside the app (docs/architecture.md).
use nix::sys::mman::{mmap, MapFlags, ProtFlags};
use std::num::NonZeroUsize;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The state in the low two bits of a cell.
const QUEUED: u32 = 1;
const STARTED: u32 = 2;
/// Bytes of the page the bridge maps (a multiple of 4).
const PAGE_BYTES: usize = 4096;

/// The mapped page (its address), once mapped.
struct Page(&'static [AtomicU32]);

static PAGE: OnceLock<Option<Page>> = OnceLock::new();

/// Map the page the bridge passed as `FCGIBRIDGE_CLAIM_FD` (once; later calls do nothing).
/// Without it (a preloaded worker, an old bridge) no request carries a claim.
pub(crate) fn init() {
    PAGE.get_or_init(|| {
        let fd: RawFd = std::env::var("FCGIBRIDGE_CLAIM_FD").ok()?.trim().parse().ok()?;
        // SAFETY: the descriptor is ours, inherited for this and used by nothing else;
        // dropping it after mapping closes it (the mapping keeps the memory).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = NonZeroUsize::new(PAGE_BYTES).expect("a page is not empty");
        // SAFETY: a fresh shared mapping of the bridge's page, not aliased by any Rust object.
        let mapped =
            unsafe { mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &fd, 0) };
        let p = match mapped {
            Ok(p) => p,
            Err(e) => {
                eprintln!("fcgibridge worker: cannot map the claim page: {e}");
                return None;
            }
        };
        // SAFETY: PAGE_BYTES of shared memory, never unmapped, aligned to a page; AtomicU32
        // has the layout of u32 and the bridge only touches it atomically too.
        let cells = unsafe { std::slice::from_raw_parts(p.as_ptr().cast::<AtomicU32>(), PAGE_BYTES / 4) };
        Some(Page(cells))
    });
}

/// A page in this process's memory instead of the bridge's (unit tests of conn.rs).
#[cfg(test)]
pub(crate) fn test_cells() -> &'static [AtomicU32] {
    let page = PAGE.get_or_init(|| {
        let cells: Vec<AtomicU32> = (0..PAGE_BYTES / 4).map(|_| AtomicU32::new(0)).collect();
        Some(Page(Box::leak(cells.into_boxed_slice())))
    });
    match page {
        Some(p) => p.0,
        None => &[],
    }
}

/// What the bridge writes before it pipes a request (tests).
#[cfg(test)]
pub(crate) fn queued(tag: u32) -> u32 {
    (tag << 2) | QUEUED
}

/// A request's claim: its cell and tag, from `FCGIBRIDGE_CLAIM` (`cell.tag`, decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    cell: u32,
    tag: u32,
}

impl Claim {
    /// Parse the param's value; `None` for tag 0 (a request sent on a free connection).
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(value).ok()?;
        let (cell, tag) = s.split_once('.')?;
        let claim = Self { cell: cell.parse().ok()?, tag: tag.parse().ok()? };
        (claim.tag != 0).then_some(claim)
    }

    /// Move the cell from QUEUED to STARTED: true when the app may run the request; false
    /// when the bridge took it back first (or there is no page to decide with).
    pub(crate) fn start(self) -> bool {
        let Some(Some(page)) = PAGE.get() else { return false };
        self.start_in(page.0)
    }

    fn start_in(self, cells: &[AtomicU32]) -> bool {
        let Some(cell) = cells.get(self.cell as usize) else { return false };
        let queued = (self.tag << 2) | QUEUED;
        cell.compare_exchange(queued, (self.tag << 2) | STARTED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_compare_and_swap_decides() {
        let cells: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
        let c = Claim::parse(b"2.7").expect("claim");
        assert!(!c.start_in(&cells), "a cell the bridge never queued is not started");
        cells[2].store((7 << 2) | QUEUED, Ordering::Release);
        assert!(c.start_in(&cells));
        assert!(!c.start_in(&cells), "started once");
        // Withdrawn by the bridge (state 3): the worker loses.
        cells[2].store((8 << 2) | 3, Ordering::Release);
        assert!(!Claim::parse(b"2.8").expect("claim").start_in(&cells));
        // A stale tag never matches the cell's newer request.
        cells[2].store((9 << 2) | QUEUED, Ordering::Release);
        assert!(!c.start_in(&cells));
        assert_eq!(Claim::parse(b"0003.0000000000"), None);
        assert_eq!(Claim::parse(b"x"), None);
    }
}

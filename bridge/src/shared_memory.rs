//! Memory shared with one worker process (the claim page, a direct worker's scoreboard):
//! a zeroed memfd the worker inherits, sealed at its size, mapped here for as long as the
//! value lives. Only atomics are ever read or written through it, on both sides.
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// Why no shared memory could be made (said with what it was for).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SharedMemoryError {
    #[error("memfd_create: {0}")]
    Create(std::io::Error),
    #[error("ftruncate: {0}")]
    Size(std::io::Error),
    #[error("mmap: {0}")]
    Map(std::io::Error),
}

#[derive(Debug)]
pub(crate) struct SharedMemory {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: NonZeroUsize,
}

// SAFETY: the mapping is only ever accessed through atomics, and lives as long as the value.
unsafe impl Send for SharedMemory {}
// SAFETY: as above.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// `len` zeroed bytes in a memfd named `name` (close-on-exec: the spawn dups it onto
    /// the worker's descriptor), mapped shared.
    pub(crate) fn new(name: &std::ffi::CStr, len: NonZeroUsize) -> Result<Self, SharedMemoryError> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        let low = memfd_create(name, flags).map_err(|e| SharedMemoryError::Create(e.into()))?;
        // Above the descriptors a spawn places (0–4), so dup2 onto them never clobbers it.
        let high = fcntl(&low, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| SharedMemoryError::Create(e.into()))?;
        drop(low);
        // SAFETY: fcntl returned a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(high) };
        let size = libc::off_t::try_from(len.get())
            .map_err(|_| SharedMemoryError::Size(std::io::ErrorKind::InvalidInput.into()))?;
        nix::unistd::ftruncate(&fd, size).map_err(|e| SharedMemoryError::Size(e.into()))?;
        // Sealed at its size: a worker (or the app in it) that shrank the shared file would
        // make the bridge's next read a SIGBUS that kills the daemon.
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| SharedMemoryError::Size(e.into()))?;
        // SAFETY: a fresh shared mapping of the whole (zeroed) file at an address the
        // kernel picks, so no existing memory is affected.
        let p = unsafe { mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &fd, 0) }
            .map_err(|e| SharedMemoryError::Map(e.into()))?;
        Ok(Self { fd, base: p.cast::<u8>(), len })
    }

    /// The descriptor the worker inherits.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The start of the mapping (page-aligned), valid for [`Self::len`] bytes while `self` lives.
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; whoever holds a reference into
        // it holds `self` too.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len.get()) };
    }
}

//! The few system calls the worker makes itself (Linux).
//!
//! Declared here rather than through the `libc` crate to keep the worker's
//! dependency set (and the workspace lock file) as small as the skeleton's.
//! Every call is made with the GIL released by the caller.
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_ulong, c_void};

#[cfg(not(target_os = "linux"))]
compile_error!("fcgibridge-worker uses Linux system call constants");

const MSG_DONTWAIT: c_int = 0x40;
const MSG_NOSIGNAL: c_int = 0x4000;
const SOCK_CLOEXEC: c_int = 0o2_000_000;
const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_ulong = 9;

extern "C" {
    fn accept4(fd: c_int, addr: *mut c_void, len: *mut u32, flags: c_int) -> c_int;
    fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize;
    fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize;
    fn prctl(option: c_int, ...) -> c_int;
}

/// Accept one connection (close-on-exec), retrying EINTR and aborted handshakes.
pub(crate) fn accept(listen_fd: RawFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers are allowed by accept4(2).
        let fd = unsafe {
            accept4(
                listen_fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(4) /* EINTR */ | Some(103) /* ECONNABORTED */ | Some(71) /* EPROTO */ => continue,
            _ => return Err(err),
        }
    }
}

pub(crate) enum Recv {
    Data(usize),
    Eof,
    WouldBlock,
}

/// One recv(2) into `buf`; `nonblocking` uses MSG_DONTWAIT.
pub(crate) fn recv_into(
    fd: RawFd,
    buf: &mut [MaybeUninit<u8>],
    nonblocking: bool,
) -> io::Result<Recv> {
    let flags = if nonblocking { MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: the pointer and length describe writable memory we own.
        let n = unsafe { recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n > 0 {
            return Ok(Recv::Data(n as usize));
        }
        if n == 0 {
            return Ok(Recv::Eof);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(4) => continue,
            Some(11) => return Ok(Recv::WouldBlock),
            _ => return Err(err),
        }
    }
}

/// Send all of `data` (blocking; no SIGPIPE).
pub(crate) fn send_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: the pointer and length describe readable memory.
        let n = unsafe { send(fd, data.as_ptr().cast(), data.len(), MSG_NOSIGNAL) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(4) {
                continue;
            }
            return Err(err);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Ask the kernel to SIGKILL this process when the thread that forked it exits.
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes one unsigned long argument.
    let rc = unsafe { prctl(PR_SET_PDEATHSIG, SIGKILL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

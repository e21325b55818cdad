//! The few system calls the worker makes itself (Linux).
//!
//! Declared here rather than through the `libc` crate to keep the worker's
//! dependency set (and the workspace lock file) as small as the skeleton's.
//! Every blocking call is made with the GIL released by the caller; the
//! non-blocking ones (MSG_DONTWAIT) may be made with it held.
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
    fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
}

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: i16,
    revents: i16,
}

const POLLIN: i16 = 0x1;

/// Accept one connection (close-on-exec), retrying EINTR and aborted handshakes.
pub(crate) fn accept(listen_fd: RawFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers are allowed by accept4(2).
        let fd = unsafe { accept4(listen_fd, std::ptr::null_mut(), std::ptr::null_mut(), SOCK_CLOEXEC) };
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

/// One recv(2) into `buf`; `nonblocking` returns `WouldBlock` instead of waiting.
///
/// A blocking receive waits in poll(2), not in recv(2): a thread asleep in recv on a
/// unix socket is also woken each time the peer reads what this side sent (the
/// kernel's write-space wake-up does not say what it is for), which is once per
/// request when the bridge reads END_REQUEST — a wake-up and sleep for nothing.
/// poll(2) only wakes for input.
pub(crate) fn recv_into(fd: RawFd, buf: &mut [MaybeUninit<u8>], nonblocking: bool) -> io::Result<Recv> {
    loop {
        // SAFETY: the pointer and length describe writable memory we own.
        let n = unsafe { recv(fd, buf.as_mut_ptr().cast(), buf.len(), MSG_DONTWAIT) };
        if n > 0 {
            return Ok(Recv::Data(n as usize));
        }
        if n == 0 {
            return Ok(Recv::Eof);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(4) => continue,
            Some(11) if nonblocking => return Ok(Recv::WouldBlock),
            Some(11) => wait_readable(fd)?,
            _ => return Err(err),
        }
    }
}

/// Block until `fd` has input (or EOF, or an error, which the next recv reports).
pub(crate) fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut p = PollFd { fd, events: POLLIN, revents: 0 };
    loop {
        // SAFETY: one valid pollfd; no timeout.
        let rc = unsafe { poll(&mut p, 1, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(4) {
            return Err(err);
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

/// Send as much of `data` as the socket takes now (MSG_DONTWAIT; no SIGPIPE):
/// `Ok(0)` when it would block. Made with the GIL held, so it must never wait.
pub(crate) fn send_nonblocking(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe readable memory.
        let n = unsafe { send(fd, data.as_ptr().cast(), data.len(), MSG_NOSIGNAL | MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(4) => continue,
            Some(11) => return Ok(0),
            _ => return Err(err),
        }
    }
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

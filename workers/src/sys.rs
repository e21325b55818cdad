//! The few system calls the worker makes itself (Linux), through `nix` (the bridge's
//! own dependency, so the lock file gains nothing), and `libc` for the one receive into
//! uninitialised memory that `nix` has no form for.
//! Every blocking call is made with the GIL released by the caller; the
//! non-blocking ones (MSG_DONTWAIT) may be made with it held.
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt, MsgFlags, SockFlag};
use nix::sys::time::TimeVal;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

#[cfg(not(target_os = "linux"))]
compile_error!("fcgibridge-worker uses Linux system call constants");

/// Accept one connection (close-on-exec), retrying EINTR and aborted handshakes.
pub(crate) fn accept(listen_fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: the caller's listening socket (fd 0) stays open for the worker's life.
    let listener = unsafe { BorrowedFd::borrow_raw(listen_fd) };
    loop {
        match nix::sys::socket::accept4(listener, SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => return Ok(fd),
            Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) enum Recv {
    Data(usize),
    Eof,
    WouldBlock,
    /// No memory for the receive buffer (an address-space cap, `rlimit-as`): nothing read.
    NoMemory,
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
        // libc, not nix: nix's recv wants an initialised buffer, and zeroing the spare
        // capacity before every read would cost what the uninitialised buffer saves.
        // SAFETY: the pointer and length describe writable memory we own; recv(2) only
        // writes to it.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            return Ok(Recv::Data(n as usize));
        }
        if n == 0 {
            return Ok(Recv::Eof);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN if nonblocking => return Ok(Recv::WouldBlock),
            Errno::EAGAIN => wait_readable(fd)?,
            e => return Err(e.into()),
        }
    }
}

/// Block until `fd` has input (or EOF, or an error, which the next recv reports).
pub(crate) fn wait_readable(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller's connection stays open across this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Make the web server's listening socket (a `direct` listener's, fd 0) fit a blocking
/// accept that still looks up every second: blocking (the bridge clears O_NONBLOCK; an
/// inherited flag would turn accept into a busy loop) with SO_RCVTIMEO, which bounds
/// accept(2). Never poll: a blocked accept gets the kernel's exclusive wake-up, one waiter
/// per connection across all the pool's processes and threads.
pub(crate) fn prepare_direct_listener(listen_fd: RawFd, wake_every: Duration) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: the caller's listening socket stays open for the worker's life.
    let listener = unsafe { BorrowedFd::borrow_raw(listen_fd) };
    let flags = OFlag::from_bits_truncate(fcntl(listener, FcntlArg::F_GETFL)?);
    if flags.contains(OFlag::O_NONBLOCK) {
        fcntl(listener, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    }
    let timeout = TimeVal::new(wake_every.as_secs() as _, wake_every.subsec_micros() as _);
    setsockopt(&listener, sockopt::ReceiveTimeout, &timeout)?;
    Ok(())
}

/// [`accept`] on a listener with SO_RCVTIMEO: `None` when the timeout passed (or a signal
/// came) with no connection, so the caller can look at its drain word.
pub(crate) fn accept_or_timeout(listen_fd: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: the caller's listening socket stays open for the worker's life.
    let listener = unsafe { BorrowedFd::borrow_raw(listen_fd) };
    loop {
        match nix::sys::socket::accept4(listener, SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::ECONNABORTED | Errno::EPROTO) => continue,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Wait up to `timeout` for `fd` to have input: false when the time passed without any.
pub(crate) fn wait_readable_for(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    // SAFETY: the caller's connection stays open across this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut fds, ms) {
        Ok(n) => Ok(n > 0),
        // A signal: the caller looks at its drain word and waits again.
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Write all of `data` to the process's stderr (fd 2, the bridge's log pipe) in one
/// write where the pipe takes it: lines of concurrent requests do not interleave.
pub(crate) fn write_stderr(mut data: &[u8]) {
    let stderr = std::io::stderr();
    let fd = stderr.as_fd();
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the bridge's `Instant`).
pub(crate) fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64),
        Err(_) => 1,
    }
}

/// Send all of `data` (blocking; no SIGPIPE).
pub(crate) fn send_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::sys::socket::send(fd, data, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Send as much of `data` as the socket takes now (MSG_DONTWAIT; no SIGPIPE):
/// `Ok(0)` when it would block. Made with the GIL held, so it must never wait.
pub(crate) fn send_nonblocking(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        match nix::sys::socket::send(fd, data, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ask the kernel to SIGKILL this process when the thread that forked it exits.
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)
}

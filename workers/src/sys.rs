//! The few system calls the worker makes itself (Linux), through `nix` (the bridge's
//! own dependency, so the lock file gains nothing), and `libc` for the receive into
//! uninitialised memory that `nix` has no form for, and for epoll.
//! Every blocking call is made with the GIL released by the caller; the
//! non-blocking ones (MSG_DONTWAIT) may be made with it held.
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{MsgFlags, SockFlag};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// Make the web server's listening socket (a `direct` listener's, fd 0) non-blocking: a
/// WSGI worker's threads accept on it only when their epoll set says a connection waits
/// ([`crate::park`]), and another process or thread may have taken it by then. The flag
/// belongs to the socket, which every worker of the pool shares (an ASGI worker sets it too).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: the caller's descriptor stays open across this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// TCP_NODELAY on a TCP listening socket, which the connections accepted from it inherit
/// at their handshake (Linux; the bridge sets it on the TCP listeners it binds, this
/// covers one passed to it by systemd or as fd 0): a response that leaves in two writes
/// (the flusher sends what a thread has held too long, the rest follows with END_REQUEST)
/// must not wait for the web server's delayed ACK, up to 40 ms, behind Nagle's algorithm.
/// A unix socket has neither: left as it is.
pub(crate) fn no_delay_if_tcp(listen_fd: RawFd) {
    if !is_tcp(listen_fd) {
        return;
    }
    let on: libc::c_int = 1;
    // SAFETY: an int option, its pointer and size valid for the call.
    let set = unsafe {
        libc::setsockopt(
            listen_fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        let e = io::Error::last_os_error();
        eprintln!("fcgibridge worker: cannot set TCP_NODELAY on the listening socket; responses may wait for delayed ACKs: {e}");
    }
}

/// [`accept`] on a non-blocking listener: `None` when no connection waits (another thread or
/// process took it).
pub(crate) fn accept_nonblocking(listen_fd: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: the caller's listening socket stays open for the worker's life.
    let listener = unsafe { BorrowedFd::borrow_raw(listen_fd) };
    loop {
        match nix::sys::socket::accept4(listener, SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A new epoll instance (close-on-exec).
pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; a new descriptor or -1.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// epoll_ctl(2): `op` is `libc::EPOLL_CTL_ADD`, `_MOD` or `_DEL`; `data` comes back with the
/// descriptor's events.
pub(crate) fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wait up to `timeout` for one event of epoll set `epfd`: its data, or `None` when the
/// time passed (or a signal came).
pub(crate) fn epoll_wait_one(epfd: RawFd, timeout: Duration) -> io::Result<Option<u64>> {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // Whole milliseconds, rounded up: less than one would return at once.
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: room for exactly the one event asked for.
    let n = unsafe { libc::epoll_wait(epfd, &mut ev, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINTR) { Ok(None) } else { Err(e) };
    }
    Ok((n > 0).then_some(ev.u64))
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

/// Read and drop what `fd` has received (up to 1 MiB), without waiting: a socket closed with
/// unread input resets the connection (the peer's read fails) instead of ending it.
pub(crate) fn discard_input(fd: RawFd) {
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..64 {
        match nix::sys::socket::recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n > 0 => {}
            Err(Errno::EINTR) => {}
            _ => return,
        }
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

/// Whether `fd` is a TCP socket (else a unix one).
pub(crate) fn is_tcp(fd: RawFd) -> bool {
    use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
    getsockname::<SockaddrStorage>(fd)
        .is_ok_and(|a| matches!(a.family(), Some(AddressFamily::Inet | AddressFamily::Inet6)))
}

/// Bytes written to unix socket `fd` that its peer has not read yet.
pub(crate) fn unsent_bytes(fd: RawFd) -> io::Result<usize> {
    let mut unread: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `fd` is a live socket.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, std::ptr::addr_of_mut!(unread)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(unread).unwrap_or(0))
}

/// Make the next close of TCP socket `fd` send a reset (SO_LINGER of 0).
pub(crate) fn reset_on_close(fd: RawFd) {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    // SAFETY: `fd` is a live socket the caller owns until it closes it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = setsockopt(&fd, Linger, &libc::linger { l_onoff: 1, l_linger: 0 });
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

/// [`send_nonblocking`] until the socket is full or all of `data` went: how many bytes
/// went, and the error that stopped it. Allocates nothing (a fatal signal's handler calls
/// it, [`crate::crash`]).
pub(crate) fn send_available(fd: RawFd, data: &[u8]) -> (usize, Option<io::Error>) {
    let mut sent = 0;
    while sent < data.len() {
        match send_nonblocking(fd, &data[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) => return (sent, Some(e)),
        }
    }
    (sent, None)
}

/// A shared read-write mapping of the whole file behind `fd` (a memfd the bridge made),
/// never unmapped: its address and length. `Err` says which step failed.
pub(crate) fn map_shared(fd: impl AsFd) -> Result<(std::ptr::NonNull<u8>, usize), String> {
    use nix::sys::mman::{mmap, MapFlags, ProtFlags};
    let len = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| format!("cannot read its size: {e}"))?.st_size;
    let len = usize::try_from(len).unwrap_or(0);
    let size = std::num::NonZeroUsize::new(len).ok_or("it is empty")?;
    // SAFETY: a fresh shared mapping of the descriptor's file, not aliased by any Rust object.
    let p = unsafe { mmap(None, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, fd, 0) }
        .map_err(|e| format!("cannot map it: {e}"))?;
    Ok((p.cast(), len))
}

/// Ask the kernel to SIGKILL this process when the thread that forked it exits.
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)
}

/// cpu-time-limit's soft limit: the kernel's SIGXCPU becomes one line on stderr instead of
/// ending the worker; the bridge retires it and the hard limit is its backstop. Written by
/// the handler itself, in whichever thread the kernel interrupts: a Python handler would
/// run only when the main thread next runs Python, which can be after the request that
/// spun ended and the bridge stopped the worker.
pub(crate) fn report_cpu_limit() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::sync::atomic::{AtomicBool, Ordering};
    static TOLD: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_xcpu(_: libc::c_int) {
        // The kernel repeats SIGXCPU every second of CPU past the soft limit: say it once.
        if !TOLD.swap(true, Ordering::Relaxed) {
            let line = b"fcgibridge worker: cpu-time-limit reached (SIGXCPU); the bridge retires this worker\n";
            // SAFETY: write(2) is async-signal-safe; the buffer is static.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        }
    }
    let action = SigAction::new(SigHandler::Handler(on_xcpu), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler only touches an atomic and calls write(2).
    if let Err(e) = unsafe { sigaction(Signal::SIGXCPU, &action) } {
        write_stderr(
            format!(
                "fcgibridge worker: cannot handle SIGXCPU ({e}); cpu-time-limit's soft limit will end the worker\n"
            )
            .as_bytes(),
        );
    }
}

/// Send descriptor `fd` with the one byte `tag` over datagram socket `sock` (SCM_RIGHTS),
/// without waiting: false when the socket's queue is full.
pub(crate) fn send_fd(sock: RawFd, fd: RawFd, tag: u8) -> io::Result<bool> {
    use nix::sys::socket::{sendmsg, ControlMessage};
    let iov = [std::io::IoSlice::new(std::slice::from_ref(&tag))];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        match sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN | Errno::ENOBUFS) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receive one descriptor [`send_fd`] sent on `sock`, with its tag, without waiting:
/// `None` when none is queued (another thread or process took it).
pub(crate) fn recv_fd(sock: RawFd) -> io::Result<Option<(OwnedFd, u8)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    let mut space = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut tag = [0u8; 1];
        let (received, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut tag)];
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
            let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut space), flags) {
                Ok(msg) => msg,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                // The kernel closed what did not fit: out of descriptors (EMFILE).
                write_stderr(
                    b"fcgibridge worker: a connection another worker handed over was lost: no descriptor left to receive it (too many open files)\n",
                );
                continue;
            }
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: descriptors the kernel just installed in this process, owned
                    // by nothing else.
                    fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, fds)
        };
        let mut fds = fds.into_iter();
        match (received, fds.next()) {
            // Anything else (more than one descriptor, none) is dropped: closed here.
            (1, Some(fd)) if fds.len() == 0 => return Ok(Some((fd, tag[0]))),
            _ => continue,
        }
    }
}

/// Whether a datagram is waiting on socket `sock` (FIONREAD: the first one's length).
pub(crate) fn has_datagram(sock: RawFd) -> bool {
    let mut len: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    let r = unsafe { libc::ioctl(sock, libc::FIONREAD, &mut len) };
    r == 0 && len > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn no_delay(fd: RawFd) -> libc::c_int {
        let mut on: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int option, its pointer and size valid for the call.
        let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut on).cast(), &mut len) };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        on
    }

    #[test]
    fn connections_accepted_on_a_tcp_listener_send_without_delay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let before = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let first = accept(listener.as_raw_fd()).unwrap();
        assert_eq!(no_delay(first.as_raw_fd()), 0, "Nagle is on by default");
        no_delay_if_tcp(listener.as_raw_fd());
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = accept(listener.as_raw_fd()).unwrap();
        assert_ne!(no_delay(accepted.as_raw_fd()), 0, "inherited from the listening socket");
        drop(before);
        // A unix socket is left as it is (it has no such option).
        let dir = std::env::temp_dir().join(format!("fcgibridge-nodelay-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        no_delay_if_tcp(unix.as_raw_fd());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_tcp_connection_cut_off_is_reset_and_a_unix_one_is_not_tcp() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = accept(listener.as_raw_fd()).unwrap();
        assert!(is_tcp(accepted.as_raw_fd()));
        reset_on_close(accepted.as_raw_fd());
        drop(accepted);
        let err = client.read(&mut [0u8; 8]).expect_err("a reset, not EOF");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_tcp(a.as_raw_fd()));
    }
}

//! A fatal signal (a segfault in a C extension, an abort) ends the process at once. The
//! responses its threads had finished and held ([`crate::batch`], or for their
//! END_REQUEST) would die with it although their requests ran: a POST's effect done, and
//! its client answered 502. So the handler installed here sends them first, then gives
//! the signal back to the action it found (by default the process dies, as before, and
//! the bridge says so). It sleeps on no lock and waits for no socket and allocates
//! nothing (only what a signal handler may do): a lock another thread holds for a moment
//! (the flusher, preempted while it looks at a held response) it tries again for up to
//! 20 ms, yielding in between: bounded, as the holder may be the thread that crashed. What
//! it sent leaves the buffers, so a process that lives on (an extension whose own handler
//! recovers from the signal) sends nothing twice. A process the app forked inherits the
//! handler but sends nothing: the connections are the worker's.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const FATAL: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT];

/// The actions found before ours, in [`FATAL`]'s order.
struct Previous([libc::sigaction; FATAL.len()]);
// SAFETY: plain data (handler addresses, a mask, flags), only read once written.
unsafe impl Sync for Previous {}
unsafe impl Send for Previous {}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();
/// The worker's pid: a forked child sends nothing.
static WORKER: AtomicU32 = AtomicU32::new(0);

/// Install the handler, once per process; the process that calls this (the one that
/// serves) is the one whose connections it sends from.
pub(crate) fn send_held_first() {
    WORKER.store(std::process::id(), Ordering::SeqCst);
    if PREVIOUS.get().is_some() {
        return;
    }
    // SAFETY: zeroed sigaction structs are valid; sigaction writes the previous actions
    // into the array, then reads ours.
    unsafe {
        let mut previous: [libc::sigaction; FATAL.len()] = std::mem::zeroed();
        for (sig, old) in FATAL.iter().zip(previous.iter_mut()) {
            libc::sigaction(*sig, std::ptr::null(), old);
        }
        // Kept before ours is installed: the handler may run at once.
        if PREVIOUS.set(Previous(previous)).is_err() {
            return;
        }
        let mut ours: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_fatal;
        ours.sa_sigaction = handler as usize;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut ours.sa_mask);
        for sig in FATAL {
            libc::sigaction(sig, &ours, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: getpid, write, sigaction and raise are async-signal-safe; `info` is the
    // kernel's.
    unsafe {
        if libc::getpid() as u32 == WORKER.load(Ordering::SeqCst) {
            let sent = crate::flusher::send_held_on_crash();
            if sent > 0 {
                say_sent(sig, sent);
            }
        }
        match (PREVIOUS.get(), FATAL.iter().position(|&s| s == sig)) {
            (Some(previous), Some(i)) => {
                libc::sigaction(sig, &previous.0[i], std::ptr::null_mut());
            }
            _ => {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Sent by kill() or abort(): raised again, for the action restored. A fault comes
        // back by itself when the instruction runs again.
        if (*info).si_code <= 0 {
            libc::raise(sig);
        }
    }
}

/// `fcgibridge worker: signal 11: sent the 2 finished response(s) it held first`,
/// formatted on the stack.
fn say_sent(sig: libc::c_int, sent: usize) {
    let mut line = [0u8; 128];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"fcgibridge worker: signal ");
    put(digits(sig.unsigned_abs() as usize).as_slice());
    put(b": sent the ");
    put(digits(sent).as_slice());
    put(b" finished response(s) it held first\n");
    // SAFETY: write(2) of a stack buffer to stderr.
    unsafe { libc::write(2, line.as_ptr().cast(), len) };
}

/// The decimal digits of `n`, on the stack.
fn digits(mut n: usize) -> Digits {
    let mut d = Digits { buf: [0; 20], start: 20 };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_formatted_without_allocating() {
        assert_eq!(digits(0).as_slice(), b"0");
        assert_eq!(digits(11).as_slice(), b"11");
        assert_eq!(digits(usize::MAX).as_slice(), usize::MAX.to_string().as_bytes());
    }
}

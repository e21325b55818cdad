//! A worker process as its task (supervise/worker.rs) sees it: either the bridge's own child (started with
//! exec), or a process forked from the pool's preloaded template (supervise/template.rs),
//! which is the template's child — its exit status then arrives from the template.
use nix::sys::signal::Signal;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use tokio::io::AsyncRead;
use tokio::sync::oneshot;

/// A pipe carrying a worker's stdout or stderr (its fd tells what is still unread in it).
pub(super) type OutputPipe = Box<dyn OutputRead>;

/// What an [`OutputPipe`] is.
pub(super) trait OutputRead: AsyncRead + std::os::fd::AsFd + Unpin + Send {}
impl<T: AsyncRead + std::os::fd::AsFd + Unpin + Send> OutputRead for T {}

/// One worker process: wait for it, signal it, read its output.
pub(super) struct WorkerChild {
    pub stdout: Option<OutputPipe>,
    pub stderr: Option<OutputPipe>,
    inner: Inner,
}

enum Inner {
    Direct(tokio::process::Child),
    /// `pidfd` names this very process: the template reaps it, so once it has exited its
    /// pid may be reused before the EXIT report arrives, and a signal by pid could hit a
    /// stranger. `None` only where pidfd_open(2) is missing (Linux < 5.3).
    Forked {
        pid: u32,
        pool: std::sync::Arc<str>,
        parent: u32,
        pidfd: Option<OwnedFd>,
        _registered: super::orphans::ForkedWorker,
        exit: Option<oneshot::Receiver<i32>>,
        /// The status to report, settled as soon as the template's word came (before the
        /// wait for the process that may follow, which a caller may cancel).
        settled: Option<ExitStatus>,
        status: Option<ExitStatus>,
    },
}

impl WorkerChild {
    /// A child the bridge started itself.
    pub(super) fn direct(mut child: tokio::process::Child) -> Self {
        let stdout = child.stdout.take().map(|p| Box::new(p) as OutputPipe);
        let stderr = child.stderr.take().map(|p| Box::new(p) as OutputPipe);
        Self { stdout, stderr, inner: Inner::Direct(child) }
    }

    /// A process forked by the template `parent`; `exit` delivers its raw wait status.
    ///
    /// The template runs the app's code, so the pid it names is checked: pinned by a pidfd
    /// first, it must be the template's own child — else the bridge would sample, signal and
    /// at last SIGKILL whatever process the app named (another tenant's, the web server).
    pub(super) fn forked(
        pool: std::sync::Arc<str>,
        pid: u32,
        parent: u32,
        exit: oneshot::Receiver<i32>,
        stdout: OutputPipe,
        stderr: OutputPipe,
    ) -> Result<Self, NamedPid> {
        let pidfd = pidfd_open(pid);
        match parent_of(pid) {
            Some(p) if p == parent => {}
            Some(p) => {
                return Err(NamedPid::Stranger(format!(
                    "the template named pid {pid} as its worker, whose parent is pid {p}"
                )))
            }
            None => return Err(NamedPid::Gone { exit, stdout, stderr }),
        }
        Ok(Self::fork(pool, (pid, parent), pidfd, Ok(exit), (stdout, stderr)))
    }

    /// A fork the template reaped before the bridge could look at it (it exited within
    /// milliseconds), with the raw wait status the template reported: nothing to signal.
    pub(super) fn reaped(
        pool: std::sync::Arc<str>,
        pid: u32,
        parent: u32,
        status: i32,
        stdout: OutputPipe,
        stderr: OutputPipe,
    ) -> Self {
        Self::fork(pool, (pid, parent), None, Err(ExitStatus::from_raw(status)), (stdout, stderr))
    }

    /// A fork of the template `parent` as the bridge holds it: its exit still to be
    /// reported by the template (`Ok`), or already known (`Err`).
    fn fork(
        pool: std::sync::Arc<str>,
        (pid, parent): (u32, u32),
        pidfd: Option<OwnedFd>,
        exit: Result<oneshot::Receiver<i32>, ExitStatus>,
        (stdout, stderr): (OutputPipe, OutputPipe),
    ) -> Self {
        let (exit, status) = match exit {
            Ok(rx) => (Some(rx), None),
            Err(status) => (None, Some(status)),
        };
        Self {
            stdout: Some(stdout),
            stderr: Some(stderr),
            inner: Inner::Forked {
                pid,
                pool,
                parent,
                pidfd,
                _registered: super::orphans::ForkedWorker::register(pid),
                exit,
                settled: None,
                status,
            },
        }
    }

    /// The pid, while the process may still run.
    pub(super) fn id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Direct(c) => c.id(),
            Inner::Forked { pid, status: None, .. } => Some(*pid),
            Inner::Forked { .. } => None,
        }
    }

    /// Wait for the process to exit (cancel-safe).
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match &mut self.inner {
            Inner::Direct(c) => c.wait().await,
            Inner::Forked { status: Some(s), .. } => Ok(*s),
            Inner::Forked { exit, settled, status, pidfd, pid, pool, parent, .. } => {
                if let Some(rx) = exit.as_mut() {
                    // Awaiting a receiver that has not yielded yet is cancel-safe; once it has,
                    // it is never polled again.
                    let word = rx.await;
                    *exit = None;
                    *settled = Some(settle(word.ok(), pidfd.as_ref(), pool, *pid, *parent));
                }
                let Some(s) = *settled else {
                    return Err(io::Error::other("the template that forked this worker is gone"));
                };
                // Returns at once for a process that has exited; else it was just killed.
                if let Some(fd) = pidfd.as_ref().filter(|fd| !has_exited(fd)) {
                    wait_exited(fd).await;
                }
                *status = Some(s);
                Ok(s)
            }
        }
    }

    /// SIGKILL, then wait.
    pub(super) async fn kill(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Direct(c) => c.kill().await,
            Inner::Forked { .. } => {
                self.signal_kill();
                self.wait().await.map(|_| ())
            }
        }
    }

    fn signal_kill(&self) {
        if matches!(self.inner, Inner::Forked { .. }) {
            self.signal(Signal::SIGKILL);
        }
    }

    /// Send `sig` while the process may still run; never to a reaped (possibly reused) pid.
    pub(super) fn signal(&self, sig: Signal) {
        match &self.inner {
            Inner::Forked { pidfd: Some(fd), status: None, .. } => pidfd_signal(fd, sig),
            _ => {
                // The bridge's own child stays unreaped (its pid reserved) until `wait` returns,
                // after which `id()` is None.
                if let Some(pid) = self.id().and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        }
    }
}

/// Why the pid a template named for its fork is not taken as that worker.
pub(super) enum NamedPid {
    /// A process that is not the template's child: the template's code lied.
    Stranger(String),
    /// No such process: a fork that already exited and was reaped (its EXIT report follows
    /// the PID reply) — or a lie; the EXIT tells them apart. What the worker was given
    /// comes back with it.
    Gone { exit: oneshot::Receiver<i32>, stdout: OutputPipe, stderr: OutputPipe },
}

/// The status of a forked worker once its template said it exited (`reported`: its raw
/// wait status) or died (None). The template runs the app's code, and so does the worker:
/// a forged EXIT would leave the worker serving outside every limit and count, and a worker
/// whose code cleared its parent-death signal outlives its template. So a worker still
/// running is killed through its pidfd (a template's death may also just not have reached
/// it yet); the caller then waits for its end.
fn settle(reported: Option<i32>, pidfd: Option<&OwnedFd>, pool: &str, pid: u32, parent: u32) -> ExitStatus {
    let killed = ExitStatus::from_raw(libc::SIGKILL);
    let Some(fd) = pidfd.filter(|fd| !has_exited(fd)) else {
        // Without a pidfd (Linux < 5.3) the template's word is all there is.
        return reported.map_or(killed, ExitStatus::from_raw);
    };
    if reported.is_some() {
        tracing::error!(
            pool,
            pid,
            template = parent,
            "the template reported this worker as exited while it still runs; killing it (the app's code wrote on the template's control socket, fd 4)"
        );
    }
    pidfd_signal(fd, Signal::SIGKILL);
    killed
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    u32::try_from(super::proc_stat::ProcStat::of(pid)?.parent).ok()
}

fn pidfd_signal(fd: &OwnedFd, sig: Signal) {
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// A pidfd turns readable once its process has exited (reaped or not).
fn has_exited(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// Until the process behind `fd` has exited.
pub(super) async fn wait_exited(fd: &OwnedFd) {
    let Ok(dup) = fd.try_clone() else { return };
    // SAFETY: the copy moves into the AsyncFd and stays open as long as it is registered.
    let Ok(watch) = (unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    let _ = watch.readable().await;
}

/// A pidfd for `pid`, taken as soon as the template names its fork.
pub(super) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK as libc::c_uint) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Drop for WorkerChild {
    /// Like `kill_on_drop` for the bridge's own children: a task that lets go of its worker
    /// never leaves it running.
    fn drop(&mut self) {
        self.signal_kill();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A `sleep` child of this process, presented as the fork of a template (this process).
    fn sleeper() -> (std::process::Child, WorkerChild, oneshot::Sender<i32>) {
        let child = std::process::Command::new("sleep").arg("300").spawn().unwrap();
        let (tx, rx) = oneshot::channel();
        let empty = || Box::new(tokio::fs::File::from_std(std::fs::File::open("/dev/null").unwrap())) as OutputPipe;
        let Ok(worker) = WorkerChild::forked("t".into(), child.id(), std::process::id(), rx, empty(), empty()) else {
            panic!("a child of this process is taken as its fork")
        };
        (child, worker, tx)
    }

    fn killed(child: &mut std::process::Child) -> bool {
        child.wait().unwrap().signal() == Some(libc::SIGKILL)
    }

    #[tokio::test]
    async fn a_fork_already_reaped_is_gone_and_its_reported_status_is_its_own() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let (_tx, rx) = oneshot::channel();
        let empty = || Box::new(tokio::fs::File::from_std(std::fs::File::open("/dev/null").unwrap())) as OutputPipe;
        let Err(NamedPid::Gone { stdout, stderr, .. }) =
            WorkerChild::forked("t".into(), pid, std::process::id(), rx, empty(), empty())
        else {
            panic!("a reaped pid is gone, not a stranger nor a worker")
        };
        let mut worker = WorkerChild::reaped("t".into(), pid, std::process::id(), 3 << 8, stdout, stderr);
        assert_eq!(worker.id(), None, "nothing to sample or signal");
        let status = tokio::time::timeout(Duration::from_secs(5), worker.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_forged_exit_kills_the_worker_and_a_cancelled_wait_can_be_resumed() {
        let (mut child, mut worker, tx) = sleeper();
        tx.send(0).unwrap();
        // One poll: the EXIT is read and the kill sent; the wait for the end (if not over
        // already) is cut short, as a select! in worker.rs may.
        let _ = tokio::time::timeout(Duration::ZERO, worker.wait()).await;
        let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.unwrap().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the forged status 0 is not believed");
        assert_eq!(worker.id(), None);
        assert!(killed(&mut child));
    }

    #[tokio::test]
    async fn a_worker_that_outlives_its_template_is_killed() {
        let (mut child, mut worker, tx) = sleeper();
        // The template died; the worker (no parent-death signal here) runs on.
        drop(tx);
        let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.unwrap().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(killed(&mut child));
    }
}

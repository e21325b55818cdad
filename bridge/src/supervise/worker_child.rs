//! A worker process as its slot sees it: either the bridge's own child (started with
//! exec), or a process forked from the pool's preloaded template (supervise/template.rs),
//! which is the template's child — its exit status then arrives from the template.
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use tokio::io::AsyncRead;
use tokio::sync::oneshot;

/// A pipe carrying a worker's stdout or stderr.
pub type OutputPipe = Box<dyn AsyncRead + Unpin + Send>;

/// One worker process: wait for it, signal it, read its output.
pub struct WorkerChild {
    pub stdout: Option<OutputPipe>,
    pub stderr: Option<OutputPipe>,
    inner: Inner,
}

enum Inner {
    Direct(tokio::process::Child),
    Forked { pid: u32, exit: Option<oneshot::Receiver<i32>>, status: Option<ExitStatus> },
}

impl WorkerChild {
    /// A child the bridge started itself.
    pub fn direct(mut child: tokio::process::Child) -> WorkerChild {
        let stdout = child.stdout.take().map(|p| Box::new(p) as OutputPipe);
        let stderr = child.stderr.take().map(|p| Box::new(p) as OutputPipe);
        WorkerChild { stdout, stderr, inner: Inner::Direct(child) }
    }

    /// A process forked by a template; `exit` delivers its raw wait status.
    pub fn forked(pid: u32, exit: oneshot::Receiver<i32>, stdout: OutputPipe, stderr: OutputPipe) -> WorkerChild {
        WorkerChild {
            stdout: Some(stdout),
            stderr: Some(stderr),
            inner: Inner::Forked { pid, exit: Some(exit), status: None },
        }
    }

    /// The pid, while the process may still run.
    pub fn id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Direct(c) => c.id(),
            Inner::Forked { pid, status: None, .. } => Some(*pid),
            Inner::Forked { .. } => None,
        }
    }

    /// Wait for the process to exit (cancel-safe).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match &mut self.inner {
            Inner::Direct(c) => c.wait().await,
            Inner::Forked { status: Some(s), .. } => Ok(*s),
            Inner::Forked { exit, status, .. } => {
                let Some(rx) = exit.as_mut() else {
                    return Err(io::Error::other("the template that forked this worker is gone"));
                };
                match rx.await {
                    Ok(raw) => {
                        let s = ExitStatus::from_raw(raw);
                        *status = Some(s);
                        *exit = None;
                        Ok(s)
                    }
                    Err(_) => {
                        *exit = None;
                        // The template died; its workers die with it (their parent-death signal).
                        let s = ExitStatus::from_raw(libc::SIGKILL);
                        *status = Some(s);
                        Ok(s)
                    }
                }
            }
        }
    }

    /// SIGKILL, then wait.
    pub async fn kill(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Direct(c) => c.kill().await,
            Inner::Forked { .. } => {
                self.signal_kill();
                self.wait().await.map(|_| ())
            }
        }
    }

    fn signal_kill(&self) {
        if let Inner::Forked { pid, status: None, .. } = &self.inner {
            if let Ok(pid @ 1..) = i32::try_from(*pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

impl Drop for WorkerChild {
    /// Like `kill_on_drop` for the bridge's own children: a slot that lets go of its worker
    /// never leaves it running.
    fn drop(&mut self) {
        self.signal_kill();
    }
}

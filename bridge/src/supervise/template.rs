//! Preloaded templates ("zygotes", `preload: true`): per pool, one process that imported
//! the app once; every worker is a fork of it, so it starts in milliseconds with the app's
//! memory shared copy-on-write. The protocol is in docs/worker-contract.md and the
//! measurements in docs/preload.md.
//!
//! The template is the bridge's child; the workers it forks are the template's children.
//! The template reaps them and reports each exit status on the control socket, so a worker's
//! task waits for a forked worker as for any other (supervise/worker_child.rs). Workers carry a
//! parent-death signal relative to the template, and the template one relative to the
//! bridge: a dying bridge takes the template and its workers along, and a dying template
//! takes its workers along (their tasks see them exit and ask for new ones, which starts a
//! new template).
use super::isolate::Prepared;
use super::spawn::Spawned;
use super::worker_child::{NamedPid, OutputPipe, WorkerChild};
use crate::config::Pool;
use nix::sys::socket::{recv, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{oneshot, OnceCell};

/// The fd of the control socket in the template.
const CONTROL_FD: i32 = 4;
const READY_FD: i32 = 3;
/// How long a template may take to fork and answer with the pid.
const FORK_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the EXIT of a fork that was gone when the bridge looked may take to come.
const REAPED_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Why a worker could not be forked from its pool's template.
#[derive(Debug, thiserror::Error)]
pub(super) enum TemplateError {
    #[error("cannot start the pool's template: {0}")]
    Start(std::io::Error),
    #[error("cannot start the pool's template: {0}")]
    Exec(Box<super::spawn::StartFailure>),
    #[error("the template failed to import the app: {0}")]
    Load(String),
    #[error("the template did not import the app within startup-timeout {0:?}")]
    Timeout(Duration),
    #[error("the template exited before it was ready")]
    DiedEarly,
    #[error("cannot create the worker socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("cannot talk to the template: {0}")]
    Control(std::io::Error),
    #[error("the template did not fork the worker: {0}")]
    Fork(String),
    #[error(transparent)]
    Isolation(#[from] super::isolate::IsolateError),
}

type PidReply = oneshot::Sender<Result<(u32, oneshot::Receiver<i32>), String>>;

/// A running template.
struct Template {
    pool: Arc<str>,
    /// The pool's settings it was started with: a reloaded pool with other settings gets a new template.
    config: Pool,
    pid: u32,
    ctl: AsyncFd<OwnedFd>,
    /// One SPAWN at a time: the next PID reply belongs to the request in flight.
    spawn_lock: tokio::sync::Mutex<()>,
    pending: Mutex<Option<PidReply>>,
    exits: Mutex<HashMap<u32, oneshot::Sender<i32>>>,
    alive: AtomicBool,
    /// Told to fork no more and to exit after its last worker (see `retire`).
    retired: AtomicBool,
}

/// A pool's template, started once by whichever worker needs it first.
type TemplateCell = Arc<OnceCell<Arc<Template>>>;
/// The template of every pool that has one running (or starting); one per daemon, in its
/// [`super::Spawner`].
#[derive(Default)]
pub(crate) struct Templates(Mutex<HashMap<String, TemplateCell>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Start a worker of `pool` by forking its template (starting the template first if needed).
pub(super) async fn spawn_forked(
    templates: &Templates,
    pool: &Pool,
    python_path: &Path,
    socket: &Path,
    direct: Option<super::spawn::DirectFds<'_>>,
) -> Result<Spawned, TemplateError> {
    let template = templates.running(pool, python_path).await?;

    let sock_err = |source| TemplateError::Socket { path: socket.display().to_string(), source };
    let listener: OwnedFd = match direct {
        // The direct listener's own socket: the fork accepts on it (docs/direct.md).
        Some(d) => d.listener.try_clone_to_owned().map_err(sock_err)?,
        None => {
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(sock_err(e)),
            }
            UnixListener::bind(socket).map_err(sock_err)?.into()
        }
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| TemplateError::Control(e.into()));
    let (ready_r, ready_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    let reply = {
        let _one_at_a_time = template.spawn_lock.lock().await;
        let (tx, rx) = oneshot::channel();
        *lock(&template.pending) = Some(tx);
        let mut fds = vec![listener.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd(), ready_w.as_raw_fd()];
        // A direct worker's scoreboard comes fifth; the fork places it on fd 4. Its relay's
        // ends and balance page come sixth to eighth (named in FCGIBRIDGE_RELAY_FDS).
        fds.extend(direct.map(|d| d.scoreboard));
        if let Some(r) = direct.and_then(|d| d.relay) {
            fds.extend(r.raw_fds());
        }
        template.send_spawn(&spawn_message(pool), &fds).await?;
        match tokio::time::timeout(FORK_REPLY_TIMEOUT, rx).await {
            Ok(Ok(r)) => r.map_err(TemplateError::Fork)?,
            Ok(Err(_)) => return Err(TemplateError::Fork("the template exited".into())),
            Err(_) => return Err(TemplateError::Fork(format!("no answer within {FORK_REPLY_TIMEOUT:?}"))),
        }
    };
    // The worker holds its copies now; ours must close so that EOF means "worker gone".
    drop((listener, out_w, err_w, ready_w));
    let (pid, exit) = reply;
    let reader = |fd: OwnedFd| -> Result<OutputPipe, TemplateError> {
        Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(TemplateError::Control)?))
    };
    let (stdout, stderr) = (reader(out_r)?, reader(err_r)?);
    let child = match WorkerChild::forked(template.pool.clone(), pid, template.pid, exit, stdout, stderr) {
        Ok(child) => child,
        Err(NamedPid::Gone { exit, stdout, stderr }) => match tokio::time::timeout(REAPED_EXIT_WAIT, exit).await {
            // It exited at once and was reaped before it could be looked at: the worker's
            // task reads what it printed and reports the exit as any early one.
            Ok(Ok(status)) => WorkerChild::reaped(template.pool.clone(), pid, template.pid, status, stdout, stderr),
            _ => {
                return Err(lied(
                    &template,
                    pid,
                    format!("the template named pid {pid} as its worker, which does not exist"),
                ))
            }
        },
        Err(NamedPid::Stranger(why)) => return Err(lied(&template, pid, why)),
    };
    let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r).map_err(TemplateError::Control)?;
    tracing::debug!(pool = &*template.pool, pid, template = template.pid, "worker forked from the template");
    Ok(Spawned { child, pid, ready })
}

/// The template's code lied about its fork: it is trusted with nothing more.
fn lied(template: &Template, pid: u32, why: String) -> TemplateError {
    lock(&template.exits).remove(&pid);
    tracing::error!(pool = &*template.pool, template = template.pid, "{why}; killing the template");
    if let Ok(tpid) = i32::try_from(template.pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(tpid), nix::sys::signal::Signal::SIGKILL);
    }
    TemplateError::Fork(why)
}

impl Templates {
    /// The pool's template, started (and waited for) when there is none.
    async fn running(&self, pool: &Pool, python_path: &Path) -> Result<Arc<Template>, TemplateError> {
        loop {
            let cell = lock(&self.0).entry(pool.name.clone()).or_default().clone();
            let result = cell.get_or_try_init(|| start_template(pool, python_path)).await;
            match result {
                // Settings its workers do not see (queue-size, a listener's address for their
                // hint, ...) keep it: its app is not imported again for them.
                Ok(t) if t.alive.load(Ordering::Acquire) && !super::manager::needs_restart(&t.config, pool) => {
                    return Ok(t.clone())
                }
                Ok(t) if t.alive.load(Ordering::Acquire) => {
                    // The pool was reloaded with settings its workers see: fork from a new template.
                    // The old one lives on until its last worker exits (graceful restarts), see retire().
                    tracing::info!(pool = &*t.pool, pid = t.pid, "pool settings changed; retiring its template");
                    t.retire();
                    self.forget(&pool.name, &cell);
                }
                Ok(_) => {
                    // Died since: forget it (unless someone already did) and start another.
                    self.forget(&pool.name, &cell);
                }
                Err(e) => {
                    self.forget(&pool.name, &cell);
                    return Err(e);
                }
            }
        }
    }

    /// Retire the template of a pool that was removed, no longer preloads or is restarted
    /// (SIGUSR2): it forks no more and exits after its last worker, instead of idling until
    /// the bridge exits.
    pub(super) fn retire_pool(&self, pool: &str, why: &str) {
        let cell = lock(&self.0).remove(pool);
        if let Some(t) = cell.as_ref().and_then(|s| s.get()) {
            tracing::info!(
                pool,
                pid = t.pid,
                "retiring the template ({why}): it forks no more and ends after its last worker"
            );
            t.retire();
        }
    }

    fn forget(&self, pool: &str, cell: &TemplateCell) {
        let mut map = lock(&self.0);
        if map.get(pool).is_some_and(|s| Arc::ptr_eq(s, cell)) {
            map.remove(pool);
        }
    }
}

/// What the template's forked child does before exec: the readiness pipe as
/// [`READY_FD`] and its control socket as [`CONTROL_FD`], death with the bridge, its own
/// process group, the operator's signals ignored.
fn child_setup(
    cmd: &mut Command,
    step: super::spawn::StepMarker,
    ready_raw: std::os::fd::RawFd,
    ctl_raw: std::os::fd::RawFd,
) {
    // SAFETY: only fcntl, dup2, close, prctl, setpgid and sigaction run in the child, on fds made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            step.mark(super::spawn::Step::Setup);
            let check = |r: libc::c_int| if r == -1 { Err(std::io::Error::last_os_error()) } else { Ok(r) };
            // Move both above the target numbers first: either may already sit on 3 or 4.
            let ready_hi = check(libc::fcntl(ready_raw, libc::F_DUPFD_CLOEXEC, 10))?;
            let ctl_hi = check(libc::fcntl(ctl_raw, libc::F_DUPFD_CLOEXEC, 10))?;
            // dup2 clears close-on-exec on the new descriptor.
            check(libc::dup2(ready_hi, READY_FD))?;
            check(libc::dup2(ctl_hi, CONTROL_FD))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
            // Its own process group, never its own session (see spawn.rs).
            check(libc::setpgid(0, 0))?;
            super::spawn::ignore_operator_signals()?;
            step.mark(super::spawn::Step::Exec);
            Ok(())
        });
    }
}

async fn start_template(pool: &Pool, python_path: &Path) -> Result<Arc<Template>, TemplateError> {
    let iso = Prepared::for_template(pool, python_path)?;
    let run_as = iso.run_as().map(str::to_owned);
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
            .map_err(|e| TemplateError::Start(e.into()))?;
    // The template's end must block (Python reads it with select + recvmsg).
    nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
        .map_err(|e| TemplateError::Start(e.into()))?;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| TemplateError::Start(e.into()))?;

    let app = super::spawn::python_app_spec(pool, &iso)
        .ok_or_else(|| TemplateError::Fork("command: pools have no template".into()))?;
    let mut cmd = Command::new(iso.python());
    cmd.arg("-u").arg("-c").arg(super::spawn::boot_program(&pool.name)).arg(iso.python_path());
    super::spawn::worker_environment(&mut cmd, pool, &iso, app);
    cmd.env("FCGIBRIDGE_TEMPLATE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let steps = super::spawn::StepLog::new().map_err(TemplateError::Start)?;
    let step = steps.marker();
    super::spawn::leave_terminal(&mut cmd);
    iso.install(&mut cmd, step);
    child_setup(&mut cmd, step, ready_w.as_raw_fd(), theirs.as_raw_fd());
    let mut child = match super::orphans::spawn_own(|| cmd.spawn(), tokio::process::Child::id) {
        Ok(c) => c,
        Err(source) => {
            let at = steps.failed_at();
            return Err(TemplateError::Exec(Box::new(super::spawn::StartFailure::new(
                pool,
                run_as.as_deref(),
                at,
                source,
            ))));
        }
    };
    drop(cmd);
    drop(steps);
    drop((ready_w, theirs));
    let pid = child.id().unwrap_or(0);
    let name: Arc<str> = Arc::from(pool.name.as_str());
    tracing::info!(pool = &*name, pid, "template started; importing the app once for all workers");
    if let Some(out) = child.stdout.take() {
        tokio::spawn(log_output(out, name.clone(), pid, false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(log_output(err, name.clone(), pid, true));
    }

    let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r).map_err(TemplateError::Start)?;
    let mut line = Vec::new();
    let started = std::time::Instant::now();
    // EOF comes after READY/ERROR, or when the template dies (it holds the only write end).
    if tokio::time::timeout(pool.startup_timeout, ready.read_to_end(&mut line)).await.is_err() {
        let _ = child.kill().await;
        return Err(TemplateError::Timeout(pool.startup_timeout));
    }
    let text = String::from_utf8_lossy(&line);
    let first = text.lines().next().unwrap_or("").trim();
    if first != "READY" {
        let _ = child.kill().await;
        return Err(match first.strip_prefix("ERROR") {
            Some(msg) => TemplateError::Load(msg.trim().to_owned()),
            None => TemplateError::DiedEarly,
        });
    }
    tracing::info!(pool = &*name, pid, "template ready in {:.0?}", started.elapsed());

    let template = Arc::new(Template {
        pool: name.clone(),
        config: pool.clone(),
        pid,
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open as long as it is registered.
        ctl: unsafe { AsyncFd::register(ours) }.map_err(|e| TemplateError::Start(e.into()))?,
        spawn_lock: tokio::sync::Mutex::new(()),
        pending: Mutex::new(None),
        exits: Mutex::new(HashMap::new()),
        alive: AtomicBool::new(true),
        retired: AtomicBool::new(false),
    });
    tokio::spawn(read_control(template.clone()));
    tokio::spawn(watch_template(template.clone(), child));
    Ok(template)
}

impl Template {
    async fn send_spawn(&self, msg: &str, fds: &[i32]) -> Result<(), TemplateError> {
        loop {
            let mut guard = self.ctl.writable().await.map_err(TemplateError::Control)?;
            match guard.try_io(|fd| send_with_fds(fd.as_raw_fd(), msg.as_bytes(), fds)) {
                Ok(r) => return r.map(|_| ()).map_err(TemplateError::Control),
                Err(_would_block) => continue,
            }
        }
    }

    /// No more forks: the template sees EOF on its control socket, keeps reaping (and
    /// reporting) its remaining workers, and exits after the last one.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let _ = nix::sys::socket::shutdown(self.ctl.get_ref().as_raw_fd(), nix::sys::socket::Shutdown::Write);
    }

    fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
        // Dropping the senders tells every waiting worker task that its worker is gone with the template.
        lock(&self.exits).clear();
        lock(&self.pending).take();
    }
}

/// `SPAWN`, plus ` cpu=SOFT,HARD` for a pool with cpu-time-limit: the fork sets that
/// RLIMIT_CPU on itself (the template has none, see [`Prepared::for_template`]); the fork's
/// CPU time counts from zero, the template's own is not charged to it.
fn spawn_message(pool: &Pool) -> String {
    match super::isolate::cpu_rlimit(pool) {
        Some(cpu) => format!("SPAWN cpu={},{}", cpu.soft, cpu.hard),
        None => "SPAWN".to_owned(),
    }
}

/// One message with descriptors attached (SCM_RIGHTS).
fn send_with_fds(sock: i32, data: &[u8], fds: &[i32]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let iov = [std::io::IoSlice::new(data)];
    sendmsg::<UnixAddr>(sock, &iov, &[ControlMessage::ScmRights(fds)], MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// PID replies and EXIT reports from the template.
async fn read_control(t: Arc<Template>) {
    let mut buf = [0u8; 256];
    loop {
        let n = match t.ctl.readable().await {
            Ok(mut guard) => match guard
                .try_io(|fd| recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_would_block) => continue,
            },
            Err(_) => 0,
        };
        if n == 0 {
            break;
        }
        let msg = String::from_utf8_lossy(&buf[..n]);
        let mut words = msg.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("PID"), Some(pid), None) => {
                let reply = match pid.parse::<u32>() {
                    Ok(pid) => {
                        let (tx, rx) = oneshot::channel();
                        lock(&t.exits).insert(pid, tx);
                        Ok((pid, rx))
                    }
                    Err(_) => Err(format!("bad reply {msg:?}")),
                };
                if let Some(waiting) = lock(&t.pending).take() {
                    let _ = waiting.send(reply);
                }
            }
            (Some("ERR"), ..) => {
                if let Some(waiting) = lock(&t.pending).take() {
                    let _ = waiting.send(Err(msg.trim_start_matches("ERR").trim().to_owned()));
                }
            }
            (Some("EXIT"), Some(pid), Some(status)) => {
                if let (Ok(pid), Ok(status)) = (pid.parse::<u32>(), status.parse::<i32>()) {
                    if let Some(tx) = lock(&t.exits).remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
            }
            _ => tracing::warn!(pool = &*t.pool, pid = t.pid, "unexpected message from the template: {msg:?}"),
        }
    }
    t.mark_dead();
}

/// Owns the template process: logs its exit and retires it.
async fn watch_template(t: Arc<Template>, mut child: tokio::process::Child) {
    let status = child.wait().await;
    t.mark_dead();
    match status {
        // A retired template ends once its last worker has: its replacement is running.
        Ok(s) if s.success() && t.retired.load(Ordering::Acquire) => {
            tracing::info!(pool = &*t.pool, pid = t.pid, "retired template ended after its last worker")
        }
        Ok(s) => {
            tracing::warn!(pool = &*t.pool, pid = t.pid, "template exited ({s}); the next worker starts a new one")
        }
        Err(e) => tracing::warn!(pool = &*t.pool, pid = t.pid, "template lost: {e}"),
    }
}

async fn log_output(pipe: impl tokio::io::AsyncRead + Unpin, pool: Arc<str>, pid: u32, is_stderr: bool) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if is_stderr {
            tracing::warn!(pool = &*pool, pid, "template: {line}");
        } else {
            tracing::info!(pool = &*pool, pid, "template: {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawn_names_the_forks_cpu_limit() {
        let mut pool = Pool::for_tests();
        assert_eq!(spawn_message(&pool), "SPAWN");
        pool.supervision.cpu_time_limit = Some(Duration::from_secs(5));
        pool.supervision.graceful_timeout = Duration::from_secs(2);
        assert_eq!(spawn_message(&pool), "SPAWN cpu=5,8");
    }

    #[test]
    fn template_errors_say_what_happened() {
        let e = TemplateError::Load("ImportError: No module named 'x'".into());
        assert!(e.to_string().contains("failed to import the app"));
        assert!(TemplateError::Timeout(Duration::from_secs(5)).to_string().contains("startup-timeout"));
    }
}

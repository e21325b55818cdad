//! Starting one worker process: its listening socket on fd 0, log pipes on fd 1 and 2,
//! the readiness pipe on fd 3, the pool's environment and working directory.
use super::isolate::Prepared;
use crate::config::{App, Pool};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;

/// The worker's entry point; argv[1] is the directory holding the fcgibridge_worker package.
const BOOT: &str = "import sys; sys.path.insert(0, sys.argv.pop(1)); import fcgibridge_worker.main as m; m.main()";

/// The `-c` program of a worker (or template) of `pool`: [`BOOT`] after a comment naming
/// the pool, so that `ps`, `top -c` and `pgrep -f 'fcgibridge pool NAME[[:space:]]'` tell
/// the pools' workers apart (characters outside a name's usual set are shown as `_`: the
/// comment must stay one line).
pub(super) fn boot_program(pool: &str) -> String {
    let shown: String =
        pool.chars().map(|c| if c.is_ascii_alphanumeric() || "._-@+".contains(c) { c } else { '_' }).collect();
    format!("# fcgibridge pool {shown}\n{BOOT}")
}
/// `fcgibridge check --import`'s: the worker's start up to serving, then exit (main.py's check_import).
const IMPORT_CHECK_BOOT: &str =
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import fcgibridge_worker.main as m; m.check_import()";
/// The fd a worker writes READY / ERROR to.
const READY_FD: i32 = 3;
/// The claim page in a native worker (`FCGIBRIDGE_CLAIM_FD`), or a direct worker's
/// scoreboard (`FCGIBRIDGE_SCOREBOARD_FD`).
const CLAIM_FD: i32 = 4;
/// A direct worker's relay, sending and receiving end, and its pool's balance page
/// (`FCGIBRIDGE_RELAY_FDS`).
pub(super) const RELAY_FDS: [i32; 3] = [5, 6, 7];
/// The balance page's size: a line for the pool and one for each of 63 processes (a
/// process past them keeps the connections it accepts).
const BALANCE_PAGE: usize = 4096;

/// What a worker of a pool behind a `direct` listener is given instead of its own socket
/// and claim page (docs/direct.md).
#[derive(Clone, Copy)]
pub(super) struct DirectFds<'a> {
    /// The listener's socket (blocking: the bridge never accepts on it), the worker's fd 0.
    pub listener: std::os::fd::BorrowedFd<'a>,
    /// The worker's scoreboard (scoreboard.rs), its fd 4.
    pub scoreboard: RawFd,
    /// The pool's relay, its fds 5, 6 and 7.
    pub relay: Option<&'a Relay>,
}

/// A direct listener's relay: a datagram socket pair every worker of its pool gets, over
/// which a worker whose threads are all busy hands a kept connection with a request waiting
/// to whichever worker has a free thread first (workers/src/park.rs). The bridge only
/// holds it, so that connections in flight outlive the worker that sent them. With it
/// comes a page the workers share, where each publishes its connections and pace so that
/// one the scheduler slows hands some to the others (workers/src/balance.rs).
pub(crate) struct Relay {
    pub send: OwnedFd,
    pub recv: OwnedFd,
    pub balance: crate::shared_memory::SharedMemory,
}

impl Relay {
    pub(crate) fn new() -> std::io::Result<Self> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let (send, recv) = socketpair(AddressFamily::Unix, SockType::Datagram, None, flags)?;
        // Above the descriptors a spawn places (0–6), so dup2 onto them never clobbers either.
        let high = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
            let raw = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
            // SAFETY: fcntl returned a new descriptor nothing else owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
        };
        let size = std::num::NonZeroUsize::new(BALANCE_PAGE).unwrap_or(std::num::NonZeroUsize::MIN);
        let balance =
            crate::shared_memory::SharedMemory::new(c"fcgibridge-balance", size).map_err(std::io::Error::other)?;
        Ok(Self { send: high(send)?, recv: high(recv)?, balance })
    }

    pub(super) fn raw_fds(&self) -> [RawFd; 3] {
        [self.send.as_raw_fd(), self.recv.as_raw_fd(), self.balance.raw_fd()]
    }
}

/// A started worker process.
pub(super) struct Spawned {
    /// The bridge's own child, or a fork of the pool's template (`preload: true`).
    pub child: super::worker_child::WorkerChild,
    pub pid: u32,
    /// Read end of the readiness pipe.
    pub ready: tokio::net::unix::pipe::Receiver,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub(super) enum SpawnError {
    #[error("cannot create the worker socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("cannot create the readiness pipe: {0}")]
    Pipe(std::io::Error),
    #[error("cannot hand the direct listener's socket to the worker: {0}")]
    Direct(std::io::Error),
    #[error("{0}")]
    Start(Box<StartFailure>),
    #[error(transparent)]
    Isolation(#[from] super::isolate::IsolateError),
    #[error(transparent)]
    Template(#[from] super::template::TemplateError),
}

/// A step of a worker's (or template's) start in the forked child, in order. Each is marked
/// on a pipe before it runs ([`StepLog`]), so a failed spawn says which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// rlimits (cpu-time-limit's too), nice, umask.
    Limits,
    Chroot,
    /// Supplementary groups, gid, uid.
    Credentials,
    /// Entering the pool's `chdir`, as the worker's user.
    Chdir,
    /// Descriptors, parent-death signal, process group, signal dispositions.
    Setup,
    /// Everything done: the program is executed.
    Exec,
}

impl Step {
    const ALL: [Self; 6] = [Self::Limits, Self::Chroot, Self::Credentials, Self::Chdir, Self::Setup, Self::Exec];

    fn code(self) -> u8 {
        b'a' + self as u8
    }

    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == c)
    }
}

/// The parent's side of the step pipe: after a failed spawn, the last step the child
/// reached is the one that failed.
pub(super) struct StepLog {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

/// The child's side: marks a step (one byte; a single write(2) is async-signal-safe).
#[derive(Debug, Clone, Copy)]
pub(super) struct StepMarker(RawFd);

impl StepMarker {
    pub(super) fn mark(self, step: Step) {
        let b = step.code();
        // SAFETY: write(2) of one byte from a live stack variable; the pipe is the
        // parent's, open (and close-on-exec) until the spawn returned.
        unsafe {
            libc::write(self.0, (&b as *const u8).cast(), 1);
        }
    }
}

impl StepLog {
    pub(super) fn new() -> std::io::Result<Self> {
        use nix::fcntl::OFlag;
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // 10 or above, like the claim page's: never a number the child dup2()s a descriptor
        // onto (0 to 4) before its last mark.
        let write = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // SAFETY: fcntl just made this descriptor; nobody else owns it.
        let write = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(write) };
        Ok(Self { read, write })
    }

    pub(super) fn marker(&self) -> StepMarker {
        StepMarker(self.write.as_raw_fd())
    }

    /// After the spawn failed: the step the child was at (None: it failed before the first,
    /// e.g. fork itself).
    pub(super) fn failed_at(self) -> Option<Step> {
        drop(self.write);
        let mut buf = [0u8; 64];
        let mut last = None;
        while let Ok(n @ 1..) = nix::unistd::read(&self.read, &mut buf) {
            last = buf[..n].last().copied();
        }
        last.and_then(Step::from_code)
    }
}

/// A worker (or template) that could not be started: which step failed, for whom.
#[derive(Debug)]
pub(crate) struct StartFailure {
    step: Option<Step>,
    /// What is executed, as configured; for a `command:` pool its program.
    program: String,
    /// What named the program: "pool `python:`", "pool `command:`", or the app file's shebang.
    origin: String,
    /// Where `program` leads when it is a symlink.
    resolved: Option<String>,
    chdir: String,
    chroot: Option<String>,
    run_as: Option<String>,
    source: std::io::Error,
}

impl StartFailure {
    pub(super) fn new(pool: &Pool, run_as: Option<&str>, step: Option<Step>, source: std::io::Error) -> Self {
        let (program, origin) = match &pool.app {
            App::Command(argv) => (std::path::PathBuf::from(&argv[0]), "pool `command:`".to_owned()),
            // A flup script's shebang chose it (config/shebang.rs).
            _ if pool.python_at.chosen_by.is_some() => {
                (pool.python.clone(), format!("the shebang at {}", pool.python_at.at))
            }
            _ => (pool.python.clone(), "pool `python:`".to_owned()),
        };
        let resolved = symlink_target(&program);
        Self {
            step,
            program: program.display().to_string(),
            origin,
            resolved,
            chdir: pool.chdir.display().to_string(),
            chroot: pool.isolation.chroot.as_ref().map(|c| c.display().to_string()),
            run_as: run_as.map(str::to_owned),
            source,
        }
    }
}

/// Where `program` leads when it is a symlink (the operator looks at a readable link and
/// must be told that its target is what counts); None when it is no symlink.
pub(super) fn symlink_target(program: &Path) -> Option<String> {
    let link = std::fs::symlink_metadata(program).is_ok_and(|m| m.file_type().is_symlink());
    link.then(|| match std::fs::canonicalize(program) {
        Ok(p) => p.display().to_string(),
        Err(_) => match std::fs::read_link(program) {
            Ok(p) => format!("{} (which does not resolve)", p.display()),
            Err(e) => format!("? ({e})"),
        },
    })
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match &self.run_as {
            Some(u) => format!(" as {u}"),
            None => String::new(),
        };
        let (program, origin, source) = (&self.program, &self.origin, &self.source);
        let target = match &self.resolved {
            Some(t) => format!(", a symlink to {t}"),
            None => String::new(),
        };
        match self.step {
            Some(Step::Exec) => write!(f, "cannot execute {program} ({origin}{target}){who}: {source}"),
            Some(Step::Chdir) => {
                write!(f, "cannot enter the working directory {} (pool `chdir:`){who}: {source}", self.chdir)
            }
            Some(Step::Credentials) => match &self.run_as {
                Some(u) => write!(f, "cannot switch to {u} (groups, gid, uid): {source}"),
                None => write!(f, "cannot set the worker's groups or gid: {source}"),
            },
            Some(Step::Chroot) => {
                write!(f, "cannot chroot to {} (pool `chroot:`): {source}", self.chroot.as_deref().unwrap_or("?"))
            }
            Some(Step::Limits) => {
                write!(f, "cannot apply the pool's rlimit-nofile / rlimit-nproc / rlimit-core / rlimit-as / nice / umask: {source}")
            }
            Some(Step::Setup) => {
                write!(f, "cannot set up the descriptors and signals of {program} before exec: {source}")
            }
            None => write!(f, "cannot start a process for {program} ({origin}): {source}"),
        }
    }
}

/// Bind `socket`, then start the pool's interpreter with it as fd 0 (and `claims`, the
/// claim page's descriptor, as fd 4: claim.rs). A direct pool's worker gets `direct`'s
/// listener and scoreboard there instead, and no socket of its own.
pub(super) async fn spawn_worker(
    pool: &Pool,
    spawner: &super::Spawner,
    socket: &Path,
    claims: Option<RawFd>,
    direct: Option<DirectFds<'_>>,
) -> Result<Spawned, SpawnError> {
    let python_path = spawner.python_path.as_path();
    if pool.isolation.preload {
        return Ok(super::template::spawn_forked(&spawner.templates, pool, python_path, socket, direct).await?);
    }
    // user/group/chroot/limits of the pool (supervise/isolate.rs), resolved before the fork.
    let iso = super::isolate::Prepared::for_pool(pool, python_path)?;
    let (listener_fd, claims) = match direct {
        Some(d) => (d.listener.try_clone_to_owned().map_err(SpawnError::Direct)?, Some(d.scoreboard)),
        None => (bind_worker_socket(socket)?, claims),
    };
    let relay = direct.and_then(|d| d.relay).map(Relay::raw_fds);

    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Pipe(e.into()))?;

    let app = match &pool.app {
        App::Command(argv) => argv.join(" "),
        _ => python_app_spec(pool, &iso).unwrap_or_default(),
    };

    // A generic FastCGI program (`command:`) gets no readiness pipe: see supervise/program.rs.
    let program = super::program::program_command(pool);
    let give_ready_fd = program.is_none();
    let mut cmd = program.unwrap_or_else(|| {
        let mut c = Command::new(iso.python());
        c.arg("-u").arg("-c").arg(boot_program(&pool.name)).arg(iso.python_path());
        c
    });
    worker_environment(&mut cmd, pool, &iso, app);
    cmd.stdin(Stdio::from(listener_fd)).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);

    if !give_ready_fd {
        cmd.env_remove("FCGIBRIDGE_READY_FD");
    }
    match claims {
        Some(_) if direct.is_none() => cmd.env("FCGIBRIDGE_CLAIM_FD", CLAIM_FD.to_string()),
        _ => cmd.env_remove("FCGIBRIDGE_CLAIM_FD"),
    };
    if relay.is_some() {
        cmd.env("FCGIBRIDGE_RELAY_FDS", relay_fds_env());
    }
    let child = launch(cmd, pool, iso, give_ready_fd.then_some(ready_w.as_raw_fd()), claims, relay)?;
    drop(ready_w);
    let pid = child.id().unwrap_or(0);
    let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r).map_err(SpawnError::Pipe)?;
    Ok(Spawned { child: super::worker_child::WorkerChild::direct(child), pid, ready })
}

/// Register the pool's isolation and the child's set-up ([`child_setup`]) on `cmd` and
/// start it; a failure says which step failed. `cmd` goes, with the descriptors it holds
/// for the child.
fn launch(
    mut cmd: Command,
    pool: &Pool,
    iso: Prepared,
    ready_w: Option<RawFd>,
    claims: Option<RawFd>,
    relay: Option<[RawFd; 3]>,
) -> Result<tokio::process::Child, SpawnError> {
    let run_as = iso.run_as().map(str::to_owned);
    let steps = StepLog::new().map_err(SpawnError::Pipe)?;
    let step = steps.marker();
    leave_terminal(&mut cmd);
    // Credentials change first: the kernel clears PR_SET_PDEATHSIG (set below) on setuid.
    iso.install(&mut cmd, step);
    child_setup(&mut cmd, step, ready_w, claims, relay);
    super::orphans::spawn_own(|| cmd.spawn(), tokio::process::Child::id).map_err(|source| {
        let at = steps.failed_at();
        SpawnError::Start(Box::new(StartFailure::new(pool, run_as.as_deref(), at, source)))
    })
}

/// A worker started only to import its app ([`spawn_import_check`]).
pub(super) struct ImportCheck {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// Read end of the readiness pipe: `READY wsgi|asgi` or `ERROR …`, as from a worker.
    pub ready: tokio::net::unix::pipe::Receiver,
    /// Its stdout and stderr, one pipe: what it printed, in order.
    pub output: tokio::net::unix::pipe::Receiver,
}

/// Start a worker of `pool` that imports the app and exits without serving (`fcgibridge
/// check --import`; main.py's `check_import`): as [`spawn_worker`] starts one — the
/// interpreter, chroot, limits, account, working directory and environment — but with
/// /dev/null on fd 0 instead of a socket, never from a preloaded template, and with
/// stdout and stderr on one pipe. `python_path` is `<runtime_dir>/python`.
///
/// Its environment is not the operator's shell's (tokens, SSH_AUTH_SOCK, PYTHONPATH, an
/// activated virtualenv): it starts from [`service_environment`], what the daemon has under
/// its systemd unit, then gets what a worker adds to that.
pub(super) fn spawn_import_check(pool: &Pool, python_path: &Path) -> Result<ImportCheck, SpawnError> {
    use nix::fcntl::OFlag;
    let iso = Prepared::for_pool(pool, python_path)?;
    let app = python_app_spec(pool, &iso).unwrap_or_default();
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Pipe(e.into()))?;
    let (output_r, output_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Pipe(e.into()))?;
    let stderr_w = output_w.try_clone().map_err(SpawnError::Pipe)?;
    let mut cmd = Command::new(iso.python());
    cmd.arg("-u").arg("-c").arg(IMPORT_CHECK_BOOT).arg(iso.python_path());
    service_environment(&mut cmd);
    worker_environment(&mut cmd, pool, &iso, app);
    cmd.env_remove("FCGIBRIDGE_CLAIM_FD");
    // It serves nothing: no socket, no scoreboard.
    direct_environment(&mut cmd, None, None);
    cmd.stdin(Stdio::null()).stdout(Stdio::from(output_w)).stderr(Stdio::from(stderr_w)).kill_on_drop(true);
    let child = launch(cmd, pool, iso, Some(ready_w.as_raw_fd()), None, None)?;
    drop(ready_w);
    let pid = child.id().unwrap_or(0);
    let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r).map_err(SpawnError::Pipe)?;
    let output = tokio::net::unix::pipe::Receiver::from_owned_fd(output_r).map_err(SpawnError::Pipe)?;
    Ok(ImportCheck { child, pid, ready, output })
}

/// The worker's socket at `socket`, bound, as the descriptor that becomes its fd 0.
fn bind_worker_socket(socket: &Path) -> Result<OwnedFd, SpawnError> {
    let sock_err = |source| SpawnError::Socket { path: socket.display().to_string(), source };
    // The file is ours (a private directory, a name with a fresh generation): any leftover
    // is from a previous bridge and can go.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    let listener = UnixListener::bind(socket).map_err(sock_err)?;
    Ok(listener.into())
}

/// What the forked child does before exec: the readiness pipe's write end as
/// [`READY_FD`] (`ready_w`; None for a `command:` program, which gets none), the claim
/// page as [`CLAIM_FD`], a direct worker's relay as [`RELAY_FDS`], death with the bridge, its own process group, and the operator's
/// signals ignored (blocked too for a program without readiness pipe).
fn child_setup(
    cmd: &mut Command,
    step: StepMarker,
    ready_w: Option<RawFd>,
    claims: Option<RawFd>,
    relay: Option<[RawFd; 3]>,
) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl, prctl, setpgid, sigaction, sigprocmask).
    unsafe {
        cmd.pre_exec(move || {
            step.mark(Step::Setup);
            if let Some(ready_w_raw) = ready_w {
                if ready_w_raw == READY_FD {
                    // dup2 onto itself would keep FD_CLOEXEC set.
                    if libc::fcntl(READY_FD, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(ready_w_raw, READY_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Without a readiness pipe (a `command:` program) its write end is close-on-exec:
            // it closes when the program starts.
            // The page's descriptor is 10 or above (ClaimPage::new): never one placed here.
            if let Some(fd) = claims {
                if libc::dup2(fd, CLAIM_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The relay's descriptors are 10 or above too (Relay::new).
            for (fd, to) in relay.into_iter().flatten().zip(RELAY_FDS) {
                if libc::dup2(fd, to) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // A worker must never outlive the bridge, even after a SIGKILL of the bridge.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own process group: a Ctrl-C in the bridge's terminal reaches the bridge,
            // which stops the workers in order. Never its own session: the bridge's
            // children share its session, and a child in another one is taken for an
            // orphan that left its worker's (orphans.rs) and killed.
            if libc::setpgid(0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            ignore_operator_signals()?;
            if ready_w.is_none() {
                block_operator_signals()?;
            }
            step.mark(Step::Exec);
            Ok(())
        });
    }
}

/// In the forked child, first: give up the controlling terminal the bridge (`run` or
/// `check --import` started from a shell) may have. Through /dev/tty the app's code could
/// otherwise push keystrokes into that shell's input (TIOCSTI), often root's. The child is
/// no session leader, so TIOCNOTTY detaches it alone and it stays in the bridge's session
/// (orphans.rs counts on that). Only open, ioctl and close: async-signal-safe. Before a
/// chroot, where /dev/tty may be missing while the terminal is not.
pub(super) fn leave_terminal(cmd: &mut Command) {
    // SAFETY: the closure makes only the three system calls named above.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            // No terminal (ENXIO), the usual case under systemd: nothing to give up.
            if fd >= 0 {
                let detached = libc::ioctl(fd, libc::TIOCNOTTY);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if detached == -1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
}

/// The signals an operator means for the daemon but may send to the whole service
/// (`systemctl kill` signals every process of the unit unless told `--kill-whom=main`):
/// SIGHUP (reload), SIGUSR1 (reopen logs), SIGUSR2 (reload and restart). Their default
/// action ends a process, so a worker started with it would die of a log rotation.
const OPERATOR_SIGNALS: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

/// Ignore [`OPERATOR_SIGNALS`] in a forked child before exec. An ignored disposition
/// survives exec (handlers do not), so this covers the interpreter's start-up and
/// `command:` programs, which never learn about the bridge. A program may still install
/// handlers of its own: the native worker does (docs/worker-contract.md); for the others
/// see [`block_operator_signals`]. Only sigprocmask and sigaction are called:
/// async-signal-safe.
pub(crate) fn ignore_operator_signals() -> std::io::Result<()> {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    // All three at once: blocked together first, so that one arriving between two of the
    // sigaction calls waits, and is discarded once ignored (POSIX), instead of ending the
    // process. Then the mask is as it was but for the three, which end up unblocked: the
    // daemon's threads that fork may hold them blocked (block_operator_signals), and a
    // worker's own handlers (the stack dump on SIGUSR2) must receive them.
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&operator_set()?), Some(&mut old))?;
    let mut result = Ok(());
    for sig in OPERATOR_SIGNALS {
        // SAFETY: a zeroed sigaction with SIG_IGN and an empty mask is a valid argument.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_IGN;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc == -1 {
            result = Err(std::io::Error::last_os_error());
            break;
        }
    }
    for sig in OPERATOR_SIGNALS {
        old.remove(Signal::try_from(sig)?);
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    result
}

/// [`OPERATOR_SIGNALS`] as a set. No allocation: a sigset_t on the stack (async-signal-safe).
fn operator_set() -> std::io::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in OPERATOR_SIGNALS {
        set.add(Signal::try_from(sig)?);
    }
    Ok(set)
}

/// In the forked child of a `command:` program: also block [`OPERATOR_SIGNALS`]. The
/// signal mask survives exec and a handler the program installs does not change it, so
/// they stay pending for ever. php-cgi takes SIGUSR1 as "finish and exit", and its master
/// process, which gets it too, passes that state to every child it forks afterwards: each
/// exits at once and the pool is left dead but not gone. flup takes SIGHUP as "stop
/// accepting". Blocking spares them both; their own subprocesses inherit the mask.
///
/// The daemon's main() blocks them too, before any thread exists, until its handlers are
/// installed ([`unblock_operator_signals`]): one that arrives while it starts waits and is
/// then acted on (a reload for an edit saved after the configuration was read), instead of
/// ending it or being lost. The threads started meanwhile keep them blocked, so they reach
/// the main thread; a child unblocks them in [`ignore_operator_signals`] (a signal mask is
/// inherited across fork and exec).
pub(crate) fn block_operator_signals() -> std::io::Result<()> {
    use nix::sys::signal::{sigprocmask, SigmaskHow};
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&operator_set()?), None)?;
    Ok(())
}

/// In the daemon's main thread once its handlers exist: a signal held since start-up is
/// delivered now.
pub(crate) fn unblock_operator_signals() -> std::io::Result<()> {
    use nix::sys::signal::{sigprocmask, SigmaskHow};
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&operator_set()?), None)?;
    Ok(())
}

/// `FCGIBRIDGE_APP` for the native worker: `module:callable`, or the app file as the worker
/// sees it (inside its chroot) and its callable, always written out (a `:` in the path
/// is then never taken for the callable's); `None` for a `command:` pool.
pub(super) fn python_app_spec(pool: &Pool, iso: &Prepared) -> Option<String> {
    match &pool.app {
        App::Module { module, callable } => Some(format!("{module}:{callable}")),
        App::File { path, callable } => Some(format!("{}:{callable}", iso.worker_path(path).display())),
        App::Command(_) => None,
    }
}

/// The PATH systemd gives a service (dist/systemd/fcgibridge.service sets no other).
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment the daemon's workers inherit under dist/systemd's unit, in place of the
/// caller's: systemd's PATH and the locale (LANG, LANGUAGE, LC_*), taken from the caller as
/// the closest to the system's. Nothing else of an interactive shell is passed on.
fn service_environment(cmd: &mut Command) {
    cmd.env_clear().env("PATH", SERVICE_PATH);
    let locale = |name: &str| name == "LANG" || name == "LANGUAGE" || name.starts_with("LC_");
    cmd.envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(locale)));
}

/// What every pool member starts with (docs/worker-contract.md): the pool's directory and
/// environment, then the FCGIBRIDGE_* variables, which the pool's `env` cannot override.
pub(super) fn worker_environment(cmd: &mut Command, pool: &Pool, iso: &Prepared, app: String) {
    // The working directory is entered by the pre-exec hook (isolate.rs), after the
    // credentials changed, so that a failure there is told apart from exec's.
    iso.configure_env(cmd);
    cmd.envs(&pool.env)
        .env("FCGIBRIDGE_APP", app)
        .env("FCGIBRIDGE_THREADS", pool.threads.to_string())
        .env("FCGIBRIDGE_PROCESSES", pool.processes.to_string())
        .env("FCGIBRIDGE_POOL", &pool.name)
        .env("FCGIBRIDGE_READY_FD", READY_FD.to_string());
    // For the hints of flup's stand-in (flup_compat.py): a script's bindAddress that a
    // listener already is needs no other. One a line: a unix path may hold a space.
    if pool.listened_at.is_empty() {
        cmd.env_remove("FCGIBRIDGE_LISTENERS");
    } else {
        cmd.env("FCGIBRIDGE_LISTENERS", pool.listened_at.join("\n"));
    }
    // Only for ASGI-capable pools: a WSGI worker's environment stays as it was (absent means wsgi).
    if pool.interface.kind == crate::config::interface::Interface::Wsgi {
        for name in
            ["FCGIBRIDGE_INTERFACE", "FCGIBRIDGE_CONCURRENCY", "FCGIBRIDGE_ASGI_LOOP", "FCGIBRIDGE_GRACEFUL_TIMEOUT"]
        {
            cmd.env_remove(name);
        }
    } else {
        // How long tasks still running at SIGTERM may take (asgi.py); the manager waits that
        // much longer before its SIGKILL.
        let graceful = pool.supervision.graceful_timeout.as_secs_f64().to_string();
        cmd.env("FCGIBRIDGE_INTERFACE", pool.interface.kind.as_str())
            .env("FCGIBRIDGE_CONCURRENCY", pool.interface.concurrency.to_string())
            .env("FCGIBRIDGE_ASGI_LOOP", pool.interface.asgi_loop.as_str())
            .env("FCGIBRIDGE_GRACEFUL_TIMEOUT", graceful);
    }
    direct_environment(cmd, pool.direct.as_ref(), pool.supervision.request_timeout);
}

/// A direct pool's worker (a preloaded pool's template too, whose forks inherit it): it
/// accepts on fd 0 itself, keeps its numbers in the scoreboard on fd 4, and applies the
/// listener's `mount` / `path-info: keep` as the bridge would (docs/direct.md). An ASGI
/// worker applies the pool's `request-timeout` itself (the bridge cannot cancel one of its
/// tasks; a WSGI worker ignores it: the bridge replaces the worker).
fn direct_environment(
    cmd: &mut Command,
    direct: Option<&crate::config::DirectServe>,
    request_timeout: Option<std::time::Duration>,
) {
    const NAMES: [&str; 8] = [
        "FCGIBRIDGE_DIRECT",
        "FCGIBRIDGE_RELAY_FDS",
        "FCGIBRIDGE_SCOREBOARD_FD",
        "FCGIBRIDGE_MOUNT",
        "FCGIBRIDGE_KEEP_PATH_INFO",
        "FCGIBRIDGE_HEADER_TIMEOUT",
        "FCGIBRIDGE_REQUEST_TIMEOUT",
        "FCGIBRIDGE_MAX_REDIRECTS",
    ];
    for name in NAMES {
        cmd.env_remove(name);
    }
    let Some(d) = direct else { return };
    cmd.env("FCGIBRIDGE_DIRECT", "1")
        .env("FCGIBRIDGE_SCOREBOARD_FD", CLAIM_FD.to_string())
        .env("FCGIBRIDGE_HEADER_TIMEOUT", seconds_env(d.header_timeout))
        .env("FCGIBRIDGE_MAX_REDIRECTS", d.max_redirects.to_string());
    if let Some(timeout) = request_timeout {
        cmd.env("FCGIBRIDGE_REQUEST_TIMEOUT", seconds_env(timeout));
    }
    if let Some(mount) = &d.mount {
        cmd.env("FCGIBRIDGE_MOUNT", mount);
    }
    if d.keep_path_info {
        cmd.env("FCGIBRIDGE_KEEP_PATH_INFO", "1");
    }
}

/// `FCGIBRIDGE_RELAY_FDS`: where [`child_setup`] (or a template's fork) puts the relay.
pub(super) fn relay_fds_env() -> String {
    format!("{},{},{}", RELAY_FDS[0], RELAY_FDS[1], RELAY_FDS[2])
}

/// A duration in seconds as FCGIBRIDGE_HEADER_TIMEOUT and FCGIBRIDGE_REQUEST_TIMEOUT give
/// it: "60", "2.5".
fn seconds_env(d: std::time::Duration) -> String {
    d.as_secs_f64().to_string()
}

/// Mark every descriptor above stderr close-on-exec. Whatever started the bridge (a
/// wrapper script, sudo, a terminal multiplexer) may have left descriptors open — a
/// secret file, a pipe — and every worker, probe and program would inherit them, under
/// each tenant's account. The bridge's own descriptors are close-on-exec already; what a
/// child needs is placed with dup2, which clears the flag on the copy.
pub(crate) fn keep_inherited_descriptors_from_children() {
    // SAFETY: plain system calls on descriptor numbers; nothing is closed.
    let done = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } == 0;
    if done {
        return;
    }
    // Kernels before 5.11: one by one.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    for fd in dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<libc::c_int>().ok()) {
        if fd > 2 {
            // SAFETY: as above; a descriptor that is gone (the directory's own) fails harmlessly.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn the_header_timeout_is_given_in_seconds() {
        use std::time::Duration;
        assert_eq!(super::seconds_env(Duration::from_secs(60)), "60");
        assert_eq!(super::seconds_env(Duration::from_millis(2500)), "2.5");
    }

    use super::*;

    #[test]
    fn the_worker_program_names_its_pool_on_one_comment_line() {
        assert!(boot_program("shop").starts_with("# fcgibridge pool shop\nimport sys;"));
        let odd = boot_program("a\nb c\u{e9}.x@y");
        assert!(odd.starts_with("# fcgibridge pool a_b_c_.x@y\n"), "{odd}");
        assert_eq!(odd.lines().count(), 2);
    }
    use std::path::PathBuf;

    fn pool(python: PathBuf, chdir: PathBuf) -> Pool {
        Pool { python, chdir, ..Pool::for_tests() }
    }

    /// Start `pool`'s python as spawn_worker does (isolation hook, then exec); the failure.
    fn start(pool: &Pool) -> StartFailure {
        let iso = Prepared::for_pool(pool, Path::new("/nonexistent")).unwrap();
        let run_as = iso.run_as().map(str::to_owned);
        let mut cmd = Command::new(iso.python());
        worker_environment(&mut cmd, pool, &iso, String::new());
        let steps = StepLog::new().unwrap();
        let step = steps.marker();
        iso.install(&mut cmd, step);
        // SAFETY: only write(2) runs in the child.
        unsafe {
            cmd.pre_exec(move || {
                step.mark(Step::Exec);
                Ok(())
            });
        }
        let err = cmd.spawn().map(|_| ()).expect_err("the spawn fails");
        StartFailure::new(pool, run_as.as_deref(), steps.failed_at(), err)
    }

    #[tokio::test]
    async fn a_failed_start_says_whether_chdir_or_exec_failed() {
        let dir = crate::scratch::scratch_dir("spawn-steps");
        let python = dir.join("python");
        std::os::unix::fs::symlink(dir.join("missing-interpreter"), &python).unwrap();
        // exec: ENOENT through a dangling symlink, which is named
        let e = start(&pool(python.clone(), dir.to_path_buf()));
        assert_eq!(e.step, Some(Step::Exec));
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot execute {} (pool `python:`, a symlink to ", python.display())),
            "{text}"
        );
        assert!(text.contains("missing-interpreter (which does not resolve)"), "{text}");
        // chosen by a flup script's shebang: that line is named instead of the key
        let python_at = crate::config::KeyAt {
            at: "/srv/app/app.fcgi:1".into(),
            chosen_by: Some("the app file's shebang, as python: is not set".into()),
            ..Default::default()
        };
        let text = start(&Pool { python_at, ..pool(python.clone(), dir.to_path_buf()) }).to_string();
        assert!(
            text.starts_with(&format!(
                "cannot execute {} (the shebang at /srv/app/app.fcgi:1, a symlink to ",
                python.display()
            )),
            "{text}"
        );
        // chdir: ENOENT too, and said so (the interpreter is never reached)
        let gone = dir.join("gone");
        let e = start(&pool(PathBuf::from("/bin/true"), gone.clone()));
        assert_eq!(e.step, Some(Step::Chdir));
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot enter the working directory {} (pool `chdir:`): ", gone.display())),
            "{text}"
        );
        assert!(!text.contains("as user"), "no `user:`, no user named: {text}");
    }
}

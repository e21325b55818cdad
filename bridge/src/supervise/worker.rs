//! The life of one worker process, from its spawn to its reaping: wait for READY (or an
//! error, an early exit, startup-timeout), open its connections and hand them to the pool's
//! dispatcher, then wait for it to exit or for the pool manager to stop it. Every outcome
//! goes to the manager as an [`Event`]; the manager decides what happens next.
//!
//! This task owns the `Child`, so signals go through it ([`WorkerCtl`]) and never reach a
//! pid that was already reaped and reused.
use super::spawn::Spawned;
use super::worker_child::OutputPipe;
use super::worker_child::WorkerChild;
use crate::backend::SlotConn;
use crate::dispatch::{Dispatcher, WorkerKey};
use crate::logging::app_lines::LineBudget;
use crate::worker_handle::{WorkerCtl, WorkerHandle};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Release},
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// How long a worker that closed its readiness pipe without a word gets before it is taken as ready.
const SILENT_READY_GRACE: Duration = Duration::from_secs(1);
/// Time for a stack dump (SIGUSR2) to reach the log before the process is killed.
pub(super) const DUMP_GRACE: Duration = Duration::from_millis(300);
/// A worker to be killed (SIGKILL) less than this after it was asked for its stacks gets
/// until then to write them (request-timeout: the manager asks for the stacks, then kills
/// the worker as soon as its replacement is ready, which a preloaded pool forks in
/// milliseconds). The wait ends early once its stack lines have been logged.
pub(super) const STACKS_WAIT: Duration = Duration::from_secs(1);
/// The stack lines have all been read once none came for this long (a dump is one write).
const STACKS_QUIET: Duration = Duration::from_millis(50);
/// The longest wait for a failed ready-check's output to be read from the worker's pipes.
const SETTLE_MAX: Duration = Duration::from_secs(1);
/// How often [`settle`] looks at the pipes.
const SETTLE_STEP: Duration = Duration::from_millis(5);
/// The prefix of every line of a worker's stack dump (stackdump.py, asgi.py).
const STACK_LINE: &str = "[stack ";

/// What happened to a worker, for the manager.
#[derive(Debug)]
pub(crate) enum Event {
    /// The process exists (or was forked by the pool's template).
    Spawned {
        id: u64,
        pid: u32,
    },
    Ready {
        id: u64,
        took: Duration,
    },
    /// It never became ready; `why` is one line. `started`: a process existed (false when
    /// the spawn itself failed or the manager stopped the task first).
    Failed {
        id: u64,
        why: String,
        started: bool,
    },
    /// It exited after it was ready.
    Exited {
        id: u64,
        status: String,
    },
}

/// Everything the task needs.
pub(super) struct WorkerTask {
    pub id: u64,
    pub pool: Arc<str>,
    pub config: Arc<crate::config::Pool>,
    /// What the daemon's managers share to start workers.
    pub spawner: Arc<super::Spawner>,
    pub socket: std::path::PathBuf,
    pub key: WorkerKey,
    /// Its number in the pool (the socket's and the log's `index`).
    pub index: u32,
    /// Its max-requests threshold, jitter included (0: none), for the log.
    pub max_requests: u64,
    pub dispatcher: Arc<Dispatcher<SlotConn>>,
    /// The native Python worker (it dumps stacks on SIGUSR2); false for `command:` programs.
    pub native: bool,
    /// The pool's last start-up error: the same error again is logged without its traceback.
    pub last_failure: Arc<Mutex<Option<String>>>,
    /// The pool's budget of log lines, which its workers share.
    pub app_lines: Arc<LineBudget>,
    pub events: mpsc::UnboundedSender<Event>,
    /// A direct pool's worker: its scoreboard (the manager reads it).
    pub scoreboard: Option<Arc<crate::scoreboard::Scoreboard>>,
}

pub(super) enum Readiness {
    /// `READY`, or `READY asgi` from a worker serving an ASGI app (`interface: auto`).
    Ready {
        asgi: bool,
    },
    Error(String),
    /// The pipe closed without READY or ERROR.
    Silent,
}

/// The claim page for a worker the bridge may pipe requests to
/// ([`crate::claim::pipelines`]). None: requests go to it one at a time.
fn claim_page(t: &WorkerTask) -> Option<Arc<crate::claim::ClaimPage>> {
    // A direct worker has no connection from the bridge to pipe onto.
    if !(t.native && crate::claim::pipelines(&t.config)) || t.config.direct.is_some() {
        return None;
    }
    match crate::claim::ClaimPage::new() {
        Ok(page) => Some(Arc::new(page)),
        Err(e) => {
            tracing::warn!(pool = &*t.pool, "no claim page for a new worker, it gets one request at a time: {e}");
            None
        }
    }
}

pub(super) async fn run(t: WorkerTask, mut ctl: mpsc::UnboundedReceiver<WorkerCtl>) {
    let pool = t.pool.clone();
    let claims = claim_page(&t);
    let claim_fd = claims.as_ref().map(|p| p.raw_fd());
    let Some(Spawned { mut child, pid, mut ready }) = start_process(&t, &mut ctl, claim_fd).await else { return };
    // "ready in" counts from the process's start (a preloaded pool's template start-up,
    // waited for above, is logged by the template itself).
    let spawned = Instant::now();
    let handle = Arc::new(
        WorkerHandle::new(pool.clone(), pid, t.socket.clone()).with_claims(claims).with_app_lines(t.app_lines.clone()),
    );
    log_started(&t, pid);
    let _ = t.events.send(Event::Spawned { id: t.id, pid });
    let gate = Arc::new(LineGate::new(pool.clone(), pid, handle.app_lines.clone()));
    if let Some(out) = child.stdout.take() {
        gate.follow(out, false);
    }
    if let Some(err) = child.stderr.take() {
        gate.follow(err, true);
    }

    let mut startup = wait_ready(&t, &mut child, &mut ready, &gate, &mut ctl, pid).await;
    if let (Startup::Ready { .. }, Some(check)) = (&startup, &t.config.ready_check) {
        if let Err(failed) = check_ready(&t, &handle, &gate, (&mut child, &mut ctl), check, spawned).await {
            startup = failed;
        }
    }
    let asgi = match startup {
        Startup::Ready { asgi } => asgi,
        Startup::Stopped { grace } => {
            // Stopped before it was ready (a reload, the daemon stopping).
            gate.open();
            handle.mark_dead();
            let status = terminate(&mut child, grace).await;
            remove_socket(&handle.socket);
            let _ = t.events.send(Event::Failed {
                id: t.id,
                why: format!("stopped before it was ready ({status})"),
                started: true,
            });
            return;
        }
        Startup::Failed(why) => {
            report_failure(&t, &gate, pid, &why);
            return fail(&t, &handle, &mut child, why).await;
        }
    };
    gate.open();
    *t.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;

    let connected = match t.config.direct {
        // It accepts the listener's connections itself: nothing for the bridge to open.
        Some(_) => {
            let slots = t.config.interface.slots(t.config.threads, asgi);
            t.dispatcher.add_direct(t.key, slots, asgi);
            slots as usize
        }
        None => connect_slots(&t, &handle, asgi).await,
    };
    if connected == 0 && handle.is_alive() && t.dispatcher.worker_view(t.key, false).is_some_and(|v| !v.draining) {
        let why = "no connection to its socket could be opened".to_owned();
        tracing::error!(pool = &*pool, pid, "worker failed to start: {why}");
        return fail(&t, &handle, &mut child, why).await;
    }
    let took = spawned.elapsed();
    if t.config.direct.is_some() {
        // It holds the web server's connections, not the bridge's: its slots are its
        // threads (or an ASGI worker's concurrency).
        tracing::info!(pool = &*pool, pid, slots = connected, "worker ready in {took:.0?}");
    } else {
        tracing::info!(pool = &*pool, pid, connections = connected, "worker ready in {took:.0?}");
    }
    let _ = t.events.send(Event::Ready { id: t.id, took });

    let status = serve_until_exit(&mut child, &mut ctl, &handle, &gate).await;
    handle.mark_dead();
    remove_socket(&handle.socket);
    let _ = t.events.send(Event::Exited { id: t.id, status });
}

/// Start the process, unless the manager stops the task first. None: it did not start
/// (the manager has been told).
async fn start_process(
    t: &WorkerTask,
    ctl: &mut mpsc::UnboundedReceiver<WorkerCtl>,
    claim_fd: Option<std::os::fd::RawFd>,
) -> Option<Spawned> {
    let direct = match direct_fds(t) {
        Ok(direct) => direct,
        Err(why) => {
            let gate = LineGate::new(t.pool.clone(), 0, Arc::default());
            report_failure(t, &gate, 0, &why);
            let _ = t.events.send(Event::Failed { id: t.id, why, started: false });
            return None;
        }
    };
    let relay = t.config.direct.as_ref().and_then(|_| t.spawner.relay(&t.config.name));
    let fds = direct.as_ref().map(|(socket, board)| super::spawn::DirectFds {
        listener: std::os::fd::AsFd::as_fd(&**socket),
        scoreboard: board.raw_fd(),
        relay: relay.as_deref(),
    });
    let started = tokio::select! {
        r = super::spawn::spawn_worker(&t.config, &t.spawner, &t.socket, claim_fd, fds) => r,
        _ = ctl.recv() => {
            let _ = t.events.send(Event::Failed { id: t.id, why: "stopped before it was started".into(), started: false });
            return None;
        }
    };
    match started {
        Ok(s) => Some(s),
        Err(e) => {
            let why = format!("cannot start a worker: {e}");
            let gate = LineGate::new(t.pool.clone(), 0, Arc::default());
            report_failure(t, &gate, 0, &why);
            remove_socket(&t.socket);
            let _ = t.events.send(Event::Failed { id: t.id, why, started: false });
            None
        }
    }
}

/// A direct pool's worker's listener socket and scoreboard (None for any other worker).
/// Err: why it cannot start.
#[allow(clippy::type_complexity)]
fn direct_fds(
    t: &WorkerTask,
) -> Result<Option<(Arc<std::os::fd::OwnedFd>, Arc<crate::scoreboard::Scoreboard>)>, String> {
    let Some(d) = &t.config.direct else { return Ok(None) };
    let socket = t.spawner.direct_socket(&t.config.name).ok_or_else(|| {
        format!(
            "listener {:?} became `direct` by a reload; its socket goes to the workers at the next start of the bridge",
            d.listener
        )
    })?;
    let board = t.scoreboard.clone().ok_or("no scoreboard could be made for it (see the error above)")?;
    Ok(Some((socket, board)))
}

/// "worker started", with its max-requests threshold when it has one.
fn log_started(t: &WorkerTask, pid: u32) {
    let (pool, index, generation) = (&*t.pool, t.index, t.id);
    if t.max_requests > 0 {
        tracing::info!(pool, pid, index, generation, max_requests = t.max_requests, "worker started");
    } else {
        tracing::info!(pool, pid, index, generation, "worker started");
    }
}

/// How a worker's start-up ended.
enum Startup {
    Ready {
        asgi: bool,
    },
    /// It never became ready: one line saying why.
    Failed(String),
    /// The manager stopped it first, with this grace period.
    Stopped {
        grace: Duration,
    },
}

/// Start-up: READY, ERROR, an early exit, startup-timeout, or the manager stopping it.
async fn wait_ready(
    t: &WorkerTask,
    child: &mut WorkerChild,
    ready: &mut tokio::net::unix::pipe::Receiver,
    gate: &LineGate,
    ctl: &mut mpsc::UnboundedReceiver<WorkerCtl>,
    pid: u32,
) -> Startup {
    let startup_timeout = t.config.startup_timeout;
    let exited = |status: std::io::Result<std::process::ExitStatus>| {
        format!(
            "exited before it was ready: {}",
            status.map(describe_exit).unwrap_or_else(|e| format!("wait failed: {e}"))
        )
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(startup_timeout, read_readiness(ready)) => Ok(r.ok()),
        status = child.wait() => Err(status),
        c = ctl.recv() => return Startup::Stopped { grace: grace_of(c) },
    };
    match outcome {
        // An import error writes ERROR, then exits: the exit may be seen first.
        Err(status) => match tokio::time::timeout(Duration::from_millis(200), read_readiness(ready)).await {
            Ok(Readiness::Error(msg)) => Startup::Failed(msg),
            _ => Startup::Failed(exited(status)),
        },
        Ok(Some(Readiness::Ready { asgi })) => Startup::Ready { asgi },
        Ok(Some(Readiness::Silent)) => {
            // php-cgi or flup never write to fd 3: alive after a grace period means ready.
            tokio::select! {
                _ = tokio::time::sleep(SILENT_READY_GRACE) => Startup::Ready { asgi: false },
                status = child.wait() => Startup::Failed(exited(status)),
            }
        }
        Ok(Some(Readiness::Error(msg))) => Startup::Failed(msg),
        Ok(None) => {
            let what = format!("not ready within startup-timeout {:?}", startup_timeout);
            if t.native {
                gate.open();
                tracing::error!(pool = &*t.pool, pid, "worker {what}; its Python stacks follow, then it is killed");
                child.signal(nix::sys::signal::Signal::SIGUSR2);
                tokio::time::sleep(DUMP_GRACE).await;
            }
            Startup::Failed(what)
        }
    }
}

/// The pool's `ready-check` (supervise/ready_check.rs) on a worker that reported READY
/// (`spawned`: when it started), its output held meanwhile like the rest of its start-up's.
/// Err: it failed, with one line for the log and `reload --wait` — the status and what the
/// app said (the last line it wrote to stderr, a traceback's exception; else the body's
/// first line) —, or the manager stopped it first.
async fn check_ready(
    t: &WorkerTask,
    handle: &Arc<WorkerHandle>,
    gate: &LineGate,
    (child, ctl): (&mut WorkerChild, &mut mpsc::UnboundedReceiver<WorkerCtl>),
    check: &crate::config::ReadyCheck,
    spawned: Instant,
) -> Result<(), Startup> {
    use super::ready_check::Failure;
    handle.hold_stderr();
    gate.watch_stderr();
    let left = t.config.startup_timeout.saturating_sub(spawned.elapsed());
    let result = tokio::select! {
        r = super::ready_check::run(check, handle, left) => r,
        c = ctl.recv() => Err(Failure::Stopped(grace_of(c))),
    };
    let what = format!("ready-check GET {}", check.uri);
    if result == Err(Failure::TimedOut) && t.native {
        gate.open();
        tracing::error!(
            pool = &*t.pool,
            pid = handle.pid,
            "worker's {what} got no answer within startup-timeout; its Python stacks follow, then it is killed"
        );
        child.signal(nix::sys::signal::Signal::SIGUSR2);
        tokio::time::sleep(DUMP_GRACE).await;
    }
    if matches!(result, Err(Failure::Answered { .. } | Failure::Broken(_))) {
        settle(gate).await;
    }
    // The check's own STDERR records (a traceback the worker caught) were all read before
    // its END_REQUEST; the process's stderr (the app's logging) since the check began.
    let (request_lines, process_lines) = (handle.release_stderr(), gate.take_watched());
    let said = super::ready_check::what_the_app_said(&[&request_lines, &process_lines]);
    gate.hold_all(request_lines);
    let why = match result {
        Ok(()) => return Ok(()),
        Err(Failure::Stopped(grace)) => return Err(Startup::Stopped { grace }),
        Err(Failure::Answered { status, body }) => match (said, body) {
            (Some(said), Some(body)) => format!("{what} answered {status}: {said} (body: {body})"),
            (Some(line), None) | (None, Some(line)) => format!("{what} answered {status}: {line}"),
            (None, None) => format!("{what} answered {status}"),
        },
        Err(Failure::TimedOut) => format!("{what} got no answer within startup-timeout {:?}", t.config.startup_timeout),
        Err(Failure::Broken(e)) => format!("{what} failed: {e}"),
    };
    Err(Startup::Failed(why))
}

/// The grace period of the manager's word to a worker that is not serving yet.
fn grace_of(c: Option<WorkerCtl>) -> Duration {
    match c {
        Some(WorkerCtl::Term { grace }) => grace,
        _ => Duration::ZERO,
    }
}

/// What a worker wrote before it answered (an app's logging flushes before the response
/// goes out) may still be in its pipes: wait until they are empty and all read from them
/// has reached the gate, seen twice in a row (at most [`SETTLE_MAX`]).
async fn settle(gate: &LineGate) {
    let until = Instant::now() + SETTLE_MAX;
    let mut empty_before = false;
    while Instant::now() < until {
        let empty = gate.pipes_empty();
        if empty && empty_before {
            return;
        }
        empty_before = empty;
        tokio::time::sleep(SETTLE_STEP).await;
    }
}

/// A worker that failed to start: stopped, its socket removed, the manager told why.
async fn fail(t: &WorkerTask, handle: &WorkerHandle, child: &mut WorkerChild, why: String) {
    handle.mark_dead();
    terminate(child, Duration::from_secs(1)).await;
    remove_socket(&handle.socket);
    let _ = t.events.send(Event::Failed { id: t.id, why, started: true });
}

/// Ready: one connection per worker thread (ASGI: per request in flight), each a slot of
/// the pool. Returns how many were opened; the ones that could not be are one line.
async fn connect_slots(t: &WorkerTask, handle: &Arc<WorkerHandle>, asgi: bool) -> usize {
    let wanted = t.config.interface.slots(t.config.threads, asgi);
    let (mut connected, mut failed) = (0, None);
    let deadline = Instant::now() + BACKLOG_WAIT;
    for _ in 0..wanted {
        match connect_slot(handle, deadline).await {
            Ok((mut slot, canceller)) => match t.dispatcher.add_conn(t.key, Some(canceller)) {
                Some(key) => {
                    slot.set_key(key);
                    t.dispatcher.release(slot);
                    connected += 1;
                }
                None => return connected, // the manager retired it meanwhile
            },
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        tracing::error!(
            pool = &*t.pool,
            pid = handle.pid,
            "cannot open {} of the {wanted} connections to the worker socket {}: {e}; it serves with {connected}",
            wanted as usize - connected,
            handle.socket.display()
        );
    }
    connected
}

/// How long a worker's connections, all together, wait for room in its listen backlog.
const BACKLOG_WAIT: Duration = Duration::from_secs(5);

/// One connection to the worker. A full listen backlog (EAGAIN: the worker has not yet
/// accepted the connections before this one, as with hundreds of ASGI slots) is waited out
/// until `deadline`.
async fn connect_slot(
    handle: &Arc<WorkerHandle>,
    deadline: Instant,
) -> std::io::Result<(SlotConn, crate::dispatch::Canceller)> {
    loop {
        match SlotConn::connect(handle.clone()).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            done => return done,
        }
    }
}

/// Serving, until it exits or the manager stops it; returns how it ended.
async fn serve_until_exit(
    child: &mut WorkerChild,
    ctl: &mut mpsc::UnboundedReceiver<WorkerCtl>,
    handle: &WorkerHandle,
    gate: &LineGate,
) -> String {
    // The last stack dump asked for: when, and how many stack lines had been logged then.
    let mut dumped: Option<(Instant, u64)> = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                return status.map(describe_exit).unwrap_or_else(|e| format!("wait failed: {e}"));
            }
            c = ctl.recv() => match c {
                Some(WorkerCtl::DumpStacks) => {
                    dumped = Some((Instant::now(), gate.stack_lines()));
                    child.signal(nix::sys::signal::Signal::SIGUSR2);
                }
                Some(WorkerCtl::Term { grace }) => {
                    handle.mark_dead();
                    return terminate(child, grace).await;
                }
                Some(WorkerCtl::Kill) => {
                    handle.mark_dead();
                    if let Some((asked, before)) = dumped {
                        if let Some(status) = await_stacks(child, gate, asked, before).await {
                            return status;
                        }
                    }
                    return terminate(child, Duration::ZERO).await;
                }
                // The manager is gone (the runtime is shutting down): stop it.
                None => {
                    handle.mark_dead();
                    return terminate(child, Duration::from_secs(1)).await;
                }
            },
        }
    }
}

/// Before a SIGKILL that follows a stack dump closely: give the worker until
/// [`STACKS_WAIT`] after the dump was asked for to write its stacks, and stop waiting once
/// they have been logged (stack lines came, then none for [`STACKS_QUIET`]). Some(status):
/// it exited meanwhile.
async fn await_stacks(child: &mut WorkerChild, gate: &LineGate, asked: Instant, before: u64) -> Option<String> {
    let until = asked + STACKS_WAIT;
    let mut seen = gate.stack_lines();
    while Instant::now() < until {
        let nap = STACKS_QUIET.min(until.saturating_duration_since(Instant::now()));
        tokio::select! {
            status = child.wait() => {
                return Some(status.map(describe_exit).unwrap_or_else(|e| format!("wait failed: {e}")));
            }
            _ = tokio::time::sleep(nap) => {}
        }
        let now = gate.stack_lines();
        if now > before && now == seen {
            break;
        }
        seen = now;
    }
    None
}

/// Log a start-up failure; the same error as the previous attempt without its output.
fn report_failure(t: &WorkerTask, gate: &LineGate, pid: u32, why: &str) {
    let repeated = {
        let mut last = t.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        let same = last.as_deref() == Some(why);
        *last = Some(why.to_owned());
        same
    };
    let pool = &*t.pool;
    if repeated && !gate.holding() {
        // Its output was too long to hold back, and is in the log above.
        tracing::error!(pool, pid, "worker failed to start again, same error: {why} (its output is above)");
    } else if repeated {
        gate.suppress();
        tracing::error!(
            pool,
            pid,
            "worker failed to start again, same error: {why} (its output is not repeated; see the first failure)"
        );
    } else {
        gate.open();
        tracing::error!(pool, pid, "worker failed to start: {why}");
    }
}

/// SIGTERM, then SIGKILL if the worker has not exited within `grace` (at once for 0).
async fn terminate(child: &mut WorkerChild, grace: Duration) -> String {
    if !grace.is_zero() {
        child.signal(nix::sys::signal::Signal::SIGTERM);
        if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
            return describe_exit(status);
        }
    }
    let _ = child.kill().await;
    match child.wait().await {
        Ok(status) => describe_exit(status),
        Err(e) => format!("wait failed: {e}"),
    }
}

fn remove_socket(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
}

pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("unknown");
        format!("killed by signal {sig} ({name}){}", if status.core_dumped() { ", core dumped" } else { "" })
    } else {
        format!("{status}")
    }
}

/// The first line written to the readiness pipe.
pub(super) async fn read_readiness(pipe: &mut tokio::net::unix::pipe::Receiver) -> Readiness {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 4096 {
                    break;
                }
            }
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("").trim();
    if line == "READY" || line == "READY wsgi" {
        Readiness::Ready { asgi: false }
    } else if line == "READY asgi" {
        Readiness::Ready { asgi: true }
    } else if let Some(msg) = line.strip_prefix("ERROR") {
        Readiness::Error(msg.trim().to_owned())
    } else if line.is_empty() {
        Readiness::Silent
    } else {
        Readiness::Error(format!("unexpected readiness message {line:?}"))
    }
}

/// Holds a starting worker's output until its start-up is decided: then it is logged, or,
/// when the start failed with the same error as the previous attempt, kept at debug level
/// so a crash loop does not print the same traceback every few seconds.
pub(super) struct LineGate {
    pool: Arc<str>,
    pid: u32,
    /// The worker's budget of log lines (shared with its request's STDERR records).
    lines: Arc<LineBudget>,
    state: Mutex<(Gate, Vec<(Source, String)>)>,
    /// Stack-dump lines passed on so far (see [`await_stacks`]).
    stack_lines: AtomicU64,
    /// The pipes it reads (see [`settle`]).
    pipes: Mutex<Vec<Arc<Backlog>>>,
    /// The last stderr lines since a ready-check began, whether held or logged: what the
    /// app said about a failed check (see [`Watched`]).
    watched: Mutex<Option<Watched>>,
    /// The tag of the request whose failure report (a traceback) a direct worker is writing
    /// ([`crate::logging::app_lines::reports_a_failure`]): its lines are errors.
    failing: Mutex<Option<String>>,
}

/// Where a held line came from, which sets its level: stdout INFO, stderr WARN, and a
/// failed request's report ERROR, as a request's STDERR record with a traceback is logged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Stdout,
    Stderr,
    Report,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    Hold,
    Pass,
    Quiet,
}

/// How long the rest of a line a worker began may take before the part is logged alone.
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(200);

/// Lines held at most while a worker starts; beyond, what was held is logged, and every
/// line from then on as it comes.
const HOLD_MAX: usize = 400;

/// Stderr lines kept while a ready-check runs, the last ones at most (a traceback's end).
#[derive(Default)]
struct Watched {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
}

impl Watched {
    const MAX_LINES: usize = 400;
    const MAX_BYTES: usize = 1 << 20;

    fn push(&mut self, line: &str) {
        self.bytes += line.len();
        self.lines.push_back(line.to_owned());
        while self.lines.len() > Self::MAX_LINES || (self.bytes > Self::MAX_BYTES && self.lines.len() > 1) {
            self.bytes -= self.lines.pop_front().map_or(0, |l| l.len());
        }
    }
}

impl LineGate {
    pub(super) fn new(pool: Arc<str>, pid: u32, lines: Arc<LineBudget>) -> Self {
        let state = Mutex::new((Gate::Hold, Vec::new()));
        Self {
            pool,
            pid,
            lines,
            state,
            stack_lines: AtomicU64::default(),
            pipes: Mutex::default(),
            watched: Mutex::default(),
            failing: Mutex::default(),
        }
    }

    /// How many stack-dump lines the worker wrote to stderr so far.
    fn stack_lines(&self) -> u64 {
        self.stack_lines.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Log (or hold) the lines of one of the worker's output pipes, read in a task of its own.
    fn follow(self: &Arc<Self>, pipe: OutputPipe, is_stderr: bool) {
        let backlog = Arc::new(Backlog::new(&pipe));
        self.pipes.lock().unwrap_or_else(|e| e.into_inner()).push(backlog.clone());
        tokio::spawn(log_lines(Counted { pipe, backlog }, is_stderr, self.clone()));
    }

    /// Whether everything the worker wrote to its pipes so far has been logged or held.
    fn pipes_empty(&self) -> bool {
        self.pipes.lock().unwrap_or_else(|e| e.into_inner()).iter().all(|p| p.empty())
    }

    /// From now on keep the last stderr lines apart too, held or not ([`Self::take_watched`]).
    fn watch_stderr(&self) {
        *self.watched.lock().unwrap_or_else(|e| e.into_inner()) = Some(Watched::default());
    }

    /// The stderr lines since [`Self::watch_stderr`] (the last ones), and stop keeping them.
    fn take_watched(&self) -> Vec<String> {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner()).take();
        watched.map(|w| w.lines.into()).unwrap_or_default()
    }

    /// Whether the start's output is still held back (not too long for that).
    fn holding(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 == Gate::Hold
    }

    /// Stderr lines the worker wrote elsewhere (its ready-check's STDERR records, bounded
    /// by [`crate::worker_handle::WorkerHandle::hold`]): held with the rest, however many.
    fn hold_all(&self, lines: Vec<String>) {
        let report = lines.iter().any(|l| crate::logging::app_lines::holds_a_failure(l.as_bytes()));
        let source = if report { Source::Report } else { Source::Stderr };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines {
            match st.0 {
                Gate::Hold => st.1.push((source, line)),
                gate => self.emit(&line, source, gate == Gate::Quiet),
            }
        }
    }

    /// Log what was held, and every line from now on.
    pub(super) fn open(&self) {
        self.decide(Gate::Pass);
    }

    /// Keep what was held, and every line from now on, at debug level.
    pub(super) fn suppress(&self) {
        self.decide(Gate::Quiet);
    }

    fn decide(&self, to: Gate) {
        // Only a start waits for its pipes to be read: a worker holds no more fds than that.
        for pipe in self.pipes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            pipe.fd.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 != Gate::Hold {
            return;
        }
        st.0 = to;
        for (source, line) in std::mem::take(&mut st.1) {
            self.emit(&line, source, to == Gate::Quiet);
        }
    }

    fn line(&self, is_stderr: bool, text: String) {
        let stack = is_stderr && text.starts_with(STACK_LINE);
        if is_stderr {
            if let Some(watched) = self.watched.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                watched.push(&text);
            }
        }
        let source = if is_stderr { Source::Stderr } else { Source::Stdout };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.0 {
            Gate::Pass => self.emit(&text, source, false),
            Gate::Quiet => self.emit(&text, source, true),
            Gate::Hold if st.1.len() < HOLD_MAX => st.1.push((source, text)),
            Gate::Hold => {
                // Too much to hold back: what was held goes first, so the log keeps the
                // worker's order, and a traceback is not cut in two.
                st.0 = Gate::Pass;
                for (source, line) in std::mem::take(&mut st.1) {
                    self.emit(&line, source, false);
                }
                self.emit(&text, source, false);
            }
        }
        if stack {
            // Counted once logged (or held, before READY: then no dump was asked for).
            self.stack_lines.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    fn emit(&self, text: &str, source: Source, quiet: bool) {
        let is_stderr = source != Source::Stdout;
        let (pool, pid) = (&*self.pool, self.pid);
        if !self.lines.admit(pool, pid, text.len()) {
            return;
        }
        if !quiet && is_stderr && crate::logging::app_records::emit(pool, pid, text) {
            return; // the app's logging record, logged at its own level (logging/app_records.rs)
        }
        let failure = source == Source::Report
            || is_stderr && {
                let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
                crate::logging::app_lines::reports_a_failure(&mut failing, text)
            };
        let text = &*crate::logging::escape::clean(text);
        if quiet {
            tracing::debug!(pool, pid, "{text}");
        } else if failure {
            tracing::error!(pool, pid, "{text}");
        } else if is_stderr {
            tracing::warn!(pool, pid, "{text}");
        } else {
            tracing::info!(pool, pid, "{text}");
        }
    }
}

impl Drop for LineGate {
    fn drop(&mut self) {
        self.open();
        if let n @ 1.. = self.lines.dropped() {
            crate::logging::app_lines::log_dropped(&self.pool, self.pid, n);
        }
    }
}

/// One of a worker's output pipes as its reader passes it on: the bytes left in it (FIONREAD
/// on a duplicate of its fd, kept until the start is decided) and those its reader took but
/// has not logged or held yet.
struct Backlog {
    fd: Mutex<Option<std::os::fd::OwnedFd>>,
    taken: AtomicU64,
    passed: AtomicU64,
}

impl Backlog {
    fn new(pipe: &OutputPipe) -> Self {
        let fd = std::os::fd::AsFd::as_fd(&**pipe).try_clone_to_owned().ok();
        Self { fd: Mutex::new(fd), taken: AtomicU64::default(), passed: AtomicU64::default() }
    }

    /// Nothing of it waits to be logged, as far as can be seen.
    fn empty(&self) -> bool {
        if self.taken.load(Acquire) != self.passed.load(Acquire) {
            return false;
        }
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fd) = fd.as_ref() else { return true };
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; `fd` is a pipe this struct owns.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(fd), libc::FIONREAD, &mut unread) };
        rc != 0 || unread == 0
    }
}

/// A worker's output pipe, counting what is read from it.
struct Counted {
    pipe: OutputPipe,
    backlog: Arc<Backlog>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.pipe).poll_read(cx, buf);
        self.backlog.taken.fetch_add((buf.filled().len() - before) as u64, Release);
        read
    }
}

/// Log every line a worker prints, tagged with pool and pid: stdout at info, stderr at warn,
/// the lines of a failed request's report (a traceback) at error.
/// A line the worker left unterminated (a `write()` without "\n") is logged once nothing
/// more has come for [`PARTIAL_LINE_WAIT`]: it is neither held back until the process writes
/// a newline for something else, nor glued to that. The rest of a direct worker's line
/// logged in parts carries the request's tag too (the worker tags a line's start only).
async fn log_lines(pipe: Counted, is_stderr: bool, gate: Arc<LineGate>) {
    const MAX_LINE: usize = 16 << 10;
    // An app's logging record is one line however long its traceback: cut, it would be
    // logged as pieces of JSON, the exception in none of them.
    const MAX_RECORD: usize = 1 << 20;
    let too_long = |line: &[u8]| {
        line.len() >= MAX_RECORD
            || (line.len() >= MAX_LINE && !line.starts_with(crate::logging::app_records::MARKER.as_bytes()))
    };
    let backlog = pipe.backlog.clone();
    let mut reader = BufReader::with_capacity(8192, pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut parts = crate::logging::app_lines::LineParts::default();
    let mut emit = |line: &[u8], whole: bool| {
        let passed = line.len() as u64;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        gate.line(is_stderr, parts.text(String::from_utf8_lossy(line).into_owned(), whole));
        backlog.passed.fetch_add(passed, Release);
    };
    loop {
        let read = if line.is_empty() {
            reader.fill_buf().await
        } else {
            match tokio::time::timeout(PARTIAL_LINE_WAIT, reader.fill_buf()).await {
                Ok(read) => read,
                Err(_) => {
                    emit(&line, false);
                    line.clear();
                    continue;
                }
            }
        };
        let buf = match read {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (take, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if found || too_long(&line) {
            emit(&line, found);
            line.clear();
        }
    }
    if !line.is_empty() {
        emit(&line, true);
    }
    // Closed, or unreadable: nothing more will come of what it held.
    backlog.passed.store(backlog.taken.load(Acquire), Release);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_failed_checks_output_is_read_to_its_end_and_a_long_record_kept_whole() {
        let (mut tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        let gate = Arc::new(LineGate::new("p".into(), 1, Arc::default()));
        gate.follow(Box::new(rx), true);
        // An app's logging record whose traceback is longer than a plain line may be, then
        // a line the worker did not end.
        let frames = "  File \\\"/srv/app.py\\\", line 9, in f\\n    f()\\n    ^^^\\n".repeat(1500);
        let record = format!(
            "{}{{\"level\":\"ERROR\",\"logger\":\"app\",\"msg\":\"Traceback (most recent call last):\\n{frames}ValueError: deep\"}}",
            crate::logging::app_records::MARKER
        );
        assert!(record.len() > 64 << 10);
        tx.write_all(format!("{record}\nSyntaxError: invalid syntax").as_bytes()).await.unwrap();
        settle(&gate).await;
        let held: Vec<String> = gate.state.lock().unwrap().1.iter().map(|(_, line)| line.clone()).collect();
        assert_eq!(held, [record, "SyntaxError: invalid syntax".to_owned()]);
        assert!(gate.pipes_empty());
    }
}

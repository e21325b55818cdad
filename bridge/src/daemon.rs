//! `fcgibridge run`: load the configuration, start the pools, then the listeners; stop
//! on a signal.
//!
//! SIGTERM is a graceful stop: ping paths fail for `drain-period` while requests are still
//! served, then stop accepting, let in-flight requests finish within `shutdown-timeout`,
//! stop the workers, remove the unix socket files, exit 0.
//! SIGINT and SIGQUIT stop at once (workers get a second to exit).
use crate::config::access_format::AccessFormat;
use crate::listen;
use crate::logging::{self, AccessLog};
use crate::notify::Notifier;
use crate::registry::Registry;
use crate::supervise::runtime_dir::DaemonLock;
use crate::supervise::{PoolRuntime, RuntimeDir, Stop, Supervisor};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Pools and templates whose workers run as root (`allow-root: true` on a root bridge):
/// allowed, but never silently — a template's instances run other people's code.
fn warn_of_root_workers(config: &crate::config::Config) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    for p in config.pools.iter().filter(|p| p.isolation.allow_root && p.isolation.worker_uid(0) == 0) {
        tracing::warn!(pool = &*p.name, "the pool's workers run as root (allow-root: true)");
    }
    for t in config.templates.iter().filter(|t| t.raw.allow_root == Some(true) && t.raw.user.is_none()) {
        tracing::warn!(template = %t.name, "every instance of this template runs as root (allow-root: true, no user:); name a user: for sites of other people");
    }
}

/// Runtime threads by default: half the cores (the web server and the Python workers need
/// the rest), at most 4. FCGIBRIDGE_RUNTIME_THREADS overrides. Measured on 2 cores behind
/// nginx (hello world, wrk -c32): one thread costs the daemon 19 µs of CPU per request,
/// two threads 34 µs — the cross-thread wake-ups cost more than the second core gains.
fn default_runtime_threads() -> usize {
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    (cores / 2).clamp(1, 4)
}

pub fn main(config_dir: &Path) -> ExitCode {
    crate::supervise::keep_inherited_descriptors_from_children();
    // Until run() installs their handlers, a reload or a log rotation aimed at a daemon
    // that is starting must not end it (their default action): they wait, blocked (before
    // any thread exists, so every thread inherits it), and are acted on once it runs.
    if let Err(e) = crate::supervise::block_operator_signals() {
        eprintln!("fcgibridge: cannot block SIGHUP/SIGUSR1/SIGUSR2 during start-up: {e}");
    }
    let loaded = crate::config::load(config_dir).map_err(|e| e.to_string());
    let config = match loaded
        .and_then(|c| crate::supervise::probe::check_pools(&c.pools).map(|()| c).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines() {
                eprintln!("fcgibridge: {line}");
            }
            return ExitCode::from(2);
        }
    };
    let reopen = logging::init(&config.global);
    warn_of_root_workers(&config);
    for w in &config.warnings {
        tracing::warn!("{}", crate::config::logged_warning(w));
    }
    for line in config.pools.iter().filter_map(crate::config::Pool::python_from_shebang) {
        tracing::info!("{line}");
    }
    raise_fd_limit();
    // Before any thread exists: these read and clear environment variables.
    let passed = listen::systemd::Passed::from_env();
    let notifier = match Notifier::from_env() {
        Ok(n) => Arc::new(n),
        Err(e) => return failed(e),
    };

    let threads = std::env::var("FCGIBRIDGE_RUNTIME_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(default_runtime_threads);
    // One thread: the current-thread scheduler, with no work-stealing machinery at all.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.thread_name("fcgibridge").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return failed(format_args!("cannot start the runtime: {e}")),
    };
    let code = runtime.block_on(run(config, notifier, passed, config_dir.to_path_buf(), reopen));
    // Worker log readers may still hold pipe reads; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

async fn run(
    mut config: crate::config::Config,
    notifier: Arc<Notifier>,
    passed: listen::systemd::Passed,
    config_dir: std::path::PathBuf,
    reopen: logging::reopen::Reopen,
) -> ExitCode {
    // Signals first, so a SIGTERM during start-up is not lost.
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return failed(format_args!("cannot install signal handlers: {e}")),
    };
    // This is main()'s thread (block_on): one held since start-up is taken now.
    if let Err(e) = crate::supervise::unblock_operator_signals() {
        return failed(format_args!("cannot unblock SIGHUP/SIGUSR1/SIGUSR2: {e}"));
    }
    let mut running = match start(&config, passed, reopen, &notifier).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let how = serve(&mut running, &mut config, &mut signals, &config_dir).await;
    notifier.stopping();
    stop(running, &config, &mut signals, how).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// The signals the daemon answers to, installed once for its life.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    usr2: Signal,
    /// Installed too because its default action would end a daemon that a log rotation
    /// finds starting.
    usr1: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// What `run` started and `stop` takes down again.
struct Running {
    registry: Arc<Registry>,
    supervisor: Supervisor,
    listeners: listen::ListenerSet,
    rt_dir: RuntimeDir,
    control_rx: tokio::sync::mpsc::Receiver<crate::control::Request>,
    /// Tells the status listener and the control socket to stop accepting.
    stop_tx: tokio::sync::watch::Sender<bool>,
    /// The status and control socket files, removed once they stop accepting.
    socket_files: Vec<std::path::PathBuf>,
    /// READY=1 to systemd, and RELOADING=1 … READY=1 around the reloads after it.
    readiness: Arc<crate::notify::Readiness>,
    /// Held for the daemon's life: no second daemon shares the runtime-dir.
    _runtime_dir_lock: Option<DaemonLock>,
}

/// The socket files a start bound, removed if a later step of it fails (a started
/// daemon removes them at its stop).
#[derive(Default)]
struct StartedFiles(Vec<std::path::PathBuf>);

impl StartedFiles {
    /// The start succeeded: the files are the running daemon's.
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for StartedFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A start-up error: logged (and on stderr too when the log is a file); the daemon exits
/// with failure.
fn failed(e: impl std::fmt::Display) -> ExitCode {
    logging::fatal!(target: module_path!(), e);
    ExitCode::FAILURE
}

/// A start-up error met in another module (a listener's address in use, an inherited fd
/// that is no listening socket; the status listener's, the control socket's), logged under
/// that module's `target`, as its other lines. A macro because a tracing target is fixed
/// where the event is written. `failed_in!(target)` is the closure for `map_err`,
/// `failed_in!(target, e)` the exit code at once.
macro_rules! failed_in {
    ($target:expr) => {
        |e| failed_in!($target, e)
    };
    ($target:expr, $error:expr) => {{
        logging::fatal!(target: $target, $error);
        ExitCode::FAILURE
    }};
}

/// Start-up: bind every socket before any worker starts (a port in use is an immediate,
/// clear error), then the pools, the background tasks, the control socket and the listeners.
async fn start(
    config: &crate::config::Config,
    passed: listen::systemd::Passed,
    reopen: logging::reopen::Reopen,
    notifier: &Arc<Notifier>,
) -> Result<Running, ExitCode> {
    // A listener's unix socket may be in the runtime directory (`check` accepts that), so it
    // exists before they bind; it is filled only after, so that a bridge whose address is
    // taken leaves the files of the one holding it alone. Locked before anything in it
    // is touched: a second daemon on it would take the first one's worker sockets.
    let runtime_dir_lock = match &config.global.runtime_dir {
        Some(dir) => Some(RuntimeDir::create(dir).and_then(|()| DaemonLock::take(dir)).map_err(failed)?),
        None => None,
    };
    let mut bound = listen::bind_all(&config.listeners, &passed).map_err(failed_in!(listen::LOG_TARGET))?;
    let mut started_files = StartedFiles(listen::socket_files(&bound));
    let direct_sockets = listen::take_direct(&config.listeners, &mut bound).map_err(failed_in!(listen::LOG_TARGET))?;
    let status_bound = match &config.global.status {
        None => None,
        Some(s) => {
            let bound = crate::status::http::bind(s).await.map_err(failed_in!(crate::status::http::LOG_TARGET))?;
            Some((bound, s.path.clone()))
        }
    };
    started_files.0.extend(status_bound.as_ref().and_then(|(b, _)| b.socket_file()));
    let rt_dir = RuntimeDir::prepare(config.global.runtime_dir.as_deref()).map_err(failed)?;
    tracing::debug!("runtime directory {}", rt_dir.path().display());
    let access_log = open_access_log(&config.global, &reopen)?;
    let registry = Arc::new(
        Registry::new(access_log, config.global.header_memory, config.listeners.clone(), passed).with_reopen(reopen),
    );
    registry.rate_limits.set_enabled(config.global.log_rate_limit);
    registry.set_stop_bound(config);

    let pools: Vec<Arc<PoolRuntime>> = config.pools.iter().cloned().map(PoolRuntime::new).collect();
    let by_name: HashMap<String, Arc<PoolRuntime>> = pools.iter().map(|p| (p.name.to_string(), p.clone())).collect();
    // Before the first worker: what the apps start and leave behind comes back to the daemon.
    crate::supervise::orphans::adopt(registry.rate_limits.clone());
    let supervisor = Supervisor::start(&pools, &rt_dir, direct_sockets).map_err(failed)?;
    registry.board.set_pools(pools.clone());
    for name in registry.systemd.unused() {
        tracing::warn!("systemd passed a socket named {name:?} that no listener uses (address systemd:{name})");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::status::slowlog::spawn(registry.clone());
    tokio::spawn(registry.rate_limits.clone().flusher());
    tokio::spawn(crate::heap::trim_task());
    let mut socket_files: Vec<_> = status_bound.as_ref().and_then(|(b, _)| b.socket_file()).into_iter().collect();
    if let Some((b, path)) = status_bound {
        tracing::info!(address = %config.global.status.as_ref().map(|s| crate::status::describe(&s.address)).unwrap_or_default(), path = %path, "status listener");
        tokio::spawn(crate::status::http::serve(b, path, registry.clone(), stop_rx.clone()));
    }
    let (control_tx, control_rx) = tokio::sync::mpsc::channel::<crate::control::Request>(4);
    if let Some(path) = crate::control::socket_path(&config.global) {
        match crate::control::bind(&path) {
            Ok(l) => {
                started_files.0.push(path.clone());
                tracing::debug!("control socket {}", path.display());
                tokio::spawn(crate::control::serve(l, control_tx, registry.clone(), stop_rx));
            }
            Err(e) => {
                let code = failed_in!(crate::control::LOG_TARGET, e);
                supervisor.stop(Stop::Fast, std::time::Instant::now()).await;
                return Err(code);
            }
        }
        socket_files.push(path);
    }
    registry.board.instances.install(&config.templates, rt_dir.path(), supervisor.spawner());
    let listeners = match listen::ListenerSet::start(&config.listeners, bound, &by_name, registry.clone()) {
        Ok(r) => r,
        Err(e) => {
            let code = failed_in!(listen::LOG_TARGET, e);
            supervisor.stop(Stop::Fast, std::time::Instant::now()).await;
            return Err(code);
        }
    };
    tracing::info!(
        pools = pools.len(),
        listeners = listeners.len(),
        "fcgibridge {} running (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    crate::notify::spawn_watchdog(notifier.clone());
    let readiness = crate::notify::Readiness::start(notifier.clone(), pools);
    started_files.keep();
    Ok(Running {
        registry,
        supervisor,
        listeners,
        rt_dir,
        control_rx,
        stop_tx,
        socket_files,
        readiness,
        _runtime_dir_lock: runtime_dir_lock,
    })
}

/// `access-log`, with its `access-log-format` (None when not configured).
fn open_access_log(
    global: &crate::config::Global,
    reopen: &logging::reopen::Reopen,
) -> Result<Option<AccessLog>, ExitCode> {
    let format = global
        .access_log_format
        .as_deref()
        .map(AccessFormat::parse)
        .transpose()
        .map_err(|e| failed(format_args!("access-log-format: {e}")))?;
    let Some(p) = &global.access_log else { return Ok(None) };
    AccessLog::open(p, format, reopen.clone())
        .map(Some)
        .map_err(|e| failed(format_args!("cannot open access log {}: {e}", p.display())))
}

/// Serve until told to stop: SIGUSR1 reopens the logs; SIGHUP, SIGUSR2 and the control
/// socket's reload reload (a signal can only log the outcome, `fcgibridge reload` is
/// answered with it). Returns how to stop.
async fn serve(r: &mut Running, config: &mut crate::config::Config, s: &mut Signals, config_dir: &Path) -> Stop {
    use crate::reload::Restart;
    // What the bridge settings that apply at a restart only are while this daemon runs.
    let started = config.global.clone();
    loop {
        let (restart, reply) = tokio::select! {
            _ = s.usr1.recv() => {
                // Reopen first: this line starts the new log file.
                r.registry.reopen.request();
                tracing::info!("SIGUSR1: reopening log files");
                continue;
            }
            _ = s.term.recv() => return Stop::Graceful,
            Some(req) = r.control_rx.recv() => match req {
                crate::control::Request::Stop => return Stop::Graceful,
                crate::control::Request::Reload { restart, reply } => {
                    let workers = match &restart {
                        Restart::Changed => String::new(),
                        Restart::All => " and restarting every worker".to_owned(),
                        Restart::Only(names) => format!(" and restarting the workers of {}", names.join(", ")),
                    };
                    tracing::info!("fcgibridge reload: reloading {}{workers}", config_dir.display());
                    (restart, Some(reply))
                }
            },
            _ = s.int.recv() => return Stop::Fast,
            _ = s.quit.recv() => return Stop::Fast,
            _ = s.hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", config_dir.display());
                (Restart::Changed, None)
            }
            _ = s.usr2.recv() => {
                tracing::info!("SIGUSR2: reloading {} and restarting every worker", config_dir.display());
                (Restart::All, None)
            }
        };
        r.readiness.reload_begins();
        let live = crate::reload::Live {
            config: &mut *config,
            started: &started,
            supervisor: &mut r.supervisor,
            listeners: &mut r.listeners,
            runtime_dir: &r.rt_dir,
            registry: &r.registry,
        };
        let outcome = crate::reload::reload(config_dir, live, &restart).await;
        r.readiness.reload_ends(r.supervisor.pools());
        if let Some(reply) = reply {
            let _ = reply.send(outcome.map_err(|why| crate::control::refusal(&why)));
        }
    }
}

/// The stop: the drain period (graceful, when configured), the listeners closed, the
/// requests in flight finished (graceful), then the workers and the template instances.
async fn stop(mut r: Running, config: &crate::config::Config, s: &mut Signals, how: Stop) {
    let how = match how {
        Stop::Graceful if !config.global.drain_period.is_zero() => {
            drain(&r.registry, config.global.drain_period, s, &mut r.control_rx).await
        }
        other => other,
    };
    // Stop accepting.
    let _ = r.stop_tx.send(true);
    r.listeners.stop_accepting();
    for p in &r.socket_files {
        let _ = std::fs::remove_file(p);
    }
    r.listeners.join().await;

    // Direct workers' requests (which the registry does not count) get the same deadline.
    let until = std::time::Instant::now() + config.global.shutdown_timeout;
    let how = match how {
        Stop::Graceful => {
            let timeout = config.global.shutdown_timeout;
            tracing::info!(
                in_flight = r.registry.in_flight(),
                direct_in_flight = Some(direct_in_flight(&r.registry)).filter(|n| *n > 0),
                "graceful stop: draining in-flight requests (up to {timeout:?})"
            );
            finish_in_flight(timeout, &r.registry, s).await
        }
        other => other,
    };
    if how == Stop::Fast {
        tracing::info!("fast stop");
    }
    let hastener = r.supervisor.hastener();
    let stopping = r.supervisor.stop(how, until);
    tokio::pin!(stopping);
    // Direct workers finish their requests inside that wait: SIGINT or SIGQUIT still make
    // it a fast stop, as they do while the daemon's own requests are waited for.
    let hastened = how == Stop::Graceful
        && tokio::select! {
            () = &mut stopping => false,
            _ = s.int.recv() => true,
            _ = s.quit.recv() => true,
        };
    if hastened {
        tracing::info!("fast stop: not waiting for the direct workers' requests");
        hastener.hasten();
        stopping.await;
    } else if how != Stop::Graceful {
        stopping.await;
    }
    r.registry.board.instances.stop_all(how).await;
    crate::supervise::orphans::last_look(r.registry.rate_limits.clone()).await;
    r.registry.rate_limits.flush_all();
    drop(r.rt_dir);
}

/// Requests the workers behind `direct` listeners run (the registry counts only the
/// daemon's own); 0 without direct pools.
fn direct_in_flight(registry: &Registry) -> usize {
    registry.board.pools().iter().map(|p| p.dispatcher.direct_in_flight()).sum()
}

/// Wait up to `timeout` for the requests in flight. SIGINT or SIGQUIT give up on them (a
/// fast stop, as their table in docs/operator-guide.md says at any time); SIGUSR1 still
/// reopens the logs.
async fn finish_in_flight(timeout: std::time::Duration, registry: &Registry, s: &mut Signals) -> Stop {
    let done = tokio::time::timeout(timeout, registry.drained());
    tokio::pin!(done);
    loop {
        tokio::select! {
            r = &mut done => {
                if r.is_err() {
                    tracing::warn!(in_flight = registry.in_flight(), "shutdown-timeout reached with requests still in flight");
                }
                return Stop::Graceful;
            }
            _ = s.int.recv() => break,
            _ = s.quit.recv() => break,
            _ = s.usr1.recv() => {
                registry.reopen.request();
                tracing::info!("SIGUSR1: reopening log files");
            }
        }
    }
    tracing::info!(in_flight = registry.in_flight(), "not waiting for the requests in flight");
    Stop::Fast
}

/// The drain period: ping paths fail while everything else is still served, so that the
/// front end's health checks take this bridge out before its listeners close. A second
/// SIGTERM (or `fcgibridge stop`) ends it early; SIGINT or SIGQUIT make the stop a fast
/// one. A reload is refused: the configuration it would load dies with this process,
/// and a listener it rebinds would reopen to a front end that is being told to go away.
/// SIGUSR1 still reopens the logs (a rotation does not wait for a stop to finish).
async fn drain(
    registry: &Registry,
    period: std::time::Duration,
    s: &mut Signals,
    control: &mut tokio::sync::mpsc::Receiver<crate::control::Request>,
) -> Stop {
    use crate::control::Request;
    registry.start_draining(period);
    let shown = crate::config::units::DurationDisplay(period);
    tracing::info!("stopping: draining for {shown}: ping paths answer 503, requests are still served");
    let over = tokio::time::sleep(period);
    tokio::pin!(over);
    loop {
        let refused = tokio::select! {
            _ = &mut over => {
                tracing::info!("drain period over: closing the listeners");
                return Stop::Graceful;
            }
            _ = s.term.recv() => {
                tracing::info!("second SIGTERM: drain period cut short, closing the listeners");
                return Stop::Graceful;
            }
            Some(req) = control.recv() => match req {
                Request::Stop => {
                    tracing::info!("stop requested during the drain period: cut short, closing the listeners");
                    return Stop::Graceful;
                }
                Request::Reload { reply, .. } => {
                    let _ = reply.send(Err(crate::control::DRAINING.to_owned()));
                    "a reload request"
                }
            },
            _ = s.int.recv() => return Stop::Fast,
            _ = s.quit.recv() => return Stop::Fast,
            _ = s.hup.recv() => "SIGHUP",
            _ = s.usr2.recv() => "SIGUSR2",
            _ = s.usr1.recv() => {
                registry.reopen.request();
                tracing::info!("SIGUSR1: reopening log files");
                continue;
            }
        };
        tracing::warn!("{refused} during the drain period: not reloading, the bridge is stopping");
    }
}

/// Front connections, worker connections and pipes all count: use the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

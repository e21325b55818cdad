//! The pool manager: one task per pool that decides how many worker processes run, starts
//! them, recycles them and stops them (PHP-FPM's master, per pool).
//!
//! It reacts to the worker tasks' events (ready, failed to start, exited), to the
//! dispatcher's wake-ups (a request had to queue while the pool may grow, a worker reached
//! max-requests, a draining worker closed its last connection), to commands (reload,
//! removal, stop) and to a tick (request-timeout, draining deadlines) with a one-second
//! round (RSS and CPU sampling, restart-interval, dynamic sizing, spawn rate).
//!
//! This file is the event loop; the decisions are plain functions in supervise/policy.rs,
//! which `reconcile`, `round`, `scale_up`, `scale_down` and `progress_draining` call with
//! a snapshot of what the manager knows. Rules, in the order `reconcile` applies them
//! (docs/supervision.md tells operators):
//! - A worker to be replaced (max-requests, restart-interval, memory-limit,
//!   cpu-time-limit, request-timeout, a request its client left that it did not end within
//!   the abort grace, reload) keeps serving until a replacement is READY — unless it is
//!   urgent (memory, CPU, request-timeout, abandoned request) and another worker is
//!   serving, in which case it stops taking requests at once. Either way the pool never
//!   drops to zero.
//! - Replacements start at most max(1, processes/4) at a time (a rolling restart).
//! - A draining worker finishes its in-flight requests (abandoned ones aside) within
//!   graceful-timeout, then gets SIGTERM (SIGKILL for a request-timeout or an abandoned
//!   request); past the deadline its Python stacks are logged and it is killed.
//! - Start-up failures back off exponentially (0.5 s doubling to 30 s); while no worker
//!   is ready, one attempt at a time, and the dispatcher answers 503 at once. A worker
//!   that dies serving a request is replaced at once, however young — but after a short
//!   delay (at most 2 s) once several fresh workers in a row died so.
use super::policy::{
    self, Action, DrainStep, Member, Mib, PoolState, Recycle, RolloutCause, Roster, Sampled, Sizing, Spread, State,
    Verdict, ROUND,
};
use super::stats::{ManagerView, RestartRecord, WorkerInfo};
use super::worker::{self, Event, WorkerTask};
use super::{PoolControl, Spawner, Stop};
use crate::backend::SlotConn;
use crate::config::supervision::Mode;
use crate::config::{self, App};
use crate::dispatch::{CurrentRequest, Dispatcher, WorkerKey};
use crate::worker_handle::WorkerCtl;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// SIGTERM to SIGKILL for a worker with no request left, on a graceful stop.
const TERM_GRACE: Duration = Duration::from_secs(10);
const FAST_GRACE: Duration = Duration::from_secs(1);
/// Restart records kept per pool for the status page.
const RESTARTS_KEPT: usize = 50;

/// Why a pool manager is given a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reconfig {
    /// A reload.
    Reload,
    /// A reload that restarts the workers whatever changed (`reload --restart-workers`,
    /// SIGUSR2).
    Restart,
    /// Not a reload: a template instance looked at again (before a new worker, or as its
    /// workers fail to start) whose configuration changed; its log lines must not say
    /// "reload".
    Looked,
    /// Not a reload: a `touch-reload` file changed (new code): the workers restart.
    Touched,
}

/// What the rest of the daemon asks of a pool manager.
pub(crate) enum ManagerCmd {
    /// The pool's new configuration, and why it comes.
    Reconfigure { config: Arc<config::Pool>, why: Reconfig },
    /// The pool is gone (removed by a reload, or an instance of a template stopped): serve
    /// what is queued and in flight (at most `within`), then stop. `why` is the reason its
    /// workers' log lines and restart records give.
    Remove { within: Duration, why: String },
    /// The daemon stops: stop every worker, then answer. On a graceful stop a direct
    /// worker (which the daemon's in-flight count does not see) is drained and has until
    /// `until` to finish its requests and exit by itself.
    Stop { how: Stop, done: oneshot::Sender<()>, until: Instant },
}

struct Worker {
    id: u64,
    /// Its number in the pool (a replacement takes the number of the worker it replaces).
    index: u32,
    pid: u32,
    key: WorkerKey,
    ctl: mpsc::UnboundedSender<WorkerCtl>,
    cfg_gen: u64,
    state: State,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    recycle: Option<Recycle>,
    /// A replacement was started for it.
    replaced: bool,
    /// Retired by a recycle (not to shrink the pool): its replacement takes its index.
    recycled: bool,
    /// Why the manager is retiring it (None: it was not asked to go).
    exit_reason: Option<String>,
    hard: bool,
    max_requests: u64,
    lifetime_end: Option<Instant>,
    last_served: u64,
    served: u64,
    idle_since: Option<Instant>,
    rss: Option<u64>,
    cpu: Option<Duration>,
    memory_warned: bool,
    stacks_dumped: bool,
    /// A direct pool's worker: what it serves, read at every tick (scoreboard.rs).
    scoreboard: Option<Arc<crate::scoreboard::Scoreboard>>,
    /// Drained by a graceful stop of the bridge: SIGTERMed (not killed) at this deadline,
    /// which is shutdown-timeout's, not graceful-timeout's.
    stop_until: Option<Instant>,
}

#[derive(Default, Clone)]
struct IndexHistory {
    spawns: u64,
    last_reason: Option<String>,
}

pub(crate) struct Manager {
    name: Arc<str>,
    cfg: Arc<config::Pool>,
    cfg_gen: u64,
    /// Why the workers of older generations are being replaced.
    rollout: RolloutCause,
    /// The generation of the last rollout that changed the configuration: a restart asked
    /// for after it replaces the workers older than it for both reasons.
    config_changed_gen: u64,
    /// Reconfigure commands taken in (published: `fcgibridge reload --wait` waits for its own).
    reconfigures: u64,
    dispatcher: Arc<Dispatcher<SlotConn>>,
    control: Arc<PoolControl>,
    spawner: Arc<Spawner>,
    socket_dir: PathBuf,
    workers: Vec<Worker>,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Dynamic / ondemand: workers wanted (static: `processes`).
    target: u32,
    spawn_rate: u32,
    spawn_budget: u32,
    rate_limited: bool,
    backoff: Duration,
    next_spawn_at: Option<Instant>,
    /// When the next running request reaches request-timeout (looked at then, not at the
    /// next tick).
    next_timeout_at: Option<Instant>,
    /// Young workers that died serving a request, in a row (their replacement's brake).
    serving_deaths: policy::ServingDeaths,
    /// The last start-up failure, while no worker has become ready since.
    failing: Option<String>,
    /// A template's instance until its first worker is ready: the requests that made it
    /// wait for that worker up to startup-timeout, not queue-timeout.
    first_start: bool,
    last_failure: Arc<Mutex<Option<String>>>,
    /// The log lines its workers may write, shared: a replaced worker starts no fresh budget.
    app_lines: Arc<crate::logging::app_lines::LineBudget>,
    unavailable_set: Option<Arc<str>>,
    sizing_set: Option<(bool, bool)>,
    rejected_seen: u64,
    /// What happened at each worker index: processes started there, why the last one went.
    history: HashMap<u32, IndexHistory>,
    restarts: VecDeque<RestartRecord>,
    spawns: u64,
    /// Worker processes gone since the pool started, and those that went unasked.
    exits: u64,
    crashes: u64,
    next_round: Instant,
    removing: Option<Instant>,
    /// Why the pool is removed (its workers' stop reason).
    removed_why: String,
    stopping: Option<(Stop, Option<oneshot::Sender<()>>)>,
    spread: Spread,
    page_size: u64,
    clock_ticks: u64,
    /// The `touch-reload` files, as last seen.
    touched: super::touch::Watch,
}

enum Wake {
    Event(Option<Event>),
    Cmd(Option<ManagerCmd>),
    Dispatcher,
    Timer,
}

impl Manager {
    pub(crate) fn new(
        name: Arc<str>,
        cfg: Arc<config::Pool>,
        dispatcher: Arc<Dispatcher<SlotConn>>,
        control: Arc<PoolControl>,
        spawner: Arc<Spawner>,
        socket_dir: PathBuf,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32)
            ^ (Arc::as_ptr(&control) as u64);
        let conf = |v| nix::unistd::sysconf(v).ok().flatten().and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0);
        let touched = super::touch::Watch::new(&cfg.touch_reload, super::access::Reader::of(&cfg.isolation));
        let mut m = Self {
            name,
            cfg,
            cfg_gen: 0,
            rollout: RolloutCause::Changed,
            config_changed_gen: 0,
            reconfigures: 0,
            dispatcher,
            control,
            spawner,
            socket_dir,
            workers: Vec::new(),
            events_tx,
            target: 0,
            spawn_rate: 1,
            spawn_budget: 1,
            rate_limited: false,
            backoff: Duration::ZERO,
            next_spawn_at: None,
            next_timeout_at: None,
            serving_deaths: policy::ServingDeaths::default(),
            failing: None,
            first_start: false,
            last_failure: Arc::new(Mutex::new(None)),
            app_lines: Arc::default(),
            unavailable_set: None,
            sizing_set: None,
            rejected_seen: 0,
            history: HashMap::new(),
            restarts: VecDeque::new(),
            spawns: 0,
            exits: 0,
            crashes: 0,
            next_round: Instant::now() + ROUND,
            removing: None,
            removed_why: String::new(),
            stopping: None,
            spread: Spread::new(seed),
            page_size: conf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096),
            clock_ticks: conf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100),
            touched,
        };
        m.target = m.initial_target();
        (m, events_rx)
    }

    /// For a template's instance: until its first worker is ready, requests wait for it up to
    /// the larger of queue-timeout and startup-timeout (a reload meanwhile keeps that).
    pub(crate) fn wait_for_first_start(&mut self) {
        self.first_start = true;
        self.set_queue();
    }

    /// Tells the dispatcher queue-size and how long a request may wait now.
    fn set_queue(&self) {
        let mut timeout = self.cfg.queue_timeout;
        if self.first_start {
            timeout = timeout.max(self.cfg.startup_timeout);
        }
        self.dispatcher.set_queue(self.cfg.queue_size, timeout);
    }

    fn sup(&self) -> &config::supervision::Supervision {
        &self.cfg.supervision
    }

    /// SIGTERM to SIGKILL for a worker with no request left. An ASGI worker may still run
    /// tasks past its last response (a background task): it gets graceful-timeout for
    /// them (`FCGIBRIDGE_GRACEFUL_TIMEOUT`, spawn.rs), then its lifespan shutdown.
    fn term_grace(&self) -> Duration {
        if self.cfg.interface.kind == config::interface::Interface::Wsgi {
            TERM_GRACE
        } else {
            self.sup().graceful_timeout + TERM_GRACE
        }
    }

    fn initial_target(&self) -> u32 {
        policy::initial_target(self.sup(), self.cfg.processes)
    }

    fn want(&self) -> u32 {
        policy::want(self.sup(), self.cfg.processes, self.target)
    }

    fn native(&self) -> bool {
        !matches!(self.cfg.app, App::Command(_))
    }

    fn tick_period(&self) -> Duration {
        policy::tick_period(self.sup().request_timeout)
    }

    // ------------------------------------------------------------------ events

    fn on_event(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Spawned { id, pid } => {
                if let Some(i) = self.index(id) {
                    self.workers[i].pid = pid;
                    // Counted once a process exists: a spawn that failed before is no process.
                    self.spawns += 1;
                    self.history.entry(self.workers[i].index).or_default().spawns += 1;
                }
            }
            Event::Ready { id, took } => {
                let Some(i) = self.index(id) else { return };
                tracing::debug!(pool = &*self.name, pid = self.workers[i].pid, "ready {took:?} after the spawn");
                let end = policy::lifetime_end(&self.cfg.supervision, now, &mut self.spread);
                let w = &mut self.workers[i];
                w.ready_at = Some(now);
                w.lifetime_end = end;
                if w.state == State::Starting {
                    w.state = State::Ready;
                }
                self.failing = None;
                self.first_start = false;
                self.set_queue();
            }
            Event::Failed { id, why, started } => {
                let Some(i) = self.index(id) else { return };
                let w = self.workers.swap_remove(i);
                self.dispatcher.remove_worker(w.key);
                // The worker it was to replace waits for another replacement, at its index
                // (or the next attempt would take a free one: index 2 in a pool of 2).
                for old in self.workers.iter_mut().filter(|o| o.replaced && !o.recycled && o.index == w.index) {
                    old.replaced = false;
                }
                if !started {
                    // No process ever existed (the spawn itself failed, or it was stopped
                    // first): neither an exit nor a crash, only the reason at its index.
                    let reason = w.exit_reason.clone().unwrap_or_else(|| format!("failed to start: {why}"));
                    self.history.entry(w.index).or_default().last_reason = Some(reason);
                    if w.exit_reason.is_none() {
                        self.start_failed(why, w.index, now);
                    }
                    return;
                }
                if let Some(reason) = w.exit_reason.clone() {
                    // Stopped on purpose before it was ready (a newer reload, stop).
                    tracing::info!(
                        pool = &*self.name,
                        pid = w.pid,
                        index = w.index,
                        "worker stopped before it was ready ({reason})"
                    );
                    self.record_exit(&w, reason, now);
                    return;
                }
                self.crashes += 1;
                self.record_exit(&w, format!("failed to start: {why}"), now);
                self.start_failed(why, w.index, now);
            }
            Event::Exited { id, status } => {
                let Some(i) = self.index(id) else { return };
                let mut w = self.workers.swap_remove(i);
                // Its last numbers, and the requests it was running when it died.
                observe(&self.dispatcher, &w);
                if let Some(board) = &w.scoreboard {
                    self.dispatcher.direct_died(&board.unfinished(), crate::scoreboard::monotonic_now_ns());
                }
                if let Some(v) = self.dispatcher.worker_view(w.key, false) {
                    w.served = v.served;
                }
                let lost = if w.exit_reason.is_none() { self.dispatcher.lost_requests(w.key) } else { Vec::new() };
                self.dispatcher.remove_worker(w.key);
                self.dispatcher.purge();
                end_left_behind(&self.name, w.pid);
                match w.exit_reason.clone() {
                    Some(reason) => {
                        tracing::info!(
                            pool = &*self.name,
                            pid = w.pid,
                            index = w.index,
                            "worker stopped ({reason}): {status}"
                        );
                        self.record_exit(&w, reason, now);
                    }
                    None => self.crashed(&w, &status, &lost, now),
                }
            }
        }
    }

    /// A worker exited unasked: counted as a crash, replaced at once or after the backoff.
    /// `lost`: the requests it was serving.
    fn crashed(&mut self, w: &Worker, status: &str, lost: &[CurrentRequest], now: Instant) {
        self.crashes += 1;
        self.record_exit(w, format!("exited unexpectedly: {status}"), now);
        let (pool, pid, index) = (&*self.name, w.pid, w.index);
        if !lost.is_empty() {
            let serving = requests_line(lost, w.scoreboard.is_some().then_some(pid));
            match self.serving_deaths.after_death(w.ready_at, w.served, now) {
                None => tracing::error!(
                    pool,
                    pid,
                    index,
                    "worker exited: {status}; replacing it at once (it died serving {serving})"
                ),
                Some(delay) => {
                    let at = now + delay;
                    self.next_spawn_at = Some(self.next_spawn_at.map_or(at, |t| t.max(at)));
                    tracing::error!(
                        pool,
                        pid,
                        index,
                        "worker exited: {status}; replacing it in {delay:?}, as {} young workers in a row died serving a request (it died serving {serving})",
                        self.serving_deaths.count()
                    );
                }
            }
            return;
        }
        match policy::backoff_after_crash(self.backoff, w.ready_at, now) {
            Some(backoff) => {
                tracing::error!(pool, pid, index, "worker exited: {status}; replacing it");
                self.backoff = backoff;
                self.next_spawn_at = Some(now + backoff);
                tracing::info!(pool, index, "restarting the worker in {backoff:?}");
            }
            None => tracing::error!(pool, pid, index, "worker exited: {status}; replacing it"),
        }
    }

    /// Worker `index` failed to start because `why`: the next attempt waits a backoff.
    fn start_failed(&mut self, why: String, index: u32, now: Instant) {
        self.backoff = policy::next_backoff(self.backoff);
        self.next_spawn_at = Some(now + self.backoff);
        self.failing = Some(why);
        if self.sup().mode == Mode::OnDemand && self.active() == 0 {
            // No retry without demand: the next request (answered 503) asks again.
            self.target = 0;
            self.rejected_seen = self.dispatcher.view().counters.rejected_unavailable;
            tracing::info!(pool = &*self.name, "next start attempt on the next request, not before {:?}", self.backoff);
        } else {
            tracing::info!(pool = &*self.name, index, "restarting the worker in {:?}", self.backoff);
        }
    }

    fn record_exit(&mut self, w: &Worker, reason: String, now: Instant) {
        self.exits += 1;
        let h = self.history.entry(w.index).or_default();
        h.last_reason = Some(reason.clone());
        self.restarts.push_back(RestartRecord {
            time: super::stats::unix_at(now),
            index: w.index,
            pid: w.pid,
            reason,
            requests: w.served,
            lifetime_seconds: now.duration_since(w.spawned_at).as_secs_f64(),
        });
        while self.restarts.len() > RESTARTS_KEPT {
            self.restarts.pop_front();
        }
    }

    fn index(&self, id: u64) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    fn on_cmd(&mut self, cmd: ManagerCmd) {
        match cmd {
            ManagerCmd::Reconfigure { config, why } => {
                self.reconfigures += 1;
                self.reconfigure(config, why);
            }
            ManagerCmd::Remove { within, why } => {
                tracing::info!(pool = &*self.name, "{why}: finishing its requests, then stopping its workers");
                self.removing = Some(Instant::now() + within);
                self.removed_why = why;
            }
            ManagerCmd::Stop { how, done, until } => {
                self.begin_stop(how, Some(done), "the bridge is stopping", until);
            }
        }
    }

    fn reconfigure(&mut self, new: Arc<config::Pool>, why: Reconfig) {
        let old = std::mem::replace(&mut self.cfg, new);
        self.set_queue();
        self.touched.rewatch(&self.cfg.touch_reload, super::access::Reader::of(&self.cfg.isolation));
        let changed = needs_restart(&old, &self.cfg);
        let roll = matches!(why, Reconfig::Restart | Reconfig::Touched) || changed;
        if old.supervision.mode != self.sup().mode {
            self.target = self.initial_target();
        }
        // A fresh configuration deserves a fresh attempt.
        self.backoff = Duration::ZERO;
        self.next_spawn_at = None;
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if roll {
            self.cfg_gen += 1;
            // The failure was the previous code's or configuration's: until the new one
            // fails in turn, the pool is not `rollout-failing` (`reload --wait` reads it).
            self.failing = None;
            self.rollout = match (why, changed) {
                (Reconfig::Looked, _) => RolloutCause::Looked,
                (Reconfig::Touched, _) => RolloutCause::Touched,
                (Reconfig::Reload, _) => RolloutCause::Changed,
                (Reconfig::Restart, false) => RolloutCause::Restart,
                (Reconfig::Restart, true) => RolloutCause::RestartChanged,
            };
            if changed {
                self.config_changed_gen = self.cfg_gen;
            }
            // A ready worker an earlier rollout flagged, still waiting for its replacement,
            // goes for this rollout's reason (a restart's says so when the configuration
            // also changed since the worker started).
            for w in self.workers.iter_mut().filter(|w| w.state == State::Ready) {
                if let Some(r) = w.recycle.as_mut().filter(|r| RolloutCause::gave(r)) {
                    r.reason = self.rollout.for_worker(w.cfg_gen, self.config_changed_gen).reason().into();
                }
            }
            let serving = self.workers.iter().filter(|w| w.state == State::Ready).count();
            let what = match self.rollout {
                RolloutCause::Changed => "reload: configuration changed",
                RolloutCause::Looked => "looked at again (no reload): its account, files or interpreter changed",
                RolloutCause::Touched => "touch-reload",
                RolloutCause::Restart => "restart requested (reload --restart-workers or SIGUSR2)",
                RolloutCause::RestartChanged => {
                    "restart requested (reload --restart-workers or SIGUSR2), configuration changed"
                }
            };
            if serving == 0 {
                tracing::info!(pool = &*self.name, "{what}; the next worker starts with it");
            } else {
                tracing::info!(
                    pool = &*self.name,
                    workers = serving,
                    "{what}; rolling restart (each worker is retired once a new one is ready)"
                );
            }
            // Workers still starting with the old configuration (or code) are of no use.
            let reason = self.rollout.starting_reason();
            for w in self.workers.iter_mut().filter(|w| w.state == State::Starting) {
                w.exit_reason = Some(reason.into());
                w.state = State::Stopping;
                let _ = w.ctl.send(WorkerCtl::Term { grace: FAST_GRACE });
            }
        } else if *old != *self.cfg {
            tracing::info!(pool = &*self.name, "reload: settings applied without restarting workers");
        }
        // The workers that stay take the new max-requests (each drew its jitter at spawn).
        let (was, now) = (&old.supervision, &self.cfg.supervision);
        if (was.max_requests, was.max_requests_jitter) != (now.max_requests, now.max_requests_jitter) {
            for w in self.workers.iter_mut().filter(|w| w.state != State::Stopping) {
                let limit = policy::max_requests_for(&self.cfg.supervision, &mut self.spread);
                // Both copies: the recycle check skips a worker whose own limit is 0.
                w.max_requests = limit;
                self.dispatcher.set_max_requests(w.key, limit);
            }
        }
    }

    /// Stop every worker; `why` is their stop reason (the bridge stopping, the pool removed).
    /// A graceful stop lets a ready direct worker finish its requests (their count is in its
    /// scoreboard, not the daemon's): drained, it exits by itself, or is stopped at `until`
    /// (progress_draining).
    fn begin_stop(&mut self, how: Stop, done: Option<oneshot::Sender<()>>, why: &str, until: Instant) {
        let grace = if how == Stop::Fast { FAST_GRACE } else { self.term_grace() };
        self.set_unavailable(Some(Arc::from(format!("pool {} is stopping", self.name))));
        for w in &mut self.workers {
            if w.state == State::Stopping {
                continue;
            }
            w.exit_reason.get_or_insert_with(|| why.to_owned());
            self.dispatcher.drain_worker(w.key);
            let Some(board) = w.scoreboard.as_ref().filter(|_| how == Stop::Graceful && w.ready_at.is_some()) else {
                if let Some(board) = &w.scoreboard {
                    board.set_drain();
                }
                w.state = State::Stopping;
                let _ = w.ctl.send(WorkerCtl::Term { grace });
                continue;
            };
            board.set_stop();
            w.stop_until = Some(until);
            tracing::info!(
                pool = &*self.name,
                pid = w.pid,
                index = w.index,
                "draining the worker for the stop: it finishes its requests and exits (SIGTERM in {:.0?} at the latest)",
                until.saturating_duration_since(Instant::now())
            );
            w.state = match w.state {
                // Retiring already: the earlier of its own deadline and the stop's.
                State::Draining { deadline, dumped } => State::Draining { deadline: deadline.min(until), dumped },
                _ => State::Draining { deadline: until, dumped: false },
            };
        }
        self.stopping = Some((how, done));
    }

    fn on_wake(&mut self) {
        if self.sup().mode != Mode::Static && self.removing.is_none() && self.stopping.is_none() {
            self.scale_up(false);
        }
    }

    // ------------------------------------------------------------------ periodic

    fn on_timer(&mut self) {
        let now = Instant::now();
        // Also while stopping: a direct worker's requests are waited for on its scoreboard.
        self.read_scoreboards();
        if self.stopping.is_some() {
            return;
        }
        self.check_request_timeouts();
        if now >= self.next_round {
            self.next_round = now + ROUND;
            self.round(now);
        }
    }

    /// What the direct workers serve, into the dispatcher's numbers (dispatch/direct.rs).
    fn read_scoreboards(&self) {
        for w in self.workers.iter().filter(|w| w.ready_at.is_some()) {
            observe(&self.dispatcher, w);
        }
    }

    /// A running request reached request-timeout between two ticks.
    fn on_timeout_due(&mut self) {
        self.next_timeout_at = None;
        if self.stopping.is_none() {
            self.read_scoreboards();
            self.check_request_timeouts();
        }
    }

    fn check_request_timeouts(&mut self) {
        self.next_timeout_at = None;
        let Some(timeout) = self.sup().request_timeout else { return };
        let crate::dispatch::Overdues { due: overdue, next_at } = self.dispatcher.cancel_overdue(timeout);
        self.next_timeout_at = next_at;
        let native = self.native();
        let graceful = self.sup().graceful_timeout;
        // An ASGI worker serves many requests at once: the overdue one's connection is shut
        // down (cancel_overdue), which the worker takes as "cancel that task and log its
        // coroutine stack"; the worker and its other requests go on.
        let asgi = self.cfg.interface.kind == crate::config::interface::Interface::Asgi;
        for o in overdue {
            let Some(w) = self.workers.iter_mut().find(|w| w.key == o.worker) else { continue };
            let head = format!(
                "request-timeout ({}): {} {} ran {:.1?} in worker {}",
                DurationText(timeout),
                o.method,
                o.uri,
                o.running,
                w.pid
            );
            let direct = w.scoreboard.is_some();
            let request_id = crate::dispatch::request_id_text(o.request_id, direct.then_some(w.pid));
            let request_id = request_id.as_deref().map(tracing::field::display);
            if asgi && !direct {
                tracing::error!(
                    pool = &*self.name, pid = w.pid, request_id, uri = %o.uri,
                    "{head}; answering 504 (its response cut off if it had begun), the worker cancels its task and logs its coroutine stack"
                );
                continue;
            }
            let dump = if native && !asgi && !w.stacks_dumped { "Its Python stacks follow; " } else { "" };
            let replaced = format!(
                "worker is replaced, its other requests get graceful-timeout ({}) to finish",
                DurationText(graceful)
            );
            // After a full stop, a sentence of its own.
            let the = if dump.is_empty() { "The" } else { "the" };
            if asgi {
                // A direct ASGI worker cancels its own overdue tasks: one still running well
                // past the timeout means its event loop is blocked (dispatch/direct.rs), and
                // the worker's watch already logged what blocks it.
                tracing::error!(
                    pool = &*self.name, pid = w.pid, request_id, uri = %o.uri,
                    "{head}, which did not end it: its event loop is blocked (a synchronous call in an async view?); the {replaced}"
                );
            } else if direct {
                // The worker holds the web server's connection: killing it closes it.
                tracing::error!(pool = &*self.name, pid = w.pid, request_id, uri = %o.uri, "{head}. {dump}{the} {replaced}");
            } else {
                tracing::error!(
                    pool = &*self.name, pid = w.pid, request_id, uri = %o.uri,
                    "{head}; answering 504 (its response cut off if it had begun). {dump}{the} {replaced}"
                );
            }
            if !dump.is_empty() {
                w.stacks_dumped = true;
                let _ = w.ctl.send(WorkerCtl::DumpStacks);
            }
            let reason = format!("request-timeout ({} {} ran {:.0?})", o.method, o.uri, o.running);
            match w.state {
                State::Ready => {
                    w.recycle = Some(Recycle { reason, urgent: true, hard: true });
                }
                State::Draining { .. } => w.hard = true,
                _ => {}
            }
        }
    }

    /// Requests whose client went away and that their worker did not end within the pool's
    /// abort-grace (exchange.rs): each such worker is replaced as for a request-timeout, as a
    /// retirement, not a crash (docs/supervision.md).
    fn replace_abandoning(&mut self) {
        let abandoned = self.dispatcher.take_abandoned();
        if abandoned.is_empty() {
            return;
        }
        let graceful = DurationText(self.sup().graceful_timeout);
        let grace = DurationText(self.sup().abort_grace.unwrap_or_default());
        let alone = self.active() <= 1;
        for a in abandoned {
            let Some(w) = self.workers.iter_mut().find(|w| w.key == a.worker) else { continue };
            let others = self.dispatcher.worker_view(w.key, false).map_or(0, |v| v.busy - v.abandoned);
            let when = if alone { " once the new one is ready" } else { "" };
            let next = match (w.state, others) {
                (State::Ready, 0) => format!("replacing the worker: a new one starts now, and this one is killed{when}"),
                (State::Ready, n) => format!(
                    "replacing the worker: a new one starts now, this one takes no new requests{when}, its {n} other request(s) get graceful-timeout ({graceful}) to finish, then it is killed"
                ),
                (State::Draining { .. }, n) => {
                    format!("the worker was retiring already: it is killed once its {n} other request(s) are done")
                }
                _ => "the worker is stopping already".to_owned(),
            };
            tracing::warn!(
                pool = &*self.name, pid = w.pid, request_id = %a.request_id, uri = %a.uri,
                "worker did not end an aborted request within abort-grace ({}): {} {} ran {:.1?}; {next}",
                grace, a.method, a.uri, a.running
            );
            let reason = format!("aborted request not ended ({} {} ran {:.0?})", a.method, a.uri, a.running);
            match w.state {
                State::Ready => w.recycle = Some(Recycle::after_abandoned(w.recycle.as_ref(), reason)),
                State::Draining { .. } => w.hard = true,
                _ => {}
            }
        }
    }

    /// Once a second: sample memory and CPU, apply the lifetime limits, size the pool; a
    /// changed `touch-reload` file restarts the workers.
    fn round(&mut self, now: Instant) {
        let leaving = self.removing.is_some() || self.stopping.is_some();
        if let Some(path) = self.touched.changed().filter(|_| !leaving) {
            tracing::info!(pool = &*self.name, "touch-reload: {} changed; restarting the workers", path.display());
            if self.cfg.isolation.preload {
                // New code: the new workers must fork from a template that imports it.
                self.spawner.retire_template(&self.name, "touch-reload: new workers fork from freshly imported code");
            }
            self.reconfigure(self.cfg.clone(), Reconfig::Touched);
        }
        self.spawn_rate = policy::next_spawn_rate(self.spawn_rate, self.rate_limited, self.sup().max_spawn_rate);
        self.spawn_budget = self.spawn_rate;
        self.rate_limited = false;

        let s = self.sup().clone();
        let page = self.page_size;
        let ticks = self.clock_ticks;
        let mut any_healthy = false;
        let current_gen = self.cfg_gen;
        for w in &mut self.workers {
            if !matches!(w.state, State::Ready | State::Draining { .. }) {
                continue;
            }
            if let Some((rss, cpu)) = sample(w.pid, page, ticks) {
                w.rss = Some(rss);
                w.cpu = Some(cpu);
            }
            any_healthy |= policy::resets_backoff(w.cfg_gen, current_gen, w.ready_at, now);
            if w.state != State::Ready || w.recycle.is_some() {
                continue;
            }
            let sampled = Sampled {
                ready_at: w.ready_at,
                rss: w.rss,
                cpu: w.cpu,
                lifetime_end: w.lifetime_end,
                memory_warned: w.memory_warned,
            };
            let verdict = policy::round_verdict(&s, &sampled, now);
            match verdict {
                Verdict::Memory { rss, limit } => {
                    tracing::warn!(
                        pool = &*self.name,
                        pid = w.pid,
                        rss,
                        limit,
                        "worker's resident memory {} is over memory-limit {}: recycling it",
                        Mib(rss),
                        Mib(limit)
                    );
                }
                Verdict::MemoryLater { rss, limit } => {
                    w.memory_warned = true;
                    tracing::warn!(pool = &*self.name, pid = w.pid, rss, limit, "worker's resident memory {} is over memory-limit {}; recycled once it has lived min-lifetime ({})", Mib(rss), Mib(limit), DurationText(s.min_lifetime));
                }
                Verdict::Cpu { used, limit } => {
                    tracing::warn!(
                        pool = &*self.name,
                        pid = w.pid,
                        "worker used {:.1}s of CPU time, cpu-time-limit is {}: recycling it",
                        used.as_secs_f64(),
                        DurationText(limit)
                    );
                }
                Verdict::Interval { .. } | Verdict::Keep => {}
            }
            w.recycle = verdict.recycle();
        }
        self.backoff = policy::backoff_after_round(self.backoff, any_healthy);

        if s.mode != Mode::Static && self.removing.is_none() {
            self.scale_down(now);
            self.scale_up(true);
        }
    }

    /// Dynamic / ondemand: stop workers idle for idle-timeout, keeping min-processes and,
    /// in dynamic mode, spare-processes worth of free threads.
    fn scale_down(&mut self, now: Instant) {
        let s = self.sup().clone();
        let threads = self.cfg.interface.slots(self.cfg.threads, false);
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if w.state != State::Ready || w.recycle.is_some() {
                w.idle_since = None;
                continue;
            }
            let Some(v) = self.dispatcher.worker_view(w.key, false) else { continue };
            if policy::still_idle(v.busy, v.served, w.last_served) {
                w.idle_since.get_or_insert(now);
            } else {
                w.last_served = v.served;
                w.idle_since = None;
            }
        }
        let idle: Vec<(u64, Option<Instant>)> = self
            .workers
            .iter()
            .filter(|w| w.state == State::Ready && w.recycle.is_none())
            .map(|w| (w.id, w.idle_since))
            .collect();
        for (since, id) in policy::idle_candidates(&idle, s.idle_timeout, now) {
            // Asked again for each: retiring one takes its free threads from the pool.
            let idle_slots = if s.mode == Mode::Dynamic { self.dispatcher.view().idle_slots } else { 0 };
            if !policy::may_retire_idle(&s, self.good_total(), idle_slots, threads) {
                break;
            }
            let Some(i) = self.index(id) else { continue };
            self.target = self.target.saturating_sub(1).max(s.min_processes);
            let reason = format!("idle-timeout (no request for {:.0?})", now.duration_since(since));
            self.drain(i, reason, false);
        }
        self.target = self.target.min(self.good_total().max(s.min_processes));
    }

    /// Dynamic / ondemand: start workers for requests that wait and, in dynamic mode, to
    /// keep spare-processes worth of free threads; at most the round's spawn budget.
    fn scale_up(&mut self, round: bool) {
        let s = self.sup().clone();
        let view = self.dispatcher.view();
        if s.mode == Mode::OnDemand && self.failing.is_some() {
            if policy::demand_after_failure(view.counters.rejected_unavailable, self.rejected_seen) {
                // Requests came for a pool that cannot start: that is demand to try again.
                self.rejected_seen = view.counters.rejected_unavailable;
                self.target = self.target.max(1);
            }
            return;
        }
        let sizing = Sizing {
            threads: self.cfg.interface.slots(self.cfg.threads, false),
            processes: self.cfg.processes,
            idle_slots: view.idle_slots,
            queue_now: view.queue_now,
            starting: self.workers.iter().filter(|w| w.state == State::Starting).count(),
            total: self.total(),
            good_total: self.good_total(),
            budget: self.spawn_budget,
        };
        let grow = policy::grow(&s, &sizing);
        self.rate_limited |= grow.rate_limited;
        let n = grow.start;
        if n == 0 {
            return;
        }
        self.spawn_budget -= n;
        self.target = grow.target;
        tracing::debug!(
            pool = &*self.name,
            waiting = view.queue_now,
            idle = view.idle_slots,
            round,
            "starting {n} more worker(s)"
        );
    }

    // ------------------------------------------------------------------ decisions

    /// Ready workers that take requests (including those waiting for a replacement).
    fn active(&self) -> usize {
        self.workers.iter().filter(|w| w.state == State::Ready).count()
    }

    /// Workers that count toward the pool's size: ready or starting, not retiring.
    fn total(&self) -> usize {
        self.workers.iter().filter(|w| matches!(w.state, State::Ready | State::Starting)).count()
    }

    /// Ready workers not waiting for a replacement, plus those starting.
    fn good_total(&self) -> u32 {
        self.workers
            .iter()
            .filter(|w| w.state == State::Starting || (w.state == State::Ready && w.recycle.is_none()))
            .count() as u32
    }

    fn reconcile(&mut self) {
        let now = Instant::now();
        self.progress_draining(now);
        if self.stopping.is_some() {
            return;
        }
        if let Some(deadline) = self.removing {
            let v = self.dispatcher.view();
            // An abandoned request's worker is not waited for: it is killed with the others.
            if (v.busy_slots <= v.abandoned_slots && v.queue_now == 0) || now >= deadline {
                let why = std::mem::take(&mut self.removed_why);
                let until = now + self.sup().graceful_timeout;
                self.begin_stop(Stop::Graceful, None, &why, until);
            }
            return;
        }
        let s = self.sup().clone();
        self.replace_abandoning();

        // Flags from the dispatcher, and outdated workers after a reload.
        for w in &mut self.workers {
            if w.state != State::Ready || w.recycle.is_some() {
                continue;
            }
            let outdated =
                (w.cfg_gen < self.cfg_gen).then(|| self.rollout.for_worker(w.cfg_gen, self.config_changed_gen));
            let reached = if outdated.is_some() || w.max_requests == 0 {
                None
            } else {
                self.dispatcher.worker_view(w.key, false).filter(|v| v.max_requests_reached).map(|v| v.served)
            };
            w.recycle = policy::flagged(&s, outdated, reached, w.ready_at, now);
        }

        let want = self.want() as usize;
        // Per-worker load is read only when a static pool has more workers than wanted.
        let shrinking = s.mode == Mode::Static && self.active() > want;
        let roster = Roster {
            mode: s.mode,
            want,
            failing: self.failing.is_some(),
            next_spawn_at: self.next_spawn_at,
            members: self
                .workers
                .iter()
                .map(|w| Member {
                    id: w.id,
                    state: w.state,
                    spawned_at: w.spawned_at,
                    recycle_urgent: w.recycle.as_ref().map(|r| r.urgent),
                    busy: match w.state {
                        State::Ready if shrinking => {
                            self.dispatcher.worker_view(w.key, false).map(|v| v.busy).unwrap_or(0)
                        }
                        _ => 0,
                    },
                })
                .collect(),
        };
        for action in policy::plan(&roster, now) {
            match action {
                Action::Retire(id) => {
                    let Some(i) = self.index(id) else { continue };
                    let Some(r) = self.workers[i].recycle.take() else { continue };
                    self.workers[i].recycled = true;
                    self.drain(i, r.reason, r.hard);
                }
                Action::Shrink { id, want } => {
                    if let Some(i) = self.index(id) {
                        self.drain(i, format!("the pool runs {want} processes now"), false);
                    }
                }
                Action::Spawn(n) => {
                    for _ in 0..n {
                        self.spawn(now);
                    }
                }
            }
        }

        // 503 at once while the app cannot start and nothing serves.
        let active = self.active();
        let why = match &self.failing {
            Some(f) if active == 0 => {
                Some(Arc::from(format!("pool {} cannot start its app ({f}); retrying with backoff", self.name)))
            }
            _ => None,
        };
        self.set_unavailable(why);
        let total = self.total() as u32;
        let at_max = total >= self.cfg.processes;
        let wake_on_queue = s.mode != Mode::Static && (!at_max || self.failing.is_some());
        if self.sizing_set != Some((at_max, wake_on_queue)) {
            self.sizing_set = Some((at_max, wake_on_queue));
            self.dispatcher.set_sizing(at_max, wake_on_queue);
        }
    }

    fn set_unavailable(&mut self, why: Option<Arc<str>>) {
        if self.unavailable_set.as_deref() != why.as_deref() {
            self.unavailable_set = why.clone();
            self.dispatcher.set_unavailable(why);
        }
    }

    /// Take no new requests to worker `i`; stop it once its in-flight requests are done.
    fn drain(&mut self, i: usize, reason: String, hard: bool) {
        let graceful = self.sup().graceful_timeout;
        let grace = self.term_grace();
        let w = &mut self.workers[i];
        w.recycle = None;
        w.hard |= hard;
        w.state = State::Draining { deadline: Instant::now() + graceful, dumped: false };
        let open = self.dispatcher.drain_worker(w.key);
        if let Some(board) = &w.scoreboard {
            // It finishes its requests and exits by itself.
            board.set_drain();
        }
        // What it served by now: a worker due for max-requests serves on until its
        // replacement is ready, so its reason's count may be smaller.
        let served = self.dispatcher.worker_view(w.key, false).map(|v| v.served);
        tracing::info!(
            pool = &*self.name,
            pid = w.pid,
            index = w.index,
            in_flight = open,
            served,
            "retiring the worker: {reason}; it takes no new requests (graceful-timeout {})",
            DurationText(graceful)
        );
        w.exit_reason = Some(reason);
        if open == 0 && w.scoreboard.is_none() {
            finish(w, grace);
        }
    }

    fn progress_draining(&mut self, now: Instant) {
        let native = self.native();
        let grace = self.term_grace();
        for w in &mut self.workers {
            let State::Draining { deadline, dumped } = w.state else { continue };
            let view = self.dispatcher.worker_view(w.key, true);
            // An abandoned request (its client gone) is not waited for.
            let mut open = view.as_ref().map(|v| v.open - v.abandoned).unwrap_or(0);
            if w.scoreboard.is_some() {
                // Nor a direct worker's timed-out one: its thread is stuck, the process goes.
                open = view.as_ref().map_or(0, |v| v.current.iter().filter(|c| !c.abandoned && !c.timed_out).count())
                    as u32;
            }
            // A direct worker retired softly exits by itself; a hard retirement kills it
            // once its other requests are done.
            let waits_for_exit = w.scoreboard.is_some() && !w.hard;
            match policy::drain_step((open, waits_for_exit), deadline, dumped, native, now) {
                DrainStep::Wait => {}
                DrainStep::Finish => finish(w, grace),
                DrainStep::DumpStacks { until } => {
                    // The bridge's graceful stop, when its deadline is the one that passed.
                    let (limit, then) = match w.stop_until {
                        Some(u) if u <= deadline => ("shutdown-timeout", "stopped (SIGTERM, SIGKILL 10s later)"),
                        _ => ("graceful-timeout", "killed"),
                    };
                    let direct_pid = w.scoreboard.is_some().then_some(w.pid);
                    let current: Vec<String> = view
                        .map(|v| {
                            v.current
                                .iter()
                                .filter(|c| !c.abandoned)
                                .map(|c| {
                                    let ran = now.duration_since(c.since);
                                    match crate::dispatch::request_id_text(c.request_id, direct_pid) {
                                        Some(id) => format!("{} {} ({ran:.0?}, request {id})", c.method, c.uri),
                                        None => format!("{} {} ({ran:.0?})", c.method, c.uri),
                                    }
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    if w.scoreboard.is_some() && open == 0 {
                        tracing::warn!(
                            pool = &*self.name, pid = w.pid,
                            "worker did not exit within {limit} after it was told to drain; its Python stacks follow, then it is {then}"
                        );
                    } else {
                        tracing::warn!(
                            pool = &*self.name, pid = w.pid,
                            "worker did not finish {open} request(s) within {limit}: {}; its Python stacks follow, then it is {then}",
                            current.join(", ")
                        );
                    }
                    let _ = w.ctl.send(WorkerCtl::DumpStacks);
                    w.state = State::Draining { deadline: until, dumped: true };
                }
                DrainStep::Kill => {
                    if !native {
                        tracing::warn!(
                            pool = &*self.name,
                            pid = w.pid,
                            "worker did not finish {open} request(s) within graceful-timeout; killing it"
                        );
                    }
                    // The bridge's stop ends with SIGTERM, as for every other worker.
                    w.hard |= w.stop_until.is_none();
                    finish(w, grace);
                }
            }
        }
    }

    /// Start one worker (its task spawns it, or forks it from the pool's template).
    fn spawn(&mut self, now: Instant) {
        // A replacement takes the index of the worker it replaces.
        let index = match self
            .workers
            .iter_mut()
            .filter(|w| !w.replaced && (w.recycled || w.state == State::Ready && w.recycle.is_some()))
            .min_by_key(|w| (w.recycle.as_ref().is_some_and(|r| !r.urgent), w.spawned_at))
        {
            Some(w) => {
                w.replaced = true;
                w.index
            }
            None => {
                (0..).find(|n| !self.workers.iter().any(|w| w.index == *n && w.state != State::Stopping)).unwrap_or(0)
            }
        };
        let id = self.spawner.next_worker_id();
        let socket = self.socket_dir.join(format!("{index}-{id}.sock"));
        let max_requests = policy::max_requests_for(&self.cfg.supervision, &mut self.spread);
        let key = self.dispatcher.add_worker(max_requests);
        let scoreboard = self.cfg.direct.as_ref().and_then(|_| {
            crate::scoreboard::Scoreboard::new(self.cfg.interface.most_slots(self.cfg.threads))
                .map_err(|e| tracing::error!(pool = &*self.name, "cannot make a direct worker's scoreboard: {e}"))
                .ok()
                .map(Arc::new)
        });
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let task = WorkerTask {
            id,
            pool: self.name.clone(),
            config: self.cfg.clone(),
            spawner: self.spawner.clone(),
            socket,
            key,
            index,
            max_requests,
            dispatcher: self.dispatcher.clone(),
            native: self.native(),
            last_failure: self.last_failure.clone(),
            app_lines: self.app_lines.clone(),
            events: self.events_tx.clone(),
            scoreboard: scoreboard.clone(),
        };
        tokio::spawn(worker::run(task, ctl_rx));
        self.workers.push(Worker {
            id,
            index,
            pid: 0,
            key,
            ctl: ctl_tx,
            cfg_gen: self.cfg_gen,
            state: State::Starting,
            spawned_at: now,
            ready_at: None,
            recycle: None,
            replaced: false,
            recycled: false,
            exit_reason: None,
            hard: false,
            max_requests,
            lifetime_end: None,
            last_served: 0,
            served: 0,
            idle_since: None,
            rss: None,
            cpu: None,
            memory_warned: false,
            stacks_dumped: false,
            scoreboard,
            stop_until: None,
        });
    }

    /// The numbers the status page shows (supervise/stats.rs).
    fn publish(&self) {
        let now = Instant::now();
        let s = self.sup();
        let state = policy::pool_state(&PoolState {
            stopping: self.stopping.is_some(),
            removing: self.removing.is_some(),
            failing: self.failing.is_some(),
            active: self.active(),
            outdated: self.workers.iter().filter(|w| w.cfg_gen < self.cfg_gen).count(),
            total: self.total(),
            ondemand: s.mode == Mode::OnDemand,
        });
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let h = self.history.get(&w.index).cloned().unwrap_or_default();
                WorkerInfo {
                    index: w.index,
                    pid: w.pid,
                    key: w.key,
                    state: match w.state {
                        State::Starting => "starting",
                        State::Ready => "ready",
                        State::Draining { .. } => "draining",
                        State::Stopping => "stopping",
                    },
                    spawn_time: super::stats::unix_at(w.spawned_at),
                    ready_time: w.ready_at.map(super::stats::unix_at),
                    rss_bytes: w.rss,
                    cpu_seconds: w.cpu.map(|c| c.as_secs_f64()),
                    max_requests: (w.max_requests > 0).then_some(w.max_requests),
                    recycle_time: w.lifetime_end.map(super::stats::unix_at),
                    recycle_pending: w.recycle.as_ref().map(|r| r.reason.clone()),
                    retiring_reason: w.exit_reason.clone(),
                    processes_at_index: h.spawns,
                    last_restart_reason: h.last_reason,
                    outdated: w.cfg_gen < self.cfg_gen,
                    accepting: w.scoreboard.as_ref().is_some_and(|b| b.accepting() > 0),
                }
            })
            .collect();
        let view = ManagerView {
            mode: s.mode.as_str(),
            state,
            threads: self.cfg.interface.slots(self.cfg.threads, false),
            min_processes: s.min_processes,
            max_processes: self.cfg.processes,
            target_processes: self.want(),
            failing: self.failing.clone(),
            reconfigures: self.reconfigures,
            next_attempt_in: self.next_spawn_at.map(|t| t.saturating_duration_since(now).as_secs_f64()),
            spawns: self.spawns,
            exits: self.exits,
            crashes: self.crashes,
            restarts: self.restarts.iter().cloned().collect(),
            workers,
        };
        *self.control.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    fn finished(&self) -> bool {
        self.stopping.is_some() && self.workers.is_empty()
    }
}

/// The requests a dead worker was serving, for its exit line: the first few only (an
/// ASGI worker may hold hundreds).
/// `lost`, the requests a worker died serving, for its crash line; `direct_pid`: a direct
/// worker's, whose requests carry its own ids (`<pid>-<n>`).
fn requests_line(lost: &[CurrentRequest], direct_pid: Option<u32>) -> String {
    let each = lost.iter().map(|r| match crate::dispatch::request_id_text(r.request_id, direct_pid) {
        None => format!("{} {}", r.method, r.uri),
        Some(id) => format!("{} {} (request {id})", r.method, r.uri),
    });
    policy::list_at_most(each, lost.len(), policy::LISTED_REQUESTS)
}

/// A direct worker's scoreboard now, into the dispatcher's numbers.
fn observe(dispatcher: &Dispatcher<SlotConn>, w: &Worker) {
    if let Some(board) = &w.scoreboard {
        let seen = crate::dispatch::DirectObserved {
            threads: board.snapshot(),
            responses: board.responses(),
            durations: board.durations(),
            timeouts: board.timeouts(),
            moved: board.moved(),
        };
        dispatcher.observe_direct(w.key, &seen, crate::scoreboard::monotonic_now_ns());
    }
}

/// The worker has no request left: SIGTERM it, SIGKILL after `grace` (at once after a
/// request-timeout).
fn finish(w: &mut Worker, grace: Duration) {
    if w.state == State::Stopping {
        return;
    }
    w.state = State::Stopping;
    let _ = w.ctl.send(if w.hard { WorkerCtl::Kill } else { WorkerCtl::Term { grace } });
}

/// Run the manager until it is stopped (or its pool removed and drained).
pub(crate) async fn run(
    mut m: Manager,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut cmds: mpsc::UnboundedReceiver<ManagerCmd>,
) {
    let dispatcher = m.dispatcher.clone();
    let mut next_tick = Instant::now() + m.tick_period();
    loop {
        m.reconcile();
        m.publish();
        if m.finished() {
            break;
        }
        let wake_at = [m.next_spawn_at, m.next_timeout_at].into_iter().flatten().fold(next_tick, Instant::min);
        let what = tokio::select! {
            // Commands first: an instance rolled to its account as it is now (instances.rs)
            // sends its new configuration just before the request that wakes the manager to
            // start a worker.
            biased;
            cmd = cmds.recv() => Wake::Cmd(cmd),
            ev = events.recv() => Wake::Event(ev),
            _ = dispatcher.wake.notified() => Wake::Dispatcher,
            _ = tokio::time::sleep_until(wake_at.into()) => Wake::Timer,
        };
        match what {
            Wake::Event(Some(ev)) => m.on_event(ev),
            // The manager holds a sender itself: never None.
            Wake::Event(None) => {}
            Wake::Cmd(Some(cmd)) => m.on_cmd(cmd),
            Wake::Cmd(None) => {
                if m.stopping.is_none() {
                    m.begin_stop(Stop::Fast, None, "the bridge is stopping", Instant::now());
                }
            }
            Wake::Dispatcher => m.on_wake(),
            Wake::Timer => {
                if m.next_spawn_at.is_some_and(|t| Instant::now() >= t) {
                    m.next_spawn_at = None;
                }
                let now = Instant::now();
                if now >= next_tick {
                    next_tick = now + m.tick_period();
                    m.on_timer();
                } else if m.next_timeout_at.is_some_and(|t| now >= t) {
                    m.on_timeout_due();
                }
            }
        }
    }
    if let Some((_, Some(done))) = m.stopping.take() {
        let _ = done.send(());
    }
    tracing::debug!(pool = &*m.name, "pool manager stopped");
}

/// Whether a new configuration changes what a worker process is (its command line,
/// environment, identity, threads, preload): then the pool restarts its workers. Sizes,
/// queue, timeouts, recycling limits and the bridge-side keys (slowlog-timeout, max-body,
/// unknown-length-body, error-pages) and ready-check (for workers started from then on)
/// apply without a restart; a direct ASGI pool's request-timeout does not (its workers
/// apply it).
pub(crate) fn needs_restart(old: &config::Pool, new: &config::Pool) -> bool {
    let neutral = |p: &config::Pool| {
        let mut p = p.clone();
        // Workers only see whether there are several processes (wsgi.multiprocess).
        p.processes = p.processes.min(2);
        p.queue_size = 0;
        // Read by the bridge per request, not by workers.
        p.slowlog_timeout = None;
        p.max_body = None;
        p.unknown_length_body = config::UnknownLengthBody::Stream;
        // Asked of workers started from then on.
        p.ready_check = None;
        // Only a hint's words at a worker's start (FCGIBRIDGE_LISTENERS).
        p.listened_at = Vec::new();
        // A direct listener renamed is the same socket (found by the pool's name), and its
        // workers are not told the listener's name.
        if let Some(d) = p.direct.as_mut() {
            d.listener = String::new();
        }
        p.error_pages = Default::default();
        // Looked at by the manager.
        p.touch_reload = Vec::new();
        p.queue_timeout = Duration::ZERO;
        p.startup_timeout = Duration::ZERO;
        let cpu = p.supervision.cpu_time_limit;
        let graceful = p.supervision.graceful_timeout;
        let request_timeout = p.supervision.request_timeout;
        p.supervision = config::supervision::Supervision { cpu_time_limit: cpu, ..Default::default() };
        // Applied at spawn: the CPU limit (RLIMIT_CPU, with graceful-timeout in the hard
        // limit), and an ASGI worker's wait for its tasks at stop (FCGIBRIDGE_GRACEFUL_TIMEOUT).
        let asgi = p.interface.kind != config::interface::Interface::Wsgi;
        if cpu.is_some() || asgi {
            p.supervision.graceful_timeout = graceful;
        }
        // A direct worker is given request-timeout at spawn (FCGIBRIDGE_REQUEST_TIMEOUT: an
        // ASGI one applies it itself).
        if p.direct.is_some() && asgi {
            p.supervision.request_timeout = request_timeout;
        }
        p
    };
    neutral(old) != neutral(new)
}

/// Resident memory (bytes) and CPU time (user + system) of a process, from /proc.
pub(crate) fn sample(pid: u32, page_size: u64, clock_ticks: u64) -> Option<(u64, Duration)> {
    let stat = super::proc_stat::ProcStat::of(pid)?;
    Some((stat.rss_pages * page_size, stat.cpu_time(clock_ticks)))
}

/// A duration as the configuration writes it.
struct DurationText(Duration);

impl std::fmt::Display for DurationText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::config::units::DurationDisplay(self.0).fmt(f)
    }
}

/// SIGKILL what a worker left behind (every worker leads a process group): the app's
/// children would otherwise run on outside every limit and recycling, holding the worker's
/// sockets. The group's id stays reserved while it has members, so no stranger is hit.
/// One that called setsid() has left the group (and its session): the daemon, a child
/// subreaper, has just adopted it, and the look asked for here kills it
/// (supervise/orphans.rs); the members killed now are reaped there too.
fn end_left_behind(pool: &str, pid: u32) {
    super::orphans::look();
    let Some(pgid) = i32::try_from(pid).ok().filter(|&p| p > 1) else { return };
    if kill_group(pgid) {
        tracing::warn!(pool, pid, "the worker left processes behind in its process group; killed them");
    }
}

/// SIGKILL process group `pgid`; whether it had a process in it that had not exited. A
/// zombie stays in its group until reaped, so the group kill alone "succeeds" for a
/// worker that is just that: a preload template's fork whose template died, waiting for
/// the daemon (its subreaper now) to reap it. That is nothing left behind.
fn kill_group(pgid: i32) -> bool {
    use nix::sys::signal::{killpg, Signal};
    let group = nix::unistd::Pid::from_raw(pgid);
    // Signal 0 only asks whether the group has a member: mostly it has none, and /proc is
    // not read.
    if killpg(group, None).is_err() {
        return false;
    }
    let live = group_has_live_member(pgid);
    killpg(group, Signal::SIGKILL).is_ok() && live
}

/// Whether a process in group `pgid` has not exited (its /proc stat state is not `Z`).
fn group_has_live_member(pgid: i32) -> bool {
    let Some(pids) = super::proc_stat::all_pids() else { return true };
    pids.into_iter().filter_map(super::proc_stat::ProcStat::of).any(|s| s.group == pgid && s.state != b'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_can_be_sampled() {
        let (rss, _) = sample(std::process::id(), 4096, 100).expect("/proc/self/stat");
        assert!(rss > 0);
    }

    /// A child of this test leading a process group of its own, as a worker does.
    fn group_leader(program: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh").args(["-c", program]).process_group(0).spawn().expect("sh")
    }

    /// A worker that is only a zombie (a preload template's fork whose template died: the
    /// daemon, its subreaper, has not reaped it yet) left nothing behind: no warning for it.
    #[test]
    fn a_zombie_leader_alone_is_nothing_left_behind() {
        let mut child = group_leader("exit 0");
        let pid = i32::try_from(child.id()).expect("pid");
        let zombie = std::time::Instant::now() + Duration::from_secs(30);
        while super::super::proc_stat::ProcStat::of(pid).is_none_or(|s| s.state != b'Z') {
            assert!(std::time::Instant::now() < zombie, "the child never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!kill_group(pid));
        child.wait().expect("reaped");

        let mut child = group_leader("sleep 60 & wait");
        let pid = i32::try_from(child.id()).expect("pid");
        assert!(kill_group(pid), "a live process in the group is something left behind");
        assert!(child.wait().expect("reaped").code().is_none(), "killed");
    }

    #[test]
    fn what_restarts_workers_on_reload() {
        let base = config::Pool { processes: 2, threads: 4, queue_size: 10, ..config::Pool::for_tests() };
        let with = |f: &dyn Fn(&mut config::Pool)| {
            let mut p = base.clone();
            f(&mut p);
            needs_restart(&base, &p)
        };
        assert!(!with(&|p| p.processes = 8));
        assert!(with(&|p| p.processes = 1), "wsgi.multiprocess changes");
        assert!(!with(&|p| p.queue_size = 99));
        assert!(!with(&|p| p.supervision.max_requests = Some(5)));
        assert!(!with(&|p| p.supervision.mode = Mode::Dynamic));
        assert!(!with(&|p| p.max_body = Some(1)));
        assert!(!with(&|p| p.unknown_length_body = config::UnknownLengthBody::Buffer));
        assert!(!with(&|p| p.ready_check = config::ReadyCheck::parse("/up").ok()));
        assert!(!with(&|p| p.listened_at = vec!["127.0.0.1:4000".into()]), "a hint at a worker's start only");
        assert!(with(&|p| p.threads = 2));
        assert!(with(&|p| {
            p.env.insert("A".into(), "1".into());
        }));
        assert!(with(&|p| p.supervision.cpu_time_limit = Some(Duration::from_secs(9))));
        assert!(with(&|p| p.isolation.rlimit_as = Some(1 << 30)), "set before exec");
        assert!(with(&|p| p.app = App::Module { module: "y".into(), callable: "application".into() }));
        assert!(!with(&|p| p.supervision.request_timeout = Some(Duration::from_secs(9))), "the bridge's");
        let direct_asgi = config::Pool {
            interface: config::interface::InterfaceConfig {
                kind: config::interface::Interface::Asgi,
                ..Default::default()
            },
            direct: Some(config::DirectServe {
                listener: "l".into(),
                mount: None,
                keep_path_info: false,
                header_timeout: Duration::from_secs(60),
                max_redirects: 10,
            }),
            ..base.clone()
        };
        let mut longer = direct_asgi.clone();
        longer.supervision.request_timeout = Some(Duration::from_secs(9));
        assert!(needs_restart(&direct_asgi, &longer), "a direct ASGI worker applies it itself");
        // Its listener renamed: the same socket, found by the pool's name; a new mount is
        // the workers' to apply.
        let direct = |f: &dyn Fn(&mut config::DirectServe)| {
            let mut p = direct_asgi.clone();
            p.direct.as_mut().map(f);
            needs_restart(&direct_asgi, &p)
        };
        assert!(!direct(&|d| d.listener = "renamed".into()));
        assert!(direct(&|d| d.mount = Some("/shop".into())));
    }
}

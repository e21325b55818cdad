//! The live numbers of every pool and worker process, for the status page.
//!
//! # For the status renderers
//!
//! Call [`snapshot()`] (all pools of the running daemon, following reloads) or
//! [`pool_snapshot()`] (one [`PoolRuntime`]) and render the returned structs: they are
//! plain data, `Serialize`, with no reference to anything live, so JSON is just
//! `serde_json::to_string(&snapshot())`. Times are Unix seconds (`f64`), durations
//! seconds (`f64`), sizes bytes. Taking a snapshot locks each pool's dispatcher briefly (a
//! few microseconds per pool); nothing on the request path waits for a renderer.
//!
//! Where the numbers come from, and what they cost:
//! - request counters, queue, slots, current requests: fields of the pool's dispatcher
//!   (`dispatch/mod.rs`), updated under the lock `acquire` and `release` already take —
//!   no extra lock, atomic or system call per request. The current request's method and
//!   URI are copied into a fixed 240-byte buffer per connection (longer URIs are cut, as
//!   PHP-FPM's scoreboard does).
//! - per-worker process state, RSS and CPU time (sampled from `/proc/<pid>/stat` once a
//!   second by the pool manager), spawns and restart reasons: published by the pool's
//!   manager (`supervise/manager.rs`) after each change.
//!
//! Names follow PHP-FPM's status page where one exists:
//!
//! | here | PHP-FPM | uWSGI stats |
//! |---|---|---|
//! | `accepted_requests` | accepted conn | requests |
//! | `queue_length` / `max_queue_length` | listen queue / max listen queue | listen_queue |
//! | `idle_workers` / `busy_workers` / `total_workers` | idle / active / total processes | workers[].status |
//! | `max_children_reached` | max children reached | — |
//! | `workers[].requests` | requests (per process) | workers[].requests |
//! | `workers[].rss_bytes` | — | workers[].rss |
//! | `workers[].current[]` | request URI, request method, request duration | — |
//! | `spawns` / `workers[].processes_at_index` | — | respawn_count |
//! | `request_timeouts` | — | harakiri_count |
// The renderers (status/) are the readers; some fields are for them only.
#![allow(dead_code)]

use super::PoolRuntime;
use crate::dispatch::WorkerKey;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// The daemon and all its pools.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BridgeStats {
    pub version: &'static str,
    pub pid: u32,
    pub start_time: f64,
    pub uptime_seconds: f64,
    /// Successful reloads since start.
    pub reloads: u64,
    pub last_reload: Option<ReloadRecord>,
    pub pools: Vec<PoolStats>,
}

/// The outcome of the last reload (SIGHUP / `fcgibridge reload`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReloadRecord {
    pub time: f64,
    pub ok: bool,
    /// What changed, or why the new configuration was refused.
    pub message: String,
}

/// One pool.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoolStats {
    pub name: String,
    /// The pool's name as its runtime holds it: whose counters in status/track.rs are its.
    #[serde(skip)]
    pub incarnation: Arc<str>,
    /// Unix time the daemon made the pool.
    pub start_time: f64,
    /// "static", "dynamic" or "ondemand".
    pub mode: &'static str,
    /// "starting", "running", "idle" (ondemand, no process), "failing" (the app cannot
    /// start; requests get 503 at once), "rollout-failing" (a rolling restart's new workers
    /// cannot start; the previous ones keep serving), "removing" (gone from the
    /// configuration, finishing its requests), "stopping".
    pub state: &'static str,
    /// While the pool answers 503 at once: why.
    pub unavailable_reason: Option<String>,
    /// The last start-up error while no worker has become ready since.
    pub start_error: Option<String>,
    /// Seconds until the next start attempt (backoff), when one is scheduled.
    pub next_start_in_seconds: Option<f64>,
    /// Threads of a WSGI worker (None for an ASGI pool).
    pub threads_per_process: Option<u32>,
    /// Requests in flight per ASGI worker (`concurrency`; None for a WSGI pool, both for
    /// `interface: auto`, where each worker reports which it serves).
    pub concurrency: Option<u32>,
    pub min_processes: u32,
    pub max_processes: u32,
    /// How many the manager wants now (static: processes; dynamic/ondemand: moves).
    pub target_processes: u32,
    /// Processes by state.
    pub total_workers: usize,
    pub starting_workers: usize,
    /// Ready, taking requests, with no request now / with at least one.
    pub idle_workers: usize,
    pub busy_workers: usize,
    /// Taking no new requests, finishing their in-flight ones (recycling, reload, scale-down).
    pub draining_workers: usize,
    /// Worker connections (threads) free / serving a request now.
    pub idle_slots: usize,
    pub busy_slots: usize,
    /// Its workers accept a `direct` listener's connections: the bridge queues none of
    /// its requests (the queue fields stay 0).
    pub direct: bool,
    pub queue_length: usize,
    pub max_queue_length: usize,
    pub queue_size: usize,
    pub queue_timeout_seconds: f64,
    /// Requests that reached the pool.
    pub accepted_requests: u64,
    /// Responses by status class its direct workers sent (their scoreboards); the status
    /// page adds them to what passed the bridge (status/track.rs).
    #[serde(skip)]
    pub direct_responses: crate::status::latency::Classes,
    /// How long its direct workers' requests ran (their scoreboards), likewise.
    #[serde(skip)]
    pub direct_latency: crate::status::latency::Histogram,
    /// Requests a worker finished (any status).
    pub served_requests: u64,
    /// Requests that had to wait while the pool ran its most processes.
    pub max_children_reached: u64,
    pub rejected_queue_full: u64,
    pub rejected_queue_timeout: u64,
    pub rejected_unavailable: u64,
    pub request_timeouts: u64,
    /// Requests piped behind a worker connection's current request / taken back from it.
    pub piped_requests: u64,
    pub withdrawn_requests: u64,
    /// Kept connections its direct workers moved between them (docs/direct.md).
    pub moved_connections: u64,
    /// Worker processes started since the pool started.
    pub spawns: u64,
    /// Worker processes gone since the pool started (any reason).
    pub worker_exits: u64,
    /// Of those, the ones that exited unasked or failed to start.
    pub worker_crashes: u64,
    /// The most recent worker exits, oldest first (at most 50).
    pub restarts: Vec<RestartRecord>,
    pub workers: Vec<WorkerStats>,
    /// Set for an instance of a pool template (supervise/instances.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<super::instances::InstanceStats>,
}

/// One worker process.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkerStats {
    pub pid: u32,
    /// Its place in the pool (a replacement takes the number of the worker it replaces).
    pub index: u32,
    /// "starting", "idle", "busy", "draining", "stopping".
    pub state: &'static str,
    /// Requests it finished.
    pub requests: u64,
    pub busy_slots: u32,
    pub idle_slots: u32,
    pub current: Vec<CurrentRequestStats>,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub spawn_time: f64,
    pub ready_time: Option<f64>,
    /// Processes started at its index (this one included).
    pub processes_at_index: u64,
    /// Why the previous process at its index went.
    pub last_restart_reason: Option<String>,
    /// Why it is draining or stopping.
    pub retiring_reason: Option<String>,
    /// It will be retired once its replacement is ready: why.
    pub recycle_pending: Option<String>,
    /// Its max-requests threshold (jitter included).
    pub max_requests: Option<u64>,
    /// When restart-interval retires it.
    pub recycle_time: Option<f64>,
    /// Started with a configuration that a reload has replaced.
    pub outdated: bool,
}

/// A request being served.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CurrentRequestStats {
    pub request_id: u64,
    pub method: String,
    pub uri: String,
    /// When the worker got it.
    pub start_time: f64,
    pub duration_seconds: f64,
    /// Answered 504 by request-timeout; its worker is being replaced.
    pub timed_out: bool,
    /// Its client went away and the worker did not end it within abort-grace; its worker
    /// is being replaced.
    pub abandoned: bool,
}

impl CurrentRequestStats {
    /// The dispatcher's request `c` as it is at `now`.
    fn of(c: crate::dispatch::CurrentRequest, now: Instant) -> Self {
        Self {
            request_id: c.request_id,
            method: c.method,
            uri: c.uri,
            start_time: unix_at(c.since),
            duration_seconds: now.saturating_duration_since(c.since).as_secs_f64(),
            timed_out: c.timed_out,
            abandoned: c.abandoned,
        }
    }
}

/// A worker process that went.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RestartRecord {
    pub time: f64,
    /// The index of the worker that went.
    pub index: u32,
    pub pid: u32,
    /// e.g. "max-requests (50 served)", "memory-limit (RSS 300MiB > 256MiB)",
    /// "request-timeout (GET /slow ran 30s)", "reload (configuration changed)",
    /// "idle-timeout (no request for 10s)", "exited unexpectedly: killed by signal 9 (SIGKILL)",
    /// "failed to start: ModuleNotFoundError: No module named 'x'".
    pub reason: String,
    pub requests: u64,
    pub lifetime_seconds: f64,
}

/// What a pool manager publishes (read by [`pool_snapshot`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct ManagerView {
    pub mode: &'static str,
    pub state: &'static str,
    pub threads: u32,
    pub min_processes: u32,
    pub max_processes: u32,
    pub target_processes: u32,
    pub failing: Option<String>,
    /// Reconfigure commands the manager has taken in (see `PoolControl::reconfigures_sent`).
    pub reconfigures: u64,
    pub next_attempt_in: Option<f64>,
    pub spawns: u64,
    pub exits: u64,
    pub crashes: u64,
    pub restarts: Vec<RestartRecord>,
    pub workers: Vec<WorkerInfo>,
}

/// A worker as its manager knows it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub index: u32,
    pub pid: u32,
    pub key: WorkerKey,
    pub state: &'static str,
    pub spawn_time: f64,
    pub ready_time: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub max_requests: Option<u64>,
    pub recycle_time: Option<f64>,
    pub recycle_pending: Option<String>,
    pub retiring_reason: Option<String>,
    /// Processes started at its index (this one included).
    pub processes_at_index: u64,
    pub last_restart_reason: Option<String>,
    pub outdated: bool,
    /// A direct worker whose threads may still accept a connection (its scoreboard's
    /// `accepting`): retired or not, it may still serve a new request.
    pub accepting: bool,
}

/// One pool now.
pub(crate) fn pool_snapshot(pool: &PoolRuntime) -> PoolStats {
    let mv = pool.control.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let dv = pool.dispatcher.view();
    let now = Instant::now();
    let mut workers = Vec::with_capacity(mv.workers.len());
    let (mut starting, mut idle_w, mut busy_w, mut draining) = (0, 0, 0, 0);
    for w in &mv.workers {
        let v = pool.dispatcher.worker_view(w.key, true);
        let (served, busy, open, current) = match v {
            Some(v) => (v.served, v.busy, v.open, v.current),
            None => (0, 0, 0, Vec::new()),
        };
        let state = match w.state {
            "ready" if busy > 0 => "busy",
            "ready" => "idle",
            other => other,
        };
        match state {
            "starting" => starting += 1,
            "idle" => idle_w += 1,
            "busy" => busy_w += 1,
            _ => draining += 1,
        }
        workers.push(WorkerStats {
            pid: w.pid,
            index: w.index,
            state,
            requests: served,
            busy_slots: busy,
            idle_slots: open.saturating_sub(busy),
            current: current.into_iter().map(|c| CurrentRequestStats::of(c, now)).collect(),
            rss_bytes: w.rss_bytes,
            cpu_seconds: w.cpu_seconds,
            spawn_time: w.spawn_time,
            ready_time: w.ready_time,
            processes_at_index: w.processes_at_index,
            last_restart_reason: w.last_restart_reason.clone(),
            retiring_reason: w.retiring_reason.clone(),
            recycle_pending: w.recycle_pending.clone(),
            max_requests: w.max_requests,
            recycle_time: w.recycle_time,
            outdated: w.outdated,
        });
    }
    workers.sort_by_key(|w| (w.index, w.spawn_time as u64));
    let c = dv.counters;
    PoolStats {
        instance: None,
        name: pool.name.to_string(),
        incarnation: pool.name.clone(),
        start_time: pool.control.start_time,
        mode: if mv.mode.is_empty() { pool.config.supervision.mode.as_str() } else { mv.mode },
        state: if mv.state.is_empty() { "starting" } else { mv.state },
        unavailable_reason: dv.unavailable.map(|r| r.to_string()),
        start_error: mv.failing,
        next_start_in_seconds: mv.next_attempt_in,
        threads_per_process: pool.config.interface.shows_threads().then_some(pool.config.threads),
        concurrency: (pool.config.interface.kind != crate::config::interface::Interface::Wsgi)
            .then_some(pool.config.interface.concurrency),
        min_processes: match pool.config.supervision.mode {
            crate::config::supervision::Mode::Static => pool.config.processes,
            _ => pool.config.supervision.min_processes,
        },
        max_processes: pool.config.processes,
        target_processes: mv.target_processes,
        total_workers: workers.len(),
        starting_workers: starting,
        idle_workers: idle_w,
        busy_workers: busy_w,
        draining_workers: draining,
        idle_slots: dv.idle_slots,
        busy_slots: dv.busy_slots,
        direct: pool.config.direct.is_some(),
        queue_length: dv.queue_now,
        max_queue_length: c.max_queue,
        // A direct pool's requests never enter the bridge's queue: none of its size applies.
        queue_size: if pool.config.direct.is_some() { 0 } else { dv.queue_size },
        queue_timeout_seconds: dv.queue_timeout.as_secs_f64(),
        accepted_requests: c.accepted,
        direct_responses: c.direct_responses,
        direct_latency: c.direct_latency,
        served_requests: c.served,
        max_children_reached: c.max_reached,
        rejected_queue_full: c.rejected_queue_full,
        rejected_queue_timeout: c.rejected_queue_timeout,
        rejected_unavailable: c.rejected_unavailable,
        request_timeouts: c.request_timeouts,
        piped_requests: c.piped,
        withdrawn_requests: c.withdrawn,
        moved_connections: c.moved_connections,
        spawns: mv.spawns,
        worker_exits: mv.exits,
        worker_crashes: mv.crashes,
        restarts: mv.restarts,
        workers,
    }
}

struct BoardState {
    pools: Vec<Arc<PoolRuntime>>,
    reloads: u64,
    last_reload: Option<ReloadRecord>,
}

/// The daemon's pools as the status sees them, and its reloads (held by the daemon's
/// registry, registry.rs).
pub(crate) struct Board {
    state: Mutex<BoardState>,
    /// The pool templates and their live instances (supervise/instances.rs).
    pub instances: super::instances::Instances,
    started: Instant,
    start_time: f64,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            state: Mutex::new(BoardState { pools: Vec::new(), reloads: 0, last_reload: None }),
            instances: super::instances::Instances::default(),
            started: Instant::now(),
            start_time: unix_now(),
        }
    }
}

impl Board {
    fn with<T>(&self, f: impl FnOnce(&mut BoardState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The pools the daemon runs now (set at start and after each reload).
    pub(crate) fn set_pools(&self, pools: Vec<Arc<PoolRuntime>>) {
        self.with(|r| r.pools = pools);
    }

    /// The pools the daemon runs now, in configuration order, then the live template
    /// instances (the slowlog and the history sample them too).
    pub(crate) fn pools(&self) -> Vec<Arc<PoolRuntime>> {
        let mut all = self.with(|r| r.pools.clone());
        all.extend(self.instances.live_pools());
        all
    }

    /// A reload was applied (`ok`) or refused, with its summary or reason.
    pub(crate) fn record_reload(&self, ok: bool, message: String) {
        self.with(|r| {
            if ok {
                r.reloads += 1;
            }
            r.last_reload = Some(ReloadRecord { time: unix_now(), ok, message });
        });
    }

    /// When the daemon started: Unix time, and as an instant.
    pub(crate) fn started(&self) -> (f64, Instant) {
        (self.start_time, self.started)
    }

    /// Every pool of the running daemon now.
    pub(crate) fn snapshot(&self) -> BridgeStats {
        let (pools, reloads, last_reload) = self.with(|r| (r.pools.clone(), r.reloads, r.last_reload.clone()));
        BridgeStats {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            start_time: self.start_time,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            reloads,
            last_reload,
            pools: pools
                .iter()
                .map(|p| pool_snapshot(p))
                .chain(
                    self.instances
                        .live()
                        .into_iter()
                        .map(|(p, i)| PoolStats { instance: Some(i), ..pool_snapshot(&p) }),
                )
                .collect(),
        }
    }
}

/// Unix time now, seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The Unix time of a past (or future) instant.
pub(crate) fn unix_at(t: Instant) -> f64 {
    let now = Instant::now();
    if t <= now {
        unix_now() - now.duration_since(t).as_secs_f64()
    } else {
        unix_now() + t.duration_since(now).as_secs_f64()
    }
}

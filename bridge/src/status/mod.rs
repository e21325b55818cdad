//! Status: what the daemon, its listeners, pools and workers are doing, as JSON,
//! OpenMetrics and a self-refreshing HTML page — on the status listener (`http.rs`),
//! through a FastCGI listener's `status-path` (`front.rs`) and over the control socket.
pub mod front;
pub mod html;
pub mod http;
pub mod json;
pub mod model;
pub mod openmetrics;
pub mod slowlog;
pub mod table;
pub mod track;

use crate::config::{self, Global, ListenAddress, Protocol};
use crate::supervise::PoolRuntime;
use model::{CurrentRequest, ListenerStatus, PoolStatus, Status, WorkerStatus};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What a snapshot is built from, installed once at start-up.
pub struct Sources {
    pub pools: Vec<Arc<PoolRuntime>>,
    pub listeners: Vec<config::Listener>,
    pub start_time: u64,
    pub started: Instant,
}

static SOURCES: OnceLock<Sources> = OnceLock::new();

/// Make the running pools and listeners visible to the status renderers.
pub fn install(pools: Vec<Arc<PoolRuntime>>, listeners: Vec<config::Listener>) {
    for p in &pools {
        track::pool_configured(&p.name, p.config.slowlog_timeout);
    }
    let _ = SOURCES.set(Sources { pools, listeners, start_time: track::unix_now(), started: Instant::now() });
}

/// The status right now (None before `install`).
pub fn snapshot() -> Option<Status> {
    let src = SOURCES.get()?;
    let page = page_size();
    let now = Instant::now();
    Some(track::with_state(|s| {
        track::reap(s);
        let listeners = src
            .listeners
            .iter()
            .map(|l| ListenerStatus {
                name: l.name.clone(),
                protocol: match l.protocol {
                    Protocol::FastCgi => "fastcgi".to_owned(),
                    Protocol::Scgi => "scgi".to_owned(),
                },
                address: describe(&l.address),
                accepted_requests: s.listeners.get(&l.name).copied().unwrap_or(0),
                open_connections: track::open_connections(s, &l.name),
            })
            .collect();
        let pools = src
            .pools
            .iter()
            .map(|p| {
                let counters = s.pools.get(&*p.name);
                let mut workers: Vec<WorkerStatus> = s
                    .workers
                    .iter()
                    .filter(|(_, w)| w.pool == p.name)
                    .map(|(pid, w)| {
                        let mut current: Vec<CurrentRequest> = s
                            .inflight
                            .iter()
                            .filter(|(_, r)| r.pid == *pid)
                            .map(|(id, r)| CurrentRequest {
                                request_id: *id,
                                method: r.method.clone(),
                                uri: r.uri.clone(),
                                duration_seconds: now.duration_since(r.started).as_secs_f64(),
                            })
                            .collect();
                        current.sort_by_key(|c| c.request_id);
                        WorkerStatus {
                            pid: *pid,
                            state: if current.is_empty() { "idle" } else { "busy" },
                            requests: w.requests,
                            rss_bytes: rss(*pid, page),
                            spawn_time: w.spawn_time,
                            last_restart_reason: w.restart_reason.clone(),
                            current,
                        }
                    })
                    .collect();
                workers.sort_by_key(|w| (w.spawn_time, w.pid));
                let busy = workers.iter().filter(|w| w.state == "busy").count();
                let active = workers.iter().map(|w| w.current.len()).sum();
                PoolStatus {
                    name: p.name.to_string(),
                    start_time: src.start_time,
                    accepted_requests: counters.map_or(0, |c| c.accepted),
                    queue_length: p.dispatcher.waiting(),
                    max_queue_length: counters.map_or(0, |c| c.max_queue),
                    queue_size: p.config.queue_size,
                    max_children_reached: counters.map_or(0, |c| c.saturated),
                    slow_requests: counters.map_or(0, |c| c.slow),
                    rejected_requests: counters.map_or(0, |c| c.rejected),
                    processes: p.config.processes,
                    threads: p.config.threads,
                    idle_workers: workers.len() - busy,
                    busy_workers: busy,
                    total_workers: workers.len(),
                    idle_slots: p.dispatcher.idle(),
                    active_requests: active,
                    worker_exits: counters.map_or(0, |c| c.exits),
                    workers,
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            start_time: src.start_time,
            uptime_seconds: src.started.elapsed().as_secs_f64(),
            listeners,
            pools,
        }
    }))
}

/// An address as the configuration writes it.
pub fn describe(a: &ListenAddress) -> String {
    match a {
        ListenAddress::Tcp(s) => s.to_string(),
        ListenAddress::Unix(p) => format!("unix:{}", p.display()),
        ListenAddress::Fd(fd) => format!("fd:{fd}"),
        ListenAddress::Systemd(n) => format!("systemd:{n}"),
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

/// Resident set size from /proc/PID/statm (second field, in pages); 0 when unreadable.
fn rss(pid: u32, page: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page)
}

/// The `bridge:` keys of this module as `fcgibridge check` prints them.
pub fn render_check(out: &mut String, g: &Global) {
    use std::fmt::Write;
    match &g.access_log_format {
        Some(f) => {
            let _ = writeln!(out, "  access-log-format: {f:?}");
        }
        None => out.push_str("  # access-log-format: not set: the built-in format\n"),
    }
    match &g.status {
        Some(s) => {
            let _ = writeln!(out, "  status:\n    listen: {:?}\n    path: {:?}", describe(&s.address), s.path);
        }
        None => out.push_str("  # status: not set: no status listener\n"),
    }
    match &g.control_socket {
        Some(p) => {
            let _ = writeln!(out, "  control-socket: {:?}", p.display().to_string());
        }
        None => out.push_str("  # control-socket: not set: <runtime-dir>/control.sock\n"),
    }
}

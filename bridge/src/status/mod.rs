//! Status: what the daemon, its listeners, pools and workers are doing, as JSON,
//! OpenMetrics and a self-refreshing HTML page — on the status listener (`http.rs`),
//! through a FastCGI listener's `status-path` (`front.rs`) and over the control socket.
pub(crate) mod chart;
pub(crate) mod front;
pub(crate) mod history;
pub(crate) mod html;
pub(crate) mod http;
pub(crate) mod json;
pub(crate) mod latency;
pub(crate) mod model;
pub(crate) mod openmetrics;
pub(crate) mod reply;
pub(crate) mod slowlog;
pub(crate) mod track;

use crate::config::{self, Global, ListenAddress, Protocol};
use crate::registry::Registry;
use crate::supervise::stats::PoolStats;
use history::{ListenerSample, PoolSample};
use latency::{Classes, Histogram};
use model::{CurrentRequest, Latency, ListenerStatus, PoolStatus, Status, WorkerStatus};
use std::time::Instant;

/// A pool's sample for the history: its counters in `track.rs` and the supervisor's.
fn pool_sample(s: &track::State, p: &PoolStats) -> PoolSample {
    let c = track::pool_counters(s, &p.incarnation);
    PoolSample {
        // A direct pool's durations and responses come from its workers' scoreboards.
        latency: c.map(|c| c.latency).unwrap_or_default().plus(p.direct_latency),
        responses: c.map(|c| c.responses).unwrap_or_default().plus(p.direct_responses),
        direct_requests: untimed(p.direct_responses, p.direct_latency),
        rejected: p.rejected_queue_full + p.rejected_queue_timeout + p.rejected_unavailable,
        timeouts: p.request_timeouts,
        exits: p.worker_exits,
        crashes: p.worker_crashes,
        queue: p.queue_length,
        busy_workers: p.busy_workers,
        idle_workers: p.idle_workers,
        born: p.start_time,
    }
}

/// `pools`: to count a direct listener's responses, which its pool's workers sent
/// without the bridge (their scoreboards).
fn listener_sample(s: &track::State, l: &config::Listener, pools: &[PoolStats]) -> ListenerSample {
    let c = s.listeners.get(&l.name);
    let (direct, durations) = match l.routes.first().filter(|_| l.direct) {
        Some(r) => pools
            .iter()
            .filter(|p| p.name == r.pool)
            .map(|p| (p.direct_responses, p.direct_latency))
            .fold(Default::default(), |(c, h): (Classes, Histogram), (pc, ph)| (c.plus(pc), h.plus(ph))),
        None => Default::default(),
    };
    ListenerSample {
        latency: c.map(|c| c.latency).unwrap_or_default().plus(durations),
        responses: c.map(|c| c.responses).unwrap_or_default().plus(direct),
        direct_requests: untimed(direct, durations),
    }
}

/// Of a direct pool's responses, those its workers did not time (one that ran without a
/// scoreboard slot, or whose END_REQUEST is not written yet): the rates count them too.
fn untimed(responses: Classes, durations: Histogram) -> u64 {
    responses.total().saturating_sub(durations.count())
}

/// Requests the workers behind a `direct` listener accepted (0 for any other listener).
fn direct_accepted(l: &config::Listener, pools: &[PoolStats]) -> u64 {
    let Some(r) = l.routes.first().filter(|_| l.direct) else { return 0 };
    pools.iter().filter(|p| p.name == r.pool).map(|p| p.accepted_requests).sum()
}

/// Called by the status ticker (`slowlog.rs`) a few times a second: takes the history's
/// sample of every pool and listener when one is due.
pub(crate) fn tick(registry: &Registry, now: Instant) {
    let listeners = registry.listeners();
    let pools = registry.board.pools();
    // One dispatcher lock per pool: a queue that fills and drains between two samples
    // still shows in the charts.
    let queues: Vec<usize> = pools.iter().map(|p| p.dispatcher.waiting()).collect();
    let due = registry.track.with_state(|s| {
        for (p, len) in pools.iter().zip(queues) {
            s.history.observe_queue(&p.name, len);
        }
        s.history.due(now)
    });
    if !due {
        return;
    }
    // Outside the status lock: the snapshot locks each pool's dispatcher in turn.
    let stats = registry.board.snapshot();
    registry.track.with_state(|s| {
        let pools = stats.pools.iter().map(|p| (p.name.clone(), pool_sample(s, p))).collect();
        let samples = listeners.iter().map(|l| (l.name.clone(), listener_sample(s, l, &stats.pools))).collect();
        s.history.record(now, pools, samples);
        track::forget_gone_pools(s);
        // After a reload: a name no longer configured is read by nothing any more.
        track::forget_gone_listeners(s, &listeners);
    });
}

/// The charts' data (`?json&history` and the HTML page).
pub(crate) fn history(registry: &Registry) -> model::History {
    registry.track.with_state(|s| model::History {
        interval_seconds: history::INTERVAL.as_secs_f64(),
        window_seconds: (history::INTERVAL * history::SAMPLES as u32).as_secs_f64(),
        pools: s.history.pools(crate::supervise::stats::unix_at),
        listeners: s.history.listeners(crate::supervise::stats::unix_at),
    })
}

/// The status right now. Pools and workers come from the
/// supervisor's numbers (`supervise/stats.rs`, following reloads); listeners, slow
/// requests, durations and status classes from `track.rs`.
pub(crate) fn snapshot(registry: &Registry) -> Status {
    let listeners = registry.listeners();
    let stats = registry.board.snapshot();
    let (start_time, started) = registry.board.started();
    // Whole seconds, as the status document has always shown them.
    let start_time = start_time as u64;
    let now = Instant::now();
    registry.track.with_state(|s| Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        start_time,
        uptime_seconds: started.elapsed().as_secs_f64(),
        reloads: stats.reloads,
        access_log_dropped_lines: registry.access_log.as_ref().map_or(0, crate::logging::AccessLog::dropped_lines),
        draining: registry.drain_status(),
        listeners: listeners.iter().map(|l| listener_status(s, l, &stats.pools, now)).collect(),
        pools: stats.pools.into_iter().map(|p| pool_status(s, p, now)).collect(),
    })
}

fn listener_status(s: &track::State, l: &config::Listener, pools: &[PoolStats], now: Instant) -> ListenerStatus {
    let sample = listener_sample(s, l, pools);
    let ago = s.history.listener_minute_ago(&l.name, now).copied().unwrap_or_default();
    ListenerStatus {
        name: l.name.clone(),
        protocol: match l.protocol {
            Protocol::FastCgi => "fastcgi".to_owned(),
            Protocol::Scgi => "scgi".to_owned(),
        },
        address: describe(&l.address),
        // A direct listener's requests are its pool's: the workers accepted them.
        accepted_requests: s.listeners.get(&l.name).map_or(0, |c| c.accepted) + direct_accepted(l, pools),
        open_connections: track::open_connections(s, &l.name),
        responses: sample.responses,
        latency_seconds: Latency {
            last_minute: sample.latency.since(&ago.latency).summary(),
            since_start: sample.latency.summary(),
        },
        latency: sample.latency,
    }
}

fn pool_status(s: &track::State, p: PoolStats, now: Instant) -> PoolStatus {
    let slow = track::pool_counters(s, &p.incarnation).map_or(0, |c| c.slow);
    let sample = pool_sample(s, &p);
    let ago = s.history.pool_minute_ago(&p.name, now).copied().unwrap_or_default();
    let workers: Vec<WorkerStatus> = p
        .workers
        .into_iter()
        .map(|w| WorkerStatus {
            pid: w.pid,
            state: w.state,
            requests: w.requests,
            rss_bytes: w.rss_bytes.unwrap_or(0),
            cpu_seconds: w.cpu_seconds.unwrap_or(0.0),
            spawn_time: w.spawn_time as u64,
            last_restart_reason: w.last_restart_reason,
            retiring_reason: w.retiring_reason.or(w.recycle_pending),
            current: w
                .current
                .into_iter()
                .map(|c| CurrentRequest {
                    request_id: c.request_id,
                    method: c.method,
                    uri: c.uri,
                    duration_seconds: c.duration_seconds,
                    abandoned: c.abandoned,
                })
                .collect(),
        })
        .collect();
    PoolStatus {
        instance: p.instance,
        name: p.name,
        state: p.state,
        start_error: p.start_error,
        start_time: p.start_time as u64,
        accepted_requests: p.accepted_requests,
        direct: p.direct,
        queue_length: p.queue_length,
        max_queue_length: p.max_queue_length,
        queue_size: p.queue_size,
        max_children_reached: p.max_children_reached,
        slow_requests: slow,
        rejected_requests: p.rejected_queue_full + p.rejected_queue_timeout + p.rejected_unavailable,
        request_timeouts: p.request_timeouts,
        piped_requests: p.piped_requests,
        withdrawn_requests: p.withdrawn_requests,
        moved_connections: p.direct.then_some(p.moved_connections),
        processes: p.max_processes,
        threads: p.threads_per_process,
        concurrency: p.concurrency,
        idle_workers: p.idle_workers,
        busy_workers: p.busy_workers,
        starting_workers: p.starting_workers,
        draining_workers: p.draining_workers,
        total_workers: p.total_workers,
        idle_slots: p.idle_slots,
        active_requests: p.busy_slots,
        worker_exits: p.worker_exits,
        worker_crashes: p.worker_crashes,
        spawns: p.spawns,
        responses: sample.responses,
        latency_seconds: Latency {
            last_minute: sample.latency.since(&ago.latency).summary(),
            since_start: sample.latency.summary(),
        },
        last_minute: sample.moved_since(&ago),
        latency: sample.latency,
        workers,
    }
}

/// An address as the configuration writes it.
pub(crate) fn describe(a: &ListenAddress) -> String {
    match a {
        ListenAddress::Tcp(s) => s.to_string(),
        ListenAddress::Unix(p) => format!("unix:{}", p.display()),
        ListenAddress::Fd(fd) => format!("fd:{fd}"),
        ListenAddress::Systemd(n) => format!("systemd:{n}"),
    }
}

/// The `bridge:` keys of this module as `fcgibridge check` prints them.
pub(crate) fn render_check(out: &mut String, g: &Global) {
    use std::fmt::Write;
    match &g.log_file {
        Some(p) => {
            let _ = writeln!(out, "  log-file: {:?}", p.display().to_string());
        }
        None => out.push_str("  # log-file: not set: stderr\n"),
    }
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
        None => match &g.runtime_dir {
            Some(dir) => {
                let _ = writeln!(out, "  # control-socket: not set: {}/control.sock", dir.display());
            }
            None => out.push_str("  # control-socket: not set: none (`fcgibridge status` needs it or runtime-dir)\n"),
        },
    }
}

//! The status view: one snapshot of the daemon, its listeners, pools and workers, as every
//! format (JSON, OpenMetrics, HTML, the terminal table) renders it. Field names follow what
//! PHP-FPM's status page and uWSGI's stats server made familiar.
use super::history::Moved;
use super::latency::{Classes, Histogram, Percentiles};
use serde::Serialize;

/// The whole daemon at one instant.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub version: String,
    pub pid: u32,
    /// Unix time, seconds.
    pub start_time: u64,
    pub uptime_seconds: f64,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Access-log lines dropped since start because the access log could not keep up.
    pub access_log_dropped_lines: u64,
    /// The stop's drain period, while it runs (null otherwise).
    pub draining: Option<Draining>,
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
}

/// A stop's drain period in progress: ping paths answer 503, requests are still served.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Draining {
    /// When SIGTERM (or `fcgibridge stop`) started it (Unix time, seconds).
    pub since: f64,
    /// When the listeners close (Unix time, seconds), unless a second SIGTERM comes first.
    pub until: f64,
    /// Seconds left until then.
    pub remaining_seconds: f64,
}

/// One listener (a web-server-facing socket).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListenerStatus {
    pub name: String,
    pub protocol: String,
    pub address: String,
    /// Requests decoded on this listener since start.
    pub accepted_requests: u64,
    /// Web-server connections open now.
    pub open_connections: usize,
    /// Finished requests by status class, since start.
    pub responses: Classes,
    pub latency_seconds: Latency,
    /// The durations (for the OpenMetrics histogram).
    #[serde(skip)]
    pub latency: Histogram,
}

/// Request duration percentiles (seconds, estimated from the histogram's buckets) and
/// request counts, over the last minute and since start.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Latency {
    /// Between 60 and 65 seconds (the history's sample about a minute old, and now).
    pub last_minute: Percentiles,
    pub since_start: Percentiles,
}

/// One pool of workers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoolStatus {
    pub name: String,
    /// An instance of a pool template: its template, key, age and idle time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<crate::supervise::instances::InstanceStats>,
    /// The supervisor's state of the pool, e.g. "running", "starting", "failing".
    pub state: &'static str,
    /// Why a `failing` or `rollout-failing` pool's workers cannot start (the last error).
    pub start_error: Option<String>,
    pub start_time: u64,
    /// Requests routed to this pool since start (PHP-FPM's "accepted conn").
    pub accepted_requests: u64,
    /// Its workers accept a `direct` listener's connections: requests wait in the socket
    /// and on the web server's kept connections, not in the bridge's queue.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
    /// Requests waiting for a free worker thread now ("listen queue").
    pub queue_length: usize,
    /// The most that ever waited at once ("max listen queue").
    pub max_queue_length: usize,
    /// queue-size: beyond it requests get 503 at once.
    pub queue_size: usize,
    /// Requests that found every worker thread busy and had to queue ("max children reached").
    pub max_children_reached: u64,
    /// Requests that ran longer than slowlog-timeout.
    pub slow_requests: u64,
    /// Requests answered 503: queue full, queue-timeout, or no worker could start.
    pub rejected_requests: u64,
    /// Requests ended by request-timeout: a 504, a response cut off, or a direct worker killed.
    pub request_timeouts: u64,
    /// Requests written to a busy worker connection behind its current request (`pipeline`).
    pub piped_requests: u64,
    /// Piped requests taken back before the worker started them.
    pub withdrawn_requests: u64,
    /// A direct pool's kept connections its processes moved between them, so that each
    /// holds a share in proportion to its pace (docs/direct.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_connections: Option<u64>,
    pub processes: u32,
    /// Threads per WSGI worker (absent for an ASGI pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Requests in flight per ASGI worker (absent for a WSGI pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Worker processes serving no request now.
    pub idle_workers: usize,
    /// Worker processes serving at least one request now.
    pub busy_workers: usize,
    /// Worker processes starting (not ready yet).
    pub starting_workers: usize,
    /// Worker processes retiring or stopping (taking no new request; may finish some).
    pub draining_workers: usize,
    pub total_workers: usize,
    /// Free worker connections (threads) now.
    pub idle_slots: usize,
    /// Requests being served now.
    pub active_requests: usize,
    /// Worker processes that went since start (crashes, recycling, reloads, scale-down).
    pub worker_exits: u64,
    /// Of those, the ones that exited without being asked to or failed to start.
    pub worker_crashes: u64,
    /// Worker processes started since start.
    pub spawns: u64,
    /// Finished requests by status class (the bridge's own 502/503/504 included).
    pub responses: Classes,
    pub latency_seconds: Latency,
    /// How the counters an operator must notice moved in the last minute.
    pub last_minute: Moved,
    /// The durations (for the OpenMetrics histogram).
    #[serde(skip)]
    pub latency: Histogram,
    pub workers: Vec<WorkerStatus>,
}

/// One worker process.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkerStatus {
    pub pid: u32,
    /// "starting", "idle", "busy" or "draining".
    pub state: &'static str,
    /// Requests this worker has finished.
    pub requests: u64,
    /// Resident memory, bytes (from /proc; 0 when unreadable).
    pub rss_bytes: u64,
    /// CPU time it has used, user + system seconds (from /proc; 0 when unreadable).
    pub cpu_seconds: f64,
    /// When it was started (Unix time, seconds).
    pub spawn_time: u64,
    /// Why the worker before it in its slot went, when known.
    pub last_restart_reason: Option<String>,
    /// Why it is being retired (draining or stopping), or is due to be once its
    /// replacement is ready: "max-requests (50 served)", "reload", …
    pub retiring_reason: Option<String>,
    /// Requests it is serving now (a threaded worker serves several).
    pub current: Vec<CurrentRequest>,
}

/// A request in progress.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CurrentRequest {
    pub request_id: u64,
    pub method: String,
    pub uri: String,
    pub duration_seconds: f64,
    /// The web server aborted it (its client left) and the worker did not end it within
    /// abort-grace: the worker is being replaced; nobody waits for the answer.
    pub abandoned: bool,
}

/// The charts' data: per pool and listener, one value per sampling interval, oldest first
/// (`?json&history`). Rates and percentiles are over the interval that ends at `time[i]`;
/// gauges are their value at `time[i]`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct History {
    pub interval_seconds: f64,
    pub window_seconds: f64,
    pub pools: Vec<PoolHistory>,
    pub listeners: Vec<ListenerHistory>,
}

/// One pool's recent past, as columns.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PoolHistory {
    pub name: String,
    /// Unix seconds at the end of each interval.
    pub time: Vec<f64>,
    pub requests_per_second: Vec<f64>,
    /// Request duration percentiles of the interval (null without requests).
    pub p50_seconds: Vec<Option<f64>>,
    pub p95_seconds: Vec<Option<f64>>,
    pub p99_seconds: Vec<Option<f64>>,
    pub queue_length: Vec<usize>,
    pub busy_workers: Vec<usize>,
    pub idle_workers: Vec<usize>,
    pub server_errors_per_second: Vec<f64>,
    /// Counts within each interval.
    pub rejected_requests: Vec<u64>,
    pub request_timeouts: Vec<u64>,
    pub worker_exits: Vec<u64>,
    pub worker_crashes: Vec<u64>,
    /// How the watched counters moved from the first sample to the last.
    pub moved: Moved,
}

/// One listener's recent past, as columns.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ListenerHistory {
    pub name: String,
    pub time: Vec<f64>,
    pub requests_per_second: Vec<f64>,
    pub p50_seconds: Vec<Option<f64>>,
    pub p95_seconds: Vec<Option<f64>>,
    pub p99_seconds: Vec<Option<f64>>,
    pub server_errors_per_second: Vec<f64>,
}

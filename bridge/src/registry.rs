//! The daemon's process-wide state in one handle, made once in daemon.rs: every listener
//! context carries it to its requests, and the control socket, the status listener, the
//! slowlog and a reload are handed it. Nothing here is a global: two registries in one
//! process (the tests make several) share nothing.
use crate::config;
use crate::config::access_format::Needs;
use crate::listen::limits::HeaderBudget;
use crate::listen::systemd;
use crate::logging::ratelimit::RateLimits;
use crate::logging::reopen::Reopen;
use crate::logging::AccessLog;
use crate::status::track::Tracker;
use crate::supervise::stats::Board;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What every part of the running daemon may need to reach.
pub(crate) struct Registry {
    /// `access-log`, with its `access-log-format`.
    pub access_log: Option<AccessLog>,
    /// What the access log needs of each request (nothing without one), read by every request.
    pub access_needs: Needs,
    /// `header-memory`: what connections may hold in headers still arriving and in requests
    /// waiting for a worker (listen/limits.rs).
    pub header_budget: Arc<HeaderBudget>,
    /// Requests, durations and status classes per listener and pool (status/track.rs).
    pub track: Tracker,
    /// The running pools and the reloads (supervise/stats.rs).
    pub board: Board,
    /// Sockets systemd passed that no listener has taken yet (a reload may add one).
    pub systemd: systemd::Passed,
    /// SIGUSR1: the log files' reopen generation (logging/reopen.rs).
    pub reopen: Reopen,
    /// The rate limiter of client-caused log lines (logging/ratelimit.rs); its flusher task
    /// holds a clone.
    pub rate_limits: Arc<RateLimits>,
    /// FCGI_WEB_SERVER_ADDRS: the only TCP peers every listener keeps, when set (listen/allow.rs).
    pub web_server_addrs: Option<Vec<std::net::IpAddr>>,
    /// The listeners the status pages describe; replaced after each reload.
    listeners: RwLock<Arc<Vec<config::Listener>>>,
    /// Set once SIGTERM starts the drain period (when, as an instant and as Unix time, and
    /// for how long): from then on every ping path fails, so that a load balancer's health
    /// check takes this bridge out before its listeners close.
    drain: OnceLock<(Instant, f64, Duration)>,
    in_flight: AtomicUsize,
    drained: Notify,
    next_id: AtomicU64,
    /// The longest a graceful stop of the configuration running now takes, in milliseconds
    /// ([`crate::control::graceful_stop_bound`]), told to `fcgibridge stop --wait`.
    stop_bound_ms: AtomicU64,
}

/// The first request id of a daemon started at `now`: its start time in milliseconds
/// (Unix), times 1000, plus one. Ids of two daemons meet only if the first averaged more
/// than a million requests a second before the second one started, so an id found in
/// weeks of rotated logs names one request. Below 2^53 until the year 2255: exact as JSON
/// numbers.
fn first_request_id(now: std::time::SystemTime) -> u64 {
    let millis = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    millis * 1000 + 1
}

impl Registry {
    /// A registry for a daemon with these listeners, no pools yet.
    pub(crate) fn new(
        access_log: Option<AccessLog>,
        header_memory: u64,
        listeners: Vec<config::Listener>,
        systemd: systemd::Passed,
    ) -> Self {
        Self {
            access_needs: access_log.as_ref().map_or(Needs::default(), AccessLog::needs),
            access_log,
            header_budget: HeaderBudget::new(header_memory),
            track: Tracker::default(),
            board: Board::default(),
            systemd,
            reopen: Reopen::default(),
            rate_limits: Arc::default(),
            web_server_addrs: crate::listen::allow::from_env(),
            listeners: RwLock::new(Arc::new(listeners)),
            drain: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            next_id: AtomicU64::new(first_request_id(std::time::SystemTime::now())),
            stop_bound_ms: AtomicU64::new(0),
        }
    }

    /// The registry with the reopen generation that the daemon's log files follow.
    pub(crate) fn with_reopen(self, reopen: Reopen) -> Self {
        Self { reopen, ..self }
    }

    /// The listeners as configured now.
    pub(crate) fn listeners(&self) -> Arc<Vec<config::Listener>> {
        self.listeners.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The listeners after a reload.
    pub(crate) fn set_listeners(&self, listeners: Vec<config::Listener>) {
        *self.listeners.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(listeners);
    }

    /// The longest a graceful stop takes, with the configuration running now (at the
    /// start, then after each reload).
    pub(crate) fn set_stop_bound(&self, config: &config::Config) {
        let ms = crate::control::graceful_stop_bound(config).as_millis();
        self.stop_bound_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// What [`set_stop_bound`](Self::set_stop_bound) last set (zero before).
    pub(crate) fn stop_bound(&self) -> Duration {
        Duration::from_millis(self.stop_bound_ms.load(Ordering::Relaxed))
    }

    /// Make every ping path answer 503 "draining" from now on (there is no way back: the
    /// daemon is stopping), and the status say so for `period`.
    pub(crate) fn start_draining(&self, period: Duration) {
        let now = Instant::now();
        let _ = self.drain.set((now, crate::supervise::stats::unix_at(now), period));
    }

    /// Whether the drain period has started.
    pub(crate) fn draining(&self) -> bool {
        self.drain.get().is_some()
    }

    /// The drain period in progress, for the status (None before a stop).
    pub(crate) fn drain_status(&self) -> Option<crate::status::model::Draining> {
        let (since, since_unix, period) = *self.drain.get()?;
        Some(crate::status::model::Draining {
            since: since_unix,
            until: since_unix + period.as_secs_f64(),
            remaining_seconds: period.saturating_sub(since.elapsed()).as_secs_f64(),
        })
    }

    /// A new request's number: unique for the daemon's life, and across restarts (see
    /// [`first_request_id`]).
    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A request is in flight until the guard drops.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Wait until no request is in flight.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One request in flight (see [`Registry::enter`]).
pub(crate) struct InFlight<'a>(&'a Registry);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first_request_id;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn request_ids_start_from_the_start_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
        assert_eq!(first_request_id(at), 1_767_225_600_123_001);
        // A daemon restarted 100 ms later starts 100,000 ids further on.
        assert_eq!(first_request_id(at + Duration::from_millis(100)) - first_request_id(at), 100_000);
        assert!(first_request_id(UNIX_EPOCH + Duration::from_secs(9_000_000_000)) < 1 << 53);
    }
}

//! The slowlog: a request running longer than its pool's `slowlog-timeout` is counted
//! slow and logged with its pool, worker pid, request id and URI, and the worker is asked
//! to write the Python stacks of its threads (each thread annotated with its request id)
//! to stderr, which the bridge logs — the request keeps running.
//!
//! Running requests are read from the supervisor's statistics five times a second (a
//! snapshot locks each pool's dispatcher for microseconds), only while some pool has a
//! slowlog-timeout; nothing is added to the request path. The same task is the status
//! ticker: it takes the charts' samples (`history.rs`) when one is due.
use crate::registry::Registry;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How often running requests are checked against their threshold.
const TICK: Duration = Duration::from_millis(200);

/// Check running requests and sample the history until the runtime stops.
pub(crate) fn spawn(registry: Arc<Registry>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        // The requests already reported, by [`report_key`] (unique for the daemon's life).
        let mut reported: HashSet<u64> = HashSet::new();
        loop {
            tick.tick().await;
            check(&registry, &mut reported);
            super::tick(&registry, std::time::Instant::now());
        }
    });
}

fn check(registry: &Registry, reported: &mut HashSet<u64>) {
    let pools = registry.board.pools();
    if pools.iter().all(|p| p.config.slowlog_timeout.is_none()) {
        return;
    }
    let mut running = HashSet::new();
    for pool in &pools {
        let Some(limit) = pool.config.slowlog_timeout else { continue };
        let python = !matches!(pool.config.app, crate::config::App::Command(_));
        let stats = crate::supervise::stats::pool_snapshot(pool);
        for w in &stats.workers {
            let mut dump = false;
            let direct_pid = stats.direct.then_some(w.pid);
            for c in &w.current {
                let key = report_key(direct_pid, c);
                // A direct worker's requests carry its own ids (`<pid>-<n>`), as its lines do.
                let request_id = crate::dispatch::request_id_text(c.request_id, direct_pid);
                let request_id = request_id.as_deref().map(tracing::field::display);
                running.insert(key);
                if c.duration_seconds < limit.as_secs_f64() || !reported.insert(key) {
                    continue;
                }
                registry.track.slow(&pool.name);
                let ran = Duration::from_secs_f64(c.duration_seconds);
                let stack = if python { "; its Python stack follows" } else { "" };
                tracing::warn!(
                    pool = &*stats.name,
                    pid = w.pid,
                    request_id,
                    "slow request: {} {} running for {ran:.1?}{stack}",
                    c.method,
                    c.uri
                );
                dump |= python;
            }
            if dump {
                dump_stacks(w.pid);
            }
        }
    }
    // Forget finished requests.
    reported.retain(|id| running.contains(id));
}

/// What a slow request is reported once by: its request id, or, for a direct worker's
/// request (`direct_pid`: its worker's pid; docs/direct.md), the worker and its id there
/// (or the request line, from a worker that tells none).
fn report_key(direct_pid: Option<u32>, c: &crate::supervise::stats::CurrentRequestStats) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match (direct_pid, c.request_id) {
        (None, 1..) => return c.request_id,
        (Some(pid), n @ 1..) => (pid, n).hash(&mut h),
        (pid, _) => (pid, &c.method, &c.uri).hash(&mut h),
    }
    // Apart from the bridge's own ids, which never reach the top bit.
    h.finish() | 1 << 63
}

/// SIGUSR2 asks a fcgibridge worker to write its serving threads' stacks to stderr
/// (Generic FastCGI programs would take it as a reason to exit: never sent to them.)
fn dump_stacks(pid: u32) {
    if let Ok(pid @ 1..) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR2);
    }
}

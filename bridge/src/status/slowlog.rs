//! The slowlog: a request running longer than its pool's `slowlog-timeout` is counted
//! slow and logged with its pool, worker pid, request id and URI, and the worker is asked
//! to write the Python stacks of its threads (each thread annotated with its request id)
//! to stderr, which the bridge logs — the request keeps running.
use std::time::Duration;

/// How often running requests are checked against their threshold.
const TICK: Duration = Duration::from_millis(200);

/// Check running requests until the runtime stops.
pub fn spawn() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            check();
        }
    });
}

fn check() {
    let slow: Vec<(String, u32, u64, String, String, Duration)> = super::track::with_state(|s| {
        let mut out = Vec::new();
        for (id, r) in s.inflight.iter_mut() {
            if r.slow_reported {
                continue;
            }
            let Some(limit) = s.pools.get(&*r.pool).and_then(|p| p.slowlog_timeout) else { continue };
            let ran = r.started.elapsed();
            if ran >= limit {
                r.slow_reported = true;
                out.push((r.pool.to_string(), r.pid, *id, r.method.clone(), r.uri.clone(), ran));
            }
        }
        for (pool, ..) in &out {
            if let Some(p) = s.pools.get_mut(pool) {
                p.slow += 1;
            }
        }
        out
    });
    for (pool, pid, request_id, method, uri, ran) in slow {
        // Generic FastCGI programs (php-cgi, flup) would take SIGUSR2 as a reason to exit.
        let python_worker = super::SOURCES
            .get()
            .and_then(|s| s.pools.iter().find(|p| *p.name == *pool))
            .is_some_and(|p| !matches!(p.config.app, crate::config::App::Command(_)));
        if python_worker {
            tracing::warn!(pool, pid, request_id, "slow request: {method} {uri} running for {ran:.1?}; its Python stack follows");
            dump_stacks(pid);
        } else {
            tracing::warn!(pool, pid, request_id, "slow request: {method} {uri} running for {ran:.1?}");
        }
    }
}

/// SIGUSR2 asks a fcgibridge worker to write every thread's stack to stderr.
fn dump_stacks(pid: u32) {
    if let Ok(pid @ 1..) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR2);
    }
}
